//! Replays the fuzz seeds and every input a fuzzer ever crashed on (`fuzz/regressions/`)
//! through the functions the fuzz targets call, on stable: none may panic, and each must be
//! answered (Ok or a clear error) in bounded time.

use std::path::{Path, PathBuf};

use resnet::preprocess::decode;

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

#[test]
fn pickle_inputs() {
    each("pickle", 3, |d| {
        resnet::weights::fuzz_pickle(d);
    });
}

#[test]
fn weight_file_inputs() {
    each("pth", 3, resnet::weights::fuzz_weights);
    each("safetensors", 2, resnet::weights::fuzz_weights);
}

#[test]
fn image_inputs() {
    each("image", 5, |d| {
        if let Some(lens) = resnet::preprocess::fuzz_image(d) {
            assert_eq!(lens, (3 * 224 * 224, 3 * 32 * 32));
        }
    });
}

#[cfg(feature = "serve")]
#[test]
fn request_inputs() {
    each("request", 2, |d| {
        let status = resnet::serve::fuzz_request(d);
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

#[test]
fn onnx_inputs() {
    each("onnx", 2, |d| {
        // The seeds hold the structure without the weights: they match resnet20 as far as the
        // values, which are missing.
        let err = resnet::weights::onnx_import::parse_onnx(d, Path::new("seed.onnx"), None).err();
        assert!(err.is_some());
    });
}
