//! Weights shipped inside the binary, so a fresh machine with no network can classify.
//!
//! Each entry is a model trained by `resnet train` in this repository; its run folder under
//! `runs/` holds the command, metrics and curves, and `docs/results/` the write-up.

use crate::model::ModelName;

/// A built-in model: architecture, weights, classes and eval preprocessing.
pub struct Bundled {
    /// The name `--model` accepts.
    pub name: &'static str,
    pub arch: ModelName,
    pub classes: &'static [&'static str],
    /// Normalisation of the one grey channel, as the run computed it from its training set.
    pub mean: &'static [f32],
    pub std: &'static [f32],
    /// Input side: shorter side resized to it, then centre-cropped.
    pub size: usize,
    /// Safetensors bytes with torchvision-style keys.
    pub safetensors: &'static [u8],
    /// Where it came from, for `--help` and docs.
    pub source: &'static str,
}

impl std::fmt::Debug for Bundled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bundled({})", self.name)
    }
}

impl PartialEq for Bundled {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Fashion-MNIST's class names, in label order (Xiao et al., 2017).
pub const FASHION_MNIST_LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// All built-in models.
pub static BUNDLED: &[Bundled] = &[Bundled {
    name: "fashion-mnist-resnet20",
    arch: ModelName::Resnet20,
    classes: &FASHION_MNIST_LABELS,
    mean: &[0.284_614_38],
    std: &[0.352_526_78],
    size: 28,
    safetensors: include_bytes!("../../assets/models/fashion-mnist-resnet20.safetensors"),
    source: "runs/fashion-mnist-resnet20 (CIFAR-style resnet20, option A, 1 input channel, trained from scratch)",
}];

/// The built-in model called `name`, if any.
pub fn bundled(name: &str) -> Option<&'static Bundled> {
    BUNDLED.iter().find(|b| b.name.eq_ignore_ascii_case(name))
}
