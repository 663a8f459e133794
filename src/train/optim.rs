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
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub step: u64,
    state: BTreeMap<String, Vec<Tensor<1>>>,
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
    pub fn step(&mut self, model: &mut ResNet, grads: &Gradients, lr: f64) {
        self.step += 1;
        let mut v = Stepper { opt: self, grads, lr };
        model.visit_params(&mut v);
    }

    /// Saves the state (safetensors, flattened tensors) next to a JSON step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut sd = StateDict::new();
        for (k, ts) in &self.state {
            for (i, t) in ts.iter().enumerate() {
                let v = t.clone().into_data().convert::<f32>().try_into_vec::<f32>();
                let v = v.map_err(|e| Error::Backend(format!("{e:?}")))?;
                sd.insert(
                    format!("{k}.state{i}"),
                    TorchTensor {
                        shape: vec![v.len()],
                        values: Values::F32(v),
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
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
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
                        entry.push(Tensor::zeros([n], device));
                    }
                    entry[idx] = Tensor::from_data(TensorData::new(v, [n]), device);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

struct Stepper<'a> {
    opt: &'a mut Optimizer,
    grads: &'a Gradients,
    lr: f64,
}

impl Stepper<'_> {
    fn update<const D: usize>(&mut self, key: &str, p: &mut Param<Tensor<D>>, decay: bool) {
        let Some(grad) = p.val().grad(self.grads) else {
            return; // frozen or unused
        };
        let (id, value, mapper) = p.clone().consume();
        let shape = value.dims();
        let n: usize = shape.iter().product();
        let dev = grad.device();
        let w = value.inner().reshape([n]);
        let g = grad.reshape([n]);
        let c = &self.opt.config;
        let wd = if decay { c.weight_decay } else { 0.0 };
        let state = self.opt.state.entry(key.to_string()).or_default();
        let new = match c.kind {
            OptimizerKind::Sgd => {
                let mut g = if wd != 0.0 { g + w.clone().mul_scalar(wd) } else { g };
                if c.momentum != 0.0 {
                    let buf = match state.pop() {
                        // PyTorch: the first buffer is the gradient itself (no dampening).
                        None => g.clone(),
                        Some(b) => b.mul_scalar(c.momentum) + g.clone(),
                    };
                    g = if c.nesterov {
                        g + buf.clone().mul_scalar(c.momentum)
                    } else {
                        buf.clone()
                    };
                    state.push(buf);
                }
                w - g.mul_scalar(self.lr)
            }
            OptimizerKind::AdamW => {
                let t = self.opt.step as i32;
                let (b1, b2) = c.betas;
                let (m, v) = match (state.first(), state.get(1)) {
                    (Some(m), Some(v)) => (m.clone(), v.clone()),
                    _ => (Tensor::zeros([n], &dev), Tensor::zeros([n], &dev)),
                };
                let w = w.mul_scalar(1.0 - self.lr * wd);
                let m = m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
                let v = v.mul_scalar(b2) + g.clone().powi_scalar(2).mul_scalar(1.0 - b2);
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
                let out = w - m.clone().div(denom).mul_scalar(self.lr / bc1);
                *state = vec![m, v];
                out
            }
        };
        let new = Tensor::from_inner(new.reshape(shape)).require_grad();
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
