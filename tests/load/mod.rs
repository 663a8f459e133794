//! A closed-loop HTTP load generator: N clients, each posting the same image back to back
//! over its own keep-alive connection, for a fixed time. Used by `tests/serve_load.rs` and
//! `examples/serve_load.rs` (which `bench/serve_load.sh` runs).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub seconds: f64,
    pub requests: usize,
    pub failures: usize,
    /// The first failure, if any: a status and body, or a transport error.
    pub first_failure: Option<String>,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Posts `body` to `url` from `clients` threads for `duration`.
pub fn run(url: &str, body: &[u8], clients: usize, duration: Duration) -> LoadReport {
    let start = Instant::now();
    let deadline = start + duration;
    let per_client: Vec<(Vec<f64>, usize, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .build()
                        .into();
                    let (mut lat, mut failures, mut first) = (Vec::new(), 0usize, None);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let res = agent
                            .post(url)
                            .header("Content-Type", "application/octet-stream")
                            .send(body);
                        let failure = match res {
                            Ok(mut r) if r.status() == 200 => match r.body_mut().read_to_string() {
                                Ok(text) if text.contains("\"predictions\"") => None,
                                Ok(text) => Some(format!("200 without predictions: {text}")),
                                Err(e) => Some(format!("reading the answer: {e}")),
                            },
                            Ok(mut r) => Some(format!(
                                "{}: {}",
                                r.status(),
                                r.body_mut().read_to_string().unwrap_or_default()
                            )),
                            Err(e) => Some(e.to_string()),
                        };
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        if let Some(f) = failure {
                            failures += 1;
                            first.get_or_insert(f);
                        }
                    }
                    (lat, failures, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a load client panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = per_client.iter().flat_map(|c| c.0.iter().copied()).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    LoadReport {
        clients,
        seconds,
        requests: lat.len(),
        failures: per_client.iter().map(|c| c.1).sum(),
        first_failure: per_client.iter().find_map(|c| c.2.clone()),
        requests_per_second: lat.len() as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
    }
}

/// Resident memory of a process (Linux `VmRSS`, or `VmHWM` for the peak), in MB.
pub fn rss_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
