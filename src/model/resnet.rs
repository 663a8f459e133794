//! The burn module: one definition for inference and training, on any burn device.
//!
//! Field names follow torchvision's state-dict keys (`layer1.0.conv1.weight`); the
//! mapping itself lives in [`super::params`].

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::config::{BlockKind, BlockPlan, ConvShape, ResNetConfig, ShortcutPlan, Stem};
use crate::error::{Error, Result};

/// A bias-free `k × k` convolution padded to keep the size at stride 1, as every ResNet conv.
/// PyTorch's conv default is kaiming_normal(fan_out, relu), as torchvision's ResNet init.
pub fn conv(c: ConvShape, dev: &Device) -> Conv2d {
    let pad = c.pad();
    Conv2dConfig::new([c.cin, c.cout], [c.k, c.k])
        .with_stride([c.stride, c.stride])
        .with_dilation([c.dilation, c.dilation])
        .with_groups(c.groups)
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(dev)
}

/// BatchNorm with PyTorch's defaults: eps 1e-5, momentum 0.1.
pub fn bn(c: usize, zero: bool, dev: &Device) -> BatchNorm {
    let mut b = BatchNormConfig::new(c).with_epsilon(1e-5).with_momentum(0.1).init(dev);
    if zero {
        b.gamma = b.gamma.map(|g| g.zeros_like());
    }
    b
}

/// BatchNorm as PyTorch runs it: batch statistics in training (on an autodiff device, layer
/// not frozen), with the running variance updated from the *unbiased* batch variance
/// (burn's own BatchNorm uses the biased one); running statistics in evaluation.
pub fn batch_norm(b: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if !(x.device().is_autodiff() && b.training.is_enabled()) {
        return b.forward(x);
    }
    let [n, _, h, w] = x.dims();
    let count = (n * h * w) as f64;
    let r = burn::tensor::module::batch_norm_train(x, b.gamma.val(), b.beta.val(), b.epsilon);
    let dev = r.mean.device();
    let unbiased = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
    let m = b.momentum;
    let mean = b
        .running_mean
        .value_sync()
        .to_device(&dev)
        .mul_scalar(1.0 - m)
        .add(r.mean.mul_scalar(m));
    let var = b
        .running_var
        .value_sync()
        .to_device(&dev)
        .mul_scalar(1.0 - m)
        .add(r.variance.mul_scalar(m * unbiased));
    b.running_mean.update(mean.detach());
    b.running_var.update(var.detach());
    r.output
}

/// The projection shortcut (`downsample.0` conv, `downsample.1` BN).
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// A basic or bottleneck block; `conv3`/`bn3` exist only for bottlenecks.
#[derive(Module, Debug)]
pub struct Block {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    pub downsample: Option<Downsample>,
    #[module(skip)]
    pub plan: BlockPlan,
}

impl Block {
    fn new(kind: BlockKind, p: BlockPlan, zero_init: bool, dev: &Device) -> Self {
        let downsample = (p.shortcut == ShortcutPlan::Projection).then(|| Downsample {
            conv: conv(p.projection(), dev),
            bn: bn(p.out_channels, false, dev),
        });
        match (kind, p.main_convs(kind).as_slice()) {
            (BlockKind::Basic, &[c1, c2]) => Block {
                conv1: conv(c1, dev),
                bn1: bn(p.width, false, dev),
                conv2: conv(c2, dev),
                bn2: bn(p.out_channels, zero_init, dev),
                conv3: None,
                bn3: None,
                downsample,
                plan: p,
            },
            (_, &[c1, c2, c3]) => Block {
                conv1: conv(c1, dev),
                bn1: bn(p.width, false, dev),
                conv2: conv(c2, dev),
                bn2: bn(p.width, false, dev),
                conv3: Some(conv(c3, dev)),
                bn3: Some(bn(p.out_channels, zero_init, dev)),
                downsample,
                plan: p,
            },
            _ => unreachable!("main_convs gives two convs for a basic block, three for a bottleneck"),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(batch_norm(&self.bn1, self.conv1.forward(x.clone())));
        let mut h = batch_norm(&self.bn2, self.conv2.forward(h));
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            h = batch_norm(b3, c3.forward(relu(h)));
        }
        let shortcut = match self.plan.shortcut {
            ShortcutPlan::None => return relu(h),
            ShortcutPlan::Identity => x,
            ShortcutPlan::Projection => match &self.downsample {
                Some(d) => batch_norm(&d.bn, d.conv.forward(x)),
                None => unreachable!("a projection block always has a downsample"),
            },
            ShortcutPlan::ZeroPad => zero_pad_shortcut(x, self.plan.stride, self.plan.out_channels),
        };
        relu(h + shortcut)
    }
}

/// The ImageNet stem's 3 × 3 max pool, stride 2, padding 1.
pub fn stem_pool() -> MaxPool2d {
    MaxPool2dConfig::new([3, 3])
        .with_strides([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init()
}

/// Option A: `x[:, :, ::s, ::s]`, then zero channels split half before, half after.
pub fn zero_pad_shortcut(x: Tensor<4>, stride: usize, out_channels: usize) -> Tensor<4> {
    let x = if stride > 1 {
        x.slice(burn::tensor::s![.., .., ..;stride as isize, ..;stride as isize])
    } else {
        x
    };
    let [n, c, h, w] = x.dims();
    let extra = out_channels.saturating_sub(c);
    if extra == 0 {
        return x;
    }
    let dev = x.device();
    let before = Tensor::<4>::zeros([n, extra / 2, h, w], &dev);
    let after = Tensor::<4>::zeros([n, extra - extra / 2, h, w], &dev);
    Tensor::cat(vec![before, x, after], 1)
}

/// A ResNet for any configuration of the zoo.
#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub maxpool: Option<MaxPool2d>,
    /// `layer1`, `layer2`, … in torchvision's naming.
    pub layers: Vec<Vec<Block>>,
    pub fc: Linear,
    #[module(skip)]
    pub config: ResNetConfig,
}

impl ResNet {
    /// Builds the network with PyTorch's default initialisation.
    pub fn new(config: &ResNetConfig, dev: &Device) -> Result<Self> {
        config.validate()?;
        let (conv1, maxpool) = match config.stem {
            Stem::ImageNet => (conv(config.stem_conv(), dev), Some(stem_pool())),
            Stem::Cifar => (conv(config.stem_conv(), dev), None),
        };
        let layers = config
            .plan()
            .into_iter()
            .map(|stage| {
                stage
                    .into_iter()
                    .map(|p| Block::new(config.block, p, config.zero_init_residual, dev))
                    .collect()
            })
            .collect();
        let fc = LinearConfig::new(config.feature_dim(), config.num_classes).init(dev);
        Ok(ResNet {
            conv1,
            bn1: bn(config.stem_width, false, dev),
            maxpool,
            layers,
            fc,
            config: config.clone(),
        })
    }

    fn check_input(&self, x: &Tensor<4>) -> Result<()> {
        let c = x.dims()[1];
        if c != self.config.in_channels {
            return Err(Error::InputShape {
                got: c,
                want: self.config.in_channels,
            });
        }
        Ok(())
    }

    fn stem(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(batch_norm(&self.bn1, self.conv1.forward(x)));
        match &self.maxpool {
            Some(p) => p.forward(h),
            None => h,
        }
    }

    /// The output of every stage (`layer1` … `layerN`), for detection or segmentation backbones.
    pub fn forward_stages(&self, x: Tensor<4>) -> Result<Vec<Tensor<4>>> {
        self.check_input(&x)?;
        let mut h = self.stem(x);
        let mut outs = Vec::with_capacity(self.layers.len());
        for stage in &self.layers {
            for block in stage {
                h = block.forward(h);
            }
            outs.push(h.clone());
        }
        Ok(outs)
    }

    /// The output of stage `layerK` (`k` from 1), e.g. Grad-CAM's target layer.
    pub fn forward_to_stage(&self, x: Tensor<4>, k: usize) -> Result<Tensor<4>> {
        self.check_input(&x)?;
        self.check_stage(k)?;
        let mut h = self.stem(x);
        for block in self.layers[..k].iter().flatten() {
            h = block.forward(h);
        }
        Ok(h)
    }

    /// Logits from stage `layerK`'s output `h`: the rest of the network.
    pub fn forward_from_stage(&self, mut h: Tensor<4>, k: usize) -> Result<Tensor<2>> {
        self.check_stage(k)?;
        for block in self.layers[k..].iter().flatten() {
            h = block.forward(h);
        }
        let [n, c, _, _] = h.dims();
        Ok(self.fc.forward(h.mean_dim(3).mean_dim(2).reshape([n, c])))
    }

    fn check_stage(&self, k: usize) -> Result<()> {
        if k == 0 || k > self.layers.len() {
            return Err(Error::Usage(format!(
                "this model has layer1 to layer{}; there is no layer{k}",
                self.layers.len()
            )));
        }
        Ok(())
    }

    /// Global-average-pooled features `[N, feature_dim]`: the fc input.
    pub fn forward_features(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        self.check_input(&x)?;
        let mut h = self.stem(x);
        for block in self.layers.iter().flatten() {
            h = block.forward(h);
        }
        let [n, c, _, _] = h.dims();
        Ok(h.mean_dim(3).mean_dim(2).reshape([n, c]))
    }

    /// Logits `[N, num_classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        Ok(self.fc.forward(self.forward_features(x)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelName;

    #[test]
    fn zero_init_residual_zeroes_the_last_bn_of_each_block() {
        let dev = crate::default_device();
        let c = ModelName::Resnet50.config().with_zero_init_residual(true);
        let m = ResNet::new(&c, &dev).unwrap();
        for b in m.layers.iter().flatten() {
            let g = b.bn3.as_ref().unwrap().gamma.val().abs().sum().into_scalar::<f32>();
            assert_eq!(g, 0.0);
            assert!(b.bn2.gamma.val().sum().into_scalar::<f32>() > 0.0);
        }
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let dev = crate::default_device();
        let m = ResNet::new(&ModelName::Resnet20.config().with_in_channels(1), &dev).unwrap();
        let x = Tensor::<4>::zeros([1, 3, 32, 32], &dev);
        assert!(matches!(m.forward(x), Err(Error::InputShape { got: 3, want: 1 })));
        let y = m.forward(Tensor::<4>::zeros([2, 1, 28, 28], &dev)).unwrap();
        assert_eq!(y.dims(), [2, 10]);
    }
}
