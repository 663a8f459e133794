//! A local copy of a torchvision release gets that release's transform: recognised by its name
//! and sha256, kept through `resnet convert`, reported by `classify --format json` (and
//! `/v1/models`, in tests/serve.rs). No 100 MB file: the state dicts are built here, and the
//! positive match runs against a test-only release table.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{det_state_dict, fixture};
use resnet::preprocess::Resize;
use resnet::weights::{self, hub, Release, TransformSource, WeightTag};
use resnet::{ModelName, ResNet, Weights};

/// A deterministic resnet18 state dict written as `dir/name` (safetensors bytes; the reader
/// goes by content, not extension).
fn resnet18_file(dir: &Path, name: &str, metadata: Option<(&str, &str)>) -> PathBuf {
    let mut model = ResNet::new(&ModelName::Resnet18.config(), &resnet::default_device()).unwrap();
    let sd = det_state_dict(&mut model);
    let path = dir.join(name);
    let metadata = metadata.map(|(m, t)| {
        [
            (weights::META_MODEL.to_string(), m.to_string()),
            (weights::META_TAG.to_string(), t.to_string()),
        ]
        .into()
    });
    weights::write_safetensors_with(&path, &sd, metadata).unwrap();
    path
}

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().unwrap()
}

fn shorter_side(t: &Option<resnet::preprocess::Transform>) -> Option<(usize, usize)> {
    match t.as_ref()?.resize {
        Resize::ShorterSide { resize, crop } => Some((resize, crop)),
        Resize::Stretch { .. } => None,
    }
}

#[test]
fn a_file_with_a_releases_name_and_hash_gets_its_transform() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = resnet18_file(dir.path(), "tmp.pth", None);
    let sha = hub::sha256_file(&tmp).unwrap();
    let name = format!("resnet18-{}.pth", &sha[..8]);
    let path = dir.path().join(&name);
    std::fs::rename(&tmp, &path).unwrap();
    // A test-only table: the same shape as torchvision's, with this file as a V2 release.
    let table = [Release {
        model: ModelName::Resnet18,
        tag: WeightTag::ImageNet1kV2,
        url: Box::leak(format!("https://example.invalid/{name}").into_boxed_str()),
        resize: 232,
    }];
    let meta = weights::weights_meta_in(ModelName::Resnet18, &Weights::File(path.clone()), &table).unwrap();
    assert_eq!(shorter_side(&meta.transform), Some((232, 224)));
    assert_eq!(
        meta.source,
        TransformSource::Release {
            tag: "IMAGENET1K_V2".into(),
            file: name.clone()
        }
    );
    let note = meta.note.unwrap();
    assert!(
        note.contains("recognised IMAGENET1K_V2") && note.contains("resize 232, crop 224"),
        "{note}"
    );

    // The same name on other content: the default, and the note says why.
    let other = tempfile::tempdir().unwrap();
    let impostor = other.path().join(&name);
    std::fs::copy(fixture("resnet20_cifar.safetensors"), &impostor).unwrap();
    let meta = weights::weights_meta_in(ModelName::Resnet18, &Weights::File(impostor), &table).unwrap();
    assert_eq!((meta.transform, &meta.source), (None, &TransformSource::Default));
    let note = meta.note.unwrap();
    assert!(
        note.contains("named like torchvision's IMAGENET1K_V2 release, but its sha256 starts"),
        "{note}"
    );
    assert!(note.contains("default transform (resize 256, crop 224)"), "{note}");

    // The right content under another name, or for another model: nothing recognised.
    let renamed = dir.path().join("mine.pth");
    std::fs::copy(&path, &renamed).unwrap();
    for (model, file) in [(ModelName::Resnet18, renamed), (ModelName::Resnet34, path)] {
        let meta = weights::weights_meta_in(model, &Weights::File(file), &table).unwrap();
        assert_eq!(
            (meta.transform, meta.source, meta.note),
            (None, TransformSource::Default, None)
        );
    }
}

#[test]
fn classify_names_a_near_miss_and_reports_the_transform_in_use() {
    let dir = tempfile::tempdir().unwrap();
    // torchvision's real resnet18 file name, on a state dict that is not that file.
    let path = resnet18_file(dir.path(), "resnet18-f37072fd.pth", None);
    let (w, img) = (path.display().to_string(), fixture("chelsea.png").display().to_string());
    let classify = |extra: &[&str]| {
        let mut args = vec!["classify", "--model", "resnet18", "--weights", &w, "--format", "json"];
        args.extend_from_slice(extra);
        args.push(&img);
        resnet(&args)
    };
    let out = classify(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("note: resnet18-f37072fd.pth is named like torchvision's IMAGENET1K_V1 release, but its sha256"),
        "{stderr}"
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["transform"]["source"]["kind"], "default");
    assert_eq!(line["transform"]["resize"]["shorter_side"]["resize"], 256);
    // Flags win, and say so.
    let out = classify(&["--resize", "232", "--crop", "224"]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["transform"]["source"]["kind"], "flags");
    assert_eq!(line["transform"]["resize"]["shorter_side"]["resize"], 232);
}

#[test]
fn a_converted_release_keeps_its_tag_and_transform() {
    let dir = tempfile::tempdir().unwrap();
    // As `resnet convert` writes it from a recognised release: the tag in the metadata.
    let input = resnet18_file(dir.path(), "r18.safetensors", Some(("resnet18", "IMAGENET1K_V1")));
    let meta = weights::weights_meta(ModelName::Resnet18, &Weights::File(input.clone())).unwrap();
    assert_eq!(shorter_side(&meta.transform), Some((256, 224)));
    assert_eq!(
        meta.source,
        TransformSource::Converted {
            tag: "IMAGENET1K_V1".into(),
            file: "r18.safetensors".into()
        }
    );
    // Converting it again keeps the tag.
    let output = dir.path().join("again.safetensors");
    let out = resnet(&[
        "convert",
        "--model",
        "resnet18",
        &input.display().to_string(),
        &output.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta = weights::weights_meta(ModelName::Resnet18, &Weights::File(output)).unwrap();
    assert!(matches!(meta.source, TransformSource::Converted { ref tag, .. } if tag == "IMAGENET1K_V1"));
    // A V2 tag brings V2's 232: the metadata is read from the header alone, whatever the model.
    let v2 = resnet18_file(dir.path(), "r50.safetensors", Some(("resnet50", "IMAGENET1K_V2")));
    let meta = weights::weights_meta(ModelName::Resnet50, &Weights::File(v2.clone())).unwrap();
    assert_eq!(shorter_side(&meta.transform), Some((232, 224)));
    // Metadata naming another model is ignored.
    let meta = weights::weights_meta(ModelName::Resnet18, &Weights::File(v2)).unwrap();
    assert_eq!(meta.source, TransformSource::Default);
}

/// The metadata reader trusts no size it is told: a header claiming a terabyte, or a
/// truncated one, is simply no metadata (the file's own errors come when it is loaded).
#[test]
fn a_crafted_safetensors_header_is_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(br#"{"__metadata__":{"torchvision_model":"resnet50","torchvision_tag":"IMAGENET1K_V2"}}"#);
    std::fs::write(&huge, &bytes).unwrap();
    let short = dir.path().join("short.safetensors");
    let mut bytes = 4096u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(br#"{"__metadata__":{"torchvision_model":"resnet50""#);
    std::fs::write(&short, &bytes).unwrap();
    for path in [huge, short] {
        let meta = weights::weights_meta(ModelName::Resnet50, &Weights::File(path.clone())).unwrap();
        assert_eq!(
            (meta.transform, meta.source),
            (None, TransformSource::Default),
            "{}",
            path.display()
        );
    }
}
