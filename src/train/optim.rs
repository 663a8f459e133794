//! SGD and AdamW with PyTorch's exact update rules, keyed by torchvision's state-dict names.
//!
//! Ours rather than burn's optimizers for two reasons: burn keys optimizer state by random
//! `ParamId`s, which a rebuilt model does not share, so resuming after a crash needs names;
//! and PyTorch's SGD takes no dampening on the first momentum step, which we match.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Gradients;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{ParamVisitor, ResNet, Slot};
use crate::weights::{self, StateDict, TorchTensor, Values};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    AdamW,
}

/// Optimizer hyper-parameters (PyTorch's names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// No weight decay on BatchNorm parameters and biases (timm's and torchvision's recipes).
    pub no_wd_on_bn_bias: bool,
    pub betas: (f64, f64),
    pub eps: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            no_wd_on_bn_bias: false,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }
}

/// Per-parameter state, by torchvision key: SGD's momentum buffer or Adam's two moments.
///
/// The state lives in host memory and the rule runs on slices, so burn's autodiff path and
/// the CPU engine's training path ([`super::native`]) share one update rule.
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub step: u64,
    state: BTreeMap<String, Vec<Vec<f32>>>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer {
            config,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// Applies one update to every parameter that has a gradient.
    pub fn step(&mut self, model: &mut ResNet, grads: &Gradients, lr: f64) -> Result<()> {
        self.step += 1;
        let mut v = Stepper {
            opt: self,
            grads,
            lr,
            error: None,
        };
        model.visit_params(&mut v);
        v.error.map_or(Ok(()), Err)
    }

    /// Counts a step: call once per step before [`Optimizer::rule`].
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// This step's rule for parameter `key` of `n` values, its state made on first use.
    pub fn rule(&mut self, key: &str, n: usize, decay: bool, lr: f64) -> Rule {
        let c = &self.config;
        let wd = if decay { c.weight_decay } else { 0.0 };
        let state = self.state.entry(key.to_string()).or_default();
        let (lr32, wd32) = (lr as f32, wd as f32);
        match c.kind {
            OptimizerKind::Sgd if c.momentum == 0.0 => Rule::Sgd { lr: lr32, wd: wd32 },
            OptimizerKind::Sgd => {
                // PyTorch: the first buffer is the gradient itself (no dampening).
                let first = state.is_empty();
                if first {
                    state.push(vec![0f32; n]);
                }
                Rule::Momentum {
                    lr: lr32,
                    wd: wd32,
                    momentum: c.momentum as f32,
                    nesterov: c.nesterov,
                    first,
                }
            }
            OptimizerKind::AdamW => {
                let t = self.step as i32;
                let (b1, b2) = c.betas;
                if state.len() < 2 {
                    *state = vec![vec![0f32; n], vec![0f32; n]];
                }
                Rule::AdamW {
                    keep: (1.0 - lr * wd) as f32,
                    b1: b1 as f32,
                    b2: b2 as f32,
                    sq2: (1.0 - b2.powi(t)).sqrt() as f32,
                    eps: c.eps as f32,
                    step: (lr / (1.0 - b1.powi(t))) as f32,
                }
            }
        }
    }

    /// The states of `keys`, in that order, all borrowed at once (for updates that run in
    /// parallel); a key without state gets an empty one.
    pub fn states_mut(&mut self, keys: &[&str]) -> Vec<&mut Vec<Vec<f32>>> {
        for k in keys {
            self.state.entry(k.to_string()).or_default();
        }
        let mut found: BTreeMap<&str, &mut Vec<Vec<f32>>> = self
            .state
            .iter_mut()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        keys.iter().filter_map(|k| found.remove(k)).collect()
    }

    /// PyTorch's rule for one parameter `w` with gradient `g`, in f32 as torch computes it,
    /// in one pass over chunks that run in parallel (the update is memory-bound).
    pub fn update(&mut self, key: &str, w: &mut [f32], g: &[f32], decay: bool, lr: f64) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 15;
        let rule = self.rule(key, w.len(), decay, lr);
        let state = self.state.get_mut(key).expect("made by rule");
        match state.as_mut_slice() {
            [] => w
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(w, g)| rule.apply(w, g, &mut [])),
            [m] => w
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .for_each(|((w, g), m)| rule.apply(w, g, &mut [m])),
            [m, v, ..] => w
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((w, g), (m, v))| rule.apply(w, g, &mut [m, v])),
        }
    }

    /// Saves the state (safetensors, flattened tensors) next to a JSON step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut sd = StateDict::new();
        for (k, ts) in &self.state {
            for (i, v) in ts.iter().enumerate() {
                sd.insert(
                    format!("{k}.state{i}"),
                    TorchTensor {
                        shape: vec![v.len()],
                        values: Values::F32(v.clone()),
                    },
                );
            }
        }
        sd.insert(
            "__step__".into(),
            TorchTensor {
                shape: vec![],
                values: Values::I64(vec![self.step as i64]),
            },
        );
        weights::write_safetensors(path, &sd)
    }

    /// Restores what [`Optimizer::save`] wrote.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let sd = weights::read_state_dict(path)?;
        self.state.clear();
        for (k, t) in sd {
            match (k.as_str(), t.values) {
                ("__step__", Values::I64(v)) => self.step = v.first().copied().unwrap_or(0) as u64,
                (_, Values::F32(v)) => {
                    let (name, idx) = k.rsplit_once(".state").ok_or_else(|| Error::BadWeights {
                        path: path.to_path_buf(),
                        reason: format!("unexpected optimizer entry {k}"),
                    })?;
                    let idx: usize = idx.parse().unwrap_or(0);
                    let n = v.len();
                    let entry = self.state.entry(name.to_string()).or_default();
                    while entry.len() <= idx {
                        entry.push(vec![0f32; n]);
                    }
                    entry[idx] = v;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One step's update rule for one parameter, with its constants, applied to slices of the
/// parameter, its gradient and its state (the same slices of each).
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    Sgd {
        lr: f32,
        wd: f32,
    },
    Momentum {
        lr: f32,
        wd: f32,
        momentum: f32,
        nesterov: bool,
        /// The buffer starts as the gradient.
        first: bool,
    },
    AdamW {
        keep: f32,
        b1: f32,
        b2: f32,
        sq2: f32,
        eps: f32,
        step: f32,
    },
}

impl Rule {
    /// Updates `w` from `g`; `state` holds the momentum buffer (SGD with momentum) or the two
    /// moments (AdamW), each as long as `w`.
    pub fn apply(&self, w: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        match (*self, state) {
            (Rule::Sgd { lr, wd }, _) => {
                for (w, &g) in w.iter_mut().zip(g) {
                    let d = if wd != 0.0 { g + *w * wd } else { g };
                    *w -= d * lr;
                }
            }
            (
                Rule::Momentum {
                    lr,
                    wd,
                    momentum,
                    nesterov,
                    first,
                },
                [buf, ..],
            ) => {
                for ((w, &g), b) in w.iter_mut().zip(g).zip(buf.iter_mut()) {
                    let d = if wd != 0.0 { g + *w * wd } else { g };
                    *b = if first { d } else { *b * momentum + d };
                    let step = if nesterov { d + *b * momentum } else { *b };
                    *w -= step * lr;
                }
            }
            (
                Rule::AdamW {
                    keep,
                    b1,
                    b2,
                    sq2,
                    eps,
                    step,
                },
                [m, v, ..],
            ) => {
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *w *= keep;
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let denom = v.sqrt() / sq2 + eps;
                    *w -= (*m / denom) * step;
                }
            }
            (rule, _) => unreachable!("{rule:?} without its state"),
        }
    }
}

struct Stepper<'a> {
    opt: &'a mut Optimizer,
    grads: &'a Gradients,
    lr: f64,
    /// The first parameter that could not be read back from the backend.
    error: Option<Error>,
}

impl Stepper<'_> {
    fn update<const D: usize>(&mut self, key: &str, p: &mut Param<Tensor<D>>, decay: bool) {
        let Some(grad) = p.val().grad(self.grads) else {
            return; // frozen or unused
        };
        let (id, value, mapper) = p.clone().consume();
        let inner = value.inner();
        let (shape, dev) = (inner.dims(), inner.device());
        let host = |t: Tensor<D>| t.into_data().convert::<f32>().try_into_vec::<f32>();
        let (mut w, g) = match (host(inner), host(grad)) {
            (Ok(w), Ok(g)) if w.len() == g.len() => (w, g),
            other => {
                let e = format!(
                    "{key}: cannot read the weight and its gradient back: {:?}",
                    other.0.err()
                );
                self.error.get_or_insert(Error::Backend(e));
                return;
            }
        };
        self.opt.update(key, &mut w, &g, decay, self.lr);
        let new = Tensor::from_inner(Tensor::<D>::from_data(TensorData::new(w, shape), &dev)).require_grad();
        *p = Param::from_mapped_value(id, new, mapper);
    }
}

impl ParamVisitor for Stepper<'_> {
    fn visit(&mut self, key: &str, _shape: &[usize], slot: Slot<'_>) {
        // BN weights/biases and conv/fc biases are exactly the 1-D parameters.
        let decay = !(self.opt.config.no_wd_on_bn_bias && matches!(slot, Slot::Vector(_)));
        match slot {
            Slot::Conv(p) => self.update(key, p, decay),
            Slot::Vector(p) => self.update(key, p, decay),
            Slot::LinearWeight(p) => self.update(key, p, decay),
            Slot::Running(_) | Slot::BatchCounter => {}
        }
    }
}
