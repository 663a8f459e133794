//! `resnet similar`: cosine nearest neighbours in an embedding file, or its near-duplicate pairs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use resnet::classify::export::{unit, Index};
use resnet::classify::similar::{duplicates, nearest};
use resnet::preprocess::open_image;
use resnet::Classifier;

use super::{build_classifier, Format, ModelArgs, RunArgs, TransformArgs};

#[derive(clap::Args)]
pub(crate) struct SimilarArgs {
    /// An embedding file from `resnet embed` (.parquet or .safetensors, pooled features).
    #[arg(long)]
    index: PathBuf,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// The least cosine similarity to list: with --duplicates, at which two images pair up
    /// (default 0.95); with queries, neighbours below it are left out (default: none are).
    #[arg(long)]
    threshold: Option<f32>,
    /// List the index's pairs at or above --threshold instead of querying.
    #[arg(long, conflicts_with = "queries")]
    duplicates: bool,
    /// Queries that are not in the index are embedded with this model; give the flags the
    /// index was made with.
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    transform: TransformArgs,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    run: RunArgs,
    /// Images: an index entry's path uses its stored row, anything else is embedded.
    #[arg(required_unless_present = "duplicates")]
    queries: Vec<String>,
}

pub(crate) fn run(a: SimilarArgs) -> Result<ExitCode> {
    let index = Index::read(&a.index)?;
    if index.is_empty() {
        bail!("{} holds no embeddings", a.index.display());
    }
    let mut out = std::io::stdout().lock();
    if a.duplicates {
        for (i, j, s) in duplicates(&index, a.threshold.unwrap_or(0.95)) {
            let (x, y) = (&index.paths[i], &index.paths[j]);
            match a.format {
                Format::Json => writeln!(out, "{}", serde_json::json!({"a": x, "b": y, "similarity": s}))?,
                Format::Text => writeln!(out, "{s:.4}  {x}  {y}")?,
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut clf: Option<Classifier> = None;
    let mut failed = 0;
    for q in &a.queries {
        let own = index.paths.iter().position(|p| p == q);
        let vector = match own {
            Some(i) => index.row(i).to_vec(),
            None => match embed(&a, &mut clf, q) {
                Ok(mut v) => {
                    if v.len() != index.dim {
                        bail!(
                            "{q}: this model gives {} values but the index holds {}; use the model the index was made with",
                            v.len(),
                            index.dim
                        );
                    }
                    unit(&mut v);
                    v
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {e:#}");
                    continue;
                }
            },
        };
        let mut hits = nearest(&index, &vector, a.top_k, own);
        if let Some(t) = a.threshold {
            hits.retain(|h| h.similarity >= t);
        }
        match a.format {
            Format::Json => {
                let n: Vec<_> = hits
                    .iter()
                    .map(|h| serde_json::json!({"image": index.paths[h.row], "similarity": h.similarity}))
                    .collect();
                writeln!(out, "{}", serde_json::json!({"image": q, "neighbours": n}))?;
            }
            Format::Text => {
                writeln!(out, "{q}")?;
                for (rank, h) in hits.iter().enumerate() {
                    writeln!(out, "  {}. {:.4}  {}", rank + 1, h.similarity, index.paths[h.row])?;
                }
            }
        }
    }
    if failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A query's pooled features, building the model on first use.
fn embed(a: &SimilarArgs, clf: &mut Option<Classifier>, query: &str) -> Result<Vec<f32>> {
    if clf.is_none() {
        *clf = Some(build_classifier(&a.model, &a.transform, &a.run)?);
    }
    let Some(c) = clf.as_ref() else { bail!("no model") };
    Ok(c.embed(&open_image(std::path::Path::new(query), a.run.max_pixels)?)?)
}
