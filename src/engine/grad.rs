//! A training step's convolution passes on the engine's packed kernels, on NHWC activations:
//! - **forward**: the inference conv (implicit im2col, the stem path), nothing fused, no Winograd;
//! - **input gradient**: at stride 1, a convolution of the output gradient with the flipped,
//!   transposed weights, so it runs on the same kernels; strided, one GEMM per image from the
//!   output gradient to patch gradients, then a col2im scatter;
//! - **weight gradient**: `dW[(ky, kx, cin), cout] = Σ_pixels patch · dy`, GEMMs over blocks of
//!   [`KC`] pixels: the patches are packed transposed straight from the NHWC input (no im2col
//!   buffer), each block's output gradient is the packed B, and every thread accumulates its
//!   blocks in place before the threads' sums are added.
//!
//! Why ours and not burn-flex's: its convolutions run im2col, a scalar col2im scatter for the
//! input gradient and a generic fallback for the weight gradient, and spend ~40 % of a step
//! moving data (docs/results/training-speed.md).

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::conv::Conv;
use super::kernel::{self, Epilogue, Isa, PackedB, KC};
use super::types::{Ptr, Residual, Shape};
use crate::model::ConvShape;

/// One convolution of a training step, its weights packed for the three passes.
pub struct TrainConv {
    pub spec: ConvShape,
    isa: Isa,
    forward: Conv,
    /// Stride 1: the conv whose output is the input gradient.
    transposed: Option<Conv>,
    /// Strided: per group, `W_g` as `[cout_g, k·k·cin_g]`, from output to patch gradients.
    to_patches: Vec<PackedB>,
}

/// The output size of `spec` on `xs`, with torchvision's padding.
pub fn out_shape(spec: ConvShape, xs: Shape) -> Shape {
    let span = spec.dilation * (spec.k - 1) + 1;
    Shape {
        n: xs.n,
        h: (xs.h + 2 * spec.pad() - span) / spec.stride + 1,
        w: (xs.w + 2 * spec.pad() - span) / spec.stride + 1,
        c: spec.cout,
    }
}

impl TrainConv {
    /// Packs torch's `[cout, cin/groups, k, k]` weight for `isa`, which must be a packed
    /// kernel's (the portable one trains through burn).
    pub fn new(weight: &[f32], spec: ConvShape, isa: Isa) -> Self {
        debug_assert!(isa.packed());
        let ConvShape {
            cin, cout, k, groups, ..
        } = spec;
        let (cin_g, cout_g, kk) = (cin / groups, cout / groups, k * k);
        debug_assert_eq!(weight.len(), cout * cin_g * kk);
        // No Winograd: its ~3e-6 relative error per conv is harmless in inference, but a
        // training step amplifies it (BatchNorm over a channel with a small batch variance,
        // AdamW's normalised first steps) and leaves PyTorch's numbers: with it, either pass
        // put tests/train.rs's two-step runs past 1e-4.
        // Forward: per group, B[(tap, i), o] = W[g·cout_g + o, i, tap].
        let w = |o: usize, i: usize, tap: usize| weight[(o * cin_g + i) * kk + tap];
        let at = |r: usize| (r / cin_g, r % cin_g);
        let forward = Conv::packed(
            spec,
            (0..groups)
                .map(|g| {
                    PackedB::from_fn(kk * cin_g, cout_g, isa, |r, o| {
                        let (tap, i) = at(r);
                        w(g * cout_g + o, i, tap)
                    })
                })
                .collect(),
            isa,
        );
        let (mut transposed, mut to_patches) = (None, Vec::new());
        if spec.stride == 1 && k % 2 == 1 {
            // dx = conv(dy, W') with W'[g·cin_g + i, o, tap] = W[g·cout_g + o, i, kk−1−tap]:
            // per group, B'[(tap, o), i] = W[g·cout_g + o, i, kk−1−tap].
            let t = ConvShape {
                cin: cout,
                cout: cin,
                ..spec
            };
            let weights = (0..groups)
                .map(|g| {
                    PackedB::from_fn(kk * cout_g, cin_g, isa, |r, i| {
                        let (tap, o) = (r / cout_g, r % cout_g);
                        w(g * cout_g + o, i, kk - 1 - tap)
                    })
                })
                .collect();
            transposed = Some(Conv::packed(t, weights, isa));
        } else {
            // Per group, row o: output channel g·cout_g + o's taps as (tap, i).
            for g in 0..groups {
                to_patches.push(PackedB::from_fn(cout_g, kk * cin_g, isa, |o, col| {
                    let (tap, i) = at(col);
                    w(g * cout_g + o, i, tap)
                }));
            }
        }
        TrainConv {
            spec,
            isa,
            forward,
            transposed,
            to_patches,
        }
    }

    /// `out = conv(x)`.
    pub fn forward(
        &self,
        x: &[f32],
        xs: Shape,
        out: &mut [f32],
        pool: &rayon::ThreadPool,
        scratch: &mut AlignedVec,
    ) -> Shape {
        self.forward.run(x, xs, out, Residual::None, false, pool, scratch)
    }

    /// `dx` (input `xs`'s shape, overwritten) from the output gradient `dy`.
    pub fn input_grad(
        &self,
        dy: &[f32],
        xs: Shape,
        dx: &mut [f32],
        pool: &rayon::ThreadPool,
        scratch: &mut AlignedVec,
    ) {
        let ys = out_shape(self.spec, xs);
        if let Some(t) = &self.transposed {
            t.run(dy, ys, dx, Residual::None, false, pool, scratch);
            return;
        }
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            dilation,
            groups,
        } = self.spec;
        let (cin_g, cout_g, kk) = (cin / groups, cout / groups, k * k);
        let pad = self.spec.pad() as isize;
        let (pixels, isa) = (ys.h * ys.w, self.isa);
        let dyp = Ptr(dy.as_ptr());
        pool.install(|| {
            dx[..xs.len()]
                .par_chunks_mut(xs.h * xs.w * cin)
                .enumerate()
                .for_each_init(
                    || (Vec::new(), Vec::new()),
                    |(packed, cols): &mut (Vec<f32>, Vec<f32>), (n, dxn)| {
                        dxn.fill(0.0);
                        packed.resize(kernel::packed_len(pixels, cout_g, isa.mr()), 0.0);
                        cols.resize(pixels * kk * cin_g, 0.0);
                        let zeros = vec![0f32; kk * cin_g];
                        for (g, w) in self.to_patches.iter().enumerate() {
                            // SAFETY: image n's rows of dy, columns g·cout_g.., are inside dy;
                            // `packed` and `cols` have the sizes the calls need.
                            unsafe {
                                let a = dyp.get().add(n * pixels * cout + g * cout_g);
                                kernel::pack_a_rows(isa, pixels, a, cout, cout_g, packed);
                                let ep = Epilogue {
                                    bias: &zeros,
                                    residual: None,
                                    relu: false,
                                };
                                kernel::gemm_packed(
                                    pixels,
                                    packed,
                                    w,
                                    cols.as_mut_ptr(),
                                    kk * cin_g,
                                    ep,
                                    0..w.panels(),
                                );
                            }
                            // col2im: each patch gradient back onto the input pixels it read.
                            for oy in 0..ys.h {
                                for ox in 0..ys.w {
                                    let src = &cols[(oy * ys.w + ox) * kk * cin_g..][..kk * cin_g];
                                    for ky in 0..k {
                                        let iy = (oy * stride + ky * dilation) as isize - pad;
                                        if iy < 0 || iy >= xs.h as isize {
                                            continue;
                                        }
                                        for kx in 0..k {
                                            let ix = (ox * stride + kx * dilation) as isize - pad;
                                            if ix < 0 || ix >= xs.w as isize {
                                                continue;
                                            }
                                            let d = &mut dxn[(iy as usize * xs.w + ix as usize) * cin + g * cin_g..]
                                                [..cin_g];
                                            let s = &src[(ky * k + kx) * cin_g..][..cin_g];
                                            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                                        }
                                    }
                                }
                            }
                        }
                    },
                )
        });
    }

    /// The weight gradient in torch's `[cout, cin/groups, k, k]` layout, from the conv's input
    /// `x` and its output gradient `dy`.
    pub fn weight_grad(&self, x: &[f32], xs: Shape, dy: &[f32], pool: &rayon::ThreadPool) -> Vec<f32> {
        let ConvShape {
            cin, cout, k, groups, ..
        } = self.spec;
        let (cin_g, cout_g, kk) = (cin / groups, cout / groups, k * k);
        let ys = out_shape(self.spec, xs);
        let n = kk * cin_g;
        let pixels = ys.pixels();
        let blocks = pixels.div_ceil(KC);
        let threads = pool.current_num_threads().max(1);
        // Each thread takes a share of the pixel blocks (its sums are added after), or, when
        // there are fewer blocks than threads (late stages, small batches), a share of the
        // columns over all blocks.
        let nr = self.isa.nr();
        let panels = n.div_ceil(nr);
        let split_cols = blocks < threads && panels > 1;
        let tasks = if split_cols {
            threads.min(panels)
        } else {
            threads.min(blocks.max(1))
        };
        let parts: Vec<(std::ops::Range<usize>, Vec<f32>)> = pool.install(|| {
            (0..tasks)
                .into_par_iter()
                .map(|t| {
                    let (bs, cols) = if split_cols {
                        (
                            0..blocks,
                            (t * panels / tasks) * nr..((t + 1) * panels / tasks * nr).min(n),
                        )
                    } else {
                        ((t * blocks / tasks)..((t + 1) * blocks / tasks), 0..n)
                    };
                    let w = cols.len();
                    let mut sum = vec![0f32; groups * cout_g * w];
                    let mut bufs = (Vec::new(), None);
                    for b in bs {
                        let p = b * KC..((b + 1) * KC).min(pixels);
                        for g in 0..groups {
                            let c = &mut sum[g * cout_g * w..(g + 1) * cout_g * w];
                            self.weight_grad_block(x, xs, dy, ys, p.clone(), g, cols.clone(), c, &mut bufs);
                        }
                    }
                    (cols, sum)
                })
                .collect()
        });
        let mut total = vec![0f32; groups * cout_g * n];
        for (cols, part) in parts {
            let w = cols.len();
            for (dst, src) in total.chunks_exact_mut(n).zip(part.chunks_exact(w)) {
                dst[cols.clone()].iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
        // [g][o][(tap, i)] → torch's [g·cout_g + o][i][tap].
        let mut w = vec![0f32; cout * cin_g * kk];
        for (go, row) in total.chunks_exact(n).enumerate() {
            for t in 0..kk {
                for i in 0..cin_g {
                    w[(go * cin_g + i) * kk + t] = row[t * cin_g + i];
                }
            }
        }
        w
    }

    /// Adds pixels `p`'s share of group `g`'s weight gradient, columns `cols` (panel-aligned)
    /// of `[cout_g, (ky, kx, cin_g)]`, to `c` (`cout_g` rows of `cols.len()`): `dyᵀ · patches`,
    /// A packed from `dy`'s rows, B from the input's taps (implicit im2col). `bufs` keeps the
    /// packed A and B between calls.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad_block(
        &self,
        x: &[f32],
        xs: Shape,
        dy: &[f32],
        ys: Shape,
        p: std::ops::Range<usize>,
        g: usize,
        cols: std::ops::Range<usize>,
        c: &mut [f32],
        bufs: &mut (Vec<f32>, Option<PackedB>),
    ) {
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            dilation,
            groups,
        } = self.spec;
        let (cin_g, cout_g, kk) = (cin / groups, cout / groups, k * k);
        let (n, kb, mr, isa) = (cols.len(), p.len(), self.isa.mr(), self.isa);
        let (packed, b) = bufs;
        // A: dyᵀ in tiles of mr output channels, [pixel][mr] each.
        let tiles = cout_g.div_ceil(mr);
        packed.resize(tiles * mr * kb, 0.0);
        for t in 0..tiles {
            let rows = (cout_g - t * mr).min(mr);
            let tile = &mut packed[t * mr * kb..(t + 1) * mr * kb];
            for (q, dst) in tile.chunks_exact_mut(mr).enumerate() {
                let s = (p.start + q) * cout + g * cout_g + t * mr;
                dst[..rows].copy_from_slice(&dy[s..s + rows]);
                dst[rows..].fill(0.0);
            }
        }
        // B: each pixel's patch as one row, written into its panels tap by tap. A packing of
        // the same shape is reused, so only the taps are written (padding ones as zeros).
        let b = match b {
            Some(b) if b.k == kb && b.n == n => b,
            _ => b.insert(PackedB::zeroed(kb, n, isa)),
        };
        let nr = isa.nr();
        // Runs of a tap's channels that stay inside one panel, with where row 0 of each goes:
        // the same for every pixel, so the offsets are worked out once.
        let mut pieces = Vec::new();
        for tap in 0..kk {
            let mut i = 0;
            while i < cin_g {
                let col = tap * cin_g + i;
                let len = (nr - col % nr).min(cin_g - i);
                if cols.contains(&col) {
                    pieces.push((tap, i, len, b.offset(col - cols.start)));
                }
                i += len;
            }
        }
        let pad = self.spec.pad() as isize;
        let panels = b.panels_mut();
        // Along an output row, one tap reads input pixels `stride` apart: walk the block's
        // pixels row by row, and per tap copy the in-image run, padding with zeros.
        let mut q = p.start;
        while q < p.end {
            let (img, rest) = (q / (ys.h * ys.w), q % (ys.h * ys.w));
            let (oy, ox0) = (rest / ys.w, rest % ys.w);
            let ox1 = (ox0 + p.end - q).min(ys.w);
            let r0 = q - p.start;
            for &(tap, i, len, off) in &pieces {
                let (ky, kx) = (tap / k, tap % k);
                let iy = (oy * stride + ky * dilation) as isize - pad;
                // ix = ox·stride + kx·dilation − pad is inside for ox in lo..hi.
                let shift = (kx * dilation) as isize - pad;
                let lo = if shift >= 0 {
                    0
                } else {
                    ((-shift) as usize).div_ceil(stride)
                };
                let hi = if (xs.w as isize) > shift {
                    ((xs.w as isize - shift) as usize).div_ceil(stride)
                } else {
                    0
                };
                let (mut lo, mut hi) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1).max(lo.clamp(ox0, ox1)));
                if iy < 0 || iy >= xs.h as isize {
                    (lo, hi) = (ox1, ox1);
                }
                let row = |ox: usize| off + (r0 + ox - ox0) * nr;
                for ox in (ox0..lo).chain(hi..ox1) {
                    panels[row(ox)..row(ox) + len].fill(0.0);
                }
                if lo < hi {
                    let base = ((img * xs.h + iy as usize) * xs.w) as isize;
                    let src = |ox: usize| (((base + (ox * stride) as isize + shift) as usize) * cin) + g * cin_g + i;
                    if len == 16 {
                        for ox in lo..hi {
                            // One vector move rather than a call to memcpy.
                            let v: [f32; 16] = x[src(ox)..src(ox) + 16].try_into().expect("16 floats");
                            panels[row(ox)..row(ox) + 16].copy_from_slice(&v);
                        }
                    } else {
                        for ox in lo..hi {
                            panels[row(ox)..row(ox) + len].copy_from_slice(&x[src(ox)..src(ox) + len]);
                        }
                    }
                }
            }
            q += ox1 - ox0;
        }
        let zeros = vec![0f32; n];
        let cp = c.as_mut_ptr();
        let ep = Epilogue {
            bias: &zeros,
            // Accumulates in place: one k-pass (kb ≤ KC) reads each value before writing it.
            residual: Some((cp.cast_const(), n)),
            relu: false,
        };
        // SAFETY: `packed` holds cout_g rows' tiles for depth kb ≤ KC; c has cout_g rows of n.
        unsafe { kernel::gemm_packed(cout_g, packed, b, cp, n, ep, 0..b.panels()) };
    }
}
