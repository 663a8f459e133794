//! `resnet embed`: images (and videos' sampled frames) in, embeddings (pooled features or a stage's map) out, as JSON
//! lines, npy, Parquet or safetensors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::ValueEnum;

use image::RgbImage;
use resnet::classify::export::{sink, EmbedFormat, EmbeddingSink};
use resnet::classify::Layer;
use resnet::video::FrameAt;
use resnet::Classifier;

use super::{
    build_classifier, exit_code, expand_inputs, inputs_bar, media_batches, MediaSink, ModelArgs, RunArgs,
    TransformArgs, VideoArgs,
};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum FormatArg {
    Jsonl,
    Npy,
    Parquet,
    Safetensors,
}

#[derive(clap::Args)]
pub(crate) struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    transform: TransformArgs,
    /// `avgpool` (the pooled features before fc), or a stage's map `layer1` … `layer4`
    /// (npy, parquet or safetensors only).
    #[arg(long, default_value = "avgpool")]
    layer: String,
    /// Scale each embedding to unit L2 norm.
    #[arg(long)]
    normalize: bool,
    /// Default: from --out's extension, else JSON lines on stdout.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The file to write (npy also writes FILE.paths.txt).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    video: VideoArgs,
    #[command(flatten)]
    run: RunArgs,
    #[arg(required = true)]
    inputs: Vec<String>,
}

/// Each batch's embeddings, in order, into the file.
struct Embeddings<'a> {
    clf: &'a Classifier,
    layer: Layer,
    normalize: bool,
    out: &'a mut Box<dyn EmbeddingSink>,
}

impl MediaSink for Embeddings<'_> {
    fn batch(&mut self, paths: &[&Path], at: &[Option<FrameAt>], imgs: &[RgbImage]) -> Result<usize> {
        for ((path, at), mut e) in paths.iter().zip(at).zip(self.clf.embed_layer(imgs, self.layer)?) {
            if self.normalize {
                e.normalize();
            }
            self.out.push(&path.display().to_string(), *at, &e)?;
        }
        Ok(0)
    }
}

pub(crate) fn run(a: EmbedArgs) -> Result<ExitCode> {
    let layer: Layer = a.layer.parse()?;
    let format = match (a.format, &a.out) {
        (Some(FormatArg::Jsonl), _) => EmbedFormat::Jsonl,
        (Some(FormatArg::Npy), _) => EmbedFormat::Npy,
        (Some(FormatArg::Parquet), _) => EmbedFormat::Parquet,
        (Some(FormatArg::Safetensors), _) => EmbedFormat::Safetensors,
        (None, Some(p)) => match EmbedFormat::from_path(p) {
            Some(f) => f,
            None => bail!(
                "{}: name the format with --format jsonl|npy|parquet|safetensors",
                p.display()
            ),
        },
        (None, None) => EmbedFormat::Jsonl,
    };
    let clf = build_classifier(&a.model, &a.transform, &a.run)?;
    clf.check_layer(layer)?;
    let mut out = sink(format, a.out.as_deref(), layer)?;
    let inputs = expand_inputs(&a.inputs, true)?;
    let bar = inputs_bar(&inputs, true);
    let mut sink = Embeddings {
        clf: &clf,
        layer,
        normalize: a.normalize,
        out: &mut out,
    };
    let failed = media_batches(&inputs, a.batch_size, &a.run, Some(&a.video), &bar, &mut sink)?;
    let rows = out.finish()?;
    if let Some(p) = &a.out {
        eprintln!("wrote {rows} embeddings ({layer}) to {}", p.display());
    }
    Ok(exit_code(failed, inputs.len()))
}
