//! The types a conv and its Winograd variant share: the activation shape (with the output
//! shapes of the layers around convs, and the NCHW ↔ NHWC layouts), what a conv adds to its
//! output, and the pointer wrapper that crosses threads. Both import this file; neither
//! imports the other for these.

/// An NHWC activation's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }

    /// The output of `spec` on this input, which has `pad` zeros still to imagine on each side.
    pub fn conv_out(self, spec: crate::model::ConvShape, pad: usize) -> Shape {
        let span = spec.dilation * (spec.k - 1) + 1;
        Shape {
            n: self.n,
            h: (self.h + 2 * pad - span) / spec.stride + 1,
            w: (self.w + 2 * pad - span) / spec.stride + 1,
            c: spec.cout,
        }
    }

    /// The output of the stem's 3×3 stride-2 max pool (padding 1).
    pub fn max_pooled(self) -> Shape {
        Shape {
            h: (self.h + 2 - 3) / 2 + 1,
            w: (self.w + 2 - 3) / 2 + 1,
            ..self
        }
    }

    /// Option A's shortcut output: every `stride`-th pixel, `c` channels.
    pub fn subsampled(self, stride: usize, c: usize) -> Shape {
        Shape {
            n: self.n,
            h: self.h.div_ceil(stride),
            w: self.w.div_ceil(stride),
            c,
        }
    }
}

/// One NHWC image (`h × w × c`) with a zero border of `p` pixels, into the first
/// `(h + 2p)(w + 2p)c` floats of `out` (borders written too, so `out` may hold anything).
pub(super) fn pad_image(image: &[f32], h: usize, w: usize, c: usize, p: usize, out: &mut [f32]) {
    let pw = w + 2 * p;
    for (y, row) in out[..(h + 2 * p) * pw * c].chunks_exact_mut(pw * c).enumerate() {
        match y.checked_sub(p).filter(|&iy| iy < h) {
            Some(iy) => {
                let (left, rest) = row.split_at_mut(p * c);
                let (mid, right) = rest.split_at_mut(w * c);
                left.fill(0.0);
                mid.copy_from_slice(&image[iy * w * c..][..w * c]);
                right.fill(0.0);
            }
            None => row.fill(0.0),
        }
    }
}

/// NCHW values as NHWC, into `out`.
pub fn nchw_to_nhwc(x: &[f32], s: Shape, out: &mut [f32]) {
    let (hw, c) = (s.h * s.w, s.c);
    for n in 0..s.n {
        for ch in 0..c {
            let src = &x[(n * c + ch) * hw..][..hw];
            for (p, &v) in src.iter().enumerate() {
                out[(n * hw + p) * c + ch] = v;
            }
        }
    }
}

/// An NHWC map as NCHW.
pub fn nhwc_to_nchw(x: &[f32], s: Shape) -> Vec<f32> {
    let (hw, c) = (s.h * s.w, s.c);
    let mut out = vec![0f32; x.len()];
    for n in 0..s.n {
        let (src, dst) = (&x[n * hw * c..(n + 1) * hw * c], &mut out[n * hw * c..(n + 1) * hw * c]);
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * hw + p] = v;
            }
        }
    }
    out
}

/// What a conv adds to its output before the ReLU.
#[derive(Clone, Copy)]
pub enum Residual<'a> {
    None,
    /// A tensor of the output's shape.
    From(&'a [f32]),
    /// What the output buffer holds when the conv starts: a block's input, overwritten in place
    /// (see [`Conv::adds_in_place`]). Each output value is read once and then written where it
    /// lay, so the store finds its line already in cache instead of fetching a cold one.
    InOut,
}

impl Residual<'_> {
    /// The residual's first float, given the output's.
    pub(crate) fn ptr(self, out: *mut f32) -> Option<*const f32> {
        match self {
            Residual::None => None,
            Residual::From(r) => Some(r.as_ptr()),
            Residual::InOut => Some(out.cast_const()),
        }
    }
}

/// Raw pointers shared across the worker threads; every task writes disjoint rows/columns.
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T>(pub(crate) T);

/// The pointer types [`Ptr`] may carry: plain f32 buffers and optional ones, nothing with
/// its own ownership or interior mutability.
pub(crate) trait RawF32: Copy {}
impl RawF32 for *const f32 {}
impl RawF32 for *mut f32 {}
impl RawF32 for Option<*const f32> {}

// SAFETY: a `Ptr` only carries an address into an f32 buffer that outlives the parallel
// section using it (the pool's scope ends before the buffer is dropped or resized), and the
// conv partition gives every task disjoint rows or columns to write; reads of shared input
// rows never race with writes, because a layer's input and output are different buffers or,
// for in-place residuals, each element is read by the task that then writes it.
unsafe impl<T: RawF32> Send for Ptr<T> {}
// SAFETY: as for `Send`: shared `&Ptr` only hands out copies of the address.
unsafe impl<T: RawF32> Sync for Ptr<T> {}

impl<T: Copy> Ptr<T> {
    /// Through a method, so closures capture the whole `Ptr` (Send + Sync), not its field.
    pub(crate) fn get(self) -> T {
        self.0
    }
}

/// `n` deterministic values in [−1, 1] that do not repeat with a short period, for tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 2654435761 + seed * 97) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}
