//! ONNX export: a standard opset-17 graph of any zoo model, with a dynamic batch axis, input
//! `input` `[N, C, H, W]` and output `logits` `[N, classes]`.
//!
//! BatchNorm is folded into the convolution before it (eval-mode BN is an affine map per
//! channel), so the graph holds only Conv, Relu, Add, MaxPool, GlobalAveragePool, Flatten and
//! Gemm, plus Slice and Pad for the option-A shortcut. The protobuf is written with `prost`
//! (maintained, pure Rust); the messages below are the subset of `onnx.proto` (ONNX 1.17+,
//! IR version 8) that a model needs, with its field numbers. A hand-declared subset needs no
//! `protoc` at build time, which prost-build would.

use std::path::Path;

use prost::Message;

use super::{write_atomic, StateDict, Values};
use crate::error::{Error, Result};
use crate::model::{ConvShape, ParamKeys, ResNetConfig, Role, ShortcutPlan, Stem};

/// The opset the graph is written for.
pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17 (ONNX 1.12 and later read it).
const IR_VERSION: i64 = 8;
/// BatchNorm's epsilon in every torchvision ResNet.
const BN_EPS: f32 = 1e-5;

/// `onnx.proto` messages (the fields this exporter writes), numbered as in the spec.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub producer_version: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub doc_string: Option<String>,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        #[prost(message, repeated, tag = "14")]
        pub metadata_props: Vec<StringStringEntryProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    /// `AttributeProto.AttributeType`: INT = 2, INTS = 7, FLOAT = 1.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub f: Option<f32>,
        #[prost(int64, optional, tag = "3")]
        pub i: Option<i64>,
        #[prost(int64, repeated, packed = "false", tag = "8")]
        pub ints: Vec<i64>,
        #[prost(int32, optional, tag = "20")]
        pub r#type: Option<i32>,
    }

    /// `TensorProto.DataType`: FLOAT = 1, INT64 = 7.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, packed = "false", tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, optional, tag = "2")]
        pub data_type: Option<i32>,
        /// Read on import (some exporters store floats here instead of `raw_data`).
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, optional, tag = "8")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "9")]
        pub raw_data: Option<Vec<u8>>,
        /// `location`, `offset`, `length` of values in an external file (read on import).
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<StringStringEntryProto>,
        /// 1: the values live in an external file.
        #[prost(int32, optional, tag = "14")]
        pub data_location: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TypeTensor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeTensor {
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::*;

const FLOAT: i32 = 1;
const INT64: i32 = 7;

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(2),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(7),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(1),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            }),
        }),
    }
}

fn dim(v: usize) -> Dimension {
    Dimension {
        dim_value: Some(v as i64),
        dim_param: None,
    }
}

fn batch_dim() -> Dimension {
    Dimension {
        dim_value: None,
        dim_param: Some("batch".into()),
    }
}

/// Builds the graph node by node, naming each value.
struct Graph<'a> {
    sd: &'a StateDict,
    keys: ParamKeys,
    nodes: Vec<NodeProto>,
    init: Vec<TensorProto>,
    counter: usize,
}

impl Graph<'_> {
    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute: attrs,
        });
        out
    }

    fn constant_f32(&mut self, name: String, dims: &[usize], v: &[f32]) -> String {
        self.init.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(FLOAT),
            name: Some(name.clone()),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    fn constant_i64(&mut self, what: &str, v: &[i64]) -> String {
        let name = self.fresh(what);
        self.init.push(TensorProto {
            dims: vec![v.len() as i64],
            data_type: Some(INT64),
            name: Some(name.clone()),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    fn tensor(&self, key: &str, len: usize) -> Result<&[f32]> {
        match self.sd.get(key).map(|t| &t.values) {
            Some(Values::F32(v)) if v.len() == len => Ok(v),
            Some(_) => Err(Error::Config(format!("`{key}` does not have {len} float values"))),
            None => Err(Error::Config(format!(
                "the weights have no `{key}`; is this the right --model?"
            ))),
        }
    }

    /// The next conv with its BatchNorm folded in: `Conv(x, W', b')`.
    fn conv_bn(&mut self, x: &str, c: ConvShape) -> Result<String> {
        let ConvShape {
            cin,
            cout,
            k,
            stride,
            dilation,
            groups,
        } = c;
        let wkey = self.keys.next(Role::ConvWeight)?;
        let per = cin / groups * k * k;
        let w = self.tensor(&wkey, cout * per)?.to_vec();
        let mut stats = Vec::with_capacity(4);
        for role in [Role::BnWeight, Role::BnBias, Role::RunningMean, Role::RunningVar] {
            let key = self.keys.next(role)?;
            stats.push(self.tensor(&key, cout)?.to_vec());
        }
        self.keys.next(Role::BatchCounter)?;
        let (gamma, beta, mean, var) = (&stats[0], &stats[1], &stats[2], &stats[3]);
        let mut wf = w;
        let mut bias = vec![0f32; cout];
        for o in 0..cout {
            let s = gamma[o] / (var[o] + BN_EPS).sqrt();
            wf[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= s);
            bias[o] = beta[o] - mean[o] * s;
        }
        let stem = wkey.trim_end_matches(".weight").to_string();
        let wn = self.constant_f32(format!("{stem}.weight"), &[cout, cin / groups, k, k], &wf);
        let bn = self.constant_f32(format!("{stem}.bias"), &[cout], &bias);
        let pad = c.pad() as i64;
        let attrs = vec![
            attr_ints("kernel_shape", &[k as i64, k as i64]),
            attr_ints("strides", &[stride as i64, stride as i64]),
            attr_ints("pads", &[pad, pad, pad, pad]),
            attr_ints("dilations", &[dilation as i64, dilation as i64]),
            attr_int("group", groups as i64),
        ];
        Ok(self.node("Conv", &[x, &wn, &bn], attrs))
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    /// Option A: `x[:, :, ::s, ::s]`, then zero channels, half before and half after.
    fn zero_pad_shortcut(&mut self, x: &str, stride: usize, cin: usize, cout: usize) -> String {
        let mut h = x.to_string();
        if stride > 1 {
            let starts = self.constant_i64("starts", &[0, 0]);
            let ends = self.constant_i64("ends", &[i64::MAX, i64::MAX]);
            let axes = self.constant_i64("axes", &[2, 3]);
            let steps = self.constant_i64("steps", &[stride as i64, stride as i64]);
            h = self.node("Slice", &[&h, &starts, &ends, &axes, &steps], vec![]);
        }
        let extra = cout.saturating_sub(cin) as i64;
        if extra > 0 {
            let (before, after) = (extra / 2, extra - extra / 2);
            let pads = self.constant_i64("pads", &[0, before, 0, 0, 0, after, 0, 0]);
            h = self.node("Pad", &[&h, &pads], vec![]);
        }
        h
    }
}

/// The model as ONNX bytes: `config`'s network with the weights in `sd` (torchvision keys).
pub fn to_onnx(config: &ResNetConfig, sd: &StateDict, name: &str) -> Result<Vec<u8>> {
    config.validate()?;
    let mut g = Graph {
        sd,
        keys: ParamKeys::new(config),
        nodes: Vec::new(),
        init: Vec::new(),
        counter: 0,
    };
    let mut h = g.conv_bn("input", config.stem_conv())?;
    h = g.relu(&h);
    if config.stem == Stem::ImageNet {
        let attrs = vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ];
        h = g.node("MaxPool", &[&h], attrs);
    }
    for p in config.plan().into_iter().flatten() {
        let x = h.clone();
        let mut y = x.clone();
        for (i, c) in p.main_convs(config.block).into_iter().enumerate() {
            if i > 0 {
                y = g.relu(&y);
            }
            y = g.conv_bn(&y, c)?;
        }
        let shortcut = match p.shortcut {
            ShortcutPlan::None => None,
            ShortcutPlan::Identity => Some(x),
            ShortcutPlan::Projection => Some(g.conv_bn(&x, p.projection())?),
            ShortcutPlan::ZeroPad => Some(g.zero_pad_shortcut(&x, p.stride, p.in_channels, p.out_channels)),
        };
        if let Some(s) = shortcut {
            y = g.node("Add", &[&y, &s], vec![]);
        }
        h = g.relu(&y);
    }
    h = g.node("GlobalAveragePool", &[&h], vec![]);
    h = g.node("Flatten", &[&h], vec![attr_int("axis", 1)]);
    let (f, classes) = (config.feature_dim(), config.num_classes);
    let wkey = g.keys.next(Role::FcWeight)?;
    let fcw = g.tensor(&wkey, classes * f)?.to_vec();
    let bkey = g.keys.next(Role::FcBias)?;
    let fcb = g.tensor(&bkey, classes)?.to_vec();
    let w = g.constant_f32("fc.weight".into(), &[classes, f], &fcw);
    let b = g.constant_f32("fc.bias".into(), &[classes], &fcb);
    let attrs = vec![attr_float("alpha", 1.0), attr_float("beta", 1.0), attr_int("transB", 1)];
    let logits = g.node("Gemm", &[&h, &w, &b], attrs);
    // The graph's output is called `logits`: rename the last node's output.
    if let Some(last) = g.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    let _ = logits;
    let input = value_info(
        "input",
        &[
            batch_dim(),
            dim(config.in_channels),
            dim_param("height"),
            dim_param("width"),
        ],
    );
    let output = value_info("logits", &[batch_dim(), dim(classes)]);
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("resnet".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("{name}: BatchNorm folded into the convolutions")),
        graph: Some(GraphProto {
            node: g.nodes,
            name: Some(name.into()),
            initializer: g.init,
            input: vec![input],
            output: vec![output],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        metadata_props: vec![StringStringEntryProto {
            key: Some("model".into()),
            value: Some(name.into()),
        }],
    };
    Ok(model.encode_to_vec())
}

fn dim_param(name: &str) -> Dimension {
    Dimension {
        dim_value: None,
        dim_param: Some(name.into()),
    }
}

/// Writes [`to_onnx`]'s bytes to `path` atomically.
pub fn write_onnx(path: &Path, config: &ResNetConfig, sd: &StateDict, name: &str) -> Result<()> {
    write_atomic(path, &to_onnx(config, sd, name)?)
}
