//! Grad-CAM (Selvaraju et al., 2017), as `pytorch-grad-cam` 1.5.7 defines it for a ResNet:
//! the target layer is a stage's last block (after its ReLU), the target the raw logit of a
//! class, the channel weights the gradients' mean over H×W, and
//! `cam = ReLU(Σ_c w_c · A_c)`, scaled to [0, 1] as `(cam − min) / (1e-7 + max(cam − min))`.
//!
//! At the last stage the gradient needs no backward pass: the logit is
//! `fc(mean_hw(A))`, so `∂logit_k/∂A[c,h,w] = W_fc[k,c] / (H·W)` and the weights are
//! `W_fc[k,c] / (H·W)`. The fast engine serves it. An earlier stage runs burn's autodiff
//! through the rest of the network, on a copy of the model built on first use.

use std::borrow::Cow;
use std::sync::OnceLock;

use burn::prelude::*;
use image::{Rgb, RgbImage};
use serde::Serialize;

use super::annotate::label_band;
use super::{top_k, Classifier, Layer, Prediction, Runner};
use crate::base::text;
use crate::error::{Error, Result};
use crate::model::{first_max, ResNet};
use crate::weights;

/// A class activation map: which parts of the image raised the class's logit.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The class explained, with its probability.
    pub class: Prediction,
    pub layer: String,
    /// The map at the layer's resolution (7 × 7 for layer4 at 224²), row-major, in [0, 1].
    pub cam: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

impl Explanation {
    /// The map as rows.
    pub fn rows(&self) -> Vec<Vec<f32>> {
        self.cam.chunks(self.width.max(1)).map(<[f32]>::to_vec).collect()
    }

    /// `(row, column)` of the hottest cell (the first, if several).
    pub fn argmax(&self) -> (usize, usize) {
        let i = first_max(&self.cam);
        (i / self.width.max(1), i % self.width.max(1))
    }
}

/// `Σ_c w_c · A_c`, ReLU, then pytorch-grad-cam's scaling to [0, 1].
fn cam(a: &[f32], weights: &[f32], hw: usize) -> Vec<f32> {
    let mut cam = vec![0f32; hw];
    for (w, plane) in weights.iter().zip(a.chunks_exact(hw)) {
        for (c, v) in cam.iter_mut().zip(plane) {
            *c += w * v;
        }
    }
    cam.iter_mut().for_each(|v| *v = v.max(0.0));
    let min = cam.iter().cloned().fold(f32::INFINITY, f32::min);
    cam.iter_mut().for_each(|v| *v -= min);
    let max = cam.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    cam.iter_mut().for_each(|v| *v /= 1e-7 + max);
    cam
}

/// A target layer's activations for one image, the logits, the class explained and its
/// channel weights.
struct Stage {
    map: Vec<f32>,
    dims: [usize; 4],
    logits: Vec<f32>,
    target: usize,
    weights: Vec<f32>,
}

/// `fc`'s weight and bias, borrowed where the runner holds them as they are.
type FcParams<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

/// The burn model on the autodiff device, frozen (BatchNorm on running statistics), for
/// the gradients of an earlier stage.
pub(super) type AutodiffModel = OnceLock<std::result::Result<ResNet, String>>;

impl Classifier {
    /// Grad-CAM at the last stage (`layer4` on the ImageNet models) for `class`, or for the
    /// top-1 class.
    ///
    /// ```
    /// # use resnet::{Classifier, Weights};
    /// let b = resnet::weights::bundled("fashion-mnist-resnet20").unwrap();
    /// let clf = Classifier::new(b.arch, Weights::Bundled(b))?;
    /// let img = resnet::preprocess::open_image("examples/fashion/0000-ankle-boot.png".as_ref(), 1 << 24)?;
    /// let e = clf.explain(&img, None)?;
    /// assert_eq!(e.class.label, "Ankle boot");
    /// assert_eq!((e.layer.as_str(), e.height, e.width), ("layer3", 7, 7));
    /// assert!(e.cam.iter().all(|v| (0.0..=1.0).contains(v)));
    /// # Ok::<(), resnet::Error>(())
    /// ```
    pub fn explain(&self, img: &RgbImage, class: Option<usize>) -> Result<Explanation> {
        self.explain_layer(img, class, Layer::Stage(self.config().layers.len()))
    }

    /// Grad-CAM at `layer` (a stage).
    pub fn explain_layer(&self, img: &RgbImage, class: Option<usize>, layer: Layer) -> Result<Explanation> {
        let (x, dims) = self.transform.batch_values(std::slice::from_ref(img));
        self.explain_values(x, dims, class, layer)
    }

    /// [`Classifier::explain_layer`] for one image's values from [`Classifier::transform`]
    /// (`dims` = `[1, c, h, w]`); the server explains this way.
    pub fn explain_values(
        &self,
        x: Vec<f32>,
        dims: [usize; 4],
        class: Option<usize>,
        layer: Layer,
    ) -> Result<Explanation> {
        self.check_layer(layer)?;
        let stages = self.config().layers.len();
        let Layer::Stage(k) = layer else {
            return Err(Error::Usage(
                "Grad-CAM needs a stage (layer1 … layerN), not the pooled features".into(),
            ));
        };
        if dims[0] != 1 {
            return Err(Error::Usage(format!(
                "Grad-CAM explains one image at a time, not {}",
                dims[0]
            )));
        }
        if let Some(c) = class.filter(|&c| c >= self.config().num_classes) {
            return Err(Error::Usage(format!(
                "class {c} is out of range: this model has classes 0 to {}",
                self.config().num_classes - 1
            )));
        }
        let Stage {
            map,
            dims: [_, _, h, w],
            logits,
            target,
            weights,
        } = if k == stages {
            self.last_stage(x, dims, k, class)?
        } else {
            self.earlier_stage(x, dims, k, class)?
        };
        let chosen = top_k(&logits, logits.len(), &self.labels)
            .into_iter()
            .find(|p| p.index == target)
            .ok_or_else(|| Error::Usage(format!("no class {target}")))?;
        Ok(Explanation {
            class: chosen,
            layer: layer.to_string(),
            cam: cam(&map, &weights, h * w),
            height: h,
            width: w,
        })
    }

    /// The last stage: its map, the logits computed from it (no second pass), and the
    /// analytic weights `W_fc[target, c] / (H·W)`.
    fn last_stage(&self, x: Vec<f32>, dims: [usize; 4], k: usize, class: Option<usize>) -> Result<Stage> {
        let e = self.activations(x, dims, Layer::Stage(k))?;
        let e = e.into_iter().next().ok_or_else(|| Error::Usage("no image".into()))?;
        let [c, h, w] = [e.shape[0], e.shape[1], e.shape[2]];
        let hw = h * w;
        let pooled: Vec<f32> = e
            .values
            .chunks_exact(hw)
            .map(|p| p.iter().sum::<f32>() / hw as f32)
            .collect();
        let (fc_w, bias) = self.fc()?;
        let logits: Vec<f32> = bias
            .iter()
            .zip(fc_w.chunks_exact(c))
            .map(|(b, row)| b + row.iter().zip(&pooled).map(|(a, p)| a * p).sum::<f32>())
            .collect();
        let target = class.unwrap_or_else(|| first_max(&logits));
        let weights = fc_w[target * c..(target + 1) * c]
            .iter()
            .map(|v| v / hw as f32)
            .collect();
        Ok(Stage {
            map: e.values,
            dims: [1, c, h, w],
            logits,
            target,
            weights,
        })
    }

    /// `fc`'s weight `[classes, features]` (row-major) and bias: the engine's own, or burn's
    /// (which holds the weight as `[in, out]`).
    fn fc(&self) -> Result<FcParams<'_>> {
        match &self.runner {
            Runner::Engine(e) => {
                let (w, b) = e.fc();
                Ok((Cow::Borrowed(w), Cow::Borrowed(b)))
            }
            Runner::Burn(m) => {
                let w = tensor_values(m.fc.weight.val().transpose())?;
                let b = match &m.fc.bias {
                    Some(b) => tensor_values(b.val())?,
                    None => vec![0.0; self.config().num_classes],
                };
                Ok((Cow::Owned(w), Cow::Owned(b)))
            }
        }
    }

    /// An earlier stage: its map, the logits, and the gradient weights by autodiff.
    fn earlier_stage(&self, x: Vec<f32>, dims: [usize; 4], k: usize, class: Option<usize>) -> Result<Stage> {
        let model = self
            .autodiff
            .get_or_init(|| self.build_autodiff().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Usage(format!("Grad-CAM below the last stage needs the weights again: {e}")))?;
        let dev = self.device.clone().autodiff();
        let x = Tensor::<4>::from_data(TensorData::new(x, dims), &dev);
        let a = model.forward_to_stage(x, k)?.detach().require_grad();
        let logits = model.forward_from_stage(a.clone(), k)?;
        let values = tensor_values(logits.clone().reshape([-1]))?;
        let target = class.unwrap_or_else(|| first_max(&values));
        let grads = logits.slice([0..1, target..target + 1]).sum().backward();
        let g = a
            .grad(&grads)
            .ok_or_else(|| Error::Backend("no gradient at the target layer".into()))?;
        let [_, c, h, w] = a.dims();
        let weights = tensor_values(g.mean_dim(3).mean_dim(2).reshape([c]))?;
        let amap = tensor_values(a.inner().reshape([c * h * w]))?;
        Ok(Stage {
            map: amap,
            dims: [1, c, h, w],
            logits: values,
            target,
            weights,
        })
    }

    fn build_autodiff(&self) -> Result<ResNet> {
        if matches!(self.weights, weights::Weights::Random) {
            return Err(Error::Usage(
                "random weights cannot be drawn again; explain earlier layers with weights from a file or tag".into(),
            ));
        }
        let config = self.config().clone();
        let dev = self.device.clone().autodiff();
        let mut model = ResNet::new(&config, &dev)?;
        let Some(file) = self.weights.open(self.name, &mut |_, _| {})? else {
            return Err(Error::Usage("these weights have no file to read again".into()));
        };
        let sd = file.read_for(&config.state_dict_shapes())?;
        weights::load_into(&mut model, sd, false, &self.name.to_string())?;
        Ok(model.freeze())
    }
}

fn tensor_values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("{e:?}")))
}

/// A perceptual colormap (viridis: dark blue, teal, yellow), from Matt Zucker's
/// polynomial fit (CC0) of matplotlib's table.
pub fn viridis(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) as f64;
    let c0 = [0.277_727, 0.005_407, 0.334_099];
    let c1 = [0.105_093, 1.404_613, 1.384_590];
    let c2 = [-0.330_861, 0.214_847, 0.095_095];
    let c3 = [-4.634_230, -5.799_100, -19.332_441];
    let c4 = [6.228_270, 14.179_934, 56.690_552];
    let c5 = [4.776_385, -13.745_145, -65.353_033];
    let c6 = [-5.435_456, 4.645_852, 26.312_435];
    std::array::from_fn(|i| {
        let v = c0[i] + t * (c1[i] + t * (c2[i] + t * (c3[i] + t * (c4[i] + t * (c5[i] + t * c6[i])))));
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    })
}

/// The map upsampled bilinearly (half-pixel centres, as `cv2.resize`) to `w × h`.
pub fn upsample(e: &Explanation, w: u32, h: u32) -> Vec<f32> {
    let (sw, sh) = (e.width, e.height);
    let at = |x: usize, y: usize| e.cam[y.min(sh - 1) * sw + x.min(sw - 1)];
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        let fy = ((y as f32 + 0.5) * sh as f32 / h as f32 - 0.5).max(0.0);
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        for x in 0..w {
            let fx = ((x as f32 + 0.5) * sw as f32 / w as f32 - 0.5).max(0.0);
            let (x0, tx) = (fx.floor() as usize, fx.fract());
            let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
            let bottom = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

/// The heat map over the image the network saw (`crop`, the transform's output), half and
/// half, with a colour legend and the class drawn on it. Crops under 224 pixels (28² for
/// Fashion-MNIST) are enlarged by a whole factor first, so the picture stays readable.
pub fn overlay(crop: &RgbImage, e: &Explanation) -> RgbImage {
    let short = crop.width().min(crop.height()).max(1);
    let factor = 224u32.div_ceil(short).max(1);
    let big;
    let crop = if factor > 1 {
        big = image::imageops::resize(
            crop,
            crop.width() * factor,
            crop.height() * factor,
            image::imageops::FilterType::Triangle,
        );
        &big
    } else {
        crop
    };
    let (w, h) = (crop.width(), crop.height());
    let heat = upsample(e, w, h);
    let mut out = RgbImage::new(w, h);
    for ((x, y, p), &v) in crop.enumerate_pixels().zip(&heat) {
        let c = viridis(v);
        out.put_pixel(
            x,
            y,
            Rgb(std::array::from_fn(|i| ((p[i] as u16 + c[i] as u16) / 2) as u8)),
        );
    }
    let label = format!("{}: {:.1}% ({})", e.class.label, 100.0 * e.class.probability, e.layer);
    label_band(&mut out, &label);
    legend(&mut out);
    out
}

/// A small colour bar, 0 on the left and 1 on the right, at the bottom right.
fn legend(img: &mut RgbImage) {
    let (w, h) = (img.width(), img.height());
    let bar_w = (w / 4).max(24);
    let bar_h = (h / 40).max(4);
    let px = (bar_h as f32 * 2.5).max(9.0);
    if bar_w + 8 > w || bar_h + px as u32 + 8 > h {
        return;
    }
    let (x0, y0) = (w - bar_w - 6, h - bar_h - px as u32 - 8);
    for x in 0..bar_w {
        let c = viridis(x as f32 / (bar_w - 1) as f32);
        for y in 0..bar_h {
            img.put_pixel(x0 + x, y0 + y, Rgb(c));
        }
    }
    let ty = (y0 + bar_h + 1) as f32;
    text::draw(img, "0", x0 as f32, ty, px, [255, 255, 255]);
    let (one_w, _) = text::measure("1", px);
    text::draw(img, "1", (x0 + bar_w - one_w) as f32, ty, px, [255, 255, 255]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_relu_then_min_max_scaled() {
        // Two channels of 2×2; weights 1 and -1: raw [0.5, -1, 2, 0] → ReLU [0.5, 0, 2, 0].
        let a = [1.0, 0.0, 2.0, 0.0, 0.5, 1.0, 0.0, 0.0];
        let c = cam(&a, &[1.0, -1.0], 4);
        let want = [0.25, 0.0, 1.0, 0.0];
        for (g, w) in c.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{c:?}");
        }
        // All zero stays all zero (no division by zero).
        assert!(cam(&[0.0; 4], &[1.0], 4).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn viridis_runs_dark_to_yellow_and_upsampling_keeps_the_corners() {
        let (lo, hi) = (viridis(0.0), viridis(1.0));
        assert!(
            lo[2] > lo[1] && lo.iter().map(|&v| v as u32).sum::<u32>() < 200,
            "{lo:?}"
        );
        assert!(hi[0] > 200 && hi[1] > 200 && hi[2] < 80, "{hi:?}");
        let e = Explanation {
            class: Prediction {
                index: 0,
                label: "x".into(),
                probability: 1.0,
            },
            layer: "layer4".into(),
            cam: vec![0.0, 1.0, 0.5, 0.25],
            height: 2,
            width: 2,
        };
        let up = upsample(&e, 8, 8);
        assert_eq!(up[0], 0.0);
        assert_eq!(up[7], 1.0);
        assert_eq!(up[63], 0.25);
        assert_eq!(e.argmax(), (0, 1));
        assert_eq!(e.rows(), vec![vec![0.0, 1.0], vec![0.5, 0.25]]);
    }
}
