//! Embeddings: the pooled features before `fc` (torchvision's
//! `torch.flatten(model.avgpool(model.layer4(x)), 1)`), or a stage's map (`layer1` … `layer4`,
//! the C2–C5 maps a detection backbone takes), and the files they are written to.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use image::RgbImage;

use super::{Classifier, Runner};
use crate::error::{Error, Result};

/// Which activations [`Classifier::embed_layer`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layer {
    /// The pooled features: `[feature_dim]` per image.
    #[default]
    AvgPool,
    /// Stage `layerK`'s output (K from 1): `[c, h, w]` per image.
    Stage(usize),
}

impl FromStr for Layer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "avgpool" {
            return Ok(Layer::AvgPool);
        }
        match s.strip_prefix("layer").and_then(|k| k.parse::<usize>().ok()) {
            Some(k) if k >= 1 => Ok(Layer::Stage(k)),
            _ => Err(Error::Usage(format!(
                "unknown layer {s:?}; use avgpool, layer1, layer2, layer3 or layer4"
            ))),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::AvgPool => f.write_str("avgpool"),
            Layer::Stage(k) => write!(f, "layer{k}"),
        }
    }
}

/// One image's activations and their shape (`[d]`, or `[c, h, w]` for a stage map).
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Embedding {
    /// Scales to unit L2 norm (a zero vector stays zero).
    pub fn normalize(&mut self) {
        let norm = self.values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            self.values.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

impl Classifier {
    /// The pooled features of one image (512 values for resnet18/34, 2048 for resnet50 and
    /// deeper), after the classifier's own transform.
    ///
    /// With the built-in Fashion-MNIST model (resnet50 with `Weights::ImageNet1kV2` gives 2048):
    ///
    /// ```
    /// # use resnet::{Classifier, Weights};
    /// let b = resnet::weights::bundled("fashion-mnist-resnet20").unwrap();
    /// let clf = Classifier::new(b.arch, Weights::Bundled(b))?;
    /// let img = resnet::preprocess::open_image("examples/fashion/0000-ankle-boot.png".as_ref(), 1 << 24)?;
    /// let v = clf.embed(&img)?;
    /// assert_eq!(v.len(), 64);
    /// # Ok::<(), resnet::Error>(())
    /// ```
    pub fn embed(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let mut out = self.embed_layer(std::slice::from_ref(img), Layer::AvgPool)?;
        Ok(out.pop().map(|e| e.values).unwrap_or_default())
    }

    /// An error unless this model has `layer`.
    pub fn check_layer(&self, layer: Layer) -> Result<()> {
        let stages = self.config().layers.len();
        match layer {
            Layer::Stage(k) if k == 0 || k > stages => Err(Error::Usage(format!(
                "{} has layer1 to layer{stages}; there is no layer{k}",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// Each image's activations at `layer`.
    pub fn embed_layer(&self, imgs: &[RgbImage], layer: Layer) -> Result<Vec<Embedding>> {
        let (x, dims) = self.transform.batch_values(imgs);
        self.activations(x, dims, layer)
    }

    /// Each row's activations at `layer` for NCHW values that already went through
    /// [`Classifier::transform`] (the server batches them this way).
    pub fn activations(&self, x: Vec<f32>, dims: [usize; 4], layer: Layer) -> Result<Vec<Embedding>> {
        self.check_layer(layer)?;
        if dims[0] == 0 {
            return Ok(Vec::new());
        }
        let (values, [n, c, h, w]) = match (&self.runner, layer) {
            (Runner::Engine(e), Layer::AvgPool) => {
                (e.forward_features(&x, dims)?, [dims[0], e.config().feature_dim(), 1, 1])
            }
            (Runner::Engine(e), Layer::Stage(k)) => e.forward_stage(&x, dims, k)?,
            (Runner::Burn(m), layer) => {
                let t = Tensor::<4>::from_data(TensorData::new(x, dims), &self.device);
                let out = match layer {
                    Layer::AvgPool => {
                        let f = m.forward_features(t)?;
                        let [n, d] = f.dims();
                        f.reshape([n, d, 1, 1])
                    }
                    Layer::Stage(k) => m.forward_stages(t)?.swap_remove(k - 1),
                };
                let shape = out.dims();
                let v = out
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| Error::Backend(format!("{e:?}")))?;
                (v, shape)
            }
        };
        let per = c * h * w;
        let shape = match layer {
            Layer::AvgPool => vec![c],
            Layer::Stage(_) => vec![c, h, w],
        };
        Ok(values
            .chunks_exact(per.max(1))
            .take(n)
            .map(|v| Embedding {
                values: v.to_vec(),
                shape: shape.clone(),
            })
            .collect())
    }
}
