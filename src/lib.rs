//! `resnet`: torchvision-exact residual networks in Rust.
//!
//! The data flows one way, one module per stage:
//! image bytes → [`preprocess`] → [`model`] (burn) → [`classify`] → predictions;
//! video files → [`video`] (an ffmpeg process) → frames → the same path;
//! weight files and tags go through [`weights`] into the model and back out.

// Every unsafe block says why it is sound.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod base;
pub mod classify;
pub mod data;
pub mod engine;
pub mod error;
pub mod model;
pub mod preprocess;
#[cfg(feature = "serve")]
pub mod serve;
pub mod train;
pub mod video;
pub mod weights;

pub use classify::{Classifier, Prediction};
pub use error::{Error, Result};
pub use model::{ModelName, ResNet, ResNetConfig};
pub use weights::Weights;

/// The default burn device: the `flex` CPU backend, or a GPU where a feature selects one.
pub fn default_device() -> burn::prelude::Device {
    burn::prelude::Device::default()
}
