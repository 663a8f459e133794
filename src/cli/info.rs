//! `resnet info`: parameters and FLOPs of each model, beside torchvision's and the paper's.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use resnet::engine::Kernel;
use resnet::model::ModelName;

use super::Format;

#[derive(clap::Args)]
pub(crate) struct InfoArgs {
    /// Models to show (default: all).
    models: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub(crate) fn run(a: InfoArgs) -> Result<ExitCode> {
    info(&a.models, a.format)
}

#[derive(Serialize)]
struct InfoRow {
    model: &'static str,
    input: usize,
    params: u64,
    gflops: f64,
    torchvision_params: Option<u64>,
    torchvision_gflops: Option<f64>,
    paper_gflops: Option<f64>,
    paper_params_m: Option<f64>,
    /// The matrix kernel the CPU engine runs here (`RESNET_KERNEL` forces one).
    kernel: &'static str,
    config: resnet::ResNetConfig,
}

fn info(names: &[String], format: Format) -> Result<ExitCode> {
    let models: Vec<ModelName> = if names.is_empty() {
        ModelName::ALL.to_vec()
    } else {
        names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?
    };
    let kernel = Kernel::Auto.resolve()?;
    let rows: Vec<InfoRow> = models
        .iter()
        .map(|&m| {
            let config = m.config();
            let size = m.native_input();
            let c = config.complexity(size, size);
            let tv = m.torchvision_meta();
            InfoRow {
                model: m.as_str(),
                input: size,
                params: c.params,
                gflops: c.gflops(),
                torchvision_params: tv.map(|t| t.0),
                torchvision_gflops: tv.map(|t| t.1),
                paper_gflops: m.paper_gflops(),
                paper_params_m: m.paper_params_m(),
                kernel: kernel.name(),
                config,
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "{:<18} {:>5} {:>13} {:>13} {:>8} {:>8} {:>7} {:>9}",
        "model", "input", "params", "torchvision", "GFLOPs", "tv", "paper", "paper M"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<18} {:>5} {:>13} {:>13} {:>8.3} {:>8} {:>7} {:>9}",
            r.model,
            r.input,
            group(r.params),
            opt(r.torchvision_params.map(group)),
            r.gflops,
            opt(r.torchvision_gflops.map(|g| format!("{g:.3}"))),
            opt(r.paper_gflops.map(|g| format!("{g:.1}"))),
            opt(r
                .paper_params_m
                .map(|p| format!("{p}M ({:.2}M)", r.params as f64 / 1e6))),
        )?;
    }
    writeln!(out, "GFLOPs are multiply-accumulates at the native input size; 'tv' is torchvision's metadata, 'paper' He et al. 2015 Table 1 / Table 6.")?;
    let runs: Vec<&str> = Kernel::available().iter().map(|i| i.name()).collect();
    writeln!(
        out,
        "CPU kernel: {kernel} (this CPU runs {}; RESNET_KERNEL=NAME forces one).",
        runs.join(", ")
    )?;
    Ok(ExitCode::SUCCESS)
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
