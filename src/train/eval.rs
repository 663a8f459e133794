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

/// Runs `model` (a burn model in eval mode, the fast engine or a classifier) over the whole dataset.
pub fn evaluate(
    model: &dyn Logits,
    ds: Arc<Dataset>,
    prepare: Prepare,
    channels: usize,
    workers: usize,
) -> Result<Evaluation> {
    let classes = ds.classes.len();
    let order = data::epoch_order(ds.len(), 0, 0, false);
    let loader = Loader::new(ds, order, 256, prepare, 0, 0, workers);
    let mut cm = vec![vec![0u64; classes]; classes];
    let (mut loss, mut top1, mut top5, mut n, mut skipped) = (0f64, 0usize, 0usize, 0usize, 0usize);
    for b in loader {
        skipped += b.skipped.len();
        if b.labels.is_empty() {
            continue;
        }
        let dims = batch_dims(&b, channels);
        let logits = model.logits_nchw(b.images, dims)?;
        for (row, &label) in logits.iter().zip(&b.labels) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            loss += lse - row[label] as f64;
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            top1 += (idx[0] == label) as usize;
            top5 += idx.iter().take(5).any(|&i| i == label) as usize;
            if idx[0] < classes {
                cm[label][idx[0]] += 1;
            }
            n += 1;
        }
    }
    let d = n.max(1) as f64;
    Ok(Evaluation {
        loss: loss / d,
        top1: top1 as f64 / d,
        top5: top5 as f64 / d,
        confusion: cm,
        samples: n,
        skipped,
    })
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
