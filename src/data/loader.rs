//! A parallel, deterministic batch loader.
//!
//! Worker threads decode and augment whole batches while the model steps; batches come
//! out in order, and sample `i` of epoch `e` always gets the random stream `(seed, e, i)`,
//! so results do not depend on the thread count or timing. A sample that fails to load is
//! skipped and counted, never fatal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::rng::Rng;
use super::Dataset;

/// Turns one sample's pixels into CHW floats (augmenting with the given stream).
pub type Prepare = Arc<dyn Fn(&super::Pixels, &mut Rng) -> Vec<f32> + Send + Sync>;

/// One batch: `[n, c, h, w]` floats and labels.
#[derive(Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Floats per sample (`c × h × w`, equal for all).
    pub sample_len: usize,
    /// Samples skipped because they failed to load, with the reason.
    pub skipped: Vec<String>,
}

/// The order of one epoch: shuffled by `(seed, epoch)`, or as stored.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Rng::for_stream(seed, epoch as u64, u64::MAX).shuffle(&mut order);
    }
    order
}

/// Iterates over the batches of one epoch, prepared on `workers` threads.
pub struct Loader {
    rx: mpsc::Receiver<(usize, Batch)>,
    pending: BTreeMap<usize, Batch>,
    next: usize,
    total: usize,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// `order` lists the sample indices of the epoch, in batch order.
    pub fn new(
        ds: Arc<Dataset>,
        order: Vec<usize>,
        batch_size: usize,
        prepare: Prepare,
        seed: u64,
        epoch: usize,
        workers: usize,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let batches: Arc<Vec<Vec<usize>>> = Arc::new(order.chunks(batch_size).map(<[usize]>::to_vec).collect());
        let total = batches.len();
        let workers = workers.max(1);
        // Bounded: at most a few batches wait, so memory stays flat.
        let (tx, rx) = mpsc::sync_channel(workers * 2);
        let claim = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..workers)
            .map(|_| {
                let (ds, batches, prepare, tx, claim, stop) = (
                    ds.clone(),
                    batches.clone(),
                    prepare.clone(),
                    tx.clone(),
                    claim.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || loop {
                    let b = claim.fetch_add(1, Ordering::SeqCst);
                    if b >= batches.len() || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let batch = build(&ds, &batches[b], &*prepare, seed, epoch);
                    if tx.send((b, batch)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Loader {
            rx,
            pending: BTreeMap::new(),
            next: 0,
            total,
            stop,
            workers: handles,
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

fn build(
    ds: &Dataset,
    idx: &[usize],
    prepare: &(dyn Fn(&super::Pixels, &mut Rng) -> Vec<f32> + Send + Sync),
    seed: u64,
    epoch: usize,
) -> Batch {
    let mut images = Vec::new();
    let mut labels = Vec::with_capacity(idx.len());
    let mut skipped = Vec::new();
    let mut sample_len = 0;
    for &i in idx {
        match ds.pixels(i) {
            Ok(px) => {
                let mut rng = Rng::for_stream(seed, epoch as u64, i as u64);
                let x = prepare(&px, &mut rng);
                if sample_len == 0 {
                    sample_len = x.len();
                }
                if x.len() != sample_len {
                    skipped.push(format!("{}: prepared to a different size", ds.describe(i)));
                    continue;
                }
                images.extend(x);
                labels.push(ds.labels[i]);
            }
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Batch {
        images,
        labels,
        sample_len,
        skipped,
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            match self.rx.recv() {
                Ok((b, batch)) => {
                    self.pending.insert(b, batch);
                }
                Err(_) => return None,
            }
        }
        let batch = self.pending.remove(&self.next);
        self.next += 1;
        batch
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock senders, then wait for the threads.
        while self.rx.try_recv().is_ok() {}
        for h in self.workers.drain(..) {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = h.join();
        }
    }
}
