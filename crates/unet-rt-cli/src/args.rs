//! The command line: subcommands, flags and their help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use unet_rt::OutputMode;

const SEGMENT_EXAMPLES: &str = "\
Examples:
  unet-rt segment cells.tif -o results/                 # bundled nuclei model, labels as TIFF
  unet-rt segment data/ -m my.pt -o out/ --device cuda  # every image in a folder, on the GPU
  unet-rt segment 'plate1/*.png' -o out/ --output-kind instances --overlay
  unet-rt segment stack.tif -o out/ --output-kind probabilities --format npy
  unet-rt segment cells.tif -o out/ --output-kind instances --format zarr   # OME-Zarr for napari
  unet-rt segment volume.npy -m cells3d.pt --axes czyx -o out/
  unet-rt segment data/ -o out/ --skip-existing --json > log.jsonl   # resume a folder

Inputs: TIFF (8/16/32/64-bit integer, 32/64-bit float; multi-page, BigTIFF), PNG
(8/16-bit) and NPY (bool, integer, float16, float32 or float64).
Unsigned-integer TIFFs stored MinIsWhite (0 is white) are read as displayed,
inverted (max - v; float ones as 1 - v, signed ones as stored; tifffile.imread
returns the stored values). A multi-page TIFF is a volume for a 3-D model and a
stack of 2-D images, each segmented on its own, for a 2-D model (its result has
one page per input page). Folders contribute their supported files (not
recursively, not hidden ones: names starting with '.'), in name order, and an
error for each that cannot be read (a broken link); glob patterns (* ? [..])
are expanded when the shell did not (** is *: one folder level). One file under
several names (a symbolic link to it, ./a.tif) is segmented once, under its own
name; hard links are files of their own.

Outputs: <output>/<stem>.<format>. labels: uint8 class indices (uint16 beyond 256
classes). instances: objects as the model's read-out makes them (a model with a
boundary class grows interiors into it; otherwise the connected components,
4-connectivity in 2-D, 6 in 3-D, of the non-background pixels), small objects
dropped and holes filled as the model's metadata or --min-size / --fill-holes say,
numbered 1..N in raster order, uint16 (uint32 beyond 65535 objects). probabilities and
raw: float32, channel-first (classes, [z,] y, x), after the pages of a stack or the
time points of a series ((pages, classes, y, x); (t, classes, z, y, x)), TIFF pages
or NPY. A TIFF result
of several pages says its shape and axes as tifffile writes them (ZYX, CZYX, ...),
so tifffile and this tool read it back in that shape.
--format zarr writes <stem>.zarr, an OME-Zarr (NGFF 0.5) image holding the input
(axes [t,] c, [z,] y, x) and the result as its label image labels/<kind> (a colour
and a name per class), which NGFF readers (ome-zarr, napari with its napari-ome-zarr
plugin) open as labels;
--levels N adds resolution levels (every 2^k-th pixel; at most as many as end at one
pixel).
Each file is written to a hidden temporary file and renamed when complete. A file
of a result's name is replaced (another run's result, or any file: keep results in
a folder of their own), except an input, a write-protected file, a folder, and a
.zarr store this tool did not write (its top zarr.json marks it \"unet_rt\").

With --json, each input gives one line on stdout:
  {\"input\", \"output\", \"shape\", \"seconds\", \"status\": ok|skipped|failed|cancelled, \"error\"}
  (and \"objects\", the count, with --output-kind instances)
File names that are not plain UTF-8 text are escaped there, in text lines and
in error messages (\\n, \\t, \\u{1b}, \\xff for a byte that is not UTF-8, and \\\\ for
a backslash, so that no two names read alike).

Exit status: 0 all inputs done, 1 some input failed (the others were processed),
2 usage error (flags, model, device, output folder), 130 interrupted by Ctrl-C
(143 by SIGTERM, 129 by SIGHUP: 128 + the signal's number, as shells report it).";

/// Segment images with U-Net models (TorchScript) on CPU or GPU.
#[derive(Debug, Parser)]
#[command(
    name = "unet-rt",
    about = "Segment images with U-Net models (TorchScript) on CPU or GPU",
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = "Examples:\n  unet-rt segment cells.tif -o results/\n  unet-rt info\n  unet-rt info my-model.pt\n  unet-rt bench --device cuda --precision bf16\n\nRun 'unet-rt segment --help' for inputs, outputs and exit status."
)]
pub(crate) struct Cli {
    /// Print the version, libtorch's version and the devices, then exit.
    #[arg(short = 'V', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Segment image files (TIFF, PNG, NPY): one result file per input.
    #[command(after_help = SEGMENT_EXAMPLES)]
    Segment(SegmentArgs),
    /// Describe a model: metadata, geometry, classes, normalization, training.
    #[command(
        after_help = "Examples:\n  unet-rt info             # the bundled model\n  unet-rt info my.pt --json"
    )]
    Info(InfoArgs),
    /// Measure throughput on a synthetic image.
    #[command(
        after_help = "Examples:\n  unet-rt bench\n  unet-rt bench -m my.pt --device cuda --precision bf16 --size 4096x4096 --tile 1024"
    )]
    Bench(BenchArgs),
    /// Write a model as a bioimage.io package (.zip), validated by
    /// bioimageio.spec (runs `python -m unet_rt.bioimageio export`).
    #[command(
        name = "export-bioimageio",
        after_help = "Examples:\n  unet-rt export-bioimageio -o nuclei.zip            # the bundled model\n  unet-rt export-bioimageio my.pt -o my.zip --author 'A. Person' --license CC-BY-4.0\n\nThe package is built and validated by the Python package (pip install 'unet_rt[bioimageio]'):\n$UNET_RT_PYTHON where set, else the Python next to this binary, else python3 on PATH."
    )]
    ExportBioimageio(ExportArgs),
}

/// `--output-kind`: the engine's [`OutputMode`], with the help of each value.
fn output_modes() -> impl clap::builder::TypedValueParser<Value = OutputMode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("labels").help("One class index per pixel"),
        PossibleValue::new("probabilities").help("Class probabilities, float32, channel-first"),
        PossibleValue::new("instances")
            .help("Objects, as the model's read-out makes them (see --min-size, --fill-holes)"),
        PossibleValue::new("raw").help("The network's raw output, float32, channel-first"),
    ])
    .try_map(|name| name.parse::<OutputMode>())
}

/// File format of the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// TIFF (multi-page for stacks, volumes and channels).
    #[value(alias = "tiff")]
    Tif,
    /// NumPy .npy.
    Npy,
    /// PNG (2-D labels and instances only).
    Png,
    /// OME-Zarr (NGFF 0.5): the image with the result as its label image
    /// (labels and instances only).
    Zarr,
}

impl Format {
    /// The file extension.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Self::Tif => "tif",
            Self::Npy => "npy",
            Self::Png => "png",
            Self::Zarr => "zarr",
        }
    }
}

/// How the model is loaded and run.
#[derive(Debug, Args)]
pub(crate) struct ModelArgs {
    /// The TorchScript model (default: the bundled nuclei model).
    #[arg(short, long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// cpu, cuda, cuda:N, cuda:all (every GPU, sharing each image's
    /// batches), or auto (the first GPU if there is one, else the CPU).
    #[arg(short, long, default_value = "auto")]
    pub device: String,
    /// fp32, bf16, fp16 (GPU only) or auto (bf16 where the hardware runs it
    /// fast; a few boundary pixels may differ from fp32).
    #[arg(short, long, default_value = unet_rt::Precision::DEFAULT_NAME)]
    pub precision: String,
    /// Tile size: N for every axis, or per axis as YxX (ZxYxX for 3-D), or
    /// `whole` (one tile per image: exact for models whose tiles are
    /// approximate); default: on the CPU the fastest by the engine's
    /// throughput model, on a GPU the largest within its memory budget.
    #[arg(short, long, value_name = "N|YxX|whole", value_parser = parse_model_tile, allow_negative_numbers = true)]
    pub tile: Option<Sizes>,
    /// Tiles per forward pass (default: chosen with the tile, within the
    /// memory budget).
    #[arg(short, long, value_name = "N", value_parser = whole_number(1, u64::MAX), allow_negative_numbers = true)]
    pub batch_size: Option<u64>,
    /// CPU threads for libtorch, at most 1024 (default: libtorch's choice, one
    /// per core).
    // libtorch starts every thread asked for: -j 100000000 took all memory.
    #[arg(short = 'j', long, value_name = "N", value_parser = whole_number(1, 1024), allow_negative_numbers = true)]
    pub threads: Option<u64>,
    /// Test-time augmentation: none, flips (every flip of the spatial axes)
    /// or d4 (the 8 flips and quarter turns of the yx plane); the logits are
    /// averaged, costing one forward pass per transform.
    #[arg(long, value_name = "none|flips|d4", default_value = "none", value_parser = parse_tta)]
    pub tta: unet_rt::Tta,
}

/// `--nonfinite`, by the engine's names.
fn parse_nonfinite(text: &str) -> Result<unet_rt::NonFinite, String> {
    text.parse::<unet_rt::NonFinite>()
        .map_err(|e| e.to_string())
}

/// `yes` or `no` (clap's boolish words too: true/false, on/off, 1/0); its
/// own refusal said "value was not a boolean" of `maybe`.
fn parse_yes_no(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "t" | "on" | "1" => Ok(true),
        "no" | "n" | "false" | "f" | "off" | "0" => Ok(false),
        _ => Err("expected yes or no".to_owned()),
    }
}

/// `--tta`, by the engine's names.
fn parse_tta(text: &str) -> Result<unet_rt::Tta, String> {
    text.parse::<unet_rt::Tta>().map_err(|e| e.to_string())
}

/// `unet-rt segment`.
#[derive(Debug, Args)]
pub(crate) struct SegmentArgs {
    /// Image files, folders or glob patterns.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Folder for the results (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to write.
    #[arg(short = 'k', long, value_parser = output_modes(), default_value = "labels")]
    pub output_kind: OutputMode,
    /// Result file format.
    #[arg(short, long, value_enum, default_value_t = Format::Tif)]
    pub format: Format,
    /// With --format zarr: resolution levels of image and labels (level k
    /// keeps every 2^k-th pixel along the model's spatial axes).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = whole_number(1, 16), allow_negative_numbers = true)]
    pub levels: u64,
    /// Axis order of the inputs, from b (batch), c (channels), z, y, x: e.g. yx,
    /// cyx, yxc, zyx, czyx; for a 2-D model z (like b) is a stack of images
    /// (default: from the file format, or guessed from the shape). Results are
    /// written in the model's order ([z,] y, x) whatever the input's: with
    /// --axes xy the result is the input transposed.
    #[arg(long, value_name = "AXES", value_parser = crate::axes::parse_axes)]
    pub axes: Option<String>,
    /// The typical object diameter in the images, in pixels: images are
    /// resampled to the model's training scale (its metadata's object_size)
    /// and the results back, so larger or smaller objects are segmented as
    /// well as the training ones.
    #[arg(long, value_name = "PIXELS", allow_negative_numbers = true)]
    pub object_size: Option<f64>,
    /// Instances: remove objects of fewer pixels of the image (default: the
    /// model's read-out, `unet-rt info`, at its training scale: scaled with
    /// --object-size).
    #[arg(long, value_name = "PIXELS", value_parser = whole_number(0, u64::MAX), allow_negative_numbers = true)]
    pub min_size: Option<u64>,
    /// Instances: whether background enclosed by one object joins it
    /// (default: the model's read-out).
    #[arg(long, value_name = "yes|no", value_parser = parse_yes_no)]
    pub fill_holes: Option<bool>,
    /// NaN or infinite pixels, and such values in the network's output: raise
    /// (refuse the image, naming it) or propagate (let them through to the
    /// result).
    #[arg(long, value_name = "raise|propagate", default_value = "raise", value_parser = parse_nonfinite)]
    pub nonfinite: unet_rt::NonFinite,
    /// Also write <stem>_overlay.png: the image scaled to 8-bit gray with object
    /// outlines in colour (the middle slice of stacks and volumes).
    #[arg(long)]
    pub overlay: bool,
    /// Skip inputs whose result file (and overlay, with --overlay) already exists
    /// and holds this run's output kind (by its element type: labels, instance
    /// ids or float output; for zarr, the kind and --levels its store records)
    /// for this input (TIFF, PNG and zarr results record the input's file name:
    /// a.tif's result is not a.npy's); resumes an interrupted folder. The files
    /// are otherwise taken as they are (another model's labels count as done, as
    /// do NPY results of another input, and a model of more than 256 classes
    /// stores labels as uint16, as instance ids are stored: its two kinds of
    /// TIFF, PNG or NPY result are not told apart).
    #[arg(long)]
    pub skip_existing: bool,
    /// One JSON summary line per input on stdout, instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress bars and no per-file lines (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `unet-rt info`.
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// The TorchScript model (default: the bundled nuclei model).
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `unet-rt export-bioimageio`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The model (default: the bundled nuclei model).
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// The package to write (.zip).
    #[arg(short, long, value_name = "PKG.zip")]
    pub output: PathBuf,
    /// The package's name (default: the model's).
    #[arg(long)]
    pub name: Option<String>,
    /// An author's name (repeatable; default: the unet_rt contributors).
    #[arg(long)]
    pub author: Vec<String>,
    /// SPDX licence identifier of the weights.
    #[arg(long, default_value = "MIT")]
    pub license: String,
    /// Image (.npy, .tif) whose top-left corner is the package's test input
    /// (default: the bundled nuclei image).
    #[arg(long, value_name = "IMAGE")]
    pub test_image: Option<PathBuf>,
}

/// `unet-rt bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image size: N, YxX or ZxYxX (default 2048x2048; 128x512x512 for 3-D models).
    #[arg(short, long, value_name = "YxX", value_parser = parse_tile, allow_negative_numbers = true)]
    pub size: Option<Sizes>,
    /// Timed runs (after one untimed warm-up run).
    #[arg(short, long, default_value_t = 3, value_parser = whole_number(1, u64::MAX), allow_negative_numbers = true)]
    pub repeats: u64,
    /// What to compute.
    #[arg(short = 'k', long, value_parser = output_modes(), default_value = "labels")]
    pub output_kind: OutputMode,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where pixels become network input: auto (on a GPU for 8/16-bit
    /// pixels), host or device (results are identical; this measures the
    /// cost).
    #[arg(long, value_enum, default_value = "auto")]
    pub conversion: ConversionArg,
}

/// `--conversion`: the engine's [`unet_rt::Conversion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ConversionArg {
    /// On the device for models on a GPU, on the host otherwise.
    Auto,
    /// f32 tiles made on the host.
    Host,
    /// Raw pixels to the device (the CPU's libtorch included).
    Device,
}

impl From<ConversionArg> for unet_rt::Conversion {
    fn from(arg: ConversionArg) -> Self {
        match arg {
            ConversionArg::Auto => Self::Auto,
            ConversionArg::Host => Self::Host,
            ConversionArg::Device => Self::Device,
        }
    }
}

/// Sizes per spatial axis, or one for all (`--tile`, `--size`). A newtype,
/// so that clap takes it as one value rather than a list of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sizes(pub Vec<usize>);

/// Parses `N`, `YxX` or `ZxYxX` (`x`, `X` or `,` between sizes).
/// `--tile`: sizes, or `whole` (one tile for the whole image), which is
/// the empty list.
pub(crate) fn parse_model_tile(text: &str) -> Result<Sizes, String> {
    if unet_rt::Options::names_whole(text) {
        return Ok(Sizes(Vec::new()));
    }
    sizes(text, "N, YxX or ZxYxX with positive integers, or \"whole\"")
}

pub(crate) fn parse_tile(text: &str) -> Result<Sizes, String> {
    sizes(text, "N, YxX or ZxYxX with positive integers")
}

/// A parser of whole numbers from `low` to `high` whose refusals say what
/// the flag takes: clap's own called -1 "invalid digit found in string"
/// and 10^23 "number too large to fit in target type".
fn whole_number(low: u64, high: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |text: &str| {
        let range = if high == u64::MAX {
            format!("a whole number from {low}")
        } else {
            format!("a whole number from {low} to {high}")
        };
        match text.trim().parse::<u64>() {
            Ok(n) if (low..=high).contains(&n) => Ok(n),
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                Err(format!("{text:?} is too large: expected {range}"))
            }
            _ => Err(format!("{text:?} is not {range}")),
        }
    }
}

/// Sizes along up to three axes; `expected` says what else was taken.
fn sizes(text: &str, expected: &str) -> Result<Sizes, String> {
    let sizes: Result<Vec<usize>, _> = text
        .split(['x', 'X', ','])
        .map(|s| s.trim().parse::<usize>())
        .collect();
    match sizes {
        Ok(sizes) if !sizes.is_empty() && sizes.len() <= 3 && sizes.iter().all(|&s| s > 0) => {
            Ok(Sizes(sizes))
        }
        // A size, only too large: said as --batch-size and Python say it.
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(format!(
            "{text:?} is too large (at most {} per axis)",
            usize::MAX
        )),
        _ => Err(format!("{text:?} is not a size: expected {expected}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_flags_into_their_types() {
        let cli = Cli::try_parse_from([
            "unet-rt", "segment", "a.tif", "-o", "out", "--tile", "64x128", "--axes", "YX",
        ])
        .unwrap();
        let Some(Command::Segment(args)) = cli.command else {
            panic!("not segment")
        };
        assert_eq!(args.model.tile, Some(Sizes(vec![64, 128])));
        assert_eq!(args.axes.as_deref(), Some("yx"));
        let cli = Cli::try_parse_from(["unet-rt", "bench", "--size", "512", "-r", "2"]).unwrap();
        let Some(Command::Bench(args)) = cli.command else {
            panic!("not bench")
        };
        assert_eq!((args.size, args.repeats), (Some(Sizes(vec![512])), 2));
    }

    #[test]
    fn whole_numbers_are_refused_saying_what_the_flag_takes() {
        let threads = whole_number(1, 1024);
        assert_eq!(threads("8"), Ok(8));
        assert_eq!(
            threads("-1").unwrap_err(),
            "\"-1\" is not a whole number from 1 to 1024"
        );
        assert_eq!(
            threads("1025").unwrap_err(),
            "\"1025\" is not a whole number from 1 to 1024"
        );
        let pixels = whole_number(0, u64::MAX);
        assert_eq!(
            pixels("99999999999999999999999").unwrap_err(),
            "\"99999999999999999999999\" is too large: expected a whole number from 0"
        );
        let refused = Cli::try_parse_from(["unet-rt", "bench", "--repeats", "-1"])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("'--repeats <REPEATS>': \"-1\" is not a whole number from 1"),
            "{refused}"
        );
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_tile("256").unwrap().0, vec![256]);
        assert!(parse_model_tile("whole").unwrap().0.is_empty());
        assert!(parse_tile("whole").is_err());
        assert_eq!(parse_tile("128x256").unwrap().0, vec![128, 256]);
        assert_eq!(parse_tile("16X32,64").unwrap().0, vec![16, 32, 64]);
        assert!(
            parse_tile("0").is_err() && parse_tile("a").is_err() && parse_tile("1x2x3x4").is_err()
        );
        // A size too large for the machine is named so, not "not a size".
        let huge = parse_model_tile("64x99999999999999999999").unwrap_err();
        assert!(huge.contains("too large (at most"), "{huge}");
        assert!(parse_model_tile("ab")
            .unwrap_err()
            .ends_with("or \"whole\""));
    }
}
