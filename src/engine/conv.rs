//! Convolutions on NHWC activations as GEMMs over output pixels:
//! `out[pixel, cout] = patch[pixel, (ky, kx, cin)] · W[(ky, kx, cin), cout]`.
//!
//! On the AVX-512 kernel, A is packed straight from the NHWC input: a 1×1 conv packs its input
//! rows, other convs each tap of each output pixel (implicit im2col); stride-1 3×3 convs go
//! through Winograd and the 7×7 stem reads its padded input in place. A training step's
//! convs read each image, copied with its zero border, in place too ([`Conv::run_rows`]). Grouped convs, and on
//! the portable kernel every conv but a stride-1 1×1 (which reads its input rows as they are),
//! gather the patches of a block of pixels into a per-thread buffer first. Work is split over pixel blocks and, when they are few (batch 1, late stages),
//! over column panels too, so both threads stay busy.

use std::cell::RefCell;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::kernel::{self, Epilogue, Isa, PackedB};
use super::types::Ptr;
pub use super::types::{Residual, Shape};
use super::winograd::Winograd;
use crate::model::ConvShape;

/// A BatchNorm's `(weight, bias, running_mean, running_var)`.
pub type BnStats<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32]);

/// A conv with its BatchNorm folded in, weights packed per group.
pub struct Conv {
    pub spec: ConvShape,
    /// The input arrives with its zero border already in place (the stem's, written while
    /// converting the input to NHWC), so every tap is inside it.
    pub padded: bool,
    /// One per group: `[k·k·cin/groups, cout/groups]` (none when Winograd runs this conv).
    pub weights: Vec<PackedB>,
    pub bias: Vec<f32>,
    /// The kernel this conv was packed for.
    isa: Isa,
    /// Stride-1 3×3 convs that Winograd F(4×4, 3×3) serves (packed kernels only).
    winograd: Option<Winograd>,
    /// Wider stride-1 3×3 convs, which Winograd serves once inputs are large enough: built
    /// from `weights` the first time.
    wide_winograd: Option<std::sync::OnceLock<Winograd>>,
}

/// `RESNET_PROFILE=1` prints each conv's time and GFLOP/s to stderr (read once).
pub(super) fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RESNET_PROFILE").is_some())
}

thread_local! {
    /// Each thread's patch buffer, grown once and reused by every later conv and call.
    static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's packed A for one pixel block (when its tasks do not share one).
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's copy of one image with its zero border ([`Conv::run_rows`]).
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Conv {
    /// From torch's `[cout, cin/groups, k, k]` weight and the BN that follows it.
    pub fn fold(weight: &[f32], spec: ConvShape, bn: Option<BnStats<'_>>, conv_bias: Option<&[f32]>, isa: Isa) -> Self {
        let ConvShape {
            cin, cout, k, groups, ..
        } = spec;
        let (cin_g, cout_g) = (cin / groups, cout / groups);
        let kk = k * k * cin_g;
        // BN(eval): y = (x - mean) / sqrt(var + eps) · γ + β  =  x · s + (β - mean · s).
        let mut scale = vec![1f64; cout];
        let mut bias = vec![0f64; cout];
        if let Some(b) = conv_bias {
            bias.iter_mut().zip(b).for_each(|(o, &v)| *o = v as f64);
        }
        if let Some((gamma, beta, mean, var)) = bn {
            for o in 0..cout {
                let s = gamma[o] as f64 / (var[o] as f64 + 1e-5).sqrt();
                scale[o] = s;
                bias[o] = (bias[o] - mean[o] as f64) * s + beta[o] as f64;
            }
        }
        let matrix = |g: usize| {
            let mut b = vec![0f32; kk * cout_g];
            for oc in 0..cout_g {
                let o = g * cout_g + oc;
                for ic in 0..cin_g {
                    for ky in 0..k {
                        for kx in 0..k {
                            let w = weight[((o * cin_g + ic) * k + ky) * k + kx] as f64 * scale[o];
                            b[((ky * k + kx) * cin_g + ic) * cout_g + oc] = w as f32;
                        }
                    }
                }
            }
            b
        };
        let bias = bias.into_iter().map(|b| b as f32).collect();
        let stride1_3x3 = k == 3 && spec.stride == 1 && spec.dilation == 1 && groups == 1;
        if stride1_3x3 && Winograd::applies(cin, cout, isa) {
            return Conv {
                spec,
                padded: false,
                weights: Vec::new(),
                bias,
                isa,
                winograd: Some(Winograd::new(&matrix(0), cin, cout, isa)),
                wide_winograd: None,
            };
        }
        Conv {
            spec,
            padded: false,
            weights: (0..groups).map(|g| PackedB::new(&matrix(g), kk, cout_g, isa)).collect(),
            bias,
            isa,
            winograd: None,
            wide_winograd: (stride1_3x3 && Winograd::possible(cin, cout, isa)).then(std::sync::OnceLock::new),
        }
    }

    /// A conv with no bias from weights already packed per group (`[k·k·cin_g, cout_g]`
    /// each), never through Winograd: the training passes ([`super::grad`]).
    pub fn packed(spec: ConvShape, weights: Vec<PackedB>, isa: Isa) -> Self {
        Conv {
            spec,
            padded: false,
            weights,
            bias: vec![0.0; spec.cout],
            isa,
            winograd: None,
            wide_winograd: None,
        }
    }

    /// Whether this conv runs through Winograd for input `xs`.
    #[cfg(test)]
    pub fn uses_winograd(&self, xs: Shape) -> bool {
        self.winograd.is_some() || (self.wide_winograd.is_some() && Winograd::worth_it(xs))
    }

    pub fn out_shape(&self, s: Shape) -> Shape {
        s.conv_out(self.spec, self.pad_in())
    }

    /// Whether this conv can take its residual from its output buffer ([`Residual::InOut`])
    /// for input `xs`: Winograd and the portable kernel read each value before writing it; the
    /// packed kernel does too when k fits in one pass, but with more it stores partial sums
    /// over the output before the pass that adds the residual.
    pub fn adds_in_place(&self, xs: Shape) -> bool {
        if self.winograd.is_some() || (self.wide_winograd.is_some() && Winograd::worth_it(xs)) {
            return true;
        }
        !self.weights[0].is_packed() || self.weights[0].k <= kernel::KC
    }

    /// `out = act(conv(x) + bias [+ residual])`; a residual has `out`'s shape. `scratch` holds
    /// packed rows between calls.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        xs: Shape,
        out: &mut [f32],
        residual: Residual<'_>,
        relu: bool,
        pool: &rayon::ThreadPool,
        scratch: &mut AlignedVec,
    ) -> Shape {
        let ConvShape { cin, k, stride, .. } = self.spec;
        let os = self.out_shape(xs);
        debug_assert!(x.len() >= xs.len() && out.len() >= os.len());
        assert!(
            !matches!(residual, Residual::InOut) || self.adds_in_place(xs),
            "this conv cannot add its residual in place"
        );
        if let Some(w) = self.winograd_for(xs) {
            let t0 = std::time::Instant::now();
            w.run(x, xs, out, &self.bias, residual, relu, pool, scratch);
            self.report(xs, os, t0, "winograd");
            return os;
        }
        if self.row_runs()
            && stride * cin == kernel::STEM_STEP
            && k <= 16
            && matches!(residual, Residual::None)
            && self.weights[0].is_packed()
        {
            return self.run_stem(x, xs, out, relu, pool);
        }
        let t0 = std::time::Instant::now();
        let pass = GemmPass::new(self, x, xs, out, residual, relu, pool.current_num_threads().max(1));
        let tasks = pass.run(pool, scratch);
        self.report(xs, os, t0, &format!("tasks {tasks}"));
        os
    }

    /// The Winograd transform that runs this conv on input `xs`, if one does: built with the
    /// conv, or from its weights the first time an input is large enough.
    fn winograd_for(&self, xs: Shape) -> Option<&Winograd> {
        let ConvShape { cin, cout, .. } = self.spec;
        let wide = self
            .wide_winograd
            .as_ref()
            .filter(|_| Winograd::worth_it(xs))
            .map(|w| w.get_or_init(|| Winograd::new(&self.weights[0].unpack(), cin, cout, self.isa)));
        self.winograd.as_ref().or(wide)
    }

    /// The 7×7 stride-2 stem on its padded input, read in place ([`Conv::row_of_tiles`]).
    fn run_stem(&self, x: &[f32], xs: Shape, out: &mut [f32], relu: bool, pool: &rayon::ThreadPool) -> Shape {
        let t0 = std::time::Instant::now();
        let os = self.out_shape(xs);
        let image = xs.h * xs.w * self.spec.cin;
        let (xp, op) = (Ptr(x.as_ptr()), Ptr(out.as_mut_ptr()));
        pool.install(|| {
            (0..os.n * os.h).into_par_iter().for_each(|line| {
                let (n, oy) = (line / os.h, line % os.h);
                // SAFETY: image n of the padded input, `xs.w` pixels a row; this task owns
                // output row `line`.
                unsafe {
                    let out = op.get().add(line * os.w * self.spec.cout);
                    self.row_of_tiles(xp.get().add(n * image), xs.w, oy, os.w, out, relu)
                }
            })
        });
        self.report(xs, os, t0, "stem");
        os
    }

    /// `out = act(conv(x))` with no packed A, for a conv with one group, no dilation, odd k
    /// and `stride · cin` one of [`kernel::ROW_STEPS`], on an unpadded input: each image is
    /// copied with its zero border into a thread's buffer, and its output rows read their
    /// kernel rows from there in place ([`Conv::row_of_tiles`]). The training step's convs
    /// take this path: packing A (nine copies of the input for a 3×3) cost as much as the
    /// products on 16- to 64-channel layers. `None` when the conv does not fit, when its
    /// weight panels outgrow L2 (more than 1152 rows) or its rows are short (under 8 pixels),
    /// where packing serves better, and for inputs of fewer images than threads.
    pub fn run_rows(
        &self,
        x: &[f32],
        xs: Shape,
        out: &mut [f32],
        relu: bool,
        pool: &rayon::ThreadPool,
    ) -> Option<Shape> {
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            dilation,
            groups,
        } = self.spec;
        let os = self.out_shape(xs);
        let fits = dilation == 1
            && groups == 1
            && k % 2 == 1
            && k <= 16
            && !self.padded
            && kernel::ROW_STEPS.contains(&(stride * cin))
            && k * k * cin <= 1152
            && os.w >= 8
            && self.weights[0].is_packed()
            && xs.n >= pool.current_num_threads().max(1);
        if !fits {
            return None;
        }
        let t0 = std::time::Instant::now();
        debug_assert!(x.len() >= xs.len() && out.len() >= os.len());
        let p = self.spec.pad();
        let (ph, pw) = (xs.h + 2 * p, xs.w + 2 * p);
        let op = Ptr(out.as_mut_ptr());
        pool.install(|| {
            (0..xs.n).into_par_iter().for_each(|n| {
                PADDED.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.resize(ph * pw * cin, 0.0);
                    let image = &x[n * xs.h * xs.w * cin..][..xs.h * xs.w * cin];
                    super::types::pad_image(image, xs.h, xs.w, cin, p, &mut buf);
                    for oy in 0..os.h {
                        // SAFETY: `buf` holds the padded image, `pw` pixels a row; this task
                        // owns image n's output.
                        unsafe {
                            let out = op.get().add((n * os.h + oy) * os.w * cout);
                            self.row_of_tiles(buf.as_ptr(), pw, oy, os.w, out, relu)
                        }
                    }
                })
            })
        });
        self.report(xs, os, t0, "rows");
        Some(os)
    }

    /// Output row `oy` (`ow` pixels, into `out`) of one image whose padded NHWC input starts at
    /// `image`, `pw` pixels a row: per weight panel (so its weights stay in cache), tiles of
    /// near-equal width (a short last one would run latency-bound), each pixel reading its
    /// `k` kernel rows of `k · cin` floats in place ([`kernel::row_tile`]).
    ///
    /// # Safety
    /// Every window of the row lies inside the padded image; `out` holds `ow · cout` floats
    /// that no one else writes meanwhile; `stride · cin` is one of [`kernel::ROW_STEPS`].
    unsafe fn row_of_tiles(&self, image: *const f32, pw: usize, oy: usize, ow: usize, out: *mut f32, relu: bool) {
        let ConvShape {
            cin, cout, k, stride, ..
        } = self.spec;
        let w = &self.weights[0];
        let (mr, nr) = (self.isa.mr(), self.isa.nr());
        let tiles = ow.div_ceil(mr);
        let mut segs = [std::ptr::null(); 16];
        for j in 0..w.panels() {
            let col0 = j * nr;
            let ncols = (cout - col0).min(nr);
            for t in 0..tiles {
                let (ox0, ox1) = (t * ow / tiles, (t + 1) * ow / tiles);
                for (ky, seg) in segs.iter_mut().enumerate().take(k) {
                    // SAFETY: inside the padded image, as the caller vouches.
                    *seg = unsafe { image.add(((oy * stride + ky) * pw + ox0 * stride) * cin) };
                }
                // SAFETY: pixel ox0 + r reads k·cin floats from seg + r·stride·cin, inside the
                // padded image; the caller owns `out`.
                unsafe {
                    kernel::row_tile(
                        ox1 - ox0,
                        &segs[..k],
                        k * cin,
                        stride * cin,
                        w,
                        j,
                        out.add(ox0 * cout + col0),
                        cout,
                        ncols,
                        &self.bias[col0..col0 + ncols],
                        relu,
                    )
                };
            }
        }
    }

    /// With `RESNET_PROFILE` set: this conv's time and its rate in direct-conv GFLOP/s.
    fn report(&self, xs: Shape, os: Shape, t0: std::time::Instant, how: &str) {
        if !profiling() {
            return;
        }
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            groups,
            ..
        } = self.spec;
        let (m, kk) = (os.pixels(), k * k * cin / groups);
        let secs = t0.elapsed().as_secs_f64();
        let flops = 2.0 * (m * kk * cout) as f64;
        eprintln!(
            "conv k{k} s{stride} g{groups} {}x{}x{} -> {cout}  m={m} k={kk} n={cout}  {:.3} ms  {:.1} GFLOP/s  {how}",
            xs.h,
            xs.w,
            xs.c,
            secs * 1e3,
            flops / secs / 1e9
        );
    }

    /// Whether A is read in whole kernel rows: on a padded input with one group and no dilation,
    /// a row of `k` taps is one run of `k · cin` floats.
    fn row_runs(&self) -> bool {
        let s = self.spec;
        self.padded && s.dilation == 1 && s.groups == 1
    }

    /// The border this conv still has to imagine around its input.
    fn pad_in(&self) -> usize {
        if self.padded {
            0
        } else {
            self.spec.pad()
        }
    }

    /// Where output pixels `pixels` (at most `ptrs.len()`) read tap `seg = ky·k + kx` (or, with
    /// [`Conv::row_runs`], kernel row `seg = ky`): their input floats in NHWC `x`, or null
    /// outside the image (zero padding).
    fn tap_rows(
        &self,
        x: *const f32,
        xs: Shape,
        os: Shape,
        pixels: std::ops::Range<usize>,
        seg: usize,
        ptrs: &mut [*const f32],
    ) {
        let ConvShape {
            cin,
            k,
            stride,
            dilation,
            ..
        } = self.spec;
        let pad = self.pad_in() as isize;
        // Whole kernel rows on a padded input (segment = ky), else single taps (ky·k + kx).
        let (ky, kx) = if self.row_runs() { (seg, 0) } else { (seg / k, seg % k) };
        // Divide once, then walk the pixels: this runs for every tile and tap, and divisions
        // here cost the stem more than its packing did.
        let p0 = pixels.start;
        let (mut n, rest) = (p0 / (os.h * os.w), p0 % (os.h * os.w));
        let (mut oy, mut ox) = (rest / os.w, rest % os.w);
        for ptr in ptrs.iter_mut().take(pixels.len()) {
            let iy = (oy * stride + ky * dilation) as isize - pad;
            let ix = (ox * stride + kx * dilation) as isize - pad;
            if iy >= 0 && ix >= 0 && iy < xs.h as isize && ix < xs.w as isize {
                // SAFETY: the pixel is inside the image, so its channels are inside `x`.
                *ptr = unsafe { x.add(((n * xs.h + iy as usize) * xs.w + ix as usize) * cin) };
            }
            ox += 1;
            if ox == os.w {
                (ox, oy) = (0, oy + 1);
                if oy == os.h {
                    (oy, n) = (0, n + 1);
                }
            }
        }
    }

    /// im2col for output pixels `rows`: each row is `(group, ky, kx, cin of the group)`, so a
    /// group's patch is one contiguous run; zeros outside the image.
    fn patches(&self, x: &[f32], xs: Shape, os: Shape, rows: std::ops::Range<usize>, buf: &mut [f32]) {
        let ConvShape {
            cin,
            k,
            stride,
            dilation,
            groups,
            ..
        } = self.spec;
        let pad = self.pad_in();
        let (c, g) = (cin / groups, groups);
        let kk = k * k * c;
        for (r, p) in rows.enumerate() {
            let (n, rest) = (p / (os.h * os.w), p % (os.h * os.w));
            let (oy, ox) = (rest / os.w, rest % os.w);
            let dst = &mut buf[r * kk * g..(r + 1) * kk * g];
            let ix0 = (ox * stride) as isize - pad as isize;
            // Dense rows (stride-1 kernel taps, one group) inside the image are one run of
            // k·cin floats in NHWC: copy each at once (the 7×7 stem's 21-float runs, mostly).
            let dense = dilation == 1 && g == 1 && ix0 >= 0 && ix0 as usize + k <= xs.w;
            for ky in 0..k {
                let iy = (oy * stride + ky * dilation) as isize - pad as isize;
                if dense {
                    let d = &mut dst[ky * k * c..(ky + 1) * k * c];
                    if iy < 0 || iy >= xs.h as isize {
                        d.fill(0.0);
                    } else {
                        let s = ((n * xs.h + iy as usize) * xs.w + ix0 as usize) * c;
                        d.copy_from_slice(&x[s..s + k * c]);
                    }
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * stride + kx * dilation) as isize - pad as isize;
                    let inside = iy >= 0 && ix >= 0 && iy < xs.h as isize && ix < xs.w as isize;
                    let s = if inside {
                        ((n * xs.h + iy as usize) * xs.w + ix as usize) * cin
                    } else {
                        0
                    };
                    for gi in 0..g {
                        let d = &mut dst[gi * kk + (ky * k + kx) * c..][..c];
                        if inside {
                            d.copy_from_slice(&x[s + gi * c..s + gi * c + c]);
                        } else {
                            d.fill(0.0);
                        }
                    }
                }
            }
        }
    }
}

/// One GEMM-shaped conv call, cut by [`partition`] into tasks of (pixel block, panel range).
/// Each method is one stage: gathering A, packing it, the epilogue, one task.
struct GemmPass<'a> {
    conv: &'a Conv,
    x: &'a [f32],
    xs: Shape,
    os: Shape,
    out: Ptr<*mut f32>,
    residual: Ptr<Option<*const f32>>,
    relu: bool,
    threads: usize,
    /// Rows per kernel tile.
    mr: usize,
    /// Output pixels (GEMM rows) and the floats of one group's patch row.
    m: usize,
    kk: usize,
    /// A stride-1 1×1 conv: A is the input itself.
    direct: bool,
    /// A is packed tap by tap straight from the input (no patch buffer).
    implicit: bool,
    /// The weights are packed for a SIMD kernel, which reads A packed too.
    packed: bool,
    /// Floats per tap run read from the input: `k · cin` on a padded input, else `cin`.
    run: usize,
    part: Partition,
    panels: usize,
    /// Column-panel ranges per pixel block.
    splits: usize,
    /// Packed floats of one group's A for one block.
    per_group: usize,
}

impl<'a> GemmPass<'a> {
    fn new(
        conv: &'a Conv,
        x: &'a [f32],
        xs: Shape,
        out: &mut [f32],
        residual: Residual<'_>,
        relu: bool,
        threads: usize,
    ) -> Self {
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            groups,
            ..
        } = conv.spec;
        let os = conv.out_shape(xs);
        let m = os.pixels();
        let kk = k * k * (cin / groups);
        let direct = k == 1 && stride == 1 && groups == 1;
        let panels = conv.weights[0].panels();
        let mr = conv.isa.mr();
        let part = partition(m, kk * groups, kk * cout, panels, threads, mr);
        let out = Ptr(out.as_mut_ptr());
        GemmPass {
            conv,
            x,
            xs,
            os,
            out,
            residual: Ptr(residual.ptr(out.get())),
            relu,
            threads,
            mr,
            m,
            kk,
            direct,
            // Channels in whole 16-float runs (or whole kernel rows) can be packed per tap;
            // the stem when it misses its own path, and grouped convs, gather patches first.
            implicit: !direct && groups == 1 && (cin.is_multiple_of(16) || conv.row_runs()),
            packed: conv.weights[0].is_packed(),
            run: if conv.row_runs() { k * cin } else { cin },
            part,
            panels,
            splits: panels.div_ceil(part.per),
            per_group: kernel::packed_len(part.rows, kk, mr),
        }
    }

    /// Runs every task on `pool`; returns how many there were.
    fn run(&self, pool: &rayon::ThreadPool, scratch: &mut AlignedVec) -> usize {
        // With panels split across tasks, each block's A is packed once up front and shared.
        let shared = self.packed && self.splits > 1;
        if shared {
            self.pack_shared(pool, scratch);
        }
        let shared: Option<&[f32]> = shared.then_some(&scratch[..]);
        let tasks = self.part.blocks * self.splits;
        if tasks == 1 {
            self.task(0, shared);
        } else {
            pool.install(|| (0..tasks).into_par_iter().for_each(|t| self.task(t, shared)));
        }
        tasks
    }

    /// Block b's output pixels.
    fn block_rows(&self, b: usize) -> (usize, usize) {
        let rows = self.part.rows;
        (b * rows, ((b + 1) * rows).min(self.m))
    }

    fn block_tiles(&self, b: usize) -> usize {
        let (r0, r1) = self.block_rows(b);
        (r1 - r0).div_ceil(self.mr)
    }

    /// Group g's bias and residual for the tile rows from r0.
    fn epilogue(&self, g: usize, r0: usize) -> Epilogue<'a> {
        let cout = self.conv.spec.cout;
        let cout_g = cout / self.conv.spec.groups;
        Epilogue {
            bias: &self.conv.bias[g * cout_g..(g + 1) * cout_g],
            // SAFETY: the residual has the output's shape; row r0, group g's columns are inside it.
            residual: self
                .residual
                .get()
                .map(|r| (unsafe { r.add(r0 * cout + g * cout_g) }, cout)),
            relu: self.relu,
        }
    }

    /// Block b's A, unpacked: its input rows (direct 1×1) or its patch rows, im2col'd into
    /// this thread's buffer; `f` gets the first float and the row stride.
    fn with_a(&self, b: usize, f: &mut dyn FnMut(*const f32, usize)) {
        let (r0, r1) = self.block_rows(b);
        let cin = self.conv.spec.cin;
        if self.direct {
            return f(self.x[r0 * cin..].as_ptr(), cin);
        }
        let row = self.kk * self.conv.spec.groups;
        PATCHES.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = (r1 - r0) * row;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            self.conv.patches(self.x, self.xs, self.os, r0..r1, &mut buf[..need]);
            f(buf.as_ptr(), row)
        })
    }

    /// Packs tiles `tiles` of block b's A into `dst`, the block's `groups · per_group` floats.
    /// Only 1×1 and implicit convs (one group) pack part of a block; patches go whole.
    ///
    /// # Safety
    /// `dst` holds the block's packed floats, and no other thread writes `tiles` of it.
    unsafe fn pack_block(&self, b: usize, tiles: std::ops::Range<usize>, dst: *mut f32) {
        let (r0, r1) = self.block_rows(b);
        let (kk, cin) = (self.kk, self.conv.spec.cin);
        if self.implicit {
            let src = |row0: usize, seg: usize, ptrs: &mut [*const f32]| {
                self.conv
                    .tap_rows(self.x.as_ptr(), self.xs, self.os, r0 + row0..r1, seg, ptrs)
            };
            // SAFETY: every pointer tap_rows gives starts `run` floats inside `x`; the caller
            // owns `tiles` of `dst`.
            return unsafe { kernel::pack_a_tiles(self.conv.isa, r1 - r0, kk, self.run, &src, dst, tiles) };
        }
        if self.direct {
            let a = self.x[r0 * cin..].as_ptr();
            // SAFETY: `a` has r1 - r0 rows of `cin` floats; the caller owns `tiles` of `dst`.
            return unsafe { kernel::pack_a_rows_tiles(self.conv.isa, r1 - r0, a, cin, kk, dst, tiles) };
        }
        self.with_a(b, &mut |a, lda| {
            for g in 0..self.conv.spec.groups {
                // SAFETY: `a` holds r1 - r0 rows of `lda ≥ groups · kk` floats; the block is
                // packed whole by one caller.
                unsafe {
                    kernel::pack_a_rows_tiles(
                        self.conv.isa,
                        r1 - r0,
                        a.add(g * kk),
                        lda,
                        kk,
                        dst.add(g * self.per_group),
                        0..(r1 - r0).div_ceil(self.mr),
                    )
                };
            }
        })
    }

    /// Packs every block's A into `scratch`, in parts when the blocks are fewer than the
    /// threads (patches pack whole).
    fn pack_shared(&self, pool: &rayon::ThreadPool, scratch: &mut AlignedVec) {
        let (blocks, groups) = (self.part.blocks, self.conv.spec.groups);
        scratch.grow(blocks * groups * self.per_group);
        let parts = if self.direct || self.implicit {
            (2 * self.threads).div_ceil(blocks).min(self.part.rows / self.mr)
        } else {
            1
        };
        let sp = Ptr(scratch.as_mut_ptr());
        pool.install(|| {
            (0..blocks * parts).into_par_iter().for_each(|u| {
                let (b, part) = (u / parts, u % parts);
                let n = self.block_tiles(b);
                let tiles = (part * n / parts)..((part + 1) * n / parts);
                // SAFETY: each unit packs its own tiles of its own block's region.
                unsafe { self.pack_block(b, tiles, sp.get().add(b * groups * self.per_group)) }
            })
        });
    }

    /// Task t: block `t / splits` against its range of column panels, A packed in `shared` or
    /// here.
    fn task(&self, t: usize, shared: Option<&[f32]>) {
        let (b, s) = (t / self.splits, t % self.splits);
        let (r0, r1) = self.block_rows(b);
        let per = self.part.per;
        let p = s * per..((s + 1) * per).min(self.panels);
        if p.is_empty() {
            return;
        }
        let ConvShape { cout, groups, .. } = self.conv.spec;
        let (kk, per_group) = (self.kk, self.per_group);
        // SAFETY: row r0, group g's first column lies inside the output (n·h·w × cout).
        let out = |g: usize| unsafe { self.out.get().add(r0 * cout + g * (cout / groups)) };
        // Rows r0..r1 and panels `p` of each group's columns belong to this task alone.
        let run_packed = |a: &[f32]| {
            for (g, w) in self.conv.weights.iter().enumerate() {
                let pa = &a[g * per_group..g * per_group + kernel::packed_len(r1 - r0, kk, self.mr)];
                // SAFETY: rows r0..r1, panels `p`: this task's alone.
                unsafe { kernel::gemm_packed(r1 - r0, pa, w, out(g), cout, self.epilogue(g, r0), p.clone()) }
            }
        };
        if let Some(shared) = shared {
            let at = b * groups * per_group;
            run_packed(&shared[at..at + groups * per_group]);
        } else if self.packed {
            PACKED.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.len() < groups * per_group {
                    buf.resize(groups * per_group, 0.0);
                }
                // SAFETY: this thread's buffer holds the whole block.
                unsafe { self.pack_block(b, 0..self.block_tiles(b), buf.as_mut_ptr()) };
                run_packed(&buf[..groups * per_group]);
            })
        } else {
            self.with_a(b, &mut |a, lda| {
                for (g, w) in self.conv.weights.iter().enumerate() {
                    // SAFETY: as above; `a` has r1 - r0 rows `lda` apart holding group g's k.
                    unsafe {
                        kernel::gemm(
                            r1 - r0,
                            a.add(g * kk),
                            lda,
                            w,
                            out(g),
                            cout,
                            self.epilogue(g, r0),
                            p.clone(),
                        )
                    }
                }
            });
        }
    }
}

/// How a GEMM-shaped conv is cut into tasks: pixel blocks of `rows` rows (`blocks` of them),
/// and `per` weight column panels per task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Partition {
    pub rows: usize,
    pub blocks: usize,
    pub per: usize,
}

/// The partition of `m` output pixels with `k_row` packed floats per row, a weight of
/// `weight_len` floats in `panels` column panels, over `threads` threads, in tiles of `mr` rows. Pure, so it is
/// tested alone; every figure in it was measured (docs/results/engine.md).
pub(super) fn partition(
    m: usize,
    k_row: usize,
    weight_len: usize,
    panels: usize,
    threads: usize,
    mr: usize,
) -> Partition {
    // Pixel blocks: a block's packed rows (rows × K) stay within 256 KB of L2, 56–448 rows
    // (448 measured ~5 % faster than 224 on resnet50). When that gives too few tasks
    // (batch 1, late stages):
    // - weights that stay in L2 (up to 2.5 MB, resnet50's layer 3) get finer pixel blocks,
    //   each task packing its own rows once and running every panel (0.97–0.98× at
    //   resnet50 b1 against splitting the panels);
    // - larger weights split the column panels instead, several per task, so the packed
    //   rows are shared and reused and each weight panel is read once.
    // Whole tiles of `mr` rows per block, for about `b` blocks.
    let rows_for = |b: usize| m.div_ceil(b).div_ceil(mr) * mr;
    let cap = ((1 << 16) / k_row.max(1)).clamp(56, 448);
    let mut rows = cap.min(m).div_ceil(mr) * mr;
    let mut blocks = m.div_ceil(rows);
    let want = 4 * threads;
    let small_weights = weight_len <= 640 << 10;
    if blocks < want && small_weights {
        rows = rows_for(want);
        blocks = m.div_ceil(rows);
    }
    let mut per = if blocks >= want || small_weights {
        panels
    } else {
        panels.div_ceil(want.div_ceil(blocks).min((panels / 2).max(1)))
    };
    // Fewer panels per task until the tasks come out a multiple of the thread count, so
    // no thread is left with one task more than the other (9 tasks on 2 threads cost 10).
    if per < panels {
        while per > 1 && !(blocks * panels.div_ceil(per)).is_multiple_of(threads) {
            per -= 1;
        }
    }
    let splits = panels.div_ceil(per);
    // Whole panels and a few blocks (resnet50's first 1×1 conv at batch 1: 7 on 2
    // threads): smaller blocks, as many as a multiple of the thread count.
    if splits == 1 && blocks < want && !blocks.is_multiple_of(threads) {
        rows = rows_for(blocks.next_multiple_of(threads));
        blocks = m.div_ceil(rows);
    }
    Partition { rows, blocks, per }
}

/// `nn.MaxPool2d(3, 2, 1)` on NHWC (padding never wins, as in PyTorch).
pub fn max_pool_3x3s2(x: &[f32], xs: Shape, out: &mut [f32], pool: &rayon::ThreadPool) -> Shape {
    let os = xs.max_pooled();
    let c = xs.c;
    pool.install(|| {
        out[..os.len()]
            .par_chunks_mut(os.w * c)
            .enumerate()
            .for_each(|(row, o)| {
                let (n, oy) = (row / os.h, row % os.h);
                o.fill(f32::NEG_INFINITY);
                // The window's rows and columns inside the image (padding never wins).
                let ys = (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(xs.h);
                for ox in 0..os.w {
                    let d = &mut o[ox * c..(ox + 1) * c];
                    let xr = (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(xs.w);
                    for iy in ys.clone() {
                        let row = (n * xs.h + iy) * xs.w;
                        let line = &x[(row + xr.start) * c..(row + xr.end) * c];
                        for px in line.chunks_exact(c) {
                            // A compare-and-select, which compiles to vmaxps; f32::max's NaN
                            // rules keep LLVM from vectorizing this loop.
                            d.iter_mut()
                                .zip(px)
                                .for_each(|(a, &b)| *a = if b > *a { b } else { *a });
                        }
                    }
                }
            })
    });
    os
}

/// Global average pool: `[n, h, w, c]` → `[n, c]`.
pub fn global_avg_pool(x: &[f32], xs: Shape, out: &mut [f32]) {
    let (hw, c) = (xs.h * xs.w, xs.c);
    for n in 0..xs.n {
        let o = &mut out[n * c..(n + 1) * c];
        o.fill(0.0);
        for p in 0..hw {
            let s = (n * hw + p) * c;
            o.iter_mut().zip(&x[s..s + c]).for_each(|(a, &b)| *a += b);
        }
        let inv = 1.0 / hw as f32;
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Option A's shortcut: `x[:, ::s, ::s, :]` with `pad` zero channels before and the rest after.
pub fn zero_pad_shortcut(x: &[f32], xs: Shape, stride: usize, cout: usize, out: &mut [f32]) -> Shape {
    let os = xs.subsampled(stride, cout);
    let before = (cout - xs.c) / 2;
    for n in 0..os.n {
        for oy in 0..os.h {
            for ox in 0..os.w {
                let d = &mut out[((n * os.h + oy) * os.w + ox) * cout..][..cout];
                d.fill(0.0);
                let s = ((n * xs.h + oy * stride) * xs.w + ox * stride) * xs.c;
                d[before..before + xs.c].copy_from_slice(&x[s..s + xs.c]);
            }
        }
    }
    os
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Kernel;

    /// Every partition covers the pixels in whole tiles, keeps the panels in range, and (when
    /// panels are split) gives the threads equal numbers of tasks.
    #[test]
    fn partitions_cover_the_work_and_balance_the_threads() {
        for m in [1, 13, 14, 49, 196, 784, 3136, 12544, 25088] {
            for (k_row, cout) in [
                (27usize, 16usize),
                (64, 64),
                (576, 64),
                (1152, 256),
                (4608, 512),
                (2048, 1000),
            ] {
                for (threads, (mr, nr)) in [1, 2, 3, 8].into_iter().zip([(14, 32), (6, 16), (8, 12), (14, 32)]) {
                    let panels = cout.div_ceil(nr);
                    let p = partition(m, k_row, k_row * cout, panels, threads, mr);
                    let case = format!("m {m}, k {k_row}, cout {cout}, {threads} threads, mr {mr}: {p:?}");
                    assert_eq!(p.rows % mr, 0, "{case}");
                    assert!(p.rows * p.blocks >= m && (p.blocks - 1) * p.rows < m, "{case}");
                    assert!((1..=panels).contains(&p.per), "{case}");
                    if p.per < panels && p.per > 1 {
                        assert_eq!((p.blocks * panels.div_ceil(p.per)) % threads, 0, "{case}");
                    }
                }
            }
        }
    }

    /// The measured cases the planner's comments name.
    #[test]
    fn partitions_of_resnet50_at_batch_1() {
        // The first 1×1 conv of layer 1 (56², 64 → 64) on 2 threads: 8 blocks, not 7.
        let p = partition(56 * 56, 64, 64 * 64, 2, 2, 14);
        assert_eq!((p.blocks, p.per), (8, 2), "{p:?}");
        // Layer 4's 3×3 conv (7², 512 → 512, 2.4 MB of weights): too few pixels for the
        // threads, so the 16 column panels are split, into a number of tasks both threads share.
        let p = partition(49, 4608, 4608 * 512, 16, 2, 14);
        assert!(p.per < 16, "{p:?}");
        assert_eq!((p.blocks * 16usize.div_ceil(p.per)) % 2, 0, "{p:?}");
        // Layer 3's 1×1 expansion (14², 256 → 1024, 1 MB: stays in L2): finer pixel blocks,
        // every task runs all panels. 196 pixels are 14 tiles, so whole-tile blocks of 2 tiles
        // make 7 (8 are not possible).
        let p = partition(196, 256, 256 * 1024, 32, 2, 14);
        assert_eq!((p.rows, p.blocks, p.per), (28, 7, 32), "{p:?}");
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) * 0.05)
            .collect()
    }

    /// A residual taken from the output buffer gives exactly what a separate one gives, on
    /// every path that says it can (packed and portable GEMMs, Winograd); the packed kernel
    /// says no when k needs several passes.
    #[test]
    fn residual_in_place_matches_a_separate_one() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for isa in Kernel::available() {
            for (k, cin, cout) in [(1, 64, 256), (3, 64, 64), (1, 256, 64)] {
                let spec = ConvShape::new(cin, cout, k, 1);
                let conv = Conv::fold(&values(cout * cin * k * k, 1), spec, None, Some(&values(cout, 2)), isa);
                let xs = Shape {
                    n: 2,
                    h: 9,
                    w: 11,
                    c: cin,
                };
                assert!(conv.adds_in_place(xs));
                let (x, res) = (values(xs.len(), 3), values(conv.out_shape(xs).len(), 4));
                let mut want = vec![0f32; res.len()];
                let mut scratch = AlignedVec::default();
                pool.install(|| conv.run(&x, xs, &mut want, Residual::From(&res), true, &pool, &mut scratch));
                let mut got = res.clone();
                pool.install(|| conv.run(&x, xs, &mut got, Residual::InOut, true, &pool, &mut scratch));
                assert_eq!(got, want, "k{k} {cin}->{cout} {isa}");
            }
            let deep = Conv::fold(&values(64 * 512, 1), ConvShape::new(512, 64, 1, 1), None, None, isa);
            let xs = Shape {
                n: 1,
                h: 4,
                w: 4,
                c: 512,
            };
            assert_eq!(deep.adds_in_place(xs), !isa.packed(), "{isa}");
        }
    }
}

/// Winograd against the direct conv: here, so the Winograd file never imports this one.
#[cfg(test)]
mod winograd_tests {
    use super::*;
    use crate::engine::Kernel;

    use crate::engine::types::test_values as values;

    /// One stride-1 3×3 conv through Winograd against the direct GEMM (the portable kernel), on
    /// ragged sizes, with bias, residual and ReLU: both the per-block and the per-position
    /// schedules, and the wide convs' lazily built transform; on every kernel this CPU runs.
    #[test]
    fn winograd_equals_the_direct_conv() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for isa in Kernel::available() {
            for (cin, cout, n, h, w) in [
                (16, 32, 1, 9, 13),
                (64, 64, 2, 17, 10),
                (128, 128, 1, 28, 28),
                (256, 256, 3, 7, 7),
                (512, 512, 4, 7, 7),
                // 480 tiles: two parts of the batch.
                (512, 512, 120, 7, 7),
            ] {
                let spec = ConvShape::new(cin, cout, 3, 1);
                let weight = values(cout * cin * 9, 1).iter().map(|v| v * 0.05).collect::<Vec<_>>();
                let bias = values(cout, 2);
                let direct = Conv::fold(&weight, spec, None, Some(&bias), Isa::Portable);
                let fast = Conv::fold(&weight, spec, None, Some(&bias), isa);
                let xs = Shape { n, h, w, c: cin };
                let x = values(xs.len(), 3);
                let res = values(n * h * w * cout, 4);
                let [want, got] = [&direct, &fast].map(|conv| {
                    let mut out = vec![0f32; res.len()];
                    let mut scratch = AlignedVec::default();
                    conv.run(&x, xs, &mut out, Residual::From(&res), true, &pool, &mut scratch);
                    out
                });
                let err: f64 = got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
                let rel = (err / norm).sqrt();
                assert!(rel < 1e-5, "{isa} {cin}→{cout} on {n}×{h}×{w}: relative L2 {rel:e}");
                assert_eq!(
                    fast.uses_winograd(xs),
                    isa.packed(),
                    "{isa} {cin}→{cout} on {n}×{h}×{w}: Winograd runs exactly on the packed kernels"
                );
            }
        }
    }
}
