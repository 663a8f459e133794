//! The studio page end to end in headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `tests/browser/`): upload real images, wait for the bars, compare
//! the top-1 labels with the CLI's, turn on "Explain" and check the heat maps, and keep a
//! screenshot.
//!
//! Needs `/usr/bin/chromium` and `npm ci --prefix tests/browser`; `scripts/test` installs both,
//! and a plain `cargo test` without them skips this test with one line that says so.
#![cfg(feature = "serve")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::serve::Running;
use common::{fashion_example, fixture};
use resnet::serve::ServeConfig;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The CLI's top-1 label for each image, from `resnet classify --format json`.
fn cli_top1(images: &[&Path]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["classify", "--model", "fashion-mnist-resnet20", "--format", "json"])
        .args(images)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["predictions"][0]["label"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn studio_page_classifies_uploads_in_chromium() {
    let browser_dir = root().join("tests/browser");
    let Some(chromium) = common::chromium("studio_page_classifies_uploads_in_chromium") else {
        return;
    };

    let srv = Running::fashion(ServeConfig::default());
    let tmp = tempfile::tempdir().unwrap();
    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, "these are notes, not a picture").unwrap();
    // A Fashion-MNIST test image, dropped on the page; then, picked together, a real photo
    // (chelsea the cat), another test image and the text file.
    let boot = fashion_example("0000-ankle-boot.png");
    let photo = fixture("chelsea.png");
    let trouser = fashion_example("0002-trouser.png");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("studio.png");
    let _ = std::fs::remove_file(&shot);

    let out = Command::new("node")
        .current_dir(&browser_dir)
        .arg("studio.mjs")
        .arg(srv.url("/"))
        .arg(&shot)
        .args([&boot, &photo, &trouser, &not_image])
        .env("CHROMIUM", &chromium)
        .output()
        .expect("running node (install Node.js 20 or later)");
    assert!(
        out.status.success(),
        "studio.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("screenshot: {}", shot.display());

    assert!(
        page["model"].as_str().unwrap().contains("fashion-mnist-resnet20"),
        "{page}"
    );
    assert_eq!(page["pageErrors"], serde_json::json!([]), "the page threw");
    assert_eq!(
        page["outside"],
        serde_json::json!([]),
        "the page fetched something from elsewhere"
    );
    let cards = page["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 4);
    let card = |name: &str| {
        cards
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no card for {name}: {page}"))
    };

    let want = cli_top1(&[&boot, &photo, &trouser]);
    assert_eq!([want[0].as_str(), want[2].as_str()], ["Ankle boot", "Trouser"]);
    for (name, label) in [
        ("0000-ankle-boot.png", &want[0]),
        ("chelsea.png", &want[1]),
        ("0002-trouser.png", &want[2]),
    ] {
        let c = card(name);
        assert_eq!(c["state"], "done", "{c}");
        assert_eq!(
            c["top1"].as_str(),
            Some(label.as_str()),
            "browser and CLI disagree on {name}"
        );
        let bars = c["bars"].as_array().unwrap();
        assert_eq!(bars.len(), 5);
        assert_eq!(bars[0]["label"].as_str(), Some(label.as_str()));
        assert!(bars[0]["percent"].as_str().unwrap().ends_with('%'));
        assert!(c["ms"].as_f64().unwrap() > 0.0, "the request was not timed: {c}");

        // "Explain" laid a heat map over the picture, and its hottest cell as drawn is the
        // JSON map's maximum.
        let cam = &c["cam"];
        assert!(cam.is_object(), "no heat map on {name}: {c}");
        assert_eq!(cam["visible"], true);
        let rows: Vec<Vec<f64>> = serde_json::from_value(cam["rows"].clone()).unwrap();
        assert_eq!(cam["size"], serde_json::json!([rows[0].len(), rows.len()]));
        assert!(
            cam["shown"][0].as_u64().unwrap() > 50,
            "the map is not shown at size: {cam}"
        );
        let max = rows.iter().flatten().cloned().fold(f64::MIN, f64::max);
        let (r, col) = (
            cam["drawnArgmax"][0].as_u64().unwrap() as usize,
            cam["drawnArgmax"][1].as_u64().unwrap() as usize,
        );
        assert!(
            (rows[r][col] - max).abs() < 1e-6,
            "{name}: the brightest drawn cell ({r}, {col}) holds {} but the map's maximum is {max}",
            rows[r][col]
        );
    }
    let bad = card("notes.png");
    assert_eq!(bad["state"], "error");
    assert!(bad["error"].as_str().unwrap().contains("not an image"), "{bad}");

    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    srv.stop().unwrap();
}
