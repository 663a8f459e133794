//! `resnet classify`: images and videos in, top-k classes out (text or JSON lines),
//! annotated PNGs and videos. A video gives a line per sampled frame (a timeline), or with
//! `--segments` its runs of one label.

use std::collections::HashSet;
use std::io::{StdoutLock, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use image::RgbImage;
use indicatif::ProgressBar;
use serde::Serialize;

use resnet::classify::segments::{Segment, Segmenter};
use resnet::classify::{annotate, annotated_path, output_path, probabilities, top_k_of, TransformSource};
use resnet::preprocess::Transform;
use resnet::video::{FrameAt, Probe, Sampling, VideoWriter};
use resnet::{Classifier, Prediction};

use super::{
    build_classifier, exit_code, expand_inputs, inputs_bar, media_batches, Format, MediaSink, ModelArgs, RunArgs,
    TransformArgs, VideoArgs,
};

#[derive(clap::Args)]
pub(crate) struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[command(flatten)]
    transform: TransformArgs,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write a copy of each image with its top-1 label drawn on it (a video: an MP4 of its
    /// sampled frames, labelled, at the sampling rate).
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    #[command(flatten)]
    video: VideoArgs,
    /// For videos: print runs of one top-1 label (start, end, label, mean probability)
    /// instead of a line per frame.
    #[arg(long)]
    segments: bool,
    /// With --segments: runs shorter than this many seconds join a neighbouring segment.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS", requires = "segments")]
    min_segment: f64,
    #[command(flatten)]
    run: RunArgs,
    #[arg(required = true)]
    inputs: Vec<String>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    image: &'a str,
    predictions: &'a [Prediction],
    transform: Used<'a>,
}

/// A video frame's line: exactly these keys.
#[derive(Serialize)]
struct FrameLine<'a> {
    image: &'a str,
    #[serde(flatten)]
    at: FrameAt,
    predictions: &'a [Prediction],
}

#[derive(Serialize)]
struct SegmentLine<'a> {
    image: &'a str,
    #[serde(flatten)]
    segment: &'a Segment,
}

/// The transform in use and where it came from (a tag, a recognised file, a run folder, flags).
#[derive(Serialize, Clone, Copy)]
struct Used<'a> {
    #[serde(flatten)]
    transform: &'a Transform,
    source: &'a TransformSource,
}

pub(crate) fn run(a: ClassifyArgs) -> Result<ExitCode> {
    let clf = build_classifier(&a.model, &a.transform, &a.run)?;
    if let Some(dir) = &a.annotate {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if a.min_segment < 0.0 || !a.min_segment.is_finite() {
        anyhow::bail!("--min-segment {}: give a number of seconds, 0 or more", a.min_segment);
    }
    let inputs = expand_inputs(&a.inputs, true)?;
    let bar = inputs_bar(&inputs, true);
    let mut printer = Printer {
        a: &a,
        clf: &clf,
        used: Used {
            transform: clf.transform(),
            source: clf.transform_source(),
        },
        out: std::io::stdout().lock(),
        bar: &bar,
        written: HashSet::new(),
        video: None,
    };
    let failed = media_batches(&inputs, a.batch_size, &a.run, Some(&a.video), &bar, &mut printer)?;
    Ok(exit_code(failed, inputs.len()))
}

/// Prints each batch's predictions and writes the annotated copies.
struct Printer<'a> {
    a: &'a ClassifyArgs,
    clf: &'a Classifier,
    used: Used<'a>,
    out: StdoutLock<'static>,
    bar: &'a ProgressBar,
    written: HashSet<PathBuf>,
    video: Option<Video<'a>>,
}

/// The video being read: its segments and its annotated copy.
struct Video<'a> {
    segments: Option<Segmenter<'a>>,
    writer: Option<(VideoWriter, PathBuf)>,
}

impl<'a> Printer<'a> {
    fn print_image(&mut self, shown: &str, p: &[Prediction]) -> Result<()> {
        let out = &mut self.out;
        match self.a.format {
            Format::Json => writeln!(
                out,
                "{}",
                serde_json::to_string(&JsonLine {
                    image: shown,
                    predictions: p,
                    transform: self.used,
                })?
            )?,
            Format::Text => {
                writeln!(out, "{shown}")?;
                for (rank, q) in p.iter().enumerate() {
                    writeln!(
                        out,
                        "  {}. {:>6.2}%  {} ({})",
                        rank + 1,
                        100.0 * q.probability,
                        q.label,
                        q.index
                    )?;
                }
            }
        }
        Ok(())
    }

    /// A timeline line: `  0:01.000  frame 25    87.31%  Sneaker (7); 5.10% Sandal (5)`.
    fn print_frame(&mut self, shown: &str, at: FrameAt, p: &[Prediction]) -> Result<()> {
        let out = &mut self.out;
        match self.a.format {
            Format::Json => writeln!(
                out,
                "{}",
                serde_json::to_string(&FrameLine {
                    image: shown,
                    at,
                    predictions: p,
                })?
            )?,
            Format::Text => {
                let rest: Vec<String> = p
                    .iter()
                    .map(|q| format!("{:.2}% {} ({})", 100.0 * q.probability, q.label, q.index))
                    .collect();
                writeln!(out, "  {}  frame {:<6} {}", clock(at.time), at.frame, rest.join("; "))?;
            }
        }
        Ok(())
    }

    /// Draws the top-1 label on `img` and writes it (an image file, or the video's next frame).
    fn annotate(&mut self, path: &Path, img: &RgbImage, top: &Prediction) -> usize {
        let Some(dir) = &self.a.annotate else {
            return 0;
        };
        let text = format!("{}: {:.1}%", top.label, 100.0 * top.probability);
        let drawn = annotate(img, &text);
        let (dest, result) = match self.video.as_mut().and_then(|v| v.writer.as_mut()) {
            Some((w, dest)) => (dest.clone(), w.push(&drawn).map_err(|e| e.to_string())),
            None => {
                let dest = annotated_path(dir, path, &mut self.written);
                let r = drawn.save(&dest).map_err(|e| e.to_string());
                (dest, r)
            }
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                self.bar
                    .suspend(|| eprintln!("error: {}: cannot write: {e}", dest.display()));
                if let Some(v) = self.video.as_mut() {
                    // One report per video: the rest of its frames are not written.
                    v.writer = None;
                }
                1
            }
        }
    }
}

impl MediaSink for Printer<'_> {
    fn batch(&mut self, paths: &[&Path], at: &[Option<FrameAt>], imgs: &[RgbImage]) -> Result<usize> {
        let mut failed = 0;
        let logits = self.clf.logits(imgs)?;
        for (((path, at), img), l) in paths.iter().zip(at).zip(imgs).zip(&logits) {
            let probs = probabilities(l);
            let p = top_k_of(&probs, self.a.top_k, self.clf.labels());
            let shown = path.display().to_string();
            let bar = self.bar;
            match at {
                None => bar.suspend(|| self.print_image(&shown, &p))?,
                Some(at) => match self.video.as_mut().and_then(|v| v.segments.as_mut()) {
                    Some(s) => s.push(at.time, &probs),
                    None => bar.suspend(|| self.print_frame(&shown, *at, &p))?,
                },
            }
            if self.a.annotate.is_some() {
                // The top-1 class, even with --top-k 0.
                let top = p
                    .first()
                    .cloned()
                    .or_else(|| top_k_of(&probs, 1, self.clf.labels()).pop());
                if let Some(top) = top {
                    failed += self.annotate(path, img, &top);
                }
            }
        }
        Ok(failed)
    }

    fn video_start(&mut self, path: &Path, probe: &Probe) -> Result<()> {
        let mut failed_writer = None;
        let writer = match &self.a.annotate {
            Some(dir) => {
                let dest = output_path(dir, path, "mp4", &mut self.written);
                match VideoWriter::create(&dest, rate(self.a.video.sampling(), probe)) {
                    Ok(w) => Some((w, dest)),
                    Err(e) => {
                        failed_writer = Some(e);
                        None
                    }
                }
            }
            None => None,
        };
        if let Some(e) = failed_writer {
            // Classification goes on; the exit code reports the failed copy.
            self.bar.suspend(|| eprintln!("error: {e}"));
        }
        if self.a.format == Format::Text && !self.a.segments {
            self.bar.suspend(|| writeln!(self.out, "{}", path.display()))?;
        }
        self.video = Some(Video {
            segments: self
                .a
                .segments
                .then(|| Segmenter::new(self.clf.labels(), self.a.min_segment)),
            writer,
        });
        Ok(())
    }

    fn video_end(&mut self, path: &Path, probe: &Probe, complete: bool) -> Result<usize> {
        let Some(v) = self.video.take() else {
            return Ok(0);
        };
        if !complete {
            // The error is reported by the caller; a partial copy is removed on drop.
            return Ok(0);
        }
        let mut failed = 0;
        if let Some((w, _)) = v.writer {
            if let Err(e) = w.finish() {
                failed += 1;
                self.bar.suspend(|| eprintln!("error: {e}"));
            }
        }
        if let Some(s) = v.segments {
            let period = match self.a.video.sampling() {
                Sampling::Fps(f) => 1.0 / f,
                Sampling::EveryFrame => probe.frame_rate.map_or(0.0, |(n, d)| d as f64 / n as f64),
            };
            let last = s.last_time().unwrap_or(0.0);
            let mut end = last + period;
            if let Some(d) = probe.duration.filter(|&d| d > last) {
                end = end.min(d);
            }
            let shown = path.display().to_string();
            let segments = s.finish(end);
            self.bar.suspend(|| self.print_segments(&shown, &segments))?;
        }
        Ok(failed)
    }
}

impl Printer<'_> {
    fn print_segments(&mut self, shown: &str, segments: &[Segment]) -> Result<()> {
        let out = &mut self.out;
        match self.a.format {
            Format::Json => {
                for segment in segments {
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&SegmentLine { image: shown, segment })?
                    )?;
                }
            }
            Format::Text => {
                writeln!(out, "{shown}")?;
                for s in segments {
                    writeln!(
                        out,
                        "  {} – {}  {:>6.2}%  {} ({})",
                        clock(s.start),
                        clock(s.end),
                        100.0 * s.mean_probability,
                        s.label,
                        s.index
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The annotated video's frame rate: the sampling rate, or the source's with every frame.
fn rate(sampling: Sampling, probe: &Probe) -> (u32, u32) {
    match sampling {
        Sampling::Fps(f) if f.fract() == 0.0 && f <= u32::MAX as f64 => (f as u32, 1),
        Sampling::Fps(f) => (((f * 1000.0).round() as u32).max(1), 1000),
        Sampling::EveryFrame => probe.frame_rate.unwrap_or((25, 1)),
    }
}

/// Seconds as `m:ss.mmm` (`h:mm:ss.mmm` from an hour on).
fn clock(t: f64) -> String {
    if !t.is_finite() {
        return "?".into();
    }
    let ms = (t * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}.{ms:03}")
    } else {
        format!("{m}:{s:02}.{ms:03}")
    }
}
