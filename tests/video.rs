//! Video input: clips built here with ffmpeg from known images, with content switches at
//! known times. Sampled frames are checked against the frame `ffmpeg -ss t -i clip
//! -frames:v 1` gives, and each frame's classification and embedding against the same frame
//! extracted as a PNG; then the segments, the annotated copy, folders, and bad files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fashion_example, ffmpeg, resnet_command};
use resnet::video::{Frames, Sampling};
use serde_json::Value;

const MODEL: &str = "fashion-mnist-resnet20";

/// Runs ffmpeg quietly and panics with its message on failure.
fn ffmpeg_run(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A clip of Fashion-MNIST examples, each shown for `secs` seconds at 10 fps, scaled to
/// 56×56, encoded with B-frames (so decode order differs from display order).
fn slideshow(dir: &Path, name: &str, shots: &[(&str, f64)], codec: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args: Vec<String> = Vec::new();
    for (image, secs) in shots {
        args.extend(["-loop", "1", "-framerate", "10", "-t"].map(String::from));
        args.push(secs.to_string());
        args.push("-i".into());
        args.push(fashion_example(image).display().to_string());
    }
    let inputs: String = (0..shots.len()).map(|i| format!("[{i}:v]")).collect();
    args.push("-filter_complex".into());
    args.push(format!(
        "{inputs}concat=n={}:v=1,scale=56:56:flags=neighbor,format=yuv420p[v]",
        shots.len()
    ));
    args.extend(["-map", "[v]"].map(String::from));
    args.extend(codec.iter().map(|s| s.to_string()));
    args.push(out.display().to_string());
    ffmpeg_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    out
}

const H264: &[&str] = &["-c:v", "libx264", "-crf", "12", "-g", "7", "-bf", "2"];

/// The three shots of the main clip: a switch at 1.5 s and at 3.0 s.
const SHOTS: &[(&str, f64)] = &[
    ("0000-ankle-boot.png", 1.5),
    ("0002-trouser.png", 1.5),
    ("0018-bag.png", 1.5),
];

/// `ffmpeg -ss t -i clip -frames:v 1` as raw RGB, or `None` past the last frame.
fn frame_at(clip: &Path, t: f64) -> Option<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-ss",
            &format!("{t:.6}"),
            "-i",
        ])
        .arg(clip)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (!out.stdout.is_empty()).then_some(out.stdout)
}

/// `ffmpeg -ss t -i clip -frames:v 1 png`.
fn png_at(clip: &Path, t: f64, png: &Path) {
    ffmpeg_run(&[
        "-ss",
        &format!("{t:.6}"),
        "-i",
        clip.to_str().unwrap(),
        "-frames:v",
        "1",
        png.to_str().unwrap(),
    ]);
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The top-level keys of a JSON line, in the order written (a `Value` sorts them).
fn keys_in_order(line: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(line).unwrap();
    let mut keys: Vec<(usize, String)> = v
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

fn classify(args: &[&str]) -> std::process::Output {
    resnet_command()
        .args(["classify", "--model", MODEL, "--batch-size", "1"])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

#[test]
fn sampled_frames_are_the_frames_ffmpeg_seeks_to() {
    if !ffmpeg("sampled_frames_are_the_frames_ffmpeg_seeks_to") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Variable frame rate: ten frames at 10 fps, a 2.1 s gap (one frame shown for several
    // sample times), then ten more; and the constant-rate clip in WebM (VP9).
    let vfr = tmp.path().join("vfr.mp4");
    ffmpeg_run(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=10:duration=2",
        "-vf",
        "setpts='if(lt(N,10),N*0.1,2.1+N*0.1)/TB'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-bf",
        "2",
        vfr.to_str().unwrap(),
    ]);
    let webm = slideshow(
        tmp.path(),
        "clip.webm",
        SHOTS,
        &["-c:v", "libvpx-vp9", "-deadline", "realtime"],
    );
    for (clip, fps) in [(&vfr, 3.0), (&vfr, 1.0), (&webm, 3.0), (&webm, 0.7)] {
        let frames: Vec<_> = Frames::open(clip, Sampling::Fps(fps), 1 << 30)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(frames.len() > 3, "{}: {} frames", clip.display(), frames.len());
        for (k, f) in frames.iter().enumerate() {
            let t = k as f64 / fps;
            assert_eq!(f.at.time, t);
            let want = frame_at(clip, t).unwrap_or_else(|| panic!("{} has a frame at {t}", clip.display()));
            assert!(
                f.image.as_raw() == &want,
                "{} at {t}s (frame {})",
                clip.display(),
                f.at.frame
            );
        }
        // The next sample time is past the last frame: ffmpeg gives nothing there either.
        let after = frames.len() as f64 / fps;
        assert_eq!(frame_at(clip, after), None, "{} at {after}s", clip.display());
    }
    // The frame numbers: at 3 fps on 10 fps, t = k/3 shows frame ceil(10k/3).
    let frames: Vec<u64> = Frames::open(&webm, Sampling::Fps(3.0), 1 << 30)
        .unwrap()
        .map(|f| f.unwrap().at.frame)
        .collect();
    assert_eq!(frames, (0..14u64).map(|k| (10 * k).div_ceil(3)).collect::<Vec<u64>>());
    // Every frame: 45 of them, at their own times.
    let all: Vec<_> = Frames::open(&webm, Sampling::EveryFrame, 1 << 30)
        .unwrap()
        .map(|f| f.unwrap().at)
        .collect();
    assert_eq!(all.len(), 45);
    for (i, at) in all.iter().enumerate() {
        assert_eq!(at.frame, i as u64);
        assert!((at.time - i as f64 / 10.0).abs() < 1e-9, "{at:?}");
    }
}

#[test]
fn each_frame_is_classified_and_embedded_as_its_png() {
    if !ffmpeg("each_frame_is_classified_and_embedded_as_its_png") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let clip = slideshow(tmp.path(), "clip.mp4", SHOTS, H264);
    let out = classify(&["--fps", "3", "--format", "json", clip.to_str().unwrap()]);
    let lines = ok(&out);
    assert_eq!(lines.len(), 14, "4.5 s at 3 fps: t = 0 … 13/3");
    for raw in String::from_utf8_lossy(&out.stdout).lines() {
        assert_eq!(keys_in_order(raw), ["image", "frame", "time", "predictions"]);
    }
    for (k, line) in lines.iter().enumerate() {
        assert_eq!(line["image"], clip.to_str().unwrap());
        assert_eq!(line["time"].as_f64().unwrap(), k as f64 / 3.0);
        assert_eq!(line["frame"].as_u64().unwrap(), (10 * k as u64).div_ceil(3));
    }
    // Four of those frames, extracted by ffmpeg as PNGs and classified as images.
    for k in [0usize, 1, 5, 13] {
        let png = tmp.path().join(format!("f{k}.png"));
        png_at(&clip, k as f64 / 3.0, &png);
        let image = &ok(&classify(&["--format", "json", png.to_str().unwrap()]))[0];
        assert_eq!(lines[k]["predictions"], image["predictions"], "t = {k}/3");
    }
    // The switches: the shots' own classes, ankle boot, trouser, bag.
    let top: Vec<u64> = lines
        .iter()
        .map(|l| l["predictions"][0]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(top, [9, 9, 9, 9, 9, 1, 1, 1, 1, 8, 8, 8, 8, 8]);

    // `embed`: the same frames, with their place in the video; equal to the PNG's embedding.
    let run = resnet_command()
        .args(["embed", "--model", MODEL, "--fps", "3", clip.to_str().unwrap()])
        .output()
        .unwrap();
    let emb = ok(&run);
    assert_eq!(emb.len(), 14);
    let first = String::from_utf8_lossy(&run.stdout).lines().next().unwrap().to_string();
    assert_eq!(keys_in_order(&first), ["image", "frame", "time", "embedding"]);
    let png = tmp.path().join("f5.png");
    let run = resnet_command()
        .args(["embed", "--model", MODEL, png.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(emb[5]["embedding"], ok(&run)[0]["embedding"]);
    // In a file that names rows by string, a frame is `PATH#t=TIME`.
    let npy = tmp.path().join("e.npy");
    let run = resnet_command()
        .args([
            "embed",
            "--model",
            MODEL,
            "--fps",
            "1",
            "--out",
            npy.to_str().unwrap(),
            clip.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let names = std::fs::read_to_string(tmp.path().join("e.npy.paths.txt")).unwrap();
    let c = clip.display();
    assert_eq!(names, format!("{c}#t=0\n{c}#t=1\n{c}#t=2\n{c}#t=3\n{c}#t=4\n"));
}

#[test]
fn segments_timeline_and_annotated_video() {
    if !ffmpeg("segments_timeline_and_annotated_video") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let clip = slideshow(tmp.path(), "clip.mp4", SHOTS, H264);
    let path = clip.to_str().unwrap();
    let out = classify(&["--fps", "10", "--segments", "--format", "json", path]);
    let segs = ok(&out);
    let got: Vec<(f64, f64, &str)> = segs
        .iter()
        .map(|s| {
            (
                s["start"].as_f64().unwrap(),
                s["end"].as_f64().unwrap(),
                s["label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(0.0, 1.5, "Ankle boot"), (1.5, 3.0, "Trouser"), (3.0, 4.5, "Bag")]
    );
    for (s, raw) in segs.iter().zip(String::from_utf8_lossy(&out.stdout).lines()) {
        assert_eq!(
            keys_in_order(raw),
            ["image", "start", "end", "index", "label", "mean_probability"]
        );
        let p = s["mean_probability"].as_f64().unwrap();
        assert!(p > 0.5 && p <= 1.0, "{s}");
    }

    // A 0.3 s flash of a sneaker in a long shot of a bag: its own segment, unless
    // --min-segment smooths it away (its frames then lower the bag's mean probability).
    let flash = slideshow(
        tmp.path(),
        "flash.mp4",
        &[("0018-bag.png", 2.0), ("0009-sneaker.png", 0.3), ("0018-bag.png", 2.0)],
        H264,
    );
    let flash = flash.to_str().unwrap();
    let labels =
        |out: &[Value]| -> Vec<String> { out.iter().map(|s| s["label"].as_str().unwrap().to_string()).collect() };
    let raw = ok(&classify(&["--fps", "10", "--segments", "--format", "json", flash]));
    assert_eq!(labels(&raw), ["Bag", "Sneaker", "Bag"]);
    let smooth = ok(&classify(&[
        "--fps",
        "10",
        "--segments",
        "--min-segment",
        "0.5",
        "--format",
        "json",
        flash,
    ]));
    assert_eq!(labels(&smooth), ["Bag"]);
    assert_eq!(
        (smooth[0]["start"].as_f64(), smooth[0]["end"].as_f64()),
        (Some(0.0), Some(4.3))
    );
    assert!(smooth[0]["mean_probability"].as_f64() < raw[0]["mean_probability"].as_f64());

    // The text timeline, and its segments.
    let out = classify(&["--fps", "2", "--top-k", "1", path]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "{text}");
    assert_eq!(lines[0], path);
    assert!(lines[4].starts_with("  0:01.500  frame 15 "), "{text}");
    assert!(lines[4].ends_with("Trouser (1)"), "{text}");
    let out = classify(&["--fps", "2", "--segments", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  0:01.500 – 0:03.000 "), "{text}");

    // --annotate: an MP4 of the sampled frames at the sampling rate, and no partial file.
    let dir = tmp.path().join("annotated");
    let out = classify(&["--fps", "2", "--annotate", dir.to_str().unwrap(), path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["clip.mp4"]);
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,avg_frame_rate,width,height",
            "-of",
            "json",
        ])
        .arg(dir.join("clip.mp4"))
        .output()
        .unwrap();
    let probe: Value = serde_json::from_slice(&probe.stdout).unwrap();
    let s = &probe["streams"][0];
    assert_eq!(
        (s["nb_read_frames"].as_str(), s["avg_frame_rate"].as_str()),
        (Some("9"), Some("2/1"))
    );
    assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(56), Some(56)));
}

#[test]
fn folders_take_videos_and_bad_videos_fail_alone() {
    if !ffmpeg("folders_take_videos_and_bad_videos_fail_alone") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("media");
    std::fs::create_dir(&dir).unwrap();
    slideshow(&dir, "b-clip.mp4", &SHOTS[..1], H264);
    std::fs::copy(fashion_example("0002-trouser.png"), dir.join("a.png")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not media").unwrap();
    let lines = ok(&classify(&["--format", "json", dir.to_str().unwrap()]));
    let images: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    let (png, mp4) = (dir.join("a.png"), dir.join("b-clip.mp4"));
    assert_eq!(
        images,
        [png.to_str().unwrap(), mp4.to_str().unwrap(), mp4.to_str().unwrap()]
    );
    assert!(lines[0].get("transform").is_some() && lines[1].get("frame").is_some());

    // A truncated video and a missing one: one line each, and the image after them still runs.
    let good = mp4.to_str().unwrap();
    let bytes = std::fs::read(good).unwrap();
    let cut = tmp.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let noise = tmp.path().join("noise.mkv");
    std::fs::write(&noise, [7u8; 5000]).unwrap();
    let missing = tmp.path().join("missing.webm");
    // Cut in the middle of its frames (the index is at the front): ffmpeg decodes the first
    // part and exits 0 after logging errors; the part before the damage is still printed.
    let fast = slideshow(
        tmp.path(),
        "fast.mp4",
        SHOTS,
        &[H264, &["-movflags", "+faststart"]].concat(),
    );
    let bytes = std::fs::read(&fast).unwrap();
    let half = tmp.path().join("half.mp4");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let out = classify(&[
        "--format",
        "json",
        cut.to_str().unwrap(),
        noise.to_str().unwrap(),
        missing.to_str().unwrap(),
        half.to_str().unwrap(),
        png.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 4, "{stderr}");
    assert!(errors.iter().all(|e| e.contains("cannot read video")), "{stderr}");
    assert!(
        errors[3].contains("half.mp4") && errors[3].contains("partial file"),
        "{stderr}"
    );
    assert!(stderr.contains("4 of 5 inputs failed"), "{stderr}");
    let lines = json_lines(&out.stdout);
    let from_half = lines.iter().filter(|l| l["image"] == half.to_str().unwrap()).count();
    assert!((1..5).contains(&from_half), "{from_half} frames before the damage");
    assert_eq!(lines.last().unwrap()["image"], png.to_str().unwrap());

    // Without ffmpeg on PATH, the error names the package.
    let empty = tmp.path().join("no-bin");
    std::fs::create_dir(&empty).unwrap();
    let out = resnet_command()
        .env("PATH", &empty)
        .args(["classify", "--model", MODEL, good])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("apt install ffmpeg"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_long_video_streams_in_bounded_memory() {
    if !ffmpeg("a_long_video_streams_in_bounded_memory") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // 400 frames of 640×480: 369 MB as RGB, were they held at once.
    let clip = tmp.path().join("long.mp4");
    ffmpeg_run(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=640x480:rate=40:duration=10",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        clip.to_str().unwrap(),
    ]);
    let frames = Frames::open(&clip, Sampling::EveryFrame, 1 << 30).unwrap();
    let mut n = 0;
    let before = peak_rss_kib();
    for f in frames {
        assert_eq!(f.unwrap().image.dimensions(), (640, 480));
        n += 1;
    }
    assert_eq!(n, 400);
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB over 400 frames");
    // The pixel limit holds for video frames too.
    let err = Frames::open(&clip, Sampling::EveryFrame, 100_000).err().unwrap();
    assert!(
        matches!(err, resnet::Error::TooManyPixels { pixels: 307_200, .. }),
        "{err}"
    );
}

/// This process's peak resident set, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
