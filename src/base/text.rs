//! Anti-aliased text on RGB images, in DejaVu Sans (embedded; free licence, see
//! assets/fonts/DejaVu-LICENSE), for the label and Grad-CAM overlays and the plots.
//! `ab_glyph` rasterises; it already comes in through plotters.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

/// The embedded font file.
pub static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn font() -> Option<FontRef<'static>> {
    FontRef::try_from_slice(DEJAVU_SANS).ok()
}

/// The width and height in pixels of `text` at `px` pixels.
pub fn measure(text: &str, px: f32) -> (u32, u32) {
    let Some(font) = font() else {
        return (0, 0);
    };
    let f = font.as_scaled(PxScale::from(px));
    let mut w = 0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    (w.ceil() as u32, (f.ascent() - f.descent()).ceil() as u32)
}

/// Draws `text` with its top-left corner at `(x, y)`, `px` pixels high, blending `color`
/// by each pixel's coverage; what falls outside the image is clipped.
pub fn draw(img: &mut RgbImage, text: &str, x: f32, y: f32, px: f32, color: [u8; 3]) {
    let Some(font) = font() else {
        return;
    };
    let f = font.as_scaled(PxScale::from(px));
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut caret = x;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            caret += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(px, ab_glyph::point(caret, y + f.ascent()));
        caret += f.h_advance(id);
        prev = Some(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, cov| {
            let (px_, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if px_ < 0 || py < 0 || px_ >= w || py >= h {
                return;
            }
            let p = img.get_pixel_mut(px_ as u32, py as u32);
            let a = cov.clamp(0.0, 1.0);
            *p = Rgb(std::array::from_fn(|i| {
                (p[i] as f32 * (1.0 - a) + color[i] as f32 * a).round() as u8
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_with_intermediate_coverage() {
        let mut img = RgbImage::new(120, 30);
        let (w, h) = measure("Ankle boot", 16.0);
        assert!((60..110).contains(&w) && (14..24).contains(&h), "{w}×{h}");
        draw(&mut img, "Ankle boot", 2.0, 2.0, 16.0, [255, 255, 255]);
        let lit: Vec<u8> = img.pixels().map(|p| p[0]).filter(|&v| v > 0).collect();
        assert!(lit.len() > 100, "too few pixels drawn: {}", lit.len());
        // Anti-aliased: edge pixels are partly covered, not just on or off.
        assert!(lit.iter().any(|&v| v > 20 && v < 235));
        // Clipped, not panicking, at the edges.
        draw(&mut img, "edge", 110.0, 25.0, 16.0, [255, 0, 0]);
        draw(&mut img, "", -5.0, -5.0, 16.0, [255, 0, 0]);
    }
}
