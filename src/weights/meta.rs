//! What weights say about their inputs and outputs, like torchvision's `weights.transforms()`
//! and `weights.meta["categories"]`: a built-in model's own, or those of the `resnet train`
//! run whose folder holds the file. Here, below both `classify` and `train`, so that
//! inference reads a run folder without importing the trainer.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::hub::{self, Release, WeightTag};
use super::Weights;
use crate::error::{io_err, Result};
use crate::model::ModelName;
use crate::preprocess::Transform;

/// Where a classifier's transform came from, as `/v1/models` and `classify --format json`
/// report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TransformSource {
    /// A torchvision tag (`--weights IMAGENET1K_V2`): that release's transform.
    Tag { tag: String },
    /// A local file recognised as a torchvision release by its name and sha256.
    Release { tag: String, file: String },
    /// A `.safetensors` that `resnet convert` wrote from a release, which keeps its tag.
    Converted { tag: String, file: String },
    /// The `resnet train` run folder beside the weights (`config.json`).
    RunFolder,
    /// The weights built into the binary.
    BuiltIn,
    /// `--resize`, `--crop` or `--stretch` (the library's `ClassifierOptions::resize`).
    Flags,
    /// Nothing known about these weights: the model's default (resize 256, crop 224 on ImageNet).
    #[default]
    Default,
}

/// A weights source's transform and class names, where it has them.
#[derive(Clone, Debug, Default)]
pub struct WeightsMeta {
    pub transform: Option<Transform>,
    pub classes: Option<Vec<String>>,
    pub source: TransformSource,
    /// One line for stderr when a file was recognised as a release, or nearly was.
    pub note: Option<String>,
}

pub fn weights_meta(name: ModelName, weights: &Weights) -> Result<WeightsMeta> {
    weights_meta_in(name, weights, hub::RELEASES)
}

/// [`weights_meta`] against a release table of the caller's (tests use their own).
pub fn weights_meta_in(name: ModelName, weights: &Weights, releases: &[Release]) -> Result<WeightsMeta> {
    let release_transform = |r: &Release| Transform::imagenet(r.resize, 224);
    Ok(match weights {
        Weights::Bundled(b) => WeightsMeta {
            transform: Some(Transform::imagenet(b.size, b.size).with_normalization(b.mean.to_vec(), b.std.to_vec())),
            classes: Some(b.classes.iter().map(|s| s.to_string()).collect()),
            source: TransformSource::BuiltIn,
            note: None,
        },
        Weights::Tag(t) => match hub::release(name, *t) {
            Ok(r) => WeightsMeta {
                transform: Some(release_transform(&r)),
                source: TransformSource::Tag {
                    tag: r.tag.as_str().into(),
                },
                ..Default::default()
            },
            Err(_) => WeightsMeta::default(),
        },
        Weights::File(p) => {
            if let Some(run) = RunMeta::beside(p).filter(|run| run.model() == name.as_str()) {
                let classes = p.parent().map(|d| d.join("classes.txt")).filter(|f| f.exists());
                return Ok(WeightsMeta {
                    transform: Some(run.eval_transform()),
                    classes: classes.as_deref().map(read_labels).transpose()?,
                    source: TransformSource::RunFolder,
                    note: None,
                });
            }
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let said = |r: &Release, how: &str| {
                let resize = r.resize;
                format!("{how} {} ({file}): resize {resize}, crop 224", r.tag.as_str())
            };
            match recognise(p, name, releases)? {
                Recognition::Release(r) => WeightsMeta {
                    transform: Some(release_transform(&r)),
                    note: Some(said(&r, "recognised")),
                    source: TransformSource::Release {
                        tag: r.tag.as_str().into(),
                        file,
                    },
                    ..Default::default()
                },
                Recognition::Converted(r) => WeightsMeta {
                    transform: Some(release_transform(&r)),
                    note: Some(said(&r, "converted from")),
                    source: TransformSource::Converted {
                        tag: r.tag.as_str().into(),
                        file,
                    },
                    ..Default::default()
                },
                Recognition::NameOnly { release, sha256 } => WeightsMeta {
                    note: Some(format!(
                        "{file} is named like torchvision's {} release, but its sha256 starts {}, not {}: \
                         using the default transform (resize 256, crop 224)",
                        release.tag.as_str(),
                        &sha256[..sha256.len().min(8)],
                        release.hash_prefix().unwrap_or("")
                    )),
                    ..Default::default()
                },
                Recognition::None => WeightsMeta::default(),
            }
        }
        Weights::Random => WeightsMeta::default(),
    })
}

/// What a local weights file is, as far as torchvision's releases go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recognition {
    /// Named like a release of this model, with that release's sha256 prefix.
    Release(Release),
    /// A `.safetensors` whose metadata carries a release's tag (`resnet convert` keeps it).
    Converted(Release),
    /// Named like a release, but the content is another file.
    NameOnly {
        release: Release,
        sha256: String,
    },
    None,
}

/// Metadata keys `resnet convert` writes when its input was a release.
pub const META_MODEL: &str = "torchvision_model";
pub const META_TAG: &str = "torchvision_tag";

/// Whether `path` is one of `releases` for `model`. The file is hashed only when its name is a
/// release's, so other files cost nothing; a `.safetensors` header is read for the tag.
pub fn recognise(path: &Path, model: ModelName, releases: &[Release]) -> Result<Recognition> {
    let name = path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
    if let Some(r) = releases.iter().find(|r| r.model == model && r.file_name() == name) {
        let sha256 = hub::sha256_file(path)?;
        return Ok(match r.hash_prefix() {
            Some(h) if sha256.starts_with(h) => Recognition::Release(*r),
            _ => Recognition::NameOnly { release: *r, sha256 },
        });
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let meta = safetensors_metadata(path).unwrap_or_default();
        if meta.get(META_MODEL).map(String::as_str) == Some(model.as_str()) {
            let tag = meta.get(META_TAG).and_then(|t| t.parse::<WeightTag>().ok());
            if let Some(r) = tag.and_then(|t| releases.iter().find(|r| r.model == model && r.tag == t)) {
                return Ok(Recognition::Converted(*r));
            }
        }
    }
    Ok(Recognition::None)
}

/// A `.safetensors` file's `__metadata__`, read from its header alone (at most 1 MB of it);
/// `None` for anything else.
fn safetensors_metadata(path: &Path) -> Option<HashMap<String, String>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 1 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    serde_json::from_slice::<Header>(&header).ok()?.metadata
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
