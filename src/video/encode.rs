//! Writing a video (`--annotate DIR` on a video input): frames go to an `ffmpeg` child as
//! PPM images and come out as H.264 in MP4, under a temporary name renamed into place when
//! ffmpeg has finished, so a failed run leaves no half file.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use image::RgbImage;

use super::{ffmpeg_message, spawn};
use crate::error::{Error, Result};

/// An MP4 being written by ffmpeg, one frame at a time.
pub struct VideoWriter {
    dest: PathBuf,
    tmp: PathBuf,
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stderr: Option<JoinHandle<String>>,
    size: Option<(u32, u32)>,
    finished: bool,
}

fn write_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl VideoWriter {
    /// Starts ffmpeg writing `dest` at `rate` frames per second (`num/den`).
    pub fn create(dest: &Path, rate: (u32, u32)) -> Result<Self> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.partial"));
        let mut out = std::ffi::OsString::from("file:");
        out.push(tmp.as_os_str());
        let mut child = spawn(
            "ffmpeg",
            Command::new("ffmpeg")
                .args(["-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+error", "-y"])
                .args([
                    "-f",
                    "image2pipe",
                    "-c:v",
                    "ppm",
                    "-framerate",
                    &format!("{}/{}", rate.0, rate.1),
                ])
                .args(["-i", "pipe:0"])
                // H.264 in 4:2:0 needs even sides: pad odd ones with a black line.
                .args([
                    "-vf",
                    "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "veryfast",
                ])
                .args([
                    "-crf",
                    "20",
                    "-pix_fmt",
                    "yuv420p",
                    "-movflags",
                    "+faststart",
                    "-f",
                    "mp4",
                ])
                .arg(out)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let stdin = child.stdin.take().map(BufWriter::new);
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = (&mut e).take(1 << 16).read_to_string(&mut text);
                // Drain the rest so ffmpeg never blocks on a full pipe.
                let _ = std::io::copy(&mut e, &mut std::io::sink());
                text
            })
        });
        Ok(VideoWriter {
            dest: dest.to_path_buf(),
            tmp,
            child,
            stdin,
            stderr,
            size: None,
            finished: false,
        })
    }

    /// Appends a frame. The first frame sets the size; a later one of another size is
    /// resized to it (an encoder cannot change size mid-stream).
    pub fn push(&mut self, img: &RgbImage) -> Result<()> {
        let (w, h) = *self.size.get_or_insert(img.dimensions());
        let resized;
        let img = if img.dimensions() == (w, h) {
            img
        } else {
            resized = image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle);
            &resized
        };
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(write_err(&self.dest, "the video is already finished"));
        };
        let header = format!("P6\n{w} {h}\n255\n");
        let sent = stdin
            .write_all(header.as_bytes())
            .and_then(|()| stdin.write_all(img.as_raw()));
        if let Err(e) = sent {
            let why = self.ffmpeg_errors();
            return Err(write_err(
                &self.dest,
                format!("ffmpeg stopped taking frames ({e}): {why}"),
            ));
        }
        Ok(())
    }

    fn ffmpeg_errors(&mut self) -> String {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finished = true;
        let text = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        ffmpeg_message(&text, &self.tmp)
    }

    /// Closes the stream, waits for ffmpeg, and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.size.is_none() {
            return Err(write_err(&self.dest, "no frames to write"));
        }
        let flushed = self.stdin.take().map(|mut s| s.flush());
        let status = self.child.wait().map_err(|e| write_err(&self.dest, e.to_string()))?;
        self.finished = true;
        let text = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        if let Some(Err(e)) = flushed {
            return Err(write_err(
                &self.dest,
                format!("{e}: {}", ffmpeg_message(&text, &self.tmp)),
            ));
        }
        if !status.success() {
            return Err(write_err(&self.dest, ffmpeg_message(&text, &self.tmp)));
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| write_err(&self.dest, e.to_string()))
    }
}

impl Drop for VideoWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.stdin = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Gone after a rename; a failed run's partial file is removed.
        let _ = std::fs::remove_file(&self.tmp);
    }
}
