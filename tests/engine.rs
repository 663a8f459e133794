//! The fast CPU engine equals the burn reference for every model family, at batch 1 and 8,
//! on odd input sizes, with both matrix kernels. (Against torchvision: tests/fidelity.rs.)

mod common;

use burn::prelude::*;
use common::{det_state_dict, max_abs, rel_l2};
use resnet::classify::{rows, Logits};
use resnet::engine::{Engine, Kernel};
use resnet::model::{ModelName, ResNetConfig, Shortcut};
use resnet::{Classifier, ResNet, Weights};

fn input(dims: [usize; 4]) -> Vec<f32> {
    let n: usize = dims.iter().product();
    (0..n)
        .map(|i| ((i * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Every packed kernel this CPU runs (AVX-512 machines: avx512 and avx2; AVX2 machines:
/// avx2; aarch64: neon), each forced; the portable one has its own test below. Printed, so a
/// log shows which paths a machine covered.
fn kernels() -> Vec<Kernel> {
    let isas: Vec<_> = Kernel::available().into_iter().filter(|i| i.packed()).collect();
    println!("packed kernels on this CPU: {isas:?}");
    isas.iter().map(|i| Kernel::parse(i.name()).unwrap()).collect()
}

/// Engine vs burn on the same deterministic weights; returns the relative L2 error.
fn compare(name: &str, config: ResNetConfig, dims: [usize; 4], kernel: Kernel) -> f64 {
    let dev = resnet::default_device();
    let mut model = ResNet::new(&config, &dev).unwrap();
    let sd = det_state_dict(&mut model);
    let engine = Engine::with_kernel(&config, &sd, 2, kernel).unwrap();
    resnet::weights::load_into(&mut model, sd, true, name).unwrap();
    let x = input(dims);
    let want: Vec<f32> = rows(
        model
            .forward(Tensor::from_data(TensorData::new(x.clone(), dims), &dev))
            .unwrap(),
    )
    .unwrap()
    .concat();
    let got = engine.forward(&x, dims).unwrap();
    let rel = rel_l2(&got, &want);
    println!(
        "{name} {dims:?} {kernel:?}: rel L2 {rel:.2e}, max |Δ| {:.2e}",
        max_abs(&got, &want)
    );
    assert!(rel < 1e-4, "{name} {dims:?} {kernel:?}: relative L2 error {rel:e}");
    // Features too: the pooled fc input.
    let feats = engine.forward_features(&x, dims).unwrap();
    assert_eq!(feats.len(), dims[0] * config.feature_dim());
    rel
}

#[test]
fn imagenet_families_at_batch_1_and_8_on_odd_sizes() {
    let dilated = ModelName::Resnet50
        .config()
        .with_replace_stride_with_dilation(vec![false, true, true]);
    for (name, config) in [
        ("resnet18", ModelName::Resnet18.config()),
        ("resnet50", ModelName::Resnet50.config()),
        ("resnext50_32x4d", ModelName::Resnext50_32x4d.config()),
        ("wide_resnet50_2", ModelName::WideResnet50_2.config()),
        ("resnet50 dilated", dilated),
    ] {
        for kernel in kernels() {
            compare(name, config.clone(), [1, 3, 225, 257], kernel);
            compare(name, config.clone(), [8, 3, 64, 80], kernel);
        }
    }
    for kernel in kernels() {
        compare("resnet34", ModelName::Resnet34.config(), [8, 3, 97, 131], kernel);
    }
}

#[test]
fn cifar_shortcut_options_and_plain_nets() {
    for (name, config) in [
        ("resnet20 A", ModelName::Resnet20.config()),
        ("resnet20 B", ModelName::Resnet20.config().with_shortcut(Shortcut::B)),
        ("resnet20 C", ModelName::Resnet20.config().with_shortcut(Shortcut::C)),
        ("plain20", ModelName::Plain20.config()),
    ] {
        for kernel in kernels() {
            compare(name, config.clone(), [1, 3, 32, 32], kernel);
            compare(name, config.clone(), [8, 3, 33, 29], kernel);
        }
    }
    let mut grey = ModelName::Resnet20.config();
    grey.in_channels = 1;
    for kernel in kernels() {
        compare("resnet20 grey", grey.clone(), [8, 1, 28, 28], kernel);
    }
}

#[test]
fn portable_kernel_matches_too() {
    compare(
        "resnet18",
        ModelName::Resnet18.config(),
        [2, 3, 129, 97],
        Kernel::Portable,
    );
    compare(
        "resnext50_32x4d",
        ModelName::Resnext50_32x4d.config(),
        [1, 3, 64, 64],
        Kernel::Portable,
    );
    compare(
        "resnet20 A",
        ModelName::Resnet20.config(),
        [8, 3, 32, 32],
        Kernel::Portable,
    );
}

#[test]
fn classifier_runs_on_the_engine_by_default_and_burn_on_request() {
    let w = || Weights::File(common::fixture("resnet20_cifar.pth"));
    let fast = Classifier::new(ModelName::Resnet20, w()).unwrap();
    assert!(fast.engine().is_some() && fast.model().is_none());
    let opts = resnet::classify::ClassifierOptions {
        engine: false,
        ..Default::default()
    };
    let burn = Classifier::build(ModelName::Resnet20, w(), opts).unwrap();
    assert!(burn.engine().is_none() && burn.model().is_some());
    let img = resnet::preprocess::open_image(&common::fixture("chelsea.png"), 1 << 26).unwrap();
    let (a, b) = (
        fast.logits(std::slice::from_ref(&img)).unwrap(),
        burn.logits(&[img]).unwrap(),
    );
    assert!(rel_l2(&a[0], &b[0]) < 1e-5);
    let x = input([3, 3, 32, 32]);
    let (a, b) = (
        fast.logits_nchw(x.clone(), [3, 3, 32, 32]).unwrap(),
        burn.logits_nchw(x, [3, 3, 32, 32]).unwrap(),
    );
    assert_eq!(a.len(), 3);
    assert!(rel_l2(&a.concat(), &b.concat()) < 1e-5);
}

/// Asking for a kernel this CPU lacks is a clear error, from the library and through
/// `RESNET_KERNEL`; forcing one that it has is reported by `resnet bench` and `resnet info`.
#[test]
fn kernels_are_chosen_checked_and_reported() {
    let config = ModelName::Resnet20.config();
    let mut model = ResNet::new(&config, &resnet::default_device()).unwrap();
    let sd = det_state_dict(&mut model);
    let (lacking, name) = [
        (Kernel::Avx512, "avx512"),
        (Kernel::Avx2, "avx2"),
        (Kernel::Neon, "neon"),
    ]
    .into_iter()
    .find(|(k, _)| k.resolve().is_err())
    .expect("no CPU runs both x86 and ARM kernels");
    let err = Engine::with_kernel(&config, &sd, 1, lacking)
        .err()
        .expect("an error")
        .to_string();
    assert!(err.contains(&format!("the {name} kernel needs")), "{err}");
    let out = common::resnet_command()
        .args(["info", "resnet20"])
        .env("RESNET_KERNEL", name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: RESNET_KERNEL={name}: ")) && stderr.lines().count() == 1,
        "{stderr}"
    );
    for isa in Kernel::available() {
        let out = common::resnet_command()
            .args([
                "bench", "--model", "resnet20", "--batch", "1", "--size", "32", "--iters", "1", "--format", "json",
            ])
            .env("RESNET_KERNEL", isa.name())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(row["kernel"], isa.name());
        let out = common::resnet_command()
            .args(["info", "resnet20", "--format", "json"])
            .env("RESNET_KERNEL", isa.name())
            .output()
            .unwrap();
        let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(row["kernel"], isa.name());
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let config = ModelName::Resnet18.config();
    let mut model = ResNet::new(&config, &resnet::default_device()).unwrap();
    let sd = det_state_dict(&mut model);
    let e = Engine::new(&config, &sd, 1).unwrap();
    assert!(
        e.forward(&input([1, 1, 64, 64]), [1, 1, 64, 64]).is_err(),
        "wrong channel count"
    );
    assert!(e.forward(&[0.0; 10], [1, 3, 64, 64]).is_err(), "too few values");
    assert!(e.forward(&input([1, 3, 8, 8]), [1, 3, 8, 8]).is_err(), "too small");
    assert!(e.forward(&[], [0, 3, 64, 64]).unwrap().is_empty(), "an empty batch");
    // A shape whose activations would not fit is refused before anything is allocated.
    let err = e.forward(&[], [64, 3, 20_000, 20_000]).expect_err("too big");
    assert!(err.to_string().contains("GB of activations"), "{err}");
    // Then a good call still works (the workspace is re-planned per shape).
    assert_eq!(e.forward(&input([2, 3, 64, 64]), [2, 3, 64, 64]).unwrap().len(), 2000);
    let mut missing = sd.clone();
    missing.remove("layer2.0.bn1.running_var");
    let err = Engine::new(&config, &missing, 1).err().expect("missing key");
    assert!(err.to_string().contains("layer2.0.bn1.running_var"), "{err}");
}
