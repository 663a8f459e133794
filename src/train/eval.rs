//! Evaluation: loss, top-1/top-5, the confusion matrix `cm[true][pred]` and per-class
//! precision, recall and F1 (precision = tp / column sum, recall = tp / row sum).

use std::sync::Arc;

use burn::prelude::*;
use serde::Serialize;

use crate::data::{self, Batch, Dataset, Loader, Pixels, Prepare};
use crate::error::Result;
use crate::model::Logits;
use crate::preprocess::{to_chw, Transform};

/// Evaluation results.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][pred]`.
    pub confusion: Vec<Vec<u64>>,
    pub samples: usize,
    pub skipped: usize,
}

/// One class's scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassReport {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Samples whose true class this is (the row sum).
    pub support: u64,
}

impl Evaluation {
    /// Per-class precision (tp / predicted as the class), recall (tp / truly the class), F1.
    pub fn per_class(&self, classes: &[String]) -> Vec<ClassReport> {
        let k = self.confusion.len();
        (0..k)
            .map(|c| {
                let tp = self.confusion[c][c] as f64;
                let predicted: u64 = (0..k).map(|t| self.confusion[t][c]).sum();
                let support: u64 = self.confusion[c].iter().sum();
                let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
                let recall = if support > 0 { tp / support as f64 } else { 0.0 };
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassReport {
                    class: classes.get(c).cloned().unwrap_or_else(|| c.to_string()),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }

    /// The confusion matrix as CSV with a header row and column of class names.
    pub fn confusion_csv(&self, classes: &[String]) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from("true\\pred");
        for c in classes {
            out += &format!(",{}", quote(c));
        }
        out.push('\n');
        for (c, row) in self.confusion.iter().enumerate() {
            out += &quote(classes.get(c).map(String::as_str).unwrap_or(""));
            for n in row {
                out += &format!(",{n}");
            }
            out.push('\n');
        }
        out
    }
}

/// The eval preparation: decoded files (`files`) are resized and cropped by `t` first;
/// in-memory images (IDX, CIFAR) are used at their size. Then `t` normalises to `channels`.
pub fn prepare(t: Transform, files: bool, channels: usize) -> Prepare {
    Arc::new(move |px: &Pixels, _| {
        if !files {
            return to_chw(px, channels, &t.mean, &t.std);
        }
        let img = image::RgbImage::from_raw(px.width as u32, px.height as u32, px.data.clone()).unwrap_or_default();
        let out = t.resize_and_crop(&img);
        let p = Pixels {
            width: out.width() as usize,
            height: out.height() as usize,
            channels: 3,
            data: out.into_raw(),
        };
        to_chw(&p, channels, &t.mean, &t.std)
    })
}

/// A batch's `[n, c, h, w]` (square images).
pub fn batch_dims(b: &Batch, channels: usize) -> [usize; 4] {
    let hw = b.sample_len / channels.max(1);
    let side = (hw as f64).sqrt().round() as usize;
    [b.labels.len(), channels, side, hw / side.max(1)]
}

/// A batch as a `[n, c, h, w]` tensor.
pub fn batch_tensor(b: &Batch, channels: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(b.images.clone(), batch_dims(b, channels)), device)
}

/// The top-1 class of each row of autodiff logits.
pub fn argmax_rows(logits: &Tensor<2>) -> Vec<usize> {
    logits
        .clone()
        .inner()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|p| p as usize)
        .collect()
}

/// Accumulates loss, top-1/top-5 and the confusion matrix, one row of logits at a time.
pub struct Scores {
    confusion: Vec<Vec<u64>>,
    loss: f64,
    top1: usize,
    top5: usize,
    n: usize,
}

impl Scores {
    pub fn new(classes: usize) -> Self {
        Scores {
            confusion: vec![vec![0u64; classes]; classes],
            loss: 0.0,
            top1: 0,
            top5: 0,
            n: 0,
        }
    }

    /// One sample's logits and its true class.
    pub fn add(&mut self, row: &[f32], label: usize) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        self.loss += lse - row.get(label).copied().unwrap_or(f32::NEG_INFINITY) as f64;
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        self.top1 += (idx.first() == Some(&label)) as usize;
        self.top5 += idx.iter().take(5).any(|&i| i == label) as usize;
        if let (Some(&p), Some(cm)) = (idx.first(), self.confusion.get_mut(label)) {
            if let Some(cell) = cm.get_mut(p) {
                *cell += 1;
            }
        }
        self.n += 1;
    }

    pub fn finish(self, skipped: usize) -> Evaluation {
        let d = self.n.max(1) as f64;
        Evaluation {
            loss: self.loss / d,
            top1: self.top1 as f64 / d,
            top5: self.top5 as f64 / d,
            confusion: self.confusion,
            samples: self.n,
            skipped,
        }
    }
}

/// Runs `model` (a burn model in eval mode, the fast engine or a classifier) over the whole dataset.
pub fn evaluate(
    model: &dyn Logits,
    ds: Arc<Dataset>,
    prepare: Prepare,
    channels: usize,
    workers: usize,
) -> Result<Evaluation> {
    let mut scores = Scores::new(ds.classes.len());
    let order = data::epoch_order(ds.len(), 0, 0, false);
    let loader = Loader::new(ds, order, 256, prepare, 0, 0, workers);
    let mut skipped = 0usize;
    for b in loader {
        skipped += b.skipped.len();
        if b.labels.is_empty() {
            continue;
        }
        let dims = batch_dims(&b, channels);
        let logits = model.logits_nchw(b.images, dims)?;
        for (row, &label) in logits.iter().zip(&b.labels) {
            scores.add(row, label);
        }
    }
    Ok(scores.finish(skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_is_over_columns_and_recall_over_rows() {
        // cm[true][pred]: class 0 is predicted 3 times (2 right), truly occurs 4 times.
        let ev = Evaluation {
            loss: 0.0,
            top1: 0.0,
            top5: 0.0,
            confusion: vec![vec![2, 2], vec![1, 5]],
            samples: 10,
            skipped: 0,
        };
        let r = ev.per_class(&["a".into(), "b".into()]);
        assert!((r[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r[0].recall - 0.5).abs() < 1e-12);
        assert!((r[1].precision - 5.0 / 7.0).abs() < 1e-12);
        assert!((r[1].recall - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(r[0].support, 4);
        let f1 = 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5);
        assert!((r[0].f1 - f1).abs() < 1e-12);
        assert!(ev
            .confusion_csv(&["a".into(), "b".into()])
            .starts_with("true\\pred,\"a\",\"b\"\n\"a\",2,2\n"));
    }
}
