//! Dynamic batching: images from concurrent requests share one forward pass.
//!
//! Each worker thread owns a [`Classifier`] and takes the oldest waiting image, then every
//! image that arrives within `window` of it (up to `max_batch`), and runs them as one batch.
//! Under load the queue fills while a batch runs, so the next batch forms with no wait at all;
//! an idle server adds at most `window` to a lone request.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::classify::{Classifier, Explanation, Layer, Logits};

/// What a job asks of the network.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    Logits,
    /// The pooled features before `fc`.
    Embedding,
    /// Grad-CAM of `class` (default: the top-1) at `layer`; one image per pass.
    Explain {
        class: Option<usize>,
        layer: Layer,
    },
}

/// A job's answer.
pub(crate) enum Reply {
    /// Logits or an embedding.
    Row(Vec<f32>),
    Cam(Explanation),
}

/// One preprocessed image waiting for its logits or embedding.
pub(crate) struct Job {
    /// CHW values from the classifier's transform.
    pub x: Vec<f32>,
    pub dims: [usize; 3],
    pub want: Want,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Reply, String>>,
}

pub(crate) struct Batcher {
    tx: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    pub fn start(
        classifiers: Vec<Classifier>,
        max_batch: usize,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        // Unbounded: the server admits at most `max_queue` images (a semaphore) before sending.
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let workers = classifiers
            .into_iter()
            .enumerate()
            .map(|(i, clf)| {
                let (rx, metrics) = (rx.clone(), metrics.clone());
                std::thread::Builder::new()
                    .name(format!("resnet-infer-{i}"))
                    .spawn(move || worker(clf, rx, max_batch.max(1), window, &metrics))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Batcher {
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        })
    }

    /// Queues a job; `false` once the batcher is shut down.
    pub fn submit(&self, job: Job) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Lets the workers finish what is queued, then joins them.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(clf: Classifier, rx: Receiver<Job>, max_batch: usize, window: Duration, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let deadline = first.enqueued + window;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match rx.recv_deadline(deadline) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            }
        }
        // A transform gives one size, but a batch must be uniform whatever the caller sent,
        // and logits and embeddings are different passes.
        while !batch.is_empty() {
            let (dims, want) = (batch[0].dims, batch[0].want);
            let (same, rest): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.dims == dims && j.want == want);
            run(&clf, same, dims, want, metrics);
            batch = rest;
        }
    }
}

fn run(clf: &Classifier, jobs: Vec<Job>, dims: [usize; 3], want: Want, metrics: &Metrics) {
    if let Want::Explain { class, layer } = want {
        for job in jobs {
            let start = Instant::now();
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
                clf.explain_values(job.x, [1, dims[0], dims[1], dims[2]], class, layer)
            }));
            metrics.observe_batch(1, start.elapsed());
            let _ = job.reply.send(match out {
                Ok(Ok(e)) => Ok(Reply::Cam(e)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the inference worker panicked on this image".into()),
            });
        }
        return;
    }
    let n = jobs.len();
    let mut x = Vec::with_capacity(n * dims.iter().product::<usize>());
    let mut replies = Vec::with_capacity(n);
    for job in jobs {
        x.extend_from_slice(&job.x);
        replies.push(job.reply);
    }
    let start = Instant::now();
    // A panic in a forward pass fails this batch's requests, not the worker.
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let dims = [n, dims[0], dims[1], dims[2]];
        match want {
            Want::Logits => clf.logits_nchw(x, dims),
            Want::Embedding | Want::Explain { .. } => clf
                .activations(x, dims, Layer::AvgPool)
                .map(|e| e.into_iter().map(|e| e.values).collect()),
        }
    }));
    metrics.observe_batch(n, start.elapsed());
    match out {
        Ok(Ok(rows)) => {
            for (reply, row) in replies.into_iter().zip(rows) {
                let _ = reply.send(Ok(Reply::Row(row)));
            }
        }
        Ok(Err(e)) => replies.into_iter().for_each(|r| {
            let _ = r.send(Err(e.to_string()));
        }),
        Err(_) => replies.into_iter().for_each(|r| {
            let _ = r.send(Err("the inference worker panicked on this batch".into()));
        }),
    }
}
