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

/// `resnet convert IN.onnx OUT.safetensors`, then the logits of the file it wrote.
fn import_and_run(onnx: &std::path::Path, out: &std::path::Path, x: &[f32], dims: [usize; 4]) -> (String, Vec<f32>) {
    let run = resnet_command().arg("convert").arg(onnx).arg(out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    let name = stderr
        .split(" (")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let sd = weights::read_state_dict(out).unwrap();
    let file = weights::WeightsFile::open(out).unwrap();
    let mut config = name.parse::<ModelName>().unwrap().config();
    weights::fit_config(&mut config, &file);
    (name, Engine::new(&config, &sd, 0).unwrap().forward(x, dims).unwrap())
}

#[test]
fn onnx_files_import_back_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    // Ours, exported and read back: found among the zoo by structure alone, same logits.
    for (name, config, side) in [
        ("resnet18", ModelName::Resnet18.config(), 64),
        ("resnet20", ModelName::Resnet20.config(), 32),
        (
            "resnet20",
            ModelName::Resnet20.config().with_shortcut(resnet::model::Shortcut::C),
            32,
        ),
        ("plain20", ModelName::Plain20.config(), 32),
        (
            "resnet50",
            ModelName::Resnet50
                .config()
                .with_replace_stride_with_dilation(vec![false, false, true]),
            64,
        ),
    ] {
        let mut m = ResNet::new(&config, &resnet::default_device()).unwrap();
        let sd = det_state_dict(&mut m);
        let onnx = tmp.path().join(format!("{name}.onnx"));
        weights::onnx::write_onnx(&onnx, &config, &sd, name).unwrap();
        let dims = [2, 3, side, side];
        let x: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| (i % 23) as f32 / 11.0 - 1.0)
            .collect();
        let want = Engine::new(&config, &sd, 0).unwrap().forward(&x, dims).unwrap();
        let out = tmp.path().join(format!("{name}.safetensors"));
        // A dilated file is found as dilated: compare through the imported model's own graph.
        let run = resnet_command().arg("convert").arg(&onnx).arg(&out).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(String::from_utf8_lossy(&run.stderr).contains(&format!("({name},")));
        let got = Engine::new(&config, &weights::read_state_dict(&out).unwrap(), 0)
            .unwrap()
            .forward(&x, dims)
            .unwrap();
        let err = rel_l2(&got, &want);
        assert!(err <= 1e-5, "{name}: relative L2 {err:e}");
    }

    // torch.onnx.export's default (the dynamo exporter, weights in `.onnx.data`), from the
    // weights of resnet20_cifar.pth: the imported file gives the .pth's logits.
    let dims = [3, 3, 32, 32];
    let x: Vec<f32> = (0..3 * 3 * 32 * 32).map(|i| (i % 29) as f32 / 14.0 - 1.0).collect();
    let (name, got) = import_and_run(
        &common::fixture("resnet20_dynamo.onnx"),
        &tmp.path().join("torch.safetensors"),
        &x,
        dims,
    );
    assert_eq!(name, "resnet20");
    let pth = weights::read_state_dict(&common::fixture("resnet20_cifar.pth")).unwrap();
    let want = Engine::new(&ModelName::Resnet20.config(), &pth, 0)
        .unwrap()
        .forward(&x, dims)
        .unwrap();
    let err = rel_l2(&got, &want);
    assert!(err <= 1e-5, "torch's export: relative L2 {err:e}");
}

#[test]
fn onnx_graphs_that_are_not_zoo_resnets_are_refused() {
    use prost::Message;
    use resnet::weights::onnx::proto::ModelProto;
    use resnet::weights::onnx_import::read_onnx;
    let tmp = tempfile::tempdir().unwrap();
    let config = ModelName::Resnet20.config();
    let mut m = ResNet::new(&config, &resnet::default_device()).unwrap();
    let sd = det_state_dict(&mut m);
    let good = weights::onnx::to_onnx(&config, &sd, "resnet20").unwrap();
    let edit = |f: &dyn Fn(&mut ModelProto)| {
        let mut p = ModelProto::decode(good.as_slice()).unwrap();
        f(&mut p);
        let path = tmp.path().join("edited.onnx");
        std::fs::write(&path, p.encode_to_vec()).unwrap();
        read_onnx(&path, None).err().map(|e| e.to_string()).unwrap_or_default()
    };
    // A Relu taken out of a block, and a stride changed: the closest match says where.
    let err = edit(&|p| {
        let g = p.graph.as_mut().unwrap();
        let i = g
            .node
            .iter()
            .rposition(|n| n.op_type.as_deref() == Some("Relu"))
            .unwrap();
        let removed = g.node.remove(i);
        for n in &mut g.node {
            for inp in &mut n.input {
                if *inp == removed.output[0] {
                    *inp = removed.input[0].clone();
                }
            }
        }
    });
    assert!(
        err.contains("not a ResNet of the zoo") && err.contains("as resnet20"),
        "{err}"
    );
    let err = edit(&|p| {
        let conv = p
            .graph
            .as_mut()
            .unwrap()
            .node
            .iter_mut()
            .find(|n| n.op_type.as_deref() == Some("Conv"))
            .unwrap();
        conv.attribute
            .iter_mut()
            .find(|a| a.name.as_deref() == Some("strides"))
            .unwrap()
            .ints = vec![2, 2];
    });
    assert!(err.contains("strides [2, 2], expected [1, 1]"), "{err}");
    // External data outside the model's folder is not read.
    let err = edit(&|p| {
        let t = &mut p.graph.as_mut().unwrap().initializer[0];
        t.raw_data = None;
        t.data_location = Some(1);
        t.external_data = vec![resnet::weights::onnx::proto::StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../../etc/passwd".into()),
        }];
    });
    assert!(err.contains("leaves the model's folder"), "{err}");
    // Not ONNX at all, and a truncated file.
    let path = tmp.path().join("junk.onnx");
    std::fs::write(&path, b"\x08\x96\x01not a model at all").unwrap();
    assert!(read_onnx(&path, None).is_err());
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = read_onnx(&path, None).err().unwrap().to_string();
    assert!(err.contains("not an ONNX model"), "{err}");
    // --model that does not fit.
    let path = tmp.path().join("r20.onnx");
    std::fs::write(&path, &good).unwrap();
    let err = read_onnx(&path, Some(ModelName::Resnet32)).err().unwrap().to_string();
    assert!(err.contains("as resnet32"), "{err}");
}
