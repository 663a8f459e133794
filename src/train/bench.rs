//! One training step, timed: what `resnet bench --train` and `bench/train_step.sh` report.
//!
//! The step is the one [`super::Trainer`] runs: forward in train mode, cross-entropy,
//! backward, and our SGD (nesterov, weight decay 5e-4, the CIFAR recipe's) on random data,
//! so that the figure tells a user how long an epoch of theirs will take.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use serde::Serialize;

use super::native::NativeNet;
use super::{Optimizer, OptimizerConfig};
use crate::error::Result;
use crate::model::{ResNet, ResNetConfig};

/// Median times of a training step and its three phases, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StepTimes {
    pub median_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub update_ms: f64,
    /// Every timed step, sorted.
    pub steps_ms: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Which implementation runs the training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainer {
    /// The CPU engine's kernels ([`super::native`]).
    Native,
    /// burn's autodiff on the default device.
    Burn,
}

impl Trainer {
    /// Native where this CPU has a packed kernel and burn's device is the CPU, else burn;
    /// `RESNET_TRAINER=burn` forces burn (to compare, or to rule the native path out).
    pub fn auto() -> Self {
        let forced_burn = std::env::var("RESNET_TRAINER").is_ok_and(|v| v == "burn");
        if !forced_burn && cfg!(feature = "flex") && NativeNet::kernel().is_some() {
            Trainer::Native
        } else {
            Trainer::Burn
        }
    }
}

/// Times `steps` training steps of `config` at `batch × in_channels × size × size` on
/// `trainer`, after two warm-up steps.
pub fn time_train_step(
    config: &ResNetConfig,
    batch: usize,
    size: usize,
    steps: usize,
    trainer: Trainer,
) -> Result<StepTimes> {
    match trainer {
        Trainer::Native => time_native_step(config, batch, size, steps),
        Trainer::Burn => time_burn_step(config, batch, size, steps),
    }
}

fn recipe() -> Optimizer {
    Optimizer::new(OptimizerConfig {
        nesterov: true,
        weight_decay: 5e-4,
        ..Default::default()
    })
}

fn times(total: Vec<f64>, fwd: Vec<f64>, bwd: Vec<f64>, upd: Vec<f64>) -> StepTimes {
    let mut steps_ms = total.clone();
    steps_ms.sort_by(|a, b| a.total_cmp(b));
    StepTimes {
        median_ms: median(total),
        forward_ms: median(fwd),
        backward_ms: median(bwd),
        update_ms: median(upd),
        steps_ms,
    }
}

fn time_native_step(config: &ResNetConfig, batch: usize, size: usize, steps: usize) -> Result<StepTimes> {
    let dev = crate::default_device();
    dev.seed(0);
    let mut model = ResNet::new(config, &dev)?;
    let mut net = NativeNet::new(config, &crate::weights::state_dict(&mut model)?, 0)?;
    let mut opt = recipe();
    let mut rng = crate::data::rng::Rng::new(0);
    let x: Vec<f32> = (0..batch * config.in_channels * size * size)
        .map(|_| rng.range(-1.7, 1.7) as f32)
        .collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes.max(1)).collect();
    let (mut total, mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![], vec![]);
    for i in 0..steps.max(1) + 2 {
        let t0 = Instant::now();
        net.step(&x, batch, size, size, &labels)?;
        let t1 = Instant::now();
        net.update(&mut opt, 0.1);
        let t2 = Instant::now();
        if i >= 2 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            total.push(ms(t0, t2));
            fwd.push(net.phases_ms.0);
            bwd.push(net.phases_ms.1);
            upd.push(ms(t1, t2));
        }
    }
    Ok(times(total, fwd, bwd, upd))
}

/// Each phase is synchronised by reading a value back, so lazy backends (burn's GPU ones) are
/// timed fairly too.
fn time_burn_step(config: &ResNetConfig, batch: usize, size: usize, steps: usize) -> Result<StepTimes> {
    let dev = crate::default_device().autodiff();
    dev.seed(0);
    let mut model = ResNet::new(config, &dev)?;
    let mut opt = recipe();
    let ce = CrossEntropyLossConfig::new().init(&dev);
    let x = Tensor::<4>::random(
        [batch, config.in_channels, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let labels: Vec<i64> = (0..batch).map(|i| (i % config.num_classes.max(1)) as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &dev);
    let (mut total, mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![], vec![]);
    for i in 0..steps.max(1) + 2 {
        let t0 = Instant::now();
        let loss = ce.forward(model.forward(x.clone())?, y.clone());
        let _: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        opt.step(&mut model, &grads, 0.1)?;
        let _: f32 = model.fc.weight.val().slice([0..1, 0..1]).into_scalar();
        let t3 = Instant::now();
        if i >= 2 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            total.push(ms(t0, t3));
            fwd.push(ms(t0, t1));
            bwd.push(ms(t1, t2));
            upd.push(ms(t2, t3));
        }
    }
    Ok(times(total, fwd, bwd, upd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelName;

    #[test]
    fn a_step_is_timed_in_phases_that_add_up() {
        let c = ModelName::Resnet20.config().with_in_channels(1);
        for trainer in [Trainer::Native, Trainer::Burn] {
            if trainer == Trainer::Native && NativeNet::kernel().is_none() {
                continue;
            }
            phases_add_up(time_train_step(&c, 4, 16, 3, trainer).unwrap());
        }
    }

    fn phases_add_up(t: StepTimes) {
        assert_eq!(t.steps_ms.len(), 3);
        assert!(t.forward_ms > 0.0 && t.backward_ms > 0.0 && t.update_ms >= 0.0);
        // Medians of parts need not add up exactly, but cannot exceed the slowest step.
        assert!(t.forward_ms + t.backward_ms + t.update_ms <= 3.0 * t.steps_ms[2]);
        assert!(t.steps_ms[0] <= t.median_ms && t.median_ms <= t.steps_ms[2]);
    }
}
