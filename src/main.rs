//! The `resnet` command line: argument parsing and printing only; the work is in the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use resnet::classify::{annotate, annotated_path, read_labels, ClassifierOptions};
use resnet::model::ModelName;
use resnet::preprocess::{open_image, Resize, DEFAULT_MAX_PIXELS};
use resnet::weights::{self, Weights};
use resnet::{Classifier, Prediction};

#[path = "cli/bench.rs"]
mod bench;
#[cfg(feature = "serve")]
#[path = "cli/serve.rs"]
mod serve;

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
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Parameters and FLOPs of each model, beside torchvision's and the paper's figures.
    Info {
        /// Models to show (default: all).
        models: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Classify images: files, folders (recursive) or globs.
    Classify(ClassifyArgs),
    /// Train or fine-tune on an image folder, IDX files or CIFAR batches.
    Train(Box<TrainArgs>),
    /// Evaluate on a labelled set: top-1/top-5, per-class precision/recall/F1, confusion matrix.
    Eval(EvalArgs),
    /// Inference latency per model and batch size (median, min, max), GFLOP/s and peak RSS.
    Bench(bench::BenchArgs),
    /// Serve the model over HTTP: POST /v1/classify, /v1/models, /healthz, /metrics, and a studio page at /.
    #[cfg(feature = "serve")]
    Serve(Box<serve::ServeArgs>),
    /// Convert a .pth or .safetensors state dict to .safetensors with torchvision keys.
    Convert {
        #[arg(long, default_value = "resnet50")]
        model: String,
        input: PathBuf,
        output: PathBuf,
        /// Load only the tensors that fit instead of failing on a mismatch.
        #[arg(long)]
        non_strict: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum EngineKind {
    Fast,
    Burn,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Recipe {
    Imagenet,
    Cifar,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ScheduleArg {
    Constant,
    Step,
    Multistep,
    Cosine,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OptimArg {
    Sgd,
    Adamw,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// DIR (DIR/train + DIR/val, or DIR/<class> with --val-split), idx:DIR or cifar10:DIR.
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    #[arg(long, default_value = "resnet18")]
    model: String,
    /// Start from these weights (tag or file); fc is replaced for new classes.
    #[arg(long)]
    weights: Option<String>,
    /// Train only fc (Ikomia's default when fine-tuning).
    #[arg(long)]
    freeze_backbone: bool,
    /// Defaults for every flag below: imagenet (RandomResizedCrop) or cifar (pad-crop-flip).
    #[arg(long, value_enum, default_value = "imagenet")]
    recipe: Recipe,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_enum)]
    optimizer: Option<OptimArg>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long)]
    nesterov: bool,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    no_wd_on_bn_bias: bool,
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Epochs at which multistep divides the rate by 10.
    #[arg(long, value_delimiter = ',')]
    milestones: Vec<usize>,
    #[arg(long)]
    step_size: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Training crop size (default 224 for imagenet, 32 for cifar).
    #[arg(long)]
    input_size: Option<usize>,
    /// Random-crop padding for the cifar recipe (default 4, the paper's).
    #[arg(long)]
    pad: Option<usize>,
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    #[arg(long, default_value_t = 0.2)]
    val_split: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Loader threads (decoding and augmentation).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The run folder for checkpoints, metrics and plots.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last completed epoch.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
}

#[derive(clap::Args)]
struct EvalArgs {
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
    /// `fast`: the CPU engine (BN folded, fused, AVX-512 when present); `burn`: the reference path.
    #[arg(long, value_enum, default_value = "fast")]
    engine: EngineKind,
}

/// The model to run, shared by `classify` and `serve`.
#[derive(clap::Args)]
struct ModelArgs {
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

#[derive(clap::Args)]
struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Resize the shorter side to N (default: the weights' own, 256 for V1, 232 for V2).
    #[arg(long, conflicts_with = "stretch")]
    resize: Option<usize>,
    /// Centre-crop to N×N (default 224).
    #[arg(long, conflicts_with = "stretch")]
    crop: Option<usize>,
    /// Resize directly to N×N without cropping (Ikomia's behaviour).
    #[arg(long, value_name = "N")]
    stretch: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write a copy of each image with its top-1 label drawn on it.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Load only the weights that fit the model instead of failing on a mismatch.
    #[arg(long)]
    non_strict: bool,
    /// Inference threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// `fast`: the CPU engine (BN folded, fused, AVX-512 when present); `burn`: the reference path.
    #[arg(long, value_enum, default_value = "fast")]
    engine: EngineKind,
    #[arg(required = true)]
    inputs: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { models, format } => info(&models, format),
        Command::Classify(args) => classify(args),
        Command::Train(args) => train(*args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Convert {
            model,
            input,
            output,
            non_strict,
        } => convert(&model, &input, &output, !non_strict),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize)]
struct InfoRow {
    model: &'static str,
    input: usize,
    params: u64,
    gflops: f64,
    torchvision_params: Option<u64>,
    torchvision_gflops: Option<f64>,
    paper_gflops: Option<f64>,
    paper_params_m: Option<f64>,
    config: resnet::ResNetConfig,
}

fn info(names: &[String], format: Format) -> Result<ExitCode> {
    let models: Vec<ModelName> = if names.is_empty() {
        ModelName::ALL.to_vec()
    } else {
        names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?
    };
    let rows: Vec<InfoRow> = models
        .iter()
        .map(|&m| {
            let config = m.config();
            let size = m.native_input();
            let c = config.complexity(size, size);
            let tv = m.torchvision_meta();
            InfoRow {
                model: m.as_str(),
                input: size,
                params: c.params,
                gflops: c.gflops(),
                torchvision_params: tv.map(|t| t.0),
                torchvision_gflops: tv.map(|t| t.1),
                paper_gflops: m.paper_gflops(),
                paper_params_m: m.paper_params_m(),
                config,
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "{:<18} {:>5} {:>13} {:>13} {:>8} {:>8} {:>7} {:>9}",
        "model", "input", "params", "torchvision", "GFLOPs", "tv", "paper", "paper M"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<18} {:>5} {:>13} {:>13} {:>8.3} {:>8} {:>7} {:>9}",
            r.model,
            r.input,
            group(r.params),
            opt(r.torchvision_params.map(group)),
            r.gflops,
            opt(r.torchvision_gflops.map(|g| format!("{g:.3}"))),
            opt(r.paper_gflops.map(|g| format!("{g:.1}"))),
            opt(r
                .paper_params_m
                .map(|p| format!("{p}M ({:.2}M)", r.params as f64 / 1e6))),
        )?;
    }
    writeln!(out, "GFLOPs are multiply-accumulates at the native input size; 'tv' is torchvision's metadata, 'paper' He et al. 2015 Table 1 / Table 6.")?;
    Ok(ExitCode::SUCCESS)
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn download_bar() -> (ProgressBar, impl FnMut(u64, Option<u64>)) {
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
fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
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

#[derive(Serialize)]
struct JsonLine<'a> {
    image: &'a str,
    predictions: &'a [Prediction],
}

/// `--model` and `--weights`: a built-in model's name brings its own weights unless others are named.
fn model_and_weights(model: &str, weights: &str) -> Result<(ModelName, Weights)> {
    match weights::bundled(model) {
        Some(b) if weights == DEFAULT_WEIGHTS => Ok((b.arch, Weights::Bundled(b))),
        Some(b) => Ok((b.arch, Weights::parse(weights)?)),
        None => Ok((model.parse()?, Weights::parse(weights)?)),
    }
}

fn classify(a: ClassifyArgs) -> Result<ExitCode> {
    let (name, weights) = model_and_weights(&a.model.model, &a.model.weights)?;
    let resize = match (a.stretch, a.resize, a.crop) {
        (Some(n), _, _) => Some(Resize::Stretch { size: n }),
        (None, None, None) => None,
        (None, r, c) => Some(Resize::ShorterSide {
            resize: r.unwrap_or_else(|| weights::default_resize(name, &weights)),
            crop: c.unwrap_or(224),
        }),
    };
    let labels = a.model.classes.as_deref().map(read_labels).transpose()?;
    let (dl_bar, mut on_download) = download_bar();
    let opts = ClassifierOptions {
        strict: !a.non_strict,
        resize,
        labels,
        on_download: Some(&mut on_download),
        engine: a.engine == EngineKind::Fast,
        threads: a.threads,
        ..Default::default()
    };
    let clf = Classifier::build(name, weights, opts)?.with_max_pixels(a.max_pixels);
    dl_bar.finish_and_clear();
    if let Some(dir) = &a.annotate {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let inputs = expand_inputs(&a.inputs)?;
    let bar = if inputs.len() > 3 {
        ProgressBar::new(inputs.len() as u64).with_style(
            ProgressStyle::with_template("{pos}/{len} {wide_bar} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut failed = 0usize;
    let mut out = std::io::stdout().lock();
    let mut written = std::collections::HashSet::new();
    for chunk in inputs.chunks(a.batch_size.max(1)) {
        let (mut paths, mut imgs) = (Vec::with_capacity(chunk.len()), Vec::with_capacity(chunk.len()));
        for path in chunk {
            match open_image(path, a.max_pixels) {
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
        let preds = clf.classify_images(&imgs, a.top_k)?;
        for ((path, img), p) in paths.iter().zip(&imgs).zip(&preds) {
            let shown = path.display().to_string();
            bar.suspend(|| -> Result<()> {
                match a.format {
                    Format::Json => writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&JsonLine {
                            image: &shown,
                            predictions: p
                        })?
                    )?,
                    Format::Text => {
                        writeln!(out, "{shown}")?;
                        for (rank, q) in p.iter().enumerate() {
                            writeln!(
                                out,
                                "  {}. {:>6.2}%  {} ({})",
                                rank + 1,
                                100.0 * q.probability,
                                q.label,
                                q.index
                            )?;
                        }
                    }
                }
                Ok(())
            })?;
            if let (Some(dir), Some(top)) = (&a.annotate, p.first()) {
                let text = format!("{}: {:.1}%", top.label, 100.0 * top.probability);
                let dest = annotated_path(dir, path, &mut written);
                if let Err(e) = annotate(img, &text).save(&dest) {
                    failed += 1;
                    bar.suspend(|| eprintln!("error: {}: cannot write: {e}", dest.display()));
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if failed > 0 {
        eprintln!("{failed} of {} inputs failed", inputs.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn convert(model: &str, input: &Path, output: &Path, strict: bool) -> Result<ExitCode> {
    let name: ModelName = model.parse()?;
    let file = weights::WeightsFile::open(input)?;
    let mut config = name.config();
    weights::fit_config(&mut config, &file);
    let mut m = resnet::ResNet::new(&config, &resnet::default_device())?;
    let sd = file.read_for(&m.state_dict_shapes())?;
    let report = weights::load_into(&mut m, sd, strict, name.as_str())?;
    weights::write_safetensors(output, &weights::state_dict(&mut m)?)?;
    eprintln!("wrote {} ({} tensors loaded)", output.display(), report.loaded);
    Ok(ExitCode::SUCCESS)
}

fn train_config(a: &TrainArgs) -> Result<resnet::train::TrainConfig> {
    use resnet::preprocess::Augment;
    use resnet::train::{DataSpec, LrPlan, OptimizerConfig, OptimizerKind, Schedule, TrainConfig};
    let cifar = a.recipe == Recipe::Cifar;
    let epochs = a.epochs.unwrap_or(if cifar { 160 } else { 90 });
    let input = a.input_size.unwrap_or(if cifar { 32 } else { 224 });
    let schedule = match a.schedule.unwrap_or(if cifar {
        ScheduleArg::Multistep
    } else {
        ScheduleArg::Step
    }) {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Step => Schedule::Step {
            step_size: a.step_size.unwrap_or(30),
            gamma: 0.1,
        },
        ScheduleArg::Multistep => Schedule::MultiStep {
            // The paper's 32k/48k of 64k iterations.
            milestones: if a.milestones.is_empty() {
                vec![epochs / 2, epochs * 3 / 4]
            } else {
                a.milestones.clone()
            },
            gamma: 0.1,
        },
        ScheduleArg::Cosine => Schedule::Cosine,
    };
    let optimizer = OptimizerConfig {
        kind: match a.optimizer.unwrap_or(OptimArg::Sgd) {
            OptimArg::Sgd => OptimizerKind::Sgd,
            OptimArg::Adamw => OptimizerKind::AdamW,
        },
        momentum: a.momentum.unwrap_or(0.9),
        nesterov: a.nesterov,
        weight_decay: a.weight_decay.unwrap_or(if a.optimizer == Some(OptimArg::Adamw) {
            0.05
        } else {
            1e-4
        }),
        no_wd_on_bn_bias: a.no_wd_on_bn_bias,
        ..OptimizerConfig::default()
    };
    let Some(data) = &a.data else {
        bail!("--data is required for a new run")
    };
    Ok(TrainConfig {
        data: DataSpec::parse(data),
        model: a.model.parse::<ModelName>()?.to_string(),
        weights: a.weights.clone(),
        freeze_backbone: a.freeze_backbone,
        epochs,
        batch_size: a.batch_size.unwrap_or(if cifar { 128 } else { 32 }),
        lr: LrPlan {
            lr: a.lr.unwrap_or(0.1),
            schedule,
            warmup_epochs: a.warmup_epochs,
            epochs,
        },
        optimizer,
        label_smoothing: a.label_smoothing,
        augment: if cifar {
            Augment::Cifar {
                size: input,
                pad: a.pad.unwrap_or(4),
            }
        } else {
            Augment::imagenet(input)
        },
        // The CIFAR recipe trains on whole images, so eval takes them whole too (no zoom).
        eval_resize: if cifar { input } else { input * 256 / 224 },
        eval_crop: input,
        in_channels: a.in_channels,
        mean_std: None,
        val_split: a.val_split,
        seed: a.seed,
        workers: a.workers,
    })
}

fn train(a: TrainArgs) -> Result<ExitCode> {
    use resnet::train::{Event, Trainer};
    let mut trainer = match &a.resume {
        Some(dir) => Trainer::resume(dir)?,
        None => {
            let out = a.out.clone().context("--out is required")?;
            Trainer::new(train_config(&a)?, &out)?
        }
    };
    let c = &trainer.config;
    eprintln!(
        "training {} on {} images ({} classes), validating on {}; run folder {}",
        c.model,
        trainer.train_set().len(),
        trainer.train_set().classes.len(),
        trainer.val_set().len(),
        trainer.run_dir.display()
    );
    if trainer.state.epochs_done > 0 {
        eprintln!("resuming after epoch {}", trainer.state.epochs_done);
    }
    let epochs = c.epochs;
    let mut bar = ProgressBar::hidden();
    let mut skipped = 0usize;
    trainer.run(&mut |e| match e {
        Event::EpochStart { epoch, batches } => {
            bar = ProgressBar::new(batches as u64).with_style(
                ProgressStyle::with_template(&format!(
                    "epoch {}/{epochs} {{wide_bar}} {{pos}}/{{len}} {{msg}} eta {{eta}}",
                    epoch + 1
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
        Event::Batch {
            loss,
            accuracy,
            images_per_sec,
            lr,
            ..
        } => {
            bar.set_message(format!(
                "loss {loss:.4} acc {:.2}% {images_per_sec:.0} img/s lr {lr:.2e}",
                100.0 * accuracy
            ));
            bar.inc(1);
        }
        Event::Skipped(why) => {
            skipped += 1;
            bar.suspend(|| eprintln!("warning: skipped {why}"));
        }
        Event::Evaluating { .. } => bar.set_message("evaluating"),
        Event::EpochEnd(m) => {
            bar.finish_and_clear();
            eprintln!(
                "epoch {}/{epochs}: train loss {:.4} acc {:.2}% | val loss {:.4} top-1 {:.2}% top-5 {:.2}% | lr {:.2e} | {:.0}s",
                m.epoch,
                m.train_loss,
                100.0 * m.train_acc,
                m.val_loss,
                100.0 * m.top1,
                100.0 * m.top5,
                m.lr,
                m.seconds
            );
        }
    })?;
    if skipped > 0 {
        eprintln!("{skipped} samples were skipped (unreadable)");
    }
    eprintln!(
        "best top-1 {:.2}%: {}",
        100.0 * trainer.state.best_top1,
        trainer.run_dir.join("best.safetensors").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
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
