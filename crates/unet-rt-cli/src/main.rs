//! `unet-rt`: segment images with U-Net models from the command line.
//!
//! Exit status: 0 when every input was processed, 1 when some input failed
//! at run time (the others are still processed), 2 for usage errors.

mod image_io;
mod segment;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "unet-rt",
    version = long_version(),
    about = "Segment images with U-Net models (TorchScript) on CPU or GPU",
    after_help = "Examples:\n  unet-rt segment cells.tif --model nuclei.pt -o results/\n  unet-rt info nuclei.pt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Segment image files (TIFF, NPY) and write one result per input.
    Segment(SegmentArgs),
    /// Describe a model: metadata, geometry, classes.
    Info {
        /// The TorchScript model file.
        model: PathBuf,
    },
}

/// What to write for each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputKind {
    /// One class index per pixel (uint8, uint16 beyond 255 classes).
    Labels,
    /// The network's raw output, float32, channel-first.
    Raw,
}

/// File format of the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// TIFF (labels only).
    Tif,
    /// NumPy `.npy`.
    Npy,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SegmentArgs {
    /// Input images: 2-D TIFF or NPY files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The TorchScript model (with unet_rt metadata).
    #[arg(short, long)]
    model: PathBuf,
    /// Folder for the results (created if missing).
    #[arg(short, long)]
    output: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value_t = OutputKind::Labels)]
    output_kind: OutputKind,
    /// Result file format (raw output is always NPY).
    #[arg(long, value_enum, default_value_t = Format::Tif)]
    format: Format,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn long_version() -> String {
    // clap wants the string at parse time; libtorch is already loaded then.
    let info = unet_rt::build_info();
    format!(
        "{}\nlibtorch {}\nCUDA {} ({} device(s))\nCPU threads {}",
        info.version,
        info.libtorch_version,
        if info.cuda_available { "available" } else { "unavailable" },
        info.cuda_device_count,
        info.cpu_threads
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment::run(&args),
        Command::Info { model } => segment::info(&model),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("unet-rt: error: {err}");
            segment::exit_code_for(&err)
        }
    }
}
