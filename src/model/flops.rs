//! Parameter and multiply-accumulate counts, computed from the plan (no tensors needed).
//!
//! "FLOPs" follow torchvision's metadata and the paper: one multiply-accumulate counts once.

use serde::Serialize;

use super::config::{ConvShape, ResNetConfig, ShortcutPlan, Stem};

/// Parameter count and MACs of one configuration at one input size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Complexity {
    /// Learnable parameters (conv and fc weights and biases, BN γ and β), as `sum(p.numel())`.
    pub params: u64,
    /// Multiply-accumulates of the convs and the fc for one image.
    pub macs: u64,
}

impl Complexity {
    pub fn gflops(&self) -> f64 {
        self.macs as f64 / 1e9
    }
}

fn out_size(size: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    (size + 2 * p).saturating_sub(d * (k - 1) + 1) / s + 1
}

#[derive(Default)]
struct Counter {
    params: u64,
    macs: u64,
}

impl Counter {
    /// Adds a conv (no bias) + BN and returns the output size.
    fn conv_bn(&mut self, c: ConvShape, hw: (usize, usize)) -> (usize, usize) {
        let size = |n| out_size(n, c.k, c.stride, c.pad(), c.dilation);
        let (h, w) = (size(hw.0), size(hw.1));
        let weights = (c.cout * c.cin / c.groups * c.k * c.k) as u64;
        self.params += weights + 2 * c.cout as u64;
        self.macs += weights * (h * w) as u64;
        (h, w)
    }
}

impl ResNetConfig {
    /// Parameters and MACs for one `height × width` image.
    pub fn complexity(&self, height: usize, width: usize) -> Complexity {
        let mut c = Counter::default();
        let mut hw = c.conv_bn(self.stem_conv(), (height, width));
        if self.stem == Stem::ImageNet {
            hw = (out_size(hw.0, 3, 2, 1, 1), out_size(hw.1, 3, 2, 1, 1));
        }
        for b in self.plan().into_iter().flatten() {
            let input = hw;
            for conv in b.main_convs(self.block) {
                hw = c.conv_bn(conv, hw);
            }
            if b.shortcut == ShortcutPlan::Projection {
                c.conv_bn(b.projection(), input);
            }
        }
        let f = self.feature_dim() as u64;
        let n = self.num_classes as u64;
        c.params += f * n + n;
        c.macs += f * n;
        Complexity {
            params: c.params,
            macs: c.macs,
        }
    }
}
