//! The one place that maps the burn module to torchvision's state-dict keys and shapes.
//!
//! Keys are spelled once, in [`ResNetConfig::param_specs`], from the block plan; loading,
//! saving and listing walk the burn module through [`ResNet::visit_params`], which takes its
//! keys from there, and the CPU engine builds itself from the same list. Differences from burn's own layout are handled here: BN `weight`/`bias`
//! are burn's `gamma`/`beta`, the fc weight is stored transposed, and torchvision's
//! `downsample.0`/`.1` are our `downsample.conv`/`.bn`.

use burn::module::{Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::prelude::*;

use super::config::{ConvShape, ResNetConfig, ShortcutPlan};
use super::resnet::ResNet;

/// What a state-dict entry is to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ConvWeight,
    BnWeight,
    BnBias,
    RunningMean,
    RunningVar,
    /// BN's `num_batches_tracked`: saved by torchvision, read by nothing here.
    BatchCounter,
    FcWeight,
    FcBias,
}

/// One state-dict entry: torchvision's key and shape, and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub key: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl ResNetConfig {
    /// Every state-dict entry in torchvision's order, from the block plan alone: no model is
    /// built. `ResNet::visit_params` walks the same keys (a test holds them equal).
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        let conv = |out: &mut Vec<ParamSpec>, key: String, c: ConvShape| {
            out.push(ParamSpec {
                key: format!("{key}.weight"),
                shape: vec![c.cout, c.cin / c.groups, c.k, c.k],
                role: Role::ConvWeight,
            });
        };
        let bn = |out: &mut Vec<ParamSpec>, key: String, c: usize| {
            for (name, role) in [
                ("weight", Role::BnWeight),
                ("bias", Role::BnBias),
                ("running_mean", Role::RunningMean),
                ("running_var", Role::RunningVar),
            ] {
                out.push(ParamSpec {
                    key: format!("{key}.{name}"),
                    shape: vec![c],
                    role,
                });
            }
            out.push(ParamSpec {
                key: format!("{key}.num_batches_tracked"),
                shape: vec![],
                role: Role::BatchCounter,
            });
        };
        conv(&mut out, "conv1".into(), self.stem_conv());
        bn(&mut out, "bn1".into(), self.stem_width);
        for (i, stage) in self.plan().into_iter().enumerate() {
            for (j, p) in stage.into_iter().enumerate() {
                let pre = format!("layer{}.{j}", i + 1);
                for (n, c) in p.main_convs(self.block).into_iter().enumerate() {
                    conv(&mut out, format!("{pre}.conv{}", n + 1), c);
                    bn(&mut out, format!("{pre}.bn{}", n + 1), c.cout);
                }
                if p.shortcut == ShortcutPlan::Projection {
                    conv(&mut out, format!("{pre}.downsample.0"), p.projection());
                    bn(&mut out, format!("{pre}.downsample.1"), p.out_channels);
                }
            }
        }
        let (f, n) = (self.feature_dim(), self.num_classes);
        out.push(ParamSpec {
            key: "fc.weight".into(),
            shape: vec![n, f],
            role: Role::FcWeight,
        });
        out.push(ParamSpec {
            key: "fc.bias".into(),
            shape: vec![n],
            role: Role::FcBias,
        });
        out
    }

    /// `(key, shape)` of every state-dict entry, in order (see [`ResNetConfig::param_specs`]).
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.param_specs().into_iter().map(|p| (p.key, p.shape)).collect()
    }
}

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

/// The keys of [`ResNetConfig::param_specs`], handed out in order as a network is walked (the
/// burn module here, the CPU engine's builder): the walkers spell no key themselves.
pub struct ParamKeys(std::vec::IntoIter<ParamSpec>);

impl ParamKeys {
    pub fn new(config: &ResNetConfig) -> Self {
        ParamKeys(config.param_specs().into_iter())
    }

    /// The next key, which must have `role`.
    pub fn next(&mut self, role: Role) -> crate::error::Result<String> {
        match self.0.next() {
            Some(p) if p.role == role => Ok(p.key),
            p => Err(crate::error::Error::Config(format!(
                "expected a {role:?} next but the model's parameter list has {:?}",
                p.map(|p| p.key)
            ))),
        }
    }

    /// [`ParamKeys::next`] for the burn module, which follows the same plan as the specs (a
    /// test holds them equal for every preset).
    fn next_of_module(&mut self, role: Role) -> String {
        self.next(role)
            .expect("param_specs() lists every module parameter, in order")
    }
}

fn visit_conv(v: &mut impl ParamVisitor, keys: &mut ParamKeys, c: &mut Conv2d) {
    let shape = c.weight.lazy_shape().dims::<4>();
    v.visit(
        &keys.next_of_module(Role::ConvWeight),
        &shape,
        Slot::Conv(&mut c.weight),
    );
}

fn visit_bn(v: &mut impl ParamVisitor, keys: &mut ParamKeys, b: &mut BatchNorm) {
    let shape = b.gamma.lazy_shape().dims::<1>();
    v.visit(&keys.next_of_module(Role::BnWeight), &shape, Slot::Vector(&mut b.gamma));
    v.visit(&keys.next_of_module(Role::BnBias), &shape, Slot::Vector(&mut b.beta));
    v.visit(
        &keys.next_of_module(Role::RunningMean),
        &shape,
        Slot::Running(&mut b.running_mean),
    );
    v.visit(
        &keys.next_of_module(Role::RunningVar),
        &shape,
        Slot::Running(&mut b.running_var),
    );
    v.visit(&keys.next_of_module(Role::BatchCounter), &[], Slot::BatchCounter);
}

impl ResNet {
    /// Visits every entry in torchvision's `state_dict()` order, with the keys of
    /// [`ResNetConfig::param_specs`].
    pub fn visit_params(&mut self, v: &mut impl ParamVisitor) {
        let mut keys = ParamKeys::new(&self.config);
        visit_conv(v, &mut keys, &mut self.conv1);
        visit_bn(v, &mut keys, &mut self.bn1);
        for stage in self.layers.iter_mut() {
            for block in stage.iter_mut() {
                visit_conv(v, &mut keys, &mut block.conv1);
                visit_bn(v, &mut keys, &mut block.bn1);
                visit_conv(v, &mut keys, &mut block.conv2);
                visit_bn(v, &mut keys, &mut block.bn2);
                if let Some(c) = block.conv3.as_mut() {
                    visit_conv(v, &mut keys, c);
                }
                if let Some(b) = block.bn3.as_mut() {
                    visit_bn(v, &mut keys, b);
                }
                if let Some(d) = block.downsample.as_mut() {
                    visit_conv(v, &mut keys, &mut d.conv);
                    visit_bn(v, &mut keys, &mut d.bn);
                }
            }
        }
        let [fin, fout] = self.fc.weight.lazy_shape().dims::<2>();
        v.visit(
            &keys.next_of_module(Role::FcWeight),
            &[fout, fin],
            Slot::LinearWeight(&mut self.fc.weight),
        );
        if let Some(b) = self.fc.bias.as_mut() {
            v.visit(&keys.next_of_module(Role::FcBias), &[fout], Slot::Vector(b));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelName;

    /// The plan-derived keys and shapes are exactly what the burn module holds, for every model.
    #[test]
    fn param_specs_match_the_burn_module() {
        for &name in ModelName::ALL {
            let config = name.config();
            let mut model = ResNet::new(&config, &crate::default_device()).unwrap();
            assert_eq!(config.state_dict_shapes(), model.state_dict_shapes(), "{name}");
        }
    }
}
