//! Pillow's bilinear resize with antialias, bit for bit (`Resample.c`, 8 bits per channel).
//!
//! Written here because torchvision's eval transform resizes a PIL image, and fidelity means
//! the same bytes: `fast_image_resize` and `image` use other fixed-point precisions and
//! rounding, which differ from Pillow by one level on some pixels (0.017 after normalising).

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, tap count, and the fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for (x, wx) in w.iter().enumerate().take(n) {
            let v = if ww != 0.0 { wx / ww } else { *wx };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, ksize, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes as `PIL.Image.resize((w, h), Image.BILINEAR)` does for an RGB image.
pub fn resize_bilinear_pil(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let data = resize_u8(
        src.as_raw(),
        src.width() as usize,
        src.height() as usize,
        3,
        out_w as usize,
        out_h as usize,
    );
    RgbImage::from_raw(out_w, out_h, data).unwrap_or_default()
}

/// The same on interleaved 8-bit pixels with `c` channels (`L` or `RGB` in PIL terms).
pub fn resize_u8(src: &[u8], in_w: usize, in_h: usize, c: usize, ow: usize, oh: usize) -> Vec<u8> {
    if (ow, oh) == (in_w, in_h) {
        return src.to_vec();
    }
    if ow == 0 || oh == 0 || in_w == 0 || in_h == 0 {
        return vec![0; ow * oh * c];
    }
    let vert = coeffs(in_h, oh);
    // Only the rows the vertical pass reads go through the horizontal pass.
    let first = vert.bounds[0].0;
    let last = vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1;

    let (tmp, tmp_w) = if ow != in_w {
        let h = coeffs(in_w, ow);
        let mut out = vec![0u8; (last - first) * ow * c];
        for y in first..last {
            let row = &src[y * in_w * c..(y + 1) * in_w * c];
            let orow = &mut out[(y - first) * ow * c..(y - first + 1) * ow * c];
            for (xx, &(xmin, n)) in h.bounds.iter().enumerate() {
                let k = &h.k[xx * h.ksize..xx * h.ksize + n];
                for ch in 0..c {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += row[(x + xmin) * c + ch] as i32 * kx;
                    }
                    orow[xx * c + ch] = clip8(ss);
                }
            }
        }
        (out, ow)
    } else {
        (src[first * in_w * c..last * in_w * c].to_vec(), in_w)
    };

    if oh == in_h {
        return tmp;
    }
    let stride = tmp_w * c;
    let mut out = vec![0u8; oh * stride];
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
        let ymin = ymin - first;
        for i in 0..stride {
            let mut ss: i32 = 1 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += tmp[(y + ymin) * stride + i] as i32 * ky;
            }
            out[yy * stride + i] = clip8(ss);
        }
    }
    out
}
