//! The AVX-512 kernel: 14 rows × 32 columns, 28 accumulators in zmm registers, each k-step's
//! A value broadcast inside the FMA (`{1to16}`, inline asm, since LLVM does not fold a
//! broadcast used twice). Its tile, packing and stem override [`Simd`]'s generic ones; the
//! tiling loop and the Winograd transforms are shared.
//!
//! Why a kernel of its own: the generic kernel instantiated for AVX-512 (8 × 32 and 8 × 48
//! tiles, broadcast then FMA, a 16×16 transpose for packing) matches it on one core with
//! everything in cache (204–232 against 206–226 GFLOP/s), but in the network it lost:
//! resnet50 25–28 against 19 ms at batch 1 and 185–190 against 136–144 ms at batch 8
//! (AMD EPYC, 2 threads, paired runs). Fourteen rows reuse each weight load more, and the
//! folded broadcasts leave the front end room for the prefetches.

use std::arch::x86_64::*;

use super::generic::{Finish, Pack, RunsTile, Stem, Tile};
use super::isa::Avx512;
use super::simd::{Simd, Vectorized};
use super::ROW_STEPS;
use super::{KC, STEM_STEP};

/// Rows per micro-kernel call and columns per panel (two 16-lane vectors).
const MR: usize = 14;
const NR: usize = 32;

/// Applies `finish` (bias, residual, ReLU) to rows `..R` of `acc` and stores them: a macro,
/// since a function would take the accumulators through memory.
macro_rules! store {
    ($acc:ident, $R:ident, $c:expr, $ldc:expr, ($m0:expr, $m1:expr), $finish:expr) => {{
        let (c, ldc, m0, m1): (*mut f32, usize, __mmask16, __mmask16) = ($c, $ldc, $m0, $m1);
        let finish: Finish<'_> = $finish;
        if let Some((bias, res, relu)) = finish {
            let bias0 = _mm512_maskz_loadu_ps(m0, bias.as_ptr());
            let bias1 = _mm512_maskz_loadu_ps(m1, bias.as_ptr().add(16));
            let zero = _mm512_setzero_ps();
            for (r, acc) in $acc.iter_mut().enumerate().take($R) {
                acc[0] = _mm512_add_ps(acc[0], bias0);
                acc[1] = _mm512_add_ps(acc[1], bias1);
                if let Some((rp, ldr)) = res {
                    acc[0] = _mm512_add_ps(acc[0], _mm512_maskz_loadu_ps(m0, rp.add(r * ldr)));
                    acc[1] = _mm512_add_ps(acc[1], _mm512_maskz_loadu_ps(m1, rp.add(r * ldr + 16)));
                }
                if relu {
                    acc[0] = _mm512_max_ps(acc[0], zero);
                    acc[1] = _mm512_max_ps(acc[1], zero);
                }
            }
        }
        for (r, acc) in $acc.iter().enumerate().take($R) {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, acc[0]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, acc[1]);
        }
    }};
}

/// One k-step for rows `..R`: row `r` broadcasts its A value from `[ap + r·step]` (bytes)
/// inside each FMA (`{1to16}`): one fused uop instead of a broadcast plus two FMAs. The
/// front end is what the kernel runs out of when the core's other hyperthread is busy, and
/// LLVM never folds a broadcast that is used twice.
macro_rules! fma_rows {
    ($acc:ident, $R:ident, $ap:expr, $b0:expr, $b1:expr, $step:expr) => {
        fma_rows!(@ $acc, $R, $ap, $b0, $b1, $step; 0 1 2 3 4 5 6 7 8 9 10 11 12 13)
    };
    (@ $acc:ident, $R:ident, $ap:expr, $b0:expr, $b1:expr, $step:expr; $($r:literal)*) => {$(
        if $r < $R {
            std::arch::asm!(
                "vfmadd231ps {x}, {b0}, dword ptr [{a} + {o}]{{1to16}}",
                "vfmadd231ps {y}, {b1}, dword ptr [{a} + {o}]{{1to16}}",
                x = inout(zmm_reg) $acc[$r][0],
                y = inout(zmm_reg) $acc[$r][1],
                b0 = in(zmm_reg) $b0,
                b1 = in(zmm_reg) $b1,
                a = in(reg) $ap,
                o = const $r * $step,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
    )*};
}

/// [`fma_rows`] for panels with at most 16 real columns (16-channel layers): one FMA per row,
/// so a narrow conv does not spend half its FMAs on the panel's zero padding.
macro_rules! fma_rows_half {
    ($acc:ident, $R:ident, $ap:expr, $b0:expr, $step:expr) => {
        fma_rows_half!(@ $acc, $R, $ap, $b0, $step; 0 1 2 3 4 5 6 7 8 9 10 11 12 13)
    };
    (@ $acc:ident, $R:ident, $ap:expr, $b0:expr, $step:expr; $($r:literal)*) => {$(
        if $r < $R {
            std::arch::asm!(
                "vfmadd231ps {x}, {b0}, dword ptr [{a} + {o}]{{1to16}}",
                x = inout(zmm_reg) $acc[$r][0],
                b0 = in(zmm_reg) $b0,
                a = in(reg) $ap,
                o = const $r * $step,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
    )*};
}

/// One k-step of `B`'s panel row at `$bp` against rows `..R` of A at `$ap` (`$step` bytes
/// apart): both vectors, or the first alone for a `HALF` panel.
macro_rules! k_step {
    ($acc:ident, $R:ident, $HALF:ident, $ap:expr, $bp:expr, $step:expr) => {{
        let b0 = _mm512_loadu_ps($bp);
        if $HALF {
            fma_rows_half!($acc, $R, $ap, b0, $step);
        } else {
            let b1 = _mm512_loadu_ps($bp.add(16));
            fma_rows!($acc, $R, $ap, b0, b1, $step);
        }
    }};
}

/// Calls `$f::<R, HALF>($t)` for the tile's row count `R` and whether its panel has at most
/// 16 real columns, so that each has its own code with every accumulator in a register.
macro_rules! by_rows_half {
    ($f:ident($t:expr)) => {
        by_rows_half!(@ $f($t); 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    };
    (@ $f:ident($t:expr); $($r:literal)*) => {
        match ($t.rows, $t.ncols <= 16) {
            $(($r, false) => $f::<$r, false>($t),)*
            $(($r, true) => $f::<$r, true>($t),)*
            _ => unreachable!("a tile of {} rows", $t.rows),
        }
    };
}

/// The accumulators of rows `..R`: C's values (at most `ncols` columns, masks `m0`, `m1`) to
/// add to, or zeros. Always `MR` rows so the kernels' asm can name them; rows past `R` are
/// never touched.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_acc<const R: usize>(
    accumulate: bool,
    c: *const f32,
    ldc: usize,
    (m0, m1): (__mmask16, __mmask16),
) -> [[__m512; 2]; MR] {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate().take(R) {
            acc[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
            acc[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
        }
    }
    acc
}

/// Asks for the cache lines of `n` floats at `p` (at most 32: two lines, or three unaligned).
#[inline(always)]
unsafe fn prefetch(p: *const f32, n: usize) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    _mm_prefetch::<_MM_HINT_T0>(p.add(n - 1) as *const i8);
    if n > 16 {
        _mm_prefetch::<_MM_HINT_T0>(p.add(16) as *const i8);
    }
}

/// Transposes 16 rows of 16 floats: afterwards `r[j]` lane `i` is the old `r[i]` lane `j`.
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        let b = 4 * i;
        r[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        r[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        r[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        r[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            t[b + i] = _mm512_shuffle_f32x4::<0x88>(r[b + i], r[b + 4 + i]);
            t[b + 4 + i] = _mm512_shuffle_f32x4::<0xDD>(r[b + i], r[b + 4 + i]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
        r[8 + i] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[8 + i]);
    }
}

/// [`super::pack_a_tiles`] on AVX-512: 16 columns of a tile's 14 rows at a time, loaded as rows, transposed
/// in registers and stored as 16 runs of 14 (several times faster than copying one float at
/// a time down the columns).
#[target_feature(enable = "avx512f")]
unsafe fn pack(p: Pack<'_>) {
    let Pack {
        m,
        k,
        run,
        src,
        out,
        tiles: which,
    } = p;
    let tiles = m.div_ceil(MR);
    let mut ptrs = [std::ptr::null(); MR];
    let ptrs = &mut ptrs[..];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let chunk = out.add(tiles * MR * k0);
        for t in which.clone() {
            let tile = chunk.add(t * MR * kc);
            let rows = (m - t * MR).min(MR);
            let mut x = k0;
            while x < k0 + kc {
                let seg = x / run;
                let end = ((seg + 1) * run).min(k0 + kc);
                ptrs.fill(std::ptr::null());
                src(t * MR, seg, ptrs);
                ptrs[rows..].fill(std::ptr::null());
                while x < end {
                    let w = (end - x).min(16);
                    let mask = if w == 16 {
                        0xFFFF
                    } else {
                        ((1u32 << w) - 1) as __mmask16
                    };
                    let off = x - seg * run;
                    // Fixed-size loops that unroll, so the 16 rows live in registers (a
                    // loop over `w` kept them on the stack).
                    let mut v: [__m512; 16] = std::array::from_fn(|r| match ptrs.get(r) {
                        Some(p) if !p.is_null() => _mm512_maskz_loadu_ps(mask, p.add(off)),
                        _ => _mm512_setzero_ps(),
                    });
                    transpose16(&mut v);
                    let dst = tile.add((x - k0) * MR);
                    for (j, v) in v.iter().enumerate() {
                        if j < w {
                            _mm512_mask_storeu_ps(dst.add(j * MR), (1 << MR) - 1, *v);
                        }
                    }
                    x += w;
                }
            }
        }
        k0 += kc;
    }
}

/// [`Simd::tile`] on AVX-512: the tile's row count picks the kernel compiled for it, so
/// every accumulator stays in a register.
unsafe fn tile(t: Tile<'_>) {
    by_rows_half!(kernel(t))
}

/// `C (+)= A·B` for one tile: A packed `[k][MR]`, B a panel slice. Along the way
/// it asks for `pf.1` cache lines from `pf.0` on (up to two per step) and for `next`'s rows,
/// spread out so the requests never pile up in the fill buffers.
/// `HALF`: the panel's second vector is all padding (at most 16 real columns), so its FMAs
/// are skipped.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const HALF: bool>(t: Tile<'_>) {
    let Tile {
        k,
        a,
        b,
        pf: (pf, lines),
        next,
        c,
        ldc,
        ncols,
        accumulate,
        finish,
        ..
    } = t;
    debug_assert!(R <= MR);
    let (m0, m1) = masks(ncols);
    let mut acc = load_acc::<R>(accumulate, c, ldc, (m0, m1));
    let (mut ap, mut bp) = (a, b);
    // One of the next tile's rows every `space` steps.
    let space = (k / (next.rows + 1)).max(1);
    let (mut countdown, mut row) = (space, 0);
    for kk in 0..k {
        countdown -= 1;
        if countdown == 0 {
            countdown = space;
            if row < next.rows {
                if !next.c.is_null() {
                    prefetch(next.c.add(row * next.ldc), next.ncols);
                }
                if !next.r.is_null() {
                    prefetch(next.r.add(row * next.ldr), next.ncols);
                }
                row += 1;
            }
        }
        // To L2 only: in L1 the next slice would evict the one in use (0.96× at one
        // thread, 0.97–0.99× at two, against T0).
        if kk < lines {
            _mm_prefetch::<_MM_HINT_T1>(pf.add(kk * 16) as *const i8);
        }
        if kk + k < lines {
            _mm_prefetch::<_MM_HINT_T1>(pf.add((kk + k) * 16) as *const i8);
        }
        k_step!(acc, R, HALF, ap, bp, 4);
        ap = ap.add(MR);
        bp = bp.add(NR);
    }
    store!(acc, R, c, ldc, (m0, m1), finish);
}

/// [`Simd::runs_tile`] on AVX-512: [`kernel`]'s k-step over each run of an in-place A.
unsafe fn runs_tile(t: RunsTile<'_>) {
    by_rows_half!(runs_kernel(t))
}

#[target_feature(enable = "avx512f")]
unsafe fn runs_kernel<const R: usize, const HALF: bool>(t: RunsTile<'_>) {
    let RunsTile {
        runs,
        a_off,
        lda,
        b,
        c,
        ldc,
        ncols,
        accumulate,
        ..
    } = t;
    let (m0, m1) = masks(ncols);
    let mut acc = load_acc::<R>(accumulate, c, ldc, (m0, m1));
    let mut bp = b;
    for run in runs {
        let mut ap = run.start.add(a_off);
        for _ in 0..run.len {
            k_step!(acc, R, HALF, ap, bp, 4);
            ap = ap.add(lda);
            bp = bp.add(NR);
        }
    }
    store!(acc, R, c, ldc, (m0, m1), None);
}

/// [`super::row_tile`] on AVX-512 for `R` pixels `STEP` floats apart (a constant, so each
/// row's broadcast stays an immediate offset inside its FMA); `HALF` as in [`kernel`].
#[target_feature(enable = "avx512f")]
unsafe fn stem<const R: usize, const STEP: usize, const HALF: bool>(s: Stem<'_>) {
    let Stem {
        segs,
        run,
        b,
        c,
        ldc,
        ncols,
        bias,
        relu,
        ..
    } = s;
    let (m0, m1) = masks(ncols);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let mut bp = b;
    for &seg in segs {
        let mut ap = seg;
        for _ in 0..run {
            k_step!(acc, R, HALF, ap, bp, 4 * STEP);
            ap = ap.add(1);
            bp = bp.add(NR);
        }
    }
    store!(acc, R, c, ldc, (m0, m1), Some((bias, None, relu)));
}

/// [`stem`] for `s`'s row count, step and panel width.
unsafe fn stem_for(s: Stem<'_>) {
    unsafe fn steps<const R: usize, const HALF: bool>(s: Stem<'_>) {
        const _: () = assert!(ROW_STEPS.len() == 8);
        match s.step {
            STEM_STEP => stem::<R, STEM_STEP, HALF>(s),
            3 => stem::<R, 3, HALF>(s),
            16 => stem::<R, 16, HALF>(s),
            32 => stem::<R, 32, HALF>(s),
            64 => stem::<R, 64, HALF>(s),
            128 => stem::<R, 128, HALF>(s),
            256 => stem::<R, 256, HALF>(s),
            512 => stem::<R, 512, HALF>(s),
            other => unreachable!("no row kernel for a step of {other} floats"),
        }
    }
    by_rows_half!(steps(s))
}

/// The masks of a panel's two vectors for `ncols ≤ NR` real columns.
#[inline]
#[target_feature(enable = "avx512f")]
fn masks(ncols: usize) -> (__mmask16, __mmask16) {
    let m = |n: usize| if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 };
    (m(ncols), m(ncols.saturating_sub(16)))
}

// SAFETY: an `Avx512` token exists only where AVX-512F was detected.
unsafe impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const MR: usize = MR;
    const NV: usize = 2;

    #[inline(always)]
    unsafe fn vectorize<Op: Vectorized>(self, op: Op) -> Op::Output {
        #[target_feature(enable = "avx512f")]
        unsafe fn with<Op: Vectorized>(op: Op) -> Op::Output {
            op.run::<Avx512>()
        }
        // The token proves the CPU has AVX-512F.
        with(op)
    }

    super::simd::x86_ops!(__m512: _mm512_setzero_ps _mm512_set1_ps _mm512_loadu_ps _mm512_storeu_ps _mm512_fmadd_ps
        _mm512_fnmadd_ps _mm512_add_ps _mm512_sub_ps _mm512_mul_ps _mm512_max_ps);
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> __m512 {
        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
    }
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v)
    }
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> __m512 {
        _mm512_set1_ps(*p)
    }
    unsafe fn tile(t: Tile<'_>) {
        tile(t)
    }

    /// Its own packing loop rather than the shared one with a 16-wide `pack_cols`: the shared
    /// one cost 3–6 % at resnet50 batch 8 in paired runs (149.6/140.9, 145.8/139.4, 144.9/140.4 ms).
    unsafe fn pack(self, p: Pack<'_>) {
        pack(p)
    }

    unsafe fn stem(self, s: Stem<'_>) {
        stem_for(s)
    }

    unsafe fn runs_tile(t: RunsTile<'_>) {
        runs_tile(t)
    }
}
