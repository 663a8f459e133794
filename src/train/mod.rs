//! Training and fine-tuning: the loop, checkpoints, metrics and resume.
//!
//! Everything a run writes lives in its folder and is written atomically: `config.json`,
//! `classes.txt`, `metrics.csv`, the epoch's weights and optimizer state under `checkpoints/`,
//! and `state.json`, written last, which commits them (see [`checkpoint`]); then
//! `last.safetensors`/`best.safetensors` (torchvision keys) are pointed at the new weights.
//!
//! Layering: may import `data`, `model`, `preprocess`, `weights`, `base`, `error`; see the README's module order.

pub mod bench;
pub mod checkpoint;
pub mod eval;
pub mod frozen;
pub mod native;
mod optim;
pub mod plots;
mod schedule;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use eval::{ClassReport, Evaluation};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use schedule::{LrPlan, Schedule};

use crate::data::{self, Dataset, Loader, Prepare};
use crate::error::{io_err, Error, Result};
use crate::model::{ModelName, ResNet};
use crate::preprocess::{to_chw, Augment, Transform};
use crate::weights::{self, write_atomic, FASHION_MNIST_LABELS};
use checkpoint::{fault_point, CheckpointFiles, Step};

/// Where the data comes from (`--data`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum DataSpec {
    /// `DIR/train/<class>` + `DIR/val/<class>`, or `DIR/<class>` split by `val_split`.
    Folder(PathBuf),
    /// A folder of IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-…`).
    Idx(PathBuf),
    /// A CIFAR-10/100 binary folder.
    Cifar(PathBuf),
}

impl DataSpec {
    /// `DIR`, `idx:PATH`, `cifar10:PATH` or `cifar100:PATH`.
    pub fn parse(s: &str) -> Self {
        if let Some(p) = s.strip_prefix("idx:") {
            DataSpec::Idx(p.into())
        } else if let Some(p) = s.strip_prefix("cifar10:").or_else(|| s.strip_prefix("cifar100:")) {
            DataSpec::Cifar(p.into())
        } else {
            DataSpec::Folder(s.into())
        }
    }
}

/// Every setting of a run; saved as `config.json` and reused by `--resume`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: DataSpec,
    pub model: String,
    /// A weights tag or file to fine-tune from; `fc` is replaced when the classes differ.
    pub weights: Option<String>,
    pub freeze_backbone: bool,
    /// With `freeze_backbone`: compute each training image's features once, unaugmented.
    #[serde(default)]
    pub cache_features: bool,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub lr: LrPlan,
    pub label_smoothing: f64,
    pub augment: Augment,
    /// Evaluation transform for image folders (resize, crop); in-memory sets are used as they are.
    pub eval_resize: usize,
    pub eval_crop: usize,
    pub in_channels: usize,
    /// Normalisation; `None` computes the training set's own mean and std (in-memory sets)
    /// or uses ImageNet's (folders).
    pub mean_std: Option<(Vec<f32>, Vec<f32>)>,
    pub val_split: f64,
    pub seed: u64,
    pub workers: usize,
}

/// What the loop reports; the CLI turns it into progress bars and lines.
#[derive(Clone, Debug)]
pub enum Event {
    EpochStart {
        epoch: usize,
        batches: usize,
    },
    Batch {
        epoch: usize,
        batch: usize,
        loss: f32,
        accuracy: f64,
        images_per_sec: f64,
        lr: f64,
    },
    Skipped(String),
    /// Computing the frozen backbone's features of a set (`train` or `validation`).
    Features {
        set: &'static str,
        done: usize,
        total: usize,
    },
    Evaluating {
        epoch: usize,
    },
    EpochEnd(EpochMetrics),
}

impl TrainConfig {
    /// Resize the shorter side, centre-crop, normalise; grey for 1-channel models.
    pub fn eval_transform(&self, mean: &[f32], std: &[f32]) -> Transform {
        crate::weights::eval_transform(self.eval_resize, self.eval_crop, self.in_channels, mean, std)
    }
}

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub seconds: f64,
}

const METRICS_HEADER: &str = "epoch,lr,train_loss,train_acc,val_loss,top1,top5,seconds";

impl EpochMetrics {
    fn csv(&self) -> String {
        format!(
            "{},{:.6e},{:.6},{:.6},{:.6},{:.6},{:.6},{:.2}",
            self.epoch, self.lr, self.train_loss, self.train_acc, self.val_loss, self.top1, self.top5, self.seconds
        )
    }
}

/// `metrics.csv`: the header and one row per completed epoch (written whole, atomically).
fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
    let rows: String = history.iter().map(|m| m.csv() + "\n").collect();
    write_atomic(&dir.join("metrics.csv"), format!("{METRICS_HEADER}\n{rows}").as_bytes())
}

/// Progress saved after each completed epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    pub best_top1: f64,
    pub history: Vec<EpochMetrics>,
    /// The checkpoint this state commits; absent in runs written before checkpoints were
    /// epoch-stamped (they used `last.safetensors` and `optimizer.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<CheckpointFiles>,
}

/// `PREFIX-images-idx3-ubyte[.gz]` and `PREFIX-labels-idx1-ubyte[.gz]` from an IDX folder
/// (`train` or `t10k`); Fashion-MNIST's class names when the path names it.
pub fn read_idx_split(dir: &Path, prefix: &str) -> Result<Dataset> {
    let find = |stem: String| -> Result<PathBuf> {
        [format!("{stem}.gz"), stem.clone()]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .ok_or_else(|| Error::Dataset(format!("{} has no {stem}[.gz]", dir.display())))
    };
    let names: Vec<String> = if dir.to_string_lossy().to_lowercase().contains("fashion") {
        FASHION_MNIST_LABELS.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    data::read_idx(
        &find(format!("{prefix}-images-idx3-ubyte"))?,
        &find(format!("{prefix}-labels-idx1-ubyte"))?,
        names,
    )
}

/// Train and validation sets, plus the split indices when one folder was split.
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub split: Option<(Vec<usize>, Vec<usize>)>,
}

/// Train and validation sets as the config describes them.
pub fn load_data(c: &TrainConfig) -> Result<Splits> {
    match &c.data {
        DataSpec::Idx(dir) => {
            let train = read_idx_split(dir, "train")?;
            let val = read_idx_split(dir, "t10k")?;
            Ok(Splits {
                train,
                val,
                split: None,
            })
        }
        DataSpec::Cifar(dir) => Ok(Splits {
            train: data::read_cifar(dir, true)?,
            val: data::read_cifar(dir, false)?,
            split: None,
        }),
        DataSpec::Folder(dir) => {
            if dir.join("train").is_dir() {
                let train = data::image_folder(&dir.join("train"), None)?;
                let val_dir = dir.join("val");
                if !val_dir.is_dir() {
                    return Err(Error::Dataset(format!(
                        "{} has train/ but no val/; add it, or put the class folders directly in {} and use --val-split",
                        dir.display(),
                        dir.display()
                    )));
                }
                let val = data::image_folder(&val_dir, Some(&train.classes))?;
                Ok(Splits {
                    train,
                    val,
                    split: None,
                })
            } else {
                let all = data::image_folder(dir, None)?;
                all.check_nonempty("whole")?;
                let (t, v) = data::split_stratified(&all, c.val_split, c.seed);
                Ok(Splits {
                    train: all.subset(&t),
                    val: all.subset(&v),
                    split: Some((t, v)),
                })
            }
        }
    }
}

/// Per-channel mean and std of an in-memory training set (over at most 10k samples).
fn dataset_mean_std(ds: &Dataset, channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut sum = vec![0f64; channels];
    let mut sq = vec![0f64; channels];
    let mut n = 0f64;
    let step = (ds.len() / 10_000).max(1);
    for i in (0..ds.len()).step_by(step) {
        let px = ds.pixels(i)?;
        let x = to_chw(&px, channels, &vec![0.0; channels], &vec![1.0; channels]);
        let plane = x.len() / channels;
        for c in 0..channels {
            for &v in &x[c * plane..(c + 1) * plane] {
                sum[c] += v as f64;
                sq[c] += (v as f64) * (v as f64);
            }
        }
        n += plane as f64;
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - (*m as f64).powi(2)).sqrt() as f32)
        .collect();
    Ok((mean, std))
}

/// A trainer bound to a run folder.
pub struct Trainer {
    pub config: TrainConfig,
    pub run_dir: PathBuf,
    pub model: ResNet,
    optimizer: Optimizer,
    pub state: RunState,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
    mean: Vec<f32>,
    std: Vec<f32>,
    device: Device,
    /// With `--freeze-backbone`: the engine and the cached features, built on first use.
    frozen: Option<Frozen>,
    /// The CPU engine's training path, when it runs here ([`bench::Trainer::auto`]); built
    /// from `model` at the first epoch, written back to it after each.
    native: Option<native::NativeNet>,
}

struct Frozen {
    backbone: frozen::Backbone,
    /// The training set's features, when they are computed once.
    train: Option<frozen::Features>,
    val: frozen::Features,
}

/// Runs `step` on each batch of `loader` that has samples, reporting the epoch's start, the
/// skipped samples and what each step returns.
fn each_batch(
    loader: Loader,
    epoch: usize,
    on_event: &mut dyn FnMut(Event),
    mut step: impl FnMut(usize, data::Batch, Instant) -> Result<Event>,
) -> Result<()> {
    on_event(Event::EpochStart {
        epoch,
        batches: loader.len(),
    });
    for (i, batch) in loader.enumerate() {
        for s in &batch.skipped {
            on_event(Event::Skipped(s.clone()));
        }
        if batch.labels.is_empty() {
            continue;
        }
        let e = step(i, batch, Instant::now())?;
        on_event(e);
    }
    Ok(())
}

/// An epoch's running training loss and accuracy.
#[derive(Default)]
struct Running {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl Running {
    /// Adds a batch and returns its progress event.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        epoch: usize,
        batch: usize,
        loss: f32,
        pred: &[usize],
        labels: &[usize],
        t0: Instant,
        lr: f64,
    ) -> Event {
        let n = labels.len();
        self.correct += pred.iter().zip(labels).filter(|(p, l)| p == l).count();
        self.seen += n;
        self.loss_sum += loss as f64 * n as f64;
        Event::Batch {
            epoch,
            batch,
            loss,
            accuracy: self.correct as f64 / self.seen.max(1) as f64,
            images_per_sec: n as f64 / t0.elapsed().as_secs_f64(),
            lr,
        }
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(path, s.as_bytes())
}

impl Trainer {
    /// Starts a new run in `run_dir` (created; an existing run there is refused).
    pub fn new(config: TrainConfig, run_dir: &Path) -> Result<Self> {
        if run_dir.join("state.json").exists() {
            return Err(Error::Config(format!(
                "{} already holds a run; pass --resume {} to continue it, or choose another --out",
                run_dir.display(),
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let mut t = Self::build(config, run_dir)?;
        write_json(&run_dir.join("config.json"), &RunFile::new(&t.config, &t.mean, &t.std))?;
        write_atomic(
            &run_dir.join("classes.txt"),
            (t.train.classes.join("\n") + "\n").as_bytes(),
        )?;
        write_metrics(run_dir, &[])?;
        t.load_initial_weights()?;
        t.apply_freeze();
        Ok(t)
    }

    /// Continues the run in `run_dir` from its last completed epoch.
    pub fn resume(run_dir: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(run_dir.join("config.json")).map_err(io_err(run_dir.join("config.json")))?;
        let file: RunFile = serde_json::from_str(&text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        let mut t = Self::build(file.config, run_dir)?;
        t.mean = file.mean;
        t.std = file.std;
        let state_path = run_dir.join("state.json");
        if !state_path.exists() {
            // Killed before the first epoch finished: start over from the initial weights.
            t.load_initial_weights()?;
            t.apply_freeze();
            return Ok(t);
        }
        let s = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
        t.state = serde_json::from_str(&s).map_err(|e| Error::Config(format!("state.json: {e}")))?;
        let name = t.config.model.clone();
        let (weights_file, optimizer_file) = match &t.state.files {
            Some(f) => (run_dir.join(&f.weights), run_dir.join(&f.optimizer)),
            None => (run_dir.join("last.safetensors"), run_dir.join("optimizer.safetensors")),
        };
        weights::load_file(&mut t.model, &weights_file, true, &name)?;
        t.optimizer.load(&optimizer_file)?;
        if let Some(f) = &t.state.files {
            // Finish what a kill after the commit may have left undone.
            checkpoint::link(run_dir, &f.weights, "last.safetensors")?;
            checkpoint::link(run_dir, &f.best, "best.safetensors")?;
            checkpoint::cleanup(run_dir, f)?;
        }
        t.apply_freeze();
        // metrics.csv may hold a row of an epoch whose checkpoint never completed.
        write_metrics(run_dir, &t.state.history)?;
        Ok(t)
    }

    fn build(config: TrainConfig, run_dir: &Path) -> Result<Self> {
        let Splits { train, val, split } = load_data(&config)?;
        train.check_nonempty("training")?;
        val.check_nonempty("validation")?;
        if let Some(split) = split {
            write_json(&run_dir.join("split.json"), &split)?;
        }
        let name: ModelName = config.model.parse()?;
        let model_config = name
            .config()
            .with_num_classes(train.classes.len())
            .with_in_channels(config.in_channels);
        let device = crate::default_device().autodiff();
        // Seeded so that the same --seed gives the same initial weights.
        device.seed(config.seed);
        let model = ResNet::new(&model_config, &device)?;
        let (mean, std) = match (&config.mean_std, &train.items) {
            (Some((m, s)), _) => (m.clone(), s.clone()),
            (None, data::Items::Memory { .. }) => dataset_mean_std(&train, config.in_channels)?,
            (None, data::Items::Files(_)) => (
                crate::preprocess::IMAGENET_MEAN[..config.in_channels.min(3)].to_vec(),
                crate::preprocess::IMAGENET_STD[..config.in_channels.min(3)].to_vec(),
            ),
        };
        let optimizer = Optimizer::new(config.optimizer.clone());
        Ok(Trainer {
            config,
            run_dir: run_dir.to_path_buf(),
            model,
            optimizer,
            state: RunState::default(),
            train: Arc::new(train),
            val: Arc::new(val),
            mean,
            std,
            device,
            frozen: None,
            native: None,
        })
    }

    fn load_initial_weights(&mut self) -> Result<()> {
        let Some(w) = self.config.weights.clone() else {
            return Ok(());
        };
        let name: ModelName = self.config.model.parse()?;
        let Some(file) = weights::Weights::parse(&w)?.open(name, &mut |_, _| {})? else {
            return Ok(());
        };
        let mut sd = file.read_for(&self.model.state_dict_shapes())?;
        // A new head for new classes: keep our freshly initialised fc.
        let classes = self.train.classes.len();
        if sd.get("fc.weight").is_some_and(|t| t.shape.first() != Some(&classes)) {
            sd.remove("fc.weight");
            sd.remove("fc.bias");
        }
        let mut report = weights::load_into(&mut self.model, sd, false, &self.config.model)?;
        // Only the head may be missing (it was dropped above); extra keys are ignored.
        report.missing.retain(|k| !k.starts_with("fc."));
        report.unexpected.clear();
        if !report.is_exact() {
            return Err(Error::KeyMismatch {
                model: self.config.model.clone(),
                report: report.render(),
            });
        }
        Ok(())
    }

    /// With `--freeze-backbone`, trains only `fc`: the rest keeps its weights and BatchNorm
    /// statistics. Called after weights are loaded, since loading makes fresh parameters.
    fn apply_freeze(&mut self) {
        if !self.config.freeze_backbone {
            return;
        }
        let m = &mut self.model;
        m.conv1 = m.conv1.clone().freeze();
        m.bn1 = m.bn1.clone().freeze();
        m.layers = m.layers.clone().freeze();
    }

    pub fn train_set(&self) -> &Dataset {
        &self.train
    }
    pub fn val_set(&self) -> &Dataset {
        &self.val
    }

    fn train_prepare(&self) -> Prepare {
        if self.config.augment == Augment::None {
            return self.plain_prepare();
        }
        let (aug, c, mean, std) = (
            self.config.augment,
            self.config.in_channels,
            self.mean.clone(),
            self.std.clone(),
        );
        Arc::new(move |px, rng| to_chw(&aug.apply(px, rng), c, &mean, &std))
    }

    fn eval_prepare(&self) -> Prepare {
        self.unaugmented(&self.val)
    }

    /// Training images without augmentation, prepared as the validation ones are.
    fn plain_prepare(&self) -> Prepare {
        self.unaugmented(&self.train)
    }

    /// `ds`'s images without augmentation: files get the eval resize and crop (so that they
    /// share one size), in-memory images are used as they are.
    fn unaugmented(&self, ds: &Dataset) -> Prepare {
        let files = matches!(ds.items, data::Items::Files(_));
        let t = self.config.eval_transform(&self.mean, &self.std);
        eval::prepare(t, files, self.config.in_channels)
    }

    /// Runs the remaining epochs, reporting through `on_event`.
    pub fn run(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        for epoch in self.state.epochs_done..self.config.epochs {
            let start = Instant::now();
            let (running, lr) = if self.config.freeze_backbone {
                self.head_epoch(epoch, on_event)?
            } else {
                self.full_epoch(epoch, on_event)?
            };
            on_event(Event::Evaluating { epoch });
            let ev = match &self.frozen {
                Some(f) => frozen::evaluate(&self.model, &f.val, self.val.classes.len(), &self.device)?,
                None => self.evaluate()?,
            };
            let m = EpochMetrics {
                epoch: epoch + 1,
                lr,
                train_loss: running.loss_sum / running.seen.max(1) as f64,
                train_acc: running.correct as f64 / running.seen.max(1) as f64,
                val_loss: ev.loss,
                top1: ev.top1,
                top5: ev.top5,
                seconds: start.elapsed().as_secs_f64(),
            };
            self.checkpoint(&m, &ev)?;
            on_event(Event::EpochEnd(m));
        }
        Ok(())
    }

    fn loss_fn(&self) -> CrossEntropyLoss {
        CrossEntropyLossConfig::new()
            .with_smoothing((self.config.label_smoothing > 0.0).then_some(self.config.label_smoothing as f32))
            .init(&self.device)
    }

    /// A non-finite loss stops the run; the last checkpoint stays as it was.
    fn check_loss(&self, lv: f32, epoch: usize, batch: usize) -> Result<()> {
        if lv.is_finite() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the loss became {lv} at epoch {} batch {}; stopped. The last good checkpoint ({}) is intact; lower --lr or check the data",
            epoch + 1,
            batch + 1,
            self.run_dir.join("last.safetensors").display()
        )))
    }

    /// One epoch of the whole network: on the CPU engine's kernels where they run, else
    /// through burn's autodiff.
    fn full_epoch(&mut self, epoch: usize, on_event: &mut dyn FnMut(Event)) -> Result<(Running, f64)> {
        if bench::Trainer::auto() == bench::Trainer::Native {
            return self.native_epoch(epoch, on_event);
        }
        self.burn_epoch(epoch, on_event)
    }

    /// [`Trainer::full_epoch`] on [`native::NativeNet`]; the weights go back into `model`
    /// at the end, for evaluation and the checkpoint.
    fn native_epoch(&mut self, epoch: usize, on_event: &mut dyn FnMut(Event)) -> Result<(Running, f64)> {
        let mut net = match self.native.take() {
            Some(n) => n,
            None => native::NativeNet::new(&self.model.config.clone(), &weights::state_dict(&mut self.model)?, 0)?,
        };
        net.smoothing = self.config.label_smoothing as f32;
        let per_epoch = self.train.len().div_ceil(self.config.batch_size.max(1));
        let mut running = Running::default();
        let mut lr = self.config.lr.lr;
        let loader = self.train_loader(epoch);
        let c = self.config.in_channels;
        each_batch(loader, epoch, on_event, |i, batch, t0| {
            lr = self.config.lr.at(epoch, i, per_epoch);
            let [n, _, h, w] = eval::batch_dims(&batch, c);
            let out = net.step(&batch.images, n, h, w, &batch.labels)?;
            self.check_loss(out.loss, epoch, i)?;
            net.update(&mut self.optimizer, lr);
            let k = self.model.config.num_classes.max(1);
            let pred: Vec<usize> = out.logits.chunks(k).map(crate::model::first_max).collect();
            Ok(running.add(epoch, i, out.loss, &pred, &batch.labels, t0, lr))
        })?;
        weights::load_into(&mut self.model, net.state_dict(), true, &self.config.model)?;
        self.native = Some(net);
        Ok((running, lr))
    }

    /// One epoch of the whole network through burn's autodiff.
    fn burn_epoch(&mut self, epoch: usize, on_event: &mut dyn FnMut(Event)) -> Result<(Running, f64)> {
        let per_epoch = self.train.len().div_ceil(self.config.batch_size.max(1));
        let ce = self.loss_fn();
        let mut running = Running::default();
        let mut lr = self.config.lr.lr;
        let loader = self.train_loader(epoch);
        each_batch(loader, epoch, on_event, |i, batch, t0| {
            lr = self.config.lr.at(epoch, i, per_epoch);
            let x = eval::batch_tensor(&batch, self.config.in_channels, &self.device);
            let ys: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(ys, [batch.labels.len()]), &self.device);
            let logits = self.model.forward(x)?;
            let loss = ce.forward(logits.clone(), y);
            let lv: f32 = loss.clone().into_scalar();
            self.check_loss(lv, epoch, i)?;
            let grads = loss.backward();
            self.optimizer.step(&mut self.model, &grads, lr)?;
            let pred = eval::argmax_rows(&logits);
            Ok(running.add(epoch, i, lv, &pred, &batch.labels, t0, lr))
        })?;
        Ok((running, lr))
    }

    fn train_loader(&self, epoch: usize) -> Loader {
        Loader::new(
            self.train.clone(),
            data::epoch_order(self.train.len(), self.config.seed, epoch, true),
            self.config.batch_size,
            self.train_prepare(),
            self.config.seed,
            epoch,
            self.config.workers,
        )
    }

    /// Whether the frozen path computes each training image's features once.
    fn caches_features(&self) -> bool {
        self.config.cache_features || self.config.augment == Augment::None
    }

    /// Builds the frozen backbone on first use, with the validation features (and the
    /// training ones, when they are cached).
    fn frozen_setup(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<()> {
        if self.frozen.is_some() {
            return Ok(());
        }
        let backbone = frozen::Backbone::new(&mut self.model)?;
        let (train_set, workers) = (self.train.clone(), self.config.workers);
        let train = if self.caches_features() {
            let f = backbone.extract(train_set, self.plain_prepare(), workers, &mut |done, total| {
                on_event(Event::Features {
                    set: "train",
                    done,
                    total,
                })
            })?;
            for s in &f.skipped {
                on_event(Event::Skipped(s.clone()));
            }
            Some(f)
        } else {
            None
        };
        let val = backbone.extract(self.val.clone(), self.eval_prepare(), workers, &mut |done, total| {
            on_event(Event::Features {
                set: "validation",
                done,
                total,
            })
        })?;
        self.frozen = Some(Frozen { backbone, train, val });
        Ok(())
    }

    /// One epoch of `fc` alone, on the frozen backbone's features.
    fn head_epoch(&mut self, epoch: usize, on_event: &mut dyn FnMut(Event)) -> Result<(Running, f64)> {
        self.frozen_setup(on_event)?;
        let Some(fz) = self.frozen.take() else {
            return Err(Error::Config("the frozen backbone was not built".into()));
        };
        let r = self.head_epoch_on(&fz, epoch, on_event);
        self.frozen = Some(fz);
        r
    }

    fn head_epoch_on(&mut self, fz: &Frozen, epoch: usize, on_event: &mut dyn FnMut(Event)) -> Result<(Running, f64)> {
        let per_epoch = self.train.len().div_ceil(self.config.batch_size.max(1));
        let ce = self.loss_fn();
        let mut running = Running::default();
        let mut lr = self.config.lr.lr;
        let mut step = |t: &mut Self, i: usize, feats: Vec<f32>, labels: &[usize], t0: Instant| -> Result<Event> {
            lr = t.config.lr.at(epoch, i, per_epoch);
            let (lv, grads, pred) = frozen::head_loss(&t.model, &ce, feats, labels, &t.device);
            t.check_loss(lv, epoch, i)?;
            t.optimizer.step(&mut t.model, &grads, lr)?;
            Ok(running.add(epoch, i, lv, &pred, labels, t0, lr))
        };
        if let Some(f) = &fz.train {
            let batches = frozen::epoch_batches(f, self.config.seed, epoch, self.config.batch_size);
            on_event(Event::EpochStart {
                epoch,
                batches: batches.len(),
            });
            for (i, (feats, labels)) in batches.into_iter().enumerate() {
                let e = step(self, i, feats, &labels, Instant::now())?;
                on_event(e);
            }
        } else {
            let loader = self.train_loader(epoch);
            each_batch(loader, epoch, on_event, |i, batch, t0| {
                step(self, i, fz.backbone.batch(&batch)?, &batch.labels, t0)
            })?;
        }
        Ok((running, lr))
    }

    /// Writes epoch `m.epoch`'s checkpoint in the order [`checkpoint`] describes.
    fn checkpoint(&mut self, m: &EpochMetrics, ev: &Evaluation) -> Result<()> {
        let dir = self.run_dir.clone();
        let epoch = m.epoch;
        let stamped = dir.join(checkpoint::DIR);
        std::fs::create_dir_all(&stamped).map_err(io_err(&stamped))?;
        let is_best = m.top1 > self.state.best_top1 || self.state.history.is_empty();
        let mut files = CheckpointFiles::for_epoch(epoch, epoch);
        if !is_best {
            files.best = match &self.state.files {
                Some(f) => f.best.clone(),
                // A run from before stamped checkpoints keeps its best.safetensors.
                None => "best.safetensors".into(),
            };
        }
        let sd = weights::state_dict(&mut self.model)?;
        weights::write_safetensors(&dir.join(&files.weights), &sd)?;
        fault_point(epoch, Step::Weights);
        self.optimizer.save(&dir.join(&files.optimizer))?;
        fault_point(epoch, Step::Optimizer);

        let mut state = self.state.clone();
        if is_best {
            state.best_top1 = m.top1;
        }
        state.history.push(m.clone());
        state.epochs_done = epoch;
        state.files = Some(files.clone());
        write_metrics(&dir, &state.history)?;
        fault_point(epoch, Step::Metrics);
        plots::curves(&dir.join("curves.png"), &state.history)?;
        fault_point(epoch, Step::Curves);
        plots::confusion(&dir.join("confusion.png"), &ev.confusion, &self.val.classes)?;
        fault_point(epoch, Step::Confusion);
        // The commit: from here on --resume continues after this epoch.
        write_json(&dir.join("state.json"), &state)?;
        self.state = state;
        fault_point(epoch, Step::Commit);
        checkpoint::link(&dir, &files.weights, "last.safetensors")?;
        fault_point(epoch, Step::LinkLast);
        checkpoint::link(&dir, &files.best, "best.safetensors")?;
        fault_point(epoch, Step::LinkBest);
        checkpoint::cleanup(&dir, &files)?;
        fault_point(epoch, Step::Cleanup);
        Ok(())
    }

    /// Loss, top-1/top-5 and the confusion matrix on the validation set: on the CPU engine
    /// when the native path trains (several times faster than burn's inference), else burn.
    pub fn evaluate(&self) -> Result<Evaluation> {
        let (val, prepare) = (self.val.clone(), self.eval_prepare());
        let (c, workers) = (self.config.in_channels, self.config.workers);
        match &self.native {
            Some(net) => {
                let engine = crate::engine::Engine::new(&net.config, &net.state_dict(), 0)?;
                eval::evaluate(&engine, val, prepare, c, workers)
            }
            None => eval::evaluate(&self.model.valid(), val, prepare, c, workers),
        }
    }
}

/// `config.json`: the settings plus what was derived (normalisation) and the versions.
#[derive(Serialize, Deserialize)]
pub struct RunFile {
    pub config: TrainConfig,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub resnet_version: String,
    pub burn_version: String,
}

impl RunFile {
    /// The run that wrote `weights` (its folder holds `config.json`), if any.
    pub fn beside(weights: &Path) -> Option<RunFile> {
        let text = std::fs::read_to_string(weights.parent()?.join("config.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The eval transform the run validated with, for classifying files with its weights.
    pub fn eval_transform(&self) -> Transform {
        self.config.eval_transform(&self.mean, &self.std)
    }

    fn new(config: &TrainConfig, mean: &[f32], std: &[f32]) -> Self {
        RunFile {
            config: config.clone(),
            mean: mean.to_vec(),
            std: std.to_vec(),
            resnet_version: env!("CARGO_PKG_VERSION").into(),
            burn_version: "0.22.1".into(),
        }
    }
}
