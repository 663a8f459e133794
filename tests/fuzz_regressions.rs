//! Replays the fuzz seeds and every input a fuzzer ever crashed on (`fuzz/regressions/`)
//! through the functions the fuzz targets call, on stable: none may panic, and each must be
//! answered (Ok or a clear error) in bounded time.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use resnet::preprocess::{decode, decode_cost, Transform};
use resnet::weights::WeightsFile;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) {
            out.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out.sort();
    out
}

fn each(target: &str, min: usize, f: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= min,
        "{target}: {} inputs, want at least {min}",
        files.len()
    );
    for p in files {
        let data = std::fs::read(&p).unwrap();
        f(&data);
    }
}

fn resnet20_shapes() -> Vec<(String, Vec<usize>)> {
    let mut m = resnet::ResNet::new(&resnet::ModelName::Resnet20.config(), &resnet::default_device()).unwrap();
    m.state_dict_shapes()
}

#[test]
fn pickle_inputs() {
    each("pickle", 3, |d| {
        resnet::weights::fuzz_pickle(d);
    });
}

#[test]
fn weight_file_inputs() {
    let shapes = resnet20_shapes();
    for (target, min) in [("pth", 3), ("safetensors", 2)] {
        each(target, min, |d| {
            if let Ok(f) = WeightsFile::parse(Path::new("fuzz"), Cow::Borrowed(d)) {
                let _ = f.read_for(&shapes);
                let _ = f.read_all();
            }
        });
    }
}

#[test]
fn image_inputs() {
    each("image", 5, |d| {
        let _ = decode_cost(d, "fuzz");
        if let Ok(img) = decode(d, "fuzz", 1 << 22) {
            assert_eq!(Transform::imagenet(256, 224).apply(&img).len(), 3 * 224 * 224);
            assert_eq!(Transform::stretch(32).apply(&img).len(), 3 * 32 * 32);
        }
    });
}

#[cfg(feature = "serve")]
#[test]
fn request_inputs() {
    each("request", 2, |d| {
        let split = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
        let ct = String::from_utf8_lossy(&d[..split]);
        let status = resnet::serve::fuzz_request(&ct, d.get(split + 1..).unwrap_or(&[]));
        assert!(matches!(status, 200 | 400 | 413 | 415 | 422), "status {status}");
    });
}

#[test]
fn a_webp_that_makes_image_webp_panic_is_a_clear_error() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/image/webp-huffman-index-panic");
    let err = decode(&std::fs::read(p).unwrap(), "crafted.webp", 1 << 22).unwrap_err();
    assert!(err.to_string().contains("crafted.webp"), "{err}");
    assert!(err.to_string().contains("decoder failed"), "{err}");
}
