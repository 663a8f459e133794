//! `resnet embed` and `resnet similar`: torchvision's embeddings end to end (decode, eval
//! transform, network) from `tests/fixtures/embed.safetensors`
//! (tools/torch_reference/make_embed_fixtures.py), every file format read back, bad inputs,
//! and near duplicates.

mod common;

use std::path::PathBuf;

use common::{det_weights_file, f32s, fixture, fixture_cases, rel_l2, resnet_command};
use resnet::weights;

#[test]
fn embeddings_and_a_stage_map_match_torchvision_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (want, cases) = fixture_cases("embed");
    assert!(cases.iter().any(|c| c["layer"] != "avgpool"), "a stage map is covered");
    for c in cases {
        let s = |k: &str| c[k].as_str().unwrap().to_string();
        let n = |k: &str| c[k].as_u64().unwrap().to_string();
        let w = det_weights_file(&s("model"), tmp.path());
        let out = tmp.path().join(format!("{}-{}.safetensors", s("model"), s("layer")));
        let run = resnet_command()
            .args(["embed", "--model", &s("model"), "--weights", w.to_str().unwrap()])
            .args(["--resize", &n("resize"), "--crop", &n("crop"), "--layer", &s("layer")])
            .args(["--out", out.to_str().unwrap(), fixture(&s("image")).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let got = weights::read_state_dict(&out).unwrap();
        let got = &got["embeddings"];
        let key = s("key");
        let mut shape = vec![1];
        shape.extend(
            c["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize),
        );
        assert_eq!(got.shape, shape, "{key}");
        let err = rel_l2(f32s(got), f32s(&want[&key]));
        assert!(err <= 1e-4, "{key}: relative L2 {err:e}");
        eprintln!("{key}: relative L2 {err:.2e}");
    }
}

#[test]
fn the_library_gives_the_same_embeddings_on_the_engine_and_on_burn() {
    use resnet::classify::Layer;
    let tmp = tempfile::tempdir().unwrap();
    let (want, _) = fixture_cases("embed");
    let (img, clfs) = common::det_resnet18_both_paths(tmp.path());
    for (clf, engine) in clfs.iter().zip([true, false]) {
        let v = clf.embed(&img).unwrap();
        let err = rel_l2(&v, f32s(&want["resnet18/chelsea.png/avgpool"]));
        assert!(err <= 1e-4, "engine {engine}: avgpool relative L2 {err:e}");
        let map = clf.embed_layer(std::slice::from_ref(&img), Layer::Stage(3)).unwrap();
        assert_eq!(map[0].shape, vec![256, 14, 14]);
        let err = rel_l2(&map[0].values, f32s(&want["resnet18/chelsea.png/layer3"]));
        assert!(err <= 1e-4, "engine {engine}: layer3 relative L2 {err:e}");
        assert!(clf.embed_layer(std::slice::from_ref(&img), Layer::Stage(5)).is_err());
    }
}

/// Embeddings of the fashion examples with the built-in model (no weights file needed).
fn embed(args: &[&str], inputs: &[PathBuf]) -> std::process::Output {
    resnet_command()
        .args(["embed", "--model", "fashion-mnist-resnet20"])
        .args(args)
        .args(inputs)
        .output()
        .unwrap()
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(common::fashion_example(""))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_format_reads_back_with_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = examples();
    let out = embed(&["--batch-size", "3"], &inputs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), inputs.len());
    // Exactly {"image": <path as given>, "embedding": [floats]}, in that order.
    let want_start = format!(
        "{{\"image\":{},\"embedding\":[",
        serde_json::to_string(&inputs[0]).unwrap()
    );
    assert!(
        lines[0].starts_with(&want_start),
        "{}",
        &lines[0][..80.min(lines[0].len())]
    );
    let jsonl: Vec<Vec<f32>> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 2);
            v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert_eq!(jsonl[0].len(), 64, "resnet20's pooled features");

    // npy: a float32 [N, 64] array and the paths beside it.
    let npy = tmp.path().join("e.npy");
    assert!(embed(&["--out", npy.to_str().unwrap()], &inputs).status.success());
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + hlen]);
    assert!(
        header.contains("'descr': '<f4'") && header.contains(&format!("'shape': ({}, 64)", inputs.len())),
        "{header}"
    );
    let data: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(data, jsonl.concat());
    let paths = std::fs::read_to_string(tmp.path().join("e.npy.paths.txt")).unwrap();
    assert_eq!(paths.lines().count(), inputs.len());

    // safetensors and Parquet read back as an index, in input order, with their paths.
    for name in ["e.safetensors", "e.parquet"] {
        let f = tmp.path().join(name);
        let out = embed(&["--out", f.to_str().unwrap()], &inputs);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let idx = resnet::classify::export::Index::read(&f).unwrap();
        assert_eq!(idx.dim, 64);
        assert_eq!(
            idx.paths,
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()
        );
        let mut want = jsonl[4].clone();
        resnet::classify::export::unit(&mut want);
        assert!(common::max_abs(idx.row(4), &want) < 1e-6, "{name}");
    }
    assert!(!tmp
        .path()
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".partial")));

    // --normalize gives unit vectors.
    let out = embed(&["--normalize"], &inputs[..2]);
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let n = common::norm_sq(&v["embedding"]);
        assert!((n - 1.0).abs() < 1e-5, "norm² {n}");
    }
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_has_the_documented_schema() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("e.parquet");
    assert!(embed(&["--out", f.to_str().unwrap()], &examples()).status.success());
    let reader = SerializedFileReader::new(std::fs::File::open(&f).unwrap()).unwrap();
    let meta = reader.metadata();
    assert_eq!(meta.file_metadata().num_rows(), 10);
    // The Arrow schema travels in the file's metadata, as pyarrow (pandas) and polars read it.
    let fm = meta.file_metadata();
    let arrow = parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata()).unwrap();
    assert_eq!(arrow.field(0).name(), "image");
    assert_eq!(arrow.field(0).data_type(), &arrow_schema::DataType::Utf8);
    assert_eq!(arrow.field(1).name(), "embedding");
    match arrow.field(1).data_type() {
        arrow_schema::DataType::FixedSizeList(item, 64) => {
            assert_eq!(item.data_type(), &arrow_schema::DataType::Float32)
        }
        other => panic!("embedding is {other:?}"),
    }
}

#[test]
fn stage_maps_go_to_files_and_bad_inputs_do_not_stop_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = examples();
    // A stage map never goes to JSON lines.
    let out = embed(&["--layer", "layer2"], &inputs[..1]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("npy, parquet or safetensors"));
    let x = tmp.path().join("x.npy");
    let out = embed(&["--layer", "layer9", "--out", x.to_str().unwrap()], &inputs[..1]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no layer9"));

    // A file format needs --out, and a folder that is not there is a clear error.
    let out = embed(&["--format", "npy"], &inputs[..1]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("npy embeddings need a file"));
    let nowhere = tmp.path().join("no/such/dir/e.npy");
    let out = embed(&["--out", nowhere.to_str().unwrap()], &inputs[..1]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot write"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let missing = tmp.path().join("missing.png");
    let mut with_bad = vec![inputs[0].clone(), bad.clone(), missing, inputs[1].clone()];
    let npy = tmp.path().join("maps.npy");
    let out = embed(&["--layer", "layer2", "--out", npy.to_str().unwrap()], &with_bad);
    assert!(!out.status.success(), "a failed input makes the exit code non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.png") && err.contains("missing.png") && err.contains("2 of 4 inputs failed"),
        "{err}"
    );
    let bytes = std::fs::read(&npy).unwrap();
    // resnet20's layer2 at 28²: 32 channels at 14 × 14, for the two good images.
    assert!(String::from_utf8_lossy(&bytes[..128]).contains("'shape': (2, 32, 14, 14)"));
    assert_eq!(bytes.len(), 128 + 2 * 32 * 14 * 14 * 4);
    assert!(!x.exists() && !tmp.path().join(".x.npy.partial").exists());
    with_bad.clear();
}

#[test]
fn similar_finds_a_re_encoded_copy_and_lists_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = examples();
    // A JPEG re-encoding of one example: the same picture, other bytes.
    let copy = tmp.path().join("boot-copy.jpg");
    image::open(&inputs[0]).unwrap().to_luma8().save(&copy).unwrap();
    inputs.push(copy.clone());
    let index = tmp.path().join("index.parquet");
    assert!(embed(&["--out", index.to_str().unwrap()], &inputs).status.success());

    let similar = |args: &[&str]| {
        resnet_command()
            .args([
                "similar",
                "--index",
                index.to_str().unwrap(),
                "--model",
                "fashion-mnist-resnet20",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    // A query in the index: its own row, itself left out; the copy comes first.
    let q = inputs[0].to_str().unwrap();
    let out = similar(&["--format", "json", "--top-k", "3", q]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["neighbours"].as_array().unwrap();
    assert_eq!(n.len(), 3);
    assert_eq!(n[0]["image"], copy.display().to_string());
    assert!(n[0]["similarity"].as_f64().unwrap() > 0.95, "{v}");
    assert!(n[1]["similarity"].as_f64().unwrap() <= n[0]["similarity"].as_f64().unwrap());

    // A query from outside the index is embedded with the model.
    let outside = tmp.path().join("outside.png");
    std::fs::copy(&inputs[0], &outside).unwrap();
    let out = similar(&["--top-k", "1", outside.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("1. 1.0000  {q}")), "{text}");

    // --threshold keeps only the neighbours that close: here just the copy.
    let out = similar(&["--format", "json", "--top-k", "5", "--threshold", "0.95", q]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["neighbours"].as_array().unwrap().len(), 1, "{v}");

    // --duplicates: the copy pairs with its original, and nothing else is that close.
    let out = similar(&["--duplicates", "--threshold", "0.95", "--format", "json"]);
    let pairs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(pairs[0]["a"], q);
    assert_eq!(pairs[0]["b"], copy.display().to_string());
}
