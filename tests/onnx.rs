//! `resnet convert … OUT.onnx`: the exported graph, loaded by a second runtime (`tract-onnx`,
//! pure Rust), gives our engine's logits within 1e-4 relative L2, at batch 1 and 3, for a
//! basic, a bottleneck, a ResNeXt, a dilated and CIFAR option-A/B models.
#![cfg(target_arch = "x86_64")]

mod common;

use common::{det_state_dict, rel_l2, resnet_command};
use resnet::engine::Engine;
use resnet::{weights, ModelName, ResNet};
use tract_onnx::prelude::*;

fn tract_logits(path: &std::path::Path, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact(dims).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array4::from_shape_vec(dims, x.to_vec()).unwrap().into();
    let out = model.run(tvec!(input.into())).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn exported_graphs_run_in_tract_with_our_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, side) in [
        ("resnet18", 64),
        ("resnet50", 64),
        ("resnext50_32x4d", 64),
        ("resnet20", 32),
        ("resnet20_option_b", 32),
        ("resnet50_dilated", 64),
    ] {
        let (model, config) = match name {
            "resnet20_option_b" => (
                "resnet20",
                ModelName::Resnet20.config().with_shortcut(resnet::model::Shortcut::B),
            ),
            "resnet50_dilated" => (
                "resnet50",
                ModelName::Resnet50
                    .config()
                    .with_replace_stride_with_dilation(vec![false, true, true]),
            ),
            n => (n, n.parse::<ModelName>().unwrap().config()),
        };
        let mut m = ResNet::new(&config, &resnet::default_device()).unwrap();
        let sd = det_state_dict(&mut m);
        let path = tmp.path().join(format!("{name}.onnx"));
        weights::onnx::write_onnx(&path, &config, &sd, model).unwrap();
        let engine = Engine::new(&config, &sd, 0).unwrap();
        for n in [1, 3] {
            let dims = [n, config.in_channels, side, side];
            let x: Vec<f32> = (0..dims.iter().product::<usize>())
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let ours = engine.forward(&x, dims).unwrap();
            let theirs = tract_logits(&path, &x, dims);
            let err = rel_l2(&theirs, &ours);
            assert!(err <= 1e-4, "{name} batch {n}: relative L2 {err:e}");
            eprintln!("{name} batch {n}: tract vs ours relative L2 {err:.1e}");
        }
    }
}

#[test]
fn convert_writes_onnx_by_extension_and_names_the_graph_s_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cifar.onnx");
    let run = resnet_command()
        .args(["convert", "--model", "resnet20"])
        .arg(common::fixture("resnet20_cifar.pth"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let model = tract_onnx::onnx().model_for_path(&out).unwrap();
    let inputs: Vec<String> = model
        .input_outlets()
        .unwrap()
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let outputs: Vec<String> = model
        .output_outlets()
        .unwrap()
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(String::from)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect();
    assert_eq!(inputs, ["input"]);
    assert!(outputs.iter().any(|o| o == "logits"), "{outputs:?}");
    // The batch axis is symbolic: two batch sizes run on one file.
    let x = vec![0.5f32; 2 * 3 * 32 * 32];
    assert_eq!(tract_logits(&out, &x, [2, 3, 32, 32]).len(), 20);
    // Option B and C files convert too: the converter reads the shortcut option off the keys.
    for (option, projections) in [(resnet::model::Shortcut::B, 2), (resnet::model::Shortcut::C, 9)] {
        let config = ModelName::Resnet20.config().with_shortcut(option);
        let mut m = ResNet::new(&config, &resnet::default_device()).unwrap();
        let sd = det_state_dict(&mut m);
        let n = sd.keys().filter(|k| k.ends_with("downsample.0.weight")).count();
        assert_eq!(n, projections);
        let src = tmp.path().join("opt.safetensors");
        weights::write_safetensors(&src, &sd).unwrap();
        let dst = tmp.path().join("opt.onnx");
        let run = resnet_command()
            .args(["convert", "--model", "resnet20"])
            .args([&src, &dst])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let x: Vec<f32> = (0..3 * 3 * 32 * 32).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
        let ours = Engine::new(&config, &sd, 0)
            .unwrap()
            .forward(&x, [3, 3, 32, 32])
            .unwrap();
        let err = rel_l2(&tract_logits(&dst, &x, [3, 3, 32, 32]), &ours);
        assert!(err <= 1e-4, "{option:?}: {err:e}");
    }

    // An unknown extension needs --format.
    let run = resnet_command()
        .args(["convert", "--model", "resnet20"])
        .arg(common::fixture("resnet20_cifar.pth"))
        .arg(tmp.path().join("x.bin"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--format"));
}

#[test]
fn convert_exports_a_dilated_backbone_when_told() {
    let tmp = tempfile::tempdir().unwrap();
    let dilated = ModelName::Resnet50
        .config()
        .with_replace_stride_with_dilation(vec![false, true, true]);
    let mut m = ResNet::new(&dilated, &resnet::default_device()).unwrap();
    let sd = det_state_dict(&mut m);
    let src = tmp.path().join("r50.safetensors");
    weights::write_safetensors(&src, &sd).unwrap();
    // The library's export of the dilated model (checked in tract above) and the CLI's are the
    // same bytes; without the flag the graph is the plain one.
    let want = tmp.path().join("want.onnx");
    weights::onnx::write_onnx(&want, &dilated, &sd, "resnet50").unwrap();
    let convert = |flags: &[&str], out: &str| {
        resnet_command()
            .args(["convert", "--model", "resnet50"])
            .args(flags)
            .arg(&src)
            .arg(tmp.path().join(out))
            .output()
            .unwrap()
    };
    let run = convert(&["--replace-stride-with-dilation", "false,true,true"], "got.onnx");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let want = std::fs::read(want).unwrap();
    assert!(std::fs::read(tmp.path().join("got.onnx")).unwrap() == want);
    assert!(convert(&[], "plain.onnx").status.success());
    assert!(std::fs::read(tmp.path().join("plain.onnx")).unwrap() != want);
    // Dilation changes the graph, not the weights: a safetensors output refuses the flag.
    let run = convert(&["--replace-stride-with-dilation", "false,true,true"], "x.safetensors");
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("ONNX export only"));
    // Basic blocks cannot dilate (torchvision refuses too).
    let run = resnet_command()
        .args([
            "convert",
            "--model",
            "resnet18",
            "--replace-stride-with-dilation",
            "false,false,true",
        ])
        .arg(common::fixture("resnet20_cifar.pth"))
        .arg(tmp.path().join("r18.onnx"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("dilation > 1 is not supported with basic blocks"));
}
