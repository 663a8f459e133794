//! `resnet convert`: a `.pth` or `.safetensors` state dict to `.safetensors` with torchvision keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use resnet::model::ModelName;
use resnet::weights;

#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    #[arg(long, default_value = "resnet50")]
    model: String,
    input: PathBuf,
    output: PathBuf,
    /// Load only the tensors that fit instead of failing on a mismatch.
    #[arg(long)]
    non_strict: bool,
}

pub(crate) fn run(a: ConvertArgs) -> Result<ExitCode> {
    convert(&a.model, &a.input, &a.output, !a.non_strict)
}

fn convert(model: &str, input: &Path, output: &Path, strict: bool) -> Result<ExitCode> {
    let name: ModelName = model.parse()?;
    let file = weights::WeightsFile::open(input)?;
    let mut config = name.config();
    weights::fit_config(&mut config, &file);
    let mut m = resnet::ResNet::new(&config, &resnet::default_device())?;
    let sd = file.read_for(&m.state_dict_shapes())?;
    let report = weights::load_into(&mut m, sd, strict, name.as_str())?;
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
