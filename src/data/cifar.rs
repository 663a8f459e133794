//! CIFAR-10/100 binary batches (`data_batch_*.bin`, `test_batch.bin`; `train.bin`, `test.bin`).

use std::path::Path;
use std::sync::Arc;

use super::{Dataset, Items};
use crate::error::{io_err, Error, Result};

const PIXELS: usize = 32 * 32 * 3;

/// Reads the train or test split of CIFAR-10 (or CIFAR-100, fine labels) from its folder.
pub fn read_cifar(dir: &Path, train: bool) -> Result<Dataset> {
    let is100 = dir.join("train.bin").exists();
    let files: Vec<_> = match (is100, train) {
        (true, true) => vec![dir.join("train.bin")],
        (true, false) => vec![dir.join("test.bin")],
        (false, true) => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
        (false, false) => vec![dir.join("test_batch.bin")],
    };
    let label_bytes = if is100 { 2 } else { 1 };
    let record = label_bytes + PIXELS;
    let mut labels = Vec::new();
    let mut hwc = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(io_err(f))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::Dataset(format!(
                "{}: {} bytes is not a whole number of {record}-byte CIFAR records",
                f.display(),
                bytes.len()
            )));
        }
        for r in bytes.chunks_exact(record) {
            labels.push(r[label_bytes - 1] as usize);
            // Stored as planes (R, G, B); we keep pixels interleaved.
            let planes = &r[label_bytes..];
            for p in 0..1024 {
                hwc.extend_from_slice(&[planes[p], planes[1024 + p], planes[2048 + p]]);
            }
        }
    }
    let classes = if is100 {
        (0..100).map(|i| i.to_string()).collect()
    } else {
        crate::base::CIFAR10_LABELS.iter().map(|s| s.to_string()).collect()
    };
    let n = labels.len();
    Ok(Dataset {
        classes,
        labels,
        items: Items::Memory {
            pixels: Arc::new(hwc),
            width: 32,
            height: 32,
            channels: 3,
            index: (0..n).collect(),
        },
    })
}
