//! Learning-rate schedules with linear warm-up, evaluated per iteration.

use serde::{Deserialize, Serialize};

/// The decay after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// × `gamma` every `step_size` epochs (`StepLR`).
    Step {
        step_size: usize,
        gamma: f64,
    },
    /// × `gamma` at each milestone epoch (`MultiStepLR`).
    MultiStep {
        milestones: Vec<usize>,
        gamma: f64,
    },
    /// Cosine from the base rate to 0 over the epochs after warm-up (`CosineAnnealingLR`).
    Cosine,
}

/// Base rate, schedule and warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrPlan {
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_epochs: f64,
    pub epochs: usize,
}

impl LrPlan {
    /// The rate for iteration `iter` of `per_epoch` in `epoch` (0-based).
    pub fn at(&self, epoch: usize, iter: usize, per_epoch: usize) -> f64 {
        let per_epoch = per_epoch.max(1);
        let t = epoch as f64 + iter as f64 / per_epoch as f64;
        if t < self.warmup_epochs {
            // Linear from lr/per_epoch-ish to lr, as torchvision's LinearLR warm-up.
            return self.lr * (t + 1.0 / per_epoch as f64) / self.warmup_epochs.max(1e-12);
        }
        match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step { step_size, gamma } => self.lr * gamma.powi((epoch / (*step_size).max(1)) as i32),
            Schedule::MultiStep { milestones, gamma } => {
                self.lr * gamma.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
            }
            Schedule::Cosine => {
                let span = (self.epochs as f64 - self.warmup_epochs).max(1e-12);
                let progress = ((t - self.warmup_epochs) / span).clamp(0.0, 1.0);
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let plan = |schedule, warmup_epochs| LrPlan {
            lr: 0.1,
            schedule,
            warmup_epochs,
            epochs: 10,
        };
        let step = plan(
            Schedule::Step {
                step_size: 3,
                gamma: 0.1,
            },
            0.0,
        );
        assert!((step.at(2, 0, 10) - 0.1).abs() < 1e-12 && (step.at(3, 0, 10) - 0.01).abs() < 1e-12);
        let ms = plan(
            Schedule::MultiStep {
                milestones: vec![5, 8],
                gamma: 0.1,
            },
            0.0,
        );
        assert!((ms.at(8, 0, 10) - 0.001).abs() < 1e-12);
        let cos = plan(Schedule::Cosine, 1.0);
        assert!(cos.at(0, 0, 10) < 0.02 && (cos.at(0, 9, 10) - 0.1).abs() < 1e-12);
        assert!((cos.at(1, 0, 10) - 0.1).abs() < 1e-12 && cos.at(9, 9, 10) < 0.001);
        assert!((cos.at(5, 5, 10) - 0.05).abs() < 1e-9);
    }
}
