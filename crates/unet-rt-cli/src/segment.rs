//! `unet-rt segment`: every input read, segmented and written in turn.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, ArrayD, ArrayViewD, Axis};
use unet_rt::{
    Activation, Model, NaturalElement, Options, OutputElement, OutputMode, Pixel, Segmenter,
};

use crate::args::{Format, SegmentArgs};
use crate::axes::{self, Arranged};
use crate::errors::{in_flag_words, usage, CliError, FileError, EXIT_FAILURE, EXIT_OK};
use crate::limits::{bytes_of, elements, try_filled, try_map, Memory};
use crate::ome_tiff::OmeResult;
use crate::progress::Bars;
use crate::read::{png_pixels_per_metre, read_image, with_pixels};
use crate::report::{self, Report, Status};
use crate::write::{source_name, write_output, Output};
use crate::{atomic, inputs, interrupt, loader, ome_zarr, output, overlay, panics};

/// Everything a single input needs.
struct Context<'a> {
    args: &'a SegmentArgs,
    model: Model,
    options: Options,
    /// How labels become objects (instances, the overlay's outlines).
    read_out: unet_rt::instances::ReadOut,
    bars: &'a Bars,
}

/// Runs the command; returns the exit status.
pub(crate) fn run(args: &SegmentArgs) -> Result<u8, CliError> {
    check_flags(args)?;
    let model = loader::load(&args.model)?;
    if interrupt::requested() {
        return Err(CliError::Interrupted);
    }
    check_model(&model, args)?;
    let info = model.info();
    if let Some(warning) = info.exactness.warning().filter(|_| !args.quiet) {
        crate::output::stderr_line(&format!("unet-rt: warning: {warning}"));
    }
    let options = Options {
        // Instances are read out of the labels here, page by page:
        // the overlay shows the labels' classes, and ids that fit are
        // written as u16.
        output: match args.output_kind {
            OutputMode::Instances => OutputMode::Labels,
            mode => mode,
        },
        tile: loader::tile_for(args.model.tile.as_ref().map(|t| t.0.as_slice()), info)?,
        whole: loader::whole_for(args.model.tile.as_ref().map(|t| t.0.as_slice())),
        batch_size: loader::batch_size(&args.model),
        tta: args.model.tta,
        object_size: args.object_size,
        nonfinite: args.nonfinite,
        cancel: Some(interrupt::flag()),
        ..Options::default()
    };
    // Checks the tile against the model once, as a usage error.
    Segmenter::new(model.clone(), options.clone())?;
    // The read-out the labels are turned into objects by (the overlay
    // outlines instances whatever the output kind; check_flags refused
    // --min-size and --fill-holes where nothing reads them).
    let read_out = Segmenter::new(
        model.clone(),
        Options {
            output: OutputMode::Instances,
            object_size: args.object_size,
            min_size: args.min_size,
            fill_holes: args.fill_holes,
            ..Options::default()
        },
    )?
    .read_out()?;
    prepare_folder(&args.output)?;
    let swept = atomic::sweep_stale(&args.output);
    if !args.quiet {
        for line in swept_lines(&args.output, &swept) {
            output::stderr_line(&line);
        }
    }

    let found = inputs::discover(&args.inputs);
    let bars = Bars::new(found.len(), !args.quiet);
    let context = Context {
        args,
        model,
        options,
        read_out,
        bars: &bars,
    };
    let all_inputs: HashSet<PathBuf> = found
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .flat_map(|p| input_keys(p))
        .collect();
    let mut claimed: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut failures = 0usize;
    // Written and skipped inputs, for the closing totals.
    let (mut written, mut skipped) = (0usize, 0usize);
    let mut found = found.into_iter();
    for item in found.by_ref() {
        if interrupt::requested() {
            cancelled_line(args, &item);
            break;
        }
        let report = match item {
            Err(e) => failed(&e.path.clone(), e, Instant::now()),
            Ok(input) => {
                let report = process_caught(&context, &input, &all_inputs, &mut claimed);
                // A failed input wrote nothing: its result names are free
                // for the next input (a truncated a.png kept a.tif's result
                // from being written, refused as "would replace that of a.png").
                if report.status == Status::Failed {
                    claimed.retain(|_, owner| *owner != input);
                }
                report
            }
        };
        bars.file_done();
        match report.status {
            Status::Failed => failures += 1,
            Status::Ok => written += 1,
            Status::Skipped => skipped += 1,
            Status::Cancelled => {}
        }
        if let Some(error) = report
            .error
            .as_ref()
            .filter(|_| report.status == Status::Failed)
        {
            bars.eprintln(&format!(
                "unet-rt: error: {}: {error}",
                report::shown(&report.input)
            ));
        }
        if args.json {
            bars.println(&report.json());
        } else if let Some(line) = report.text().filter(|_| !args.quiet) {
            bars.println(&line);
        }
        if report.status == Status::Cancelled {
            break;
        }
    }
    // With --json every input has its line: those never started too.
    for item in found {
        cancelled_line(args, &item);
    }
    bars.finish();
    if interrupt::requested() {
        atomic::remove_all();
        output::stderr_line("unet-rt: interrupted; results written so far are complete");
        return Ok(interrupt::exit_status());
    }
    // Closing totals for people: dozens of lines were to be counted.
    let inputs = written + skipped + failures;
    if !args.json && !args.quiet && inputs > 1 {
        output::stdout_line(&totals_line(written, skipped, failures));
    }
    Ok(if failures == 0 { EXIT_OK } else { EXIT_FAILURE })
}

/// The closing line of a run over several inputs: `5 inputs: 3 written, 1
/// skipped, 1 failed` (categories with none left out, but the written).
fn totals_line(written: usize, skipped: usize, failed: usize) -> String {
    let mut line = format!("{} inputs: {written} written", written + skipped + failed);
    for (n, what) in [(skipped, "skipped"), (failed, "failed (errors above)")] {
        if n > 0 {
            line.push_str(&format!(", {n} {what}"));
        }
    }
    line
}

/// The `cancelled` JSON line of an input an interruption left unstarted
/// (nothing without `--json`).
fn cancelled_line(args: &SegmentArgs, item: &Result<PathBuf, FileError>) {
    if args.json {
        let path = match item {
            Ok(path) => path,
            Err(e) => &e.path,
        };
        output::stdout_line(&Report::new(path, Status::Cancelled).json());
    }
}

/// Flag combinations that cannot work, whatever the model.
fn check_flags(args: &SegmentArgs) -> Result<(), CliError> {
    let float = matches!(
        args.output_kind,
        OutputMode::Probabilities | OutputMode::Raw
    );
    if float && args.format == Format::Png {
        return Err(usage(
            "PNG cannot hold float probabilities or raw output: use --format tif or npy",
        ));
    }
    if args.levels > 1 && args.format != Format::Zarr {
        return Err(usage("--levels applies to --format zarr"));
    }
    let read_out = Options {
        output: args.output_kind,
        min_size: args.min_size,
        fill_holes: args.fill_holes,
        ..Options::default()
    };
    // The overlay outlines instances whatever the output kind.
    read_out
        .check_read_out_used(args.output_kind == OutputMode::Instances || args.overlay)
        .map_err(|err| usage(in_flag_words(&err)))?;
    if float && args.format == Format::Zarr {
        return Err(usage(
            "--format zarr writes OME-Zarr label images (labels or instances): use --format tif or npy for probabilities and raw output",
        ));
    }
    Ok(())
}

/// Output kinds the model cannot give, as usage errors before any input.
fn check_model(model: &Model, args: &SegmentArgs) -> Result<(), CliError> {
    let info = model.info();
    let classes = matches!(
        args.output_kind,
        OutputMode::Labels | OutputMode::Instances | OutputMode::Probabilities
    );
    if info.output == Activation::Identity && (classes || args.overlay) {
        return Err(usage(
            "the model's output is \"identity\" (regression), which has no classes: use --output-kind raw without --overlay",
        ));
    }
    let labels = matches!(args.output_kind, OutputMode::Labels | OutputMode::Instances);
    if let Some((reason, instead)) = info.output.no_labels(info.out_channels).filter(|_| labels) {
        return Err(usage(format!("{reason}: use --output-kind {instead}")));
    }
    Ok(())
}

/// Creates the output folder and checks that files can be created in it.
fn prepare_folder(dir: &Path) -> Result<(), CliError> {
    // "cannot create the output folder ok.png: File exists" read as a
    // permission problem: -o names a folder, and this is a file.
    if dir.exists() && !dir.is_dir() {
        return Err(usage(format!(
            "-o {} is a file: -o names the folder the results are written into",
            dir.display()
        )));
    }
    // A symbolic link whose target is missing (or a loop) "exists" to
    // create_dir_all, which then said "File exists".
    if !dir.exists() && dir.symlink_metadata().is_ok() {
        let target = std::fs::read_link(dir)
            .map(|t| format!(" to {}", t.display()))
            .unwrap_or_default();
        return Err(usage(format!(
            "-o {} is a symbolic link{target} that leads to no folder (its target is missing, or the links loop): \
             create the target or name another folder",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        usage(format!(
            "cannot create the output folder {}: {e}",
            dir.display()
        ))
    })?;
    let probe = dir.join(format!("{}{}", atomic::WRITE_TEST, std::process::id()));
    std::fs::File::create(&probe).map_err(|e| {
        usage(format!(
            "the output folder {} is not writable: {e}",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// What the sweep of the output folder did, said as notes (names as
/// [`report::shown`] prints them).
fn swept_lines(dir: &Path, swept: &atomic::Swept) -> Vec<String> {
    let names = |names: &[String]| {
        names
            .iter()
            .map(|n| report::shown(Path::new(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dir = report::shown(dir);
    [
        (
            &swept.removed,
            "removed",
            "unfinished file(s) that runs killed before they ended left in",
            "",
        ),
        (
            &swept.restored,
            "put back",
            "previous result(s) in",
            " that a killed run had moved aside",
        ),
    ]
    .into_iter()
    .filter(|(list, ..)| !list.is_empty())
    .map(|(list, verb, what, why)| {
        format!(
            "unet-rt: note: {verb} {} {what} {dir}{why}: {}",
            list.len(),
            names(list)
        )
    })
    .collect()
}

/// Where `--overlay` writes the overlay of the input named `stem` whose
/// result is `output`.
fn overlay_path(output: &Path, stem: &OsStr) -> PathBuf {
    output.with_file_name(with_suffix(stem, "_overlay.png"))
}

/// `stem` followed by `suffix`, whatever its encoding.
fn with_suffix(stem: &OsStr, suffix: &str) -> OsString {
    let mut name = stem.to_owned();
    name.push(suffix);
    name
}

/// The names an input must not be replaced under: its own (the folder
/// resolved) and, for a symbolic link, the file it leads to. An input read
/// through a link in another folder was replaced by its own labels when
/// results went to the folder of the file itself.
fn input_keys(path: &Path) -> impl Iterator<Item = PathBuf> {
    let target = std::fs::canonicalize(path).ok();
    std::iter::once(same_file_key(path)).chain(target)
}

/// A path's identity for comparisons: its folder resolved, so that `a.tif`
/// and `./a.tif` are the same file. A result's name itself is not resolved:
/// a result replaces a link of its name, never the file it leads to.
fn same_file_key(path: &Path) -> PathBuf {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_owned(),
    }
}

fn failed(input: &Path, error: FileError, start: Instant) -> Report {
    let mut report = Report::new(
        input,
        if error.interrupted {
            Status::Cancelled
        } else {
            Status::Failed
        },
    );
    report.seconds = start.elapsed().as_secs_f64();
    // The message names the file already (the report's input); keep the reason.
    report.error = Some(if error.path == input {
        error.message
    } else {
        error.to_string()
    });
    report
}

/// [`process`], with a panic (a bug) turned into this input's failure, so
/// that the other inputs are still processed.
fn process_caught(
    ctx: &Context<'_>,
    input: &Path,
    all_inputs: &HashSet<PathBuf>,
    claimed: &mut HashMap<PathBuf, PathBuf>,
) -> Report {
    let start = Instant::now();
    panics::catch(|| process(ctx, input, all_inputs, claimed)).unwrap_or_else(|message| {
        // The temporary file of a result being written, if any.
        atomic::remove_all();
        failed(
            input,
            FileError::new(input, format!("internal error: {message}; {}", panics::BUG)),
            start,
        )
    })
}

fn process(
    ctx: &Context<'_>,
    input: &Path,
    all_inputs: &HashSet<PathBuf>,
    claimed: &mut HashMap<PathBuf, PathBuf>,
) -> Report {
    let start = Instant::now();
    // Names that are not UTF-8 are kept as they are.
    let stem = input.file_stem().unwrap_or(OsStr::new("image"));
    let output = ctx.args.output.join(with_suffix(
        stem,
        &format!(".{}", ctx.args.format.extension()),
    ));
    let overlay = ctx.args.overlay.then(|| overlay_path(&output, stem));
    // Every file this input writes: none may be an input (its own
    // included: the image would be lost) or another input's result.
    let writes: Vec<&Path> = std::iter::once(output.as_path())
        .chain(overlay.as_deref())
        .collect();
    let keys: Vec<PathBuf> = writes.iter().map(|w| same_file_key(w)).collect();
    for (written, key) in writes.iter().zip(&keys) {
        let clash = if let Some(first) = claimed.get(key) {
            format!(
                "its result {} would replace that of {}: rename one of them",
                written.display(),
                first.display()
            )
        } else if all_inputs.contains(key) {
            let whose = if input_keys(input).any(|own| own == *key) {
                "the input itself"
            } else {
                "another input"
            };
            format!(
                "its result {} would replace {whose}: choose another --output folder",
                written.display()
            )
        } else {
            continue;
        };
        return failed(input, FileError::new(input, clash), start);
    }
    for key in keys {
        claimed.insert(key, input.to_owned());
    }
    // A finished result: a file, or for zarr a store (a folder of that
    // name that is neither is no result), and the overlay asked for (a run
    // without --overlay before left none, and resuming skipped it).
    // Looked at only for --skip-existing (it reads the result's header).
    // Its kind (and a store's levels) as this run's, and this input's: a
    // result recording another input's name (`a.tif`'s, where the input is
    // `a.npy`) is not this one's.
    let source = recorded_source(input);
    let finished = || match ctx.args.format {
        Format::Zarr => atomic::result_store(&output).is_some_and(|mark| {
            mark.output == zarr_label_kind(ctx)
                && mark.levels == ctx.args.levels.max(1)
                && mark.source.is_none_or(|s| s == source)
        }),
        _ => output.is_file() && holds_this_kind(ctx, &output, &source),
    } && overlay.as_deref().is_none_or(Path::is_file);
    if ctx.args.skip_existing && finished() {
        let mut report = Report::new(input, Status::Skipped);
        report.output = Some(output);
        return report;
    }
    // A folder removed or renamed during the run: each input was segmented
    // in full, then failed to be written.
    if !ctx.args.output.is_dir() {
        let gone = format!(
            "the output folder {} is gone (removed or renamed during the run)",
            ctx.args.output.display()
        );
        return failed(input, FileError::new(input, gone), start);
    }
    let replaceable =
        atomic::check_replaceable(&output, ctx.args.format == Format::Zarr).and_then(|()| {
            overlay
                .as_deref()
                .map_or(Ok(()), |o| atomic::check_replaceable(o, false))
        });
    if let Err(message) = replaceable {
        return failed(input, FileError::new(input, message), start);
    }
    ctx.bars.start_file(&input.display().to_string(), 0);
    match segment_file(ctx, input, &output, overlay.as_deref()) {
        Ok((shape, objects)) => {
            let mut report = Report::new(input, Status::Ok);
            report.output = Some(output);
            report.shape = Some(shape);
            report.objects = objects;
            report.seconds = start.elapsed().as_secs_f64();
            report
        }
        Err((error, shape)) => {
            let mut report = failed(input, error, start);
            report.shape = shape;
            report
        }
    }
}

type FileResult<T> = Result<T, (FileError, Option<Vec<usize>>)>;

/// Whether the result file at `output` holds this run's output kind, by
/// the element type its header declares: labels (uint8, or uint16 beyond
/// 256 classes), instance ids (uint16 or uint32), probabilities and raw
/// output (float32), recording `source` as its input where it records one.
/// `--skip-existing` counted a result of another kind (`-k instances`
/// before, `-k labels` now) as done, and another input's result.
fn holds_this_kind(ctx: &Context<'_>, output: &Path, source: &str) -> bool {
    let Some((element, recorded)) = crate::read::stored_result(output) else {
        return false;
    };
    if recorded.is_some_and(|r| r != source) {
        return false;
    }
    match ctx.args.output_kind {
        // `u16` when the objects fit, else `u32` (see `instances`).
        OutputMode::Instances => matches!(element, "uint16" | "uint32"),
        kind => element == kind.natural_element(ctx.model.info().out_channels).name(),
    }
}

/// The name of a `.zarr` result's label image: its output kind.
fn zarr_label_kind(ctx: &Context<'_>) -> &'static str {
    if ctx.args.output_kind == OutputMode::Instances {
        "instances"
    } else {
        "labels"
    }
}

/// Reads, segments and writes one file; returns the input shape and the
/// number of objects (instances).
fn segment_file(
    ctx: &Context<'_>,
    input: &Path,
    output: &Path,
    overlay_path: Option<&Path>,
) -> FileResult<(Vec<usize>, Option<usize>)> {
    let info = ctx.model.info();
    let image = read_image(input)
        .and_then(|image| image.into_pages_for(info.spatial_dims, ctx.args.axes.as_deref()))
        .map_err(|m| (FileError::new(input, m), None))?
        .into_volume_for(info.spatial_dims, ctx.args.axes.as_deref());
    let shape = image.pixels.shape().to_vec();
    // Reported as the file has it (a hyperstack's time points and slices).
    let file_shape: Vec<usize> = match image.merged_pages {
        Some([(_, outer), (_, inner)]) => [outer, inner]
            .into_iter()
            .chain(shape.iter().skip(1).copied())
            .collect(),
        None => shape.clone(),
    };
    let fail = |e: FileError| (e, Some(file_shape.clone()));
    let axes = axes::choose_axes(
        ctx.args.axes.as_deref(),
        image.axes.as_deref(),
        image.pages_named,
        &shape,
        info,
    )
    .map_err(|m| {
        fail(FileError::new(
            input,
            format!("{m} ({} image)", image.pixels.type_name()),
        ))
    })?;
    let objects = with_pixels!(&image.pixels, a => {
        let arranged = axes::arrange(a.view(), &axes, info).map_err(|m| fail(FileError::new(input, m)))?;
        let spatial = arranged.view.shape().get(2..).unwrap_or_default();
        if ctx.args.format == Format::Zarr {
            ome_zarr::check_levels(ctx.args.levels, spatial).map_err(|m| fail(FileError::new(input, m)))?;
        }
        if ctx.args.format == Format::Png {
            let pages = arranged.stacked.then(|| arranged.view.shape()[0]);
            let shape: Vec<usize> = pages.into_iter().chain(spatial.iter().copied()).collect();
            crate::write::check_png_shape(&shape).map_err(|m| fail(FileError::new(input, m)))?;
        }
        let mut result = compute(ctx, input, &arranged).map_err(fail)?;
        // A hyperstack's time points and slices, segmented as one axis of
        // pages, are two axes again in the result (its labels said one
        // volume of every plane, the slices' spacing across time points).
        let merged = image.merged_pages.filter(|_| arranged.stacked);
        if let Some([(_, outer), (_, inner)]) = merged {
            result.output = result.output.with_pages_split([outer, inner]).map_err(|m| fail(FileError::new(input, m)))?;
        }
        let pages = page_axes(info, &axes, merged);
        let image_view = match merged {
            Some([(_, outer), (_, inner)]) if ctx.args.format == Format::Zarr => {
                let shape: Vec<usize> = [outer, inner].into_iter().chain(arranged.view.shape()[1..].iter().copied()).collect();
                arranged.view.to_shape(shape).map_err(|e| fail(FileError::new(input, format!("internal error: {e}"))))?
            }
            _ => ndarray::CowArray::from(arranged.view.view()),
        };
        // The overlay first: the result's name is what --skip-existing
        // takes for a finished input, so it comes last.
        let mut overlay_written = None;
        if let (Some(path), Some(classes)) = (overlay_path, &result.classes) {
            let plane = middle_plane(arranged.view.index_axis(Axis(1), 0)).map_err(|m| fail(FileError::new(input, m)))?;
            let per_metre = image.calibration.as_ref().and_then(|c| png_pixels_per_metre(c.micrometres));
            overlay::write_overlay(path, plane, classes.view(), &result.read_out, per_metre).map_err(fail)?;
            overlay_written = Some(path);
        }
        let written = if ctx.args.format == Format::Zarr {
            let classes = class_names(&ctx.model);
            let label = ome_zarr::LabelInfo {
                kind: zarr_label_kind(ctx),
                classes: (ctx.args.output_kind == OutputMode::Labels).then_some(classes.as_slice()),
                pages: &pages,
                levels: usize::try_from(ctx.args.levels).unwrap_or(1),
                micrometres: image.calibration.as_ref().map_or([None; 3], |c| c.micrometres),
                source: &recorded_source(input),
            };
            ome_zarr::write_ome_zarr(output, &image_view.view(), arranged.stacked, &result.output, &label)
        } else {
            let letters = result_axes(&pages, info, arranged.stacked, &result.output);
            let tags = image.calibration.as_ref().and_then(|c| c.result_tags());
            let classes = class_names(&ctx.model);
            let name = input.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            let ome = OmeResult {
                micrometres: image.calibration.as_ref().map_or([None; 3], |c| c.micrometres),
                channel_names: &classes,
                name: &name,
            };
            write_output(output, &result.output, ctx.args.format, &letters, tags, &ome)
        };
        if let Err(e) = written {
            // The overlay of a result that could not be written would stay
            // beside nothing (a full disk, a file size limit).
            if let Some(path) = overlay_written {
                let _ = std::fs::remove_file(path);
            }
            return Err(fail(e));
        }
        result.objects
    });
    Ok((file_shape, objects))
}

/// The input's file name as its results record it ([`source_name`]).
fn recorded_source(input: &Path) -> String {
    source_name(&input.file_name().unwrap_or_default().to_string_lossy())
}

/// The axes a stack's pages are in a result, lower case: a 2-D model
/// reads `z` as pages; a 3-D model's batch is time; a hyperstack's time
/// points and slices (`merged`) are both, in the file's order.
fn page_axes(info: &unet_rt::ModelInfo, axes: &str, merged: Option<[(char, usize); 2]>) -> String {
    if let Some([(outer, _), (inner, _)]) = merged {
        return [outer, inner].iter().collect();
    }
    if info.spatial_dims == 2 && axes.contains('z') {
        "z".to_owned()
    } else {
        "t".to_owned()
    }
}

/// The axes of `output` in tifffile's letters: its `pages` ([`page_axes`])
/// where `stacked`, the classes of float results, the model's spatial axes.
fn result_axes(pages: &str, info: &unet_rt::ModelInfo, stacked: bool, output: &Output) -> String {
    let pages = if stacked {
        pages.to_ascii_uppercase()
    } else {
        String::new()
    };
    let classes = matches!(output, Output::F32(_)).then_some('C');
    let spatial = if info.spatial_dims == 3 { "ZYX" } else { "YX" };
    pages
        .chars()
        .chain(classes)
        .chain(spatial.chars())
        .collect()
}

/// The model's class names (its metadata's, else the channel numbers).
fn class_names(model: &Model) -> Vec<String> {
    let names = model
        .metadata()
        .map(|m| m.class_names.clone())
        .unwrap_or_default();
    if names.is_empty() {
        (0..model.info().out_channels)
            .map(|i| i.to_string())
            .collect()
    } else {
        names
    }
}

/// What [`compute`] returns.
struct Computed {
    output: Output,
    /// How the labels become objects (for the overlay too).
    read_out: unet_rt::instances::ReadOut,
    /// The class map of the overlay's plane (with `--overlay` only).
    classes: Option<Array2<u16>>,
    objects: Option<usize>,
}

/// Segments every page of an arranged image into the requested output.
fn compute<T: Pixel>(
    ctx: &Context<'_>,
    input: &Path,
    arranged: &Arranged<'_, T>,
) -> Result<Computed, FileError> {
    let options = Options {
        progress: Some(ctx.bars.tile_callback()),
        ..ctx.options.clone()
    };
    let engine = |e: unet_rt::Error| FileError::engine(input, e);
    let segmenter = Segmenter::new(ctx.model.clone(), options).map_err(engine)?;
    let pages = arranged.view.shape()[0];
    let tiles = segmenter
        .layout(&arranged.view.shape()[2..])
        .map_err(engine)?
        .plan
        .len();
    ctx.bars
        .start_file(&input.display().to_string(), tiles.saturating_mul(pages));
    let run = |seg: &Segmenter| -> Result<Output, FileError> {
        let out_channels = ctx.model.info().out_channels;
        // Instances run as labels here (see `run`): U32 never comes up.
        Ok(match seg.options().output.natural_element(out_channels) {
            NaturalElement::U16 => Output::U16(run_pages::<T, u16>(seg, arranged, input)?),
            NaturalElement::U8 => Output::U8(run_pages::<T, u8>(seg, arranged, input)?),
            _ => Output::F32(run_pages::<T, f32>(seg, arranged, input)?),
        })
    };
    let result = run(&segmenter)?;
    let read_out = ctx.read_out.clone();
    let classes = match ctx.args.overlay {
        true => Some(
            class_plane(
                &result,
                arranged.stacked,
                ctx.args.output_kind,
                segmenter.model().info().output,
            )
            .map_err(|m| FileError::new(input, m))?,
        ),
        false => None,
    };
    if ctx.args.output_kind != OutputMode::Instances {
        return Ok(Computed {
            output: result,
            read_out,
            classes,
            objects: None,
        });
    }
    let (instances, objects) = match &result {
        Output::U8(labels) => instances(labels.view(), &read_out, arranged.stacked, input),
        Output::U16(labels) => instances(labels.view(), &read_out, arranged.stacked, input),
        _ => {
            return Err(FileError::new(
                input,
                "internal error: instances need labels",
            ))
        }
    }?;
    Ok(Computed {
        output: instances,
        read_out,
        classes,
        objects: Some(objects),
    })
}

/// Segments the pages (batch entries) into one array `([pages,] result...)`
/// in one engine call, whose progress counts the tiles of every page. The
/// result is allocated fallibly, after checking it fits in memory.
fn run_pages<T: Pixel, U: OutputElement>(
    segmenter: &Segmenter,
    arranged: &Arranged<'_, T>,
    input: &Path,
) -> Result<ArrayD<U>, FileError> {
    let view = &arranged.view;
    let mut shape = vec![view.shape()[0]];
    shape.extend(segmenter.output_shape(&view.shape()[1..]));
    let mut out = allocate_result::<U>(&shape).map_err(|m| FileError::new(input, m))?;
    segmenter
        .segment_batch_into(view.view(), out.view_mut(), None)
        .map_err(|e| FileError::engine(input, e))?;
    Ok(if arranged.stacked {
        out
    } else {
        out.index_axis_move(Axis(0), 0)
    })
}

/// A zeroed result of `shape`: checked against the memory available, then
/// allocated fallibly.
fn allocate_result<U: Clone + Default>(shape: &[usize]) -> Result<ArrayD<U>, String> {
    let bytes = elements(shape).and_then(bytes_of::<U>).unwrap_or(u64::MAX);
    Memory::available().check(bytes, &format!("the result (shape {shape:?})"))?;
    try_filled(shape, U::default())
}

/// The model's instances of `labels` (`read_out`), page by page for
/// stacks; `u16` when the objects fit, else `u32`.
fn instances<L: unet_rt::instances::ClassIndex>(
    labels: ArrayViewD<'_, L>,
    read_out: &unet_rt::instances::ReadOut,
    stacked: bool,
    input: &Path,
) -> Result<(Output, usize), FileError> {
    let engine = |e: unet_rt::Error| FileError::engine(input, e);
    let (ids, total, most) = if stacked {
        let mut ids =
            allocate_result::<u32>(labels.shape()).map_err(|m| FileError::new(input, m))?;
        let (mut total, mut most) = (0usize, 0);
        for (page, mut target) in labels.axis_iter(Axis(0)).zip(ids.axis_iter_mut(Axis(0))) {
            let (page_ids, n) = read_out.apply(page).map_err(engine)?;
            target.assign(&page_ids);
            total = total.saturating_add(n);
            most = most.max(n);
        }
        (ids, total, most)
    } else {
        let (ids, n) = read_out.apply(labels).map_err(engine)?;
        (ids, n, n)
    };
    if most > usize::from(u16::MAX) {
        return Ok((Output::U32(ids), total));
    }
    // Every id fits: at most `most` objects per page.
    let narrow = try_map(&ids, |&v| u16::try_from(v).unwrap_or(u16::MAX))
        .map_err(|m| FileError::new(input, m))?;
    Ok((Output::U16(narrow), total))
}

/// The middle plane of a `([pages or z,] y, x)` array: what the overlay shows.
fn middle_plane<A>(mut view: ArrayViewD<'_, A>) -> Result<ndarray::ArrayView2<'_, A>, String> {
    while view.ndim() > 2 {
        let len = view.len_of(Axis(0));
        if len == 0 {
            return Err(format!(
                "no 2-D plane for the overlay in an array of shape {:?}",
                view.shape()
            ));
        }
        view = view.index_axis_move(Axis(0), len / 2);
    }
    view.into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| format!("no 2-D plane for the overlay: {e}"))
}

/// The class map of the overlay's plane, from labels or from channels: the
/// argmax, or for one channel, probability > 0.5 or raw logit > 0
/// ([`Activation::mask_threshold`]).
fn class_plane(
    result: &Output,
    stacked: bool,
    kind: OutputMode,
    activation: Activation,
) -> Result<Array2<u16>, String> {
    Ok(match result {
        Output::U8(l) => middle_plane(l.view())?.mapv(u16::from),
        Output::U16(l) => middle_plane(l.view())?.to_owned(),
        Output::U32(l) => middle_plane(l.view())?.mapv(|v| u16::try_from(v).unwrap_or(u16::MAX)),
        Output::F32(values) => {
            let channel_axis = Axis(usize::from(stacked));
            // Raw one-channel output is the network's own: a logit (0) or,
            // for a network returning probabilities, a probability (0.5).
            let threshold = match kind {
                OutputMode::Raw => activation.mask_threshold(1).unwrap_or(0.0),
                _ => 0.5,
            };
            let classes = values.map_axis(channel_axis, |c| {
                if c.len() == 1 {
                    return u16::from(c[0] > threshold);
                }
                let mut best = 0;
                for (k, &v) in c.iter().enumerate() {
                    if v > c[best] {
                        best = k;
                    }
                }
                u16::try_from(best).unwrap_or(u16::MAX)
            });
            middle_plane(classes.view())?.to_owned()
        }
    })
}
