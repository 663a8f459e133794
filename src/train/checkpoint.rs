//! Crash-safe checkpoints: `state.json` is the commit point.
//!
//! An epoch's weights and optimizer state are written under `checkpoints/` with the epoch in
//! their names, and `state.json` names the set that belongs together. Until `state.json` is
//! renamed into place the previous epoch's set is untouched, so a kill at any step resumes
//! from a consistent set: weights, optimizer moments and the epoch (from which the data order
//! and augmentation RNG derive). After the commit, `last.safetensors` and `best.safetensors`
//! in the run folder are pointed at the new files (hard links, so nothing is stored twice) and
//! files no longer named are removed; `--resume` redoes both, so a kill there loses nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result};
use crate::weights::replace_atomic;

/// The folder of epoch-stamped files inside a run folder.
pub const DIR: &str = "checkpoints";

/// The files `state.json` commits, relative to the run folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFiles {
    pub weights: String,
    pub optimizer: String,
    pub best: String,
}

impl CheckpointFiles {
    /// The names for epoch `epoch` (1-based); `best` is the epoch whose weights are best.
    pub fn for_epoch(epoch: usize, best: usize) -> Self {
        CheckpointFiles {
            weights: format!("{DIR}/weights-{epoch:04}.safetensors"),
            optimizer: format!("{DIR}/optimizer-{epoch:04}.safetensors"),
            best: format!("{DIR}/weights-{best:04}.safetensors"),
        }
    }
}

/// The steps of one checkpoint, in order. A test-only hook aborts the process right after a
/// given step: `RESNET_CHECKPOINT_FAULT=EPOCH:STEP` (see tests/train.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Weights = 1,
    Optimizer,
    Metrics,
    Curves,
    Confusion,
    Commit,
    LinkLast,
    LinkBest,
    Cleanup,
}

/// The number of [`Step`]s.
pub const STEPS: u8 = Step::Cleanup as u8;

/// Aborts after `step` of `epoch`'s checkpoint when the fault hook asks for it.
pub fn fault_point(epoch: usize, step: Step) {
    if let Ok(v) = std::env::var("RESNET_CHECKPOINT_FAULT") {
        if v == format!("{epoch}:{}", step as u8) {
            eprintln!("RESNET_CHECKPOINT_FAULT: aborting after step {step:?} of epoch {epoch}");
            std::process::abort();
        }
    }
}

/// Points `run_dir/name` at `target` (relative to `run_dir`) atomically: a hard link renamed
/// over the old file, or a copy where the filesystem has no hard links.
pub fn link(run_dir: &Path, target: &str, name: &str) -> Result<()> {
    let src = run_dir.join(target);
    replace_atomic(&run_dir.join(name), |tmp| {
        std::fs::hard_link(&src, tmp).or_else(|_| std::fs::copy(&src, tmp).map(|_| ()))
    })
}

/// Removes every file under `checkpoints/` that `keep` does not name (an uncommitted epoch's,
/// or superseded ones).
pub fn cleanup(run_dir: &Path, keep: &CheckpointFiles) -> Result<()> {
    let dir = run_dir.join(DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let kept: Vec<PathBuf> = [&keep.weights, &keep.optimizer, &keep.best]
        .iter()
        .map(|f| run_dir.join(f))
        .collect();
    for e in entries.flatten() {
        let p = e.path();
        if !kept.contains(&p) {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}
