//! The vector operations the kernels and the Winograd transforms are written in, once, for any
//! vector width: an ISA token implements [`Simd`] with its registers and intrinsics, and
//! [`Simd::vectorize`] compiles the generic code for that ISA's features.
//!
//! Why not a crate: `pulp` and `macerator` abstract the same way, but neither exposes
//! AVX-512's embedded-broadcast FMA, which the AVX-512 kernel needs (it overrides the
//! provided GEMM, packing and stem methods with its own), and neither gives masked tails on
//! AVX2 as single instructions.

use super::generic::{self, Gemm, Pack, Stem, Tile};

/// Code to compile for one ISA. [`Simd::vectorize`] calls `run` inside a function built with
/// the ISA's features; `run` is `inline(always)` in every impl, so it and the generic code it
/// calls inline there, intrinsics included. (A closure cannot be marked so: one too large to
/// inline stayed a call, and every intrinsic in it a call too, 100× slower.)
pub(crate) trait Vectorized {
    type Output;
    /// # Safety
    /// Runs only inside `S::vectorize`, as the op's own contract requires.
    unsafe fn run<S: Simd>(self) -> Self::Output;
}

/// One ISA's vector type and operations, and its register tile: `MR` rows × `NV` vectors.
///
/// # Safety
/// Implemented only by tokens that prove the CPU has the ISA; every method assumes that, and
/// pointer arguments must be valid for the lanes they touch.
pub(crate) unsafe trait Simd: Copy + Send + Sync + 'static {
    type V: Copy;
    const LANES: usize;
    /// Rows per micro-kernel tile.
    const MR: usize;
    /// Vectors per tile row.
    const NV: usize;
    /// Columns per packed weight panel.
    const NR: usize = Self::NV * Self::LANES;

    /// Runs `op` compiled with this ISA's features: the generic code inlines into it.
    ///
    /// # Safety
    /// As `op` requires.
    unsafe fn vectorize<Op: Vectorized>(self, op: Op) -> Op::Output;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// The first `n < LANES` floats at `p`, zeros after; nothing past them is read.
    unsafe fn load_n(p: *const f32, n: usize) -> Self::V;
    /// Stores the first `n < LANES` lanes; nothing past them is written.
    unsafe fn store_n(p: *mut f32, v: Self::V, n: usize);
    /// `*p` in every lane.
    unsafe fn bcast(p: *const f32) -> Self::V;
    /// `a · b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c - a · b`, fused.
    unsafe fn fnma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;

    /// Asks for `p`'s cache line in L1 / L2 (a hint; none where the ISA has no cheap one).
    #[inline(always)]
    unsafe fn prefetch_l1(_p: *const f32) {}
    #[inline(always)]
    unsafe fn prefetch_l2(_p: *const f32) {}

    /// Packs columns `off..off + w` (`w ≤ LANES`) of the rows at `rows` (null: zeros) into
    /// `dst` as `w` runs of `rows.len()` floats. This default copies one float at a time.
    #[inline(always)]
    unsafe fn pack_cols(rows: &[*const f32], off: usize, w: usize, dst: *mut f32) {
        let mr = rows.len();
        for j in 0..w {
            for (r, p) in rows.iter().enumerate() {
                *dst.add(j * mr + r) = if p.is_null() { 0.0 } else { *p.add(off + j) };
            }
        }
    }

    /// One micro-kernel call of the tiling loop: the generic kernel unless overridden.
    #[inline(always)]
    unsafe fn tile(t: Tile<'_>) {
        generic::tile_rows::<Self>(t)
    }

    /// [`super::gemm_packed`] on this ISA.
    #[inline(always)]
    unsafe fn gemm_packed(self, g: Gemm<'_>) {
        self.vectorize(g)
    }

    /// [`super::gemm_runs`] on this ISA.
    #[inline(always)]
    unsafe fn gemm_runs(self, g: generic::Runs<'_>) {
        self.vectorize(g)
    }

    /// One micro-kernel call of [`super::gemm_runs`]: the generic kernel unless overridden.
    #[inline(always)]
    unsafe fn runs_tile(t: generic::RunsTile<'_>) {
        generic::runs_tile_rows::<Self>(t)
    }

    /// [`super::pack_a_tiles`] on this ISA.
    #[inline(always)]
    unsafe fn pack(self, p: Pack<'_>) {
        self.vectorize(p)
    }

    /// [`super::row_tile`] on this ISA.
    #[inline(always)]
    unsafe fn stem(self, s: Stem<'_>) {
        self.vectorize(s)
    }
}

/// The element-wise [`Simd`] methods of an x86 vector type, from its intrinsics (AVX2 and
/// AVX-512 name them alike).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_ops {
    ($v:ty: $zero:ident $splat:ident $load:ident $store:ident $fma:ident $fnma:ident $add:ident $sub:ident $mul:ident $max:ident) => {
        #[inline(always)]
        unsafe fn zero() -> $v {
            $zero()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> $v {
            $splat(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> $v {
            $load(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: $v) {
            $store(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: $v, b: $v, c: $v) -> $v {
            $fma(a, b, c)
        }
        #[inline(always)]
        unsafe fn fnma(a: $v, b: $v, c: $v) -> $v {
            $fnma(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: $v, b: $v) -> $v {
            $add(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: $v, b: $v) -> $v {
            $sub(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: $v, b: $v) -> $v {
            $mul(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: $v, b: $v) -> $v {
            $max(a, b)
        }
        #[inline(always)]
        unsafe fn prefetch_l1(p: *const f32) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }
        #[inline(always)]
        unsafe fn prefetch_l2(p: *const f32) {
            _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use x86_ops;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::isa::Avx2;
    use super::{Simd, Vectorized};

    /// `n` ones then zeros, as `_mm256_maskload_ps` masks: the window at `8 - n`.
    static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        _mm256_loadu_si256(MASKS.as_ptr().add(8 - n) as *const __m256i)
    }

    /// Transposes 8 rows of 8 floats: afterwards `r[j]` lane `i` is the old `r[i]` lane `j`.
    #[inline(always)]
    unsafe fn transpose8(r: &mut [__m256; 8]) {
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        let mut u = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let b = 4 * h;
            u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
            u[b + 1] = _mm256_shuffle_ps::<0xEE>(t[b], t[b + 2]);
            u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            u[b + 3] = _mm256_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
        }
        for i in 0..4 {
            r[i] = _mm256_permute2f128_ps::<0x20>(u[i], u[4 + i]);
            r[4 + i] = _mm256_permute2f128_ps::<0x31>(u[i], u[4 + i]);
        }
    }

    // SAFETY: an `Avx2` token exists only where AVX2 and FMA were detected.
    unsafe impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        /// 6 × 16: 12 accumulators, 2 weight vectors and a broadcast in 16 ymm registers. 4 × 24
        /// needs all 16, and LLVM spilled two in the loop: 55 against 125 GFLOP/s on one core.
        const MR: usize = 6;
        const NV: usize = 2;

        #[inline(always)]
        unsafe fn vectorize<Op: Vectorized>(self, op: Op) -> Op::Output {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn with<Op: Vectorized>(op: Op) -> Op::Output {
                op.run::<Avx2>()
            }
            // The token proves the CPU has AVX2 and FMA.
            with(op)
        }

        super::x86_ops!(__m256: _mm256_setzero_ps _mm256_set1_ps _mm256_loadu_ps _mm256_storeu_ps _mm256_fmadd_ps
            _mm256_fnmadd_ps _mm256_add_ps _mm256_sub_ps _mm256_mul_ps _mm256_max_ps);
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> __m256 {
            _mm256_maskload_ps(p, mask(n))
        }
        #[inline(always)]
        unsafe fn store_n(p: *mut f32, v: __m256, n: usize) {
            _mm256_maskstore_ps(p, mask(n), v)
        }
        #[inline(always)]
        unsafe fn bcast(p: *const f32) -> __m256 {
            _mm256_broadcast_ss(&*p)
        }
        /// Up to 8 rows × 8 columns loaded as rows, transposed in registers, stored as runs.
        #[inline(always)]
        unsafe fn pack_cols(rows: &[*const f32], off: usize, w: usize, dst: *mut f32) {
            let mr = rows.len();
            debug_assert!(mr <= 8 && w <= 8);
            let mut v: [__m256; 8] = std::array::from_fn(|r| match rows.get(r) {
                Some(p) if !p.is_null() && w == 8 => _mm256_loadu_ps(p.add(off)),
                Some(p) if !p.is_null() => _mm256_maskload_ps(p.add(off), mask(w)),
                _ => _mm256_setzero_ps(),
            });
            transpose8(&mut v);
            // Whole-vector stores overlap the next run, which the next store overwrites; the
            // last run is masked so nothing past this block is touched.
            for (j, v) in v.iter().enumerate().take(w) {
                if j + 1 < w {
                    _mm256_storeu_ps(dst.add(j * mr), *v);
                } else {
                    _mm256_maskstore_ps(dst.add(j * mr), mask(mr), *v);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::super::isa::Neon;
    use super::{Simd, Vectorized};

    // SAFETY: a `Neon` token exists only where NEON was detected.
    unsafe impl Simd for Neon {
        type V = float32x4_t;
        const LANES: usize = 4;
        /// 8 × 12: 24 accumulators, 3 weight vectors and a broadcast in 32 q registers.
        const MR: usize = 8;
        const NV: usize = 3;

        #[inline(always)]
        unsafe fn vectorize<Op: Vectorized>(self, op: Op) -> Op::Output {
            #[target_feature(enable = "neon")]
            unsafe fn with<Op: Vectorized>(op: Op) -> Op::Output {
                op.run::<Neon>()
            }
            // The token proves the CPU has NEON.
            with(op)
        }

        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            vst1q_f32(p, v)
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> float32x4_t {
            let mut t = [0f32; 4];
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n);
            vld1q_f32(t.as_ptr())
        }
        #[inline(always)]
        unsafe fn store_n(p: *mut f32, v: float32x4_t, n: usize) {
            let mut t = [0f32; 4];
            vst1q_f32(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
        }
        #[inline(always)]
        unsafe fn bcast(p: *const f32) -> float32x4_t {
            vld1q_dup_f32(p)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn fnma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmsq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vsubq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmaxq_f32(a, b)
        }
    }
}
