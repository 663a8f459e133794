//! The weights download path against a real HTTP server on 127.0.0.1 (no internet needed).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use common::fixture;
use resnet::weights::hub::{self, fetch};
use resnet::Error;

/// Serves `routes` (path → (declared length, body)) for as long as the test runs.
fn serve(routes: Vec<(String, usize, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(32) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            match routes.iter().find(|(p, _, _)| *p == path) {
                Some((_, len, body)) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    format!("http://{addr}")
}

fn no_progress() -> impl FnMut(u64, Option<u64>) {
    |_, _| {}
}

#[test]
fn download_checks_hash_and_handles_truncation() {
    let bytes = std::fs::read(fixture("resnet20_cifar.pth")).unwrap();
    let prefix = &hub::sha256_file(&fixture("resnet20_cifar.pth")).unwrap()[..8];
    let good = format!("/good/resnet20-{prefix}.pth");
    let cut = format!("/cut/resnet20-{prefix}.pth");
    let short = format!("/short/resnet20-{prefix}.pth");
    let wrong = "/wrong/resnet20-deadbeef.pth".to_string();
    let base = serve(vec![
        (good.clone(), bytes.len(), bytes.clone()),
        // The connection drops halfway through the declared length.
        (cut.clone(), bytes.len(), bytes[..bytes.len() / 2].to_vec()),
        // A complete response whose file is itself truncated: only the hash can tell.
        (short.clone(), bytes.len() / 2, bytes[..bytes.len() / 2].to_vec()),
        (wrong.clone(), bytes.len(), bytes.clone()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let empty = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) == 0;

    // Truncated: an error, and nothing is left in the cache.
    let err = fetch(&format!("{base}{cut}"), cache.path(), &mut no_progress()).unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err}");
    assert!(err.to_string().contains("--weights FILE"), "{err}");
    assert!(empty(cache.path()));
    let err = fetch(&format!("{base}{short}"), cache.path(), &mut no_progress()).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    assert!(empty(cache.path()));

    // Wrong hash prefix: discarded.
    let err = fetch(&format!("{base}{wrong}"), cache.path(), &mut no_progress()).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    assert!(empty(cache.path()));

    // Good: cached, with progress reported, loadable.
    let mut seen = 0u64;
    let mut progress = |done: u64, total: Option<u64>| {
        assert_eq!(total, Some(bytes.len() as u64));
        seen = done;
    };
    let path = fetch(&format!("{base}{good}"), cache.path(), &mut progress).unwrap();
    assert_eq!(seen, bytes.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(resnet::weights::read_state_dict(&path).is_ok());

    // A second fetch is served from the cache (the 404 URL proves no request is made).
    let again = fetch(
        &format!("{base}/elsewhere/resnet20-{prefix}.pth"),
        cache.path(),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(again, path);
}

#[test]
fn no_server_is_a_clear_error() {
    // A port that was just free: the connection is refused, as without network.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(
        &format!("http://127.0.0.1:{port}/resnet18-f37072fd.pth"),
        cache.path(),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Download { .. }), "{err}");
    assert!(err.to_string().contains("pass --weights FILE"), "{err}");
}

#[test]
fn every_release_has_a_hash_prefix_and_default_prefers_v2() {
    use resnet::weights::WeightTag;
    use resnet::ModelName;
    for r in hub::RELEASES {
        assert!(r.hash_prefix().is_some_and(|h| h.len() == 8), "{}", r.url);
    }
    let d = hub::release(ModelName::Resnet50, WeightTag::Default).unwrap();
    assert_eq!((d.file_name(), d.resize), ("resnet50-11ad3fa6.pth", 232));
    assert_eq!(
        hub::release(ModelName::Resnet18, WeightTag::Default).unwrap().resize,
        256
    );
    assert!(matches!(
        hub::release(ModelName::Resnet18, WeightTag::ImageNet1kV2),
        Err(Error::NoSuchTag { .. })
    ));
    assert!(matches!(
        hub::release(ModelName::Resnet20, WeightTag::Default),
        Err(Error::NoSuchTag { .. })
    ));
}
