//! `--segments`: a video's sampled frames merged into runs of one top-1 class, each with the
//! mean probability the model gave that class over the run.
//!
//! Smoothing: a run shorter than the minimum length joins the segment before it (the first
//! run, the one after it), so a brief misclassification does not split a scene. Only the
//! open segment and the current run are held, each as a per-class sum of probabilities, so
//! memory does not grow with the video.

use serde::Serialize;

/// A stretch of a video with one label.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    /// Seconds.
    pub start: f64,
    pub end: f64,
    pub index: usize,
    pub label: String,
    /// The mean, over the segment's samples, of the probability given to `label`.
    pub mean_probability: f64,
}

struct Run {
    start: f64,
    end: f64,
    label: usize,
    samples: usize,
    sums: Vec<f64>,
}

impl Run {
    fn new(time: f64, probs: &[f64]) -> Self {
        Run {
            start: time,
            end: time,
            label: argmax(probs),
            samples: 1,
            sums: probs.to_vec(),
        }
    }

    fn len(&self) -> f64 {
        self.end - self.start
    }

    /// Takes in `other`'s samples and time span, keeping this run's label.
    fn absorb(&mut self, other: Run) {
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
        self.samples += other.samples;
        for (s, o) in self.sums.iter_mut().zip(other.sums) {
            *s += o;
        }
    }
}

fn argmax(p: &[f64]) -> usize {
    // The lowest index wins a tie, as in `top_k`.
    p.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

/// Builds segments from samples given in time order.
pub struct Segmenter<'a> {
    labels: &'a [String],
    min_len: f64,
    done: Vec<Segment>,
    open: Option<Run>,
    run: Option<Run>,
}

impl<'a> Segmenter<'a> {
    /// `min_len`: seconds; shorter runs are merged into a neighbour (0 keeps every run).
    pub fn new(labels: &'a [String], min_len: f64) -> Self {
        Segmenter {
            labels,
            min_len,
            done: Vec::new(),
            open: None,
            run: None,
        }
    }

    /// A sample at `time` seconds with its class probabilities.
    pub fn push(&mut self, time: f64, probs: &[f64]) {
        if let Some(r) = self.run.as_mut() {
            r.end = time;
            if r.label == argmax(probs) {
                r.samples += 1;
                r.sums.iter_mut().zip(probs).for_each(|(s, p)| *s += p);
                return;
            }
        }
        if let Some(r) = self.run.take() {
            self.close(r);
        }
        self.run = Some(Run::new(time, probs));
    }

    fn close(&mut self, mut r: Run) {
        let Some(mut o) = self.open.take() else {
            self.open = Some(r);
            return;
        };
        if o.label == r.label || r.len() < self.min_len {
            o.absorb(r);
            self.open = Some(o);
        } else if o.len() < self.min_len {
            // Only the first segment can still be short here: it joins the run after it.
            r.absorb(o);
            self.open = Some(r);
        } else {
            self.done.push(self.segment(o));
            self.open = Some(r);
        }
    }

    fn segment(&self, r: Run) -> Segment {
        Segment {
            start: r.start,
            end: r.end,
            index: r.label,
            label: super::label_of(self.labels, r.label),
            mean_probability: r.sums[r.label] / r.samples as f64,
        }
    }

    /// The time of the latest sample, if any.
    pub fn last_time(&self) -> Option<f64> {
        self.run.as_ref().map(|r| r.end)
    }

    /// The segments, the last ending at `end` seconds (the video's end).
    pub fn finish(mut self, end: f64) -> Vec<Segment> {
        if let Some(mut r) = self.run.take() {
            r.end = end.max(r.end);
            self.close(r);
        }
        if let Some(o) = self.open.take() {
            let s = self.segment(o);
            self.done.push(s);
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    /// One sample a second, with these top-1 classes at probability 0.8.
    fn run(classes: &[usize], min_len: f64) -> Vec<(f64, f64, String, f64)> {
        let labels = labels();
        let mut s = Segmenter::new(&labels, min_len);
        for (t, &c) in classes.iter().enumerate() {
            let mut p = vec![0.1; 3];
            p[c] = 0.8;
            s.push(t as f64, &p);
        }
        s.finish(classes.len() as f64)
            .into_iter()
            .map(|g| (g.start, g.end, g.label, (g.mean_probability * 1e6).round() / 1e6))
            .collect()
    }

    #[test]
    fn runs_become_segments() {
        assert_eq!(
            run(&[0, 0, 1, 1, 1, 2], 0.0),
            vec![
                (0.0, 2.0, "a".into(), 0.8),
                (2.0, 5.0, "b".into(), 0.8),
                (5.0, 6.0, "c".into(), 0.8)
            ]
        );
    }

    #[test]
    fn short_runs_join_a_neighbour() {
        // The one-second `b` joins the `a` around it; its sample gave `a` only 0.1.
        assert_eq!(
            run(&[0, 0, 1, 0, 0, 2, 2, 2], 2.0),
            vec![(0.0, 5.0, "a".into(), 0.66), (5.0, 8.0, "c".into(), 0.8)]
        );
        // A short first run joins the run after it.
        assert_eq!(run(&[2, 0, 0, 0], 2.0), vec![(0.0, 4.0, "a".into(), 0.625)]);
        assert!(run(&[], 1.0).is_empty());
    }
}
