//! Datasets and the loader: IDX, CIFAR and folder layouts, the split, bad files.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use common::fixture;
use resnet::data::{self, epoch_order, image_folder, read_cifar, read_idx, split_stratified, Loader, Prepare};
use resnet::preprocess::{to_chw, Augment};
use resnet::Error;

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..5 * 4 * 3).map(|i| i as u8).collect();
    std::fs::write(dir.path().join("img"), idx_bytes(&[5, 4, 3], &pixels)).unwrap();
    std::fs::write(dir.path().join("lab.gz"), gz(&idx_bytes(&[5], &[0, 1, 2, 1, 0]))).unwrap();
    let ds = read_idx(&dir.path().join("img"), &dir.path().join("lab.gz"), vec![]).unwrap();
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.classes, ["0", "1", "2"]);
    let px = ds.pixels(2).unwrap();
    assert_eq!((px.width, px.height, px.channels), (3, 4, 1));
    assert_eq!(px.data, pixels[24..36]);

    // Truncated data and mismatched counts are errors.
    std::fs::write(dir.path().join("short"), &idx_bytes(&[5, 4, 3], &pixels)[..40]).unwrap();
    assert!(matches!(
        read_idx(&dir.path().join("short"), &dir.path().join("lab.gz"), vec![]),
        Err(Error::Dataset(_))
    ));
    std::fs::write(dir.path().join("lab4"), idx_bytes(&[4], &[0, 1, 2, 1])).unwrap();
    let err = read_idx(&dir.path().join("img"), &dir.path().join("lab4"), vec![]).unwrap_err();
    assert!(err.to_string().contains("5 images but"), "{err}");
}

#[test]
fn fashion_mnist_test_set_from_debian() {
    let Some(root) = common::fashion_mnist("fashion_mnist_test_set_from_debian") else {
        return;
    };
    let classes = resnet::weights::FASHION_MNIST_LABELS;
    let ds = read_idx(
        &root.join("t10k-images-idx3-ubyte.gz"),
        &root.join("t10k-labels-idx1-ubyte.gz"),
        classes.iter().map(|s| s.to_string()).collect(),
    )
    .unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.class_counts(), vec![1000; 10]);
    let px = ds.pixels(0).unwrap();
    assert_eq!((px.width, px.height, px.channels), (28, 28, 1));
    assert_eq!(ds.classes[ds.labels[0]], "Ankle boot");
}

#[test]
fn cifar10_binary_batches() {
    let dir = tempfile::tempdir().unwrap();
    let record = |label: u8, v: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(v, 1024)); // R plane
        r.extend(std::iter::repeat_n(v / 2, 1024)); // G plane
        r.extend(std::iter::repeat_n(0, 1024)); // B plane
        r
    };
    std::fs::write(
        dir.path().join("test_batch.bin"),
        [record(3, 200), record(7, 100)].concat(),
    )
    .unwrap();
    let ds = read_cifar(dir.path(), false).unwrap();
    assert_eq!(ds.labels, [3, 7]);
    assert_eq!(ds.classes[3], "cat");
    assert_eq!(&ds.pixels(1).unwrap().data[..3], &[100, 50, 0]);
    std::fs::write(dir.path().join("test_batch.bin"), &record(3, 1)[..100]).unwrap();
    assert!(matches!(read_cifar(dir.path(), false), Err(Error::Dataset(_))));
}

fn make_folder(root: &Path, per_class: &[(&str, usize)]) {
    for (class, n) in per_class {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..*n {
            std::fs::copy(fixture("small.bmp"), d.join(format!("{i}.bmp"))).unwrap();
        }
    }
}

#[test]
fn image_folder_classes_split_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), &[("cat", 10), ("ant", 5), ("dog", 4)]);
    std::fs::write(dir.path().join("dog/readme.txt"), "not an image").unwrap();
    let ds = image_folder(dir.path(), None).unwrap();
    assert_eq!(ds.classes, ["ant", "cat", "dog"]);
    assert_eq!(ds.class_counts(), [5, 10, 4]);
    ds.check_nonempty("train").unwrap();

    let (train, val) = split_stratified(&ds, 0.2, 42);
    assert_eq!((train.len(), val.len()), (15, 4));
    assert_eq!(ds.subset(&val).class_counts(), [1, 2, 1]);
    assert_eq!(split_stratified(&ds, 0.2, 42), (train.clone(), val.clone()));
    assert_ne!(split_stratified(&ds, 0.2, 7).1, val);

    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let err = image_folder(dir.path(), None)
        .unwrap()
        .check_nonempty("train")
        .unwrap_err();
    assert!(err.to_string().contains("class `empty` has no samples"), "{err}");
    let classes: Vec<String> = ["ant", "cat"].iter().map(|s| s.to_string()).collect();
    assert!(image_folder(dir.path(), Some(&classes)).is_err());
    assert!(image_folder(&dir.path().join("nope"), None).is_err());
}

#[test]
fn loader_is_deterministic_and_skips_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), &[("a", 6), ("b", 5)]);
    std::fs::write(dir.path().join("b/broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let ds = Arc::new(image_folder(dir.path(), None).unwrap());
    assert_eq!(ds.len(), 12);
    let aug = Augment::Cifar { size: 32, pad: 4 };
    let prepare: Prepare = Arc::new(move |px, rng| to_chw(&aug.apply(px, rng), 3, &[0.5; 3], &[0.25; 3]));
    let run = |workers| {
        let order = epoch_order(ds.len(), 9, 3, true);
        Loader::new(ds.clone(), order, 5, prepare.clone(), 9, 3, workers).collect::<Vec<data::Batch>>()
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one.len(), 3);
    let skipped: usize = one.iter().map(|b| b.skipped.len()).sum();
    assert_eq!(skipped, 1);
    assert!(one.iter().flat_map(|b| &b.skipped).any(|s| s.contains("broken.png")));
    assert_eq!(one.iter().map(|b| b.labels.len()).sum::<usize>(), 11);
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.images, b.images);
        assert_eq!(a.sample_len, 3 * 32 * 32);
    }
    // Another epoch shuffles differently.
    assert_ne!(epoch_order(12, 9, 3, true), epoch_order(12, 9, 4, true));
}
