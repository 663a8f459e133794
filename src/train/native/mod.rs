//! The training step on the CPU engine's kernels: the same network as [`crate::model::ResNet`]
//! (the block plan, torchvision's keys), forward in train mode and backward by hand, on NHWC
//! activations.
//!
//! Why a dedicated path rather than custom ops inside burn's autodiff: burn-flex keeps NCHW,
//! so every custom conv would pay two layout transposes per pass, and BatchNorm, ReLU and the
//! residual adds would stay separate element-wise passes; here BatchNorm's statistics and
//! normalisation, the residual add and the ReLU are two passes forward and two backward, and
//! activations never change layout (docs/results/training-speed.md has the measurements).
//! burn still trains on every other backend (GPUs, and CPUs without a packed kernel).

pub mod ops;

use rayon::prelude::*;

use crate::engine::grad::{out_shape, TrainConv};
use crate::engine::{AlignedVec, Isa, Kernel, Shape};
use crate::error::{Error, Result};
use crate::model::{ConvShape, ParamKeys, ResNetConfig, Role, ShortcutPlan, Stem};
use crate::train::optim::Optimizer;
use crate::weights::{StateDict, TorchTensor, Values};
use ops::BnSaved;

/// One state-dict entry with its gradient (trainable entries only).
pub struct Param {
    pub key: String,
    pub shape: Vec<usize>,
    pub role: Role,
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Param {
    /// Weights the optimizer updates (not BatchNorm's running statistics).
    pub fn trainable(&self) -> bool {
        !matches!(self.role, Role::RunningMean | Role::RunningVar | Role::BatchCounter)
    }
}

/// A conv and the BatchNorm after it, as indices into [`NativeNet::params`].
#[derive(Clone, Copy)]
struct ConvBn {
    spec: ConvShape,
    weight: usize,
    gamma: usize,
    beta: usize,
    mean: usize,
    var: usize,
}

struct Block {
    main: Vec<ConvBn>,
    shortcut: ShortcutPlan,
    projection: Option<ConvBn>,
    stride: usize,
    /// Its first conv's index among [`NativeNet::pack`]'s.
    first_conv: usize,
}

/// What a conv + BN keeps from the forward pass for the backward one.
struct Taped {
    /// The conv's input and the BN's output: indices into the activations.
    input: usize,
    output: usize,
    /// Whether a ReLU followed the BN (its mask comes from the output).
    relu: bool,
    xs: Shape,
    /// The conv's output (BN's input); the backward pass turns it into its gradient.
    z: Vec<f32>,
    bn: BnSaved,
}

/// The loss of a step and its logits (`[batch, classes]`, row-major).
pub struct StepOutput {
    pub loss: f32,
    pub logits: Vec<f32>,
}

/// A ResNet that trains on the CPU engine's kernels.
pub struct NativeNet {
    pub config: ResNetConfig,
    isa: Isa,
    pool: rayon::ThreadPool,
    /// Every state-dict entry but `num_batches_tracked`, in torchvision's order.
    params: Vec<Param>,
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: (usize, usize),
    scratch: AlignedVec,
    /// Label smoothing of the cross-entropy (torch's `label_smoothing`).
    pub smoothing: f32,
    /// The last step's forward and backward times, in milliseconds.
    pub phases_ms: (f64, f64),
    /// With `RESNET_PROFILE` set: milliseconds per kind of pass, printed after each step.
    profile: Option<[f64; PASSES.len()]>,
    /// Activation buffers of earlier steps, reused: every step asks for the same sizes, and
    /// fresh ones would be zeroed and page-faulted in again (a tenth of a step).
    spare: Vec<Vec<f32>>,
    /// The sizes [`NativeNet::buffer`] was asked for in this step.
    asked: Vec<usize>,
    /// The last step's packed convs, whose buffers the next step refills.
    packed: Vec<TrainConv>,
    /// Whether `packed` holds the current weights ([`NativeNet::update`] repacked them).
    fresh: bool,
    /// The max pool's chosen taps, kept for the next step.
    pool_arg: Vec<u8>,
}

/// A block's shortcut, as the last BN of its main path adds it.
enum ShortcutValue {
    /// An activation, by index (identity).
    Act(usize),
    Owned(Vec<f32>),
    None,
}

/// The kinds of pass [`NativeNet::profile`] times.
const PASSES: [&str; 7] = ["pack", "conv", "bn", "bn_back", "dw", "dx", "rest"];

impl NativeNet {
    /// A buffer of `len` floats whose values are unspecified: its user overwrites them all.
    fn buffer(&mut self, len: usize) -> Vec<f32> {
        self.asked.push(len);
        match self.spare.iter().position(|b| b.len() == len) {
            Some(i) => self.spare.swap_remove(i),
            None => vec![0f32; len],
        }
    }

    fn recycle(&mut self, b: Vec<f32>) {
        if !b.is_empty() {
            self.spare.push(b);
        }
    }

    /// Keeps as many spare buffers of each size as this step asked for, so that buffers the
    /// ops allocated themselves do not pile up.
    fn keep_spares(&mut self) {
        let mut asked = std::mem::take(&mut self.asked);
        asked.sort_unstable();
        self.spare.sort_unstable_by_key(|b| b.len());
        let mut keep = Vec::with_capacity(asked.len());
        let mut spare = std::mem::take(&mut self.spare).into_iter().peekable();
        for len in asked {
            while spare.peek().is_some_and(|b| b.len() < len) {
                spare.next();
            }
            if let Some(b) = spare.next_if(|b| b.len() == len) {
                keep.push(b);
            }
        }
        self.spare = keep;
    }

    /// Adds the time since `*t` to pass `i`, when profiling.
    fn lap(&mut self, i: usize, t: &mut std::time::Instant) {
        if let Some(p) = &mut self.profile {
            p[i] += t.elapsed().as_secs_f64() * 1e3;
            *t = std::time::Instant::now();
        }
    }
}

impl NativeNet {
    /// The kernel a native net would run here, if any: `None` where only the portable kernel
    /// exists (burn trains there).
    pub fn kernel() -> Option<Isa> {
        Kernel::Auto.resolve().ok().filter(|i| i.packed())
    }

    /// Builds the network from a state dict with every key of `config` (torchvision's names),
    /// on `threads` threads (0: every core).
    pub fn new(config: &ResNetConfig, sd: &StateDict, threads: usize) -> Result<Self> {
        let isa = Self::kernel().ok_or_else(|| {
            Error::Config("this CPU has no packed kernel (AVX2, AVX-512 or NEON); train through burn".into())
        })?;
        config.validate()?;
        let mut params = Vec::new();
        for spec in config.param_specs() {
            if spec.role == Role::BatchCounter {
                continue;
            }
            let len: usize = spec.shape.iter().product();
            let value = match sd.get(&spec.key).map(|t| &t.values) {
                Some(Values::F32(v)) if v.len() == len => v.clone(),
                _ => {
                    return Err(Error::Config(format!(
                        "`{}` is missing or has the wrong size for {:?}",
                        spec.key, spec.shape
                    )))
                }
            };
            params.push(Param {
                grad: Vec::new(),
                key: spec.key,
                shape: spec.shape,
                role: spec.role,
                value,
            });
        }
        let index = |key: String| params.iter().position(|p| p.key == key);
        let mut keys = ParamKeys::new(config);
        let mut conv_bn = |spec: ConvShape| -> Result<ConvBn> {
            let mut at = |role| -> Result<usize> {
                let k = keys.next(role)?;
                index(k.clone()).ok_or_else(|| Error::Config(format!("no parameter {k}")))
            };
            let cb = ConvBn {
                spec,
                weight: at(Role::ConvWeight)?,
                gamma: at(Role::BnWeight)?,
                beta: at(Role::BnBias)?,
                mean: at(Role::RunningMean)?,
                var: at(Role::RunningVar)?,
            };
            keys.next(Role::BatchCounter)?;
            Ok(cb)
        };
        let stem = conv_bn(config.stem_conv())?;
        let mut blocks = Vec::new();
        let mut first_conv = 1;
        for stage in config.plan() {
            for p in stage {
                let main = p
                    .main_convs(config.block)
                    .into_iter()
                    .map(&mut conv_bn)
                    .collect::<Result<Vec<_>>>()?;
                let projection = match p.shortcut {
                    ShortcutPlan::Projection => Some(conv_bn(p.projection())?),
                    _ => None,
                };
                let convs = main.len() + usize::from(projection.is_some());
                blocks.push(Block {
                    main,
                    shortcut: p.shortcut,
                    projection,
                    stride: p.stride,
                    first_conv,
                });
                first_conv += convs;
            }
        }
        let fc = (
            index(keys.next(Role::FcWeight)?).unwrap_or(0),
            index(keys.next(Role::FcBias)?).unwrap_or(0),
        );
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Config(format!("cannot start {threads} threads: {e}")))?;
        Ok(NativeNet {
            config: config.clone(),
            isa,
            pool,
            params,
            stem,
            blocks,
            fc,
            scratch: AlignedVec::default(),
            smoothing: 0.0,
            phases_ms: (0.0, 0.0),
            profile: std::env::var_os("RESNET_PROFILE").map(|_| [0.0; PASSES.len()]),
            spare: Vec::new(),
            asked: Vec::new(),
            packed: Vec::new(),
            fresh: false,
            pool_arg: Vec::new(),
        })
    }

    /// Every state-dict entry but `num_batches_tracked`, in torchvision's order, with the
    /// last step's gradients.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// [`NativeNet::params`] to change: the next step repacks every conv.
    pub fn params_mut(&mut self) -> &mut [Param] {
        self.fresh = false;
        &mut self.params
    }

    /// One optimizer step on the last [`NativeNet::step`]'s gradients. Each conv weight is
    /// updated a panel of output channels at a time and packed for the next step right
    /// after, while those rows are still in cache (packing on its own read every weight
    /// again: a twentieth of a resnet18 step); the convs run in parallel, largest first.
    pub fn update(&mut self, opt: &mut Optimizer, lr: f64) {
        let list = self.conv_list();
        // Before the first step nothing is packed to keep up to date.
        let packed = self.packed.len() == list.len();
        let is_conv: Vec<Option<usize>> = (0..self.params.len())
            .map(|i| list.iter().position(|cb| cb.weight == i).filter(|_| packed))
            .collect();
        opt.begin_step();
        let mut jobs = Vec::new();
        for (p, conv) in self.params.iter_mut().zip(&is_conv) {
            if !p.trainable() || p.grad.is_empty() {
                continue;
            }
            // No weight decay on BatchNorm weights and biases and the fc bias (exactly the
            // 1-D parameters) when the config spares them.
            let decay = !(opt.config.no_wd_on_bn_bias && p.shape.len() == 1);
            match conv {
                None => opt.update(&p.key, &mut p.value, &p.grad, decay, lr),
                Some(c) => {
                    let rule = opt.rule(&p.key, p.value.len(), decay, lr);
                    jobs.push((p, *c, rule))
                }
            }
        }
        let keys: Vec<&str> = jobs.iter().map(|(p, _, _)| p.key.as_str()).collect();
        let states = opt.states_mut(&keys);
        let mut convs: Vec<Option<&mut TrainConv>> = self.packed.iter_mut().map(Some).collect();
        let mut jobs: Vec<_> = jobs
            .into_iter()
            .zip(states)
            .map(|((p, c, rule), state)| (p, convs[c].take().expect("one weight per conv"), rule, state))
            .collect();
        jobs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.value.len()));
        let nr = self.isa.nr();
        self.pool.install(|| {
            jobs.into_par_iter().with_max_len(1).for_each(|(p, conv, rule, state)| {
                let cout = conv.spec.cout;
                // Panels of one group's output channels: a grouped conv repacks whole.
                let block = if conv.spec.groups == 1 { nr } else { cout };
                let row = p.value.len() / cout;
                for o0 in (0..cout).step_by(block) {
                    let os = o0..(o0 + block).min(cout);
                    let r = os.start * row..os.end * row;
                    let mut st: Vec<&mut [f32]> = state.iter_mut().map(|s| &mut s[r.clone()]).collect();
                    rule.apply(&mut p.value[r.clone()], &p.grad[r], &mut st);
                    match conv.spec.groups {
                        1 => conv.repack_outputs(&p.value, os),
                        _ => conv.repack(&p.value),
                    }
                }
            })
        });
        self.fresh = packed;
    }

    /// The kernel this net runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The weights as a state dict (torchvision's keys, `num_batches_tracked` left out).
    pub fn state_dict(&self) -> StateDict {
        self.params
            .iter()
            .map(|p| {
                (
                    p.key.clone(),
                    TorchTensor {
                        shape: p.shape.clone(),
                        values: Values::F32(p.value.clone()),
                    },
                )
            })
            .collect()
    }

    /// Forward in train mode and backward: fills every trainable [`Param::grad`] and updates
    /// BatchNorm's running statistics, like `loss.backward()` after a train-mode forward in
    /// torch. `x` is NCHW (`[n, in_channels, h, w]`), `labels` has `n` class indices.
    pub fn step(&mut self, x: &[f32], n: usize, h: usize, w: usize, labels: &[usize]) -> Result<StepOutput> {
        let c = self.config.in_channels;
        if x.len() != n * c * h * w || labels.len() != n || n == 0 {
            return Err(Error::Config(format!(
                "a batch of {n} × {c} × {h} × {w} needs {} values and {n} labels; got {} and {}",
                n * c * h * w,
                x.len(),
                labels.len()
            )));
        }
        let classes = self.config.num_classes;
        if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Config(format!(
                "label {l} is out of range for {classes} classes"
            )));
        }
        if h < 2 || w < 2 {
            return Err(Error::Config(format!("{h}×{w} inputs are too small to train on")));
        }
        let t0 = std::time::Instant::now();
        let mut clock = t0;
        let convs = match self.fresh {
            true => std::mem::take(&mut self.packed),
            false => self.pack(),
        };
        self.fresh = false;
        self.lap(0, &mut clock);
        let xs = Shape { n, h, w, c };
        let mut input = self.buffer(x.len());
        crate::engine::nchw_to_nhwc(x, xs, &mut input);
        let mut acts = vec![(input, xs)];
        let mut tape = Vec::new();
        // Forward: the stem, its pool, the blocks, the head.
        let none = ShortcutValue::None;
        let mut cur = self.conv_bn_forward(&convs[0], self.stem, 0, &mut acts, &none, true, &mut tape);
        let mut pooled = None;
        if self.config.stem == Stem::ImageNet {
            let mut out = self.buffer(acts[cur].1.max_pooled().len());
            let mut arg = std::mem::take(&mut self.pool_arg);
            let os = ops::max_pool_forward(&acts[cur].0, acts[cur].1, &mut out, &mut arg, &self.pool);
            pooled = Some((arg, cur, os));
            acts.push((out, os));
            cur = acts.len() - 1;
        }
        let mut inputs = Vec::with_capacity(self.blocks.len());
        for b in 0..self.blocks.len() {
            inputs.push(cur);
            cur = self.block_forward(b, cur, &convs, &mut acts, &mut tape)?;
        }
        let (fw, fb) = self.fc;
        let head = ops::head(
            &acts[cur].0,
            acts[cur].1,
            &self.params[fw].value,
            &self.params[fb].value,
            labels,
            self.smoothing,
        );
        self.params[fw].grad = head.dweight;
        self.params[fb].grad = head.dbias;
        let t1 = std::time::Instant::now();
        // Backward.
        let mut d = head.dx;
        for b in (0..self.blocks.len()).rev() {
            d = self.block_backward(b, d, &convs, &mut tape, &acts, inputs[b])?;
        }
        if let Some((arg, stem_out, os)) = pooled {
            let mut dx = self.buffer(acts[stem_out].1.len());
            ops::max_pool_backward(&d, &arg, os, acts[stem_out].1, &mut dx, &self.pool);
            self.recycle(std::mem::replace(&mut d, dx));
            self.pool_arg = arg;
        }
        let t = tape.pop().ok_or_else(missing_record)?;
        let (_, d) = self.conv_bn_backward(&convs[0], self.stem, t, d, &acts, false);
        self.recycle(d);
        for (b, _) in acts {
            self.recycle(b);
        }
        self.keep_spares();
        self.packed = convs;
        let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
        self.phases_ms = (ms(t0, t1), ms(t1, std::time::Instant::now()));
        if let Some(p) = &mut self.profile {
            let total = self.phases_ms.0 + self.phases_ms.1;
            p[6] = total - p[..6].iter().sum::<f64>();
            let parts: Vec<String> = PASSES
                .iter()
                .zip(p.iter())
                .map(|(n, v)| format!("{n} {v:.1}"))
                .collect();
            eprintln!("step {total:.1} ms: {}", parts.join(", "));
            *p = [0.0; PASSES.len()];
        }
        Ok(StepOutput {
            loss: head.loss,
            logits: head.logits,
        })
    }

    /// Every conv of the network in the order the step uses them: stem, then per block its
    /// main convs and projection.
    fn conv_list(&self) -> Vec<ConvBn> {
        let mut list = vec![self.stem];
        for b in &self.blocks {
            list.extend(b.main.iter().copied());
            list.extend(b.projection);
        }
        list
    }

    /// Every conv of the network, packed from the current weights for the three passes, in
    /// the order the step uses them: stem, then per block its main convs and projection.
    /// The last step's convs are repacked in place (see [`TrainConv::repack`]).
    fn pack(&mut self) -> Vec<TrainConv> {
        let list = self.conv_list();
        let (params, isa) = (&self.params, self.isa);
        let mut convs = std::mem::take(&mut self.packed);
        self.pool.install(|| {
            if convs.len() == list.len() {
                // Largest first, one conv per task, so that the threads finish together
                // (layer4's three 2.4M-weight convs are most of the work).
                let mut jobs: Vec<_> = convs.iter_mut().zip(&list).collect();
                jobs.sort_by_key(|(_, cb)| std::cmp::Reverse(params[cb.weight].value.len()));
                jobs.into_par_iter()
                    .with_max_len(1)
                    .for_each(|(c, cb)| c.repack(&params[cb.weight].value));
                convs
            } else {
                list.par_iter()
                    .map(|cb| TrainConv::new(&params[cb.weight].value, cb.spec, isa))
                    .collect()
            }
        })
    }

    /// Block `b` on activation `input`: its shortcut, then its main convs with the residual
    /// added before the last ReLU. Returns its output's index.
    fn block_forward(
        &mut self,
        b: usize,
        input: usize,
        convs: &[TrainConv],
        acts: &mut Vec<(Vec<f32>, Shape)>,
        tape: &mut Vec<Taped>,
    ) -> Result<usize> {
        let (main, shortcut, proj, stride, c0) = self.block(b);
        let mut shortcut = match shortcut {
            ShortcutPlan::Identity => ShortcutValue::Act(input),
            ShortcutPlan::ZeroPad => {
                let xs = acts[input].1;
                let ys = xs.subsampled(stride, block_out(&main, xs));
                let mut out = self.buffer(ys.len());
                crate::engine::zero_pad_shortcut(&acts[input].0, xs, stride, ys.c, &mut out);
                ShortcutValue::Owned(out)
            }
            ShortcutPlan::Projection => {
                let p = proj.ok_or_else(missing_record)?;
                let none = ShortcutValue::None;
                let y = self.conv_bn_forward(&convs[c0 + main.len()], p, input, acts, &none, false, tape);
                // Its output lives on in the block's sum; the backward pass needs none of it.
                ShortcutValue::Owned(std::mem::take(&mut acts[y].0))
            }
            ShortcutPlan::None => ShortcutValue::None,
        };
        let mut cur = input;
        for (i, &cb) in main.iter().enumerate() {
            let none = ShortcutValue::None;
            let residual = if i + 1 == main.len() { &shortcut } else { &none };
            cur = self.conv_bn_forward(&convs[c0 + i], cb, cur, acts, residual, true, tape);
        }
        if let ShortcutValue::Owned(b) = std::mem::replace(&mut shortcut, ShortcutValue::None) {
            self.recycle(b);
        }
        Ok(cur)
    }

    /// Block `b`'s backward pass from its output's gradient; returns its input's.
    fn block_backward(
        &mut self,
        b: usize,
        mut d: Vec<f32>,
        convs: &[TrainConv],
        tape: &mut Vec<Taped>,
        acts: &[(Vec<f32>, Shape)],
        input: usize,
    ) -> Result<Vec<f32>> {
        let (main, shortcut, proj, stride, c0) = self.block(b);
        // The gradient after the block's last ReLU: the residual branch's too.
        let mut after_relu = None;
        for (i, &cb) in main.iter().enumerate().rev() {
            let t = tape.pop().ok_or_else(missing_record)?;
            let (dx, g) = self.conv_bn_backward(&convs[c0 + i], cb, t, d, acts, true);
            if i + 1 == main.len() {
                after_relu = Some(g);
            } else {
                self.recycle(g);
            }
            d = dx.ok_or_else(missing_record)?;
        }
        let g = after_relu.ok_or_else(missing_record)?;
        match shortcut {
            ShortcutPlan::Identity => add_into(&mut d, &g, &self.pool),
            ShortcutPlan::ZeroPad => {
                let xs = acts[input].1;
                ops::zero_pad_backward(&g, xs.subsampled(stride, block_out(&main, xs)), stride, &mut d, xs);
            }
            ShortcutPlan::Projection => {
                let p = proj.ok_or_else(missing_record)?;
                let t = tape.pop().ok_or_else(missing_record)?;
                let (dx, g) = self.conv_bn_backward(&convs[c0 + main.len()], p, t, g, acts, true);
                let dx = dx.ok_or_else(missing_record)?;
                add_into(&mut d, &dx, &self.pool);
                self.recycle(dx);
                self.recycle(g);
                return Ok(d);
            }
            ShortcutPlan::None => {}
        }
        self.recycle(g);
        Ok(d)
    }

    /// Block `b`'s convs, shortcut, projection, stride and first conv's index in [`Self::pack`].
    fn block(&self, b: usize) -> (Vec<ConvBn>, ShortcutPlan, Option<ConvBn>, usize, usize) {
        let bl = &self.blocks[b];
        (bl.main.clone(), bl.shortcut, bl.projection, bl.stride, bl.first_conv)
    }

    /// conv → BN (batch statistics) [+ residual] [→ ReLU], on activation `input`; pushes the
    /// output and returns its index.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn_forward(
        &mut self,
        conv: &TrainConv,
        cb: ConvBn,
        input: usize,
        acts: &mut Vec<(Vec<f32>, Shape)>,
        residual: &ShortcutValue,
        relu: bool,
        tape: &mut Vec<Taped>,
    ) -> usize {
        let mut t = std::time::Instant::now();
        let xs = acts[input].1;
        let ys = out_shape(cb.spec, xs);
        let mut z = self.buffer(ys.len());
        conv.forward(&acts[input].0, xs, &mut z, &self.pool, &mut self.scratch);
        self.lap(1, &mut t);
        let mut y = self.buffer(ys.len());
        let residual = match residual {
            ShortcutValue::Act(i) => Some(&acts[*i].0[..]),
            ShortcutValue::Owned(v) => Some(&v[..]),
            ShortcutValue::None => None,
        };
        // State-dict order: weight, bias, running_mean, running_var.
        let (lo, hi) = self.params.split_at_mut(cb.mean);
        let (m, v) = hi.split_at_mut(cb.var - cb.mean);
        let running = (&mut m[0].value[..], &mut v[0].value[..]);
        let (gamma, beta) = (&lo[cb.gamma].value, &lo[cb.beta].value);
        let bn = ops::bn_forward(&z, ys.c, gamma, beta, running, residual, relu, &mut y, &self.pool);
        self.lap(2, &mut t);
        acts.push((y, ys));
        tape.push(Taped {
            input,
            output: acts.len() - 1,
            relu,
            xs,
            z,
            bn,
        });
        acts.len() - 1
    }

    /// The backward pass of a conv + BN (+ ReLU) from its output's gradient `d`: sets the
    /// conv's and BN's parameter gradients, returns the input gradient (if `input_grad`) and
    /// `d` after the ReLU mask.
    fn conv_bn_backward(
        &mut self,
        conv: &TrainConv,
        cb: ConvBn,
        mut t: Taped,
        mut d: Vec<f32>,
        acts: &[(Vec<f32>, Shape)],
        input_grad: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>) {
        let mut clock = std::time::Instant::now();
        let y = t.relu.then(|| acts[t.output].0.as_slice());
        let gamma = &self.params[cb.gamma].value;
        let (dgamma, dbeta) = ops::bn_backward(&mut t.z, cb.spec.cout, &t.bn, gamma, &mut d, y, &self.pool);
        self.params[cb.gamma].grad = dgamma;
        self.params[cb.beta].grad = dbeta;
        self.lap(3, &mut clock);
        // t.z now holds the conv output's gradient.
        let mut grad = std::mem::take(&mut self.params[cb.weight].grad);
        conv.weight_grad_into(&acts[t.input].0, t.xs, &t.z, &self.pool, &mut grad);
        self.params[cb.weight].grad = grad;
        self.lap(4, &mut clock);
        let dx = input_grad.then(|| {
            let mut dx = self.buffer(t.xs.len());
            conv.input_grad(&t.z, t.xs, &mut dx, &self.pool, &mut self.scratch);
            dx
        });
        self.recycle(t.z);
        self.lap(5, &mut clock);
        (dx, d)
    }
}

/// `d += g`, on the pool's threads (a block's gradient meeting its shortcut's).
fn add_into(d: &mut [f32], g: &[f32], pool: &rayon::ThreadPool) {
    const CHUNK: usize = 1 << 14;
    pool.install(|| {
        d.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(d, g)| d.iter_mut().zip(g).for_each(|(d, g)| *d += g))
    });
}

fn missing_record() -> Error {
    Error::Config("the forward pass left fewer records than the network has convs".into())
}

/// The channels a block with convs `main` puts out on input `xs`.
fn block_out(main: &[ConvBn], xs: Shape) -> usize {
    main.last().map_or(xs.c, |m| m.spec.cout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BlockKind, ResNet, Shortcut};
    use crate::train::optim::OptimizerConfig;

    use crate::engine::test_values as values;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// After [`NativeNet::update`], every conv's packing is the one its new weights give
    /// (the forward pass and the input gradient agree bit for bit with a fresh packing): on
    /// resnet20, and on a small grouped bottleneck net whose widths are not whole panels.
    #[test]
    fn update_leaves_each_conv_packed_from_its_new_weights() {
        let grouped = ResNetConfig {
            block: BlockKind::Bottleneck,
            layers: vec![1, 2],
            widths: vec![16, 40],
            stem_width: 24,
            groups: 4,
            width_per_group: 8,
            shortcut: Shortcut::B,
            num_classes: 5,
            replace_stride_with_dilation: vec![false],
            ..ResNetConfig::cifar(1)
        };
        for config in [crate::ModelName::Resnet20.config(), grouped] {
            let mut model = ResNet::new(&config, &crate::default_device()).unwrap();
            let sd = crate::weights::state_dict(&mut model).unwrap();
            let mut net = NativeNet::new(&config, &sd, 2).unwrap();
            let mut opt = Optimizer::new(OptimizerConfig::default());
            let labels = [0, 1, 2];
            for seed in 0..2 {
                net.step(&values(3 * 3 * 12 * 12, seed), 3, 12, 12, &labels).unwrap();
                net.update(&mut opt, 0.5);
            }
            assert!(net.fresh);
            let mut scratch = AlignedVec::default();
            for (conv, cb) in net.packed.iter().zip(net.conv_list()) {
                let want = TrainConv::new(&net.params[cb.weight].value, cb.spec, net.isa);
                let xs = Shape {
                    n: 2,
                    h: 7,
                    w: 6,
                    c: cb.spec.cin,
                };
                let x = values(xs.len(), 3);
                let ys = out_shape(cb.spec, xs);
                let (mut a, mut b) = (vec![0f32; ys.len()], vec![0f32; ys.len()]);
                conv.forward(&x, xs, &mut a, &net.pool, &mut scratch);
                want.forward(&x, xs, &mut b, &net.pool, &mut scratch);
                assert!(a == b, "{:?} forward differs by {}", cb.spec, max_diff(&a, &b));
                let dy = values(ys.len(), 4);
                let (mut a, mut b) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
                conv.input_grad(&dy, xs, &mut a, &net.pool, &mut scratch);
                want.input_grad(&dy, xs, &mut b, &net.pool, &mut scratch);
                assert!(a == b, "{:?} input gradient differs by {}", cb.spec, max_diff(&a, &b));
            }
        }
    }
}
