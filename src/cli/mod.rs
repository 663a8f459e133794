//! The `resnet` command line: one file per command, each owning its arguments and its `run`;
//! this file holds the command list and what several commands share. Printing only: the work
//! is in the library.

mod bench;
mod classify;
mod convert;
mod eval;
mod info;
#[cfg(feature = "serve")]
mod serve;
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
    /// Train or fine-tune on an image folder, IDX files or CIFAR batches.
    Train(Box<train::TrainArgs>),
    /// Evaluate on a labelled set: top-1/top-5, per-class precision/recall/F1, confusion matrix.
    Eval(eval::EvalArgs),
    /// Inference latency per model and batch size (median, min, max), GFLOP/s and peak RSS;
    /// with --train, the training step's time split into forward, backward and update.
    Bench(bench::BenchArgs),
    /// Serve the model over HTTP: POST /v1/classify, /v1/models, /healthz, /metrics, and a studio page at /.
    #[cfg(feature = "serve")]
    Serve(Box<serve::ServeArgs>),
    /// Convert a .pth or .safetensors state dict to .safetensors with torchvision keys.
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

/// `--model` and `--weights`: a built-in model's name brings its own weights unless others are named.
pub(crate) fn model_and_weights(model: &str, weights: &str) -> Result<(ModelName, Weights)> {
    match weights::bundled(model) {
        Some(b) if weights == DEFAULT_WEIGHTS => Ok((b.arch, Weights::Bundled(b))),
        Some(b) => Ok((b.arch, Weights::parse(weights)?)),
        None => Ok((model.parse()?, Weights::parse(weights)?)),
    }
}
