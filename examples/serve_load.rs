//! Load a running `resnet serve`: N clients posting one image back to back for a fixed time.
//!
//! `cargo run --release --example serve_load -- URL IMAGE [CLIENTS] [SECONDS] [SERVER_PID]`
//! prints one JSON line: requests/s, p50/p99/max latency, failures, and the server's RSS.

#[path = "../tests/load/mod.rs"]
mod load;

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(image)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: serve_load URL IMAGE [CLIENTS=16] [SECONDS=20] [SERVER_PID]");
    };
    let clients = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let seconds = args.get(3).map_or(Ok(20.0), |s| s.parse::<f64>())?;
    let pid: Option<u32> = args.get(4).map(|s| s.parse()).transpose()?;
    let body = std::fs::read(image)?;
    let report = load::run(url, &body, clients, Duration::from_secs_f64(seconds));
    let mut json = serde_json::to_value(&report)?;
    if let Some(pid) = pid {
        json["server_rss_mb"] = load::rss_mb(pid, "VmRSS:").into();
        json["server_peak_rss_mb"] = load::rss_mb(pid, "VmHWM:").into();
    }
    println!("{json}");
    Ok(())
}
