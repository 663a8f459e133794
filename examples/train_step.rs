//! Times one training step (forward, backward, SGD update) on random data, to compare with
//! `bench/train_step.py` (PyTorch). `cargo run --release --example train_step -- MODEL BATCH SIZE [STEPS] [IN_CH] [CLASSES]`
//! Prints one line: `MODEL BATCH SIZE median_ms forward_ms backward_ms update_ms`.
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use resnet::train::{Optimizer, OptimizerConfig};
use resnet::{ModelName, ResNet};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        anyhow::bail!("usage: train_step MODEL BATCH SIZE [STEPS=10] [IN_CH=3] [CLASSES=model's]");
    }
    let name: ModelName = a[1].parse()?;
    let (batch, size): (usize, usize) = (a[2].parse()?, a[3].parse()?);
    let steps: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mut config = name.config();
    if let Some(c) = a.get(5) {
        config.in_channels = c.parse()?;
    }
    if let Some(c) = a.get(6) {
        config.num_classes = c.parse()?;
    }
    let dev = resnet::default_device().autodiff();
    dev.seed(0);
    let mut model = ResNet::new(&config, &dev)?;
    let mut opt = Optimizer::new(OptimizerConfig {
        nesterov: true,
        weight_decay: 5e-4,
        ..Default::default()
    });
    let ce = CrossEntropyLossConfig::new().init(&dev);
    let x = Tensor::<4>::random(
        [batch, config.in_channels, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let labels: Vec<i64> = (0..batch).map(|i| (i % config.num_classes) as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &dev);
    let (mut total, mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![], vec![]);
    // Two warm-up steps, then the timed ones; each phase is synced by reading a value back.
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let loss = ce.forward(model.forward(x.clone())?, y.clone());
        let _: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        opt.step(&mut model, &grads, 0.1);
        let _: f32 = model.fc.weight.val().slice([0..1, 0..1]).into_scalar();
        let t3 = Instant::now();
        if i >= 2 {
            total.push((t3 - t0).as_secs_f64() * 1e3);
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            upd.push((t3 - t2).as_secs_f64() * 1e3);
        }
    }
    println!(
        "{} {batch} {size} {:.1} {:.1} {:.1} {:.1}",
        name.as_str(),
        median(total),
        median(fwd),
        median(bwd),
        median(upd)
    );
    Ok(())
}
