//! `resnet embed`: images in, embeddings (pooled features or a stage's map) out, as JSON
//! lines, npy, Parquet or safetensors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::ValueEnum;

use resnet::classify::export::{sink, EmbedFormat};
use resnet::classify::Layer;

use super::{build_classifier, exit_code, expand_inputs, image_batches, inputs_bar, ModelArgs, RunArgs, TransformArgs};

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
    run: RunArgs,
    #[arg(required = true)]
    inputs: Vec<String>,
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
    let inputs = expand_inputs(&a.inputs)?;
    let bar = inputs_bar(inputs.len());
    let failed = image_batches(&inputs, a.batch_size, a.run.max_pixels, &bar, |paths, imgs| {
        for (path, mut e) in paths.iter().zip(clf.embed_layer(imgs, layer)?) {
            if a.normalize {
                e.normalize();
            }
            out.push(&path.display().to_string(), &e)?;
        }
        Ok(0)
    })?;
    let rows = out.finish()?;
    if let Some(p) = &a.out {
        eprintln!("wrote {rows} embeddings ({layer}) to {}", p.display());
    }
    Ok(exit_code(failed, inputs.len()))
}
