//! `resnet convert`: a `.pth` or `.safetensors` state dict to `.safetensors` with torchvision
//! keys, or to an ONNX graph; and an ONNX ResNet back to a state dict.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::ValueEnum;

use resnet::model::ModelName;
use resnet::weights;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutFormat {
    Safetensors,
    Onnx,
}

#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    /// The architecture (default resnet50). An ONNX input is matched against every zoo
    /// model unless this names one.
    #[arg(long)]
    model: Option<String>,
    input: PathBuf,
    output: PathBuf,
    /// Default: from OUTPUT's extension (.onnx: an ONNX opset-17 graph, BN folded).
    #[arg(long, value_enum)]
    format: Option<OutFormat>,
    /// Load only the tensors that fit instead of failing on a mismatch.
    #[arg(long)]
    non_strict: bool,
    /// ONNX only: torchvision's `replace_stride_with_dilation`, one flag per stage after the
    /// first (e.g. `false,true,true`, a segmentation backbone). A state dict does not say it.
    #[arg(long, value_delimiter = ',', value_name = "B,B,B")]
    replace_stride_with_dilation: Option<Vec<bool>>,
}

pub(crate) fn run(a: ConvertArgs) -> Result<ExitCode> {
    let format = match (a.format, a.output.extension().and_then(|e| e.to_str())) {
        (Some(f), _) => f,
        (None, Some("onnx")) => OutFormat::Onnx,
        (None, Some("safetensors")) => OutFormat::Safetensors,
        (None, _) => bail!(
            "{}: name the format with --format safetensors|onnx, or end the name in .safetensors or .onnx",
            a.output.display()
        ),
    };
    if a.replace_stride_with_dilation.is_some() && format != OutFormat::Onnx {
        bail!("--replace-stride-with-dilation changes the graph, not the weights: it goes with ONNX export only");
    }
    convert(&a, &a.output, format)
}

fn convert(a: &ConvertArgs, output: &Path, format: OutFormat) -> Result<ExitCode> {
    let (input, strict) = (&a.input, !a.non_strict);
    if input.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        return import_onnx(a, output, format);
    }
    let name: ModelName = a.model.as_deref().unwrap_or("resnet50").parse()?;
    let file = weights::WeightsFile::open(input)?;
    let mut config = name.config();
    weights::fit_config(&mut config, &file);
    if let Some(d) = &a.replace_stride_with_dilation {
        config = config.with_replace_stride_with_dilation(d.clone());
    }
    let mut m = resnet::ResNet::new(&config, &resnet::default_device())?;
    let sd = file.read_for(&m.state_dict_shapes())?;
    let report = weights::load_into(&mut m, sd, strict, name.as_str())?;
    if format == OutFormat::Onnx {
        weights::onnx::write_onnx(output, &config, &weights::state_dict(&mut m)?, name.as_str())?;
        eprintln!(
            "wrote {} (ONNX opset {}, BatchNorm folded; {} tensors loaded)",
            output.display(),
            weights::onnx::OPSET,
            report.loaded
        );
        return Ok(ExitCode::SUCCESS);
    }
    // A torchvision release keeps its tag, and so its transform, in the new file's metadata.
    let metadata = match weights::recognise(input, name, weights::hub::RELEASES)? {
        weights::Recognition::Release(r) | weights::Recognition::Converted(r) => {
            eprintln!(
                "note: {} is torchvision's {}; the tag goes into the metadata",
                input.display(),
                r.tag.as_str()
            );
            Some(
                [
                    (weights::META_MODEL.to_string(), name.as_str().to_string()),
                    (weights::META_TAG.to_string(), r.tag.as_str().to_string()),
                ]
                .into(),
            )
        }
        _ => None,
    };
    weights::write_safetensors_with(output, &weights::state_dict(&mut m)?, metadata)?;
    eprintln!("wrote {} ({} tensors loaded)", output.display(), report.loaded);
    Ok(ExitCode::SUCCESS)
}

/// An ONNX ResNet (ours, or `torch.onnx.export`'s) to a torchvision state dict; BatchNorm
/// comes back as the identity plus the folded conv's bias.
fn import_onnx(a: &ConvertArgs, output: &Path, format: OutFormat) -> Result<ExitCode> {
    if format == OutFormat::Onnx {
        bail!("{} is already ONNX: convert it to .safetensors", a.input.display());
    }
    let model = a.model.as_deref().map(str::parse::<ModelName>).transpose()?;
    let imported = weights::onnx_import::read_onnx(&a.input, model)?;
    // Loading into the model checks every key and shape, as for any other file.
    let mut m = resnet::ResNet::new(&imported.config, &resnet::default_device())?;
    let report = weights::load_into(&mut m, imported.state_dict, true, imported.name.as_str())?;
    let metadata = [(weights::META_MODEL.to_string(), imported.name.as_str().to_string())].into();
    weights::write_safetensors_with(output, &weights::state_dict(&mut m)?, Some(metadata))?;
    eprintln!(
        "wrote {} ({}, {} classes, {} input channels; {} tensors; BatchNorm folded into the convs' biases)",
        output.display(),
        imported.name,
        imported.config.num_classes,
        imported.config.in_channels,
        report.loaded
    );
    Ok(ExitCode::SUCCESS)
}
