//! `resnet classify`: images in, top-k classes out (text or JSON lines), annotated PNGs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use resnet::classify::{annotate, annotated_path, read_labels, ClassifierOptions, TransformSource};
use resnet::preprocess::{open_image, Resize, Transform, DEFAULT_MAX_PIXELS};
use resnet::weights;
use resnet::{Classifier, Prediction};

use super::{download_bar, expand_inputs, model_and_weights, EngineKind, Format, ModelArgs};

#[derive(clap::Args)]
pub(crate) struct ClassifyArgs {
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
    /// `fast`: the CPU engine (BN folded, fused, the best SIMD kernel the CPU has); `burn`: the reference path.
    #[arg(long, value_enum, default_value = "fast")]
    engine: EngineKind,
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
    if let Some(note) = clf.weights_note() {
        eprintln!("note: {note}");
    }
    let used = Used {
        transform: clf.transform(),
        source: clf.transform_source(),
    };
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
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if failed > 0 {
        eprintln!("{failed} of {} inputs failed", inputs.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
