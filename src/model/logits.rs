//! Logits as plain rows, from whatever runs the network: the burn model here, the CPU engine
//! and the classifier in their own modules. Training's evaluation takes any of them.

use burn::prelude::*;

use super::ResNet;
use crate::error::{Error, Result};

/// Logits from already-preprocessed NCHW values.
pub trait Logits {
    fn logits_nchw(&self, x: Vec<f32>, dims: [usize; 4]) -> Result<Vec<Vec<f32>>>;
}

/// On the model's own device (a GPU backend's too).
impl Logits for ResNet {
    fn logits_nchw(&self, x: Vec<f32>, dims: [usize; 4]) -> Result<Vec<Vec<f32>>> {
        let dev = self.conv1.weight.val().device();
        rows(self.forward(Tensor::from_data(TensorData::new(x, dims), &dev))?)
    }
}

/// A `[N, K]` tensor as N rows.
pub fn rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [_, k] = t.dims();
    let v = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Backend(format!("{e:?}")))?;
    Ok(split_rows(v, k))
}

/// Flat values as rows of `k`.
/// The index of the first largest value (the top-1 class).
pub fn first_max(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

pub fn split_rows(v: Vec<f32>, k: usize) -> Vec<Vec<f32>> {
    v.chunks(k.max(1)).map(<[f32]>::to_vec).collect()
}
