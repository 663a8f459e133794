//! Hostile inputs (issue 14): crafted weight files and extreme-aspect images give one clear
//! error line or PIL's numbers, never an abort, and memory stays bounded. Every crafted file
//! is made here; the big ones at test time, never committed.

mod common;

use std::io::{Seek, Write};
use std::path::Path;
use std::process::{Command, Output};

use resnet::preprocess::{decode, Transform};
use resnet::weights::{Values, WeightsFile};
use resnet::Error;

// ---------------------------------------------------------------- crafting .pth files

fn bin_str(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

fn long(n: u64) -> Vec<u8> {
    let mut v = vec![0x8a, 8];
    v.extend(n.to_le_bytes());
    v
}

fn tuple(items: &[u64]) -> Vec<u8> {
    let mut v = vec![b'('];
    for &i in items {
        v.extend(long(i));
    }
    v.push(b't');
    v
}

/// One `_rebuild_tensor_v2` call, as torch.save writes it.
fn tensor(storage: &str, storage_len: u64, offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut v = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    v.push(b'(');
    v.extend(bin_str("storage"));
    v.extend(b"ctorch\nFloatStorage\n");
    v.extend(bin_str(storage));
    v.extend(bin_str("cpu"));
    v.extend(long(storage_len));
    v.extend(b"tQ");
    v.extend(long(offset));
    v.extend(tuple(shape));
    v.extend(tuple(stride));
    v.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    v
}

/// A state-dict pickle of `(key, tensor call)` entries.
fn state_dict_pickle(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut v = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    for (k, t) in entries {
        v.extend(bin_str(k));
        v.extend(t);
    }
    v.extend(b"u.");
    v
}

/// A torch.save-style zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn pth(pkl: &[u8], storages: &[(&str, &[u8])], deflate_pkl: bool) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let pkl_opts = if deflate_pkl {
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
    } else {
        stored
    };
    w.start_file("archive/data.pkl", pkl_opts).unwrap();
    w.write_all(pkl).unwrap();
    w.start_file("archive/byteorder", stored).unwrap();
    w.write_all(b"little").unwrap();
    for (k, data) in storages {
        w.start_file(format!("archive/data/{k}"), stored).unwrap();
        w.write_all(data).unwrap();
    }
    let mut c = w.finish().unwrap();
    c.rewind().unwrap();
    c.into_inner()
}

/// Sets the uncompressed size that the zip declares for `name`, in its local header and its
/// central-directory entry.
fn declare_size(zip: &mut [u8], name: &str, size: u32) {
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let (sig, name_at, size_at) = match &zip[i..i + 4] {
            b"PK\x03\x04" => (true, 30, 22),
            b"PK\x01\x02" => (true, 46, 24),
            _ => (false, 0, 0),
        };
        let len_at = if name_at == 30 { 26 } else { 28 };
        if sig {
            let n = u16::from_le_bytes([zip[i + len_at], zip[i + len_at + 1]]) as usize;
            if zip.get(i + name_at..i + name_at + n) == Some(name.as_bytes()) {
                zip[i + size_at..i + size_at + 4].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "the local header and the central entry");
}

/// The hostile weight files of issue 14's table, as `(name, bytes)`.
fn hostile_weight_files() -> Vec<(&'static str, Vec<u8>)> {
    // fc.weight = torch.zeros(1).as_strided((10**12,), (0,)).
    let stride0 = pth(
        &state_dict_pickle(&[("fc.weight", tensor("0", 1, 0, &[1_000_000_000_000], &[0]))]),
        &[("0", &[0u8; 4])],
        false,
    );
    // EMPTY_LIST then 60 × (DUP, APPEND).
    let mut dup = b"\x80\x02]".to_vec();
    for _ in 0..60 {
        dup.extend(b"2a");
    }
    dup.push(b'.');
    let dup = pth(&dup, &[], false);
    // 2,000,000 nested TUPLE1s.
    let mut nest = b"\x80\x02N".to_vec();
    nest.extend(std::iter::repeat_n(0x85u8, 2_000_000));
    nest.push(b'.');
    let nest = pth(&nest, &[], true);
    // A deflated data.pkl that declares 4 GB uncompressed.
    let mut huge = pth(
        &state_dict_pickle(&[("fc.bias", tensor("0", 1, 0, &[1], &[1]))]),
        &[("0", &[0u8; 4])],
        true,
    );
    declare_size(&mut huge, "archive/data.pkl", 0xF000_0000);
    vec![
        ("stride0.pth", stride0),
        ("dup_append.pth", dup),
        ("tuple1_nest.pth", nest),
        ("declared_4gb.pth", huge),
    ]
}

// ---------------------------------------------------------------- running the CLI

/// The CLI under `ulimit -v 4000000` (4 GB of address space), as the issue asks.
fn cli_limited(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4000000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("running the CLI")
}

/// Peak RSS of the largest child this process has waited for, in MB.
fn children_peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u.ru_maxrss as f64 / 1024.0
    }
}

fn assert_one_line_error(out: &Output, file: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{file}: want exit 1, stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{file}: want one line, got: {err}");
    assert!(lines[0].contains(file), "{file}: the line must name the file: {err}");
    assert!(lines[0].contains(what), "{file}: want `{what}` in: {err}");
}

#[test]
fn hostile_weight_files_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("chelsea.png");
    let expect = [
        ("stride0.pth", "overlapping strides"),
        ("dup_append.pth", "not a dict of tensors"),
        ("tuple1_nest.pth", "nested deeper than 64"),
        ("declared_4gb.pth", "would inflate to"),
    ];
    for ((name, bytes), (want_name, what)) in hostile_weight_files().into_iter().zip(expect) {
        assert_eq!(name, want_name);
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        // The library: an Err naming the problem, no panic.
        let err = resnet::weights::read_state_dict(&p).unwrap_err();
        assert!(matches!(err, Error::BadWeights { .. }), "{name}: {err}");
        assert!(err.to_string().contains(what), "{name}: {err}");
        // The CLI, under a 4 GB address-space limit.
        let out = cli_limited(&[
            "classify",
            "--model",
            "resnet50",
            "--weights",
            p.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        assert_one_line_error(&out, name, what);
    }
}

#[test]
fn views_are_checked_against_their_storage_with_checked_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.pth");
    let read = |entries: &[(&str, Vec<u8>)], storage: &[u8]| {
        std::fs::write(&p, pth(&state_dict_pickle(entries), &[("0", storage)], false)).unwrap();
        resnet::weights::read_state_dict(&p)
    };
    let four = [0u8; 16];
    // Past the end of its storage.
    let e = read(&[("a", tensor("0", 4, 2, &[3], &[1]))], &four).unwrap_err();
    assert!(e.to_string().contains("its storage holds 16"), "{e}");
    // Offsets and strides that overflow usize.
    let e = read(&[("a", tensor("0", 4, u64::MAX / 2, &[3], &[u64::MAX / 2]))], &four).unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
    let e = read(&[("a", tensor("0", 4, 0, &[1 << 40, 1 << 40], &[0, 0]))], &four).unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
    // A legal transposed view is read, element by element.
    let mut s = Vec::new();
    for v in [1f32, 2., 3., 4.] {
        s.extend(v.to_le_bytes());
    }
    let sd = read(&[("t", tensor("0", 4, 0, &[2, 2], &[1, 2]))], &s).unwrap();
    assert_eq!(sd["t"].values, Values::F32(vec![1., 3., 2., 4.]));
    // A storage the zip does not hold.
    std::fs::write(
        &p,
        pth(&state_dict_pickle(&[("a", tensor("9", 1, 0, &[1], &[1]))]), &[], false),
    )
    .unwrap();
    let e = resnet::weights::read_state_dict(&p).unwrap_err();
    assert!(e.to_string().contains("missing archive entry"), "{e}");
}

#[test]
fn a_zip64_directory_claiming_ten_million_entries_is_refused() {
    // A zip64 end record: 10^7 entries at offset 10^9, in a 180-byte file.
    let mut z = b"PK\x03\x04".to_vec();
    z.extend([0u8; 60]);
    let at = z.len() as u64;
    let n = 10_000_000u64;
    z.extend(0x0606_4b50u32.to_le_bytes());
    z.extend(44u64.to_le_bytes());
    z.extend([45, 0, 45, 0]);
    z.extend([0u8; 8]);
    for v in [n, n, 46 * n, 1_000_000_000] {
        z.extend(v.to_le_bytes());
    }
    z.extend(0x0706_4b50u32.to_le_bytes());
    z.extend(0u32.to_le_bytes());
    z.extend(at.to_le_bytes());
    z.extend(1u32.to_le_bytes());
    z.extend(0x0605_4b50u32.to_le_bytes());
    z.extend([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    z.extend([0xff; 8]);
    z.extend([0, 0]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zip64.pth");
    std::fs::write(&p, z).unwrap();
    let e = resnet::weights::read_state_dict(&p).unwrap_err();
    assert!(e.to_string().contains("corrupt zip archive"), "{e}");
}

#[test]
fn a_state_dict_read_for_a_model_reads_only_what_fits_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("extra.pth");
    let mut s = Vec::new();
    for i in 0..64 {
        s.extend((i as f32).to_le_bytes());
    }
    let entries = [
        ("fc.bias", tensor("0", 64, 0, &[10], &[1])),
        ("head.extra", tensor("0", 64, 0, &[8, 8], &[8, 1])),
        ("fc.weight", tensor("0", 64, 0, &[4, 16], &[16, 1])),
    ];
    std::fs::write(&p, pth(&state_dict_pickle(&entries), &[("0", &s)], false)).unwrap();
    let f = WeightsFile::open(&p).unwrap();
    let sd = f
        .read_for(&[("fc.bias".into(), vec![10]), ("fc.weight".into(), vec![10, 64])])
        .unwrap();
    assert_eq!(sd["fc.bias"].values, Values::F32((0..10).map(|i| i as f32).collect()));
    // Unexpected and mis-shaped keys keep their declared shape for the report, and no values.
    assert_eq!(sd["head.extra"].values, Values::Skipped);
    assert_eq!(sd["head.extra"].shape, vec![8, 8]);
    assert_eq!(sd["fc.weight"].values, Values::Skipped);
    assert_eq!(sd["fc.weight"].shape, vec![4, 16]);
}

#[test]
fn crafted_safetensors_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let file = |header: &str, data: &[u8]| {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend(header.as_bytes());
        v.extend(data);
        std::fs::write(&p, v).unwrap();
        resnet::weights::read_state_dict(&p)
    };
    let ok = file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 8]).unwrap();
    assert_eq!(ok["a"].values, Values::F32(vec![0.0, 0.0]));
    for (header, data) in [
        // Offsets past the data.
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
            &[0u8; 8][..],
        ),
        // A byte length that does not match dtype × shape.
        (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
        // An element count that overflows.
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
    ] {
        let e = file(header, data).unwrap_err();
        assert!(matches!(e, Error::BadWeights { .. }), "{header}: {e}");
    }
    // A header length far past the file.
    let mut v = (u64::MAX / 2).to_le_bytes().to_vec();
    v.extend(b"{}");
    std::fs::write(&p, v).unwrap();
    assert!(matches!(
        resnet::weights::read_state_dict(&p),
        Err(Error::BadWeights { .. })
    ));
}

// ---------------------------------------------------------------- extreme-aspect images

/// The strip formula of tools/torch_reference/make_strip_fixtures.py.
fn strip_pixel(i: usize) -> [u8; 3] {
    [
        ((i * 7) % 256) as u8,
        ((i * 13 + 50) % 256) as u8,
        ((i / 235) % 256) as u8,
    ]
}

/// A `w × h` strip (one of them 1) as PNG bytes.
fn strip_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(strip_pixel((x + y) as usize)));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn extreme_aspect_strips_give_pils_numbers() {
    let t = Transform::imagenet(256, 224);
    for (w, h, fixture) in [
        (1, 60000, "strip_1x60000_crop224.png"),
        (60000, 1, "strip_60000x1_crop224.png"),
    ] {
        let img = decode(&strip_png(w, h), "strip", resnet::preprocess::DEFAULT_MAX_PIXELS).unwrap();
        let ours = t.resize_and_crop(&img);
        let pil = image::open(common::fixture(fixture)).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), (224, 224));
        assert!(ours.as_raw() == pil.as_raw(), "{w}x{h}: differs from PIL's crop");
        // The same bound holds for a direct resize (--stretch) and the training augmentations.
        let s = Transform::stretch(224).resize_and_crop(&img);
        assert_eq!(s.dimensions(), (224, 224));
        let px = resnet::data::Pixels {
            width: w as usize,
            height: h as usize,
            channels: 3,
            data: img.into_raw(),
        };
        for aug in [
            resnet::preprocess::Augment::imagenet(224),
            resnet::preprocess::Augment::Cifar { size: 224, pad: 4 },
        ] {
            let out = aug.apply(&px, &mut resnet::data::rng::Rng::new(7));
            assert_eq!(
                (out.width, out.height, out.data.len()),
                (224, 224, 224 * 224 * 3),
                "{aug:?}"
            );
        }
    }
}

/// Writes a model's deterministic weights tensor by tensor. A child's peak RSS starts from
/// this process's at spawn (the kernel carries the high-water mark over exec), so the test
/// must never hold the whole model.
fn write_det_safetensors(path: &Path, name: resnet::ModelName) {
    let mut model = resnet::ResNet::new(&name.config(), &resnet::default_device()).unwrap();
    let shapes = model.state_dict_shapes();
    drop(model);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (k, s) in &shapes {
        let (dtype, size) = if k.ends_with("num_batches_tracked") {
            ("I64", 8)
        } else {
            ("F32", 4)
        };
        let n = s.iter().product::<usize>() * size;
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": dtype, "shape": s, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    for (k, s) in &shapes {
        let t = common::det_tensor(k, s);
        match t.values {
            Values::F32(v) => v.iter().for_each(|x| f.write_all(&x.to_le_bytes()).unwrap()),
            Values::I64(v) => v.iter().for_each(|x| f.write_all(&x.to_le_bytes()).unwrap()),
            Values::Skipped => unreachable!(),
        }
    }
    f.flush().unwrap();
}

#[test]
fn extreme_aspect_strips_classify_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let tall = dir.path().join("strip_1x60000.png");
    let wide = dir.path().join("strip_60000x1.png");
    std::fs::write(&tall, strip_png(1, 60000)).unwrap();
    std::fs::write(&wide, strip_png(60000, 1)).unwrap();
    let good = common::fixture("chelsea.png");
    let paths = [tall.to_str().unwrap(), wide.to_str().unwrap(), good.to_str().unwrap()];
    // resnet50 with deterministic weights from a file, as a user's download would be.
    let weights = dir.path().join("resnet50.safetensors");
    write_det_safetensors(&weights, resnet::ModelName::Resnet50);
    for extra in [&[][..], &["--stretch", "224"][..]] {
        let mut args = vec![
            "classify",
            "--model",
            "resnet50",
            "--weights",
            weights.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend(extra);
        args.extend(paths);
        let out = cli_limited(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 3, "{stdout}");
        for p in paths {
            assert!(
                stdout.contains(Path::new(p).file_name().unwrap().to_str().unwrap()),
                "{stdout}"
            );
        }
    }
    let peak = children_peak_rss_mb();
    assert!(peak < 300.0, "peak RSS {peak:.0} MB");
}
