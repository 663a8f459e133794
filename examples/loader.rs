//! Loader throughput alone (decode + augment + normalise on worker threads, no model), to show
//! the loader is not what limits training. Compare its images/s with `resnet bench --train`.
//! `cargo run --release --example loader -- idx:DIR|DIR [BATCH=128] [WORKERS=2] [SIZE]`
//! IDX data gets the CIFAR recipe (pad 2, crop 28, flip); a folder gets RandomResizedCrop(SIZE=224) + flip.
use std::sync::Arc;
use std::time::Instant;

use resnet::data::{epoch_order, image_folder, Loader, Prepare};
use resnet::preprocess::{to_chw, Augment};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let spec = a
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: loader idx:DIR|DIR [BATCH] [WORKERS] [SIZE]"))?;
    let batch: usize = a.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let workers: usize = a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let (ds, aug, channels) = match spec.strip_prefix("idx:") {
        Some(dir) => (
            resnet::train::read_idx_split(dir.as_ref(), "train")?,
            Augment::Cifar { size: 28, pad: 2 },
            1,
        ),
        None => {
            let size = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(224);
            (image_folder(spec.as_ref(), None)?, Augment::imagenet(size), 3)
        }
    };
    let (mean, std) = (vec![0.5; channels], vec![0.25; channels]);
    let prepare: Prepare = Arc::new(move |px, rng| to_chw(&aug.apply(px, rng), channels, &mean, &std));
    let n = ds.len();
    let t = Instant::now();
    let loader = Loader::new(Arc::new(ds), epoch_order(n, 0, 0, true), batch, prepare, 0, 0, workers);
    let (mut images, mut skipped) = (0usize, 0usize);
    for b in loader {
        images += b.labels.len();
        skipped += b.skipped.len();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{images} images ({skipped} skipped) in {s:.2} s with {workers} workers: {:.0} images/s",
        images as f64 / s
    );
    Ok(())
}
