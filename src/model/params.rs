//! The one place that maps the burn module to torchvision's state-dict keys and shapes.
//!
//! Loading, saving and listing all walk the model through [`ResNet::visit_params`], so a key
//! is spelled once. Differences from burn's own layout are handled here: BN `weight`/`bias`
//! are burn's `gamma`/`beta`, the fc weight is stored transposed, and torchvision's
//! `downsample.0`/`.1` are our `downsample.conv`/`.bn`.

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::prelude::*;

use super::resnet::ResNet;

/// A tensor slot of the model, seen with torchvision's shape.
pub enum Slot<'a> {
    Conv(&'a mut Param<Tensor<4>>),
    Vector(&'a mut Param<Tensor<1>>),
    /// The fc weight: `[out, in]` in torch, `[in, out]` in burn.
    LinearWeight(&'a mut Param<Tensor<2>>),
    Running(&'a mut RunningState<Tensor<1>>),
    /// BN's `num_batches_tracked`: torchvision saves it; inference never reads it.
    BatchCounter,
}

/// Something that walks every state-dict entry of a model.
pub trait ParamVisitor {
    fn visit(&mut self, key: &str, torch_shape: &[usize], slot: Slot<'_>);
}

fn visit_conv(v: &mut impl ParamVisitor, prefix: &str, c: &mut Conv2d) {
    let shape = c.weight.lazy_shape().dims::<4>();
    v.visit(&format!("{prefix}.weight"), &shape, Slot::Conv(&mut c.weight));
    if let Some(b) = c.bias.as_mut() {
        let shape = b.lazy_shape().dims::<1>();
        v.visit(&format!("{prefix}.bias"), &shape, Slot::Vector(b));
    }
}

fn visit_bn(v: &mut impl ParamVisitor, prefix: &str, b: &mut BatchNorm) {
    let shape = b.gamma.lazy_shape().dims::<1>();
    v.visit(&format!("{prefix}.weight"), &shape, Slot::Vector(&mut b.gamma));
    v.visit(&format!("{prefix}.bias"), &shape, Slot::Vector(&mut b.beta));
    v.visit(
        &format!("{prefix}.running_mean"),
        &shape,
        Slot::Running(&mut b.running_mean),
    );
    v.visit(
        &format!("{prefix}.running_var"),
        &shape,
        Slot::Running(&mut b.running_var),
    );
    v.visit(&format!("{prefix}.num_batches_tracked"), &[], Slot::BatchCounter);
}

impl ResNet {
    /// Visits every entry in torchvision's `state_dict()` order.
    pub fn visit_params(&mut self, v: &mut impl ParamVisitor) {
        visit_conv(v, "conv1", &mut self.conv1);
        visit_bn(v, "bn1", &mut self.bn1);
        for (i, stage) in self.layers.iter_mut().enumerate() {
            for (j, block) in stage.iter_mut().enumerate() {
                let p = format!("layer{}.{j}", i + 1);
                visit_conv(v, &format!("{p}.conv1"), &mut block.conv1);
                visit_bn(v, &format!("{p}.bn1"), &mut block.bn1);
                visit_conv(v, &format!("{p}.conv2"), &mut block.conv2);
                visit_bn(v, &format!("{p}.bn2"), &mut block.bn2);
                if let Some(c) = block.conv3.as_mut() {
                    visit_conv(v, &format!("{p}.conv3"), c);
                }
                if let Some(b) = block.bn3.as_mut() {
                    visit_bn(v, &format!("{p}.bn3"), b);
                }
                if let Some(d) = block.downsample.as_mut() {
                    visit_conv(v, &format!("{p}.downsample.0"), &mut d.conv);
                    visit_bn(v, &format!("{p}.downsample.1"), &mut d.bn);
                }
            }
        }
        let [fin, fout] = self.fc.weight.lazy_shape().dims::<2>();
        v.visit("fc.weight", &[fout, fin], Slot::LinearWeight(&mut self.fc.weight));
        if let Some(b) = self.fc.bias.as_mut() {
            v.visit("fc.bias", &[fout], Slot::Vector(b));
        }
    }

    /// `(key, shape)` of every state-dict entry, in order.
    pub fn state_dict_shapes(&mut self) -> Vec<(String, Vec<usize>)> {
        struct Shapes(Vec<(String, Vec<usize>)>);
        impl ParamVisitor for Shapes {
            fn visit(&mut self, key: &str, shape: &[usize], _: Slot<'_>) {
                self.0.push((key.to_string(), shape.to_vec()));
            }
        }
        let mut s = Shapes(Vec::new());
        self.visit_params(&mut s);
        s.0
    }
}
