//! A bounded load run on loopback: 16 clients for 20 s against the built-in Fashion-MNIST
//! model. Asserts no failed request and bounded memory; throughput is reported, not asserted
//! (`bench/serve_load.sh` compares batching with one-at-a-time).
#![cfg(feature = "serve")]

mod common;
#[path = "load/mod.rs"]
mod load;

use std::time::Duration;

use common::serve::Running;
use resnet::serve::ServeConfig;

#[test]
fn sixteen_clients_for_twenty_seconds_without_a_failure() {
    let srv = Running::fashion(ServeConfig::default());
    let url = srv.url("/v1/classify");
    let img = std::fs::read(common::fashion_example("0000-ankle-boot.png")).unwrap();
    let pid = std::process::id();

    let warm = load::run(&url, &img, 16, Duration::from_secs(3));
    assert_eq!(warm.failures, 0, "{warm:?}");
    let rss_warm = load::rss_mb(pid, "VmRSS:");
    let report = load::run(&url, &img, 16, Duration::from_secs(20));
    let rss_end = load::rss_mb(pid, "VmRSS:");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    eprintln!("RSS (server and clients in one process): {rss_warm:.1} MB after warm-up, {rss_end:.1} MB after 20 s");

    assert_eq!(report.failures, 0, "first failure: {:?}", report.first_failure);
    assert!(report.requests > 100, "{report:?}");
    // Memory must not grow with the number of requests served.
    assert!(
        rss_end - rss_warm < 64.0,
        "RSS grew from {rss_warm:.1} to {rss_end:.1} MB"
    );
    srv.stop().unwrap();
}
