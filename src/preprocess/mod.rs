//! torchvision-exact eval preprocessing: decode → RGB → resize → centre-crop → [0,1] →
//! normalise, giving the same f32 tensor as `ImageClassification` on a PIL image.
//!
//! Layering: may import `base`, `error`; see the README's module order.

mod augment;
mod decode;
mod resize;

use burn::prelude::*;
use image::RgbImage;
use serde::Serialize;

pub use augment::{to_chw, Augment};
pub use decode::{decode, decode_cost, open_image, DEFAULT_MAX_PIXELS};
pub use resize::{resize_bilinear_pil, resize_u8, resize_window_u8};

/// File extensions treated as images when walking folders.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// Whether `path` has an image extension (case-insensitive).
pub fn is_image_file(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// ImageNet's per-channel mean and std (torchvision's defaults).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How the image is brought to the network's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// torchvision's `Resize(n)`: shorter side to `n`, aspect kept, then centre-crop.
    ShorterSide { resize: usize, crop: usize },
    /// Ikomia's direct resize to `size × size` (no crop).
    Stretch { size: usize },
}

/// An eval transform. Build one with [`Transform::imagenet`] or [`Transform::stretch`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transform {
    pub resize: Resize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Convert to one grey channel (PIL's `convert("L")`) for 1-channel models.
    pub grayscale: bool,
}

impl Transform {
    /// `ImageClassification(crop_size=crop, resize_size=resize)`: 256/224 for V1, 232/224 for V2.
    pub fn imagenet(resize: usize, crop: usize) -> Self {
        Transform {
            resize: Resize::ShorterSide { resize, crop },
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            grayscale: false,
        }
    }

    /// Direct resize to `size × size`, then normalise (Ikomia's `input_size`).
    pub fn stretch(size: usize) -> Self {
        Transform {
            resize: Resize::Stretch { size },
            ..Transform::imagenet(size, size)
        }
    }

    pub fn with_normalization(mut self, mean: Vec<f32>, std: Vec<f32>) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }

    pub fn with_grayscale(mut self, g: bool) -> Self {
        self.grayscale = g;
        self
    }

    /// Output `(height, width)`.
    pub fn output_size(&self) -> (usize, usize) {
        match self.resize {
            Resize::ShorterSide { crop, .. } => (crop, crop),
            Resize::Stretch { size } => (size, size),
        }
    }

    pub fn channels(&self) -> usize {
        if self.grayscale {
            1
        } else {
            3
        }
    }

    /// The geometric part: resize and crop, still 8-bit. Only the pixels the crop keeps are
    /// computed, so memory follows the output size whatever the input's aspect ratio.
    pub fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        match self.resize {
            Resize::Stretch { size } => resize_bilinear_pil(img, size as u32, size as u32),
            Resize::ShorterSide { resize, crop } => {
                let (w, h) = (img.width() as usize, img.height() as usize);
                resize_center_crop(img, resized_size(w, h, resize), crop)
            }
        }
    }

    /// CHW f32 values of one image.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        self.normalize(&self.resize_and_crop(img))
    }

    /// CHW f32 values of an image already resized and cropped by [`Transform::resize_and_crop`].
    pub fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        let plane = (img.width() * img.height()) as usize;
        let c = self.channels();
        let mut out = vec![0f32; c * plane];
        for (i, px) in img.pixels().enumerate() {
            if self.grayscale {
                // PIL's ITU-R 601-2 luma in fixed point.
                let l = (px[0] as u32 * 19595 + px[1] as u32 * 38470 + px[2] as u32 * 7471 + 0x8000) >> 16;
                out[i] = (l as f32 / 255.0 - self.mean[0]) / self.std[0];
            } else {
                for ch in 0..3 {
                    // Same f32 operations as to_tensor + Normalize: x/255, then (x - m)/s.
                    out[ch * plane + i] = (px[ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }

    /// A `[N, C, H, W]` batch.
    pub fn batch(&self, imgs: &[RgbImage], device: &Device) -> Tensor<4> {
        let (data, dims) = self.batch_values(imgs);
        Tensor::from_data(TensorData::new(data, dims), device)
    }

    /// [`Transform::batch`] as plain NCHW values and their `[n, c, h, w]`.
    pub fn batch_values(&self, imgs: &[RgbImage]) -> (Vec<f32>, [usize; 4]) {
        let (h, w) = self.output_size();
        let mut data = Vec::with_capacity(imgs.len() * self.channels() * h * w);
        for img in imgs {
            data.extend(self.apply(img));
        }
        (data, [imgs.len(), self.channels(), h, w])
    }
}

/// Decodes `data` (pixel limit 2^22, which keeps runs fast) and preprocesses it the eval way
/// (resize 256, crop 224) and with `--stretch 32`, for the fuzzer and its stable replay: the
/// two outputs' lengths, or `None` when the image is refused.
#[doc(hidden)]
pub fn fuzz_image(data: &[u8]) -> Option<(usize, usize)> {
    let _ = decode_cost(data, "fuzz");
    let img = decode(data, "fuzz", 1 << 22).ok()?;
    Some((
        Transform::imagenet(256, 224).apply(&img).len(),
        Transform::stretch(32).apply(&img).len(),
    ))
}

/// torchvision's `_compute_resized_output_size` for an int size: `(width, height)`.
pub fn resized_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Where torchvision's `center_crop` of `crop` takes its pixels along one axis of length `n`:
/// the first source index (negative into the zero padding) of the window.
fn crop_start(n: usize, crop: usize) -> isize {
    let pad = crop.saturating_sub(n) / 2;
    let padded = n.max(crop);
    let off = ((padded - crop) as f64 / 2.0).round_ties_even() as usize;
    off as isize - pad as isize
}

/// The source range `[start, start + crop)` clipped to `[0, n)`, and where it lands in the crop.
fn crop_span(n: usize, crop: usize) -> (std::ops::Range<usize>, usize) {
    let start = crop_start(n, crop);
    let lo = start.max(0) as usize;
    let hi = ((start + crop as isize).max(0) as usize).min(n);
    (lo..hi.max(lo), (lo as isize - start) as usize)
}

/// `center_crop(resize(img, size), crop)` with only the kept window resized.
pub fn resize_center_crop(img: &RgbImage, size: (usize, usize), crop: usize) -> RgbImage {
    let (nw, nh) = size;
    let (cols, dx) = crop_span(nw, crop);
    let (rows, dy) = crop_span(nh, crop);
    let (kw, kh) = (cols.len(), rows.len());
    let (w, h) = (img.width() as usize, img.height() as usize);
    let win = resize_window_u8(img.as_raw(), w, h, 3, (nw, nh), cols, rows);
    let mut out = vec![0u8; crop * crop * 3];
    for y in 0..kh {
        let d = ((y + dy) * crop + dx) * 3;
        out[d..d + kw * 3].copy_from_slice(&win[y * kw * 3..(y + 1) * kw * 3]);
    }
    RgbImage::from_raw(crop as u32, crop as u32, out).unwrap_or_default()
}

/// torchvision's `center_crop`: zero-pad if smaller, offsets rounded half to even.
pub fn center_crop(img: &RgbImage, crop: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    resize_center_crop(img, (w, h), crop)
}
