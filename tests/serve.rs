//! `resnet serve`: the real server on an ephemeral loopback port, every endpoint and every
//! error status.
#![cfg(feature = "serve")]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::serve::{client, fashion_classifier, multipart, slow_classifier, Running};
use common::{fashion_example, fixture};
use resnet::serve::ServeConfig;
use serde_json::Value;

fn example(name: &str) -> Vec<u8> {
    std::fs::read(fashion_example(name)).unwrap()
}

/// Status, headers and the JSON body of a response.
fn answer(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, ureq::http::HeaderMap, Value) {
    let mut res = res.expect("the request reached the server");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.body_mut().read_to_string().expect("a readable body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, json)
}

fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, ureq::http::HeaderMap, Value) {
    answer(client().post(url).header("Content-Type", content_type).send(body))
}

fn get_text(url: &str) -> (u16, String) {
    let mut res = client().get(url).call().unwrap();
    (res.status().as_u16(), res.body_mut().read_to_string().unwrap())
}

/// Posts each body from its own thread, all released at once; answers in body order.
fn post_at_once(url: &str, bodies: &[Vec<u8>]) -> Vec<(u16, ureq::http::HeaderMap, Value)> {
    let barrier = Arc::new(Barrier::new(bodies.len()));
    std::thread::scope(|s| {
        let hs: Vec<_> = bodies
            .iter()
            .map(|body| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    let agent = client();
                    barrier.wait();
                    answer(
                        agent
                            .post(url)
                            .header("Content-Type", "image/png")
                            .send(body.as_slice()),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Waits until the server holds a request's images (or that request has already ended).
fn wait_until_admitted<T>(metrics_url: &str, request: &std::thread::JoinHandle<T>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !request.is_finished() && metric(&get_text(metrics_url).1, "resnet_queued_images") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the server"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `name{labels} value` from a metrics page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
        .parse()
        .unwrap()
}

#[test]
fn every_endpoint_answers() {
    let srv = Running::fashion(ServeConfig::default());
    let clf = fashion_classifier();

    let (status, body) = get_text(&srv.url("/healthz"));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "ok");

    let (status, body) = get_text(&srv.url("/v1/models"));
    assert_eq!(status, 200);
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["model"], "fashion-mnist-resnet20");
    assert_eq!(m["architecture"], "resnet20");
    assert_eq!(m["weights"], "fashion-mnist-resnet20");
    assert_eq!(m["num_classes"], 10);
    assert_eq!(m["classes"][9], "Ankle boot");
    assert_eq!(m["input"], serde_json::json!([1, 28, 28]));
    let c = clf.config().complexity(28, 28);
    assert_eq!(m["parameters"], c.params);
    assert!((m["gflops"].as_f64().unwrap() - c.gflops()).abs() < 1e-9);
    assert_eq!(m["engine"], "fast");
    // The kernel the engine chose: the best this CPU runs, unless RESNET_KERNEL forced one.
    let kernel = resnet::engine::Kernel::Auto.resolve().unwrap();
    assert_eq!(m["kernel"], kernel.name());
    assert_eq!(m["transform_source"], serde_json::json!({"kind": "built_in"}));

    // The studio page: self-contained, nothing fetched from elsewhere.
    let (status, page) = get_text(&srv.url("/"));
    assert_eq!(status, 200);
    assert!(page.contains("<title>resnet studio</title>"));
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src=\"//"));

    // A raw body: one object, in the CLI's JSON schema, with the library's numbers.
    let boot = example("0000-ankle-boot.png");
    let (status, _, v) = post(&srv.url("/v1/classify?name=boot.png"), "image/png", &boot);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["image"], "boot.png");
    let want = clf.classify_path(fashion_example("0000-ankle-boot.png"), 5).unwrap();
    let got = v["predictions"].as_array().unwrap();
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["index"], w.index);
        assert_eq!(g["label"], w.label.as_str());
        assert!((g["probability"].as_f64().unwrap() - w.probability as f64).abs() < 1e-6);
    }
    assert_eq!(got[0]["label"], "Ankle boot");

    let (status, _, v) = post(&srv.url("/v1/classify?top_k=3"), "application/octet-stream", &boot);
    assert_eq!(status, 200);
    assert_eq!(v["image"], "image");
    assert_eq!(v["predictions"].as_array().unwrap().len(), 3);
    // top_k over the class count is capped.
    let (status, _, v) = post(&srv.url("/v1/classify?top_k=50"), "image/png", &boot);
    assert_eq!(status, 200);
    assert_eq!(v["predictions"].as_array().unwrap().len(), 10);

    // Multipart: an array, one object per `image` part, in order; other fields are ignored.
    let trouser = example("0002-trouser.png");
    let chelsea = std::fs::read(fixture("chelsea.png")).unwrap();
    let (ct, body) = multipart(&[
        ("image", "boot.png", &boot),
        ("note", "ignored.txt", b"not an image part"),
        ("image", "trouser.png", &trouser),
        ("image", "chelsea.png", &chelsea),
    ]);
    let (status, _, v) = post(&srv.url("/v1/classify"), &ct, &body);
    assert_eq!(status, 200, "{v}");
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["image"], "boot.png");
    assert_eq!(arr[0]["predictions"][0]["label"], "Ankle boot");
    assert_eq!(arr[1]["image"], "trouser.png");
    assert_eq!(arr[1]["predictions"][0]["label"], "Trouser");
    assert_eq!(arr[2]["image"], "chelsea.png");

    // Unknown paths and wrong methods are JSON errors too.
    let (status, _, v) = answer(client().get(&srv.url("/v2/nothing")).call());
    assert_eq!(status, 404);
    assert!(v["error"].is_string());
    let (status, _, v) = answer(client().get(&srv.url("/v1/classify")).call());
    assert_eq!(status, 405);
    assert!(v["error"].as_str().unwrap().contains("POST"));

    let (status, page) = get_text(&srv.url("/metrics"));
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &page,
            "resnet_http_requests_total{endpoint=\"/v1/classify\",status=\"200\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &page,
            "resnet_http_requests_total{endpoint=\"/v1/models\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&page, "resnet_http_requests_total{endpoint=\"other\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "resnet_http_request_duration_seconds_count{endpoint=\"/v1/classify\"}"
        ),
        5.0
    );
    assert_eq!(metric(&page, "resnet_images_classified_total"), 6.0);
    assert!(metric(&page, "resnet_batch_size_count") >= 1.0);
    assert!(page.contains("resnet_batch_size_bucket{le=\"1.0\"}"));
    assert!(page.contains("# TYPE resnet_http_request_duration_seconds histogram"));
    assert_eq!(metric(&page, "resnet_queued_images"), 0.0);
    srv.stop().unwrap();
}

#[test]
fn bad_input_gets_the_right_status_and_a_json_error() {
    let cfg = ServeConfig {
        max_body: 128 * 1024,
        max_pixels: 10_000,
        max_queue: 4,
        ..Default::default()
    };
    let srv = Running::fashion(cfg);
    let url = srv.url("/v1/classify");
    let boot = example("0000-ankle-boot.png");
    let expect = |(status, _, v): (u16, ureq::http::HeaderMap, Value), want: u16, says: &str| {
        assert_eq!(status, want, "{v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error string in {v}"));
        assert!(msg.contains(says), "{msg:?} should say {says:?}");
    };

    // 400: malformed multipart, no boundary, no image part, an empty body, bad top_k.
    expect(
        post(&url, "multipart/form-data; boundary=XX", b"garbage with no parts"),
        400,
        "multipart",
    );
    expect(post(&url, "multipart/form-data", &boot), 400, "multipart");
    let (ct, body) = multipart(&[("file", "boot.png", &boot)]);
    expect(post(&url, &ct, &body), 400, "no `image` part");
    expect(post(&url, "image/png", b""), 400, "empty");
    expect(post(&format!("{url}?top_k=0"), "image/png", &boot), 400, "top_k");
    expect(post(&format!("{url}?top_k=many"), "image/png", &boot), 400, "top_k");

    // 413: a raw body or a multipart body over --max-body, or more images than the queue holds.
    let big = vec![0x89u8; 300 * 1024];
    expect(post(&url, "image/png", &big), 413, "131072 bytes");
    let (ct, body) = multipart(&[("image", "big.png", &big)]);
    expect(post(&url, &ct, &body), 413, "limit");
    // Far over the limit: the server reads and drops the rest, so the client gets the answer
    // rather than a reset connection.
    let huge = vec![0x89u8; 8 << 20];
    expect(post(&url, "image/png", &huge), 413, "131072 bytes");
    let five: Vec<(&str, &str, &[u8])> = (0..5).map(|_| ("image", "b.png", boot.as_slice())).collect();
    let (ct, body) = multipart(&five);
    expect(post(&url, &ct, &body), 413, "at most 4");

    // 415: not an image at all; in a multipart part too.
    expect(post(&url, "text/plain", b"hello, I am text"), 415, "not an image");
    let (ct, body) = multipart(&[("image", "boot.png", &boot), ("image", "notes.txt", b"plain text")]);
    expect(post(&url, &ct, &body), 415, "notes.txt");

    // 422: a corrupt (truncated) image, and one over --max-pixels.
    let chelsea = std::fs::read(fixture("chelsea.png")).unwrap();
    expect(post(&url, "image/png", &chelsea[..4000]), 422, "cannot decode");
    let rocket = std::fs::read(fixture("rocket.jpg")).unwrap();
    assert!(rocket.len() < 128 * 1024, "the fixture must fit the body limit");
    expect(
        post(&format!("{url}?name=rocket.jpg"), "image/jpeg", &rocket),
        422,
        "over the limit of 10000",
    );
    expect(post(&url, "image/png", &common::bomb_png()), 422, "pixels");

    // The server is unharmed: a good image still works, and nothing is left queued.
    let (status, _, v) = post(&url, "image/png", &boot);
    assert_eq!(status, 200, "{v}");
    let (_, page) = get_text(&srv.url("/metrics"));
    assert_eq!(metric(&page, "resnet_queued_images"), 0.0);
    assert_eq!(
        metric(
            &page,
            "resnet_http_requests_total{endpoint=\"/v1/classify\",status=\"400\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            &page,
            "resnet_http_requests_total{endpoint=\"/v1/classify\",status=\"422\"}"
        ),
        3.0
    );
    srv.stop().unwrap();
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // One image admitted at a time, and each takes tens of milliseconds.
    let cfg = ServeConfig {
        max_queue: 1,
        max_batch: 1,
        batch_window: Duration::ZERO,
        ..Default::default()
    };
    let srv = Running::start("resnet50", vec![slow_classifier()], cfg);
    let url = srv.url("/v1/classify");
    let img = std::fs::read(fixture("coffee.png")).unwrap();
    let n = 8;
    let answers = post_at_once(&url, &vec![img; n]);
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(
        ok + busy.len(),
        n,
        "only 200 or 503 expected: {:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert!(ok >= 1 && !busy.is_empty(), "{ok} answered, {} refused", busy.len());
    for (_, headers, v) in busy {
        assert_eq!(headers.get("retry-after").map(|h| h.to_str().unwrap()), Some("1"));
        assert!(v["error"].as_str().unwrap().contains("busy"));
    }
    let (_, page) = get_text(&srv.url("/metrics"));
    assert_eq!(metric(&page, "resnet_queue_rejections_total"), (n - ok) as f64);
    srv.stop().unwrap();
}

#[test]
fn concurrent_requests_share_forward_passes() {
    // A wide window so that all eight requests surely meet in one or two batches.
    let cfg = ServeConfig {
        max_batch: 16,
        batch_window: Duration::from_millis(300),
        ..Default::default()
    };
    let srv = Running::fashion(cfg);
    let url = srv.url("/v1/classify");
    let files = [
        "0000-ankle-boot.png",
        "0001-pullover.png",
        "0002-trouser.png",
        "0004-shirt.png",
    ];
    let n = 8;
    let answers = post_at_once(
        &url,
        &(0..n).map(|i| example(files[i % files.len()])).collect::<Vec<_>>(),
    );
    // Batched answers are each image's own, with the numbers of a lone forward pass.
    let clf = fashion_classifier();
    for (i, (status, _, v)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{v}");
        let want = clf.classify_path(fashion_example(files[i % 4]), 5).unwrap();
        assert_eq!(v["predictions"][0]["index"], want[0].index, "{}", files[i % 4]);
        let p = v["predictions"][0]["probability"].as_f64().unwrap();
        assert!(
            (p - want[0].probability as f64).abs() < 1e-5,
            "{p} vs {}",
            want[0].probability
        );
    }
    let (_, page) = get_text(&srv.url("/metrics"));
    assert_eq!(metric(&page, "resnet_images_classified_total"), n as f64);
    let passes = metric(&page, "resnet_batch_size_count");
    assert!(
        passes < n as f64,
        "{n} images took {passes} forward passes: no batching"
    );
    srv.stop().unwrap();
}

#[test]
fn shutdown_finishes_the_requests_in_flight() {
    let srv = Running::start("resnet50", vec![slow_classifier()], ServeConfig::default());
    let url = srv.url("/v1/classify");
    let addr = srv.addr;
    let img = std::fs::read(fixture("coffee.png")).unwrap();
    let parts: Vec<(&str, &str, &[u8])> = (0..4).map(|_| ("image", "coffee.png", img.as_slice())).collect();
    let (ct, body) = multipart(&parts);
    let in_flight = std::thread::spawn(move || post(&url, &ct, &body));
    // Ask the server to stop once the request is being served.
    wait_until_admitted(&srv.url("/metrics"), &in_flight);
    srv.stop().expect("a clean shutdown");
    let (status, _, v) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 4);
    // And then it is gone.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn the_cli_stops_on_sigterm_after_answering() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "serve",
            "--model",
            "resnet50",
            "--weights",
            "random",
            "--addr",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .rsplit("http://")
        .next()
        .map(str::trim)
        .filter(|a| line.starts_with("serving ") && !a.is_empty())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    let img = std::fs::read(fixture("coffee.png")).unwrap();
    let parts: Vec<(&str, &str, &[u8])> = (0..4).map(|_| ("image", "coffee.png", img.as_slice())).collect();
    let (ct, body) = multipart(&parts);
    let url = format!("http://{addr}/v1/classify");
    let in_flight = std::thread::spawn(move || post(&url, &ct, &body));
    wait_until_admitted(&format!("http://{addr}/metrics"), &in_flight);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (status, _, v) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 4);
    let exit = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(exit.success(), "exit {exit:?}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

/// A `w × h` PNG of a smooth pattern (compresses well, decodes to w·h·3 bytes).
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 13) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG whose header claims `w × h` pixels, with no pixel data behind it.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut p = png(1, 1);
    // IHDR's width and height sit at bytes 16..24; its CRC follows at 29..33.
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&p[12..29]);
    p[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    p
}

#[test]
fn resnet50_answers_hostile_images_and_the_next_request() {
    let server = Running::start("resnet50", vec![slow_classifier()], ServeConfig::default());
    let url = server.url("/v1/classify");
    let strip = |w: u32, h: u32| {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x + y) as u8, 7, 200]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let mut truncated = png(64, 64);
    truncated.truncate(truncated.len() / 2);
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("1x60000 strip", strip(1, 60000), &[200]),
        ("60000x1 strip", strip(60000, 1), &[200]),
        ("a 100000x100000 header", png_header_only(100_000, 100_000), &[422]),
        (
            "a 9000x9000 header, no pixels",
            png_header_only(9000, 9000),
            &[413, 422],
        ),
        ("a truncated PNG", truncated, &[422]),
        ("not an image", b"GIF89a but not really".to_vec(), &[415, 422]),
    ];
    for (what, body, want) in cases {
        let (status, _, json) = post(&url, "image/png", &body);
        assert!(want.contains(&status), "{what}: status {status}, {json}");
        if status == 200 {
            assert_eq!(json["predictions"].as_array().map(Vec::len), Some(5), "{what}: {json}");
        } else {
            assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {json}");
        }
        // The next ordinary request is answered normally.
        let (status, _, json) = post(&url, "image/png", &std::fs::read(fixture("chelsea.png")).unwrap());
        assert_eq!(status, 200, "after {what}: {json}");
    }
}

#[test]
fn decoded_images_share_a_memory_budget() {
    // 48 MB: one 2000x2000 PNG (about 36 MB to decode) at a time.
    let server = Running::fashion(ServeConfig {
        max_image_memory: 48 << 20,
        ..Default::default()
    });
    let url = server.url("/v1/classify");
    // One that can never fit: 413, whatever else is running.
    let (status, _, json) = post(&url, "image/png", &png(4000, 4000));
    assert_eq!(status, 413, "{json}");
    assert!(json["error"].as_str().unwrap().contains("--max-image-memory"), "{json}");

    // Large images from 6 threads while small ones keep being answered.
    let large = png(2000, 2000);
    let small = example("0000-ankle-boot.png");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (large_answers, small_answers) = std::thread::scope(|s| {
        let smalls = s.spawn(|| {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || answers.len() < 5 {
                answers.push(post(&url, "image/png", &small).0);
            }
            answers
        });
        let larges = post_at_once(&url, &vec![large.clone(); 6]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (larges, smalls.join().unwrap())
    });
    let mut rejected = 0.0;
    for (status, headers, json) in &large_answers {
        match status {
            200 => {}
            503 => {
                rejected += 1.0;
                assert!(headers.contains_key("retry-after"), "503 without Retry-After: {json}");
                assert!(json["error"].as_str().unwrap().contains("budget"), "{json}");
            }
            s => panic!("a large image got {s}: {json}"),
        }
    }
    assert!(
        large_answers.iter().any(|a| a.0 == 200),
        "at least one large image fits the budget"
    );
    assert!(
        small_answers.iter().all(|&s| s == 200),
        "small images: {small_answers:?}"
    );
    // Every 503 was counted, and the budget is whole again: a large image fits.
    let page = get_text(&server.url("/metrics")).1;
    assert!(metric(&page, "resnet_queue_rejections_total") >= rejected, "{page}");
    assert_eq!(post(&url, "image/png", &large).0, 200);
}

#[test]
fn request_bodies_count_against_the_image_budget() {
    let server = Running::fashion(ServeConfig {
        max_image_memory: 1 << 20,
        ..Default::default()
    });
    let url = server.url("/v1/classify");
    // Under --max-body (20 MB) but over the whole budget: 413 while it is read.
    let (status, _, json) = post(&url, "image/png", &vec![7u8; 3 << 20]);
    assert_eq!(status, 413, "{json}");
    assert!(json["error"].as_str().unwrap().contains("--max-image-memory"), "{json}");
    // The budget is released: a small image is answered.
    let (status, _, json) = post(&url, "image/png", &example("0000-ankle-boot.png"));
    assert_eq!(status, 200, "{json}");
}

#[test]
fn embed_answers_like_the_library_with_classify_s_limits() {
    let cfg = ServeConfig {
        max_pixels: 10_000,
        ..Default::default()
    };
    let srv = Running::fashion(cfg);
    let clf = fashion_classifier();
    let boot = example("0000-ankle-boot.png");
    let want = clf
        .embed(&resnet::preprocess::open_image(&fashion_example("0000-ankle-boot.png"), 1 << 20).unwrap())
        .unwrap();

    // A raw body: `{image, embedding}`, as `resnet embed` writes each line.
    let (status, _, v) = post(&srv.url("/v1/embed?name=boot.png"), "image/png", &boot);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["embedding", "image"]
    );
    assert_eq!(v["image"], "boot.png");
    let got: Vec<f32> = v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), 64);
    assert!(common::max_abs(&got, &want) < 1e-6);

    // ?normalize=true gives a unit vector; multipart gives an array in part order.
    let (_, _, v) = post(&srv.url("/v1/embed?normalize=true"), "image/png", &boot);
    let n = common::norm_sq(&v["embedding"]);
    assert!((n - 1.0).abs() < 1e-5, "norm² {n}");
    let trouser = example("0002-trouser.png");
    let (ct, body) = multipart(&[("image", "boot.png", &boot), ("image", "trouser.png", &trouser)]);
    let (status, _, v) = post(&srv.url("/v1/embed"), &ct, &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["image"], "boot.png");
    assert_eq!(v[1]["image"], "trouser.png");

    // Classify's errors: not an image (415), too many pixels (422), a bad query (400).
    let (status, _, v) = post(&srv.url("/v1/embed"), "image/png", b"not an image at all");
    assert_eq!(status, 415, "{v}");
    let (status, _, v) = post(&srv.url("/v1/embed"), "image/png", &png(200, 200));
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pixels"));
    let (status, _, _) = post(&srv.url("/v1/embed?normalize=maybe"), "image/png", &boot);
    assert_eq!(status, 400);
    let (status, page) = get_text(&srv.url("/metrics"));
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &page,
            "resnet_http_requests_total{endpoint=\"/v1/embed\",status=\"200\"}"
        ),
        3.0
    );
    srv.stop().unwrap();
}

#[test]
fn explain_answers_json_or_the_overlay_png() {
    let srv = Running::fashion(ServeConfig::default());
    let clf = fashion_classifier();
    let boot = example("0000-ankle-boot.png");
    let img = resnet::preprocess::open_image(&fashion_example("0000-ankle-boot.png"), 1 << 20).unwrap();

    // JSON: `resnet explain --format json`'s schema and the library's map.
    let (status, _, v) = post(&srv.url("/v1/explain?name=boot.png"), "image/png", &boot);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["image"], "boot.png");
    assert_eq!(v["layer"], "layer3");
    assert_eq!(v["class"]["label"], "Ankle boot");
    let want = clf.explain(&img, None).unwrap();
    let cam: Vec<f32> = v["cam"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    assert!(common::max_abs(&cam, &want.cam) < 1e-6);
    // Another class and an earlier layer (autodiff on the worker).
    let (status, _, v) = post(&srv.url("/v1/explain?class=1&layer=layer2"), "image/png", &boot);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["class"]["index"], 1);
    assert_eq!(v["cam"].as_array().unwrap().len(), 14);

    // Accept: image/png gives the overlay.
    let res = client()
        .post(&srv.url("/v1/explain"))
        .header("Content-Type", "image/png")
        .header("Accept", "image/png")
        .send(&boot[..])
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers().get("content-type").unwrap(), "image/png");
    let bytes = res.into_body().read_to_vec().unwrap();
    let png = image::load_from_memory(&bytes).unwrap();
    assert_eq!((png.width(), png.height()), (224, 224), "the 28² crop, enlarged 8×");

    // Bad requests: an unknown layer or class, a PNG answer for several images.
    let (status, _, v) = post(&srv.url("/v1/explain?layer=layer4"), "image/png", &boot);
    assert_eq!(status, 400, "{v}");
    let (status, _, v) = post(&srv.url("/v1/explain?class=10"), "image/png", &boot);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("0 to 9"));
    let (ct, body) = multipart(&[("image", "a.png", &boot), ("image", "b.png", &boot)]);
    let res = client()
        .post(&srv.url("/v1/explain"))
        .header("Content-Type", &ct)
        .header("Accept", "image/png")
        .send(&body[..])
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let (status, _, v) = post(&srv.url("/v1/explain"), &ct, &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    srv.stop().unwrap();
}
