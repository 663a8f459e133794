//! A training step's convolution passes on the engine's packed kernels, on NHWC activations:
//! - **forward**: with one group, no dilation and few enough channels, each image is copied
//!   with its zero border and every output row reads its kernel rows in place
//!   ([`Conv::run_rows`]); otherwise the inference conv (implicit im2col). Nothing fused, no
//!   Winograd;
//! - **input gradient**: at stride 1, a convolution of the output gradient with the flipped,
//!   transposed weights, so it runs on the same kernels (and paths); strided, one GEMM per
//!   image from the output gradient to patch gradients, then a col2im scatter;
//! - **weight gradient**: with one group and no dilation, transposed, `dWᵀ[(ky, kx, cin),
//!   cout] = Σ_pixels patchᵀ · dy`, A read in place from the padded input, one run of k-steps
//!   per output row ([`kernel::gemm_runs`]); threads split the images (small sums, added
//!   after) or the row tiles. Otherwise, and for late layers whose sums dwarf their pixels,
//!   `dW[cout, (ky, kx, cin)] = Σ dyᵀ · patch` over blocks of [`KC`] pixels, each block's
//!   patches packed into panels straight from the NHWC input; threads split the blocks or,
//!   when blocks are fewer than threads, the columns.
//!
//! Why ours and not burn-flex's: its convolutions run im2col, a scalar col2im scatter for the
//! input gradient and a generic fallback for the weight gradient, and spend ~40 % of a step
//! moving data (docs/results/training-speed.md).

use std::cell::RefCell;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::conv::Conv;
use super::kernel::{self, Epilogue, Isa, PackedB, KC};
use super::types::{Ptr, Residual, Shape};
use crate::model::ConvShape;

/// Floats of padded images and packed output gradient per group of
/// [`TrainConv::weight_grad_runs`] (8 MB).
const RUNS_GROUP_FLOATS: usize = 1 << 21;

/// How [`TrainConv::weight_grad_runs`] splits its work: by images (each task its own sums)
/// or by row tiles; and images per group.
#[derive(Clone, Copy, Debug)]
struct RunsPlan {
    by_images: bool,
    group: usize,
}

thread_local! {
    /// [`TrainConv::weight_grad_into`]'s sums, one per task, kept for the next call.
    static SUMS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    /// [`TrainConv::weight_grad_runs`]'s padded images and packed `dy`, kept for the next
    /// call (the packings by shape, so that their zero padding stays).
    static RUNS: RefCell<(Vec<f32>, Vec<PackedB>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

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

/// Input and output channels per group, and taps per kernel.
fn per_group(spec: ConvShape) -> (usize, usize, usize) {
    (spec.cin / spec.groups, spec.cout / spec.groups, spec.k * spec.k)
}

/// The output size of `spec` on `xs`, with torchvision's padding.
pub fn out_shape(spec: ConvShape, xs: Shape) -> Shape {
    xs.conv_out(spec, spec.pad())
}

impl TrainConv {
    /// Packs torch's `[cout, cin/groups, k, k]` weight for `isa`, which must be a packed
    /// kernel's (the portable one trains through burn).
    pub fn new(weight: &[f32], spec: ConvShape, isa: Isa) -> Self {
        debug_assert!(isa.packed());
        let ConvShape {
            cin, cout, k, groups, ..
        } = spec;
        let (cin_g, cout_g, kk) = per_group(spec);
        // No Winograd: its ~3e-6 relative error per conv is harmless in inference, but a
        // training step amplifies it (BatchNorm over a channel with a small batch variance,
        // AdamW's normalised first steps) and leaves PyTorch's numbers: with it, either pass
        // put tests/train.rs's two-step runs past 1e-4.
        let zeroed = |k, n| (0..groups).map(|_| PackedB::zeroed(k, n, isa)).collect::<Vec<_>>();
        let forward = Conv::packed(spec, zeroed(kk * cin_g, cout_g), isa);
        let (mut transposed, mut to_patches) = (None, Vec::new());
        if spec.stride == 1 && k % 2 == 1 {
            let t = ConvShape {
                cin: cout,
                cout: cin,
                ..spec
            };
            transposed = Some(Conv::packed(t, zeroed(kk * cout_g, cin_g), isa));
        } else {
            to_patches = zeroed(cout_g, kk * cin_g);
        }
        let mut conv = TrainConv {
            spec,
            isa,
            forward,
            transposed,
            to_patches,
        };
        conv.repack(weight);
        conv
    }

    /// Packs new values of the weight into the same buffers (a step's update), which saves
    /// allocating and zeroing them again: a tenth of a resnet18 step.
    pub fn repack(&mut self, weight: &[f32]) {
        let (_, cout_g, _) = per_group(self.spec);
        for g in 0..self.spec.groups {
            self.repack_outputs(weight, g * cout_g..(g + 1) * cout_g);
        }
    }

    /// [`TrainConv::repack`] for output channels `os` alone, in one group and starting at a
    /// panel's first column (a multiple of [`Isa::nr`] in the group), so that an update can
    /// pack each block of rows while they are still in cache.
    pub fn repack_outputs(&mut self, weight: &[f32], os: std::ops::Range<usize>) {
        let (cin_g, cout_g, kk) = per_group(self.spec);
        let nr = self.isa.nr();
        let g = os.start / cout_g;
        let local = os.start - g * cout_g..os.end - g * cout_g;
        debug_assert_eq!(weight.len(), self.spec.cout * cin_g * kk);
        debug_assert!(local.end <= cout_g && local.start % nr == 0);
        // Forward: B[(tap, i), o] = W[g·cout_g + o, i, tap], the rows visited in torch's
        // (i, tap) order so that each column's source row is read front to back.
        let rows = (0..cin_g).flat_map(|i| (0..kk).map(move |tap| tap * cin_g + i));
        let panels = local.start / nr..local.end.div_ceil(nr);
        self.forward.weights[g].refill_panels(panels, rows, |r, o0, out| {
            let (tap, i) = (r / cin_g, r % cin_g);
            let src = weight[((g * cout_g + o0) * cin_g + i) * kk + tap..].iter();
            out.iter_mut().zip(src.step_by(cin_g * kk)).for_each(|(v, &s)| *v = s);
        });
        // Stride 1: dx = conv(dy, W') with W'[g·cin_g + i, o, tap] = W[g·cout_g + o, i,
        // kk−1−tap], per group B'[(tap, o), i].
        if let Some(t) = &mut self.transposed {
            let rows = local.clone().flat_map(|o| (0..kk).map(move |tap| tap * cout_g + o));
            t.weights[g].refill(rows, |r, i0, out| {
                let (tap, o) = (r / cout_g, r % cout_g);
                let src = weight[((g * cout_g + o) * cin_g + i0) * kk + kk - 1 - tap..].iter();
                out.iter_mut().zip(src.step_by(kk)).for_each(|(v, &s)| *v = s);
            });
        }
        // Strided: row o holds output channel g·cout_g + o's taps as (tap, i).
        if let Some(b) = self.to_patches.get_mut(g) {
            b.refill_by_rows(local, |o, c0, out| {
                let row = &weight[(g * cout_g + o) * cin_g * kk..][..cin_g * kk];
                // A panel's columns, tap by tap: channels `kk` apart in the row.
                let mut c = 0;
                while c < out.len() {
                    let (tap, i) = ((c0 + c) / cin_g, (c0 + c) % cin_g);
                    let len = (cin_g - i).min(out.len() - c);
                    let src = row[i * kk + tap..].iter().step_by(kk);
                    out[c..c + len].iter_mut().zip(src).for_each(|(v, &s)| *v = s);
                    c += len;
                }
            });
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
        match self.forward.run_rows(x, xs, out, false, pool) {
            Some(os) => os,
            None => self.forward.run(x, xs, out, Residual::None, false, pool, scratch),
        }
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
            if t.run_rows(dy, ys, dx, false, pool).is_none() {
                t.run(dy, ys, dx, Residual::None, false, pool, scratch);
            }
            return;
        }
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            dilation,
            ..
        } = self.spec;
        let (cin_g, cout_g, kk) = per_group(self.spec);
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
        let mut w = Vec::new();
        self.weight_grad_into(x, xs, dy, pool, &mut w);
        w
    }

    /// [`TrainConv::weight_grad`] into `w`, whose allocation (last step's gradient) it reuses.
    /// The sums (`[(tap, i)][o]` from [`TrainConv::weight_grad_runs`], or one `[g][o][(tap,
    /// i)]` per task from [`TrainConv::weight_grad_blocks`], added up) are turned into torch's
    /// layout in parallel.
    pub fn weight_grad_into(&self, x: &[f32], xs: Shape, dy: &[f32], pool: &rayon::ThreadPool, w: &mut Vec<f32>) {
        let t0 = std::time::Instant::now();
        let (cin_g, cout_g, kk) = per_group(self.spec);
        let n = kk * cin_g;
        let len = self.spec.groups * cout_g * n;
        // Each task's sums, in buffers kept from call to call at the largest size asked: their
        // first product overwrites them, so they are neither zeroed nor faulted in again
        // (layer4 of resnet18 sums 9 MB, right after the stem's few).
        let mut sums = SUMS.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let runs = self.runs_fit(xs);
        let parts = pool.current_num_threads().max(1);
        sums.resize_with(parts, Vec::new);
        sums.iter_mut()
            .filter(|s| s.len() < len)
            .for_each(|s| s.resize(len, 0.0));
        let used = match runs {
            true => self.weight_grad_runs(x, xs, dy, pool, &mut sums, self.runs_plan(xs, parts)),
            false => self.weight_grad_blocks(x, xs, dy, pool, &mut sums),
        };
        let t_mid = std::time::Instant::now();
        let parts = &sums[..used];
        w.resize(len, 0.0);
        pool.install(|| match runs {
            // [(tap, i)][o] → torch's [o][i][tap], sixteen output channels at a time.
            true => {
                let cout = self.spec.cout;
                w.par_chunks_mut(16 * n).enumerate().for_each(|(b, rows)| {
                    let (o0, os) = (b * 16, rows.len() / n);
                    // Along the destination rows, so that each of them fills front to back.
                    for (j, part) in parts.iter().enumerate() {
                        for i in 0..cin_g {
                            for tap in 0..kk {
                                let src = &part[(tap * cin_g + i) * cout + o0..][..os];
                                for (o, &v) in src.iter().enumerate() {
                                    let d = &mut rows[o * n + i * kk + tap];
                                    *d = if j == 0 { v } else { *d + v };
                                }
                            }
                        }
                    }
                })
            }
            // [g][o][(tap, i)] → torch's [g·cout_g + o][i][tap].
            false => w.par_chunks_mut(n).enumerate().for_each(|(go, row)| {
                for (j, part) in parts.iter().enumerate() {
                    for (t, taps) in part[go * n..][..n].chunks_exact(cin_g).enumerate() {
                        let dst = row.iter_mut().skip(t).step_by(kk).zip(taps);
                        match j {
                            0 => dst.for_each(|(d, &v)| *d = v),
                            _ => dst.for_each(|(d, &v)| *d += v),
                        }
                    }
                }
            }),
        });
        SUMS.with(|s| *s.borrow_mut() = sums);
        if super::conv::profiling() {
            let (s, secs) = (self.spec, t0.elapsed().as_secs_f64());
            let flops = 2.0 * (out_shape(s, xs).pixels() * len) as f64;
            eprintln!(
                "dw k{} s{} g{} {}x{}x{} -> {}  {:.3} ms  {:.1} GFLOP/s  {} {:.3}",
                s.k,
                s.stride,
                s.groups,
                xs.h,
                xs.w,
                xs.c,
                s.cout,
                secs * 1e3,
                flops / secs / 1e9,
                if runs { "runs" } else { "blocks" },
                t_mid.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    /// Whether [`TrainConv::weight_grad_runs`] takes this conv on input `xs`: one group, no
    /// dilation, and sums that are not many times the pixels (late layers at small sizes sum
    /// MBs over a few hundred pixels, where packed patches read A at half the cache lines).
    fn runs_fit(&self, xs: Shape) -> bool {
        let s = self.spec;
        let sums = s.k * s.k * s.cin * s.cout;
        s.groups == 1 && s.dilation == 1 && (sums <= 1 << 20 || out_shape(s, xs).pixels() >= sums / 512)
    }

    /// How [`TrainConv::weight_grad_runs`] splits its work over `tasks` on input `xs`.
    fn runs_plan(&self, xs: Shape, tasks: usize) -> RunsPlan {
        let s = self.spec;
        let (ph, pw) = (xs.h + 2 * s.pad(), xs.w + 2 * s.pad());
        let per_image = ph * pw * s.cin + out_shape(s, xs).pixels() / xs.n.max(1) * s.cout;
        RunsPlan {
            by_images: s.k * s.k * s.cin * s.cout <= 1 << 19 && xs.n >= tasks,
            group: (RUNS_GROUP_FLOATS / per_image).max(1),
        }
    }

    /// The weight gradient as `dWᵀ[(ky, kx, i)][o] = Σ_q x_pad[q's window][(ky, kx, i)] ·
    /// dy[q][o]`, A read in place ([`kernel::gemm_runs`]): per kernel row `ky`, the `k · cin`
    /// values `(kx, i)` are contiguous in the padded NHWC input and output pixels read them
    /// `stride · cin` apart, one run per output row. Images go in groups, each copied with
    /// its zero border (not needed without padding) and its `dy` packed into panels. Sums
    /// that stay in L2 are split by images, each task writing `sums[t]` (added up after);
    /// larger ones by row tiles over every image, all into `sums[0]`. Returns how many of
    /// `sums` hold a share.
    fn weight_grad_runs(
        &self,
        x: &[f32],
        xs: Shape,
        dy: &[f32],
        pool: &rayon::ThreadPool,
        sums: &mut [Vec<f32>],
        plan: RunsPlan,
    ) -> usize {
        let ConvShape { cin, cout, k, .. } = self.spec;
        let (pw, mr) = (xs.w + 2 * self.spec.pad(), self.isa.mr());
        let tiles: Vec<kernel::RowTile> = (0..k)
            .flat_map(|ky| {
                kernel::row_tiles(k * cin, mr).map(move |(r0, rows)| kernel::RowTile {
                    a_off: ky * pw * cin + r0,
                    c_row: ky * k * cin + r0,
                    rows,
                })
            })
            .collect();
        let RunsPlan { by_images, group } = plan;
        let tasks = match by_images {
            true => sums.len(),
            false => sums.len().min(tiles.len()),
        };
        if by_images {
            pool.install(|| {
                sums[..tasks].par_iter_mut().enumerate().for_each(|(t, c)| {
                    let images = t * xs.n / tasks..(t + 1) * xs.n / tasks;
                    RUNS.with(|bufs| {
                        let (padded, packed) = &mut *bufs.borrow_mut();
                        for n0 in images.clone().step_by(group) {
                            let n1 = (n0 + group).min(images.end);
                            let (runs, b) = self.runs_group(x, xs, dy, n0..n1, padded, packed, None);
                            // SAFETY: a window's reads stay inside its padded image (the
                            // output size makes it fit); c is this task's.
                            unsafe {
                                kernel::gemm_runs(
                                    &tiles,
                                    &runs,
                                    self.spec.stride * cin,
                                    b,
                                    c.as_mut_ptr(),
                                    cout,
                                    n0 == images.start,
                                )
                            }
                        }
                    })
                })
            });
            return tasks;
        }
        let c = Ptr(sums[0].as_mut_ptr());
        RUNS.with(|bufs| {
            let (padded, packed) = &mut *bufs.borrow_mut();
            for n0 in (0..xs.n).step_by(group) {
                let n1 = (n0 + group).min(xs.n);
                let (runs, b) = self.runs_group(x, xs, dy, n0..n1, padded, packed, Some(pool));
                pool.install(|| {
                    (0..tasks).into_par_iter().for_each(|t| {
                        let mine = &tiles[t * tiles.len() / tasks..(t + 1) * tiles.len() / tasks];
                        // SAFETY: as above; the tiles' rows of c are this task's alone.
                        unsafe { kernel::gemm_runs(mine, &runs, self.spec.stride * cin, b, c.get(), cout, n0 == 0) }
                    })
                });
            }
        });
        1
    }

    /// Images `ns` ready for [`kernel::gemm_runs`]: copied with their zero border into
    /// `padded` (unless the conv pads nothing), `dy`'s rows packed into panels (one of
    /// `packed`, kept by shape so that its zero padding stays), and one run per output row.
    /// With a `pool`, the copies and panels are made in parallel.
    #[allow(clippy::too_many_arguments)]
    fn runs_group<'a>(
        &self,
        x: &'a [f32],
        xs: Shape,
        dy: &[f32],
        ns: std::ops::Range<usize>,
        padded: &'a mut Vec<f32>,
        packed: &'a mut Vec<PackedB>,
        pool: Option<&rayon::ThreadPool>,
    ) -> (Vec<kernel::Run>, &'a PackedB) {
        let ConvShape { cin, cout, stride, .. } = self.spec;
        let p = self.spec.pad();
        let ys = out_shape(self.spec, xs);
        let (ph, pw, hw) = (xs.h + 2 * p, xs.w + 2 * p, ys.h * ys.w);
        let (nr, isa, imgs) = (self.isa.nr(), self.isa, ns.len());
        let image = ph * pw * cin;
        let src = &x[ns.start * xs.h * xs.w * cin..][..imgs * xs.h * xs.w * cin];
        let base: &[f32] = match p {
            0 => src,
            _ => {
                padded.resize(imgs * image, 0.0);
                let pad = |(out, img): (&mut [f32], &[f32])| super::types::pad_image(img, xs.h, xs.w, cin, p, out);
                match pool {
                    Some(pool) => pool.install(|| {
                        padded
                            .par_chunks_mut(image)
                            .zip(src.par_chunks(xs.h * xs.w * cin))
                            .for_each(pad)
                    }),
                    None => padded
                        .chunks_mut(image)
                        .zip(src.chunks(xs.h * xs.w * cin))
                        .for_each(pad),
                }
                padded
            }
        };
        let depth = imgs * hw;
        let b = match packed.iter().position(|b| (b.k, b.n, b.isa()) == (depth, cout, isa)) {
            Some(i) => &mut packed[i],
            None => {
                packed.push(PackedB::zeroed(depth, cout, isa));
                packed.last_mut().expect("just pushed")
            }
        };
        let rows = &dy[ns.start * hw * cout..][..depth * cout];
        let fill = |(j, panel): (usize, &mut [f32])| {
            let cols = (cout - j * nr).min(nr);
            for (dst, row) in panel.chunks_exact_mut(nr).zip(rows.chunks_exact(cout)) {
                dst[..cols].copy_from_slice(&row[j * nr..][..cols]);
            }
        };
        match pool {
            Some(pool) => pool.install(|| b.panels_mut().par_chunks_mut(depth * nr).enumerate().for_each(fill)),
            None => b.panels_mut().chunks_mut(depth * nr).enumerate().for_each(fill),
        }
        let runs = (0..imgs * ys.h)
            .map(|r| kernel::Run {
                start: base[(r / ys.h) * image + (r % ys.h) * stride * pw * cin..].as_ptr(),
                len: ys.w,
            })
            .collect();
        (runs, b)
    }

    /// The weight gradient's sums over blocks of [`KC`] pixels with their patches packed
    /// ([`TrainConv::weight_grad_block`]). Each task takes a share of the blocks and writes
    /// `sums[t]`, or, when there are fewer blocks than threads (late stages, small batches),
    /// a share of the columns over all blocks, all into `sums[0]`. Returns how many of `sums`
    /// hold a share.
    fn weight_grad_blocks(
        &self,
        x: &[f32],
        xs: Shape,
        dy: &[f32],
        pool: &rayon::ThreadPool,
        sums: &mut [Vec<f32>],
    ) -> usize {
        let (cin_g, cout_g, kk) = per_group(self.spec);
        let ys = out_shape(self.spec, xs);
        let (n, pixels, nr) = (kk * cin_g, ys.pixels(), self.isa.nr());
        let blocks = pixels.div_ceil(KC);
        let panels = n.div_ceil(nr);
        let split_cols = blocks < sums.len() && panels > 1;
        let tasks = match split_cols {
            true => sums.len().min(panels),
            false => sums.len().min(blocks.max(1)),
        };
        let out: Vec<Ptr<*mut f32>> = sums.iter_mut().map(|s| Ptr(s.as_mut_ptr())).collect();
        pool.install(|| {
            (0..tasks).into_par_iter().for_each(|t| {
                let (bs, cols, c) = match split_cols {
                    true => {
                        let cols = (t * panels / tasks) * nr..((t + 1) * panels / tasks * nr).min(n);
                        (0..blocks, cols, out[0])
                    }
                    false => ((t * blocks / tasks)..((t + 1) * blocks / tasks), 0..n, out[t]),
                };
                let mut bufs = (Vec::new(), Vec::new());
                for (i, b) in bs.enumerate() {
                    let p = b * KC..((b + 1) * KC).min(pixels);
                    for g in 0..self.spec.groups {
                        // SAFETY: the sums outlive the pool's scope; a column split gives each
                        // task its own columns of sums[0], otherwise task t owns sums[t]; group
                        // g's rows start cout_g·n floats further on.
                        unsafe {
                            let c = c.get().add(g * cout_g * n + cols.start);
                            self.weight_grad_block(x, xs, dy, ys, p.clone(), g, cols.clone(), c, n, i == 0, &mut bufs);
                        }
                    }
                }
            })
        });
        if split_cols {
            1
        } else {
            tasks
        }
    }

    /// Adds pixels `p`'s share of group `g`'s weight gradient, columns `cols` (panel-aligned)
    /// of `[cout_g, (ky, kx, cin_g)]`, to `c` (`cout_g` rows `ldc` apart, from column
    /// `cols.start`): `dyᵀ · patches`, A packed from `dy`'s rows, B from the input's taps
    /// (implicit im2col); the `first` block of a task overwrites `c`. `bufs` keeps the packed
    /// A and B between calls.
    ///
    /// # Safety
    /// `c` is valid for `cout_g` rows of `cols.len()` floats at stride `ldc`, written by no
    /// one else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn weight_grad_block(
        &self,
        x: &[f32],
        xs: Shape,
        dy: &[f32],
        ys: Shape,
        p: std::ops::Range<usize>,
        g: usize,
        cols: std::ops::Range<usize>,
        c: *mut f32,
        ldc: usize,
        first: bool,
        bufs: &mut (Vec<f32>, Vec<PackedB>),
    ) {
        let cout = self.spec.cout;
        let (_, cout_g, _) = per_group(self.spec);
        let (kb, mr, isa) = (p.len(), self.isa.mr(), self.isa);
        let (packed, b) = bufs;
        // A: dyᵀ, group g's channels of the block's pixels.
        packed.resize(kernel::packed_len(cout_g, kb, mr), 0.0);
        pack_dy_t(dy, cout, g * cout_g, cout_g, p.clone(), mr, packed);
        // B: each pixel's patch as one row, packed one panel at a time right before its
        // products, so the panel is still in L1 when they read it (a whole block's patches
        // outgrew L2 on 256-channel layers). Packings of the same shape are reused, so only the
        // taps are written (padding ones as zeros).
        let nr = isa.nr();
        let zeros = vec![0f32; nr];
        for c0 in cols.clone().step_by(nr) {
            let ncols = (cols.end - c0).min(nr);
            let b = match b.iter().position(|b| b.k == kb && b.n == ncols) {
                Some(i) => &mut b[i],
                None => {
                    b.push(PackedB::zeroed(kb, ncols, isa));
                    b.last_mut().expect("just pushed")
                }
            };
            self.fill_patch_panel(x, xs, ys, p.clone(), g, c0, ncols, b.panels_mut());
            // SAFETY: the caller vouches for c's rows; this panel's columns start c0 − cols.start
            // floats in.
            let c = unsafe { c.add(c0 - cols.start) };
            let ep = Epilogue {
                bias: &zeros[..ncols],
                // Accumulates in place: one k-pass (kb ≤ KC) reads each value before writing it.
                residual: (!first).then_some((c.cast_const(), ldc)),
                relu: false,
            };
            // SAFETY: `packed` holds cout_g rows' tiles for depth kb ≤ KC; the caller vouches
            // for c.
            unsafe { kernel::gemm_packed(cout_g, packed, b, c, ldc, ep, 0..1) };
        }
    }

    /// Writes panel columns `c0..c0 + ncols` (group `g`'s `[(ky, kx, cin_g)]`) of the patches
    /// of pixels `p`, one row per pixel, into `panel` (`p.len()` rows of `nr` floats): each
    /// tap's in-image run copied from the NHWC input, padding taps as zeros.
    #[allow(clippy::too_many_arguments)]
    fn fill_patch_panel(
        &self,
        x: &[f32],
        xs: Shape,
        ys: Shape,
        p: std::ops::Range<usize>,
        g: usize,
        c0: usize,
        ncols: usize,
        panel: &mut [f32],
    ) {
        let ConvShape {
            cin,
            k,
            stride,
            dilation,
            ..
        } = self.spec;
        let (cin_g, _, kk) = per_group(self.spec);
        let nr = self.isa.nr();
        let pad = self.spec.pad() as isize;
        // Runs of a tap's channels inside this panel, with where row 0 of each goes.
        let mut pieces = Vec::new();
        for tap in 0..kk {
            let mut i = 0;
            while i < cin_g {
                let col = tap * cin_g + i;
                let len = (nr - col % nr).min(cin_g - i);
                if (c0..c0 + ncols).contains(&col) {
                    pieces.push((tap, i, len, col - c0));
                }
                i += len;
            }
        }
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
                    panel[row(ox)..row(ox) + len].fill(0.0);
                }
                if lo < hi {
                    let base = ((img * xs.h + iy as usize) * xs.w) as isize;
                    let src = |ox: usize| (((base + (ox * stride) as isize + shift) as usize) * cin) + g * cin_g + i;
                    if len == 16 {
                        for ox in lo..hi {
                            // One vector move rather than a call to memcpy.
                            let v: [f32; 16] = x[src(ox)..src(ox) + 16].try_into().expect("16 floats");
                            panel[row(ox)..row(ox) + 16].copy_from_slice(&v);
                        }
                    } else {
                        for ox in lo..hi {
                            panel[row(ox)..row(ox) + len].copy_from_slice(&x[src(ox)..src(ox) + len]);
                        }
                    }
                }
            }
            q += ox1 - ox0;
        }
    }
}

/// `dyᵀ` packed as [`kernel::pack_a_tiles`] lays A out for one [`KC`] chunk (`[q][mr]` per
/// tile): `m` rows, channels `ch0..` of the NHWC output gradient `dy` (`c` channels), by the
/// `pixels` (at most `KC`) as columns.
fn pack_dy_t(
    dy: &[f32],
    c: usize,
    ch0: usize,
    m: usize,
    pixels: std::ops::Range<usize>,
    mr: usize,
    packed: &mut [f32],
) {
    let depth = pixels.len();
    debug_assert!(depth <= KC);
    for (t, tile) in packed[..m.div_ceil(mr) * mr * depth]
        .chunks_exact_mut(mr * depth)
        .enumerate()
    {
        let rows = (m - t * mr).min(mr);
        for (q, dst) in pixels.clone().zip(tile.chunks_exact_mut(mr)) {
            let s = q * c + ch0 + t * mr;
            dst[..rows].copy_from_slice(&dy[s..s + rows]);
            dst[rows..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::test_values as values;
    use crate::engine::Kernel;

    /// The weight gradient `[(ky, kx, i)][o]`, summed in f64 straight from the definition.
    fn direct(spec: ConvShape, x: &[f32], xs: Shape, dy: &[f32]) -> Vec<f64> {
        let ys = out_shape(spec, xs);
        let (k, cin, cout, p) = (spec.k, spec.cin, spec.cout, spec.pad() as isize);
        let mut dw = vec![0f64; k * k * cin * cout];
        for n in 0..xs.n {
            for (oy, ox) in (0..ys.h).flat_map(|y| (0..ys.w).map(move |x| (y, x))) {
                for (ky, kx) in (0..k).flat_map(|a| (0..k).map(move |b| (a, b))) {
                    let iy = (oy * spec.stride + ky) as isize - p;
                    let ix = (ox * spec.stride + kx) as isize - p;
                    if iy < 0 || ix < 0 || iy as usize >= xs.h || ix as usize >= xs.w {
                        continue;
                    }
                    let xp = &x[((n * xs.h + iy as usize) * xs.w + ix as usize) * cin..][..cin];
                    let g = &dy[((n * ys.h + oy) * ys.w + ox) * cout..][..cout];
                    for (i, &xv) in xp.iter().enumerate() {
                        let row = &mut dw[((ky * k + kx) * cin + i) * cout..][..cout];
                        row.iter_mut().zip(g).for_each(|(d, &gv)| *d += xv as f64 * gv as f64);
                    }
                }
            }
        }
        dw
    }

    /// The in-place runs give the definition's weight gradient however they split the work
    /// (by images or by row tiles, in groups of one, two or all images), on strided, 1×1 and
    /// stem-like convs and ragged sizes; and so do the packed pixel blocks and the whole pass
    /// in torch's layout; on every packed kernel this CPU runs.
    #[test]
    fn weight_gradient_splits_match_the_definition() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let cases = [
            // (cin, cout, k, stride, n, h, w)
            (8, 12, 3, 1, 3, 9, 9),
            (16, 40, 3, 2, 2, 11, 10),
            (3, 16, 7, 2, 2, 20, 18),
            (32, 16, 1, 2, 3, 9, 9),
            (24, 33, 1, 1, 1, 5, 7),
            (64, 64, 3, 1, 5, 6, 6),
        ];
        for isa in Kernel::available().into_iter().filter(|i| i.packed()) {
            for (cin, cout, k, stride, n, h, w) in cases {
                let spec = ConvShape::new(cin, cout, k, stride);
                let conv = TrainConv::new(&values(cout * cin * k * k, 1), spec, isa);
                let xs = Shape { n, h, w, c: cin };
                let ys = out_shape(spec, xs);
                let (x, dy) = (values(xs.len(), 2), values(ys.len(), 3));
                let want = direct(spec, &x, xs, &dy);
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                let check = |got: &[f32], how: &str| {
                    let err = got
                        .iter()
                        .zip(&want)
                        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
                    assert!(
                        err <= 1e-5 * scale,
                        "{isa} {cin}->{cout} k{k} s{stride} n{n} {h}x{w} {how}: {err}"
                    );
                };
                let len = want.len();
                for (by_images, group) in [true, false].into_iter().flat_map(|b| [1, 2, n].map(|g| (b, g))) {
                    let mut sums = vec![vec![f32::NAN; len]; 2];
                    let plan = RunsPlan { by_images, group };
                    let used = conv.weight_grad_runs(&x, xs, &dy, &pool, &mut sums, plan);
                    let got: Vec<f32> = (0..len).map(|j| sums[..used].iter().map(|s| s[j]).sum()).collect();
                    check(&got, &format!("{plan:?}"));
                }
                // Blocks: [o][(tap, i)] → [(tap, i)][o].
                let mut sums = vec![vec![f32::NAN; len]; 2];
                let used = conv.weight_grad_blocks(&x, xs, &dy, &pool, &mut sums);
                let n_row = k * k * cin;
                let got: Vec<f32> = (0..len)
                    .map(|j| sums[..used].iter().map(|s| s[(j % cout) * n_row + j / cout]).sum())
                    .collect();
                check(&got, "blocks");
                // The whole pass, torch's [o][i][tap].
                let torch = conv.weight_grad(&x, xs, &dy, &pool);
                let got: Vec<f32> = (0..len)
                    .map(|j| {
                        let (tap, i, o) = (j / cout / cin, j / cout % cin, j % cout);
                        torch[(o * cin + i) * k * k + tap]
                    })
                    .collect();
                check(&got, "weight_grad");
            }
        }
    }
}
