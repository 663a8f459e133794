//! `resnet eval`: top-1/top-5, per-class precision, recall and F1, the confusion matrix.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use resnet::classify::{read_labels, ClassifierOptions};
use resnet::weights;
use resnet::Classifier;

use super::{model_and_weights, EngineKind, Format, DEFAULT_WEIGHTS};

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    #[arg(long, default_value = "resnet50")]
    model: String,
    /// A tag or a file; a file in a `resnet train` run folder brings the run's normalisation.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    weights: String,
    /// DIR/<class>/… (or DIR/val/<class>/…), idx:DIR (its t10k files) or cifar10:DIR (test batch).
    #[arg(long)]
    data: String,
    /// Class names, one per line, in the model's index order.
    #[arg(long)]
    classes: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Where confusion.csv, confusion.png and summary.json go.
    #[arg(long, default_value = "eval")]
    out: PathBuf,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Inference threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// `fast`: the CPU engine (BN folded, fused, the best SIMD kernel the CPU has); `burn`: the reference path.
    #[arg(long, value_enum, default_value = "fast")]
    engine: EngineKind,
}

pub(crate) fn run(a: EvalArgs) -> Result<ExitCode> {
    use resnet::train::{eval as ev, plots, DataSpec};
    let (name, weights) = model_and_weights(&a.model, &a.weights)?;
    let known = match &a.classes {
        Some(f) => Some(read_labels(f)?),
        None => resnet::classify::weights_meta(name, &weights)?.classes,
    };
    let spec = DataSpec::parse(&a.data);
    let ds = match &spec {
        DataSpec::Idx(dir) => resnet::train::read_idx_split(dir, "t10k")?,
        DataSpec::Cifar(dir) => resnet::data::read_cifar(dir, false)?,
        DataSpec::Folder(dir) => {
            let dir = if dir.join("val").is_dir() {
                dir.join("val")
            } else {
                dir.clone()
            };
            resnet::data::image_folder(&dir, known.as_deref())?
        }
    };
    ds.check_nonempty("evaluation")?;
    let classes = known.unwrap_or_else(|| ds.classes.clone());
    let opts = ClassifierOptions {
        labels: Some(classes.clone()),
        engine: a.engine == EngineKind::Fast,
        threads: a.threads,
        ..Default::default()
    };
    let clf = Classifier::build(name, weights.clone(), opts)?;
    if let Some(note) = clf.weights_note() {
        eprintln!("note: {note}");
    }
    let channels = clf.config().in_channels;
    let files = matches!(ds.items, resnet::data::Items::Files(_));
    let prepare = ev::prepare(clf.transform().clone(), files, channels);
    let bar = ProgressBar::new_spinner().with_message(format!("evaluating {} images", ds.len()));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let result = ev::evaluate(&clf, std::sync::Arc::new(ds), prepare, channels, a.workers)?;
    bar.finish_and_clear();
    let report = result.per_class(&classes);
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    weights::write_atomic(&a.out.join("confusion.csv"), result.confusion_csv(&classes).as_bytes())?;
    plots::confusion(&a.out.join("confusion.png"), &result.confusion, &classes)?;
    let summary = serde_json::json!({
        "model": name.as_str(),
        "weights": weights.describe(),
        "samples": result.samples,
        "skipped": result.skipped,
        "loss": result.loss,
        "top1": result.top1,
        "top5": result.top5,
        "per_class": report,
        "confusion": result.confusion,
    });
    weights::write_atomic(
        &a.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let mut out = std::io::stdout().lock();
    if a.format == Format::Json {
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "{} images: top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
            result.samples,
            100.0 * result.top1,
            100.0 * result.top5,
            result.loss
        )?;
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>8}",
            "class", "precision", "recall", "f1", "support"
        )?;
        for r in &report {
            writeln!(
                out,
                "{:<24} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                r.class, r.precision, r.recall, r.f1, r.support
            )?;
        }
        writeln!(
            out,
            "wrote {}/confusion.csv, confusion.png, summary.json",
            a.out.display()
        )?;
    }
    if result.skipped > 0 {
        eprintln!("{} unreadable images were skipped", result.skipped);
    }
    Ok(ExitCode::SUCCESS)
}
