//! The built-in `fashion-mnist-resnet20`: the offline demo, the same numbers from an exported
//! PNG as from the IDX test set, and the shipped file being the run's best checkpoint.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use resnet::classify::Logits;
use resnet::preprocess::{open_image, to_chw, DEFAULT_MAX_PIXELS};
use resnet::train::RunFile;
use resnet::weights::{bundled, Bundled, RunMeta};
use resnet::{Classifier, ModelName, Weights};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> &'static Bundled {
    bundled("fashion-mnist-resnet20").expect("built in")
}

fn slug(label: &str) -> String {
    label.to_lowercase().replace(['/', ' '], "-")
}

/// `examples/fashion/NNNN-<class>.png`, sorted: (path, test-set index, class slug).
fn examples() -> Vec<(PathBuf, usize, String)> {
    let mut v: Vec<_> = std::fs::read_dir(root().join("examples/fashion"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let (index, class) = stem.split_once('-').unwrap();
            (p.clone(), index.parse().unwrap(), class.to_string())
        })
        .collect();
    v.sort();
    assert_eq!(v.len(), 10, "one example per class");
    v
}

#[test]
fn offline_demo_names_every_example_correctly() {
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resnet"));
    cmd.args([
        "classify",
        "--model",
        "fashion-mnist-resnet20",
        "--format",
        "json",
        "--top-k",
        "2",
    ])
    .env("RESNET_OFFLINE", "1")
    .env("RESNET_CACHE", cache.path());
    for (p, _, _) in examples() {
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    let Some(test) = fashion_test_set("offline_demo_names_every_example_correctly") else {
        return;
    };
    let clf = built_in();
    for (line, (_, index, _)) in lines.iter().zip(examples()) {
        // The demo names what the model predicts for the original IDX test image.
        let expected = argmax(&idx_logits(&clf, &test, index));
        let top = &line["predictions"][0];
        assert_eq!(top["label"].as_str().unwrap(), model().classes[expected], "{line}");
        let p = top["probability"].as_f64().unwrap();
        assert!(p > 0.1 && p <= 1.0, "{line}");
    }
    // Nothing was downloaded or cached.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[test]
fn shipped_weights_are_the_runs_best_checkpoint() {
    let run = root().join("runs/fashion-mnist-resnet20");
    let best = std::fs::read(run.join("best.safetensors")).unwrap();
    assert!(
        best == model().safetensors,
        "copy runs/fashion-mnist-resnet20/best.safetensors to assets/models/"
    );
    let rf = RunFile::beside(&run.join("best.safetensors")).expect("the run's config.json");
    assert_eq!((rf.mean.as_slice(), rf.std.as_slice()), (model().mean, model().std));
    assert_eq!(rf.config.model, model().arch.as_str());
    assert_eq!((rf.config.in_channels, rf.config.eval_crop), (1, model().size));
    // Inference reads the same file through weights::RunMeta, without the trainer's types.
    let meta = RunMeta::beside(&run.join("best.safetensors")).expect("the run's config.json");
    assert_eq!(
        (meta.model(), meta.eval_transform()),
        (rf.config.model.as_str(), rf.eval_transform())
    );
    let classes = std::fs::read_to_string(run.join("classes.txt")).unwrap();
    assert_eq!(classes.lines().collect::<Vec<_>>(), model().classes);
    // The run's file classifies like the built-in model: its normalisation, size and classes.
    let from_run = Classifier::new(ModelName::Resnet20, Weights::File(run.join("best.safetensors"))).unwrap();
    let built_in = Classifier::new(ModelName::Resnet20, Weights::Bundled(model())).unwrap();
    assert_eq!(from_run.transform(), built_in.transform());
    assert_eq!(from_run.labels(), built_in.labels());
    assert!(built_in.transform().grayscale);
}

/// Debian's Fashion-MNIST test set; `None` (after one line saying `test` is skipped) without it.
fn fashion_test_set(test: &str) -> Option<resnet::data::Dataset> {
    let root = common::fashion_mnist(test)?;
    Some(resnet::train::read_idx_split(root, "t10k").unwrap())
}

fn built_in() -> Classifier {
    Classifier::new(ModelName::Resnet20, Weights::Bundled(model())).unwrap()
}

/// Logits for test image `index`, straight from the IDX bytes.
fn idx_logits(clf: &Classifier, test: &resnet::data::Dataset, index: usize) -> Vec<f32> {
    let chw = to_chw(&test.pixels(index).unwrap(), 1, model().mean, model().std);
    clf.logits_nchw(chw, [1, 1, 28, 28]).unwrap().remove(0)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn png_export_gives_the_logits_of_the_idx_test_image() {
    let Some(test) = fashion_test_set("png_export_gives_the_logits_of_the_idx_test_image") else {
        return;
    };
    let clf = built_in();
    for (path, index, class) in examples() {
        assert_eq!(slug(&test.classes[test.labels[index]]), class);
        let from_png = clf.logits(&[open_image(&path, DEFAULT_MAX_PIXELS).unwrap()]).unwrap();
        assert_eq!(from_png[0], idx_logits(&clf, &test, index), "{}", path.display());
    }
}

#[test]
fn built_in_model_scores_what_its_run_recorded_on_the_test_set() {
    let Some(test) = fashion_test_set("built_in_model_scores_what_its_run_recorded_on_the_test_set") else {
        return;
    };
    let test = Arc::new(test);
    let clf = built_in();
    let t = clf.transform().clone();
    let ev = resnet::train::eval::evaluate(&clf, test, resnet::train::eval::prepare(t, false, 1), 1, 2).unwrap();
    let run = root().join("runs/fashion-mnist-resnet20");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let recorded = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse::<f64>().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(ev.samples, 10_000);
    // One image is 1e-4; the shipped weights reproduce the run's best top-1 exactly.
    assert!((ev.top1 - recorded).abs() < 5e-5, "{} vs {recorded}", ev.top1);
    // The run's goal: at least 93.0 % on the official 10k test set.
    assert!(ev.top1 >= 0.93, "top-1 {}", ev.top1);
}
