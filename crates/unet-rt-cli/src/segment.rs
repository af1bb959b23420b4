//! The `segment` and `info` subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ndarray::{ArrayD, Axis};

use crate::image_io::{read_image, write_labels_tiff, write_npy, FileError};
use crate::{Format, OutputKind, SegmentArgs};

/// Errors that stop the whole command (as opposed to one input failing).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad arguments or an unusable model: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// The engine failed before any input could be processed.
    #[error(transparent)]
    Engine(#[from] unet_rt::Error),
}

pub(crate) fn exit_code_for(err: &CliError) -> ExitCode {
    match err {
        CliError::Usage(_) => ExitCode::from(2),
        // A model that is missing or not a model, an unknown device, a bad
        // option: the command line must change, so they are usage errors.
        CliError::Engine(
            unet_rt::Error::ModelNotFound(_)
            | unet_rt::Error::InvalidModel { .. }
            | unet_rt::Error::InvalidMetadata { .. }
            | unet_rt::Error::InvalidArgument { .. }
            | unet_rt::Error::DeviceUnavailable(_),
        ) => ExitCode::from(2),
        CliError::Engine(_) => ExitCode::from(1),
    }
}

pub(crate) fn run(args: &SegmentArgs) -> Result<ExitCode, CliError> {
    let device = unet_rt::parse_device(&args.device)?;
    let model = unet_rt::Model::load(&args.model, device)?;
    if model.metadata().is_none() {
        return Err(CliError::Usage(format!("{}: the model has no unet_rt metadata", args.model.display())));
    }
    std::fs::create_dir_all(&args.output)
        .map_err(|e| CliError::Usage(format!("cannot create output folder {}: {e}", args.output.display())))?;
    let mut failures = 0usize;
    for input in &args.inputs {
        match segment_one(&model, input, args) {
            Ok(written) => println!("{} -> {}", input.display(), written.display()),
            Err(err) => {
                failures += 1;
                eprintln!("unet-rt: error: {err}");
            }
        }
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn segment_one(model: &unet_rt::Model, input: &Path, args: &SegmentArgs) -> Result<PathBuf, FileError> {
    let engine_err = |e: unet_rt::Error| FileError { path: input.to_owned(), message: e.to_string() };
    let image = read_image(input)?;
    if image.ndim() != 2 {
        return Err(FileError { path: input.to_owned(), message: format!("expected a 2-D image, got shape {:?}", image.shape()) });
    }
    let raw = unet_rt::forward_whole(model, image.insert_axis(Axis(0)).view()).map_err(engine_err)?;
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    match args.output_kind {
        OutputKind::Raw => {
            let path = args.output.join(format!("{stem}.npy"));
            write_npy(&path, &raw)?;
            Ok(path)
        }
        OutputKind::Labels => {
            let labels = argmax(&raw);
            let wide = raw.shape()[0] > 256;
            match args.format {
                Format::Tif => {
                    let path = args.output.join(format!("{stem}.tif"));
                    let labels2 = labels.into_dimensionality::<ndarray::Ix2>().map_err(|e| FileError { path: path.clone(), message: e.to_string() })?;
                    write_labels_tiff(&path, &labels2, wide)?;
                    Ok(path)
                }
                Format::Npy => {
                    let path = args.output.join(format!("{stem}.npy"));
                    if wide { write_npy(&path, &labels)? } else { write_npy(&path, &labels.mapv(|v| v as u8))? }
                    Ok(path)
                }
            }
        }
    }
}

/// Class index of the largest channel per pixel (first one on ties, as
/// `numpy.argmax`).
fn argmax(raw: &ArrayD<f32>) -> ArrayD<u16> {
    let mut best = raw.index_axis(Axis(0), 0).to_owned();
    let mut labels = ArrayD::<u16>::zeros(best.raw_dim());
    for (c, channel) in raw.axis_iter(Axis(0)).enumerate().skip(1) {
        ndarray::Zip::from(&mut labels).and(&mut best).and(&channel).for_each(|l, b, &v| {
            if v > *b {
                *b = v;
                *l = c as u16;
            }
        });
    }
    labels
}

pub(crate) fn info(path: &Path) -> Result<ExitCode, CliError> {
    let model = unet_rt::Model::load(path, unet_rt::Device::Cpu)?;
    match model.metadata() {
        Some(m) => {
            println!("model        {}", path.display());
            println!("name         {}", m.name);
            if !m.description.is_empty() {
                println!("description  {}", m.description);
            }
            println!("architecture {} ({}D, {:?} padding)", m.architecture, m.spatial_dims, m.padding);
            println!("channels     {} in, {} out ({:?})", m.in_channels, m.out_channels, m.output);
            println!("classes      {}", m.class_names.join(", "));
            println!("input sizes  {} + k * {} (halo {} px per side)", m.size_offset, m.size_multiple, m.halo);
            println!("normalize    {:?}", m.normalization);
            if !m.training.is_null() {
                println!("training     {}", m.training);
            }
        }
        None => println!("model {}: TorchScript without unet_rt metadata", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}
