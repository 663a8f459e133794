//! The "label: confidence" overlay (Ikomia's annotated output image): anti-aliased text
//! (`base::text`) on a darkened band across the top.

use image::{Rgb, RgbImage};

use crate::base::text;

/// Draws `text` on a dark band across the top of a copy of `img`.
pub fn annotate(img: &RgbImage, label: &str) -> RgbImage {
    let mut out = img.clone();
    label_band(&mut out, label);
    out
}

/// Darkens a band across the top of `img` and writes `label` on it, sized to fit the width
/// (between 10 and 48 pixels high, at most a sixth of the image).
pub fn label_band(img: &mut RgbImage, label: &str) {
    let (w, h) = (img.width(), img.height());
    let (tw, _) = text::measure(label, 100.0);
    let fit = (w.saturating_sub(8)) as f32 * 100.0 / tw.max(1) as f32;
    let px = fit.min(48.0).min(h as f32 / 6.0).max(10.0);
    let pad = (px / 4.0).ceil();
    let band = ((px + 2.0 * pad).ceil() as u32).min(h);
    for y in 0..band {
        for x in 0..w {
            let p = img.get_pixel_mut(x, y);
            // Darken to 25% so the photo still shows through.
            *p = Rgb([p[0] / 4, p[1] / 4, p[2] / 4]);
        }
    }
    text::draw(img, label, pad, pad, px, [255, 255, 64]);
}
