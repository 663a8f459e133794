//! ResNet model definitions.
//!
//! He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
//! (arXiv:1512.03385). A block computes `relu(F(x) + shortcut(x))`; the zoo covers
//! torchvision's ImageNet models (v1.5: stride on the 3×3 conv), ResNeXt and Wide ResNets,
//! the paper's CIFAR nets (6n+2 layers, option-A shortcuts) and its plain baselines.
//!
//! Layering: may import `error` (and `base`); see the README's module order.

mod config;
mod flops;
mod logits;
mod params;
mod resnet;

pub use config::{BlockKind, BlockPlan, ConvShape, ModelName, ResNetConfig, Shortcut, ShortcutPlan, Stem};
pub use flops::Complexity;
pub use logits::{first_max, rows, split_rows, Logits};
pub use params::{ParamKeys, ParamSpec, ParamVisitor, Role, Slot};
pub use resnet::{Block, Downsample, ResNet};
/// The layers the model is built from, for per-op tests.
pub mod layers {
    pub use super::resnet::{batch_norm, bn, conv, stem_pool, zero_pad_shortcut};
}
