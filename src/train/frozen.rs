//! Fine-tuning with a frozen backbone (`--freeze-backbone`, Ikomia's default).
//!
//! Only `fc` trains, so the backbone is a fixed function: it runs in inference mode
//! (BatchNorm on its running statistics) on the fast engine, and the head trains on the
//! pooled features through burn. Without augmentation, or with `--cache-features`, each
//! image's features are computed once and every epoch is a pass over a small matrix.

use std::sync::Arc;

use burn::nn::loss::CrossEntropyLoss;
use burn::prelude::*;
use burn::tensor::Gradients;

use super::eval::{batch_dims, Scores};
use super::Evaluation;
use crate::data::{self, Dataset, Loader, Prepare};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::ResNet;

/// Cached features above this size are refused: train with augmentation instead, which
/// streams them.
pub const MAX_CACHE_BYTES: usize = 4 << 30;

/// Pooled features of a set of samples, `[len, dim]` row-major, with their labels.
pub struct Features {
    pub values: Vec<f32>,
    pub labels: Vec<usize>,
    pub dim: usize,
    /// Samples that failed to load, with the reason.
    pub skipped: Vec<String>,
}

impl Features {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// The frozen part of the network, built once from the model's weights.
pub struct Backbone {
    engine: Engine,
    channels: usize,
}

impl Backbone {
    pub fn new(model: &mut ResNet) -> Result<Self> {
        let sd = crate::weights::state_dict(model)?;
        Ok(Backbone {
            engine: Engine::new(&model.config, &sd, 0)?,
            channels: model.config.in_channels,
        })
    }

    pub fn dim(&self) -> usize {
        self.engine.config().feature_dim()
    }

    /// Pooled features `[n, dim]` of NCHW images of shape `dims`.
    pub fn features(&self, images: &[f32], dims: [usize; 4]) -> Result<Vec<f32>> {
        self.engine.forward_features(images, dims)
    }

    /// Features of one prepared batch.
    pub fn batch(&self, b: &data::Batch) -> Result<Vec<f32>> {
        self.features(&b.images, batch_dims(b, self.channels))
    }

    /// Features of every sample of `ds` in stored order, prepared by `prepare` (no
    /// augmentation: the same image always gives the same features).
    pub fn extract(
        &self,
        ds: Arc<Dataset>,
        prepare: Prepare,
        workers: usize,
        on_batch: &mut dyn FnMut(usize, usize),
    ) -> Result<Features> {
        let (n, dim) = (ds.len(), self.dim());
        let bytes = n.saturating_mul(dim).saturating_mul(4);
        if bytes > MAX_CACHE_BYTES {
            return Err(Error::Dataset(format!(
                "caching the features of {n} images × {dim} values needs {:.1} GB, over the {} GB limit; train without --cache-features and with augmentation on, which streams them",
                bytes as f64 / 1e9,
                MAX_CACHE_BYTES >> 30
            )));
        }
        // 16 images a batch: the engine runs as fast as at 64, with a quarter of the activations.
        let loader = Loader::new(ds, data::epoch_order(n, 0, 0, false), 16, prepare, 0, 0, workers);
        let total = loader.len();
        let mut out = Features {
            values: Vec::with_capacity(n * dim),
            labels: Vec::with_capacity(n),
            dim,
            skipped: Vec::new(),
        };
        for (i, b) in loader.enumerate() {
            out.skipped.extend(b.skipped.iter().cloned());
            if !b.labels.is_empty() {
                out.values.extend(self.batch(&b)?);
                out.labels.extend(&b.labels);
            }
            on_batch(i + 1, total);
        }
        Ok(out)
    }
}

/// The head's forward pass on a batch of features: logits on the autodiff device.
pub fn head_logits(model: &ResNet, features: Vec<f32>, n: usize, device: &Device) -> Tensor<2> {
    let dim = model.config.feature_dim();
    model
        .fc
        .forward(Tensor::from_data(TensorData::new(features, [n, dim]), device))
}

/// One head step: cross-entropy on `labels`, its gradients, and the logits for accuracy.
pub fn head_loss(
    model: &ResNet,
    ce: &CrossEntropyLoss,
    features: Vec<f32>,
    labels: &[usize],
    device: &Device,
) -> (f32, Gradients, Vec<usize>) {
    let logits = head_logits(model, features, labels.len(), device);
    let ys: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(ys, [labels.len()]), device);
    let loss = ce.forward(logits.clone(), y);
    let lv: f32 = loss.clone().into_scalar();
    let grads = loss.backward();
    let pred = super::eval::argmax_rows(&logits);
    (lv, grads, pred)
}

/// The batches of one epoch over cached features: `(features, labels)` in shuffled order.
pub fn epoch_batches(f: &Features, seed: u64, epoch: usize, batch: usize) -> Vec<(Vec<f32>, Vec<usize>)> {
    data::epoch_order(f.len(), seed, epoch, true)
        .chunks(batch.max(1))
        .map(|idx| {
            let feats = idx.iter().flat_map(|&i| f.row(i).iter().copied()).collect();
            (feats, idx.iter().map(|&i| f.labels[i]).collect())
        })
        .collect()
}

/// Loss, top-1/top-5 and the confusion matrix of the head on cached features.
pub fn evaluate(model: &ResNet, f: &Features, classes: usize, device: &Device) -> Result<Evaluation> {
    let mut scores = Scores::new(classes);
    for start in (0..f.len()).step_by(1024) {
        let end = (start + 1024).min(f.len());
        let feats = f.values[start * f.dim..end * f.dim].to_vec();
        let logits = head_logits(model, feats, end - start, device)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("{e:?}")))?;
        let k = logits.len() / (end - start).max(1);
        for (row, &label) in logits.chunks(k.max(1)).zip(&f.labels[start..end]) {
            scores.add(row, label);
        }
    }
    Ok(scores.finish(f.skipped.len()))
}
