//! The `Classifier`: model + weights + transform + labels → top-k predictions.
//!
//! Layering: may import `engine`, `model`, `preprocess`, `weights`, `base`, `error`; see the README's module order.

mod annotate;
mod embed;
mod explain;
pub mod export;
pub mod segments;
pub mod similar;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use serde::Serialize;

pub use annotate::annotate;
pub use embed::{Embedding, Layer};
pub use explain::{overlay, upsample, viridis, Explanation};

use crate::engine::Engine;
use crate::error::{Error, Result};
pub use crate::model::{rows, Logits};
use crate::model::{ModelName, ResNet, ResNetConfig, Stem};
use crate::preprocess::{open_image, Resize, Transform, DEFAULT_MAX_PIXELS};
use crate::weights::{self, hub, Weights};
pub use crate::weights::{read_labels, weights_meta, TransformSource, WeightsMeta};

/// ImageNet-1k class names (WordNet lemmas), index = torchvision's class index.
pub fn imagenet_labels() -> Vec<String> {
    include_str!("imagenet_classes.txt")
        .lines()
        .map(str::to_string)
        .collect()
}

pub use crate::base::CIFAR10_LABELS;

/// One of the top-k classes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// Softmax, in f64.
pub fn probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= sum);
    p
}

/// Softmax (in f64) and the `k` most probable classes, best first.
pub fn top_k(logits: &[f32], k: usize, labels: &[String]) -> Vec<Prediction> {
    top_k_of(&probabilities(logits), k, labels)
}

/// Class `i`'s name, or `class i` past the end of `labels`.
pub fn label_of(labels: &[String], i: usize) -> String {
    labels.get(i).cloned().unwrap_or_else(|| format!("class {i}"))
}

/// The `k` most probable classes of a probability row, best first (ties: lower index).
pub fn top_k_of(probs: &[f64], k: usize, labels: &[String]) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i,
            label: label_of(labels, i),
            probability: probs[i] as f32,
        })
        .collect()
}

/// Options for [`Classifier::build`]; [`Classifier::new`] uses the defaults.
pub struct ClassifierOptions<'a> {
    pub strict: bool,
    /// Overrides the weights' own resize/crop (e.g. `--resize/--crop` or `--stretch`).
    pub resize: Option<Resize>,
    pub labels: Option<Vec<String>>,
    pub device: Device,
    /// Called while a weights tag downloads: `(bytes, total)`.
    pub on_download: Option<hub::Progress<'a>>,
    /// Run on the fast CPU engine when the device is the CPU (default `true`).
    pub engine: bool,
    /// The engine's threads: 0 means `RAYON_NUM_THREADS`, else every core.
    pub threads: usize,
}

impl Default for ClassifierOptions<'_> {
    fn default() -> Self {
        ClassifierOptions {
            strict: true,
            resize: None,
            labels: None,
            device: crate::default_device(),
            on_download: None,
            engine: true,
            threads: 0,
        }
    }
}

/// A ready-to-use image classifier.
///
/// ```
/// use resnet::{Classifier, ModelName, Weights};
/// // The paper's CIFAR resnet20, weights from a torch.save file.
/// let clf = Classifier::new(ModelName::Resnet20, Weights::File("tests/fixtures/resnet20_cifar.pth".into()))?;
/// let top = clf.classify_path("tests/fixtures/chelsea.png", 3)?;
/// assert_eq!(top.len(), 3);
/// assert!(top[0].probability >= top[1].probability);
/// # Ok::<(), resnet::Error>(())
/// ```
///
/// With torchvision's published weights (downloaded once, then cached):
///
/// ```no_run
/// # use resnet::{Classifier, ModelName, Weights};
/// let top = Classifier::new(ModelName::Resnet50, Weights::ImageNet1kV2)?.classify_path("cat.jpg", 5)?;
/// println!("{}: {:.1}%", top[0].label, 100.0 * top[0].probability);
/// # Ok::<(), resnet::Error>(())
/// ```
pub struct Classifier {
    runner: Runner,
    name: ModelName,
    weights: Weights,
    transform: Transform,
    transform_source: TransformSource,
    weights_note: Option<String>,
    labels: Vec<String>,
    device: Device,
    max_pixels: u64,
    /// For Grad-CAM below the last stage: the model on the autodiff device, built on first use.
    autodiff: explain::AutodiffModel,
}

impl Classifier {
    /// A classifier with strict weight loading and the weights' own eval transform.
    pub fn new(name: ModelName, weights: Weights) -> Result<Self> {
        Self::build(name, weights, ClassifierOptions::default())
    }

    pub fn build(name: ModelName, weights: Weights, opts: ClassifierOptions<'_>) -> Result<Self> {
        let mut config = name.config();
        let mut noop = |_: u64, _: Option<u64>| {};
        let file = weights.open(name, opts.on_download.unwrap_or(&mut noop))?;
        if let Some(f) = &file {
            weights::fit_config(&mut config, f);
        }
        let label = match &weights {
            Weights::File(p) => format!("{name} (from {})", p.display()),
            w => format!("{name} ({})", w.describe()),
        };
        // Keys and shapes come from the block plan: the burn model is built only to run on it
        // (or to draw random weights).
        let specs = config.param_specs();
        let sd = match file {
            Some(f) => f.read_for(&config.state_dict_shapes())?,
            None => weights::state_dict(&mut ResNet::new(&config, &opts.device)?)?,
        };
        // The engine needs every weight; a non-strict load with gaps stays on the burn model.
        let complete = weights::check_specs(&specs, &sd, opts.strict, &label)?.is_exact();
        let runner = if opts.engine && on_cpu(&opts.device) && complete {
            Runner::Engine(Engine::new(&config, &sd, opts.threads)?)
        } else {
            let mut model = ResNet::new(&config, &opts.device)?;
            weights::load_into(&mut model, sd, opts.strict, &label)?;
            Runner::Burn(model)
        };
        let meta = weights_meta(name, &weights)?;
        let mut source = meta.source;
        let mut transform = meta.transform.unwrap_or_else(|| default_transform(&config, 256));
        if let Some(r) = opts.resize {
            transform.resize = r;
            source = TransformSource::Flags;
        }
        transform.grayscale = config.in_channels == 1;
        let labels = match opts.labels.or(meta.classes) {
            Some(l) => {
                if l.len() != config.num_classes {
                    return Err(Error::Config(format!(
                        "the class file has {} names but the model has {} classes",
                        l.len(),
                        config.num_classes
                    )));
                }
                l
            }
            None => default_labels(&config),
        };
        Ok(Classifier {
            runner,
            name,
            weights,
            transform,
            transform_source: source,
            weights_note: meta.note,
            labels,
            device: opts.device,
            max_pixels: DEFAULT_MAX_PIXELS,
            autodiff: Default::default(),
        })
    }

    /// The decompression-bomb guard for [`Classifier::classify_path`].
    pub fn with_max_pixels(mut self, max: u64) -> Self {
        self.max_pixels = max;
        self
    }

    /// The burn model, when the classifier runs on it (GPU backends, or `engine: false`).
    pub fn model(&self) -> Option<&ResNet> {
        match &self.runner {
            Runner::Burn(m) => Some(m),
            Runner::Engine(_) => None,
        }
    }
    /// The fast CPU engine, when the classifier runs on it (the default on CPU).
    pub fn engine(&self) -> Option<&Engine> {
        match &self.runner {
            Runner::Engine(e) => Some(e),
            Runner::Burn(_) => None,
        }
    }
    pub fn config(&self) -> &ResNetConfig {
        match &self.runner {
            Runner::Engine(e) => e.config(),
            Runner::Burn(m) => &m.config,
        }
    }
    pub fn name(&self) -> ModelName {
        self.name
    }
    pub fn weights(&self) -> &Weights {
        &self.weights
    }
    /// Where [`Classifier::transform`] came from: a tag, a recognised release file, a run
    /// folder, flags or the default.
    pub fn transform_source(&self) -> &TransformSource {
        &self.transform_source
    }

    /// A line worth showing the user about the weights (a file recognised as a torchvision
    /// release, or named like one but not one); the CLI prints it on stderr.
    pub fn weights_note(&self) -> Option<&str> {
        self.weights_note.as_deref()
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes a file and returns its top-k predictions.
    pub fn classify_path(&self, path: impl AsRef<Path>, k: usize) -> Result<Vec<Prediction>> {
        let img = open_image(path.as_ref(), self.max_pixels)?;
        Ok(self.classify_images(&[img], k)?.remove(0))
    }

    /// Top-k predictions for a batch of decoded images, in one forward pass.
    pub fn classify_images(&self, imgs: &[RgbImage], k: usize) -> Result<Vec<Vec<Prediction>>> {
        Ok(self.logits(imgs)?.iter().map(|l| top_k(l, k, &self.labels)).collect())
    }

    /// Raw logits, one row per image.
    pub fn logits(&self, imgs: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let (x, dims) = self.transform.batch_values(imgs);
        self.logits_nchw(x, dims)
    }

    /// Pooled features (the fc input), one row per image: image embeddings.
    pub fn features(&self, imgs: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let e = self.embed_layer(imgs, Layer::AvgPool)?;
        Ok(e.into_iter().map(|e| e.values).collect())
    }
}

/// What runs a classifier's forward passes.
enum Runner {
    /// The fast CPU engine (the default on the CPU backend).
    Engine(Engine),
    /// The burn model: the reference path, and the one GPU backends run.
    Burn(ResNet),
}

impl Logits for Classifier {
    fn logits_nchw(&self, x: Vec<f32>, dims: [usize; 4]) -> Result<Vec<Vec<f32>>> {
        match &self.runner {
            Runner::Engine(e) => e.logits_nchw(x, dims),
            Runner::Burn(m) => m.logits_nchw(x, dims),
        }
    }
}

/// Whether `dev` is burn's CPU backend, where the fast engine replaces it.
fn on_cpu(dev: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        *dev == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = dev;
        false
    }
}

fn default_transform(config: &ResNetConfig, resize: usize) -> Transform {
    match config.stem {
        Stem::ImageNet => Transform::imagenet(resize, 224),
        Stem::Cifar => Transform::stretch(32),
    }
}

fn default_labels(config: &ResNetConfig) -> Vec<String> {
    match (config.num_classes, config.stem) {
        (1000, _) => imagenet_labels(),
        (10, Stem::Cifar) => CIFAR10_LABELS.iter().map(|s| s.to_string()).collect(),
        (n, _) => (0..n).map(|i| format!("class {i}")).collect(),
    }
}

/// Where `--annotate DIR` writes the copy of `input`: `DIR/<stem>.png`, or `<stem>-2.png`,
/// … when an earlier input of this run had the same stem.
pub fn annotated_path(dir: &Path, input: &Path, taken: &mut HashSet<PathBuf>) -> PathBuf {
    output_path(dir, input, "png", taken)
}

/// `DIR/<stem>.<ext>`, or `<stem>-2.<ext>`, … when an earlier input of this run had the same stem.
pub fn output_path(dir: &Path, input: &Path, ext: &str, taken: &mut HashSet<PathBuf>) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let mut dest = dir.join(format!("{stem}.{ext}"));
    for n in 2.. {
        if taken.insert(dest.clone()) {
            break;
        }
        dest = dir.join(format!("{stem}-{n}.{ext}"));
    }
    dest
}
