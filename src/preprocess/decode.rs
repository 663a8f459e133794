//! Decoding to 8-bit RGB the way `PIL.Image.open(f).convert("RGB")` does, plus EXIF
//! orientation and a pixel limit checked before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// PIL's `Image.MAX_IMAGE_PIXELS` (it warns above it and refuses at twice that).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Reads and decodes an image file (see [`decode`]).
pub fn open_image(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Image {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    decode(&bytes, &name, max_pixels)
}

/// Decodes JPEG, PNG, WebP, BMP, TIFF or GIF (first frame) bytes to RGB.
///
/// - the size is checked against `max_pixels` from the header, before decoding;
/// - the EXIF orientation is applied;
/// - colour follows PIL's `convert("RGB")`: grey is replicated, alpha is dropped without
///   compositing, and 16-bit samples keep their high byte (as PIL does for 16-bit RGB; PIL
///   clips 16-bit grey to 255 instead, which we do not copy).
pub fn decode(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage> {
    contained(name, "the decoder failed on this file (corrupt or crafted)", || {
        decode_inner(bytes, name, max_pixels)
    })
}

/// Runs a decoder call so that a decoder bug cannot take the process down: the fuzzer found
/// crafted WebP files that make image-webp 0.2.4 (the newest image 0.25 takes) index out of
/// bounds. A panic becomes `Error::Image` with `reason`.
fn contained<T>(name: &str, reason: &str, f: impl FnOnce() -> Result<T> + std::panic::UnwindSafe) -> Result<T> {
    std::panic::catch_unwind(f).unwrap_or_else(|_| {
        Err(Error::Image {
            path: name.to_string(),
            reason: reason.into(),
        })
    })
}

/// A reader for `bytes` with its format guessed from the first bytes (an error if none fits).
fn reader<'b>(bytes: &'b [u8], name: &str) -> Result<ImageReader<Cursor<&'b [u8]>>> {
    let err = |reason: String| Error::Image {
        path: name.to_string(),
        reason,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(err(
            "not an image in a supported format (JPEG, PNG, WebP, BMP, TIFF, GIF)".into(),
        ));
    }
    Ok(reader)
}

fn decode_inner(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage> {
    let err = |reason: String| Error::Image {
        path: name.to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(err("the file is empty".into()));
    }
    let mut reader = reader(bytes, name)?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(Error::TooManyPixels {
            path: name.to_string(),
            width: w,
            height: h,
            pixels,
            max: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(err("the image has no pixels".into()));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(format!("{e} (corrupt or truncated file?)")))?;
    img.apply_orientation(orientation);
    Ok(to_rgb_like_pil(img))
}

/// What decoding `bytes` would cost, from the header alone: `(width, height, bytes)`, where
/// bytes is the peak of [`decode`] (the native buffer, a rotated copy for EXIF orientation,
/// and the RGB result). Servers reserve it before decoding.
pub fn decode_cost(bytes: &[u8], name: &str) -> Result<(u32, u32, u64)> {
    contained(
        name,
        "the decoder failed on this file's header (corrupt or crafted)",
        || {
            let decoder = reader(bytes, name)?.into_decoder().map_err(|e| Error::Image {
                path: name.to_string(),
                reason: e.to_string(),
            })?;
            let (w, h) = decoder.dimensions();
            let native = decoder.total_bytes();
            let rgb = w as u64 * h as u64 * 3;
            Ok((w, h, native.saturating_mul(2).saturating_add(rgb)))
        },
    )
}

fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from = |n: usize, samples: &[u8]| -> RgbImage {
        // `n` channels per pixel; grey (1–2 channels) is replicated, a 4th channel dropped.
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for px in samples.chunks_exact(n) {
            if n <= 2 {
                out.extend_from_slice(&[px[0]; 3]);
            } else {
                out.extend_from_slice(&px[..3]);
            }
        }
        RgbImage::from_raw(w, h, out).unwrap_or_default()
    };
    let high = |v: &[u16]| v.iter().map(|x| (x >> 8) as u8).collect::<Vec<u8>>();
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => from(4, i.as_raw()),
        DynamicImage::ImageLuma8(i) => from(1, i.as_raw()),
        DynamicImage::ImageLumaA8(i) => from(2, i.as_raw()),
        DynamicImage::ImageRgb16(i) => from(3, &high(i.as_raw())),
        DynamicImage::ImageRgba16(i) => from(4, &high(i.as_raw())),
        DynamicImage::ImageLuma16(i) => from(1, &high(i.as_raw())),
        DynamicImage::ImageLumaA16(i) => from(2, &high(i.as_raw())),
        other => other.to_rgb8(),
    }
}
