//! A complete program: segment an image file with a model and save the labels.
//!
//! ```text
//! cargo run --release --example segment -- MODEL.pt IMAGE.npy LABELS.npy [cpu|cuda|auto]
//! ```
//!
//! The image is a 2-D `.npy` array of float32; the labels are written as a
//! uint8 `.npy` array of the same height and width.

use std::process::ExitCode;

use ndarray::{ArrayD, Axis};
use unet_rt::{Model, Options, Segmenter};

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [model_path, image_path, output_path, rest @ ..] = args else {
        return Err("usage: segment MODEL.pt IMAGE.npy LABELS.npy [cpu|cuda|auto]".into());
    };
    let device = unet_rt::parse_device(rest.first().map_or("auto", String::as_str))?;
    // fp32, as every entry point defaults to (the labels the CLI and Python
    // give); `Model::load_with_precision(.., Precision::Auto)` trades a few
    // boundary pixels for bf16's speed.
    let model = Model::load(model_path, device)?;
    println!(
        "{} on {:?} in {}",
        model_path,
        model.device(),
        model.precision()
    );

    // Where the result goes is checked before the work, not after it.
    let folder = std::path::Path::new(output_path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !folder.is_dir() {
        return Err(format!(
            "{output_path}: its folder {} does not exist",
            folder.display()
        )
        .into());
    }
    let image: ArrayD<f32> = ndarray_npy::read_npy(image_path).map_err(|e| {
        format!("{image_path}: cannot be read as a float32 .npy array ({e}); save it with numpy.save(path, image.astype(numpy.float32))")
    })?;
    if image.ndim() != 2 {
        return Err(format!(
            "{image_path}: expected a 2-D image, got shape {:?}",
            image.shape()
        )
        .into());
    }
    // The engine takes (channels, y, x); a view adds the channel axis.
    let input = image.view().insert_axis(Axis(0));

    let options = Options {
        progress: Some(std::sync::Arc::new(|p: unet_rt::Progress| {
            eprint!("\rtile {}/{}", p.done, p.total)
        })),
        ..Options::default()
    };
    let segmenter = Segmenter::new(model, options)?;
    let labels: ArrayD<u8> = segmenter.segment(input)?;
    eprintln!();
    ndarray_npy::write_npy(output_path, &labels).map_err(|e| format!("{output_path}: {e}"))?;
    println!("wrote {output_path} {:?}", labels.shape());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
