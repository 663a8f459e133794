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

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

use resnet::model::ModelName;
use resnet::video::{is_video_file, FrameAt, Frames, Probe, Sampling};
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
    /// Classify images and videos: files, folders (recursive) or globs.
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

/// Files as given, folders searched recursively for images (and videos, with `videos`;
/// sorted), globs expanded.
pub(crate) fn expand_inputs(inputs: &[String], videos: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for i in inputs {
        let p = PathBuf::from(i);
        if p.is_dir() {
            out.extend(if videos {
                resnet::data::media_files(&p)?
            } else {
                resnet::data::image_files(&p)?
            });
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

/// A progress bar for more than a few inputs, or for any video (its message shows the
/// position in the video).
pub(crate) fn inputs_bar(inputs: &[PathBuf], videos: bool) -> ProgressBar {
    if inputs.len() <= 3 && !(videos && inputs.iter().any(|p| is_video_file(p))) {
        return ProgressBar::hidden();
    }
    ProgressBar::new(inputs.len() as u64).with_style(
        ProgressStyle::with_template("{pos}/{len} {wide_bar} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Which frames of video inputs to take, shared by `classify` and `embed`.
#[derive(clap::Args)]
pub(crate) struct VideoArgs {
    /// Frames per second taken from videos: the frames shown at t = 0, 1/F, 2/F, … (the
    /// frame `ffmpeg -ss t -i clip -frames:v 1` gives).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    fps: f64,
    /// Take every frame of videos instead.
    #[arg(long, conflicts_with = "fps")]
    every_frame: bool,
}

impl VideoArgs {
    pub(crate) fn sampling(&self) -> Sampling {
        if self.every_frame {
            Sampling::EveryFrame
        } else {
            Sampling::Fps(self.fps)
        }
    }
}

/// Receives decoded inputs a batch at a time. A batch holds images, or frames of one video
/// between its `video_start` and `video_end`.
pub(crate) trait MediaSink {
    /// `at[i]` is where `imgs[i]` sits in its video, `None` for an image file. Returns the
    /// number of inputs that failed here.
    fn batch(&mut self, paths: &[&Path], at: &[Option<FrameAt>], imgs: &[RgbImage]) -> Result<usize>;
    fn video_start(&mut self, _path: &Path, _probe: &Probe) -> Result<()> {
        Ok(())
    }
    /// `complete`: every frame was read (else the video's error is reported after this).
    fn video_end(&mut self, _path: &Path, _probe: &Probe, _complete: bool) -> Result<usize> {
        Ok(0)
    }
}

/// Decodes `inputs` a batch at a time and hands each batch to `sink`; with `videos`, video
/// files stream their sampled frames. A file that cannot be read is reported in one line and
/// counted, and the rest go on. Returns the number of failures, the sink's included.
pub(crate) fn media_batches(
    inputs: &[PathBuf],
    batch_size: usize,
    run: &RunArgs,
    videos: Option<&VideoArgs>,
    bar: &ProgressBar,
    sink: &mut impl MediaSink,
) -> Result<usize> {
    let (batch_size, max_pixels) = (batch_size.max(1), run.max_pixels);
    let (mut failed, mut paths, mut imgs) = (0usize, Vec::new(), Vec::new());
    let flush = |paths: &mut Vec<&Path>, imgs: &mut Vec<RgbImage>, sink: &mut _| -> Result<usize> {
        let n = MediaSink::batch(sink, paths, &vec![None; paths.len()], imgs)?;
        paths.clear();
        imgs.clear();
        Ok(n)
    };
    for path in inputs {
        match videos {
            Some(v) if is_video_file(path) => {
                failed += flush(&mut paths, &mut imgs, sink)?;
                failed += video_batches(path, batch_size, max_pixels, v.sampling(), bar, sink)?;
            }
            _ => match resnet::preprocess::open_image(path, max_pixels) {
                Ok(img) => {
                    paths.push(path.as_path());
                    imgs.push(img);
                    if imgs.len() == batch_size {
                        failed += flush(&mut paths, &mut imgs, sink)?;
                    }
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("error: {e}"));
                }
            },
        }
        bar.inc(1);
    }
    failed += flush(&mut paths, &mut imgs, sink)?;
    bar.finish_and_clear();
    Ok(failed)
}

/// One video's frames, a batch at a time; its position shows in the bar's message.
fn video_batches(
    path: &Path,
    batch_size: usize,
    max_pixels: u64,
    sampling: Sampling,
    bar: &ProgressBar,
    sink: &mut impl MediaSink,
) -> Result<usize> {
    let fail = |e: resnet::Error| {
        bar.suspend(|| eprintln!("error: {e}"));
        Ok(1)
    };
    let frames = match Frames::open(path, sampling, max_pixels) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let probe = frames.probe().clone();
    sink.video_start(path, &probe)?;
    let (mut failed, mut at, mut imgs, mut error) = (0, Vec::new(), Vec::new(), None);
    let paths = vec![path; batch_size];
    for frame in frames {
        match frame {
            Ok(f) => {
                at.push(Some(f.at));
                imgs.push(f.image);
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        if imgs.len() == batch_size {
            failed += sink.batch(&paths, &at, &imgs)?;
            if let Some(Some(a)) = at.last() {
                let total = probe.duration.map(|d| format!(" of {d:.0}")).unwrap_or_default();
                bar.set_message(format!("{}: {:.0}{total} s", path.display(), a.time));
            }
            at.clear();
            imgs.clear();
        }
    }
    if !imgs.is_empty() {
        failed += sink.batch(&paths[..imgs.len()], &at, &imgs)?;
    }
    failed += sink.video_end(path, &probe, error.is_none())?;
    bar.set_message("");
    match error {
        Some(e) => Ok(failed + fail(e)?),
        None => Ok(failed),
    }
}

/// [`media_batches`] over images only, with a closure for the batches.
pub(crate) fn image_batches(
    inputs: &[PathBuf],
    batch_size: usize,
    run: &RunArgs,
    bar: &ProgressBar,
    f: impl FnMut(&[&Path], &[RgbImage]) -> Result<usize>,
) -> Result<usize> {
    struct Images<F>(F);
    impl<F: FnMut(&[&Path], &[RgbImage]) -> Result<usize>> MediaSink for Images<F> {
        fn batch(&mut self, paths: &[&Path], _: &[Option<FrameAt>], imgs: &[RgbImage]) -> Result<usize> {
            (self.0)(paths, imgs)
        }
    }
    media_batches(inputs, batch_size, run, None, bar, &mut Images(f))
}

/// `--model` and `--weights`: a built-in model's name brings its own weights unless others are named.
pub(crate) fn model_and_weights(model: &str, weights: &str) -> Result<(ModelName, Weights)> {
    match weights::bundled(model) {
        Some(b) if weights == DEFAULT_WEIGHTS => Ok((b.arch, Weights::Bundled(b))),
        Some(b) => Ok((b.arch, Weights::parse(weights)?)),
        None => Ok((model.parse()?, Weights::parse(weights)?)),
    }
}
