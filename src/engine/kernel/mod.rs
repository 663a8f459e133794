//! The matrix kernels: `C[m × n] = A[m × k] · B[k × n]` with a fused epilogue (`+ bias`,
//! `+ residual`, ReLU), B pre-packed once at load time into panels of the kernel's width.
//!
//! Why our own: the `gemm` crate packs B on every call, cannot fuse an epilogue, and on stable
//! Rust runs AVX2 kernels only unless built with its `x86-v4` feature for every user. Which
//! kernel runs is an [`Isa`], chosen once per engine ([`Kernel::resolve`]):
//! - AVX-512 (`avx512.rs`): 14 × 32 tiles, hand-tuned with embedded-broadcast FMAs;
//! - AVX2 + FMA and NEON: the generic kernel (`generic.rs`) over [`simd::Simd`], 6 × 16 and
//!   8 × 12 tiles;
//! - portable: the `gemm` crate on row-major weights, for every other CPU.
//!
//! The packed kernels share the layouts below: B in `NR`-column panels, A packed in `MR`-row
//! tiles `KC` columns at a time, and the stem read in place.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod generic;
mod isa;
pub(crate) mod simd;

pub use isa::{Avx2, Avx512, Isa, Kernel, Neon};
use simd::Simd;

/// The most rows any kernel's tile has (AVX-512's 14): the size of row-pointer arrays.
pub const MAX_MR: usize = 14;
/// Depth per pass: a `KC × NR` slice of B stays in L1 while every row tile uses it.
pub const KC: usize = 256;
/// Output pixels apart, in floats, of the 7×7 stem's input rows: stride 2 × 3 channels.
pub const STEM_STEP: usize = 6;
/// The pixel steps that [`row_tile`] takes on every packed kernel (AVX-512 compiles one
/// kernel per step): the stem's, then stride-1 convs' channel counts.
pub const ROW_STEPS: [usize; 8] = [STEM_STEP, 3, 16, 32, 64, 128, 256, 512];

/// Runs `$body` with `$s` bound to the ISA's token, as a [`Simd`] type; `$portable` for the
/// portable kernel, which has none.
macro_rules! with_simd {
    ($isa:expr, $s:ident => $body:expr, portable => $portable:expr) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512($s) => $body,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2($s) => $body,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon($s) => $body,
            Isa::Portable => $portable,
            // Tokens of another architecture's ISA cannot be made here.
            #[allow(unreachable_patterns)]
            other => unreachable!("no {other} token exists on this architecture"),
        }
    };
}
pub(crate) use with_simd;

fn mr_of<S: Simd>(_: S) -> usize {
    S::MR
}
fn nr_of<S: Simd>(_: S) -> usize {
    S::NR
}

impl Isa {
    /// Rows per micro-kernel tile; pixel blocks come in whole tiles. (The portable kernel
    /// keeps AVX-512's blocking.)
    pub fn mr(self) -> usize {
        with_simd!(self, s => mr_of(s), portable => MAX_MR)
    }

    /// Columns per weight panel.
    pub fn nr(self) -> usize {
        with_simd!(self, s => nr_of(s), portable => 32)
    }
}

/// B (`k × n`, e.g. conv weights as `[kh·kw·cin, cout]`), packed into `nr`-column panels,
/// zero-padded on the right; or row-major for the portable kernel.
pub struct PackedB {
    pub k: usize,
    pub n: usize,
    isa: Isa,
    /// `panels × k × nr` floats: panel `j` holds columns `j·nr .. j·nr+nr`, row by row.
    panels: super::aligned::AlignedVec,
    /// Row-major `k × n`, only kept for the portable kernel.
    rows: Vec<f32>,
}

impl PackedB {
    /// Packs a row-major `k × n` matrix for `isa`.
    pub fn new(b: &[f32], k: usize, n: usize, isa: Isa) -> Self {
        assert_eq!(b.len(), k * n);
        Self::from_rows(b, k, n, n, isa)
    }

    /// Packs `k` rows of `n` floats that lie `ld` apart in `b` (a column block of a wider
    /// matrix, e.g. one group's channels of an NHWC gradient).
    pub fn from_rows(b: &[f32], k: usize, n: usize, ld: usize, isa: Isa) -> Self {
        assert!(n <= ld && (k == 0 || b.len() >= (k - 1) * ld + n));
        let nr = isa.nr();
        let np = n.div_ceil(nr);
        let (panels, rows) = if isa.packed() {
            let mut p = super::aligned::AlignedVec::zeros(np * k * nr);
            for j in 0..np {
                let cols = (n - j * nr).min(nr);
                for r in 0..k {
                    let dst = &mut p[(j * k + r) * nr..][..cols];
                    dst.copy_from_slice(&b[r * ld + j * nr..][..cols]);
                }
            }
            (p, Vec::new())
        } else {
            (
                Default::default(),
                (0..k).flat_map(|r| &b[r * ld..r * ld + n]).copied().collect(),
            )
        };
        PackedB {
            k,
            n,
            isa,
            panels,
            rows,
        }
    }

    /// A zero `k × n` matrix in panels, for a packed kernel, to be filled by
    /// [`PackedB::row_mut`].
    pub fn zeroed(k: usize, n: usize, isa: Isa) -> Self {
        debug_assert!(isa.packed());
        PackedB {
            k,
            n,
            isa,
            panels: super::aligned::AlignedVec::zeros(n.div_ceil(isa.nr()) * k * isa.nr()),
            rows: Vec::new(),
        }
    }

    /// Overwrites the matrix panel by panel: `fill(r, c0, out)` writes row `r`'s columns
    /// `c0..c0 + out.len()`, the rows coming in the order `rows` gives (every row once).
    /// Gathering straight from another layout (torch's conv weights) costs one pass instead
    /// of a reorder and a copy, and the order lets that pass read its source sequentially.
    /// Packed kernels only.
    pub fn refill(&mut self, rows: impl Iterator<Item = usize> + Clone, fill: impl Fn(usize, usize, &mut [f32])) {
        self.refill_panels(0..self.panels(), rows, fill)
    }

    /// [`PackedB::refill`] of panels `js` alone.
    pub fn refill_panels(
        &mut self,
        js: std::ops::Range<usize>,
        rows: impl Iterator<Item = usize> + Clone,
        fill: impl Fn(usize, usize, &mut [f32]),
    ) {
        let (k, n, nr) = (self.k, self.n, self.nr());
        for j in js {
            let cols = (n - j * nr).min(nr);
            for r in rows.clone() {
                fill(r, j * nr, &mut self.panels[(j * k + r) * nr..][..cols]);
            }
        }
    }

    /// [`PackedB::refill`] of `rows` a row at a time across the panels, for sources whose row
    /// `r` is one contiguous run that would fall out of L1 between panels.
    pub fn refill_by_rows(&mut self, rows: std::ops::Range<usize>, fill: impl Fn(usize, usize, &mut [f32])) {
        let (k, n, nr) = (self.k, self.n, self.nr());
        for r in rows {
            for j in 0..n.div_ceil(nr) {
                let cols = (n - j * nr).min(nr);
                fill(r, j * nr, &mut self.panels[(j * k + r) * nr..][..cols]);
            }
        }
    }

    /// The panels, `k × nr` floats each, to fill in place (columns `n..` of the last panel
    /// stay zero).
    pub fn panels_mut(&mut self) -> &mut [f32] {
        &mut self.panels
    }

    /// Columns per panel: the kernel's.
    fn nr(&self) -> usize {
        self.isa.nr()
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr())
    }

    /// The row-major `k × n` matrix back from the panels (or the portable copy).
    pub fn unpack(&self) -> Vec<f32> {
        if !self.is_packed() {
            return self.rows.clone();
        }
        let (nr, mut b) = (self.nr(), vec![0f32; self.k * self.n]);
        for j in 0..self.panels() {
            let cols = (self.n - j * nr).min(nr);
            for r in 0..self.k {
                b[r * self.n + j * nr..][..cols].copy_from_slice(&self.panels[(j * self.k + r) * nr..][..cols]);
            }
        }
        b
    }

    /// Panel `j`'s first float (`k × nr`, row by row). Packed kernels only.
    pub fn panel(&self, j: usize) -> *const f32 {
        debug_assert!(self.is_packed() && j < self.panels());
        self.panels[j * self.k * self.nr()..].as_ptr()
    }

    /// The kernel it is packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether this runs a packed kernel rather than the portable one.
    pub fn is_packed(&self) -> bool {
        !self.panels.is_empty()
    }
}

/// What happens to each output value before it is stored.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// One per output column (BatchNorm folded into the conv).
    pub bias: &'a [f32],
    /// Added before the ReLU: `(pointer to row 0 col 0 of this tile's columns, row stride)`.
    pub residual: Option<(*const f32, usize)>,
    pub relu: bool,
}

/// Floats of A packed by [`pack_a_tiles`] for tiles of `mr` rows: whole tiles, every `KC` chunk.
pub fn packed_len(m: usize, k: usize, mr: usize) -> usize {
    m.div_ceil(mr) * mr * k
}

/// Where one tile's rows read one segment of A's columns: called with the tile's first row and
/// the segment's index, it sets `rows[r]` to row `row0 + r`'s first value in that segment, or to
/// null for a row of zeros (conv padding). `rows` has the tile's `mr` entries; rows past `m`
/// are zeroed by the packer.
pub type RowSource<'a> = &'a (dyn Fn(usize, usize, &mut [*const f32]) + Sync);

/// Packs `m` rows × `k` columns of A, read through `src` in segments of `run` columns, into
/// `isa.mr()`-row tiles, `KC` columns at a time: chunk `k0..` starts at `tiles·mr·k0` and
/// holds tile `t` at `t·mr·kc`, laid out `[k][mr]` so the kernel's broadcasts read one
/// sequential stream.
///
/// Segments let a conv's taps be read straight from its NHWC input (implicit im2col): segment
/// `(ky, kx)` of an output pixel is `cin` contiguous input floats, or padding.
///
/// Several threads can pack one A, each its own `tiles`.
///
/// # Safety
/// Every non-null pointer `src` gives is readable for `run` floats (the last segment for
/// `k - (segments-1)·run`); `out` is valid for [`packed_len`]`(m, k, mr)` floats, and
/// concurrent calls write disjoint tiles. Packed kernels only.
pub unsafe fn pack_a_tiles(
    isa: Isa,
    m: usize,
    k: usize,
    run: usize,
    src: RowSource<'_>,
    out: *mut f32,
    tiles: std::ops::Range<usize>,
) {
    debug_assert!(run > 0 && tiles.end <= m.div_ceil(isa.mr()));
    let p = generic::Pack {
        m,
        k,
        run,
        src,
        out,
        tiles,
    };
    with_simd!(isa, s => s.pack(p), portable => unreachable!("the portable kernel reads A unpacked"))
}

/// [`pack_a_tiles`] for a plain row-major A (`m` rows of `k` floats, stride `lda`).
///
/// # Safety
/// As for [`pack_a_tiles`].
pub unsafe fn pack_a_rows(isa: Isa, m: usize, a: *const f32, lda: usize, k: usize, out: &mut [f32]) {
    debug_assert!(out.len() >= packed_len(m, k, isa.mr()));
    pack_a_rows_tiles(isa, m, a, lda, k, out.as_mut_ptr(), 0..m.div_ceil(isa.mr()));
}

/// [`pack_a_rows`] for only the tiles `tiles` (see [`pack_a_tiles`]).
///
/// # Safety
/// As for [`pack_a_tiles`].
pub unsafe fn pack_a_rows_tiles(
    isa: Isa,
    m: usize,
    a: *const f32,
    lda: usize,
    k: usize,
    out: *mut f32,
    tiles: std::ops::Range<usize>,
) {
    let (a, end) = (a as usize, m);
    let rows = move |row0: usize, _seg: usize, rows: &mut [*const f32]| {
        for (r, p) in rows.iter_mut().enumerate() {
            if row0 + r < end {
                *p = (a as *const f32).add((row0 + r) * lda);
            }
        }
    };
    pack_a_tiles(isa, m, k, k.max(1), &rows, out, tiles);
}

/// [`gemm`]'s product on `b`'s packed kernel, with A already packed by [`pack_a_tiles`], so
/// several tasks can share one packing.
///
/// # Safety
/// As for [`gemm`]; `packed` holds [`packed_len`]`(m, b.k, mr)` floats.
pub unsafe fn gemm_packed(
    m: usize,
    packed: &[f32],
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
    panels: std::ops::Range<usize>,
) {
    let g = generic::Gemm {
        m,
        packed,
        b,
        c,
        ldc,
        ep,
        panels,
    };
    with_simd!(b.isa, s => s.gemm_packed(g), portable => unreachable!("portable weights run through gemm"))
}

/// A stretch of an in-place A's k-steps for [`gemm_runs`]: `len` steps from `start`, `lda`
/// floats apart.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub start: *const f32,
    pub len: usize,
}

// SAFETY: a run only names floats to read; the tasks that share it read them, and the
// caller of `gemm_runs` vouches that they stay readable.
unsafe impl Send for Run {}
// SAFETY: as for Send: nothing is written through it.
unsafe impl Sync for Run {}

/// Rows of an in-place A for [`gemm_runs`]: `rows ≤ mr` rows whose values lie `a_off` floats
/// past each step's address, and the row of C they go to.
#[derive(Clone, Copy, Debug)]
pub struct RowTile {
    pub a_off: usize,
    pub c_row: usize,
    pub rows: usize,
}

/// `m` rows as tiles of near-equal height (at most `mr`): `(first row, rows)`.
pub fn row_tiles(m: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = m.div_ceil(mr);
    (0..tiles).map(move |t| (t * m / tiles, (t + 1) * m / tiles - t * m / tiles))
}

/// `C += A · B` (`C = A · B` if `overwrite`) for the rows in `tiles`, A read in place: the
/// k-steps are the `runs` in order, and tile row `r`'s value at step `i` of a run is at
/// `start + a_off + r + i · lda` (each step's rows contiguous); B packed, `Σ len` rows.
/// A conv's weight gradient takes this path transposed, `dWᵀ[(ky, kx, i)][o] = Σ_q
/// x_pad[q's window][(ky, kx, i)] · dy[q][o]`: a kernel row's `k · cin` values are contiguous
/// in the padded NHWC input, pixels `stride · cin` apart along an output row (one run per
/// output row), so neither the input's shifted copies (im2col) nor a strided B, whose rows
/// thrash L1's sets, are needed.
///
/// # Safety
/// Every address a tile reads is readable; `c` holds the tiles' rows of `b.n` floats at
/// stride `ldc`, written by no one else meanwhile. Packed kernels only.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_runs(
    tiles: &[RowTile],
    runs: &[Run],
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    debug_assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), b.k);
    let g = generic::Runs {
        tiles,
        runs,
        lda,
        b,
        c,
        ldc,
        overwrite,
    };
    with_simd!(b.isa, s => s.gemm_runs(g), portable => unreachable!("the portable kernel reads A packed"))
}

/// `C = A · B + bias` (ReLU'd if asked) for up to `mr` consecutive output pixels of a conv on
/// its padded NHWC input, one panel `j` of `b`, reading A in place: pixel `r`'s kernel row
/// `ky` is the `run` floats at `segs[ky] + r · step`. The 7×7 stride-2 stem takes this path
/// (step [`STEM_STEP`]), and so do a training step's stride-1 convs (step `cin`, a kernel row
/// being `k · cin` contiguous floats): neighbouring pixels' windows overlap, so reading them
/// in place skips a packing that cost as much as the products.
///
/// # Safety
/// `step` is one of [`ROW_STEPS`]; each `segs[ky]` is readable for `(rows - 1) · step + run`
/// floats; `b` has `segs.len() · run` rows; `c` holds `rows` rows of `ncols ≤ nr` floats at
/// stride `ldc`; `bias` has `ncols` floats. Packed kernels only.
#[allow(clippy::too_many_arguments)]
pub unsafe fn row_tile(
    rows: usize,
    segs: &[*const f32],
    run: usize,
    step: usize,
    b: &PackedB,
    j: usize,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    bias: &[f32],
    relu: bool,
) {
    debug_assert!(ROW_STEPS.contains(&step));
    let st = generic::Stem {
        rows,
        segs,
        run,
        step,
        b: b.panel(j),
        c,
        ldc,
        ncols,
        bias,
        relu,
    };
    with_simd!(b.isa, s => s.stem(st), portable => unreachable!("the portable kernel has no row path"))
}

/// `C[rows, cols of panels p0..p1] = A · B + epilogue` for `m` rows, on the portable kernel
/// (the `gemm` crate): C is pre-filled with bias (+ residual), accumulated into, then ReLU'd.
/// Packed kernels pack A instead ([`pack_a_tiles`]) and run [`gemm_packed`].
///
/// # Safety
/// `a` points at `m` rows of `b.k` floats with stride `lda`; `c` at `m` rows with stride `ldc`
/// covering columns `0..b.n` (the caller offsets it to the group's first column); a residual
/// likewise covers `m` rows and `b.n` columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
    panels: std::ops::Range<usize>,
) {
    debug_assert!(!b.is_packed(), "packed weights run through gemm_packed");
    if m == 0 || panels.is_empty() {
        return;
    }
    let col0 = panels.start * b.nr();
    let col1 = (panels.end * b.nr()).min(b.n);
    let n = col1 - col0;
    for r in 0..m {
        let (row, bias) = (c.add(r * ldc + col0), &ep.bias[col0..col1]);
        match ep.residual.map(|(res, ldr)| res.add(r * ldr + col0)) {
            // The residual already in place (Residual::InOut).
            Some(rr) if std::ptr::eq(rr, row) => {
                let row = std::slice::from_raw_parts_mut(row, n);
                row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
            }
            Some(rr) => {
                let (row, rr) = (
                    std::slice::from_raw_parts_mut(row, n),
                    std::slice::from_raw_parts(rr, n),
                );
                row.iter_mut().zip(bias).zip(rr).for_each(|((o, b), x)| *o = b + x);
            }
            None => std::slice::from_raw_parts_mut(row, n).copy_from_slice(bias),
        }
    }
    ::gemm::gemm(
        m,
        n,
        b.k,
        c.add(col0),
        1,
        ldc as isize,
        true,
        a,
        1,
        lda as isize,
        b.rows.as_ptr().add(col0),
        1,
        b.n as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        ::gemm::Parallelism::None,
    );
    if ep.relu {
        for r in 0..m {
            let row = std::slice::from_raw_parts_mut(c.add(r * ldc + col0), n);
            row.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Single-thread GEMM throughput on one pixel block, everything in cache: the kernels'
    /// raw speed, apart from the conv around them. `cargo test --release -- --ignored --nocapture kernel_throughput`
    #[test]
    #[ignore]
    fn kernel_throughput() {
        for isa in Kernel::available().into_iter().filter(|i| i.packed()) {
            for (m, k, n) in [(448, 256, 256), (448, 256, 1024), (196, 2048, 512), (3136, 64, 64)] {
                let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
                let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
                let pb = PackedB::new(&b, k, n, isa);
                let mut pa = vec![0f32; packed_len(m, k, isa.mr())];
                let mut c = vec![0f32; m * n];
                let bias = vec![0f32; n];
                let ep = Epilogue {
                    bias: &bias,
                    residual: None,
                    relu: true,
                };
                let reps = 200;
                let t0 = std::time::Instant::now();
                for _ in 0..reps {
                    // SAFETY: the buffers have the sizes the calls ask for.
                    unsafe {
                        pack_a_rows(isa, m, a.as_ptr(), k, k, &mut pa);
                        gemm_packed(m, &pa, &pb, c.as_mut_ptr(), n, ep, 0..pb.panels());
                    }
                }
                let s = t0.elapsed().as_secs_f64();
                let t1 = std::time::Instant::now();
                for _ in 0..reps {
                    // SAFETY: as above.
                    unsafe { pack_a_rows(isa, m, a.as_ptr(), k, k, &mut pa) };
                }
                let sp = t1.elapsed().as_secs_f64();
                println!(
                    "{isa} m{m} k{k} n{n}: {:.1} GFLOP/s with packing, packing {:.0}% of the time",
                    2.0 * (m * k * n * reps) as f64 / s / 1e9,
                    100.0 * sp / s
                );
            }
        }
    }
}
