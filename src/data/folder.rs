//! torchvision's `ImageFolder`: `DIR/<class>/**/*.jpg`, classes in sorted order.

use std::path::{Path, PathBuf};

use super::rng::Rng;
use super::{Dataset, Items};
use crate::error::{io_err, Error, Result};
use crate::preprocess::is_image_file;
use crate::video::is_video_file;

/// Folders deeper than this are not searched (a symlink loop would recurse forever).
const MAX_DEPTH: usize = 64;

fn walk(dir: &Path, keep: fn(&Path) -> bool, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::Dataset(format!(
            "{} is more than {MAX_DEPTH} folders deep (a symlink loop?)",
            dir.display()
        )));
    }
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        if p.is_dir() {
            walk(&p, keep, depth + 1, out)?;
        } else if keep(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// All images under `dir`, recursively, sorted.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, is_image_file, 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// All images and videos under `dir`, recursively, sorted.
pub fn media_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, |p| is_image_file(p) || is_video_file(p), 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// Reads `dir/<class>/…`. With `classes`, those names and order are used (e.g. the train
/// set's for the val set); a class folder outside them is an error.
pub fn image_folder(dir: &Path, classes: Option<&[String]>) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Dataset(format!("{} is not a folder", dir.display())));
    }
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::Dataset(format!(
            "{} has no class folders; expected {}/<class>/<image>",
            dir.display(),
            dir.display()
        )));
    }
    let classes: Vec<String> = match classes {
        Some(c) => {
            if let Some(extra) = found.iter().find(|f| !c.contains(f)) {
                return Err(Error::Dataset(format!(
                    "{}: class `{extra}` is not among the training classes",
                    dir.display()
                )));
            }
            c.to_vec()
        }
        None => found,
    };
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (k, class) in classes.iter().enumerate() {
        let d = dir.join(class);
        if !d.is_dir() {
            continue;
        }
        for f in image_files(&d)? {
            files.push(f);
            labels.push(k);
        }
    }
    Ok(Dataset {
        classes,
        labels,
        items: Items::Files(files),
    })
}

/// A stratified, seeded split: about `fraction` of each class goes to validation (at
/// least one sample where the class has two or more). Returns `(train, val)` indices.
pub fn split_stratified(ds: &Dataset, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ds.classes.len()];
    for (i, &l) in ds.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut idx in by_class {
        rng.shuffle(&mut idx);
        let mut k = (idx.len() as f64 * fraction).round() as usize;
        if k == 0 && idx.len() >= 2 && fraction > 0.0 {
            k = 1;
        }
        val.extend_from_slice(&idx[..k.min(idx.len())]);
        train.extend_from_slice(&idx[k.min(idx.len())..]);
    }
    train.sort();
    val.sort();
    (train, val)
}
