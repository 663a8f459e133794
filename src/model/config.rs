//! Configurations: one [`ResNetConfig`] describes every network in the zoo, and
//! [`ResNetConfig::plan`] turns it into the list of blocks that both the burn module
//! and the parameter/FLOP counters walk, so the two can never disagree.

use serde::Serialize;

use crate::error::{Error, Result};

/// Residual block type (He et al. 2015, Fig. 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convs (ResNet-18/34 and the CIFAR nets).
    Basic,
    /// 1×1 → 3×3 → 1×1 with 4× expansion (ResNet-50/101/152); the stride sits on the 3×3 (v1.5).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// How a shortcut crosses a change of shape (the paper's §3.3 options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Shortcut {
    /// Parameter-free: subsample by the stride and zero-pad the new channels.
    A,
    /// 1×1 conv + BN projection where the shape changes, identity elsewhere (torchvision).
    B,
    /// Projection on every shortcut.
    C,
}

/// The first layers before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7/2 conv + 3×3/2 max-pool (ImageNet models).
    ImageNet,
    /// 3×3/1 conv, no pool (the paper's CIFAR models).
    Cifar,
}

/// Everything that defines a ResNet. Start from a preset ([`ModelName::config`]) and adjust.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage, e.g. `[3, 4, 6, 3]` for resnet50.
    pub layers: Vec<usize>,
    /// Planes per stage, e.g. `[64, 128, 256, 512]`; stage outputs are `planes × expansion`.
    pub widths: Vec<usize>,
    pub stem: Stem,
    /// Output channels of the stem conv.
    pub stem_width: usize,
    pub groups: usize,
    pub width_per_group: usize,
    pub shortcut: Shortcut,
    /// `false` builds the paper's "plain" nets: the same layers without any shortcut.
    pub residual: bool,
    pub num_classes: usize,
    pub in_channels: usize,
    /// Start the last BN of every block at γ = 0 (only affects initialisation).
    pub zero_init_residual: bool,
    /// One flag per stage after the first: trade that stage's stride for dilation.
    pub replace_stride_with_dilation: Vec<bool>,
}

impl ResNetConfig {
    fn imagenet(block: BlockKind, layers: [usize; 4]) -> Self {
        ResNetConfig {
            block,
            layers: layers.to_vec(),
            widths: vec![64, 128, 256, 512],
            stem: Stem::ImageNet,
            stem_width: 64,
            groups: 1,
            width_per_group: 64,
            shortcut: Shortcut::B,
            residual: true,
            num_classes: 1000,
            in_channels: 3,
            zero_init_residual: false,
            replace_stride_with_dilation: vec![false; 3],
        }
    }

    /// The paper's 6n+2-layer CIFAR network (16/32/64 channels, option A shortcuts).
    pub fn cifar(n: usize) -> Self {
        ResNetConfig {
            block: BlockKind::Basic,
            layers: vec![n; 3],
            widths: vec![16, 32, 64],
            stem: Stem::Cifar,
            stem_width: 16,
            groups: 1,
            width_per_group: 64,
            shortcut: Shortcut::A,
            residual: true,
            num_classes: 10,
            in_channels: 3,
            zero_init_residual: false,
            replace_stride_with_dilation: vec![false; 2],
        }
    }

    pub fn with_num_classes(mut self, n: usize) -> Self {
        self.num_classes = n;
        self
    }
    pub fn with_in_channels(mut self, n: usize) -> Self {
        self.in_channels = n;
        self
    }
    pub fn with_shortcut(mut self, s: Shortcut) -> Self {
        self.shortcut = s;
        self
    }
    pub fn with_zero_init_residual(mut self, z: bool) -> Self {
        self.zero_init_residual = z;
        self
    }
    pub fn with_replace_stride_with_dilation(mut self, d: Vec<bool>) -> Self {
        self.replace_stride_with_dilation = d;
        self
    }

    /// Checks the combinations torchvision rejects, so that building never panics.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.layers.is_empty() || self.layers.len() != self.widths.len() {
            return bad("`layers` and `widths` need one entry per stage");
        }
        if self.layers.contains(&0) {
            return bad("every stage needs at least one block");
        }
        if self.replace_stride_with_dilation.len() != self.layers.len() - 1 {
            return bad("replace_stride_with_dilation needs one flag per stage after the first");
        }
        if self.num_classes == 0 || self.in_channels == 0 || self.groups == 0 {
            return bad("num_classes, in_channels and groups must be positive");
        }
        if self.block == BlockKind::Basic {
            if self.groups != 1 || self.width_per_group != 64 {
                return bad("basic blocks only support groups=1 and width_per_group=64");
            }
            if self.replace_stride_with_dilation.iter().any(|&d| d) {
                return bad("dilation > 1 is not supported with basic blocks");
            }
        }
        Ok(())
    }

    /// Output channels of the last stage (the fc input, the feature size).
    pub fn feature_dim(&self) -> usize {
        self.widths.last().copied().unwrap_or(0) * self.block.expansion()
    }

    /// The blocks of every stage with their channels, stride, dilation and shortcut, in
    /// torchvision's `_make_layer` order.
    pub fn plan(&self) -> Vec<Vec<BlockPlan>> {
        let exp = self.block.expansion();
        let mut inplanes = self.stem_width;
        let mut dilation = 1;
        let mut stages = Vec::with_capacity(self.layers.len());
        for (i, (&n, &planes)) in self.layers.iter().zip(&self.widths).enumerate() {
            let mut stride = if i == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            if i > 0 && self.replace_stride_with_dilation[i - 1] {
                dilation *= stride;
                stride = 1;
            }
            let width = match self.block {
                BlockKind::Basic => planes,
                BlockKind::Bottleneck => planes * self.width_per_group / 64 * self.groups,
            };
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let (s, d) = if b == 0 {
                    (stride, previous_dilation)
                } else {
                    (1, dilation)
                };
                let out = planes * exp;
                let changes = s != 1 || inplanes != out;
                let shortcut = if !self.residual {
                    ShortcutPlan::None
                } else {
                    match (self.shortcut, changes) {
                        (Shortcut::C, _) | (Shortcut::B, true) => ShortcutPlan::Projection,
                        (Shortcut::A, true) => ShortcutPlan::ZeroPad,
                        _ => ShortcutPlan::Identity,
                    }
                };
                blocks.push(BlockPlan {
                    in_channels: inplanes,
                    width,
                    out_channels: out,
                    stride: s,
                    dilation: d,
                    groups: if self.block == BlockKind::Bottleneck {
                        self.groups
                    } else {
                        1
                    },
                    shortcut,
                });
                inplanes = out;
            }
            stages.push(blocks);
        }
        stages
    }
}

/// What a block's shortcut does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortcutPlan {
    /// `x` itself.
    Identity,
    /// Option A: `x[:, :, ::s, ::s]` with zero channels added.
    ZeroPad,
    /// `downsample.0` (1×1 conv, stride) + `downsample.1` (BN).
    Projection,
    /// Plain nets: no shortcut at all.
    None,
}

/// One convolution's geometry as `nn.Conv2d` takes it (no bias; torchvision's padding).
/// The engine, the ONNX export and its import all build a block's convolutions from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl ConvShape {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize) -> Self {
        ConvShape {
            cin,
            cout,
            k,
            stride,
            dilation: 1,
            groups: 1,
        }
    }

    /// The zero border `nn.Conv2d` adds: the kernel's reach on each side.
    pub fn pad(&self) -> usize {
        self.dilation * (self.k - 1) / 2
    }
}

impl ResNetConfig {
    /// The stem convolution: 7×7 stride 2 (ImageNet) or 3×3 stride 1 (CIFAR).
    pub fn stem_conv(&self) -> ConvShape {
        match self.stem {
            Stem::ImageNet => ConvShape::new(self.in_channels, self.stem_width, 7, 2),
            Stem::Cifar => ConvShape::new(self.in_channels, self.stem_width, 3, 1),
        }
    }
}

impl BlockPlan {
    /// The main path's convolutions in order (`conv1`, `conv2`[, `conv3`]), a ReLU between
    /// consecutive ones.
    pub fn main_convs(&self, block: BlockKind) -> Vec<ConvShape> {
        match block {
            BlockKind::Basic => vec![
                ConvShape::new(self.in_channels, self.width, 3, self.stride),
                ConvShape::new(self.width, self.out_channels, 3, 1),
            ],
            BlockKind::Bottleneck => vec![
                ConvShape::new(self.in_channels, self.width, 1, 1),
                ConvShape {
                    dilation: self.dilation,
                    groups: self.groups,
                    ..ConvShape::new(self.width, self.width, 3, self.stride)
                },
                ConvShape::new(self.width, self.out_channels, 1, 1),
            ],
        }
    }

    /// The projection shortcut (`downsample.0`, options B and C).
    pub fn projection(&self) -> ConvShape {
        ConvShape::new(self.in_channels, self.out_channels, 1, self.stride)
    }
}

/// One block of [`ResNetConfig::plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    pub in_channels: usize,
    /// Channels inside the block (the 3×3 conv's width).
    pub width: usize,
    pub out_channels: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub shortcut: ShortcutPlan,
}

macro_rules! model_names {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every network in the zoo, by its torchvision (or paper) name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ModelName { $($variant),* }

        impl ModelName {
            pub const ALL: &'static [ModelName] = &[$(ModelName::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $(ModelName::$variant => $name),* }
            }
        }
    };
}

model_names! {
    Resnet18 => "resnet18", Resnet34 => "resnet34", Resnet50 => "resnet50",
    Resnet101 => "resnet101", Resnet152 => "resnet152",
    WideResnet50_2 => "wide_resnet50_2", WideResnet101_2 => "wide_resnet101_2",
    Resnext50_32x4d => "resnext50_32x4d", Resnext101_32x8d => "resnext101_32x8d",
    Resnext101_64x4d => "resnext101_64x4d",
    Resnet20 => "resnet20", Resnet32 => "resnet32", Resnet44 => "resnet44",
    Resnet56 => "resnet56", Resnet110 => "resnet110", Resnet1202 => "resnet1202",
    Plain20 => "plain20", Plain32 => "plain32", Plain44 => "plain44",
    Plain56 => "plain56", Plain110 => "plain110",
    Plain18 => "plain18", Plain34 => "plain34",
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ModelName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        ModelName::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == s)
            .ok_or(Error::UnknownModel(s))
    }
}

impl ModelName {
    /// The preset configuration, as torchvision (or the paper, for CIFAR and plain nets) builds it.
    pub fn config(self) -> ResNetConfig {
        use BlockKind::*;
        use ModelName::*;
        let tv = ResNetConfig::imagenet;
        let cifar = ResNetConfig::cifar;
        let grouped = |layers, groups, wpg| ResNetConfig {
            groups,
            width_per_group: wpg,
            ..tv(Bottleneck, layers)
        };
        let plain = |c: ResNetConfig| ResNetConfig { residual: false, ..c };
        match self {
            Resnet18 => tv(Basic, [2, 2, 2, 2]),
            Resnet34 => tv(Basic, [3, 4, 6, 3]),
            Resnet50 => tv(Bottleneck, [3, 4, 6, 3]),
            Resnet101 => tv(Bottleneck, [3, 4, 23, 3]),
            Resnet152 => tv(Bottleneck, [3, 8, 36, 3]),
            WideResnet50_2 => grouped([3, 4, 6, 3], 1, 128),
            WideResnet101_2 => grouped([3, 4, 23, 3], 1, 128),
            Resnext50_32x4d => grouped([3, 4, 6, 3], 32, 4),
            Resnext101_32x8d => grouped([3, 4, 23, 3], 32, 8),
            Resnext101_64x4d => grouped([3, 4, 23, 3], 64, 4),
            Resnet20 => cifar(3),
            Resnet32 => cifar(5),
            Resnet44 => cifar(7),
            Resnet56 => cifar(9),
            Resnet110 => cifar(18),
            Resnet1202 => cifar(200),
            Plain20 => plain(cifar(3)),
            Plain32 => plain(cifar(5)),
            Plain44 => plain(cifar(7)),
            Plain56 => plain(cifar(9)),
            Plain110 => plain(cifar(18)),
            Plain18 => plain(tv(Basic, [2, 2, 2, 2])),
            Plain34 => plain(tv(Basic, [3, 4, 6, 3])),
        }
    }

    /// The input size the model was designed for (224 for ImageNet, 32 for CIFAR).
    pub fn native_input(self) -> usize {
        match self.config().stem {
            Stem::ImageNet => 224,
            Stem::Cifar => 32,
        }
    }

    /// The paper's Table 1 FLOPs (×10⁹), where it lists the model.
    pub fn paper_gflops(self) -> Option<f64> {
        match self {
            ModelName::Resnet18 => Some(1.8),
            ModelName::Resnet34 => Some(3.6),
            ModelName::Resnet50 => Some(3.8),
            ModelName::Resnet101 => Some(7.6),
            ModelName::Resnet152 => Some(11.3),
            _ => None,
        }
    }

    /// The paper's Table 6 parameter counts (millions) for the CIFAR-10 ResNets.
    pub fn paper_params_m(self) -> Option<f64> {
        match self {
            ModelName::Resnet20 => Some(0.27),
            ModelName::Resnet32 => Some(0.46),
            ModelName::Resnet44 => Some(0.66),
            ModelName::Resnet56 => Some(0.85),
            ModelName::Resnet110 => Some(1.7),
            ModelName::Resnet1202 => Some(19.4),
            _ => None,
        }
    }

    /// torchvision's metadata: (parameters, GFLOPs) at 224×224.
    pub fn torchvision_meta(self) -> Option<(u64, f64)> {
        use ModelName::*;
        Some(match self {
            Resnet18 => (11_689_512, 1.814),
            Resnet34 => (21_797_672, 3.664),
            Resnet50 => (25_557_032, 4.089),
            Resnet101 => (44_549_160, 7.801),
            Resnet152 => (60_192_808, 11.514),
            Resnext50_32x4d => (25_028_904, 4.23),
            Resnext101_32x8d => (88_791_336, 16.414),
            Resnext101_64x4d => (83_455_272, 15.46),
            WideResnet50_2 => (68_883_240, 11.398),
            WideResnet101_2 => (126_886_696, 22.753),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_replaces_stride_as_torchvision_does() {
        let c = ModelName::Resnet50
            .config()
            .with_replace_stride_with_dilation(vec![false, true, true]);
        let plan = c.plan();
        let first = |s: usize| (plan[s][0].stride, plan[s][0].dilation);
        let later = |s: usize| (plan[s][1].stride, plan[s][1].dilation);
        assert_eq!([first(1), first(2), first(3)], [(2, 1), (1, 1), (1, 2)]);
        assert_eq!([later(2), later(3)], [(1, 2), (1, 4)]);
        assert_eq!(plan[2][0].shortcut, ShortcutPlan::Projection);
    }

    #[test]
    fn shortcut_options() {
        let shortcuts = |s| ModelName::Resnet20.config().with_shortcut(s).plan().concat();
        let count = |s, p| shortcuts(s).iter().filter(|b| b.shortcut == p).count();
        assert_eq!(count(Shortcut::A, ShortcutPlan::ZeroPad), 2);
        assert_eq!(count(Shortcut::B, ShortcutPlan::Projection), 2);
        assert_eq!(count(Shortcut::C, ShortcutPlan::Projection), 9);
        assert_eq!(
            ModelName::Plain20
                .config()
                .plan()
                .concat()
                .iter()
                .filter(|b| b.shortcut == ShortcutPlan::None)
                .count(),
            9
        );
    }

    #[test]
    fn invalid_configs_are_errors() {
        let basic_dilated = ModelName::Resnet18
            .config()
            .with_replace_stride_with_dilation(vec![false, false, true]);
        assert!(basic_dilated.validate().is_err());
        assert!(ModelName::Resnet18.config().with_num_classes(0).validate().is_err());
        assert!(ModelName::Resnet50
            .config()
            .with_replace_stride_with_dilation(vec![true])
            .validate()
            .is_err());
        assert!("resnet51".parse::<ModelName>().is_err());
        assert_eq!("ResNet50".parse::<ModelName>().unwrap(), ModelName::Resnet50);
    }
}
