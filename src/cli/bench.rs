//! `resnet bench`: inference latency per model and batch size, on random weights; with
//! `--train`, the time of a training step instead.

use std::time::Instant;

use anyhow::Result;
use resnet::engine::Engine;
use resnet::model::ModelName;
use resnet::{weights, ResNet};
use serde::Serialize;

use super::Format;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Models, comma-separated.
    #[arg(long, default_value = "resnet50,resnet18", value_delimiter = ',')]
    pub model: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Worker threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Input side (square).
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// Timed runs (training steps, with --train) per case, after two warm-up runs.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// `fast` (the CPU engine), `burn` (the reference path) or both.
    #[arg(long, default_value = "fast", value_delimiter = ',')]
    pub engine: Vec<String>,
    /// `json`: one JSON object per case, one per line.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// The same as `--format json` (kept for scripts that use it).
    #[arg(long)]
    pub json: bool,
    /// Time a training step (forward, loss, backward, SGD update) instead of inference.
    #[arg(long)]
    pub train: bool,
    /// Input channels, with `--train` (1 for grey data such as Fashion-MNIST).
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
    /// For `bench/compare.sh`: one model and batch on the fast engine, driven over stdin. It
    /// prints `ready`, then for each line `N` runs N forwards and prints their times (ms) as a
    /// JSON list, so another process can interleave its own runs with ours.
    #[arg(long)]
    pub stdin: bool,
}

#[derive(Serialize)]
struct Row {
    model: String,
    engine: String,
    /// The fast engine's matrix kernel (`RESNET_KERNEL` forces one).
    kernel: Option<&'static str>,
    batch: usize,
    size: usize,
    threads: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    ms_per_image: f64,
    gflops: f64,
    peak_rss_mb: f64,
}

/// Peak resident memory so far (Linux `VmHWM`), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn time(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..2 {
        f()?;
    }
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v)
}

/// A deterministic input batch in [-1, 1) of shape `dims` (NCHW).
fn input(dims: [usize; 4]) -> Vec<f32> {
    (0..dims.iter().product::<usize>())
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect()
}

/// `--stdin`: forwards on demand, timed one by one.
fn serve_stdin(a: &BenchArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let ([m], [batch], ["fast"]) = (
        &a.model[..],
        &a.batch[..],
        &a.engine.iter().map(String::as_str).collect::<Vec<_>>()[..],
    ) else {
        anyhow::bail!("--stdin takes one --model, one --batch and the fast engine");
    };
    let config = m.parse::<ModelName>()?.config();
    let mut reference = ResNet::new(&config, &resnet::default_device())?;
    let engine = Engine::new(&config, &weights::state_dict(&mut reference)?, a.threads)?;
    drop(reference);
    let dims = [*batch, config.in_channels, a.size, a.size];
    let x = input(dims);
    let forward = || -> Result<f64> {
        let t = Instant::now();
        std::hint::black_box(engine.forward(&x, dims)?);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    forward()?;
    forward()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let n: usize = line?.trim().parse().unwrap_or(1);
        let times = (0..n).map(|_| forward()).collect::<Result<Vec<_>>>()?;
        writeln!(out, "{}", serde_json::to_string(&times)?)?;
        out.flush()?;
    }
    Ok(())
}

#[derive(Serialize)]
struct TrainRow {
    model: String,
    mode: &'static str,
    /// `native` (the CPU engine's kernels) or `burn`.
    trainer: resnet::train::bench::Trainer,
    /// The native trainer's matrix kernel.
    kernel: Option<&'static str>,
    batch: usize,
    size: usize,
    in_channels: usize,
    threads: usize,
    #[serde(flatten)]
    times: resnet::train::bench::StepTimes,
    peak_rss_mb: f64,
}

/// `--train`: one line per model and batch size.
fn run_train(a: &BenchArgs, json: bool) -> Result<()> {
    if !json {
        println!(
            "{:<16} {:>7} {:>5} {:>5} {:>4} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>8}",
            "model",
            "trainer",
            "batch",
            "size",
            "in",
            "threads",
            "median ms",
            "forward",
            "backward",
            "update",
            "RSS MB"
        );
    }
    for m in &a.model {
        let config = m.parse::<ModelName>()?.config().with_in_channels(a.in_channels);
        for (&batch, engine) in a.batch.iter().flat_map(|b| a.engine.iter().map(move |e| (b, e))) {
            use resnet::train::bench::Trainer;
            let trainer = match engine.as_str() {
                "fast" => Trainer::auto(),
                "burn" => Trainer::Burn,
                other => anyhow::bail!("unknown --engine {other}: fast or burn"),
            };
            let times = resnet::train::bench::time_train_step(&config, batch, a.size, a.iters, trainer)?;
            let kernel = (trainer == Trainer::Native)
                .then(resnet::train::native::NativeNet::kernel)
                .flatten()
                .map(|i| i.name());
            let row = TrainRow {
                model: m.clone(),
                mode: "train",
                trainer,
                kernel,
                batch,
                size: a.size,
                in_channels: a.in_channels,
                threads: rayon::current_num_threads(),
                times,
                // The process's peak so far: with several cases, the largest of them.
                peak_rss_mb: peak_rss_mb(),
            };
            if json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                let t = &row.times;
                println!(
                    "{:<16} {:>7} {:>5} {:>5} {:>4} {:>7} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>8.0}",
                    row.model,
                    format!("{:?}", row.trainer).to_lowercase(),
                    batch,
                    a.size,
                    a.in_channels,
                    row.threads,
                    t.median_ms,
                    t.forward_ms,
                    t.backward_ms,
                    t.update_ms,
                    row.peak_rss_mb
                );
            }
        }
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.stdin {
        return serve_stdin(&a);
    }
    let json = a.json || a.format == Format::Json;
    if a.train {
        return run_train(&a, json);
    }
    if !json {
        println!(
            "{:<16} {:>6} {:>8} {:>5} {:>5} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8}",
            "model",
            "engine",
            "kernel",
            "batch",
            "size",
            "threads",
            "median ms",
            "min",
            "max",
            "ms/img",
            "GFLOP/s",
            "RSS MB"
        );
    }
    for m in &a.model {
        let name: ModelName = m.parse()?;
        let config = name.config();
        let dev = resnet::default_device();
        let mut reference = ResNet::new(&config, &dev)?;
        let sd = weights::state_dict(&mut reference)?;
        let flops = 2.0 * config.complexity(a.size, a.size).macs as f64;
        for engine in &a.engine {
            let fast = match engine.as_str() {
                "fast" => Some(Engine::new(&config, &sd, a.threads)?),
                "burn" => None,
                e => anyhow::bail!("unknown engine {e}; use fast or burn"),
            };
            let threads = fast.as_ref().map_or(rayon::current_num_threads(), Engine::threads);
            for &batch in &a.batch {
                let dims = [batch, config.in_channels, a.size, a.size];
                let x = input(dims);
                let times = match &fast {
                    Some(e) => time(a.iters, || {
                        std::hint::black_box(e.forward(&x, dims)?);
                        Ok(())
                    })?,
                    None => {
                        use burn::prelude::*;
                        let t = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &dev);
                        time(a.iters, || {
                            std::hint::black_box(reference.forward(t.clone())?.into_data());
                            Ok(())
                        })?
                    }
                };
                let median = times[times.len() / 2];
                let row = Row {
                    model: m.clone(),
                    engine: engine.clone(),
                    kernel: fast.as_ref().map(|e| e.isa().name()),
                    batch,
                    size: a.size,
                    threads,
                    median_ms: median,
                    min_ms: times[0],
                    max_ms: times[times.len() - 1],
                    ms_per_image: median / batch as f64,
                    gflops: flops * batch as f64 / (median * 1e6),
                    peak_rss_mb: peak_rss_mb(),
                };
                if json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    println!(
                        "{:<16} {:>6} {:>8} {:>5} {:>5} {:>7} | {:>9.2} {:>9.2} {:>9.2} {:>9.2} | {:>8.1} {:>8.0}",
                        row.model,
                        row.engine,
                        row.kernel.unwrap_or("-"),
                        row.batch,
                        row.size,
                        row.threads,
                        row.median_ms,
                        row.min_ms,
                        row.max_ms,
                        row.ms_per_image,
                        row.gflops,
                        row.peak_rss_mb
                    );
                }
            }
        }
    }
    Ok(())
}
