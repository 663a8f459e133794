//! The "label: confidence" overlay (Ikomia's annotated output image).
//!
//! Glyphs come from `font8x8` (a public-domain 8×8 bitmap font), scaled to the image, so
//! no font file is needed at run time.

use font8x8::{UnicodeFonts, BASIC_FONTS, LATIN_FONTS};
use image::{Rgb, RgbImage};

/// Draws `text` on a dark band across the top of a copy of `img`.
pub fn annotate(img: &RgbImage, text: &str) -> RgbImage {
    let mut out = img.clone();
    let (w, h) = (out.width(), out.height());
    let chars: Vec<[u8; 8]> = text
        .chars()
        .map(|c| BASIC_FONTS.get(c).or_else(|| LATIN_FONTS.get(c)).unwrap_or([0; 8]))
        .collect();
    // Fit the text width; between 1× and 4× of the 8-pixel font, and at most 1/8 of the height.
    let fit = (w.saturating_sub(8) / (8 * chars.len().max(1) as u32)).max(1);
    let scale = fit.min(4).min((h / 64).max(1));
    let pad = 2 * scale;
    let band = (8 * scale + 2 * pad).min(h);
    for y in 0..band {
        for x in 0..w {
            let p = out.get_pixel_mut(x, y);
            // Darken to 25% so the photo still shows through.
            *p = Rgb([p[0] / 4, p[1] / 4, p[2] / 4]);
        }
    }
    for (i, glyph) in chars.iter().enumerate() {
        let x0 = pad + i as u32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (x0 + col * scale + dx, pad + row as u32 * scale + dy);
                        if x < w && y < h {
                            out.put_pixel(x, y, Rgb([255, 255, 64]));
                        }
                    }
                }
            }
        }
    }
    out
}
