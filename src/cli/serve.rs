//! `resnet serve`: loads the model, binds, and serves until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use resnet::classify::{read_labels, ClassifierOptions};
use resnet::preprocess::DEFAULT_MAX_PIXELS;
use resnet::serve::{shutdown_signal, ServeConfig, Server};
use resnet::Classifier;

use super::{download_bar, model_and_weights, EngineKind, ModelArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where to listen. The default only accepts local connections; bind 0.0.0.0:PORT (or put
    /// a reverse proxy in front) to expose it.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Largest request body (413 above it): 20MB, 512KiB, …
    #[arg(long, default_value = "20MB")]
    max_body: bytesize::ByteSize,
    /// Largest image in pixels, read from its header before decoding (422 above it).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Memory that images in flight may take in all: request bodies as they arrive, and what
    /// each image's header says decoding costs; when full, 503 with Retry-After; an image
    /// over it alone, 413.
    #[arg(long, default_value = "2GiB")]
    max_image_memory: bytesize::ByteSize,
    /// Inference workers, each with its own copy of the model and threads/N threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Most images in one forward pass (1 turns batching off).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// How long the first image of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 2)]
    batch_window_ms: u64,
    /// Most images admitted and not yet answered; more get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Inference threads in all (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// `fast`: the CPU engine; `burn`: the reference path (GPU backends always run burn).
    #[arg(long, value_enum, default_value = "fast")]
    engine: EngineKind,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let (name, weights) = model_and_weights(&a.model.model, &a.model.weights)?;
    let labels = a.model.classes.as_deref().map(read_labels).transpose()?;
    let workers = a.workers.max(1);
    // Split the threads among the workers; 0 takes rayon's default (RAYON_NUM_THREADS, else every core).
    let threads = match a.threads {
        0 => rayon::current_num_threads(),
        n => n,
    };
    let per_worker = (threads / workers).max(1);
    let mut classifiers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (bar, mut on_download) = download_bar();
        let opts = ClassifierOptions {
            labels: labels.clone(),
            on_download: Some(&mut on_download),
            engine: a.engine == EngineKind::Fast,
            threads: per_worker,
            ..Default::default()
        };
        let clf = Classifier::build(name, weights.clone(), opts)?;
        bar.finish_and_clear();
        if let (true, Some(note)) = (classifiers.is_empty(), clf.weights_note()) {
            eprintln!("note: {note}");
        }
        classifiers.push(clf);
    }
    let cfg = ServeConfig {
        addr: a.addr,
        max_body: usize::try_from(a.max_body.as_u64()).context("--max-body is too large")?,
        max_pixels: a.max_pixels,
        max_batch: a.max_batch.max(1),
        batch_window: Duration::from_millis(a.batch_window_ms),
        max_queue: a.max_queue,
        max_image_memory: a.max_image_memory.as_u64(),
        ..Default::default()
    };
    let server = Server::bind(&a.model.model, classifiers, &cfg)?;
    let info = server.info();
    eprintln!(
        "serving {} ({}, {} classes, input {}x{}x{}, {} engine, {workers} worker(s) x {} threads) on http://{}",
        info.model,
        info.weights,
        info.num_classes,
        info.input[0],
        info.input[1],
        info.input[2],
        info.engine,
        per_worker,
        server.local_addr()
    );
    eprintln!(
        "studio page at http://{}/ ; Ctrl-C or SIGTERM stops after the requests in flight",
        server.local_addr()
    );
    server.run(shutdown_signal())?;
    eprintln!("stopped");
    Ok(())
}
