//! Parameter and multiply-accumulate counts, computed from the plan (no tensors needed).
//!
//! "FLOPs" follow torchvision's metadata and the paper: one multiply-accumulate counts once.

use serde::Serialize;

use super::config::{BlockKind, ResNetConfig, ShortcutPlan, Stem};

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
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
        d: usize,
        g: usize,
        hw: (usize, usize),
    ) -> (usize, usize) {
        let (h, w) = (out_size(hw.0, k, s, p, d), out_size(hw.1, k, s, p, d));
        let weights = (cout * cin / g * k * k) as u64;
        self.params += weights + 2 * cout as u64;
        self.macs += weights * (h * w) as u64;
        (h, w)
    }
}

impl ResNetConfig {
    /// Parameters and MACs for one `height × width` image.
    pub fn complexity(&self, height: usize, width: usize) -> Complexity {
        let mut c = Counter::default();
        let mut hw = (height, width);
        match self.stem {
            Stem::ImageNet => {
                hw = c.conv_bn(self.in_channels, self.stem_width, 7, 2, 3, 1, 1, hw);
                hw = (out_size(hw.0, 3, 2, 1, 1), out_size(hw.1, 3, 2, 1, 1));
            }
            Stem::Cifar => hw = c.conv_bn(self.in_channels, self.stem_width, 3, 1, 1, 1, 1, hw),
        }
        for b in self.plan().into_iter().flatten() {
            let input = hw;
            match self.block {
                BlockKind::Basic => {
                    hw = c.conv_bn(b.in_channels, b.width, 3, b.stride, 1, 1, 1, hw);
                    hw = c.conv_bn(b.width, b.out_channels, 3, 1, 1, 1, 1, hw);
                }
                BlockKind::Bottleneck => {
                    hw = c.conv_bn(b.in_channels, b.width, 1, 1, 0, 1, 1, hw);
                    hw = c.conv_bn(b.width, b.width, 3, b.stride, b.dilation, b.dilation, b.groups, hw);
                    hw = c.conv_bn(b.width, b.out_channels, 1, 1, 0, 1, 1, hw);
                }
            }
            if b.shortcut == ShortcutPlan::Projection {
                c.conv_bn(b.in_channels, b.out_channels, 1, b.stride, 0, 1, 1, input);
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
