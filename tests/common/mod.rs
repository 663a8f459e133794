//! Shared test helpers: the fixture files and the deterministic weights of
//! `tools/torch_reference/make_fixtures.py`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use resnet::weights::{StateDict, TorchTensor, Values};
use resnet::ResNet;

#[cfg(feature = "serve")]
pub mod serve;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A Fashion-MNIST test image from `examples/fashion/`.
pub fn fashion_example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/fashion")
        .join(name)
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u32 = 0x811C9DC5;
    for b in s.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    h as u64
}

/// Mirrors `det_tensor` in make_fixtures.py exactly (same integers, same f64 math, one rounding to f32).
pub fn det_tensor(key: &str, shape: &[usize]) -> TorchTensor {
    let n: usize = shape.iter().product();
    let h = fnv1a(key);
    if key.ends_with("num_batches_tracked") {
        return TorchTensor {
            shape: vec![],
            values: Values::I64(vec![(h % 1000) as i64]),
        };
    }
    let values = (0..n as u64)
        .map(|i| {
            let mut x = ((i ^ h).wrapping_mul(0x9E3779B1)) & 0xFFFF_FFFF;
            x ^= x >> 15;
            let v = (x % 11) as f64 - 5.0;
            let y = if key.ends_with("running_var") {
                1.0 + (v + 5.0) * 0.05
            } else if key.ends_with("running_mean") {
                v * 0.02
            } else if shape.len() == 1 && key.ends_with("weight") {
                1.0 + v * 0.02
            } else if key.ends_with("bias") {
                v * 0.01
            } else {
                let fan_in = n / shape[0];
                v * (0.2 / fan_in as f64).sqrt()
            };
            y as f32
        })
        .collect();
    TorchTensor {
        shape: shape.to_vec(),
        values: Values::F32(values),
    }
}

/// The deterministic state dict for a model, with torchvision keys.
pub fn det_state_dict(model: &mut ResNet) -> StateDict {
    model
        .state_dict_shapes()
        .into_iter()
        .map(|(k, s)| {
            let t = det_tensor(&k, &s);
            (k, t)
        })
        .collect()
}

/// `model` with [`det_state_dict`]'s weights, written to `dir` as safetensors (for the CLI).
pub fn det_weights_file(model: &str, dir: &std::path::Path) -> PathBuf {
    let name: resnet::ModelName = model.parse().unwrap();
    let mut m = ResNet::new(&name.config(), &resnet::default_device()).unwrap();
    let path = dir.join(format!("{model}-det.safetensors"));
    resnet::weights::write_safetensors(&path, &det_state_dict(&mut m)).unwrap();
    path
}

/// `chelsea.png` and two resnet18 classifiers with [`det_weights_file`]'s weights and the
/// 256/224 transform: on the fast engine, and on burn.
pub fn det_resnet18_both_paths(dir: &std::path::Path) -> (image::RgbImage, Vec<resnet::Classifier>) {
    let w = det_weights_file("resnet18", dir);
    let img = resnet::preprocess::open_image(&fixture("chelsea.png"), 1 << 30).unwrap();
    let clfs = [true, false]
        .into_iter()
        .map(|engine| {
            let opts = resnet::classify::ClassifierOptions {
                resize: Some(resnet::preprocess::Resize::ShorterSide { resize: 256, crop: 224 }),
                engine,
                ..Default::default()
            };
            let clf =
                resnet::Classifier::build(resnet::ModelName::Resnet18, resnet::Weights::File(w.clone()), opts).unwrap();
            assert_eq!(clf.engine().is_some(), engine);
            clf
        })
        .collect();
    (img, clfs)
}

/// A fixture safetensors file and its JSON manifest's `cases`.
pub fn fixture_cases(name: &str) -> (StateDict, Vec<serde_json::Value>) {
    let t = resnet::weights::read_state_dict(&fixture(&format!("{name}.safetensors"))).expect("fixture");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap()).unwrap();
    (t, m["cases"].as_array().unwrap().clone())
}

/// ‖v‖² of a JSON array of numbers (an embedding).
pub fn norm_sq(v: &serde_json::Value) -> f64 {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum()
}

/// A tensor's f32 values.
pub fn f32s(t: &TorchTensor) -> &[f32] {
    match &t.values {
        Values::F32(v) => v,
        other => panic!("expected f32, got {other:?}"),
    }
}

/// `reference.safetensors` as name → (shape, values).
pub fn reference() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let sd = resnet::weights::read_state_dict(&fixture("reference.safetensors")).expect("reference fixture");
    sd.into_iter()
        .map(|(k, t)| match t.values {
            Values::F32(v) => (k, (t.shape, v)),
            other => panic!("{k}: expected f32, got {other:?}"),
        })
        .collect()
}

pub fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap()
}

/// ‖a − b‖₂ / ‖b‖₂.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB88320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A PNG whose header claims 100000×100000 pixels (a decompression bomb's signature).
pub fn bomb_png() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // One zlib-compressed row of zeros: a real bomb would hold 100000 of them.
    let mut idat = b"IDAT".to_vec();
    idat.extend(ROW);
    png.extend(((idat.len() - 4) as u32).to_be_bytes());
    png.extend(&idat);
    png.extend(crc32(&idat).to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    png
}

/// zlib.compress(bytes(100001)): one filter byte and 100000 zero pixels.
const ROW: &[u8] = &[
    120, 156, 237, 193, 49, 1, 0, 0, 0, 194, 160, 245, 79, 109, 13, 15, 160, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 128, 91, 3, 134, 176, 0, 1,
];

/// The `resnet` binary as a command; under `RESNET_TEST_RUNNER` (e.g. `qemu-aarch64 -L
/// /usr/aarch64-linux-gnu`, which .ci/run sets for the cross-built aarch64 tests) through it.
pub fn resnet_command() -> std::process::Command {
    let exe = env!("CARGO_BIN_EXE_resnet");
    match std::env::var("RESNET_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut c = std::process::Command::new(words.next().unwrap_or_default());
            c.args(words).arg(exe);
            c
        }
        _ => std::process::Command::new(exe),
    }
}

/// Whether a missing system dependency fails a test (`RESNET_TEST_STRICT=1`, which
/// `scripts/test` and so CI set) or skips it after one loud line (a plain `cargo test`).
fn missing(test: &str, what: &str, install: &str) {
    let line = format!("SKIPPED {test}: needs {what}; install it with `{install}`, or run scripts/test");
    if std::env::var_os("RESNET_TEST_STRICT").is_some_and(|v| v != "0") {
        panic!("{line} (RESNET_TEST_STRICT is set, so this fails instead)");
    }
    // Straight to the terminal: the test harness captures eprintln! of passing tests.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n{line}");
}

/// Debian's Fashion-MNIST (`dataset-fashion-mnist`), or `None` once `test` has said it is
/// skipped (see [`missing`]).
pub fn fashion_mnist(test: &str) -> Option<&'static std::path::Path> {
    let root = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    if root.is_dir() {
        return Some(root);
    }
    missing(
        test,
        "Debian's Fashion-MNIST at /usr/share/datasets/fashion-mnist",
        "sudo apt-get install dataset-fashion-mnist",
    );
    None
}

/// Chromium (`$CHROMIUM`, else Debian's `/usr/bin/chromium`) and playwright-core from
/// `tests/browser`, or `None` once `test` has said it is skipped.
pub fn chromium(test: &str) -> Option<PathBuf> {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let browser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/playwright-core");
    if !chromium.exists() {
        missing(
            test,
            &format!("Chromium at {}", chromium.display()),
            "sudo apt-get install chromium",
        );
        return None;
    }
    if !browser.exists() {
        missing(
            test,
            "playwright-core in tests/browser",
            "npm ci --prefix tests/browser",
        );
        return None;
    }
    Some(chromium)
}

/// Whether the `ffmpeg` program (Debian's `ffmpeg`, which also brings ffprobe) is on PATH;
/// `false` once `test` has said it is skipped (see [`missing`]).
pub fn ffmpeg(test: &str) -> bool {
    let found = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        missing(test, "the ffmpeg program", "sudo apt-get install ffmpeg");
    }
    found
}
