//! What weights say about their inputs and outputs, like torchvision's `weights.transforms()`
//! and `weights.meta["categories"]`: a built-in model's own, or those of the `resnet train`
//! run whose folder holds the file. Here, below both `classify` and `train`, so that
//! inference reads a run folder without importing the trainer.

use std::path::Path;

use serde::Deserialize;

use super::Weights;
use crate::error::{io_err, Result};
use crate::model::ModelName;
use crate::preprocess::Transform;

/// A weights source's transform and class names, where it has them.
#[derive(Clone, Debug, Default)]
pub struct WeightsMeta {
    pub transform: Option<Transform>,
    pub classes: Option<Vec<String>>,
}

pub fn weights_meta(name: ModelName, weights: &Weights) -> Result<WeightsMeta> {
    Ok(match weights {
        Weights::Bundled(b) => WeightsMeta {
            transform: Some(Transform::imagenet(b.size, b.size).with_normalization(b.mean.to_vec(), b.std.to_vec())),
            classes: Some(b.classes.iter().map(|s| s.to_string()).collect()),
        },
        Weights::File(p) => match RunMeta::beside(p) {
            Some(run) if run.model() == name.as_str() => {
                let classes = p.parent().map(|d| d.join("classes.txt")).filter(|f| f.exists());
                WeightsMeta {
                    transform: Some(run.eval_transform()),
                    classes: classes.as_deref().map(read_labels).transpose()?,
                }
            }
            _ => WeightsMeta::default(),
        },
        _ => WeightsMeta::default(),
    })
}

/// Reads one class name per line (blank trailing lines ignored).
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut labels: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    Ok(labels)
}

/// The part of a run folder's `config.json` (written by `train::RunFile`) that inference
/// needs: the model and the eval transform the run validated with. Other fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct RunMeta {
    #[serde(rename = "config")]
    settings: RunSettings,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Clone, Debug, Deserialize)]
struct RunSettings {
    model: String,
    eval_resize: usize,
    eval_crop: usize,
    in_channels: usize,
}

impl RunMeta {
    /// The run that wrote `weights` (its folder holds `config.json`), if any.
    pub fn beside(weights: &Path) -> Option<RunMeta> {
        let text = std::fs::read_to_string(weights.parent()?.join("config.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The model the run trained, by torchvision's name (`resnet20`, `resnet50`, …).
    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// Resize the shorter side, centre-crop, normalise; grey for 1-channel models.
    pub fn eval_transform(&self) -> Transform {
        eval_transform(
            self.settings.eval_resize,
            self.settings.eval_crop,
            self.settings.in_channels,
            &self.mean,
            &self.std,
        )
    }
}

/// A run's eval transform; `train` builds its validation transform with this too.
pub fn eval_transform(resize: usize, crop: usize, in_channels: usize, mean: &[f32], std: &[f32]) -> Transform {
    Transform::imagenet(resize, crop)
        .with_normalization(mean.to_vec(), std.to_vec())
        .with_grayscale(in_channels == 1)
}
