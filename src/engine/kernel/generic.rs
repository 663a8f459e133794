//! The packed GEMM, its A packing and the stem, written once over [`Simd`]: the AVX2 and NEON
//! kernels are this code compiled for their features. A tile of `MR` rows × `NV` vectors
//! lives in registers; each k-step loads the `NV` weight vectors, broadcasts each row's A value
//! and issues `MR · NV` FMAs. Every function here is `inline(always)`, so it lands inside the
//! ISA's [`Simd::vectorize`] and its intrinsics inline with it. The tiling loop
//! ([`gemm_packed`]) serves every packed kernel; AVX-512 brings its own [`Simd::tile`].

use super::simd::{Simd, Vectorized};
use super::{Epilogue, PackedB, RowSource, KC};

/// Calls `$f::<S, R>(...)` for the tile's row count `R = $rows ≤ S::MR`, so each count has
/// its own code with every accumulator in a register.
macro_rules! by_rows {
    ($rows:expr, $f:ident::<$S:ty>($($arg:expr),*)) => {
        match $rows {
            1 => $f::<$S, 1>($($arg),*),
            2 => $f::<$S, 2>($($arg),*),
            3 => $f::<$S, 3>($($arg),*),
            4 => $f::<$S, 4>($($arg),*),
            5 => $f::<$S, 5>($($arg),*),
            6 => $f::<$S, 6>($($arg),*),
            7 => $f::<$S, 7>($($arg),*),
            8 => $f::<$S, 8>($($arg),*),
            r => unreachable!("a tile of {r} rows"),
        }
    };
}

/// [`super::gemm_packed`]'s arguments, as an op to vectorize.
pub(crate) struct Gemm<'a> {
    pub m: usize,
    pub packed: &'a [f32],
    pub b: &'a PackedB,
    pub c: *mut f32,
    pub ldc: usize,
    pub ep: Epilogue<'a>,
    pub panels: std::ops::Range<usize>,
}

impl Vectorized for Gemm<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        gemm_packed::<S>(self)
    }
}

/// [`super::pack_a_tiles`]'s arguments.
pub(crate) struct Pack<'a> {
    pub m: usize,
    pub k: usize,
    pub run: usize,
    pub src: RowSource<'a>,
    pub out: *mut f32,
    pub tiles: std::ops::Range<usize>,
}

impl Vectorized for Pack<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        pack::<S>(self)
    }
}

/// [`super::row_tile`]'s arguments.
pub(crate) struct Stem<'a> {
    pub rows: usize,
    pub segs: &'a [*const f32],
    pub run: usize,
    pub step: usize,
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub ncols: usize,
    pub bias: &'a [f32],
    pub relu: bool,
}

impl Vectorized for Stem<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        by_rows!(self.rows, stem_rows::<S>(self))
    }
}

/// One micro-kernel call: `C (+)= A·B` for `rows` rows, A packed `[k][MR]`, B a packed
/// panel's `k` rows of `NR` floats, `finish` on the last pass over k. Along the way it asks
/// L2 for `pf.1` lines of the next weight slice from `pf.0` on, and for `next`'s rows.
#[derive(Clone, Copy)]
pub(crate) struct Tile<'a> {
    pub rows: usize,
    pub k: usize,
    pub a: *const f32,
    pub b: *const f32,
    pub pf: (*const f32, usize),
    pub next: NextRows,
    pub c: *mut f32,
    pub ldc: usize,
    pub ncols: usize,
    /// Add to what C holds (a later pass over k).
    pub accumulate: bool,
    pub finish: Finish<'a>,
}

/// The next tile's output and residual rows (null: none), which a tile asks for a row at a
/// time while it computes: cold lines its stores would otherwise stall on.
#[derive(Clone, Copy)]
pub(crate) struct NextRows {
    pub c: *const f32,
    pub ldc: usize,
    pub r: *const f32,
    pub ldr: usize,
    pub rows: usize,
    pub ncols: usize,
}

impl NextRows {
    pub const NONE: NextRows = NextRows {
        c: std::ptr::null(),
        ldc: 0,
        r: std::ptr::null(),
        ldr: 0,
        rows: 0,
        ncols: 0,
    };
}

/// `(bias, residual, relu)`, applied on the last pass over k only.
pub(crate) type Finish<'a> = Option<(&'a [f32], Option<(*const f32, usize)>, bool)>;

/// The largest tile any generic ISA uses (NEON's 8 × 3 vectors); the arrays below are this
/// size and the unused part vanishes once `MR` and `NV` are constants.
const MAX_R: usize = 8;
const MAX_NV: usize = 3;

type Acc<S> = [[<S as Simd>::V; MAX_NV]; MAX_R];

/// Vector `v` of a row of `ncols` real columns: whole, a tail, or nothing.
#[inline(always)]
unsafe fn load_cols<S: Simd>(p: *const f32, ncols: usize, v: usize) -> S::V {
    let have = ncols.saturating_sub(v * S::LANES);
    if have >= S::LANES {
        S::load(p.add(v * S::LANES))
    } else if have > 0 {
        S::load_n(p.add(v * S::LANES), have)
    } else {
        S::zero()
    }
}

#[inline(always)]
unsafe fn store_cols<S: Simd>(p: *mut f32, x: S::V, ncols: usize, v: usize) {
    let have = ncols.saturating_sub(v * S::LANES);
    if have >= S::LANES {
        S::store(p.add(v * S::LANES), x)
    } else if have > 0 {
        S::store_n(p.add(v * S::LANES), x, have)
    }
}

/// `acc[r] += Σ_k A[r, k] · B[k]` for rows `..R`: row `r`'s k-th value is at
/// `a + r·a_row + k·a_k`, B is `k` rows of `NR` floats `b_k` apart. Every `k / (next.rows + 1)` steps it
/// asks for one of `next`'s rows, so the requests never pile up in the fill buffers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn accumulate<S: Simd, const R: usize>(
    out: &mut Acc<S>,
    k: usize,
    a: *const f32,
    a_row: usize,
    a_k: usize,
    b: *const f32,
    b_k: usize,
    next: NextRows,
) {
    // A local copy, so the accumulators live in registers through the loop (through the
    // reference, LLVM stored all 24 of NEON's to the stack on every step).
    let mut acc_local = *out;
    let acc = &mut acc_local;
    let (mut ap, mut bp) = (a, b);
    let space = (k / (next.rows + 1)).max(1);
    let (mut countdown, mut row) = (space, 0);
    for _ in 0..k {
        countdown -= 1;
        if countdown == 0 {
            countdown = space;
            if row < next.rows {
                // A row's first and last column: one line, or the two it straddles.
                let last = next.ncols.max(1) - 1;
                if !next.c.is_null() {
                    S::prefetch_l1(next.c.add(row * next.ldc));
                    S::prefetch_l1(next.c.add(row * next.ldc + last));
                }
                if !next.r.is_null() {
                    S::prefetch_l1(next.r.add(row * next.ldr));
                    S::prefetch_l1(next.r.add(row * next.ldr + last));
                }
                row += 1;
            }
        }
        let mut bv = [S::zero(); MAX_NV];
        for (v, x) in bv.iter_mut().enumerate().take(S::NV) {
            *x = S::load(bp.add(v * S::LANES));
        }
        for (r, acc) in acc.iter_mut().enumerate().take(R) {
            let x = S::bcast(ap.add(r * a_row));
            for v in 0..S::NV {
                acc[v] = S::fma(x, bv[v], acc[v]);
            }
        }
        ap = ap.add(a_k);
        bp = bp.add(b_k);
    }
    *out = acc_local;
}

/// The accumulators of rows `..R`: C's `ncols` columns to add to, or zeros.
#[inline(always)]
unsafe fn load_acc<S: Simd, const R: usize>(accumulate: bool, c: *const f32, ldc: usize, ncols: usize) -> Acc<S> {
    let mut acc: Acc<S> = [[S::zero(); MAX_NV]; MAX_R];
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate().take(R) {
            for (v, x) in acc.iter_mut().enumerate().take(S::NV) {
                *x = load_cols::<S>(c.add(r * ldc), ncols, v);
            }
        }
    }
    acc
}

/// Applies `finish` (bias, residual, ReLU) to rows `..R` and stores their `ncols` columns.
#[inline(always)]
unsafe fn store<S: Simd, const R: usize>(acc: &mut Acc<S>, c: *mut f32, ldc: usize, ncols: usize, finish: Finish<'_>) {
    if let Some((bias, res, relu)) = finish {
        let mut bv = [S::zero(); MAX_NV];
        for (v, x) in bv.iter_mut().enumerate().take(S::NV) {
            *x = load_cols::<S>(bias.as_ptr(), ncols, v);
        }
        let zero = S::zero();
        for (r, acc) in acc.iter_mut().enumerate().take(R) {
            for v in 0..S::NV {
                acc[v] = S::add(acc[v], bv[v]);
                if let Some((rp, ldr)) = res {
                    acc[v] = S::add(acc[v], load_cols::<S>(rp.add(r * ldr), ncols, v));
                }
                if relu {
                    acc[v] = S::max(acc[v], zero);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(R) {
        for (v, x) in acc.iter().enumerate().take(S::NV) {
            store_cols::<S>(c.add(r * ldc), *x, ncols, v);
        }
    }
}

/// [`Tile`] for `R` rows.
#[inline(always)]
unsafe fn tile<S: Simd, const R: usize>(t: Tile<'_>) {
    let mut acc = load_acc::<S, R>(t.accumulate, t.c, t.ldc, t.ncols);
    let (pf, lines) = t.pf;
    for l in 0..lines.min(2 * t.k) {
        S::prefetch_l2(pf.add(l * 16));
    }
    accumulate::<S, R>(&mut acc, t.k, t.a, 1, S::MR, t.b, S::NR, t.next);
    store::<S, R>(&mut acc, t.c, t.ldc, t.ncols, t.finish);
}

/// [`Simd::tile`]'s generic body: the tile's row count picks its compiled variant.
#[inline(always)]
pub(super) unsafe fn tile_rows<S: Simd>(t: Tile<'_>) {
    by_rows!(t.rows, tile::<S>(t))
}

/// [`super::gemm_packed`] for `S`: panels in the outer loop, tiles inside, each tile
/// prefetching its share of the next weight slice and the next tile's output rows.
#[inline(always)]
pub(super) unsafe fn gemm_packed<S: Simd>(g: Gemm<'_>) {
    let Gemm {
        m,
        packed,
        b,
        c,
        ldc,
        ep,
        panels,
    } = g;
    let (mr, nr) = (S::MR, S::NR);
    let tiles = m.div_ceil(mr);
    let mut k0 = 0;
    while k0 < b.k {
        let kc = KC.min(b.k - k0);
        let chunk = &packed[tiles * mr * k0..];
        let last = k0 + kc == b.k;
        for j in panels.clone() {
            let col0 = j * nr;
            let ncols = (b.n - col0).min(nr);
            let bp = b.panel(j).add(k0 * nr);
            let bias = &ep.bias[col0..col0 + ncols];
            // The weights come from DRAM once per call (the network's weights outgrow the
            // caches), and the first tile of a panel would stall on them: each tile asks for
            // its share of the next slice (the next panel, or the next k-chunk of the first).
            let (nj, nk0) = if j + 1 < panels.end {
                (j + 1, k0)
            } else {
                (panels.start, k0 + kc)
            };
            let next_b = (nk0 < b.k).then(|| (b.panel(nj).add(nk0 * nr), KC.min(b.k - nk0) * nr / 16));
            for t in 0..tiles {
                let i = t * mr;
                let pf = next_b.map_or((std::ptr::null(), 0), |(nb, lines)| {
                    let l0 = t * lines / tiles;
                    (nb.add(l0 * 16), (t + 1) * lines / tiles - l0)
                });
                let res = ep.residual.map(|(r, ldr)| (r.add(i * ldr + col0), ldr));
                let c = c.add(i * ldc + col0);
                // The next tile's rows: written on the first pass, read and written on the last.
                let mut next = NextRows {
                    rows: (m - i).saturating_sub(mr).min(mr),
                    ncols,
                    ..NextRows::NONE
                };
                if k0 == 0 || last {
                    (next.c, next.ldc) = (c.wrapping_add(mr * ldc), ldc);
                }
                if let (true, Some((rp, ldr))) = (last, res) {
                    (next.r, next.ldr) = (rp.wrapping_add(mr * ldr), ldr);
                }
                S::tile(Tile {
                    rows: (m - i).min(mr),
                    k: kc,
                    a: chunk.as_ptr().add(t * mr * kc),
                    b: bp,
                    pf,
                    next,
                    c,
                    ldc,
                    ncols,
                    accumulate: k0 > 0,
                    finish: last.then_some((bias, res, ep.relu)),
                });
            }
        }
        k0 += kc;
    }
}

/// [`super::gemm_runs`]'s arguments.
pub(crate) struct Runs<'a> {
    pub tiles: &'a [super::RowTile],
    pub runs: &'a [super::Run],
    pub lda: usize,
    pub b: &'a PackedB,
    pub c: *mut f32,
    pub ldc: usize,
    pub overwrite: bool,
}

impl Vectorized for Runs<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        gemm_runs::<S>(self)
    }
}

/// One micro-kernel call over an in-place A: `C (+)= A·B` for `rows` rows, the k-steps in
/// `runs` (row `r`'s value at `start + a_off + r + i·lda` for the run's step `i`), B `NR`-wide
/// rows from `b` on.
#[derive(Clone, Copy)]
pub(crate) struct RunsTile<'a> {
    pub rows: usize,
    pub runs: &'a [super::Run],
    pub a_off: usize,
    pub lda: usize,
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub ncols: usize,
    pub accumulate: bool,
}

/// [`RunsTile`] for `R` rows: [`accumulate`] run by run, the accumulators kept throughout.
#[inline(always)]
unsafe fn runs_tile<S: Simd, const R: usize>(t: RunsTile<'_>) {
    let mut acc = load_acc::<S, R>(t.accumulate, t.c, t.ldc, t.ncols);
    let mut bp = t.b;
    for run in t.runs {
        accumulate::<S, R>(
            &mut acc,
            run.len,
            run.start.add(t.a_off),
            1,
            t.lda,
            bp,
            S::NR,
            NextRows::NONE,
        );
        bp = bp.add(run.len * S::NR);
    }
    store::<S, R>(&mut acc, t.c, t.ldc, t.ncols, None);
}

/// [`Simd::runs_tile`]'s generic body.
#[inline(always)]
pub(super) unsafe fn runs_tile_rows<S: Simd>(t: RunsTile<'_>) {
    by_rows!(t.rows, runs_tile::<S>(t))
}

/// [`super::gemm_runs`] for `S`: per `KC` chunk of k, panels outside (a `KC × NR` slice of B
/// stays in L1), the row tiles inside.
#[inline(always)]
pub(super) unsafe fn gemm_runs<S: Simd>(g: Runs<'_>) {
    let Runs {
        tiles,
        runs,
        lda,
        b,
        c,
        ldc,
        overwrite,
    } = g;
    let nr = S::NR;
    // The runs cut at chunk boundaries, reused from chunk to chunk.
    let mut chunk: Vec<super::Run> = Vec::new();
    let (mut next, mut used) = (0, 0);
    let mut k0 = 0;
    while k0 < b.k {
        let kc = KC.min(b.k - k0);
        chunk.clear();
        let mut need = kc;
        while need > 0 {
            let r = runs[next];
            let len = (r.len - used).min(need);
            chunk.push(super::Run {
                start: r.start.add(used * lda),
                len,
            });
            (used, need) = (used + len, need - len);
            if used == r.len {
                (next, used) = (next + 1, 0);
            }
        }
        for j in 0..b.panels() {
            let col0 = j * nr;
            let bp = b.panel(j).add(k0 * nr);
            for t in tiles {
                S::runs_tile(RunsTile {
                    rows: t.rows,
                    runs: &chunk,
                    a_off: t.a_off,
                    lda,
                    b: bp,
                    c: c.add(t.c_row * ldc + col0),
                    ldc,
                    ncols: (b.n - col0).min(nr),
                    accumulate: k0 > 0 || !overwrite,
                });
            }
        }
        k0 += kc;
    }
}

/// [`super::pack_a_tiles`] for `S`: `LANES` columns of a tile's rows at a time.
#[inline(always)]
pub(super) unsafe fn pack<S: Simd>(p: Pack<'_>) {
    let Pack {
        m,
        k,
        run,
        src,
        out,
        tiles: which,
    } = p;
    let mr = S::MR;
    let tiles = m.div_ceil(mr);
    let mut ptrs = [std::ptr::null(); super::MAX_MR];
    let ptrs = &mut ptrs[..mr];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let chunk = out.add(tiles * mr * k0);
        for t in which.clone() {
            let tile = chunk.add(t * mr * kc);
            let rows = (m - t * mr).min(mr);
            let mut x = k0;
            while x < k0 + kc {
                let seg = x / run;
                let end = ((seg + 1) * run).min(k0 + kc);
                ptrs.fill(std::ptr::null());
                src(t * mr, seg, ptrs);
                ptrs[rows..].fill(std::ptr::null());
                while x < end {
                    let w = (end - x).min(S::LANES);
                    S::pack_cols(ptrs, x - seg * run, w, tile.add((x - k0) * mr));
                    x += w;
                }
            }
        }
        k0 += kc;
    }
}

/// [`super::row_tile`] for `S`, `R` pixels.
#[inline(always)]
unsafe fn stem_rows<S: Simd, const R: usize>(s: Stem<'_>) {
    let mut acc: Acc<S> = [[S::zero(); MAX_NV]; MAX_R];
    for (ky, &seg) in s.segs.iter().enumerate() {
        let b = s.b.add(ky * s.run * S::NR);
        accumulate::<S, R>(&mut acc, s.run, seg, s.step, 1, b, S::NR, NextRows::NONE);
    }
    store::<S, R>(&mut acc, s.c, s.ldc, s.ncols, Some((s.bias, None, s.relu)));
}
