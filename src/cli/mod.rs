//! The `resnet` command line: one file per command, each owning its arguments and its `run`;
//! this file holds the command list and what several commands share. Printing only: the work
//! is in the library.

mod bench;
mod classify;
mod convert;
mod embed;
mod eval;
mod explain;
mod info;
#[cfg(feature = "serve")]
mod serve;
mod similar;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use resnet::model::ModelName;
use resnet::weights::{self, Weights};

/// `--weights`' default: a built-in model's own weights, else torchvision's DEFAULT tag.
const DEFAULT_WEIGHTS: &str = "DEFAULT";

#[derive(Parser)]
#[command(
    name = "resnet",
    version,
    about = "torchvision-exact ResNets: classify images, inspect and convert models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parameters and FLOPs of each model, beside torchvision's and the paper's figures.
    Info(info::InfoArgs),
    /// Classify images: files, folders (recursive) or globs.
    Classify(classify::ClassifyArgs),
    /// Embeddings: the pooled features before fc, or a stage's map, as JSON lines, npy,
    /// Parquet or safetensors.
    Embed(Box<embed::EmbedArgs>),
    /// Grad-CAM: which parts of each image raised its class, as a map and a PNG overlay.
    Explain(Box<explain::ExplainArgs>),
    /// Cosine nearest neighbours in an embedding file, or its near-duplicate pairs.
    Similar(Box<similar::SimilarArgs>),
    /// Train or fine-tune on an image folder, IDX files or CIFAR batches.
    Train(Box<train::TrainArgs>),
    /// Evaluate on a labelled set: top-1/top-5, per-class precision/recall/F1, confusion matrix.
    Eval(eval::EvalArgs),
    /// Inference latency per model and batch size (median, min, max), GFLOP/s and peak RSS;
    /// with --train, the training step's time split into forward, backward and update.
    Bench(bench::BenchArgs),
    /// Serve the model over HTTP: POST /v1/classify, /v1/embed, /v1/models, /healthz, /metrics, and a studio page at /.
    #[cfg(feature = "serve")]
    Serve(Box<serve::ServeArgs>),
    /// Convert a .pth or .safetensors state dict to .safetensors with torchvision keys, or to ONNX.
    Convert(convert::ConvertArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum EngineKind {
    Fast,
    Burn,
}

/// The model to run, shared by `classify` and `serve`.
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// A torchvision/paper architecture (resnet50, resnet20, …) or a built-in model
    /// (fashion-mnist-resnet20, which works offline).
    #[arg(long, default_value = "resnet50")]
    model: String,
    /// IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, or a .pth/.safetensors file; a file in a
    /// `resnet train` run folder brings the run's preprocessing and classes.
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    weights: String,
    /// Class names, one per line (default: ImageNet-1k, or CIFAR-10 for the CIFAR models).
    #[arg(long)]
    classes: Option<PathBuf>,
}

/// Parses the command line and runs the command; errors are one line on stderr, exit 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Embed(a) => embed::run(*a),
        Command::Similar(a) => similar::run(*a),
        Command::Explain(a) => explain::run(*a),
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve::run(*a).map(|()| ExitCode::SUCCESS),
        Command::Convert(a) => convert::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn download_bar() -> (ProgressBar, impl FnMut(u64, Option<u64>)) {
    let bar = ProgressBar::hidden();
    let b = bar.clone();
    let update = move |done: u64, total: Option<u64>| {
        if b.is_hidden() && done > 0 {
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("downloading {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
        if let Some(t) = total {
            b.set_length(t);
        }
        b.set_position(done);
    };
    (bar, update)
}

/// Files as given, folders searched recursively for images (sorted), globs expanded.
pub(crate) fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for i in inputs {
        let p = PathBuf::from(i);
        if p.is_dir() {
            out.extend(resnet::data::image_files(&p)?);
        } else if !p.exists() && i.contains(['*', '?', '[']) {
            let mut matched: Vec<PathBuf> = glob::glob(i)
                .with_context(|| format!("bad glob {i}"))?
                .filter_map(Result::ok)
                .collect();
            if matched.is_empty() {
                bail!("{i}: the pattern matches no file");
            }
            matched.sort();
            out.extend(matched);
        } else {
            // Missing files are reported per image later, so the rest still run.
            out.push(p);
        }
    }
    Ok(out)
}

/// `--resize/--crop` or `--stretch`, shared by the commands that preprocess images.
#[derive(clap::Args)]
pub(crate) struct TransformArgs {
    /// Resize the shorter side to N (default: the weights' own, 256 for V1, 232 for V2).
    #[arg(long, conflicts_with = "stretch")]
    resize: Option<usize>,
    /// Centre-crop to N×N (default 224).
    #[arg(long, conflicts_with = "stretch")]
    crop: Option<usize>,
    /// Resize directly to N×N without cropping (Ikomia's behaviour).
    #[arg(long, value_name = "N")]
    stretch: Option<usize>,
}

impl TransformArgs {
    /// The resize the flags ask for; `None` keeps the weights' own.
    pub(crate) fn resize(&self, name: ModelName, weights: &Weights) -> Option<resnet::preprocess::Resize> {
        use resnet::preprocess::Resize;
        match (self.stretch, self.resize, self.crop) {
            (Some(n), _, _) => Some(Resize::Stretch { size: n }),
            (None, None, None) => None,
            (None, r, c) => Some(Resize::ShorterSide {
                resize: r.unwrap_or_else(|| weights::default_resize(name, weights)),
                crop: c.unwrap_or(224),
            }),
        }
    }
}

/// How images are read and run, shared by `classify` and `embed`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = resnet::preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Load only the weights that fit the model instead of failing on a mismatch.
    #[arg(long)]
    non_strict: bool,
    /// Inference threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// `fast`: the CPU engine (BN folded, fused, the best SIMD kernel the CPU has); `burn`: the reference path.
    #[arg(long, value_enum, default_value = "fast")]
    engine: EngineKind,
}

/// The classifier that `--model/--weights/--classes`, the transform flags and the run flags
/// ask for, with a download bar; the weights' note goes to stderr.
pub(crate) fn build_classifier(
    model: &ModelArgs,
    transform: &TransformArgs,
    run: &RunArgs,
) -> Result<resnet::Classifier> {
    let (name, weights) = model_and_weights(&model.model, &model.weights)?;
    let labels = model.classes.as_deref().map(weights::read_labels).transpose()?;
    let (dl_bar, mut on_download) = download_bar();
    let opts = resnet::classify::ClassifierOptions {
        strict: !run.non_strict,
        resize: transform.resize(name, &weights),
        labels,
        on_download: Some(&mut on_download),
        engine: run.engine == EngineKind::Fast,
        threads: run.threads,
        ..Default::default()
    };
    let clf = resnet::Classifier::build(name, weights, opts)?.with_max_pixels(run.max_pixels);
    dl_bar.finish_and_clear();
    if let Some(note) = clf.weights_note() {
        eprintln!("note: {note}");
    }
    Ok(clf)
}

/// The exit code of a command over many inputs: failure if any failed, after saying how many.
pub(crate) fn exit_code(failed: usize, total: usize) -> ExitCode {
    if failed > 0 {
        eprintln!("{failed} of {total} inputs failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A progress bar for more than a few inputs.
pub(crate) fn inputs_bar(n: usize) -> ProgressBar {
    if n <= 3 {
        return ProgressBar::hidden();
    }
    ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("{pos}/{len} {wide_bar} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Decodes `inputs` a batch at a time and hands each batch's readable images to `f`; a file
/// that cannot be read is reported in one line and counted, and the rest go on. Returns the
/// number of failures, `f`'s included.
pub(crate) fn image_batches(
    inputs: &[PathBuf],
    batch_size: usize,
    max_pixels: u64,
    bar: &ProgressBar,
    mut f: impl FnMut(&[&PathBuf], &[image::RgbImage]) -> Result<usize>,
) -> Result<usize> {
    let mut failed = 0usize;
    for chunk in inputs.chunks(batch_size.max(1)) {
        let (mut paths, mut imgs) = (Vec::with_capacity(chunk.len()), Vec::with_capacity(chunk.len()));
        for path in chunk {
            match resnet::preprocess::open_image(path, max_pixels) {
                Ok(img) => {
                    paths.push(path);
                    imgs.push(img);
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("error: {e}"));
                }
            }
        }
        failed += f(&paths, &imgs)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(failed)
}

/// `--model` and `--weights`: a built-in model's name brings its own weights unless others are named.
pub(crate) fn model_and_weights(model: &str, weights: &str) -> Result<(ModelName, Weights)> {
    match weights::bundled(model) {
        Some(b) if weights == DEFAULT_WEIGHTS => Ok((b.arch, Weights::Bundled(b))),
        Some(b) => Ok((b.arch, Weights::parse(weights)?)),
        None => Ok((model.parse()?, Weights::parse(weights)?)),
    }
}
