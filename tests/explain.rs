//! `resnet explain`: Grad-CAM maps against pytorch-grad-cam 1.5.7
//! (`tests/fixtures/gradcam.safetensors`, tools/torch_reference/make_gradcam_fixtures.py),
//! at layer4 (the engine's analytic gradient) and layer3 (burn's autodiff), end to end from
//! PNG files; the overlay PNG; bad requests.

mod common;

use common::{det_weights_file, f32s, fixture, fixture_cases, max_abs, resnet_command};

#[test]
fn grad_cam_matches_pytorch_grad_cam_at_layer4_and_layer3() {
    let tmp = tempfile::tempdir().unwrap();
    let (want, cases) = fixture_cases("gradcam");
    for model in ["resnet18", "resnet50"] {
        let w = det_weights_file(model, tmp.path());
        let mine: Vec<_> = cases.iter().filter(|c| c["model"] == model).collect();
        assert!(mine.iter().any(|c| c["layer"] == "layer4") && mine.iter().any(|c| c["layer"] == "layer3"));
        for c in mine {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            let n = |k: &str| c[k].as_u64().unwrap().to_string();
            let mut cmd = resnet_command();
            cmd.args(["explain", "--model", model, "--weights", w.to_str().unwrap()])
                .args(["--resize", &n("resize"), "--crop", &n("crop"), "--layer", &s("layer")])
                .args(["--format", "json"]);
            // The top-1 case is also what explain picks by itself.
            if !c["top1"].as_bool().unwrap() {
                cmd.args(["--class", &n("class")]);
            }
            let out = cmd.arg(fixture(&s("image"))).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 4, "{keys:?}");
            assert_eq!(v["layer"], s("layer"));
            assert_eq!(v["class"]["index"], c["class"]);
            let p = v["class"]["probability"].as_f64().unwrap();
            assert!(
                (p - c["probability"].as_f64().unwrap()).abs() < 1e-4,
                "{p} vs {}",
                c["probability"]
            );
            let rows = v["cam"].as_array().unwrap();
            let cam: Vec<f32> = rows
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
                .collect();
            let key = s("key");
            let expected = &want[&key];
            assert_eq!(
                vec![rows.len(), rows[0].as_array().unwrap().len()],
                expected.shape,
                "{key}"
            );
            let err = max_abs(&cam, f32s(expected));
            assert!(err <= 1e-4, "{key}: max abs error {err:e}");
            eprintln!("{key}: max abs error {err:.1e}");
        }
    }
}

#[test]
fn the_engine_and_burn_give_the_same_map_and_the_overlay_is_written() {
    use resnet::classify::Layer;
    let tmp = tempfile::tempdir().unwrap();
    let (want, cases) = fixture_cases("gradcam");
    let (img, clfs) = common::det_resnet18_both_paths(tmp.path());
    let w = tmp.path().join("resnet18-det.safetensors");
    for (clf, engine) in clfs.iter().zip([true, false]) {
        for c in cases.iter().filter(|c| c["model"] == "resnet18") {
            let k: usize = c["layer"].as_str().unwrap()[5..].parse().unwrap();
            let class = c["class"].as_u64().unwrap() as usize;
            let e = clf.explain_layer(&img, Some(class), Layer::Stage(k)).unwrap();
            let err = max_abs(&e.cam, f32s(&want[c["key"].as_str().unwrap()]));
            assert!(err <= 1e-4, "engine {engine} {}: {err:e}", c["key"]);
        }
        assert!(clf.explain_layer(&img, Some(1000), Layer::Stage(4)).is_err());
        assert!(clf.explain_layer(&img, None, Layer::AvgPool).is_err());
    }

    // --out: the overlay at the crop's size, beside the JSON's map.
    let dir = tmp.path().join("cams");
    let out = resnet_command()
        .args([
            "explain",
            "--model",
            "resnet18",
            "--weights",
            w.to_str().unwrap(),
            "--format",
            "json",
        ])
        .args(["--out", dir.to_str().unwrap(), fixture("chelsea.png").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = image::open(dir.join("chelsea.cam.png")).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (224, 224));
    // The overlay is coloured: not the grey of a plain photo copy.
    let coloured = png
        .pixels()
        .filter(|p| p[0].abs_diff(p[1]) > 30 || p[1].abs_diff(p[2]) > 30)
        .count();
    assert!(coloured > 1000, "{coloured}");
}

#[test]
fn bad_requests_are_one_line_errors() {
    let run = |args: &[&str]| {
        resnet_command()
            .args(["explain", "--model", "fashion-mnist-resnet20"])
            .args(args)
            .arg(common::fashion_example("0000-ankle-boot.png"))
            .output()
            .unwrap()
    };
    let out = run(&["--class", "10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("classes 0 to 9"));
    let out = run(&["--layer", "layer4"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no layer4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--layer", "avgpool"]);
    assert!(!out.status.success());
    // The built-in model at its last stage (layer3: a CIFAR-style net has three).
    let out = run(&["--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["class"]["label"], "Ankle boot");
    assert_eq!(v["layer"], "layer3");
}
