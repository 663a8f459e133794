//! Video input and output through the `ffmpeg` program (Debian package `ffmpeg`), run as a
//! subprocess: nothing is linked, so a codec's bug stays in that process, and every format
//! ffmpeg reads works here.
//!
//! Frames stream: [`Frames`] reads one frame at a time from ffmpeg's pipe, so no video is
//! ever held whole. At `Sampling::Fps(f)` the frames taken are those ffmpeg's own
//! `-ss t -i clip -frames:v 1` gives for t = 0, 1/f, 2/f, …: the first frame whose timestamp
//! is at or after t. ffmpeg's `select` filter picks them (so the rest are never converted to
//! RGB), and `showinfo` reports each picked frame's number and timestamp on stderr.
//!
//! Inputs may be crafted: only the file protocol and the demuxers of the extensions we take
//! are allowed (no playlists that reach the network or other files), the decoder refuses
//! frames over the pixel limit, and each frame's size is checked again before it is read.

mod encode;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use image::RgbImage;
use serde::Serialize;

use crate::error::{Error, Result};

pub use encode::VideoWriter;

/// The extensions read as video by folders and globs.
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mkv", "webm", "mov", "avi"];

/// The demuxers those extensions need; ffmpeg refuses every other (HLS, concat, …).
const DEMUXERS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi";

/// Whether `path`'s extension is one of [`VIDEO_EXTENSIONS`].
pub fn is_video_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Which frames of a video to take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The frames shown at t = 0, 1/f, 2/f, … seconds.
    Fps(f64),
    /// Every decoded frame.
    EveryFrame,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::Fps(1.0)
    }
}

/// Where a frame sits in its video.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FrameAt {
    /// The decoded frame's number, from 0.
    pub frame: u64,
    /// Seconds from the start: the sample time k/f, or with every frame its own timestamp.
    pub time: f64,
}

/// One sampled frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub at: FrameAt,
    pub image: RgbImage,
}

/// What ffprobe says of a video's first video stream.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Seconds, when the container knows.
    pub duration: Option<f64>,
    /// The stream's average frame rate as `(num, den)`, when known.
    pub frame_rate: Option<(u32, u32)>,
    /// The coded size (before any rotation), 0 when unknown.
    pub width: u32,
    pub height: u32,
}

fn video_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Video {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// `file:PATH`, so that a name like `concat:…` or `-x.mp4` stays a file name to ffmpeg.
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

fn spawn(program: &str, cmd: &mut Command) -> Result<Child> {
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingProgram {
            program: program.into(),
            package: "ffmpeg".into(),
        },
        _ => Error::Io {
            path: program.into(),
            source: e,
        },
    })
}

/// Reads the duration and frame rate with ffprobe (no frame is decoded).
pub fn probe(path: &Path) -> Result<Probe> {
    #[derive(serde::Deserialize)]
    struct Out {
        #[serde(default)]
        streams: Vec<Stream>,
        format: Option<Format>,
    }
    #[derive(serde::Deserialize)]
    struct Stream {
        avg_frame_rate: Option<String>,
        #[serde(default)]
        width: u32,
        #[serde(default)]
        height: u32,
    }
    #[derive(serde::Deserialize)]
    struct Format {
        duration: Option<String>,
    }
    let child = spawn(
        "ffprobe",
        Command::new("ffprobe")
            .args([
                "-loglevel",
                "level+error",
                "-protocol_whitelist",
                "file",
                "-format_whitelist",
                DEMUXERS,
            ])
            .args([
                "-select_streams",
                "v:0",
                "-show_entries",
                "format=duration:stream=avg_frame_rate,width,height",
            ])
            .args(["-of", "json"])
            .arg(file_url(path))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let out = child.wait_with_output().map_err(|e| video_err(path, e.to_string()))?;
    if !out.status.success() {
        return Err(video_err(
            path,
            ffmpeg_message(&String::from_utf8_lossy(&out.stderr), path),
        ));
    }
    let parsed: Out = serde_json::from_slice(&out.stdout).map_err(|e| video_err(path, format!("ffprobe: {e}")))?;
    let Some(stream) = parsed.streams.first() else {
        return Err(video_err(path, "it has no video stream"));
    };
    let frame_rate = stream.avg_frame_rate.as_deref().and_then(|r| {
        let (n, d) = r.split_once('/')?;
        let (n, d) = (n.parse().ok()?, d.parse().ok()?);
        (n > 0 && d > 0).then_some((n, d))
    });
    let duration = parsed
        .format
        .and_then(|f| f.duration)
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d >= 0.0);
    Ok(Probe {
        duration,
        frame_rate,
        width: stream.width,
        height: stream.height,
    })
}

/// ffmpeg's error lines, without its prefixes and our `file:` URL, joined into one line.
fn ffmpeg_message(stderr: &str, path: &Path) -> String {
    let url = format!("file:{}: ", path.display());
    let lines: Vec<String> = stderr
        .lines()
        .filter_map(|l| {
            // `[demuxer @ 0x…] [error] text`, or `[error] text`, or ffprobe's plain `text`.
            let l = l.trim();
            let l = match l.find("[error] ").or_else(|| l.find("[fatal] ")) {
                Some(i) => &l[i + 8..],
                None if l.starts_with('[') => return None,
                None => l,
            };
            let l = l.replace(&url, "");
            (!l.is_empty()).then_some(l)
        })
        .collect();
    match lines.len() {
        0 => "ffmpeg failed without a message".into(),
        1..=3 => lines.join("; "),
        n => format!("{}; … {} more …; {}", lines[0], n - 2, lines[n - 1]),
    }
}

/// What the stderr reader passes on: a picked frame's number and timestamp.
struct Shown {
    frame: u64,
    pts: Option<i64>,
    time_base: (i64, i64),
}

/// The sampled frames of one video, in order, decoded by an `ffmpeg` child process.
///
/// ```no_run
/// use resnet::video::{Frames, Sampling};
/// for frame in Frames::open("clip.mp4".as_ref(), Sampling::Fps(1.0), 50_000_000)? {
///     let frame = frame?;
///     println!("{:.1}s: frame {} is {}x{}", frame.at.time, frame.at.frame, frame.image.width(), frame.image.height());
/// }
/// # Ok::<(), resnet::Error>(())
/// ```
pub struct Frames {
    path: PathBuf,
    probe: Probe,
    sampling: Sampling,
    max_pixels: u64,
    child: Child,
    stdout: BufReader<ChildStdout>,
    shown: Receiver<Shown>,
    errors: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    /// The next sample number k (time k/f) not yet given out.
    next_k: u64,
    /// No sample numbers from here on: a crafted timestamp far past the probed duration
    /// would otherwise repeat one frame for as long as it claims.
    end_k: u64,
    /// A frame that also stands for later sample times (a frame shown for longer than 1/f).
    repeat: Option<(RgbImage, u64, u64)>,
    done: bool,
}

impl Frames {
    /// Probes `path` and starts ffmpeg on it; frames over `max_pixels` are refused.
    pub fn open(path: &Path, sampling: Sampling, max_pixels: u64) -> Result<Self> {
        if !path.is_file() {
            return Err(video_err(path, "no such file"));
        }
        let probe = probe(path)?;
        check_pixels(path, probe.width, probe.height, max_pixels)?;
        let filters = match sampling {
            Sampling::Fps(f) if !(f.is_finite() && f > 0.0) => {
                return Err(Error::Usage(format!("--fps {f}: give a positive number of frames per second")))
            }
            // Picks a frame when some k/f lies in (previous timestamp, this timestamp]: the
            // frame `-ss k/f` gives. The epsilon keeps k/f that equals a timestamp exactly on
            // its frame despite rounding; `Frames::last_sample` repeats the sum.
            Sampling::Fps(f) => format!(
                "showinfo@all=checksum=0,select='isnan(prev_pts)+gt(floor(pts*TB*{f:?}+{EPS:?}),floor(prev_pts*TB*{f:?}+{EPS:?}))',showinfo@picked=checksum=0"
            ),
            Sampling::EveryFrame => "showinfo@picked=checksum=0".to_string(),
        };
        let mut child = spawn(
            "ffmpeg",
            Command::new("ffmpeg")
                .args(["-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info"])
                .args(["-protocol_whitelist", "file", "-format_whitelist", DEMUXERS])
                .args(["-max_pixels", &max_pixels.min(i32::MAX as u64).to_string()])
                .arg("-i")
                .arg(file_url(path))
                .args(["-map", "0:v:0", "-vf", &filters, "-fps_mode", "passthrough"])
                .args(["-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => return Err(video_err(path, "ffmpeg's pipes did not open")),
        };
        let (tx, shown) = channel();
        let errors = Arc::new(Mutex::new(String::new()));
        let errs = errors.clone();
        let reader = std::thread::spawn(move || read_stderr(stderr, tx, errs));
        let end_k = match (sampling, probe.duration) {
            // A second past the container's duration: some end their frames just after it.
            (Sampling::Fps(f), Some(d)) => ((d + 1.0) * f).floor().min(MAX_SAMPLES as f64) as u64 + 1,
            _ => MAX_SAMPLES,
        };
        Ok(Frames {
            path: path.to_path_buf(),
            probe,
            sampling,
            max_pixels,
            child,
            stdout: BufReader::with_capacity(1 << 20, stdout),
            shown,
            errors,
            reader: Some(reader),
            next_k: 0,
            end_k,
            repeat: None,
            done: false,
        })
    }

    /// Reads the next picked frame from ffmpeg: `None` at the end of the video.
    fn read_frame(&mut self) -> Result<Option<(RgbImage, Shown)>> {
        let Some((w, h)) = ppm_header(&mut self.stdout).map_err(|e| video_err(&self.path, e))? else {
            return Ok(None);
        };
        check_pixels(&self.path, w, h, self.max_pixels)?;
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        self.stdout
            .read_exact(&mut buf)
            .map_err(|e| video_err(&self.path, format!("ffmpeg's frame was cut short: {e}")))?;
        let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| video_err(&self.path, "bad frame size"))?;
        let shown = self
            .shown
            .recv()
            .map_err(|_| video_err(&self.path, "ffmpeg gave a frame without its timestamp"))?;
        Ok(Some((img, shown)))
    }

    /// What ffprobe said of the video.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Waits for ffmpeg and turns a failure into an error with its message.
    fn finish(&mut self) -> Result<()> {
        self.done = true;
        let status = self.child.wait().map_err(|e| video_err(&self.path, e.to_string()))?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let text = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        // ffmpeg exits 0 on a truncated or damaged stream after logging errors: those fail
        // the video too, once the frames before the damage have been given out.
        if status.success() && text.is_empty() {
            return Ok(());
        }
        Err(video_err(&self.path, ffmpeg_message(&text, &self.path)))
    }

    /// The last sample number a picked frame stands for (from `self.next_k` on), at `f` per
    /// second; `None` when it stands for none (a frame before time 0).
    fn last_sample(&self, f: f64, shown: &Shown) -> Option<u64> {
        let pts = shown.pts? as f64;
        let tb = shown.time_base.0 as f64 / shown.time_base.1 as f64;
        // The same sum, in the same order, as the `select` expression.
        let last = (pts * tb * f + EPS).floor().min(self.end_k as f64 - 1.0);
        (last >= self.next_k as f64).then_some(last as u64)
    }
}

fn check_pixels(path: &Path, width: u32, height: u32, max: u64) -> Result<()> {
    let pixels = width as u64 * height as u64;
    if pixels > max {
        return Err(Error::TooManyPixels {
            path: path.display().to_string(),
            width,
            height,
            pixels,
            max,
        });
    }
    Ok(())
}

/// Samples per video when its duration is unknown (115 days at one a second).
const MAX_SAMPLES: u64 = 10_000_000;

/// Keeps a sample time that equals a frame's timestamp on that frame despite float rounding.
const EPS: f64 = 1e-7;

impl Iterator for Frames {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Result<Frame>> {
        let Sampling::Fps(f) = self.sampling else {
            if self.done {
                return None;
            }
            return match self.read_frame() {
                Ok(Some((image, s))) => {
                    let time = match s.pts {
                        Some(p) => (p as f64 * s.time_base.0 as f64) / s.time_base.1 as f64,
                        None => f64::NAN,
                    };
                    Some(Ok(Frame {
                        at: FrameAt { frame: s.frame, time },
                        image,
                    }))
                }
                Ok(None) => self.finish().err().map(Err),
                Err(e) => {
                    self.done = true;
                    Some(Err(e))
                }
            };
        };
        loop {
            if let Some((image, frame, last)) = self.repeat.take() {
                let k = self.next_k;
                self.next_k += 1;
                if k < last {
                    self.repeat = Some((image.clone(), frame, last));
                }
                let time = k as f64 / f;
                return Some(Ok(Frame {
                    at: FrameAt { frame, time },
                    image,
                }));
            }
            if self.done {
                return None;
            }
            match self.read_frame() {
                Ok(Some((image, s))) => {
                    if let Some(last) = self.last_sample(f, &s) {
                        self.repeat = Some((image, s.frame, last));
                    }
                }
                Ok(None) => return self.finish().err().map(Err),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The size in a PPM (`P6 W H 255`) header, or `None` at a clean end of stream.
fn ppm_header(r: &mut impl BufRead) -> std::result::Result<Option<(u32, u32)>, String> {
    let mut fields: Vec<String> = Vec::with_capacity(4);
    let mut cur = String::new();
    // Four whitespace-separated fields, then exactly one whitespace byte before the pixels.
    while fields.len() < 4 {
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) if fields.is_empty() && cur.is_empty() => return Ok(None),
            Ok(0) => return Err("ffmpeg's output ended inside a frame header".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        if b[0].is_ascii_whitespace() {
            if !cur.is_empty() {
                fields.push(std::mem::take(&mut cur));
            }
        } else if cur.len() < 12 {
            cur.push(b[0] as char);
        } else {
            return Err("ffmpeg's frame header is not PPM".into());
        }
    }
    let num = |s: &str| s.parse::<u32>().map_err(|_| format!("bad PPM field `{s}`"));
    if fields[0] != "P6" || fields[3] != "255" {
        return Err(format!("ffmpeg's frame header is not 8-bit PPM: {fields:?}"));
    }
    let (w, h) = (num(&fields[1])?, num(&fields[2])?);
    if w == 0 || h == 0 {
        return Err("ffmpeg gave an empty frame".into());
    }
    Ok(Some((w, h)))
}

/// Longest stderr line kept (showinfo prints side data as long hex lines).
const MAX_LINE: usize = 4096;

/// Reads ffmpeg's stderr: passes on each picked frame's `showinfo` line, keeps the rest (the
/// error messages among them) for the error report, bounded.
fn read_stderr(stderr: impl Read, tx: Sender<Shown>, errors: Arc<Mutex<String>>) {
    let mut r = BufReader::new(stderr);
    let (mut last_all, mut time_base) = (None::<u64>, (1i64, 1i64));
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_bounded(&mut r, &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = String::from_utf8_lossy(&line);
        let (all, picked) = (l.starts_with("[showinfo@all @"), l.starts_with("[showinfo@picked @"));
        if !(all || picked) {
            if l.contains("[error] ") || l.contains("[fatal] ") {
                if let Ok(mut e) = errors.lock() {
                    if e.len() < 16 * MAX_LINE {
                        e.push_str(&l);
                        e.push('\n');
                    }
                }
            }
            continue;
        }
        let Some(msg) = l.split_once("] [info] ").map(|(_, m)| m.trim()) else {
            continue;
        };
        if let Some(tb) = msg.strip_prefix("config in time_base: ").and_then(parse_time_base) {
            if picked {
                time_base = tb;
            }
            continue;
        }
        let Some((n, pts)) = parse_showinfo(msg) else {
            continue;
        };
        if all {
            last_all = Some(n);
        } else {
            // After `select`, `n` counts picked frames; the frame's own number is the last one
            // `showinfo@all` saw, since the filters pass frames through one at a time.
            let frame = last_all.unwrap_or(n);
            if tx.send(Shown { frame, pts, time_base }).is_err() {
                break;
            }
        }
    }
}

fn read_line_bounded(r: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        total += take;
        if end {
            return Ok(total);
        }
    }
}

/// `1/12800, frame_rate: 25/1` → `(1, 12800)`.
fn parse_time_base(s: &str) -> Option<(i64, i64)> {
    let tb = s.split([',', ' ']).next()?;
    let (n, d) = tb.split_once('/')?;
    let (n, d) = (n.parse().ok()?, d.parse().ok()?);
    (n > 0 && d > 0).then_some((n, d))
}

/// `n:   3 pts:  12800 pts_time:1 …` → `(3, Some(12800))`; `pts:NOPTS` → `None`.
fn parse_showinfo(msg: &str) -> Option<(u64, Option<i64>)> {
    let rest = msg.strip_prefix("n:")?.trim_start();
    let (n, rest) = rest.split_once(char::is_whitespace)?;
    let rest = rest.trim_start().strip_prefix("pts:")?.trim_start();
    let pts = rest.split(char::is_whitespace).next()?;
    Some((n.parse().ok()?, pts.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn showinfo_lines_parse() {
        assert_eq!(
            parse_showinfo("n:   3 pts:  12800 pts_time:1       pos:     3494 fmt:yuv420p"),
            Some((3, Some(12800)))
        );
        assert_eq!(parse_showinfo("n:  10 pts:NOPTS pts_time:NOPTS"), Some((10, None)));
        assert_eq!(parse_showinfo("color_range:unknown"), None);
        assert_eq!(parse_time_base("1/12800, frame_rate: 25/1"), Some((1, 12800)));
        assert_eq!(parse_time_base("0/0, frame_rate: 0/0"), None);
    }

    #[test]
    fn ppm_headers_are_checked() {
        let mut ok: &[u8] = b"P6\n64 48\n255\nxyz";
        assert_eq!(ppm_header(&mut ok), Ok(Some((64, 48))));
        assert_eq!(ok, b"xyz");
        assert_eq!(ppm_header(&mut &b""[..]), Ok(None));
        assert!(ppm_header(&mut &b"P6\n64"[..]).is_err());
        assert!(ppm_header(&mut &b"P6\n64 48\n65535\n"[..]).is_err());
        assert!(ppm_header(&mut &b"P6\n99999999999999 1\n255\n"[..]).is_err());
    }

    #[test]
    fn error_lines_lose_their_prefixes() {
        let p = Path::new("x.mp4");
        let text = "[info] Input #0\n[mov,mp4 @ 0x55] [error] moov atom not found\n[error] file:x.mp4: Invalid data found when processing input\n";
        assert_eq!(
            ffmpeg_message(text, p),
            "moov atom not found; Invalid data found when processing input"
        );
    }
}
