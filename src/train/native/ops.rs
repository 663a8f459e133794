//! The non-convolution ops of a training step on NHWC activations, forward and backward:
//! BatchNorm in train mode fused with the residual add and ReLU, the stem's max pool, option
//! A's shortcut, global average pooling, `fc` and the cross-entropy loss. PyTorch's formulas
//! throughout; `tests/grads.rs` holds each against its numbers.

use rayon::prelude::*;

use crate::engine::Shape;

/// BatchNorm's epsilon and running-statistics momentum (torch's defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// Rows of `c` floats per parallel chunk of a pass.
const CHUNK_ROWS: usize = 256;

/// Adds per-chunk pairs of per-channel sums (f32 within a chunk of [`CHUNK_ROWS`] rows) in f64,
/// in chunk order, so a step's result does not depend on how the threads split the work
/// (resume relies on identical steps).
fn add_sums(chunks: impl IndexedParallelIterator<Item = (Vec<f32>, Vec<f32>)>, c: usize) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<_> = chunks.collect();
    let mut sums = (vec![0f64; c], vec![0f64; c]);
    for (a, b) in parts {
        sums.0.iter_mut().zip(&a).for_each(|(s, &v)| *s += v as f64);
        sums.1.iter_mut().zip(&b).for_each(|(s, &v)| *s += v as f64);
    }
    sums
}

/// What a train-mode BatchNorm keeps for its backward pass.
pub struct BnSaved {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// `y = act(γ·(z − mean)/√(var + ε) + β [+ residual])` over batch statistics, which also
/// update the running ones (unbiased variance, momentum 0.1).
#[allow(clippy::too_many_arguments)]
pub fn bn_forward(
    z: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    running: (&mut [f32], &mut [f32]),
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    pool: &rayon::ThreadPool,
) -> BnSaved {
    let rows = z.len() / c;
    let chunk = CHUNK_ROWS * c;
    let (sum, sq) = pool.install(|| {
        let chunks = z.par_chunks(chunk).map(|z| {
            let (mut s, mut q) = (vec![0f32; c], vec![0f32; c]);
            for row in z.chunks_exact(c) {
                for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                    *s += v;
                    *q += v * v;
                }
            }
            (s, q)
        });
        add_sums(chunks, c)
    });
    let m = rows as f64;
    let (mut mean, mut inv_std) = (vec![0f32; c], vec![0f32; c]);
    let (rm, rv) = running;
    for ch in 0..c {
        let mu = sum[ch] / m;
        let var = (sq[ch] / m - mu * mu).max(0.0);
        mean[ch] = mu as f32;
        inv_std[ch] = (1.0 / (var + BN_EPS).sqrt()) as f32;
        let unbiased = if rows > 1 { var * m / (m - 1.0) } else { var };
        rm[ch] = ((1.0 - BN_MOMENTUM) * rm[ch] as f64 + BN_MOMENTUM * mu) as f32;
        rv[ch] = ((1.0 - BN_MOMENTUM) * rv[ch] as f64 + BN_MOMENTUM * unbiased) as f32;
    }
    // y = z·scale + shift.
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * inv_std[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let (scale, shift) = (&scale[..], &shift[..]);
    pool.install(|| {
        let ys = y[..z.len()].par_chunks_mut(chunk).zip(z.par_chunks(chunk));
        match residual {
            Some(r) => ys.zip(r.par_chunks(chunk)).for_each(|((y, z), r)| {
                for ((y, z), r) in y.chunks_exact_mut(c).zip(z.chunks_exact(c)).zip(r.chunks_exact(c)) {
                    for ((((y, &z), &r), &a), &b) in y.iter_mut().zip(z).zip(r).zip(scale).zip(shift) {
                        *y = (z * a + b + r).max(floor);
                    }
                }
            }),
            None => ys.for_each(|(y, z)| {
                for (y, z) in y.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
                    for (((y, &z), &a), &b) in y.iter_mut().zip(z).zip(scale).zip(shift) {
                        *y = (z * a + b).max(floor);
                    }
                }
            }),
        }
    });
    BnSaved { mean, inv_std }
}

/// BatchNorm's backward pass, with the ReLU after it: `g = dy · [y > 0]` (written over `dy`,
/// the gradient a residual branch receives), then `dz` over `z` (which it no longer needs):
/// `dz = γ·inv_std·(g − mean(g) − ẑ·mean(g·ẑ))`. Returns `(dγ, dβ)`.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    z: &mut [f32],
    c: usize,
    saved: &BnSaved,
    gamma: &[f32],
    dy: &mut [f32],
    y: Option<&[f32]>,
    pool: &rayon::ThreadPool,
) -> (Vec<f32>, Vec<f32>) {
    let rows = z.len() / c;
    let chunk = CHUNK_ROWS * c;
    let (mean, inv) = (&saved.mean[..], &saved.inv_std[..]);
    // Pass 1: the ReLU mask, and Σ g and Σ g·(z − mean) per channel.
    let (sg, sgz) = pool.install(|| {
        let chunks = dy
            .par_chunks_mut(chunk)
            .zip(z.par_chunks(chunk))
            .enumerate()
            .map(|(i, (g, z))| {
                let (mut s0, mut s1) = (vec![0f32; c], vec![0f32; c]);
                match y {
                    Some(y) => {
                        let y = &y[i * chunk..i * chunk + g.len()];
                        for ((g, z), y) in g.chunks_exact_mut(c).zip(z.chunks_exact(c)).zip(y.chunks_exact(c)) {
                            for (((((s0, s1), g), &z), &y), &mu) in
                                s0.iter_mut().zip(s1.iter_mut()).zip(g).zip(z).zip(y).zip(mean)
                            {
                                let v = if y > 0.0 { *g } else { 0.0 };
                                *g = v;
                                *s0 += v;
                                *s1 += v * (z - mu);
                            }
                        }
                    }
                    None => {
                        for (g, z) in g.chunks_exact(c).zip(z.chunks_exact(c)) {
                            for ((((s0, s1), &g), &z), &mu) in s0.iter_mut().zip(s1.iter_mut()).zip(g).zip(z).zip(mean)
                            {
                                *s0 += g;
                                *s1 += g * (z - mu);
                            }
                        }
                    }
                }
                (s0, s1)
            });
        add_sums(chunks, c)
    });
    let m = rows as f64;
    let dbeta: Vec<f32> = sg.iter().map(|&s| s as f32).collect();
    // Σ g·ẑ = inv_std · Σ g·(z − mean).
    let dgamma: Vec<f32> = (0..c).map(|ch| (sgz[ch] * inv[ch] as f64) as f32).collect();
    // Pass 2: dz = a·g − k·z + d per channel.
    let a: Vec<f32> = (0..c).map(|ch| gamma[ch] * inv[ch]).collect();
    let k: Vec<f32> = (0..c)
        .map(|ch| (a[ch] as f64 * inv[ch] as f64 * sgz[ch] * inv[ch] as f64 / m) as f32)
        .collect();
    let d: Vec<f32> = (0..c)
        .map(|ch| (-(a[ch] as f64) * sg[ch] / m + k[ch] as f64 * mean[ch] as f64) as f32)
        .collect();
    let (a, k, d) = (&a[..], &k[..], &d[..]);
    let dyr: &[f32] = dy;
    pool.install(|| {
        z.par_chunks_mut(chunk).zip(dyr.par_chunks(chunk)).for_each(|(z, g)| {
            for (z, g) in z.chunks_exact_mut(c).zip(g.chunks_exact(c)) {
                for ((((z, &g), &a), &k), &d) in z.iter_mut().zip(g).zip(a).zip(k).zip(d) {
                    *z = a * g - k * *z + d;
                }
            }
        })
    });
    (dgamma, dbeta)
}

/// The stem's 3×3 stride-2 max pool (padding 1) on NHWC `x` into `out`, with the tap each
/// output took into `arg` (PyTorch's: the first maximum in row-major window order). Returns
/// the output's shape.
pub fn max_pool_forward(x: &[f32], xs: Shape, out: &mut [f32], arg: &mut Vec<u8>, pool: &rayon::ThreadPool) -> Shape {
    let os = xs.max_pooled();
    let c = xs.c;
    arg.resize(os.len(), 0);
    pool.install(|| {
        out[..os.len()]
            .par_chunks_mut(os.w * c)
            .zip(arg.par_chunks_mut(os.w * c))
            .enumerate()
            .for_each(|(row, (o, a))| {
                let (n, oy) = (row / os.h, row % os.h);
                let ys = (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(xs.h);
                for ox in 0..os.w {
                    let xr = (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(xs.w);
                    // The window's in-image pixels in row-major order, with their taps.
                    let mut window = [(&x[..0], 0u8); 9];
                    let mut taps = 0;
                    for iy in ys.clone() {
                        for ix in xr.clone() {
                            let px = &x[((n * xs.h + iy) * xs.w + ix) * c..][..c];
                            window[taps] = (px, ((iy + 1 - oy * 2) * 3 + (ix + 1 - ox * 2)) as u8);
                            taps += 1;
                        }
                    }
                    let o = &mut o[ox * c..][..c];
                    let a = &mut a[ox * c..][..c];
                    max_of_window(&window[..taps], o, a);
                }
            })
    });
    os
}

/// The maximum over a pool window's pixels, per channel, and the tap it came from: torch's
/// rule, strictly greater (the first maximum keeps the gradient) or NaN. Sixteen channels at
/// a time stay in registers over the whole window; branch-free and in f32 so that it
/// vectorizes.
fn max_of_window(window: &[(&[f32], u8)], o: &mut [f32], a: &mut [u8]) {
    const L: usize = 16;
    let Some(&(first, t0)) = window.first() else {
        return;
    };
    let c = o.len();
    let whole = c / L * L;
    for ch in (0..whole).step_by(L) {
        let mut best: [f32; L] = first[ch..ch + L].try_into().expect("L channels");
        let mut tap = [t0 as f32; L];
        for &(px, t) in &window[1..] {
            let px: &[f32; L] = px[ch..ch + L].try_into().expect("L channels");
            for j in 0..L {
                let take = (px[j] > best[j]) | px[j].is_nan();
                best[j] = if take { px[j] } else { best[j] };
                tap[j] = if take { t as f32 } else { tap[j] };
            }
        }
        o[ch..ch + L].copy_from_slice(&best);
        a[ch..ch + L].iter_mut().zip(tap).for_each(|(a, t)| *a = t as u8);
    }
    for ch in whole..c {
        let (mut best, mut tap) = (first[ch], t0);
        for &(px, t) in &window[1..] {
            if px[ch] > best || px[ch].is_nan() {
                (best, tap) = (px[ch], t);
            }
        }
        (o[ch], a[ch]) = (best, tap);
    }
}

/// The max pool's backward pass: each output's gradient onto the input pixel it took, in
/// `dx` (input `xs`'s shape, overwritten).
pub fn max_pool_backward(dy: &[f32], arg: &[u8], os: Shape, xs: Shape, dx: &mut [f32], pool: &rayon::ThreadPool) {
    let c = xs.c;
    pool.install(|| {
        dx[..xs.len()]
            .par_chunks_mut(xs.h * xs.w * c)
            .enumerate()
            .for_each(|(n, dxn)| {
                dxn.fill(0.0);
                for oy in 0..os.h {
                    for ox in 0..os.w {
                        let at = ((n * os.h + oy) * os.w + ox) * c;
                        for ch in 0..c {
                            let tap = arg[at + ch] as usize;
                            let iy = oy * 2 + tap / 3 - 1;
                            let ix = ox * 2 + tap % 3 - 1;
                            dxn[(iy * xs.w + ix) * c + ch] += dy[at + ch];
                        }
                    }
                }
            })
    });
}

/// Option A's backward pass: adds `dy`'s channels `before..before + dx's` at the subsampled
/// pixels to `dx`.
pub fn zero_pad_backward(dy: &[f32], ys: Shape, stride: usize, dx: &mut [f32], xs: Shape) {
    let before = (ys.c - xs.c) / 2;
    for n in 0..ys.n {
        for oy in 0..ys.h {
            for ox in 0..ys.w {
                let s = &dy[((n * ys.h + oy) * ys.w + ox) * ys.c + before..][..xs.c];
                let d = &mut dx[((n * xs.h + oy * stride) * xs.w + ox * stride) * xs.c..][..xs.c];
                d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
            }
        }
    }
}

/// The head: mean-pooled features → logits → mean cross-entropy with label smoothing
/// (torch's: `(1 − ε)·onehot + ε/K`), and its gradients.
pub struct Head {
    pub loss: f32,
    pub logits: Vec<f32>,
    /// `dL/dx` of the last stage's output (`xs`'s shape).
    pub dx: Vec<f32>,
    pub dweight: Vec<f32>,
    pub dbias: Vec<f32>,
}

/// Runs the head on the last stage's NHWC output `x`; `weight` is torch's `[classes, features]`.
pub fn head(x: &[f32], xs: Shape, weight: &[f32], bias: &[f32], labels: &[usize], smoothing: f32) -> Head {
    let (n, f, hw) = (xs.n, xs.c, xs.h * xs.w);
    let k = bias.len();
    let mut feats = vec![0f32; n * f];
    crate::engine::global_avg_pool(x, xs, &mut feats);
    // logits = feats · Wᵀ + b.
    let mut logits: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
    matmul((n, k, f), &mut logits, (k, 1), &feats, (f, 1), weight, (1, f), true);
    // dlogits = (softmax − target) / n.
    let mut dlogits = vec![0f32; n * k];
    let mut loss = 0f64;
    for i in 0..n {
        let l = &logits[i * k..(i + 1) * k];
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let eps = smoothing as f64;
        let mean_nll: f64 = l.iter().map(|&v| lse - v as f64).sum::<f64>() / k as f64;
        loss += (1.0 - eps) * (lse - l[labels[i]] as f64) + eps * mean_nll;
        for j in 0..k {
            let target = eps / k as f64 + if j == labels[i] { 1.0 - eps } else { 0.0 };
            dlogits[i * k + j] = (((l[j] as f64 - lse).exp() - target) / n as f64) as f32;
        }
    }
    let dbias: Vec<f32> = (0..k).map(|j| (0..n).map(|i| dlogits[i * k + j]).sum()).collect();
    // dW = dlogitsᵀ · feats, dfeats = dlogits · W.
    let mut dweight = vec![0f32; k * f];
    matmul((k, f, n), &mut dweight, (f, 1), &dlogits, (1, k), &feats, (f, 1), false);
    let mut dfeats = vec![0f32; n * f];
    matmul((n, f, k), &mut dfeats, (f, 1), &dlogits, (k, 1), weight, (f, 1), false);
    let mut dx = vec![0f32; xs.len()];
    let inv = 1.0 / hw as f32;
    for i in 0..n {
        for p in 0..hw {
            dx[(i * hw + p) * f..(i * hw + p + 1) * f]
                .iter_mut()
                .zip(&dfeats[i * f..(i + 1) * f])
                .for_each(|(d, &g)| *d = g * inv);
        }
    }
    Head {
        loss: (loss / n as f64) as f32,
        logits,
        dx,
        dweight,
        dbias,
    }
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, each given with its (row, column) strides,
/// through the `gemm` crate (the head's matrices are too small and odd-shaped for the
/// engine's packed kernels to pay off). `add` keeps what `dst` holds.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (drs, dcs): (usize, usize),
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
    add: bool,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
    assert!(
        m * n == 0
            || (last(m, n, drs, dcs) < dst.len()
                && last(m, k, lrs, lcs) < lhs.len().max(usize::from(k == 0))
                && last(k, n, rrs, rcs) < rhs.len().max(usize::from(k == 0)))
    );
    // SAFETY: the assertion keeps every element the strides reach inside its slice.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dcs as isize,
            drs as isize,
            add,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        )
    }
}
