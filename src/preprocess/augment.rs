//! Training augmentations, following torchvision's `RandomResizedCrop`,
//! `RandomHorizontalFlip` and the paper's CIFAR recipe (pad 4, random crop, flip), plus
//! the conversion of 8-bit pixels to a normalised CHW tensor.

use serde::{Deserialize, Serialize};

use super::resize::resize_u8;
use crate::base::rng::Rng;
use crate::base::Pixels;

/// A training-time augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Augment {
    /// `RandomResizedCrop(size, scale, ratio)` + horizontal flip (ImageNet recipe).
    ImageNet {
        size: usize,
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    /// Zero-pad by `pad`, random `size × size` crop, horizontal flip (He et al. §4.2).
    Cifar { size: usize, pad: usize },
    /// No augmentation.
    None,
}

impl Augment {
    pub fn imagenet(size: usize) -> Self {
        Augment::ImageNet {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    pub fn apply(&self, px: &Pixels, rng: &mut Rng) -> Pixels {
        match *self {
            Augment::None => px.clone(),
            Augment::ImageNet { size, scale, ratio } => {
                let (top, left, h, w) = random_resized_crop_params(px.width, px.height, scale, ratio, rng);
                let cropped = crop(px, top as isize, left as isize, w, h);
                let resized = Pixels {
                    width: size,
                    height: size,
                    channels: px.channels,
                    data: resize_u8(&cropped.data, w, h, px.channels, size, size),
                };
                maybe_flip(resized, rng)
            }
            Augment::Cifar { size, pad } => {
                let max_top = (px.height + 2 * pad).saturating_sub(size);
                let max_left = (px.width + 2 * pad).saturating_sub(size);
                let top = rng.below(max_top + 1) as isize - pad as isize;
                let left = rng.below(max_left + 1) as isize - pad as isize;
                maybe_flip(crop(px, top, left, size, size), rng)
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)`.
fn random_resized_crop_params(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below(height - h + 1);
            let left = rng.below(width - w + 1);
            return (top, left, h, w);
        }
    }
    // Fallback: a centre crop within the ratio range.
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, (width as f64 / ratio.0).round() as usize)
    } else if in_ratio > ratio.1 {
        ((height as f64 * ratio.1).round() as usize, height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// A `w × h` window at `(top, left)`; outside the image is zero (padding).
fn crop(px: &Pixels, top: isize, left: isize, w: usize, h: usize) -> Pixels {
    let c = px.channels;
    let mut data = vec![0u8; w * h * c];
    for y in 0..h {
        let sy = top + y as isize;
        if sy < 0 || sy >= px.height as isize {
            continue;
        }
        for x in 0..w {
            let sx = left + x as isize;
            if sx < 0 || sx >= px.width as isize {
                continue;
            }
            let s = (sy as usize * px.width + sx as usize) * c;
            data[(y * w + x) * c..(y * w + x + 1) * c].copy_from_slice(&px.data[s..s + c]);
        }
    }
    Pixels {
        width: w,
        height: h,
        channels: c,
        data,
    }
}

fn maybe_flip(mut px: Pixels, rng: &mut Rng) -> Pixels {
    if rng.uniform() < 0.5 {
        let c = px.channels;
        for row in px.data.chunks_exact_mut(px.width * c) {
            for x in 0..px.width / 2 {
                let (a, b) = (x * c, (px.width - 1 - x) * c);
                for ch in 0..c {
                    row.swap(a + ch, b + ch);
                }
            }
        }
    }
    px
}

/// Normalised CHW floats with `channels` channels: grey is replicated for RGB models and
/// RGB becomes PIL's luma for grey models.
pub fn to_chw(px: &Pixels, channels: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let plane = px.width * px.height;
    let mut out = vec![0f32; channels * plane];
    for i in 0..plane {
        let p = &px.data[i * px.channels..(i + 1) * px.channels];
        for ch in 0..channels {
            let v = match (px.channels, channels) {
                (1, _) => p[0],
                (_, 1) => ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8,
                _ => p[ch],
            };
            out[ch * plane + i] = (v as f32 / 255.0 - mean[ch]) / std[ch];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Pixels {
        Pixels {
            width: w,
            height: h,
            channels: 1,
            data: (0..w * h).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn cifar_crop_keeps_size_and_pads_with_zeros() {
        let px = ramp(28, 28);
        let mut zeros_seen = false;
        for s in 0..50 {
            let out = Augment::Cifar { size: 28, pad: 2 }.apply(&px, &mut Rng::new(s));
            assert_eq!((out.width, out.height, out.data.len()), (28, 28, 784));
            zeros_seen |= out.data.iter().filter(|&&v| v == 0).count() > 10;
        }
        assert!(zeros_seen);
    }

    #[test]
    fn random_resized_crop_stays_inside_and_in_ratio() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let (t, l, h, w) = random_resized_crop_params(300, 200, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(t + h <= 200 && l + w <= 300 && h > 0 && w > 0);
            let area = (h * w) as f64 / 60000.0;
            assert!(area <= 1.0 + 1e-9);
        }
        let out = Augment::imagenet(64).apply(&ramp(90, 60), &mut rng);
        assert_eq!((out.width, out.height), (64, 64));
    }

    #[test]
    fn same_seed_same_augmentation() {
        let px = ramp(40, 30);
        let a = Augment::imagenet(32).apply(&px, &mut Rng::for_stream(1, 2, 3));
        let b = Augment::imagenet(32).apply(&px, &mut Rng::for_stream(1, 2, 3));
        let c = Augment::imagenet(32).apply(&px, &mut Rng::for_stream(1, 2, 4));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
