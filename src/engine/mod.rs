//! The fast CPU inference path: a ResNet prepared once for inference and run on NHWC buffers.
//!
//! Preparation folds every BatchNorm into its conv (weights scaled, a bias added), packs the
//! weights into the kernel's panel layout, and fuses bias, residual add and ReLU into each conv's
//! store. Activations stay channels-last end to end (one NCHW→NHWC copy of the input), and the
//! buffers are planned per input shape and reused across calls. The burn model
//! ([`crate::model::ResNet`]) remains the reference, for training and for GPU backends.
//!
//! Layering: may import `model`, `weights`, `error`; see the README's module order.

mod aligned;
mod conv;
pub mod grad;
mod kernel;
mod types;
mod winograd;

use std::sync::Mutex;

pub use aligned::AlignedVec;

use rayon::prelude::*;

pub use conv::{global_avg_pool, zero_pad_shortcut};
use conv::{max_pool_3x3s2, Conv, Residual};
pub use kernel::{Avx2, Avx512, Isa, Kernel, Neon};
#[cfg(test)]
pub(crate) use types::test_values;
pub use types::{nchw_to_nhwc, nhwc_to_nchw, Shape};

use crate::error::{Error, Result};
use crate::model::{split_rows, ConvShape, Logits, ParamKeys, ResNetConfig, Role, ShortcutPlan, Stem};
use crate::weights::{StateDict, Values};

enum Shortcut {
    Identity,
    ZeroPad { stride: usize },
    Projection(Box<Conv>),
    None,
}

struct Block {
    /// conv1, conv2 (and conv3 for bottlenecks), BN folded.
    convs: Vec<Conv>,
    shortcut: Shortcut,
    /// The stage (`layerK`, from 1) this block belongs to.
    stage: usize,
}

/// Where a forward pass stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Logits,
    Features,
    /// The output of stage `layerK`, K from 1.
    Stage(usize),
}

/// The most activation memory one call may plan: 16 GB of f32.
const MAX_WORKSPACE_FLOATS: usize = 1 << 32;

/// Buffers for one input shape, kept between calls.
struct Workspace {
    input: Shape,
    /// Ping-pong activations, two block-internal ones and the shortcut.
    bufs: [AlignedVec; 5],
    /// Packed rows shared by the tasks of one conv.
    scratch: AlignedVec,
}

impl Workspace {
    /// Zeroed buffers of the sizes [`Engine::plan`] gave for `input`.
    fn new(input: Shape, [act, t, sc]: [usize; 3]) -> Self {
        let z = AlignedVec::zeros;
        Workspace {
            input,
            bufs: [z(act), z(act), z(t), z(t), z(sc)],
            scratch: AlignedVec::default(),
        }
    }
}

/// With `RESNET_PROFILE` set: the time since `t` for one stage, then `t` restarts.
fn step(what: &str, t: &mut std::time::Instant) {
    if conv::profiling() {
        eprintln!("{what}  {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
        *t = std::time::Instant::now();
    }
}

/// A ResNet ready for fast CPU inference.
pub struct Engine {
    isa: Isa,
    config: ResNetConfig,
    stem: Conv,
    blocks: Vec<Block>,
    /// The classifier as a 1×1 conv over the pooled features.
    fc: Conv,
    /// `fc`'s weight `[classes, features]` and bias as loaded: Grad-CAM's analytic gradient
    /// at the last stage is a row of it.
    fc_raw: (Vec<f32>, Vec<f32>),
    pool: rayon::ThreadPool,
    workspace: Mutex<Option<Workspace>>,
}

fn tensor<'a>(sd: &'a StateDict, key: &str, len: usize) -> Result<&'a [f32]> {
    let t = sd
        .get(key)
        .ok_or_else(|| Error::Config(format!("the weights have no `{key}`; is this the right --model?")))?;
    match &t.values {
        Values::F32(v) if v.len() == len => Ok(v),
        Values::F32(v) => Err(Error::Config(format!(
            "`{key}` has {} values, the model needs {len} (shape {:?}); is this the right --model?",
            v.len(),
            t.shape
        ))),
        Values::I64(_) => Err(Error::Config(format!("`{key}` holds integers, not weights"))),
        Values::Skipped => Err(Error::Config(format!(
            "`{key}` was not read: its shape does not fit the model"
        ))),
    }
}

/// The next conv weight with the BatchNorm after it folded in.
fn conv(sd: &StateDict, keys: &mut ParamKeys, spec: ConvShape, kernel: Isa) -> Result<Conv> {
    let (cout, k) = (spec.cout, spec.k);
    let w = tensor(sd, &keys.next(Role::ConvWeight)?, cout * spec.cin / spec.groups * k * k)?;
    let stats = (
        tensor(sd, &keys.next(Role::BnWeight)?, cout)?,
        tensor(sd, &keys.next(Role::BnBias)?, cout)?,
        tensor(sd, &keys.next(Role::RunningMean)?, cout)?,
        tensor(sd, &keys.next(Role::RunningVar)?, cout)?,
    );
    keys.next(Role::BatchCounter)?;
    Ok(Conv::fold(w, spec, Some(stats), None, kernel))
}

impl Engine {
    /// Prepares `config`'s network with the weights in `sd` (torchvision keys), on
    /// `threads` threads (0: `RAYON_NUM_THREADS`, else every core).
    pub fn new(config: &ResNetConfig, sd: &StateDict, threads: usize) -> Result<Self> {
        Self::with_kernel(config, sd, threads, Kernel::Auto)
    }

    /// [`Engine::new`] with a chosen matrix kernel; an error if this CPU cannot run it.
    pub fn with_kernel(config: &ResNetConfig, sd: &StateDict, threads: usize, kernel: Kernel) -> Result<Self> {
        config.validate()?;
        let kernel = kernel.resolve()?;
        let keys = &mut ParamKeys::new(config);
        let mut stem = conv(sd, keys, config.stem_conv(), kernel)?;
        // The stem reads an input padded while it is converted to NHWC.
        stem.padded = true;
        let mut blocks = Vec::new();
        for (si, stage) in config.plan().into_iter().enumerate() {
            for p in stage {
                let convs = p
                    .main_convs(config.block)
                    .into_iter()
                    .map(|c| conv(sd, keys, c, kernel))
                    .collect::<Result<Vec<_>>>()?;
                let shortcut = match p.shortcut {
                    ShortcutPlan::Identity => Shortcut::Identity,
                    ShortcutPlan::None => Shortcut::None,
                    ShortcutPlan::ZeroPad => Shortcut::ZeroPad { stride: p.stride },
                    ShortcutPlan::Projection => Shortcut::Projection(Box::new(conv(sd, keys, p.projection(), kernel)?)),
                };
                blocks.push(Block {
                    convs,
                    shortcut,
                    stage: si + 1,
                });
            }
        }
        let (f, classes) = (config.feature_dim(), config.num_classes);
        let fcw = tensor(sd, &keys.next(Role::FcWeight)?, classes * f)?;
        let fcb = tensor(sd, &keys.next(Role::FcBias)?, classes)?;
        let fc = Conv::fold(fcw, ConvShape::new(f, classes, 1, 1), None, Some(fcb), kernel);
        let fc_raw = (fcw.to_vec(), fcb.to_vec());
        let mut builder = rayon::ThreadPoolBuilder::new();
        if threads > 0 {
            builder = builder.num_threads(threads);
        }
        let pool = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot start {threads} threads: {e}")))?;
        Ok(Engine {
            isa: kernel,
            config: config.clone(),
            stem,
            blocks,
            fc,
            fc_raw,
            pool,
            workspace: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// The matrix kernel this engine runs (`avx512`, `avx2`, `neon` or `portable`).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Logits `[n, classes]` for an NCHW batch `x` of shape `[n, c, h, w]`.
    pub fn forward(&self, x: &[f32], dims: [usize; 4]) -> Result<Vec<f32>> {
        Ok(self.run(x, dims, Output::Logits)?.0)
    }

    /// Pooled features `[n, feature_dim]` (the fc input): image embeddings.
    pub fn forward_features(&self, x: &[f32], dims: [usize; 4]) -> Result<Vec<f32>> {
        Ok(self.run(x, dims, Output::Features)?.0)
    }

    /// `fc`'s weight `[classes, features]` (row-major) and bias.
    pub fn fc(&self) -> (&[f32], &[f32]) {
        (&self.fc_raw.0, &self.fc_raw.1)
    }

    /// The output of stage `layerK` (`stage` = K, from 1), NCHW, with its `[n, c, h, w]`:
    /// the C2–C5 maps a detection backbone takes.
    pub fn forward_stage(&self, x: &[f32], dims: [usize; 4], stage: usize) -> Result<(Vec<f32>, [usize; 4])> {
        let stages = self.config.layers.len();
        if stage == 0 || stage > stages {
            return Err(Error::Usage(format!(
                "this model has layer1 to layer{stages}; there is no layer{stage}"
            )));
        }
        self.run(x, dims, Output::Stage(stage))
    }

    fn run(&self, x: &[f32], dims: [usize; 4], out: Output) -> Result<(Vec<f32>, [usize; 4])> {
        // The whole pass runs on a worker, so each layer's parallel loop starts and ends inside
        // the pool instead of parking and waking the caller's thread (0.93–1.01× in paired runs).
        self.pool.install(|| self.run_body(x, dims, out))
    }

    fn run_body(&self, x: &[f32], dims: [usize; 4], output: Output) -> Result<(Vec<f32>, [usize; 4])> {
        let input = self.check_input(dims)?;
        if input.n == 0 {
            return Ok((Vec::new(), [0; 4]));
        }
        let mut guard = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        // A new shape is sized (and refused if too big) before the input is checked or anything allocated.
        let sizes = match guard.as_ref() {
            Some(ws) if ws.input == input => None,
            _ => Some(self.plan(input)?),
        };
        if x.len() != input.len() {
            let Shape { n, c, h, w } = input;
            return Err(Error::Config(format!(
                "the input has {} values, not {n}×{c}×{h}×{w}",
                x.len()
            )));
        }
        if let Some(sizes) = sizes {
            *guard = None;
            *guard = Some(Workspace::new(input, sizes));
        }
        let ws = guard.as_mut().expect("planned above");
        let [a, b, t1, t2, sc] = &mut ws.bufs;
        let scratch = &mut ws.scratch;
        let t0 = std::time::Instant::now();
        let mut t = t0;
        let padded = self.padded(input);
        self.to_nhwc(x, input, a);
        step("input to NHWC", &mut t);
        let mut s = self.stem.run(a, padded, b, Residual::None, true, &self.pool, scratch);
        t = std::time::Instant::now();
        let (mut cur, mut next) = (b, a);
        if self.config.stem == Stem::ImageNet {
            s = max_pool_3x3s2(cur, s, next, &self.pool);
            step("max pool", &mut t);
            std::mem::swap(&mut cur, &mut next);
        }
        for blk in &self.blocks {
            if matches!(output, Output::Stage(k) if blk.stage > k) {
                break;
            }
            let (shape, swap) = self.block(blk, cur, s, next, [&mut *t1, &mut *t2, &mut *sc], scratch);
            s = shape;
            if swap {
                std::mem::swap(&mut cur, &mut next);
            }
        }
        if let Output::Stage(_) = output {
            return Ok((nhwc_to_nchw(&cur[..s.len()], s), [s.n, s.c, s.h, s.w]));
        }
        t = std::time::Instant::now();
        let mut feats = vec![0f32; input.n * s.c];
        global_avg_pool(cur, s, &mut feats);
        step("average pool", &mut t);
        if output == Output::Features {
            return Ok((feats, [input.n, s.c, 1, 1]));
        }
        let mut out = vec![0f32; input.n * self.config.num_classes];
        let fs = Shape { h: 1, w: 1, ..s };
        self.fc
            .run(&feats, fs, &mut out, Residual::None, false, &self.pool, scratch);
        if conv::profiling() {
            eprintln!("forward  {:.3} ms", t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok((out, [input.n, self.config.num_classes, 1, 1]))
    }

    /// The NCHW input's shape, or why this model cannot take it.
    fn check_input(&self, [n, c, h, w]: [usize; 4]) -> Result<Shape> {
        if c != self.config.in_channels {
            return Err(Error::InputShape {
                got: c,
                want: self.config.in_channels,
            });
        }
        let min = if self.config.stem == Stem::ImageNet { 32 } else { 8 };
        if n > 0 && (h < min || w < min) {
            return Err(Error::Config(format!(
                "the input is {h}×{w}; this model needs at least {min}×{min}"
            )));
        }
        Ok(Shape { n, h, w, c })
    }

    /// NCHW `x` → NHWC inside the stem's zero border, in `a`, a row at a time on the pool.
    fn to_nhwc(&self, x: &[f32], input: Shape, a: &mut [f32]) {
        let Shape { h, w, c, .. } = input;
        let padded = self.padded(input);
        let p = self.stem.spec.pad();
        let plane = h * w;
        self.pool.install(|| {
            a[..padded.len()]
                .par_chunks_mut(padded.w * c)
                .enumerate()
                .for_each(|(row, dst)| {
                    let (i, y) = (row / padded.h, row % padded.h);
                    // Only the border needs zeros; the image overwrites the rest.
                    if y < p || y >= p + h {
                        return dst.fill(0.0);
                    }
                    dst[..p * c].fill(0.0);
                    dst[(p + w) * c..].fill(0.0);
                    let src = i * c * plane + (y - p) * w;
                    for (xx, px) in dst[p * c..(p + w) * c].chunks_exact_mut(c).enumerate() {
                        for (ch, v) in px.iter_mut().enumerate() {
                            *v = x[src + ch * plane + xx];
                        }
                    }
                })
        });
    }

    /// One residual block from `cur` (shape `s`): its convs through `t1`/`t2`, its shortcut,
    /// the add and the ReLU. Returns the output shape and whether the output is in `next`
    /// (otherwise it replaced the input in `cur`).
    fn block(
        &self,
        blk: &Block,
        cur: &mut [f32],
        s: Shape,
        next: &mut [f32],
        [t1, t2, sc]: [&mut [f32]; 3],
        scratch: &mut AlignedVec,
    ) -> (Shape, bool) {
        let pool = &self.pool;
        let last = blk.convs.len() - 1;
        let mut hs = blk.convs[0].run(cur, s, t1, Residual::None, true, pool, scratch);
        let src: &[f32] = if last == 2 {
            hs = blk.convs[1].run(t1, hs, t2, Residual::None, true, pool, scratch);
            t2
        } else {
            t1
        };
        let out = &blk.convs[last];
        // The last conv adds the shortcut where it lies and writes over it when it can (an
        // identity block's output replaces its input), so its stores find their lines in
        // cache (0.97–0.98× at batch 1 and 8 in paired runs). A projection or zero-padded
        // shortcut is made first, then, in the buffer the block writes.
        let in_place = out.adds_in_place(hs);
        let made: &mut [f32] = if in_place { next } else { sc };
        match &blk.shortcut {
            Shortcut::ZeroPad { stride } => {
                zero_pad_shortcut(cur, s, *stride, out.spec.cout, made);
            }
            Shortcut::Projection(p) => {
                p.run(cur, s, made, Residual::None, false, pool, scratch);
            }
            Shortcut::Identity | Shortcut::None => {}
        }
        let os = match (&blk.shortcut, in_place) {
            (Shortcut::None, _) => out.run(src, hs, next, Residual::None, true, pool, scratch),
            (Shortcut::Identity, true) => return (out.run(src, hs, cur, Residual::InOut, true, pool, scratch), false),
            (Shortcut::Identity, false) => out.run(src, hs, next, Residual::From(cur), true, pool, scratch),
            (_, true) => out.run(src, hs, next, Residual::InOut, true, pool, scratch),
            (_, false) => out.run(src, hs, next, Residual::From(sc), true, pool, scratch),
        };
        (os, true)
    }

    /// The NHWC input with the stem's zero border.
    fn padded(&self, input: Shape) -> Shape {
        let p = self.stem.spec.pad();
        Shape {
            h: input.h + 2 * p,
            w: input.w + 2 * p,
            ..input
        }
    }

    /// Sizes of the activation, block-internal and shortcut buffers for `input`, found by
    /// walking the network once; refused when they would not fit.
    fn plan(&self, input: Shape) -> Result<[usize; 3]> {
        let padded = self.padded(input);
        let mut max_act = padded.len();
        let (mut max_t, mut max_sc) = (0, 0);
        let mut s = self.stem.out_shape(padded);
        max_act = max_act.max(s.len());
        if self.config.stem == Stem::ImageNet {
            s = Shape {
                h: (s.h - 1) / 2 + 1,
                w: (s.w - 1) / 2 + 1,
                ..s
            };
            max_act = max_act.max(s.len());
        }
        for blk in &self.blocks {
            let mut hs = s;
            for cv in &blk.convs {
                hs = cv.out_shape(hs);
                max_t = max_t.max(hs.len());
            }
            max_sc = max_sc.max(hs.len());
            max_act = max_act.max(hs.len());
            s = hs;
        }
        let floats = 2 * max_act + 2 * max_t + max_sc;
        if floats > MAX_WORKSPACE_FLOATS {
            return Err(Error::Config(format!(
                "a {}×{}×{} batch of {} needs {} GB of activations; use smaller batches or images",
                input.c,
                input.h,
                input.w,
                input.n,
                (floats * 4) >> 30
            )));
        }
        Ok([max_act, max_t, max_sc])
    }
}

impl Logits for Engine {
    fn logits_nchw(&self, x: Vec<f32>, dims: [usize; 4]) -> Result<Vec<Vec<f32>>> {
        Ok(split_rows(self.forward(&x, dims)?, self.config().num_classes))
    }
}
