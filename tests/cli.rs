//! The `resnet` binary end to end: output formats, bad inputs, offline mode, `info`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{bomb_png, fixture};

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("run resnet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn r20() -> String {
    fixture("resnet20_cifar.pth").display().to_string()
}

/// `resnet classify` with the CIFAR resnet20 fixture weights.
fn classify_r20(args: &[&str]) -> Output {
    let weights = r20();
    let mut all = vec!["classify", "--model", "resnet20", "--weights", weights.as_str()];
    all.extend_from_slice(args);
    resnet(&all)
}

#[test]
fn bad_inputs_never_stop_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let png = std::fs::read(fixture("chelsea.png")).unwrap();
    std::fs::write(d.join("corrupt.png"), &png[..png.len() / 3]).unwrap();
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    std::fs::write(d.join("notes.jpg"), b"just some text, not an image").unwrap();
    std::fs::write(d.join("bomb.png"), bomb_png()).unwrap();
    let p = |n: &str| d.join(n).display().to_string();
    let chelsea = fixture("chelsea.png").display().to_string();
    let coffee = fixture("coffee.png").display().to_string();
    let missing = p("missing.png");
    let out = classify_r20(&[
        "--format",
        "json",
        "--batch-size",
        "3",
        &p("corrupt.png"),
        &chelsea,
        &p("empty.jpg"),
        &p("notes.jpg"),
        &coffee,
        &p("bomb.png"),
        &missing,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "exit code must be non-zero when an input failed");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the two good images are still classified: {stdout}\n{stderr}"
    );
    assert!(lines[0].contains("chelsea.png") && lines[1].contains("coffee.png"));
    for bad in ["corrupt.png", "empty.jpg", "notes.jpg", "bomb.png", "missing.png"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(bad))
            .unwrap_or_else(|| panic!("no error line for {bad}: {stderr}"));
        assert!(line.starts_with("error: "), "{line}");
    }
    assert!(stderr.contains("over the limit"), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
    assert!(stderr.contains("5 of 7 inputs failed"), "{stderr}");
}

#[test]
fn json_lines_have_exactly_the_documented_fields() {
    let chelsea = fixture("chelsea.png").display().to_string();
    let out = classify_r20(&["--format", "json", "--top-k", "3", &chelsea]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["image", "predictions", "transform"]);
    // The transform in use and where it came from: the fixture is a bare file, so the default.
    assert_eq!(v["transform"]["resize"], serde_json::json!({"stretch": {"size": 32}}));
    assert_eq!(v["transform"]["source"], serde_json::json!({"kind": "default"}));
    assert_eq!(v["image"], chelsea.as_str());
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    let mut last = 1.0;
    for p in preds {
        assert_eq!(
            p.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["index", "label", "probability"]
        );
        let prob = p["probability"].as_f64().unwrap();
        assert!(prob <= last && prob > 0.0);
        last = prob;
    }
    // The CIFAR-10 names are built in.
    let labels = resnet::classify::CIFAR10_LABELS;
    assert_eq!(preds[0]["label"], labels[preds[0]["index"].as_u64().unwrap() as usize]);
}

#[test]
fn folders_globs_custom_classes_and_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, (0..10).map(|i| format!("thing {i}\n")).collect::<String>()).unwrap();
    let ann = dir.path().join("ann");
    let imgs = dir.path().join("imgs/sub");
    std::fs::create_dir_all(&imgs).unwrap();
    for n in [
        "small.bmp",
        "small_gray.png",
        "small_lossless.webp",
        "small_palette.gif",
    ] {
        std::fs::copy(fixture(n), imgs.join(n)).unwrap();
    }
    // Same stem as small.bmp: its annotation must not overwrite the other.
    std::fs::create_dir_all(dir.path().join("imgs/other")).unwrap();
    std::fs::copy(fixture("small_rgba.png"), dir.path().join("imgs/other/small.png")).unwrap();
    let glob = format!("{}/small_r*.png", fixture("").display());
    let out = classify_r20(&[
        "--classes",
        classes.to_str().unwrap(),
        "--annotate",
        ann.to_str().unwrap(),
        dir.path().join("imgs").to_str().unwrap(),
        &glob,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // 5 from the folder, small_rgb16.png and small_rgba.png from the glob.
    assert_eq!(stdout.lines().filter(|l| !l.starts_with(' ')).count(), 7, "{stdout}");
    assert!(stdout.contains("thing "), "{stdout}");
    let written = std::fs::read_dir(&ann).unwrap().count();
    assert_eq!(written, 7);
    assert!(ann.join("small-2.png").exists());
    // Sorted walk: imgs/other/small.png comes first and takes small.png.
    let a = image::open(ann.join("small-2.png")).unwrap();
    assert_eq!((a.width(), a.height()), (90, 60));
    // The overlay changed the top band but not the bottom of the image.
    let orig = image::open(fixture("small.bmp")).unwrap().to_rgb8();
    let a = a.to_rgb8();
    assert_ne!(a.get_pixel(2, 2), orig.get_pixel(2, 2));
    assert_eq!(a.get_pixel(45, 55), orig.get_pixel(45, 55));
}

#[test]
fn offline_mode_says_how_to_supply_a_file() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "classify",
            "--model",
            "resnet18",
            "--weights",
            "IMAGENET1K_V1",
            fixture("chelsea.png").to_str().unwrap(),
        ])
        .env("RESNET_OFFLINE", "1")
        .env("RESNET_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("RESNET_OFFLINE") && err.contains("--weights FILE") && err.contains("resnet18-f37072fd.pth"),
        "{err}"
    );
}

#[test]
fn info_matches_torchvision_and_the_paper() {
    let out = resnet(&["info", "--format", "json"]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |m: &str| {
        rows.iter()
            .find(|r| r["model"] == m)
            .unwrap_or_else(|| panic!("{m} missing"))
            .clone()
    };
    for (m, params, gflops) in [
        ("resnet18", 11_689_512u64, 1.814),
        ("resnet34", 21_797_672, 3.664),
        ("resnet50", 25_557_032, 4.089),
        ("resnet101", 44_549_160, 7.801),
        ("resnet152", 60_192_808, 11.514),
        ("wide_resnet50_2", 68_883_240, 11.398),
        ("wide_resnet101_2", 126_886_696, 22.753),
        ("resnext50_32x4d", 25_028_904, 4.23),
        ("resnext101_32x8d", 88_791_336, 16.414),
        ("resnext101_64x4d", 83_455_272, 15.46),
    ] {
        let r = row(m);
        assert_eq!(r["params"].as_u64().unwrap(), params, "{m}");
        let g = r["gflops"].as_f64().unwrap();
        assert!((g / gflops - 1.0).abs() < 0.01, "{m}: {g} vs {gflops}");
    }
    for (m, paper) in [
        ("resnet20", 0.27),
        ("resnet32", 0.46),
        ("resnet44", 0.66),
        ("resnet56", 0.85),
        ("resnet110", 1.7),
        ("resnet1202", 19.4),
    ] {
        let p = row(m)["params"].as_f64().unwrap() / 1e6;
        assert!((p - paper).abs() / paper < 0.03, "{m}: {p}M vs the paper's {paper}M");
    }
    assert_eq!(row("resnet50")["paper_gflops"].as_f64(), Some(3.8));
    let text_out = text(&resnet(&["info", "resnet50"]).stdout);
    assert!(
        text_out.contains("25,557,032") && text_out.contains("3.8"),
        "{text_out}"
    );
    assert!(!resnet(&["info", "resnet51"]).status.success());
}

#[test]
fn convert_writes_safetensors_that_reload() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("r20.safetensors");
    let out = resnet(&["convert", "--model", "resnet20", &r20(), out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a = resnet::weights::read_state_dict(Path::new(&r20())).unwrap();
    let b = resnet::weights::read_state_dict(&out_path).unwrap();
    for (k, t) in &a {
        if !k.ends_with("num_batches_tracked") {
            assert_eq!(&b[k], t, "{k}");
        }
    }
    assert_eq!(a.len(), b.len());
}

/// `resnet bench --json` (or `--format json`) prints one row per case; `--stdin` runs forwards on demand, as
/// `bench/compare.sh` drives it.
#[test]
fn bench_rows_and_stdin_protocol() {
    let out = resnet(&[
        "bench", "--model", "resnet20", "--batch", "1,2", "--size", "32", "--iters", "2", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    assert_eq!(rows.len(), 2);
    for (row, batch) in rows.iter().zip([1, 2]) {
        assert_eq!(row["batch"], batch);
        assert!(row["min_ms"].as_f64().unwrap() > 0.0);
        assert!(row["min_ms"].as_f64() <= row["median_ms"].as_f64());
        assert!(row["gflops"].as_f64().unwrap() > 0.0);
    }
    // `--format json`, as every printing command takes it, gives the same rows.
    let out = resnet(&[
        "bench", "--model", "resnet20", "--batch", "1", "--size", "32", "--iters", "2", "--format", "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let row: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("a JSON row");
    assert_eq!(row["batch"], 1);

    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "bench", "--stdin", "--model", "resnet20", "--batch", "2", "--size", "32",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run resnet");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    for n in [3, 1] {
        writeln!(stdin, "{n}").unwrap();
        let times: Vec<f64> = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(times.len(), n);
        assert!(times.iter().all(|&t| t > 0.0), "{times:?}");
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());

    let out = resnet(&["bench", "--stdin", "--model", "resnet20,resnet32", "--size", "32"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("one --model"), "{}", text(&out.stderr));
}
