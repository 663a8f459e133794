//! Logits equal torchvision's for every model family, on the same weights and inputs.

mod common;

use burn::prelude::*;
use common::{det_state_dict, manifest, max_abs, reference, rel_l2};
use resnet::engine::Kernel;
use resnet::model::{ModelName, ResNetConfig, Shortcut};
use resnet::{weights, ResNet};

fn config_for(case: &str) -> ResNetConfig {
    match case {
        "resnet50_dilated" => ModelName::Resnet50
            .config()
            .with_replace_stride_with_dilation(vec![false, true, true]),
        "resnet20_optB" => ModelName::Resnet20.config().with_shortcut(Shortcut::B),
        "resnet20_optC" => ModelName::Resnet20.config().with_shortcut(Shortcut::C),
        name => name.parse::<ModelName>().expect("model name").config(),
    }
}

fn check(case: &str) {
    let reference = reference();
    let m = manifest();
    let entry = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["case"] == case)
        .expect("case in manifest");
    let dev = resnet::default_device();
    let config = config_for(case);
    let mut model = ResNet::new(&config, &dev).unwrap();
    let sd = det_state_dict(&mut model);
    weights::load_into(&mut model, sd, true, case).unwrap();

    let (shape, x) = &reference[entry["input"].as_str().unwrap()];
    let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, shape[0], shape[1], shape[2]]), &dev);
    let y = model.forward(x).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let want = &reference[&format!("logits/{case}")].1;
    let rel = rel_l2(&y, want);
    println!(
        "{case}: rel L2 {rel:.2e}, max |Δ| {:.2e} (logit rms {:.2})",
        max_abs(&y, want),
        (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt()
    );
    assert!(rel < 1e-4, "{case}: relative L2 error {rel:e} ≥ 1e-4");

    // The fast CPU engine, on the same weights and input, with each kernel this CPU runs
    // (AVX-512 machines: avx512, avx2, portable; AVX2: avx2, portable; aarch64: neon, portable).
    let sd = det_state_dict(&mut model);
    let x = &reference[entry["input"].as_str().unwrap()].1;
    for isa in Kernel::available() {
        let kernel = Kernel::parse(isa.name()).unwrap();
        let engine = resnet::engine::Engine::with_kernel(&config, &sd, 0, kernel).unwrap();
        assert_eq!(engine.isa(), isa);
        let y = engine.forward(x, [1, shape[0], shape[1], shape[2]]).unwrap();
        let rel = rel_l2(&y, want);
        println!(
            "{case} engine ({isa}): rel L2 {rel:.2e}, max |Δ| {:.2e}",
            max_abs(&y, want)
        );
        assert!(rel < 1e-4, "{case} engine ({isa}): relative L2 error {rel:e} ≥ 1e-4");
    }
    assert_eq!(
        entry["params"].as_u64().unwrap(),
        config.complexity(32, 32).params,
        "{case}: parameter count"
    );
}

#[test]
fn basic_block_resnet18() {
    check("resnet18");
}
#[test]
fn bottleneck_resnet50() {
    check("resnet50");
}
#[test]
fn resnext50_32x4d() {
    check("resnext50_32x4d");
}
#[test]
fn wide_resnet50_2() {
    check("wide_resnet50_2");
}
#[test]
fn dilated_resnet50() {
    check("resnet50_dilated");
}
#[test]
fn cifar_resnet20_option_a() {
    check("resnet20");
}
#[test]
fn cifar_resnet20_option_b() {
    check("resnet20_optB");
}
#[test]
fn cifar_resnet20_option_c() {
    check("resnet20_optC");
}
#[test]
fn cifar_plain20() {
    check("plain20");
}
