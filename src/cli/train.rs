//! `resnet train`: the recipe's defaults, the run folder, progress bars.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use resnet::model::ModelName;

use super::Format;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Recipe {
    Imagenet,
    Cifar,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ScheduleArg {
    Constant,
    Step,
    Multistep,
    Cosine,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OptimArg {
    Sgd,
    Adamw,
}

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    /// `json`: each epoch's metrics as one JSON object per line on stdout, then
    /// `{"best_top1", "best"}`; progress stays on stderr either way.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// DIR (DIR/train + DIR/val, or DIR/<class> with --val-split), idx:DIR or cifar10:DIR.
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    #[arg(long, default_value = "resnet18")]
    model: String,
    /// Start from these weights (tag or file); fc is replaced for new classes.
    #[arg(long)]
    weights: Option<String>,
    /// Train only fc (Ikomia's default when fine-tuning): the backbone runs in inference mode
    /// on the fast engine and fc trains on its pooled features.
    #[arg(long)]
    freeze_backbone: bool,
    /// With --freeze-backbone: compute each training image's features once, without
    /// augmentation, so that every epoch takes seconds (also implied by --no-augment).
    #[arg(long, requires = "freeze_backbone")]
    cache_features: bool,
    /// Train on the images as they are (image folders: the eval resize and centre crop).
    #[arg(long)]
    no_augment: bool,
    /// Defaults for every flag below: imagenet (RandomResizedCrop) or cifar (pad-crop-flip).
    #[arg(long, value_enum, default_value = "imagenet")]
    recipe: Recipe,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_enum)]
    optimizer: Option<OptimArg>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long)]
    nesterov: bool,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    no_wd_on_bn_bias: bool,
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Epochs at which multistep divides the rate by 10.
    #[arg(long, value_delimiter = ',')]
    milestones: Vec<usize>,
    #[arg(long)]
    step_size: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Training crop size (default 224 for imagenet, 32 for cifar).
    #[arg(long)]
    input_size: Option<usize>,
    /// Random-crop padding for the cifar recipe (default 4, the paper's).
    #[arg(long)]
    pad: Option<usize>,
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    #[arg(long, default_value_t = 0.2)]
    val_split: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Loader threads (decoding and augmentation).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The run folder for checkpoints, metrics and plots.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last completed epoch.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
}

fn train_config(a: &TrainArgs) -> Result<resnet::train::TrainConfig> {
    use resnet::preprocess::Augment;
    use resnet::train::{DataSpec, LrPlan, OptimizerConfig, OptimizerKind, Schedule, TrainConfig};
    let cifar = a.recipe == Recipe::Cifar;
    let epochs = a.epochs.unwrap_or(if cifar { 160 } else { 90 });
    let input = a.input_size.unwrap_or(if cifar { 32 } else { 224 });
    let schedule = match a.schedule.unwrap_or(if cifar {
        ScheduleArg::Multistep
    } else {
        ScheduleArg::Step
    }) {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Step => Schedule::Step {
            step_size: a.step_size.unwrap_or(30),
            gamma: 0.1,
        },
        ScheduleArg::Multistep => Schedule::MultiStep {
            // The paper's 32k/48k of 64k iterations.
            milestones: if a.milestones.is_empty() {
                vec![epochs / 2, epochs * 3 / 4]
            } else {
                a.milestones.clone()
            },
            gamma: 0.1,
        },
        ScheduleArg::Cosine => Schedule::Cosine,
    };
    let optimizer = OptimizerConfig {
        kind: match a.optimizer.unwrap_or(OptimArg::Sgd) {
            OptimArg::Sgd => OptimizerKind::Sgd,
            OptimArg::Adamw => OptimizerKind::AdamW,
        },
        momentum: a.momentum.unwrap_or(0.9),
        nesterov: a.nesterov,
        weight_decay: a.weight_decay.unwrap_or(if a.optimizer == Some(OptimArg::Adamw) {
            0.05
        } else {
            1e-4
        }),
        no_wd_on_bn_bias: a.no_wd_on_bn_bias,
        ..OptimizerConfig::default()
    };
    let Some(data) = &a.data else {
        bail!("--data is required for a new run")
    };
    Ok(TrainConfig {
        data: DataSpec::parse(data),
        model: a.model.parse::<ModelName>()?.to_string(),
        weights: a.weights.clone(),
        freeze_backbone: a.freeze_backbone,
        cache_features: a.cache_features,
        epochs,
        batch_size: a.batch_size.unwrap_or(if cifar { 128 } else { 32 }),
        lr: LrPlan {
            lr: a.lr.unwrap_or(0.1),
            schedule,
            warmup_epochs: a.warmup_epochs,
            epochs,
        },
        optimizer,
        label_smoothing: a.label_smoothing,
        augment: if a.no_augment {
            Augment::None
        } else if cifar {
            Augment::Cifar {
                size: input,
                pad: a.pad.unwrap_or(4),
            }
        } else {
            Augment::imagenet(input)
        },
        // The CIFAR recipe trains on whole images, so eval takes them whole too (no zoom).
        eval_resize: if cifar { input } else { input * 256 / 224 },
        eval_crop: input,
        in_channels: a.in_channels,
        mean_std: None,
        val_split: a.val_split,
        seed: a.seed,
        workers: a.workers,
    })
}

pub(crate) fn run(a: TrainArgs) -> Result<ExitCode> {
    use resnet::train::{Event, Trainer};
    let mut trainer = match &a.resume {
        Some(dir) => Trainer::resume(dir)?,
        None => {
            let out = a.out.clone().context("--out is required")?;
            Trainer::new(train_config(&a)?, &out)?
        }
    };
    let c = &trainer.config;
    eprintln!(
        "training {} on {} images ({} classes), validating on {}; run folder {}",
        c.model,
        trainer.train_set().len(),
        trainer.train_set().classes.len(),
        trainer.val_set().len(),
        trainer.run_dir.display()
    );
    if trainer.state.epochs_done > 0 {
        eprintln!("resuming after epoch {}", trainer.state.epochs_done);
    }
    let epochs = c.epochs;
    let mut bar = ProgressBar::hidden();
    let mut skipped = 0usize;
    trainer.run(&mut |e| match e {
        Event::EpochStart { epoch, batches } => {
            bar = ProgressBar::new(batches as u64).with_style(
                ProgressStyle::with_template(&format!(
                    "epoch {}/{epochs} {{wide_bar}} {{pos}}/{{len}} {{msg}} eta {{eta}}",
                    epoch + 1
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
        Event::Batch {
            loss,
            accuracy,
            images_per_sec,
            lr,
            ..
        } => {
            bar.set_message(format!(
                "loss {loss:.4} acc {:.2}% {images_per_sec:.0} img/s lr {lr:.2e}",
                100.0 * accuracy
            ));
            bar.inc(1);
        }
        Event::Skipped(why) => {
            skipped += 1;
            bar.suspend(|| eprintln!("warning: skipped {why}"));
        }
        Event::Features { set, done, total } => {
            if done <= 1 {
                bar = ProgressBar::new(total as u64).with_style(
                    ProgressStyle::with_template(&format!("{set} features {{wide_bar}} {{pos}}/{{len}} eta {{eta}}"))
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
            bar.set_position(done as u64);
            if done == total {
                bar.finish_and_clear();
            }
        }
        Event::Evaluating { .. } => bar.set_message("evaluating"),
        Event::EpochEnd(m) => {
            bar.finish_and_clear();
            if a.format == Format::Json {
                println!("{}", serde_json::to_string(&m).unwrap_or_default());
            }
            eprintln!(
                "epoch {}/{epochs}: train loss {:.4} acc {:.2}% | val loss {:.4} top-1 {:.2}% top-5 {:.2}% | lr {:.2e} | {:.0}s",
                m.epoch,
                m.train_loss,
                100.0 * m.train_acc,
                m.val_loss,
                100.0 * m.top1,
                100.0 * m.top5,
                m.lr,
                m.seconds
            );
        }
    })?;
    if skipped > 0 {
        eprintln!("{skipped} samples were skipped (unreadable)");
    }
    let best = trainer.run_dir.join("best.safetensors");
    eprintln!("best top-1 {:.2}%: {}", 100.0 * trainer.state.best_top1, best.display());
    if a.format == Format::Json {
        let summary = serde_json::json!({"best_top1": trainer.state.best_top1, "best": best});
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}
