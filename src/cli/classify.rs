//! `resnet classify`: images in, top-k classes out (text or JSON lines), annotated PNGs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use resnet::classify::{annotate, annotated_path, TransformSource};
use resnet::preprocess::Transform;
use resnet::Prediction;

use super::{
    build_classifier, exit_code, expand_inputs, image_batches, inputs_bar, Format, ModelArgs, RunArgs, TransformArgs,
};

#[derive(clap::Args)]
pub(crate) struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[command(flatten)]
    transform: TransformArgs,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write a copy of each image with its top-1 label drawn on it.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[arg(required = true)]
    inputs: Vec<String>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    image: &'a str,
    predictions: &'a [Prediction],
    transform: Used<'a>,
}

/// The transform in use and where it came from (a tag, a recognised file, a run folder, flags).
#[derive(Serialize, Clone, Copy)]
struct Used<'a> {
    #[serde(flatten)]
    transform: &'a Transform,
    source: &'a TransformSource,
}

pub(crate) fn run(a: ClassifyArgs) -> Result<ExitCode> {
    let clf = build_classifier(&a.model, &a.transform, &a.run)?;
    let used = Used {
        transform: clf.transform(),
        source: clf.transform_source(),
    };
    if let Some(dir) = &a.annotate {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let inputs = expand_inputs(&a.inputs)?;
    let bar = inputs_bar(inputs.len());
    let mut out = std::io::stdout().lock();
    let mut written = std::collections::HashSet::new();
    let failed = image_batches(&inputs, a.batch_size, a.run.max_pixels, &bar, |paths, imgs| {
        let mut failed = 0;
        let preds = clf.classify_images(imgs, a.top_k)?;
        for ((path, img), p) in paths.iter().zip(imgs).zip(&preds) {
            let shown = path.display().to_string();
            bar.suspend(|| -> Result<()> {
                match a.format {
                    Format::Json => writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&JsonLine {
                            image: &shown,
                            predictions: p,
                            transform: used,
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
        Ok(failed)
    })?;
    Ok(exit_code(failed, inputs.len()))
}
