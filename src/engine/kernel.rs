//! The matrix kernel: `C[m × n] = A[m × k] · B[k × n]` with a fused epilogue
//! (`+ bias`, `+ residual`, ReLU), B pre-packed once at load time.
//!
//! Why our own: the `gemm` crate packs B on every call, cannot fuse an epilogue, and on stable
//! Rust runs AVX2 kernels only unless built with its `x86-v4` feature for every user. Here the
//! AVX-512 micro-kernel (14 rows × 32 columns, 28 accumulators in zmm registers) is picked at run
//! time; other CPUs use `gemm` (AVX2/FMA, NEON, scalar) on the same packed layout's source matrix.

/// Columns per packed panel: two 16-lane vectors.
pub const NR: usize = 32;
/// Rows per micro-kernel call.
pub const MR: usize = 14;
/// Depth per pass: a `KC × NR` slice of B (32 KB) stays in L1 while every row tile uses it.
pub const KC: usize = 256;

/// B (`k × n`, e.g. conv weights as `[kh·kw·cin, cout]`), packed into `NR`-column panels,
/// zero-padded on the right; plus the row-major source for the portable path.
pub struct PackedB {
    pub k: usize,
    pub n: usize,
    /// `panels × k × NR` floats: panel `j` holds columns `j·NR .. j·NR+NR`, row by row.
    panels: super::aligned::AlignedVec,
    /// Row-major `k × n`, only kept when the portable path is in use.
    rows: Vec<f32>,
}

impl PackedB {
    /// Packs a row-major `k × n` matrix for `kernel`.
    pub fn new(b: &[f32], k: usize, n: usize, kernel: Kernel) -> Self {
        assert_eq!(b.len(), k * n);
        let np = n.div_ceil(NR);
        let (panels, rows) = if kernel.avx512() {
            let mut p = super::aligned::AlignedVec::zeros(np * k * NR);
            for j in 0..np {
                let cols = (n - j * NR).min(NR);
                for r in 0..k {
                    let dst = &mut p[(j * k + r) * NR..][..cols];
                    dst.copy_from_slice(&b[r * n + j * NR..][..cols]);
                }
            }
            (p, Vec::new())
        } else {
            (Default::default(), b.to_vec())
        };
        PackedB { k, n, panels, rows }
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The row-major `k × n` matrix back from the panels (or the portable copy).
    pub fn unpack(&self) -> Vec<f32> {
        if !self.is_packed() {
            return self.rows.clone();
        }
        let mut b = vec![0f32; self.k * self.n];
        for j in 0..self.panels() {
            let cols = (self.n - j * NR).min(NR);
            for r in 0..self.k {
                b[r * self.n + j * NR..][..cols].copy_from_slice(&self.panels[(j * self.k + r) * NR..][..cols]);
            }
        }
        b
    }

    /// Panel `j`'s first float (`k × NR`, row by row). AVX-512 engines only.
    pub fn panel(&self, j: usize) -> *const f32 {
        debug_assert!(self.is_packed() && j < self.panels());
        self.panels[j * self.k * NR..].as_ptr()
    }

    /// Whether this runs the AVX-512 kernel (packed panels) rather than the portable one.
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

/// Floats of A packed by [`pack_a_tiles`]: whole `MR`-row tiles, every `KC` chunk.
pub fn packed_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// Where one tile's rows read one segment of A's columns: called with the tile's first row and
/// the segment's index, it sets `rows[r]` to row `row0 + r`'s first value in that segment, or to
/// null for a row of zeros (conv padding). Rows past `m` are zeroed by the packer.
pub type RowSource<'a> = &'a (dyn Fn(usize, usize, &mut [*const f32; MR]) + Sync);

/// Packs `m` rows × `k` columns of A, read through `src` in segments of `run` columns, into
/// `MR`-row tiles, `KC` columns at a time: chunk `k0..` starts at `tiles·MR·k0` and holds tile
/// `t` at `t·MR·kc`, laid out `[k][MR]` so the kernel's broadcasts read one sequential stream.
///
/// Segments let a conv's taps be read straight from its NHWC input (implicit im2col): segment
/// `(ky, kx)` of an output pixel is `cin` contiguous input floats, or padding.
///
/// Several threads can pack one A, each its own `tiles` (`MR`-row tiles).
///
/// # Safety
/// Every non-null pointer `src` gives is readable for `run` floats (the last segment for
/// `k - (segments-1)·run`); `out` is valid for [`packed_len`]`(m, k)` floats, and concurrent
/// calls write disjoint tiles. AVX-512 engines only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub unsafe fn pack_a_tiles(
    m: usize,
    k: usize,
    run: usize,
    src: RowSource<'_>,
    out: *mut f32,
    tiles: std::ops::Range<usize>,
) {
    debug_assert!(run > 0 && tiles.end <= m.div_ceil(MR));
    #[cfg(target_arch = "x86_64")]
    avx512::pack(m, k, run, src, out, tiles);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed A only exists with the AVX-512 kernel");
}

/// [`pack_a_tiles`] for a plain row-major A (`m` rows of `k` floats, stride `lda`).
///
/// # Safety
/// As for [`pack_a_tiles`].
pub unsafe fn pack_a_rows(m: usize, a: *const f32, lda: usize, k: usize, out: &mut [f32]) {
    debug_assert!(out.len() >= packed_len(m, k));
    pack_a_rows_tiles(m, a, lda, k, out.as_mut_ptr(), 0..m.div_ceil(MR));
}

/// [`pack_a_rows`] for only the tiles `tiles` (see [`pack_a_tiles`]).
///
/// # Safety
/// As for [`pack_a_tiles`].
pub unsafe fn pack_a_rows_tiles(
    m: usize,
    a: *const f32,
    lda: usize,
    k: usize,
    out: *mut f32,
    tiles: std::ops::Range<usize>,
) {
    let (a, end) = (a as usize, m);
    let rows = move |row0: usize, _seg: usize, rows: &mut [*const f32; MR]| {
        for (r, p) in rows.iter_mut().enumerate() {
            if row0 + r < end {
                *p = (a as *const f32).add((row0 + r) * lda);
            }
        }
    };
    pack_a_tiles(m, k, k.max(1), &rows, out, tiles);
}

/// [`gemm`]'s product on the AVX-512 kernel, with A already packed by [`pack_a_tiles`], so
/// several tasks can share one packing.
///
/// # Safety
/// As for [`gemm`]; `packed` holds [`packed_len`]`(m, b.k)` floats.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub unsafe fn gemm_packed(
    m: usize,
    packed: &[f32],
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
    panels: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let tiles = m.div_ceil(MR);
        let mut k0 = 0;
        while k0 < b.k {
            let kc = KC.min(b.k - k0);
            let chunk = &packed[tiles * MR * k0..];
            let last = k0 + kc == b.k;
            for j in panels.clone() {
                let col0 = j * NR;
                let ncols = (b.n - col0).min(NR);
                let bp = b.panels.as_ptr().add((j * b.k + k0) * NR);
                let bias = &ep.bias[col0..col0 + ncols];
                // The weights come from DRAM once per call (the network's weights outgrow the
                // caches), and the first tile of a panel would stall on them: each tile asks
                // for its share of the next panel's slice instead.
                let (nj, nk0) = if j + 1 < panels.end {
                    (j + 1, k0)
                } else {
                    (panels.start, k0 + kc)
                };
                let next_b = (nk0 < b.k).then(|| {
                    let nkc = KC.min(b.k - nk0);
                    (b.panels.as_ptr().add((nj * b.k + nk0) * NR), nkc * NR / 16)
                });
                for t in 0..tiles {
                    let i = t * MR;
                    let pf = next_b.map_or((std::ptr::null(), 0), |(nb, lines)| {
                        let l0 = t * lines / tiles;
                        (nb.add(l0 * 16), (t + 1) * lines / tiles - l0)
                    });
                    let res = ep.residual.map(|(r, ldr)| (r.add(i * ldr + col0), ldr));
                    // The next tile's output rows (and residual) are scattered lines, often
                    // outside L2 at the first touch: the kernel asks for them a row at a time
                    // while it computes this tile (all at once, they stalled on the fill
                    // buffers: 0.97× at batch 8, 0.99× at batch 1 spread out).
                    let mut next = avx512::NextRows {
                        rows: (m - i).saturating_sub(MR).min(MR),
                        ncols,
                        ..Default::default()
                    };
                    if k0 == 0 || last {
                        (next.c, next.ldc) = (c.add((i + MR) * ldc + col0), ldc);
                    }
                    if let (true, Some((rp, ldr))) = (last, res) {
                        (next.r, next.ldr) = (rp.add(MR * ldr), ldr);
                    }
                    avx512::tile(
                        (m - i).min(MR),
                        kc,
                        chunk.as_ptr().add(t * MR * kc),
                        bp,
                        pf,
                        next,
                        c.add(i * ldc + col0),
                        ldc,
                        ncols,
                        k0 > 0,
                        last.then_some((bias, res, ep.relu)),
                    );
                }
            }
            k0 += kc;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed A only exists with the AVX-512 kernel");
}

/// Output pixels apart, in floats, of a [`stem_tile`]'s input rows: stride 2 × 3 channels.
pub const STEM_STEP: usize = 6;

/// `C = A · B + bias` (ReLU'd if asked) for up to `MR` consecutive output pixels of the 7×7
/// stride-2 stem on its padded 3-channel NHWC input, one panel of B, reading A in place: pixel
/// `r`'s kernel row `ky` is the `run` floats at `segs[ky] + r · STEM_STEP`. The 14 pixels'
/// windows overlap inside a few cache lines, so this skips the packing, which cost the stem
/// as much as its products.
///
/// # Safety
/// Each `segs[ky]` is readable for `(rows - 1) · STEM_STEP + run` floats; `b` is a panel of
/// `segs.len() · run` rows; `c` holds `rows` rows of `ncols ≤ NR` floats at stride `ldc`;
/// `bias` has `ncols` floats. AVX-512 engines only.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub unsafe fn stem_tile(
    rows: usize,
    segs: &[*const f32],
    run: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    bias: &[f32],
    relu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! go {
            ($($r:literal)*) => {
                match rows {
                    $($r => avx512::stem::<$r>(segs, run, b, c, ldc, ncols, bias, relu),)*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the stem kernel only exists with the AVX-512 kernel");
}

/// Which matrix kernel an engine uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 when the CPU has it (`RESNET_KERNEL=portable` says no), else portable.
    #[default]
    Auto,
    /// The `gemm` crate's kernels, on any CPU.
    Portable,
}

impl Kernel {
    pub fn avx512(self) -> bool {
        self == Kernel::Auto && avx512_available()
    }
}

/// Whether this CPU runs the AVX-512 kernel (and `RESNET_KERNEL=portable` is not set).
fn avx512_available() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("RESNET_KERNEL").is_ok_and(|v| v == "portable") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `C[rows, cols of panels p0..p1] = A · B + epilogue` for `m` rows, on the portable kernel
/// (the `gemm` crate): C is pre-filled with bias (+ residual), accumulated into, then ReLU'd.
/// AVX-512 engines pack A instead ([`pack_a_tiles`]) and run [`gemm_packed`].
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
    let col0 = panels.start * NR;
    let col1 = (panels.end * NR).min(b.n);
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{RowSource, KC, MR, NR};

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

    /// Asks for the cache lines of `n` floats at `p` (at most 32: two lines, or three unaligned).
    #[inline(always)]
    pub unsafe fn prefetch(p: *const f32, n: usize) {
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

    /// [`super::pack_a_tiles`]: 16 columns of a tile's 14 rows at a time, loaded as rows, transposed
    /// in registers and stored as 16 runs of 14 (several times faster than copying one float at
    /// a time down the columns).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack(
        m: usize,
        k: usize,
        run: usize,
        src: RowSource<'_>,
        out: *mut f32,
        which: std::ops::Range<usize>,
    ) {
        let tiles = m.div_ceil(MR);
        let mut ptrs = [std::ptr::null(); MR];
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
                    src(t * MR, seg, &mut ptrs);
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

    /// The next tile's output and residual rows (null: none), which [`kernel`] asks for a
    /// row at a time.
    #[derive(Clone, Copy)]
    pub struct NextRows {
        pub c: *const f32,
        pub ldc: usize,
        pub r: *const f32,
        pub ldr: usize,
        pub rows: usize,
        pub ncols: usize,
    }

    impl Default for NextRows {
        fn default() -> Self {
            NextRows {
                c: std::ptr::null(),
                ldc: 0,
                r: std::ptr::null(),
                ldr: 0,
                rows: 0,
                ncols: 0,
            }
        }
    }

    /// `(bias, residual, relu)`, applied on the last pass over k only.
    pub type Finish<'a> = Option<(&'a [f32], Option<(*const f32, usize)>, bool)>;

    /// Dispatches a tile of `rows ≤ MR` rows to the kernel compiled for that row count, so
    /// every accumulator stays in a register.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        rows: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        pf: (*const f32, usize),
        next: NextRows,
        c: *mut f32,
        ldc: usize,
        ncols: usize,
        accumulate: bool,
        finish: Finish<'_>,
    ) {
        macro_rules! go {
            ($($r:literal)*) => {
                match rows {
                    $($r => kernel::<$r>(k, a, b, pf, next, c, ldc, ncols, accumulate, finish),)*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }

    /// `C (+)= A·B` for one tile: A packed `[k][MR]`, B a `[k][NR]` panel slice. Along the way
    /// it asks for `pf.1` cache lines from `pf.0` on (up to two per step) and for `next`'s rows,
    /// spread out so the requests never pile up in the fill buffers.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        (pf, lines): (*const f32, usize),
        next: NextRows,
        c: *mut f32,
        ldc: usize,
        ncols: usize,
        accumulate: bool,
        finish: Finish<'_>,
    ) {
        debug_assert!(R <= MR);
        let (m0, m1) = masks(ncols);
        // Always MR rows so the asm below can name them; rows past R are never touched.
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate().take(R) {
                acc[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                acc[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
            }
        }
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
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            fma_rows!(acc, R, ap, b0, b1, 4);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        store!(acc, R, c, ldc, (m0, m1), finish);
    }

    /// [`super::stem_tile`] for `R` pixels.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn stem<const R: usize>(
        segs: &[*const f32],
        run: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        ncols: usize,
        bias: &[f32],
        relu: bool,
    ) {
        let (m0, m1) = masks(ncols);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let mut bp = b;
        for &seg in segs {
            let mut ap = seg;
            for _ in 0..run {
                let b0 = _mm512_loadu_ps(bp);
                let b1 = _mm512_loadu_ps(bp.add(16));
                fma_rows!(acc, R, ap, b0, b1, 4 * super::STEM_STEP);
                ap = ap.add(1);
                bp = bp.add(NR);
            }
        }
        store!(acc, R, c, ldc, (m0, m1), Some((bias, None, relu)));
    }

    /// The masks of a panel's two vectors for `ncols ≤ NR` real columns.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn masks(ncols: usize) -> (__mmask16, __mmask16) {
        let m = |n: usize| if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 };
        (m(ncols), m(ncols.saturating_sub(16)))
    }
}
