//! Training: PyTorch-exact steps, a real (small) Fashion-MNIST run, SIGKILL + resume, NaN stop.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::prelude::*;
use common::{det_state_dict, max_abs, reference, rel_l2};
use resnet::train::native::NativeNet;
use resnet::train::{Optimizer, OptimizerConfig, OptimizerKind};
use resnet::{weights, ModelName, ResNet};

/// Which implementation of the training step a test runs.
#[derive(Clone, Copy, Debug)]
enum StepPath {
    /// burn's autodiff on the default device.
    Burn,
    /// The CPU engine's kernels (`resnet::train::native`).
    Native,
}

fn one_training_run(kind: OptimizerKind, lr: f64, wd: f64, path: StepPath) {
    let reference = reference();
    let dev = resnet::default_device().autodiff();
    let mut model = ResNet::new(&ModelName::Resnet20.config(), &dev).unwrap();
    let sd = det_state_dict(&mut model);
    weights::load_into(&mut model, sd.clone(), true, "resnet20").unwrap();
    let (_, x0) = &reference["pre/chelsea.png/stretch32"];
    let x0 = Tensor::<3>::from_data(TensorData::new(x0.clone(), [3, 32, 32]), &dev);
    let x = Tensor::stack(
        vec![x0.clone(), x0.clone().flip([2]), x0.clone().flip([1]), x0.neg()],
        0,
    );
    let labels = [3usize, 5, 0, 9];
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.map(|l| l as i64).to_vec(), [4]), &dev);
    let mut opt = Optimizer::new(OptimizerConfig {
        kind,
        nesterov: true,
        weight_decay: wd,
        ..OptimizerConfig::default()
    });
    let mut losses = vec![];
    let got = match path {
        StepPath::Burn => {
            let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(&dev);
            for _ in 0..2 {
                let loss = ce.forward(model.forward(x.clone()).unwrap(), y.clone());
                losses.push(loss.clone().into_scalar::<f32>());
                let grads = loss.backward();
                opt.step(&mut model, &grads, lr).unwrap();
            }
            weights::state_dict(&mut model).unwrap()
        }
        StepPath::Native => {
            let xv: Vec<f32> = x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            let mut net = NativeNet::new(&ModelName::Resnet20.config(), &sd, 2).unwrap();
            for _ in 0..2 {
                losses.push(net.step(&xv, 4, 32, 32, &labels).unwrap().loss);
                net.update(&mut opt, lr);
            }
            net.state_dict()
        }
    };
    let name = match kind {
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::AdamW => "adamw",
    };
    let want_loss = &reference[&format!("train/{name}/loss")].1;
    assert!(
        max_abs(&losses, want_loss) < 1e-4,
        "{name} {path:?}: losses {losses:?} vs {want_loss:?}"
    );
    for k in [
        "conv1.weight",
        "bn1.running_mean",
        "bn1.running_var",
        "layer3.2.bn2.weight",
        "fc.weight",
        "fc.bias",
    ] {
        let want = &reference[&format!("train/{name}/{k}")].1;
        let resnet::weights::Values::F32(v) = &got[k].values else {
            panic!()
        };
        let err = rel_l2(v, want);
        println!("{name} {path:?} {k}: rel L2 {err:.2e}");
        assert!(err < 1e-4, "{name} {path:?} {k}: relative error {err:e}");
    }
}

#[test]
fn sgd_nesterov_steps_match_pytorch() {
    one_training_run(OptimizerKind::Sgd, 0.1, 5e-4, StepPath::Burn);
}

#[test]
fn native_sgd_nesterov_steps_match_pytorch() {
    if NativeNet::kernel().is_none() {
        println!("no packed kernel on this CPU: the native path is not built here, burn trains");
        return;
    }
    one_training_run(OptimizerKind::Sgd, 0.1, 5e-4, StepPath::Native);
}

#[test]
fn native_adamw_steps_match_pytorch() {
    if NativeNet::kernel().is_none() {
        println!("no packed kernel on this CPU: the native path is not built here, burn trains");
        return;
    }
    one_training_run(OptimizerKind::AdamW, 0.01, 0.05, StepPath::Native);
}

#[test]
fn adamw_steps_match_pytorch() {
    one_training_run(OptimizerKind::AdamW, 0.01, 0.05, StepPath::Burn);
}

/// The first `n` training and `m` test images of Debian's Fashion-MNIST, as IDX files; `None`
/// (after one line saying `test` is skipped) without the dataset.
fn fashion_slice(test: &str, dir: &Path, n: usize, m: usize) -> Option<PathBuf> {
    let root = common::fashion_mnist(test)?;
    let out = dir.join("fashion-slice");
    std::fs::create_dir_all(&out).unwrap();
    for (split, count) in [("train", n), ("t10k", m)] {
        let ds = resnet::data::read_idx(
            &root.join(format!("{split}-images-idx3-ubyte.gz")),
            &root.join(format!("{split}-labels-idx1-ubyte.gz")),
            vec![],
        )
        .unwrap();
        let mut img = vec![0, 0, 8, 3];
        for d in [count as u32, 28, 28] {
            img.extend(d.to_be_bytes());
        }
        let mut lab = vec![0, 0, 8, 1];
        lab.extend((count as u32).to_be_bytes());
        for i in 0..count {
            img.extend(ds.pixels(i).unwrap().data);
            lab.push(ds.labels[i] as u8);
        }
        std::fs::write(out.join(format!("{split}-images-idx3-ubyte")), img).unwrap();
        std::fs::write(out.join(format!("{split}-labels-idx1-ubyte")), lab).unwrap();
    }
    Some(out)
}

fn train_cmd(data: &Path, out: &Path, epochs: usize, lr: &str) -> Command {
    train_cmd_batch(data, out, epochs, lr, 64)
}

fn train_cmd_batch(data: &Path, out: &Path, epochs: usize, lr: &str, batch: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resnet"));
    c.args([
        "train",
        "--data",
        &format!("idx:{}", data.display()),
        "--model",
        "resnet20",
        "--in-channels",
        "1",
    ])
    .args([
        "--recipe",
        "cifar",
        "--input-size",
        "28",
        "--pad",
        "2",
        "--batch-size",
        &batch.to_string(),
        "--nesterov",
    ])
    .args([
        "--weight-decay",
        "5e-4",
        "--schedule",
        "cosine",
        "--lr",
        lr,
        "--seed",
        "3",
    ])
    .args(["--epochs", &epochs.to_string(), "--out", out.to_str().unwrap()]);
    c
}

/// metrics.csv without the wall-time column.
fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn train_kill_resume_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_slice("train_kill_resume_matches_uninterrupted_run", tmp.path(), 512, 256) else {
        return;
    };

    // Uninterrupted.
    let full = tmp.path().join("full");
    let out = train_cmd(&data, &full, 3, "0.05")
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = metrics(&full);
    assert_eq!(want.len(), 4, "{want:?}");
    // --format json: one object per epoch, as metrics.csv has it, then the best checkpoint.
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, epoch) in lines[..3].iter().enumerate() {
        assert_eq!(epoch["epoch"], i + 1);
        let top1: f64 = want[i + 1].split(',').nth(5).unwrap().parse().unwrap();
        assert!(
            (epoch["top1"].as_f64().unwrap() - top1).abs() < 1e-6,
            "{epoch} vs {}",
            want[i + 1]
        );
    }
    assert!(
        lines[3]["best"].as_str().unwrap().ends_with("best.safetensors"),
        "{}",
        lines[3]
    );
    for f in [
        "config.json",
        "classes.txt",
        "best.safetensors",
        "last.safetensors",
        "checkpoints/weights-0003.safetensors",
        "checkpoints/optimizer-0003.safetensors",
        "state.json",
    ] {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    // Superseded checkpoints are gone; last.safetensors is the committed epoch's weights.
    assert!(!full.join("checkpoints/optimizer-0002.safetensors").exists());
    assert_eq!(
        std::fs::read(full.join("last.safetensors")).unwrap(),
        std::fs::read(full.join("checkpoints/weights-0003.safetensors")).unwrap()
    );
    let row = |i: usize| -> Vec<f64> { want[i].split(',').map(|v| v.parse().unwrap()).collect() };
    assert!(row(3)[2] < row(1)[2], "train loss should fall: {want:?}");
    assert!(row(3)[5] > 0.3, "val top-1 after 3 epochs on 512 images: {want:?}");
    assert_eq!(
        std::fs::read_to_string(full.join("classes.txt"))
            .unwrap()
            .lines()
            .next(),
        Some("T-shirt/top")
    );

    // Killed with SIGKILL during epoch 2, then resumed.
    let run = tmp.path().join("killed");
    let mut child = train_cmd(&data, &run, 3, "0.05").stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(run.join("state.json")).is_ok_and(|s| s.contains("\"epochs_done\": 1")) {
        assert!(start.elapsed() < Duration::from_secs(300), "epoch 1 never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(metrics(&run).len() < 4, "the kill came too late to test anything");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming after epoch"));
    assert_eq!(
        metrics(&run),
        want,
        "a resumed run must end exactly like an uninterrupted one"
    );

    // The run's weights classify with the run's classes.
    let best = full.join("best.safetensors");
    let classes = full.join("classes.txt");
    let img = common::fixture("small_gray.png");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["classify", "--model", "resnet20", "--weights", best.to_str().unwrap()])
        .args(["--classes", classes.to_str().unwrap(), img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Fine-tuning with a frozen backbone changes fc only: weights and BN statistics stay put.
    let ft = tmp.path().join("frozen");
    let out = train_cmd(&data, &ft, 1, "0.05")
        .args(["--weights", best.to_str().unwrap(), "--freeze-backbone"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = weights::read_state_dict(&best).unwrap();
    let after = weights::read_state_dict(&ft.join("last.safetensors")).unwrap();
    for k in [
        "conv1.weight",
        "bn1.running_mean",
        "layer3.2.bn2.running_var",
        "layer2.0.conv2.weight",
    ] {
        assert_eq!(before[k], after[k], "{k} changed although frozen");
    }
    assert_ne!(before["fc.weight"], after["fc.weight"], "fc must train");

    // An existing run is never overwritten by a new one.
    let out = train_cmd(&data, &full, 3, "0.05").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
}

/// The run's files a resumed run must reproduce: metrics (without times) and the weights.
fn outcome(run: &Path) -> (Vec<String>, Vec<u8>) {
    (metrics(run), std::fs::read(run.join("last.safetensors")).unwrap())
}

#[test]
fn a_kill_at_every_checkpoint_step_resumes_to_the_same_run() {
    use resnet::train::checkpoint::STEPS;
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_slice(
        "a_kill_at_every_checkpoint_step_resumes_to_the_same_run",
        tmp.path(),
        128,
        64,
    ) else {
        return;
    };
    let cmd = |out: &Path| {
        let mut c = train_cmd(&data, out, 2, "0.05");
        c.stderr(Stdio::piped());
        c
    };
    let full = tmp.path().join("full");
    let out = cmd(&full).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = outcome(&full);
    assert_eq!(want.0.len(), 3, "{:?}", want.0);

    for step in 1..=STEPS {
        let run = tmp.path().join(format!("fault-{step}"));
        // Abort right after this step of epoch 2's checkpoint (epoch 1's is complete).
        let out = cmd(&run)
            .env("RESNET_CHECKPOINT_FAULT", format!("2:{step}"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "step {step}: the fault hook did not fire");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("RESNET_CHECKPOINT_FAULT"),
            "step {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(["train", "--resume", run.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "step {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            outcome(&run) == want,
            "step {step}: the resumed run differs from the uninterrupted one"
        );
        let stamped: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().collect();
        assert!(stamped.len() <= 3, "step {step}: stale checkpoints left: {stamped:?}");
    }
}

#[test]
fn a_diverging_loss_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_slice("a_diverging_loss_stops_the_run", tmp.path(), 256, 64) else {
        return;
    };
    let run = tmp.path().join("nan");
    let out = train_cmd(&data, &run, 2, "1e30").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the loss became"), "{err}");
    assert!(!run.join("state.json").exists());
}

#[test]
fn empty_and_missing_datasets_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("imgs");
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::create_dir_all(d.join("b")).unwrap();
    std::fs::copy(common::fixture("small.bmp"), d.join("a/x.bmp")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--data", d.to_str().unwrap(), "--model", "resnet18", "--out"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("class `b` has no samples"), "{err}");

    std::fs::create_dir_all(tmp.path().join("split/train/a")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--data", tmp.path().join("split").to_str().unwrap(), "--out"])
        .arg(tmp.path().join("run2"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no val/"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn initial_weights_that_do_not_fit_name_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_slice("initial_weights_that_do_not_fit_name_the_keys", tmp.path(), 256, 64) else {
        return;
    };
    // CIFAR weights have 3 input channels; this model has 1.
    let out = train_cmd(&data, &tmp.path().join("run"), 1, "0.1")
        .arg("--weights")
        .arg(common::fixture("resnet20_cifar.pth"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shape mismatch for conv1.weight: model [16, 1, 3, 3], file [16, 3, 3, 3]"),
        "{err}"
    );
}

/// `--freeze-backbone` trains fc on the fast engine's features; that must be the same
/// training as burn's autodiff through the whole (frozen, inference-mode) network.
#[test]
fn frozen_backbone_head_on_engine_features_matches_the_autodiff_path() {
    use resnet::train::frozen::{head_loss, Backbone};
    let dev = resnet::default_device().autodiff();
    let config = ModelName::Resnet20.config().with_in_channels(1);
    let frozen_model = || {
        let mut m = ResNet::new(&config, &dev).unwrap();
        let sd = det_state_dict(&mut m);
        weights::load_into(&mut m, sd, true, "resnet20").unwrap();
        m.conv1 = m.conv1.clone().freeze();
        m.bn1 = m.bn1.clone().freeze();
        m.layers = m.layers.clone().freeze();
        m
    };
    let dims = [6, 1, 28, 28];
    let x: Vec<f32> = (0..6 * 784).map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0).collect();
    let labels = [3usize, 1, 4, 1, 5, 9];
    let opt = || {
        Optimizer::new(OptimizerConfig {
            nesterov: true,
            weight_decay: 5e-4,
            ..OptimizerConfig::default()
        })
    };
    let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(&dev);

    let mut a = frozen_model();
    let before = weights::state_dict(&mut a).unwrap();
    let (mut opt_a, mut losses_a) = (opt(), vec![]);
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &dev);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.map(|l| l as i64).to_vec(), [6]), &dev);
    for _ in 0..3 {
        let loss = ce.forward(a.forward(xt.clone()).unwrap(), y.clone());
        losses_a.push(loss.clone().into_scalar::<f32>());
        opt_a.step(&mut a, &loss.backward(), 0.001).unwrap();
    }

    let mut b = frozen_model();
    let backbone = Backbone::new(&mut b).unwrap();
    let feats = backbone.features(&x, dims).unwrap();
    let (mut opt_b, mut losses_b) = (opt(), vec![]);
    for _ in 0..3 {
        let (loss, grads, _) = head_loss(&b, &ce, feats.clone(), &labels, &dev);
        losses_b.push(loss);
        opt_b.step(&mut b, &grads, 0.001).unwrap();
    }

    assert!(
        max_abs(&losses_a, &losses_b) < 1e-5,
        "losses {losses_a:?} vs {losses_b:?}"
    );
    assert!(losses_a[2] < losses_a[0], "the head did not learn: {losses_a:?}");
    let (sa, sb) = (
        weights::state_dict(&mut a).unwrap(),
        weights::state_dict(&mut b).unwrap(),
    );
    for k in ["fc.weight", "fc.bias"] {
        let (resnet::weights::Values::F32(va), resnet::weights::Values::F32(vb)) = (&sa[k].values, &sb[k].values)
        else {
            panic!("{k} is not f32")
        };
        assert!(max_abs(va, vb) < 1e-5, "{k}: {}", max_abs(va, vb));
    }
    // The autodiff path kept the backbone in inference mode: statistics and weights unchanged.
    for k in ["bn1.running_mean", "layer2.1.bn2.running_var", "layer3.2.conv2.weight"] {
        assert_eq!(before[k], sa[k], "{k} changed although frozen");
    }
}

/// `--cache-features`: the features are computed once, the head learns, and a run resumed
/// after its first epoch ends exactly like an uninterrupted one.
#[test]
fn cached_features_fine_tune_learns_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(data) = fashion_slice(
        "cached_features_fine_tune_learns_and_resumes_identically",
        tmp.path(),
        512,
        256,
    ) else {
        return;
    };
    let frozen = |out: &Path, epochs: usize| {
        // 32 steps an epoch: the random backbone's features are large, so the rate is small.
        let mut c = train_cmd_batch(&data, out, epochs, "0.003", 16);
        c.args(["--freeze-backbone", "--cache-features", "--format", "json"]);
        c
    };
    let full = tmp.path().join("full");
    let out = frozen(&full, 4).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("epoch").is_some())
        .collect();
    assert_eq!(rows.len(), 4);
    let loss = |i: usize| rows[i]["train_loss"].as_f64().unwrap();
    assert!(loss(3) < loss(0), "the head did not learn: {rows:?}");
    // Random features of a random backbone still beat chance (10 %) on Fashion-MNIST.
    assert!(rows[3]["top1"].as_f64().unwrap() > 0.3, "{rows:?}");

    // Aborted (SIGABRT) right after epoch 2's commit, then resumed: features are computed
    // again and the last two epochs must come out the same.
    let run = tmp.path().join("aborted");
    let commit = resnet::train::checkpoint::Step::Commit as u8;
    let out = frozen(&run, 4)
        .env("RESNET_CHECKPOINT_FAULT", format!("2:{commit}"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault hook did not fire");
    assert_eq!(metrics(&run).len(), 3, "epoch 2 was committed, no more");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        outcome(&run),
        outcome(&full),
        "a resumed run must end like an uninterrupted one"
    );
}
