//! The types a conv and its Winograd variant share: the activation shape, what a conv adds
//! to its output, and the pointer wrapper that crosses threads. Both import this file; neither
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
