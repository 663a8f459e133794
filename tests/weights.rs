//! Weight files: real torch.save .pth, safetensors both ways, and every bad file.

mod common;

use burn::prelude::*;
use common::{det_state_dict, fixture, reference};
use resnet::weights::{self, Values};
use resnet::{Error, ModelName, ResNet};

fn resnet20() -> ResNet {
    ResNet::new(&ModelName::Resnet20.config(), &resnet::default_device()).unwrap()
}

fn logits(model: &ResNet) -> Vec<f32> {
    let (shape, x) = &reference()["pre/chelsea.png/stretch32"];
    let dev = resnet::default_device();
    let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, shape[0], shape[1], shape[2]]), &dev);
    model.forward(x).unwrap().into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn torch_save_pth_loads_and_matches_torch() {
    let mut m = resnet20();
    let report = weights::load_file(&mut m, &fixture("resnet20_cifar.pth"), true, "resnet20").unwrap();
    assert!(report.is_exact());
    // Same values as the formula the fixture script used.
    let sd = weights::read_state_dict(&fixture("resnet20_cifar.pth")).unwrap();
    let mut fresh = resnet20();
    assert_eq!(sd, det_state_dict(&mut fresh));
    let want = &reference()["logits/resnet20"].1;
    let got = logits(&m);
    assert!(common::rel_l2(&got, want) < 1e-6);
}

#[test]
fn pth_and_safetensors_give_identical_outputs() {
    let mut a = resnet20();
    weights::load_file(&mut a, &fixture("resnet20_cifar.pth"), true, "resnet20").unwrap();
    let mut b = resnet20();
    weights::load_file(&mut b, &fixture("resnet20_cifar.safetensors"), true, "resnet20").unwrap();
    assert_eq!(logits(&a), logits(&b));

    // Our own export reloads to the same outputs, and keeps torchvision's keys and dtypes.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r20.safetensors");
    weights::write_safetensors(&out, &weights::state_dict(&mut a).unwrap()).unwrap();
    let mut c = resnet20();
    weights::load_file(&mut c, &out, true, "resnet20").unwrap();
    assert_eq!(logits(&a), logits(&c));
    let exported = weights::read_state_dict(&out).unwrap();
    let python = weights::read_state_dict(&fixture("resnet20_cifar.safetensors")).unwrap();
    assert_eq!(exported.keys().collect::<Vec<_>>(), python.keys().collect::<Vec<_>>());
    assert!(matches!(exported["bn1.num_batches_tracked"].values, Values::I64(_)));
    assert_eq!(exported["fc.weight"], python["fc.weight"]);
}

#[test]
fn malicious_pickle_is_refused_without_running_it() {
    let _ = std::fs::remove_file("/tmp/resnet_pwned");
    let err = weights::read_state_dict(&fixture("evil.pth")).unwrap_err();
    match &err {
        Error::UnsafePickle { global, .. } => assert_eq!(global, "posix.system"),
        e => panic!("expected UnsafePickle, got {e}"),
    }
    assert!(err.to_string().contains("posix.system"));
    assert!(!std::path::Path::new("/tmp/resnet_pwned").exists());
}

#[test]
fn truncated_pth_is_a_clear_error() {
    let bytes = std::fs::read(fixture("resnet20_cifar.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 100, 30] {
        let p = dir.path().join("cut.pth");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = weights::read_state_dict(&p).unwrap_err();
        assert!(matches!(err, Error::BadWeights { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().contains("cut.pth"), "{err}");
    }
}

#[test]
fn garbage_and_truncated_safetensors_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"this is not a weights file at all").unwrap();
    assert!(matches!(weights::read_state_dict(&p), Err(Error::BadWeights { .. })));
    let bytes = std::fs::read(fixture("resnet20_cifar.safetensors")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(weights::read_state_dict(&p), Err(Error::BadWeights { .. })));
    let missing = dir.path().join("nope.pth");
    assert!(matches!(weights::read_state_dict(&missing), Err(Error::Io { .. })));
}

#[test]
fn wrong_model_lists_missing_unexpected_and_mismatched_keys() {
    // resnet32 has more blocks than the resnet20 file.
    let mut m = ResNet::new(&ModelName::Resnet32.config(), &resnet::default_device()).unwrap();
    let err = weights::load_file(&mut m, &fixture("resnet20_cifar.pth"), true, "resnet32").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("missing keys: layer1.3.conv1.weight"), "{msg}");
    assert!(msg.contains("--non-strict"), "{msg}");

    // A 100-class head: fc is mis-shaped; --non-strict loads the rest.
    let config = ModelName::Resnet20.config().with_num_classes(100);
    let mut m = ResNet::new(&config, &resnet::default_device()).unwrap();
    let err = weights::load_file(&mut m, &fixture("resnet20_cifar.pth"), true, "resnet20").unwrap_err();
    assert!(
        err.to_string()
            .contains("shape mismatch for fc.weight: model [100, 64], file [10, 64]"),
        "{err}"
    );
    let report = weights::load_file(&mut m, &fixture("resnet20_cifar.pth"), false, "resnet20").unwrap();
    assert_eq!(report.mismatched.len(), 2);
    let in_file = weights::read_state_dict(&fixture("resnet20_cifar.pth")).unwrap().len();
    assert_eq!(report.loaded, in_file - 2);
    assert!(report.missing.is_empty() && report.unexpected.is_empty());

    // An unexpected extra key.
    let mut sd = weights::read_state_dict(&fixture("resnet20_cifar.pth")).unwrap();
    sd.insert("head.extra".into(), sd["fc.bias"].clone());
    let err = weights::load_into(&mut resnet20(), sd, true, "resnet20").unwrap_err();
    assert!(err.to_string().contains("unexpected keys: head.extra"), "{err}");
}
