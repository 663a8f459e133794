//! Weights: files (`.pth`, `.safetensors`), torchvision's tags and their download, and the
//! strict key/shape check between a [`StateDict`] and a model, and what weights say about
//! their inputs and classes ([`weights_meta`]).
//!
//! Layering: may import `model`, `preprocess` (the transform weights come with), `error`; see the README's module order.

mod bundled;
mod files;
pub mod hub;
mod meta;
pub mod onnx;
pub mod onnx_import;
mod pickle;

use std::path::{Path, PathBuf};

use burn::module::{Param, RunningState};
use burn::prelude::*;

pub use bundled::{bundled, Bundled, BUNDLED, FASHION_MNIST_LABELS};
pub(crate) use files::replace_atomic;
pub use files::{
    parse_state_dict, read_state_dict, write_atomic, write_safetensors, write_safetensors_with, StateDict, TorchTensor,
    Values, WeightsFile,
};
pub use hub::{Release, WeightTag};
pub use meta::{
    eval_transform, read_labels, recognise, weights_meta, weights_meta_in, Recognition, RunMeta, TransformSource,
    WeightsMeta, META_MODEL, META_TAG,
};

use crate::error::{Error, Result};
use crate::model::{ModelName, ParamSpec, ParamVisitor, ResNet, ResNetConfig, Role, Slot};

/// Runs the pickle reader alone on `data`, for the fuzzer: `true` when it accepted it.
#[doc(hidden)]
pub fn fuzz_pickle(data: &[u8]) -> bool {
    pickle::load(data).is_ok()
}

/// Loads `data` as a weights file the two ways the library does, for the fuzzer and its
/// stable replay: read for resnet20's shapes, and read whole.
#[doc(hidden)]
pub fn fuzz_weights(data: &[u8]) {
    if let Ok(f) = WeightsFile::parse(Path::new("fuzz"), std::borrow::Cow::Borrowed(data)) {
        let _ = f.read_for(&ModelName::Resnet20.config().state_dict_shapes());
        let _ = f.read_all();
    }
}

/// Where a model's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    /// PyTorch's default initialisation (for training from scratch).
    Random,
    /// A torchvision tag, downloaded once and cached.
    Tag(WeightTag),
    /// A local `.pth` or `.safetensors` file with torchvision keys.
    File(PathBuf),
    /// Weights built into the binary (`fashion-mnist-resnet20`).
    Bundled(&'static Bundled),
}

#[allow(non_upper_case_globals)]
impl Weights {
    pub const ImageNet1kV1: Weights = Weights::Tag(WeightTag::ImageNet1kV1);
    pub const ImageNet1kV2: Weights = Weights::Tag(WeightTag::ImageNet1kV2);
    pub const Default: Weights = Weights::Tag(WeightTag::Default);

    /// Parses a CLI value: a tag name, a built-in model's name, or else a file path.
    pub fn parse(s: &str) -> Result<Weights> {
        if let Ok(tag) = s.parse::<WeightTag>() {
            return Ok(Weights::Tag(tag));
        }
        if let Some(b) = bundled(s) {
            return Ok(Weights::Bundled(b));
        }
        if s.eq_ignore_ascii_case("random") || s.eq_ignore_ascii_case("none") {
            return Ok(Weights::Random);
        }
        let p = PathBuf::from(s);
        if p.exists() || s.contains(['/', '.']) {
            Ok(Weights::File(p))
        } else {
            Err(Error::UnknownTag(s.to_string()))
        }
    }

    /// A short description for reports: the tag or the file name.
    pub fn describe(&self) -> String {
        match self {
            Weights::Random => "random".into(),
            Weights::Tag(t) => t.as_str().into(),
            Weights::File(p) => p.display().to_string(),
            Weights::Bundled(b) => b.name.into(),
        }
    }

    /// The file these weights name for `model`, indexed but not read (downloading a tag if
    /// needed; `progress` sees the bytes); `None` for random weights.
    pub fn open(&self, model: ModelName, progress: hub::Progress<'_>) -> Result<Option<WeightsFile<'static>>> {
        Ok(Some(match self {
            Weights::Random => return Ok(None),
            Weights::File(p) => WeightsFile::open(p)?,
            Weights::Tag(tag) => {
                let path = hub::fetch(hub::release(model, *tag)?.url, &hub::cache_dir(), progress)?;
                WeightsFile::open(&path)?
            }
            Weights::Bundled(b) => WeightsFile::parse(Path::new(b.name), std::borrow::Cow::Borrowed(b.safetensors))?,
        }))
    }
}

/// What [`load_into`] did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// `(key, model shape, file shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// With `strict`, any gap or mismatch is an error naming every key.
    fn require(self, strict: bool, model_name: &str) -> Result<Self> {
        if strict && !self.is_exact() {
            return Err(Error::KeyMismatch {
                model: model_name.to_string(),
                report: self.render(),
            });
        }
        Ok(self)
    }

    /// Every gap and mismatch, one kind per line (at most 20 keys of each).
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let list = |v: &[String]| {
            let mut l = v.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 20 {
                l += &format!(", … ({} in all)", v.len());
            }
            l
        };
        if !self.missing.is_empty() {
            s += &format!("  missing keys: {}\n", list(&self.missing));
        }
        if !self.unexpected.is_empty() {
            s += &format!("  unexpected keys: {}\n", list(&self.unexpected));
        }
        for (k, want, got) in self.mismatched.iter().take(20) {
            s += &format!("  shape mismatch for {k}: model {want:?}, file {got:?}\n");
        }
        s.trim_end().to_string()
    }
}

struct Loader<'a> {
    sd: &'a mut StateDict,
    strict_report: LoadReport,
}

fn float_values(t: TorchTensor) -> Vec<f32> {
    match t.values {
        Values::F32(v) => v,
        Values::I64(v) => v.into_iter().map(|x| x as f32).collect(),
        Values::Skipped => Vec::new(),
    }
}

impl ParamVisitor for Loader<'_> {
    fn visit(&mut self, key: &str, shape: &[usize], slot: Slot<'_>) {
        let Some(t) = self.sd.remove(key) else {
            if !matches!(slot, Slot::BatchCounter) {
                self.strict_report.missing.push(key.to_string());
            }
            return;
        };
        if t.shape != shape {
            self.strict_report
                .mismatched
                .push((key.to_string(), shape.to_vec(), t.shape));
            return;
        }
        if t.values == Values::Skipped {
            // Read for another model's shapes: nothing to load.
            self.strict_report.missing.push(key.to_string());
            return;
        }
        self.strict_report.loaded += 1;
        match slot {
            Slot::Conv(p) => {
                let dev = p.lazy_device();
                let data = TensorData::new(float_values(t), shape.to_vec());
                *p = Param::from_data(data, &dev);
            }
            Slot::Vector(p) => {
                let dev = p.lazy_device();
                *p = Param::from_data(TensorData::new(float_values(t), shape.to_vec()), &dev);
            }
            Slot::LinearWeight(p) => {
                let dev = p.lazy_device();
                let (out, inp) = (shape[0], shape[1]);
                let v = float_values(t);
                let mut tr = vec![0f32; v.len()];
                for o in 0..out {
                    for i in 0..inp {
                        tr[i * out + o] = v[o * inp + i];
                    }
                }
                *p = Param::from_data(TensorData::new(tr, [inp, out]), &dev);
            }
            Slot::Running(r) => {
                let dev = r.value().device();
                *r = RunningState::new(Tensor::from_data(
                    TensorData::new(float_values(t), shape.to_vec()),
                    &dev,
                ));
            }
            Slot::BatchCounter => {}
        }
    }
}

/// Copies a state dict into the model. `strict` fails on any missing, unexpected or
/// mis-shaped key and lists them; otherwise only what fits is loaded and reported.
pub fn load_into(model: &mut ResNet, mut sd: StateDict, strict: bool, model_name: &str) -> Result<LoadReport> {
    let mut loader = Loader {
        sd: &mut sd,
        strict_report: LoadReport::default(),
    };
    model.visit_params(&mut loader);
    let mut report = loader.strict_report;
    report.unexpected = sd.into_keys().collect();
    report.require(strict, model_name)
}

/// The key and shape check of [`load_into`] without loading anything (the model's parameters
/// stay uninitialised): for runners that take the state dict themselves.
pub fn check_keys(model: &mut ResNet, sd: &StateDict, strict: bool, model_name: &str) -> Result<LoadReport> {
    check_specs(&model.config.param_specs(), sd, strict, model_name)
}

/// [`check_keys`] against a config's [`ParamSpec`]s, with no model built.
pub fn check_specs(specs: &[ParamSpec], sd: &StateDict, strict: bool, model_name: &str) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut unexpected: std::collections::BTreeSet<&str> = sd.keys().map(String::as_str).collect();
    for p in specs {
        match sd.get_key_value(p.key.as_str()) {
            None if p.role == Role::BatchCounter => {}
            None => report.missing.push(p.key.clone()),
            Some((k, t)) => {
                unexpected.remove(k.as_str());
                if t.shape != p.shape {
                    report
                        .mismatched
                        .push((p.key.clone(), p.shape.clone(), t.shape.clone()));
                } else if t.values == Values::Skipped {
                    report.missing.push(p.key.clone());
                } else {
                    report.loaded += 1;
                }
            }
        }
    }
    report.unexpected = unexpected.into_iter().map(str::to_string).collect();
    report.require(strict, model_name)
}

/// Reads a file and loads it into the model (see [`load_into`]): only the tensors the model
/// expects, with its shapes, are read.
pub fn load_file(model: &mut ResNet, path: &Path, strict: bool, model_name: &str) -> Result<LoadReport> {
    let sd = WeightsFile::open(path)?.read_for(&model.state_dict_shapes())?;
    load_into(model, sd, strict, model_name)
}

/// The model's `state_dict()` with torchvision's keys, shapes and dtypes.
pub fn state_dict(model: &mut ResNet) -> Result<StateDict> {
    struct Saver(StateDict, Option<String>);
    fn vec<const D: usize>(t: Tensor<D>, err: &mut Option<String>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_else(|e| {
            *err = Some(format!("{e:?}"));
            Vec::new()
        })
    }
    impl ParamVisitor for Saver {
        fn visit(&mut self, key: &str, shape: &[usize], slot: Slot<'_>) {
            let values = match slot {
                Slot::Conv(p) => Values::F32(vec(p.val(), &mut self.1)),
                Slot::Vector(p) => Values::F32(vec(p.val(), &mut self.1)),
                Slot::LinearWeight(p) => Values::F32(vec(p.val().transpose(), &mut self.1)),
                Slot::Running(r) => Values::F32(vec(r.value_sync(), &mut self.1)),
                Slot::BatchCounter => Values::I64(vec![0]),
            };
            self.0.insert(
                key.to_string(),
                TorchTensor {
                    shape: shape.to_vec(),
                    values,
                },
            );
        }
    }
    let mut s = Saver(StateDict::new(), None);
    model.visit_params(&mut s);
    match s.1 {
        Some(e) => Err(Error::Backend(e)),
        None => Ok(s.0),
    }
}

/// A file decides the head size and input channels (fine-tuned or grayscale models). The
/// shapes were checked at indexing to lie inside the file, so the model this sizes is no
/// bigger than the file.
pub fn fit_config(config: &mut ResNetConfig, file: &WeightsFile<'_>) {
    let shapes = file.shapes();
    if let Some(fc) = shapes.get("fc.weight").filter(|s| s.len() == 2) {
        config.num_classes = fc[0];
    }
    if let Some(c1) = shapes.get("conv1.weight").filter(|s| s.len() == 4) {
        config.in_channels = c1[1];
    }
    // The paper's CIFAR nets come in three shortcut options with different keys: projections
    // on every block (C, so on layer1.0 too), where the shape changes (B), or none (A).
    if config.stem == crate::model::Stem::Cifar && config.residual {
        let has = |k: &str| shapes.contains_key(k);
        if has("layer1.0.downsample.0.weight") {
            config.shortcut = crate::model::Shortcut::C;
        } else if has("layer2.0.downsample.0.weight") {
            config.shortcut = crate::model::Shortcut::B;
        }
    }
}

/// The eval resize (shorter side) that goes with these weights: 232 for V2 tags and files
/// recognised as V2 releases, else 256.
pub fn default_resize(name: ModelName, weights: &Weights) -> usize {
    match weights_meta(name, weights)
        .ok()
        .and_then(|m| m.transform)
        .map(|t| t.resize)
    {
        Some(crate::preprocess::Resize::ShorterSide { resize, .. }) => resize,
        _ => 256,
    }
}
