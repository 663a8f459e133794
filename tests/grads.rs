//! Each training op, forward and backward, against PyTorch: `tests/fixtures/grads.safetensors`
//! (written by tools/torch_reference/make_grad_fixtures.py). The loss is `sum(y * g)` for a
//! fixed upstream gradient `g`, so the input and weight gradients are PyTorch's exactly.
//! The ops are the model's own layers (`resnet::model::layers`) on the autodiff device.

mod common;

use std::collections::BTreeMap;

use burn::module::{Param, RunningState};
use burn::prelude::*;
use common::max_abs;
use resnet::engine::grad::{self, TrainConv};
use resnet::engine::{nchw_to_nhwc, nhwc_to_nchw, AlignedVec, Kernel, Shape};
use resnet::model::layers;
use resnet::train::native::ops;

type Fixtures = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn fixtures() -> (Fixtures, serde_json::Value) {
    let sd = resnet::weights::read_state_dict(&common::fixture("grads.safetensors")).expect("grads fixture");
    let t = sd
        .into_iter()
        .map(|(k, t)| match t.values {
            resnet::weights::Values::F32(v) => (k, (t.shape, v)),
            other => panic!("{k}: expected f32, got {other:?}"),
        })
        .collect();
    let manifest = serde_json::from_str(&std::fs::read_to_string(common::fixture("grads.json")).unwrap()).unwrap();
    (t, manifest)
}

fn cases(m: &serde_json::Value, op: &str) -> Vec<serde_json::Value> {
    let v: Vec<_> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["op"] == op)
        .cloned()
        .collect();
    assert!(!v.is_empty(), "no {op} cases in grads.json");
    v
}

struct Case<'a> {
    name: String,
    t: &'a Fixtures,
    dev: Device,
}

impl Case<'_> {
    fn values(&self, k: &str) -> &(Vec<usize>, Vec<f32>) {
        let key = format!("{}/{k}", self.name);
        self.t.get(&key).unwrap_or_else(|| panic!("{key} missing"))
    }

    fn tensor<const D: usize>(&self, k: &str) -> Tensor<D> {
        let (shape, v) = self.values(k);
        let dims: [usize; D] = shape.clone().try_into().expect("rank");
        Tensor::from_data(TensorData::new(v.clone(), dims), &self.dev)
    }

    /// `x` as a leaf that collects its gradient.
    fn input<const D: usize>(&self, k: &str) -> Tensor<D> {
        self.tensor::<D>(k).require_grad()
    }

    /// Asserts `got` is PyTorch's `k` within `tol` (max abs, relative to its largest value).
    fn check<const D: usize>(&self, k: &str, got: Tensor<D>, tol: f32) {
        let (shape, _) = self.values(k);
        assert_eq!(&got.dims().to_vec(), shape, "{}/{k}: shape", self.name);
        let got = got.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        self.check_values(k, &got, tol);
    }

    /// Asserts plain values are PyTorch's `k` within `tol` (max abs, relative to its largest
    /// value).
    fn check_values(&self, k: &str, got: &[f32], tol: f32) {
        let (_, want) = self.values(k);
        assert_eq!(got.len(), want.len(), "{}/{k}: length", self.name);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = max_abs(got, want) / scale;
        assert!(
            err <= tol,
            "{}/{k}: max abs error {err:e} (relative to {scale}) > {tol:e}",
            self.name
        );
    }

    /// `sum(y * g)`, the loss whose gradients the fixture holds.
    fn loss<const D: usize>(&self, y: Tensor<D>) -> burn::tensor::Gradients {
        (y * self.tensor::<D>("g")).sum().backward()
    }
}

fn setup<'a>(t: &'a Fixtures, c: &serde_json::Value) -> Case<'a> {
    Case {
        name: c["name"].as_str().unwrap().to_string(),
        t,
        dev: resnet::default_device().autodiff(),
    }
}

#[test]
fn convolutions_forward_and_backward_match_pytorch() {
    let (t, m) = fixtures();
    let c = cases(&m, "conv2d");
    // Strided, 1×1, the 7×7 stem, grouped and dilated.
    assert!(c.len() >= 6);
    for c in c {
        let case = setup(&t, &c);
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let w0: Tensor<4> = case.tensor("w");
        let [cout, cin_g, k, _] = w0.dims();
        let shape = resnet::model::ConvShape {
            dilation: u("dilation"),
            groups: u("groups"),
            ..resnet::model::ConvShape::new(cin_g * u("groups"), cout, k, u("stride"))
        };
        let mut conv = layers::conv(shape, &case.dev);
        assert_eq!(
            conv.padding,
            burn::nn::PaddingConfig2d::Explicit(u("padding"), u("padding"), u("padding"), u("padding"))
        );
        conv.weight = Param::from_tensor(case.input("w"));
        let x: Tensor<4> = case.input("x");
        let y = conv.forward(x.clone());
        case.check("y", y.clone(), 1e-5);
        let grads = case.loss(y);
        case.check("dx", x.grad(&grads).expect("dx"), 1e-5);
        case.check("dw", conv.weight.val().grad(&grads).expect("dw"), 1e-5);
    }
}

#[test]
fn batch_norm_in_train_mode_matches_pytorch() {
    let (t, m) = fixtures();
    for c in cases(&m, "batch_norm_train") {
        let case = setup(&t, &c);
        let x: Tensor<4> = case.input("x");
        let mut bn = layers::bn(x.dims()[1], false, &case.dev);
        bn.gamma = Param::from_tensor(case.input("gamma"));
        bn.beta = Param::from_tensor(case.input("beta"));
        bn.running_mean = RunningState::new(case.tensor("running_mean0"));
        bn.running_var = RunningState::new(case.tensor("running_var0"));
        let y = layers::batch_norm(&bn, x.clone());
        case.check("y", y.clone(), 1e-5);
        let grads = case.loss(y);
        case.check("dx", x.grad(&grads).expect("dx"), 1e-5);
        case.check("dgamma", bn.gamma.val().grad(&grads).expect("dgamma"), 1e-5);
        case.check("dbeta", bn.beta.val().grad(&grads).expect("dbeta"), 1e-5);
        // The running statistics moved by momentum 0.1 towards the batch's (unbiased) ones.
        case.check("running_mean", bn.running_mean.value_sync(), 1e-6);
        case.check("running_var", bn.running_var.value_sync(), 1e-6);
    }
}

#[test]
fn max_pool_backward_matches_pytorch_including_ties() {
    let (t, m) = fixtures();
    let c = cases(&m, "max_pool2d");
    assert!(c.iter().any(|c| c["name"].as_str().unwrap().ends_with("ties")));
    for c in c {
        let case = setup(&t, &c);
        let x: Tensor<4> = case.input("x");
        let y = layers::stem_pool().forward(x.clone());
        case.check("y", y.clone(), 0.0);
        let grads = case.loss(y);
        case.check("dx", x.grad(&grads).expect("dx"), 1e-6);
    }
}

#[test]
fn option_a_shortcut_backward_matches_pytorch() {
    let (t, m) = fixtures();
    for c in cases(&m, "zero_pad_shortcut") {
        let case = setup(&t, &c);
        let x: Tensor<4> = case.input("x");
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let y = layers::zero_pad_shortcut(x.clone(), u("stride"), u("out_channels"));
        case.check("y", y.clone(), 0.0);
        let grads = case.loss(y);
        case.check("dx", x.grad(&grads).expect("dx"), 0.0);
    }
}

#[test]
fn pooled_head_backward_matches_pytorch() {
    let (t, m) = fixtures();
    for c in cases(&m, "avgpool_linear") {
        let case = setup(&t, &c);
        let x: Tensor<4> = case.input("x");
        let w: Tensor<2> = case.tensor("w");
        let [out, inp] = w.dims();
        // burn's Linear stores `[in, out]`; the fixture holds PyTorch's `[out, in]`.
        let mut fc = burn::nn::LinearConfig::new(inp, out).init(&case.dev);
        fc.weight = Param::from_tensor(w.transpose().require_grad());
        fc.bias = Some(Param::from_tensor(case.input("b")));
        let [n, ch, _, _] = x.dims();
        // As ResNet::forward_features pools, then fc.
        let y = fc.forward(x.clone().mean_dim(3).mean_dim(2).reshape([n, ch]));
        case.check("y", y.clone(), 1e-6);
        let grads = case.loss(y);
        case.check("dx", x.grad(&grads).expect("dx"), 1e-6);
        case.check("dw", fc.weight.val().grad(&grads).expect("dw").transpose(), 1e-6);
        let db = fc.bias.as_ref().map(|b| b.val().grad(&grads).expect("db"));
        case.check("db", db.expect("fc has a bias"), 1e-6);
    }
}

/// NHWC values of an NCHW fixture tensor, and its shape.
fn nhwc(v: &[f32], shape: &[usize]) -> (Vec<f32>, Shape) {
    let s = Shape {
        n: shape[0],
        c: shape[1],
        h: shape[2],
        w: shape[3],
    };
    let mut out = vec![0f32; v.len()];
    nchw_to_nhwc(v, s, &mut out);
    (out, s)
}

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap()
}

/// The CPU engine's training convs (`engine::grad`), on every packed kernel this CPU runs.
#[test]
fn native_convolutions_forward_and_backward_match_pytorch() {
    let (t, m) = fixtures();
    let isas: Vec<_> = Kernel::available().into_iter().filter(|i| i.packed()).collect();
    assert!(!isas.is_empty() || cfg!(not(any(target_arch = "x86_64", target_arch = "aarch64"))));
    let pool = pool();
    for isa in isas {
        for c in cases(&m, "conv2d") {
            let case = setup(&t, &c);
            let u = |k: &str| c[k].as_u64().unwrap() as usize;
            let (wshape, w) = case.values("w");
            let (xshape, x) = case.values("x");
            let shape = resnet::model::ConvShape {
                dilation: u("dilation"),
                groups: u("groups"),
                ..resnet::model::ConvShape::new(xshape[1], wshape[0], wshape[2], u("stride"))
            };
            let conv = TrainConv::new(w, shape, isa);
            let (x, xs) = nhwc(x, xshape);
            let ys = grad::out_shape(shape, xs);
            let mut y = vec![0f32; ys.len()];
            let mut scratch = AlignedVec::default();
            conv.forward(&x, xs, &mut y, &pool, &mut scratch);
            case.check_values("y", &nhwc_to_nchw(&y, ys), 1e-5);
            let (gshape, g) = case.values("g");
            let (g, _) = nhwc(g, gshape);
            let mut dx = vec![f32::NAN; xs.len()];
            conv.input_grad(&g, xs, &mut dx, &pool, &mut scratch);
            case.check_values("dx", &nhwc_to_nchw(&dx, xs), 1e-5);
            case.check_values("dw", &conv.weight_grad(&x, xs, &g, &pool), 1e-5);
        }
    }
}

/// BatchNorm (train mode), the max pool and option A's shortcut of `train::native::ops`.
#[test]
fn native_batch_norm_pool_and_shortcut_match_pytorch() {
    let (t, m) = fixtures();
    let pool = pool();
    for c in cases(&m, "batch_norm_train") {
        let case = setup(&t, &c);
        let (xshape, x) = case.values("x");
        let (mut z, xs) = nhwc(x, xshape);
        let (gamma, beta) = (&case.values("gamma").1, &case.values("beta").1);
        let (mut rm, mut rv) = (
            case.values("running_mean0").1.clone(),
            case.values("running_var0").1.clone(),
        );
        let mut y = vec![0f32; z.len()];
        let saved = ops::bn_forward(&z, xs.c, gamma, beta, (&mut rm, &mut rv), None, false, &mut y, &pool);
        case.check_values("y", &nhwc_to_nchw(&y, xs), 1e-5);
        case.check_values("running_mean", &rm, 1e-6);
        case.check_values("running_var", &rv, 1e-6);
        let (gshape, g) = case.values("g");
        let (mut g, _) = nhwc(g, gshape);
        let (dgamma, dbeta) = ops::bn_backward(&mut z, xs.c, &saved, gamma, &mut g, None, &pool);
        case.check_values("dx", &nhwc_to_nchw(&z, xs), 1e-5);
        case.check_values("dgamma", &dgamma, 1e-5);
        case.check_values("dbeta", &dbeta, 1e-5);
    }
    for c in cases(&m, "max_pool2d") {
        let case = setup(&t, &c);
        let (xshape, x) = case.values("x");
        let (x, xs) = nhwc(x, xshape);
        // Stale values in the buffers, as the training step leaves them.
        let (mut y, mut arg) = (vec![f32::NAN; xs.max_pooled().len()], vec![7u8; 3]);
        let ys = ops::max_pool_forward(&x, xs, &mut y, &mut arg, &pool);
        case.check_values("y", &nhwc_to_nchw(&y, ys), 0.0);
        let (gshape, g) = case.values("g");
        let (g, _) = nhwc(g, gshape);
        let mut dx = vec![f32::NAN; xs.len()];
        ops::max_pool_backward(&g, &arg, ys, xs, &mut dx, &pool);
        case.check_values("dx", &nhwc_to_nchw(&dx, xs), 1e-6);
    }
    for c in cases(&m, "zero_pad_shortcut") {
        let case = setup(&t, &c);
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (xshape, x) = case.values("x");
        let (x, xs) = nhwc(x, xshape);
        let (gshape, g) = case.values("g");
        let (g, ys) = nhwc(g, gshape);
        assert_eq!(ys.c, u("out_channels"));
        let mut y = vec![0f32; ys.len()];
        resnet::engine::zero_pad_shortcut(&x, xs, u("stride"), ys.c, &mut y);
        case.check_values("y", &nhwc_to_nchw(&y, ys), 0.0);
        let mut dx = vec![0f32; xs.len()];
        ops::zero_pad_backward(&g, ys, u("stride"), &mut dx, xs);
        case.check_values("dx", &nhwc_to_nchw(&dx, xs), 0.0);
    }
}
