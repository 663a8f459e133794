//! `resnet explain`: Grad-CAM heat maps, as JSON lines or text, and as PNG overlays.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use resnet::classify::{output_path, overlay, Layer, Prediction};

use super::{
    build_classifier, exit_code, expand_inputs, image_batches, inputs_bar, Format, ModelArgs, RunArgs, TransformArgs,
};

#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    transform: TransformArgs,
    /// The class to explain (default: each image's top-1).
    #[arg(long)]
    class: Option<usize>,
    /// The target stage (default: the last, layer4 on the ImageNet models).
    #[arg(long)]
    layer: Option<String>,
    /// Write `<name>.cam.png` here: the heat map over the image the network saw.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    run: RunArgs,
    #[arg(required = true)]
    inputs: Vec<String>,
}

/// `--format json`: exactly these keys, in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    image: &'a str,
    class: &'a Prediction,
    layer: &'a str,
    /// The map before resizing, as rows.
    cam: Vec<Vec<f32>>,
}

pub(crate) fn run(a: ExplainArgs) -> Result<ExitCode> {
    let clf = build_classifier(&a.model, &a.transform, &a.run)?;
    let layer: Layer = match &a.layer {
        Some(l) => l.parse()?,
        None => Layer::Stage(clf.config().layers.len()),
    };
    clf.check_layer(layer)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let inputs = expand_inputs(&a.inputs, false)?;
    let bar = inputs_bar(&inputs, false);
    let mut out = std::io::stdout().lock();
    let mut written = std::collections::HashSet::new();
    // One image at a time: each is a pass of its own (and a backward pass below the last stage).
    let failed = image_batches(&inputs, 1, &a.run, &bar, |paths, imgs| {
        let mut failed = 0;
        for (path, img) in paths.iter().zip(imgs) {
            let shown = path.display().to_string();
            let e = clf.explain_layer(img, a.class, layer)?;
            bar.suspend(|| -> Result<()> {
                match a.format {
                    Format::Json => {
                        let line = JsonLine {
                            image: &shown,
                            class: &e.class,
                            layer: &e.layer,
                            cam: e.rows(),
                        };
                        writeln!(out, "{}", serde_json::to_string(&line)?)?;
                    }
                    Format::Text => {
                        let (r, c) = e.argmax();
                        writeln!(
                            out,
                            "{shown}\n  {} ({}) {:.2}%: {} map {}×{}, hottest cell row {r}, column {c}",
                            e.class.label,
                            e.class.index,
                            100.0 * e.class.probability,
                            e.layer,
                            e.height,
                            e.width
                        )?;
                    }
                }
                Ok(())
            })?;
            if let Some(dir) = &a.out {
                let dest = output_path(dir, path, "cam.png", &mut written);
                let picture = overlay(&clf.transform().resize_and_crop(img), &e);
                if let Err(err) = picture.save(&dest) {
                    failed += 1;
                    bar.suspend(|| eprintln!("error: {}: cannot write: {err}", dest.display()));
                }
            }
        }
        Ok(failed)
    })?;
    Ok(exit_code(failed, inputs.len()))
}
