//! IDX files (MNIST, Fashion-MNIST), gzip-compressed or not.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::{Dataset, Items};
use crate::error::{io_err, Error, Result};

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Dataset(format!("{}: bad gzip data: {e}", path.display())))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an unsigned-byte IDX file: returns its dimensions and data.
fn parse(path: &Path, bytes: &[u8], rank: usize) -> Result<(Vec<usize>, usize)> {
    let bad = |m: String| Error::Dataset(format!("{}: {m}", path.display()));
    if bytes.len() < 4 + 4 * rank || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x} is not unsigned bytes",
            bytes[2]
        )));
    }
    if bytes[3] as usize != rank {
        return Err(bad(format!("expected {rank} dimensions, found {}", bytes[3])));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let header = 4 + 4 * rank;
    let need: usize = dims.iter().product();
    if bytes.len() - header < need {
        return Err(bad(format!("truncated: {} of {need} data bytes", bytes.len() - header)));
    }
    Ok((dims, header))
}

/// Reads an images file (`…-images-idx3-ubyte[.gz]`) and its labels file.
pub fn read_idx(images: &Path, labels: &Path, classes: Vec<String>) -> Result<Dataset> {
    let img = read_maybe_gz(images)?;
    let (dims, off) = parse(images, &img, 3)?;
    let lab = read_maybe_gz(labels)?;
    let (ldims, loff) = parse(labels, &lab, 1)?;
    if ldims[0] != dims[0] {
        return Err(Error::Dataset(format!(
            "{} has {} images but {} has {} labels",
            images.display(),
            dims[0],
            labels.display(),
            ldims[0]
        )));
    }
    let labels: Vec<usize> = lab[loff..loff + ldims[0]].iter().map(|&l| l as usize).collect();
    let n_classes = labels.iter().max().map_or(0, |m| m + 1).max(classes.len());
    let classes = if classes.len() == n_classes {
        classes
    } else {
        (0..n_classes).map(|i| i.to_string()).collect()
    };
    let n = dims.iter().product::<usize>();
    Ok(Dataset {
        classes,
        labels,
        items: Items::Memory {
            pixels: Arc::new(img[off..off + n].to_vec()),
            width: dims[2],
            height: dims[1],
            channels: 1,
            index: (0..dims[0]).collect(),
        },
    })
}
