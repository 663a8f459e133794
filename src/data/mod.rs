//! Datasets for training and evaluation: image folders (torchvision's `ImageFolder`
//! layout), IDX files (MNIST, Fashion-MNIST) and CIFAR-10/100 binary batches.
//!
//! Every dataset is a list of labels plus a way to fetch sample `i` as 8-bit pixels;
//! decoding happens lazily, on the loader's worker threads.
//!
//! Layering: may import `base`, `preprocess`, `error`; see the README's module order.

mod cifar;
mod folder;
mod idx;
mod loader;
pub use crate::base::{rng, Pixels};

use std::path::PathBuf;
use std::sync::Arc;

pub use cifar::read_cifar;
pub use folder::{image_files, image_folder, media_files, split_stratified};
pub use idx::read_idx;
pub use loader::{epoch_order, Batch, Loader, Prepare};

use crate::error::{Error, Result};
use crate::preprocess::{open_image, DEFAULT_MAX_PIXELS};

/// Where the samples live.
#[derive(Clone, Debug)]
pub enum Items {
    /// Image files, decoded on demand.
    Files(Vec<PathBuf>),
    /// Decoded images of one size, back to back (IDX, CIFAR).
    Memory {
        pixels: Arc<Vec<u8>>,
        width: usize,
        height: usize,
        channels: usize,
        /// Sample `i` is stored at `index[i]`.
        index: Vec<usize>,
    },
}

/// A labelled dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub labels: Vec<usize>,
    pub items: Items,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Sample `i`'s pixels. Files are decoded here, so this can fail on a bad file.
    pub fn pixels(&self, i: usize) -> Result<Pixels> {
        match &self.items {
            Items::Files(paths) => {
                let img = open_image(&paths[i], DEFAULT_MAX_PIXELS)?;
                Ok(Pixels {
                    width: img.width() as usize,
                    height: img.height() as usize,
                    channels: 3,
                    data: img.into_raw(),
                })
            }
            Items::Memory {
                pixels,
                width,
                height,
                channels,
                index,
            } => {
                let n = width * height * channels;
                let at = index[i] * n;
                Ok(Pixels {
                    width: *width,
                    height: *height,
                    channels: *channels,
                    data: pixels[at..at + n].to_vec(),
                })
            }
        }
    }

    /// A description of sample `i` for messages: its path, or `#i`.
    pub fn describe(&self, i: usize) -> String {
        match &self.items {
            Items::Files(p) => p[i].display().to_string(),
            Items::Memory { .. } => format!("#{i}"),
        }
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let items = match &self.items {
            Items::Files(p) => Items::Files(indices.iter().map(|&i| p[i].clone()).collect()),
            Items::Memory {
                pixels,
                width,
                height,
                channels,
                index,
            } => Items::Memory {
                pixels: pixels.clone(),
                width: *width,
                height: *height,
                channels: *channels,
                index: indices.iter().map(|&i| index[i]).collect(),
            },
        };
        Dataset {
            classes: self.classes.clone(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            items,
        }
    }

    /// Samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &l in &self.labels {
            c[l] += 1;
        }
        c
    }

    /// Fails on an empty dataset or a class without samples, naming it.
    pub fn check_nonempty(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            return Err(Error::Dataset(format!("the {what} set has no samples")));
        }
        if let Some(k) = self.class_counts().iter().position(|&n| n == 0) {
            return Err(Error::Dataset(format!(
                "class `{}` has no samples in the {what} set; add images or remove the class folder",
                self.classes[k]
            )));
        }
        Ok(())
    }
}
