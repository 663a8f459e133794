//! Pillow's bilinear resize with antialias, bit for bit (`Resample.c`, 8 bits per channel).
//!
//! Written here because torchvision's eval transform resizes a PIL image, and fidelity means
//! the same bytes: `fast_image_resize` and `image` use other fixed-point precisions and
//! rounding, which differ from Pillow by one level on some pixels (0.017 after normalising).
//!
//! Only a window of the output is computed ([`resize_window_u8`]): a centre crop keeps
//! crop × crop pixels, so a 1×60000 strip resized to 256 × 15,360,000 costs what the crop
//! costs. The vertical pass streams: each input row goes through the horizontal pass once and
//! is added into the output rows whose windows hold it, so memory is one row plus the output.

use std::ops::Range;

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per kept output pixel: first input index and tap count, and the fixed-point weights
/// (`ksize` per pixel).
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

/// `precompute_coeffs` + `normalize_coeffs_8bpc`, for the output pixels in `keep` only.
fn coeffs(in_size: usize, out_size: usize, keep: Range<usize>) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(keep.len());
    let mut k = vec![0i32; keep.len() * ksize];
    let mut w = vec![0f64; ksize];
    for (i, xx) in keep.enumerate() {
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
            k[i * ksize + x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin.min(in_size), n));
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
    resize_window_u8(src, in_w, in_h, c, (ow, oh), 0..ow, 0..oh)
}

/// Pillow's resize of `src` (`in_w × in_h`, `c` channels) to `out = (ow, oh)`, computing only
/// the output columns `cols` and rows `rows`: the result is `cols.len() × rows.len()` pixels,
/// identical to that window of the full resize. Memory is the window plus one row.
pub fn resize_window_u8(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    c: usize,
    out: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    let (ow, oh) = out;
    let cols = cols.start.min(ow)..cols.end.min(ow);
    let rows = rows.start.min(oh)..rows.end.min(oh);
    let (kw, kh) = (cols.len(), rows.len());
    let row_len = kw * c;
    let mut out = vec![0u8; kh * row_len];
    if kw == 0 || kh == 0 || in_w == 0 || in_h == 0 || src.len() < in_w * in_h * c {
        return out;
    }
    // PIL skips a pass whose size does not change.
    let horiz = (ow != in_w).then(|| coeffs(in_w, ow, cols.clone()));
    let hpass = |y: usize, dst: &mut [u8]| {
        let row = &src[y * in_w * c..(y + 1) * in_w * c];
        match &horiz {
            None => dst.copy_from_slice(&row[cols.start * c..cols.end * c]),
            Some(h) => {
                for (xx, &(xmin, n)) in h.bounds.iter().enumerate() {
                    let k = &h.k[xx * h.ksize..xx * h.ksize + n];
                    for ch in 0..c {
                        let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                        for (x, &kx) in k.iter().enumerate() {
                            ss = ss.wrapping_add((row[(x + xmin) * c + ch] as i32).wrapping_mul(kx));
                        }
                        dst[xx * c + ch] = clip8(ss);
                    }
                }
            }
        }
    };
    if oh == in_h {
        for (i, y) in rows.enumerate() {
            hpass(y, &mut out[i * row_len..(i + 1) * row_len]);
        }
        return out;
    }
    let vert = coeffs(in_h, oh, rows);
    let first = vert.bounds[0].0;
    let last = vert.bounds[kh - 1].0 + vert.bounds[kh - 1].1;
    // i32 and wrapping, as in Pillow's C: the same sums in a different order give the same bits.
    let mut acc = vec![1i32 << (PRECISION_BITS - 1); kh * row_len];
    let mut tmp = vec![0u8; row_len];
    // Windows start and end in non-decreasing order, so the output rows an input row feeds
    // are a run starting at `lo`.
    let mut lo = 0;
    for y in first..last {
        hpass(y, &mut tmp);
        while lo < kh && vert.bounds[lo].0 + vert.bounds[lo].1 <= y {
            lo += 1;
        }
        let mut r = lo;
        while r < kh && vert.bounds[r].0 <= y {
            let (ymin, n) = vert.bounds[r];
            if y < ymin + n {
                let k = vert.k[r * vert.ksize + (y - ymin)];
                let a = &mut acc[r * row_len..(r + 1) * row_len];
                for (s, &t) in a.iter_mut().zip(&tmp) {
                    *s = s.wrapping_add((t as i32).wrapping_mul(k));
                }
            }
            r += 1;
        }
    }
    for (o, &s) in out.iter_mut().zip(&acc) {
        *o = clip8(s);
    }
    out
}
