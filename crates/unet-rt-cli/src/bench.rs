//! `unet-rt bench`: throughput of the engine on a synthetic image.

use std::time::Instant;

use ndarray::ArrayD;
use serde_json::json;
use unet_rt::{Options, OutputMode, Segmenter};

use crate::args::BenchArgs;
use crate::errors::{usage, CliError, EXIT_OK};
use crate::limits::{bytes_of, elements, try_filled, Memory};
use crate::output::stdout_line;
use crate::{interrupt, loader};

/// Runs the command; returns the exit status.
pub(crate) fn run(args: &BenchArgs) -> Result<u8, CliError> {
    let model = loader::load(&args.model)?;
    let info = model.info().clone();
    let size = match args.size.as_ref().map(|s| s.0.as_slice()) {
        None if info.spatial_dims == 3 => vec![128, 512, 512],
        None => vec![2048, 2048],
        Some([one]) => vec![*one; info.spatial_dims],
        Some(s) if s.len() == info.spatial_dims => s.to_vec(),
        Some(s) => {
            return Err(usage(format!(
                "--size has {} sizes for a {}-D model",
                s.len(),
                info.spatial_dims
            )))
        }
    };
    let options = Options {
        output: args.output_kind,
        tile: loader::tile_for(args.model.tile.as_ref().map(|t| t.0.as_slice()), &info)?,
        whole: loader::whole_for(args.model.tile.as_ref().map(|t| t.0.as_slice())),
        batch_size: loader::batch_size(&args.model),
        tta: args.model.tta,
        cancel: Some(interrupt::flag()),
        conversion: args.conversion.into(),
        ..Options::default()
    };
    // The image is made here: its size is checked before anything else
    // sees it, and it is allocated fallibly.
    let shown = size
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x");
    let pixels = elements(&size).ok_or_else(|| {
        usage(format!(
            "--size {shown} has more pixels than this machine can address"
        ))
    })?;
    // The image and the result of each run, held together (a 100000^2
    // image alone was admitted, and the run then filled the machine).
    // `run_once` holds labels as u16, the other outputs in 4 bytes.
    let result_values = elements(&args.output_kind.result_shape(info.out_channels, &size))
        .and_then(|n| {
            n.checked_mul(if args.output_kind == OutputMode::Labels {
                2
            } else {
                4
            })
        });
    let image_bytes = pixels
        .checked_mul(info.in_channels)
        .and_then(bytes_of::<u16>)
        .zip(result_values.and_then(|v| u64::try_from(v).ok()))
        .and_then(|(image, result)| image.checked_add(result))
        .unwrap_or(u64::MAX);
    Memory::available()
        .check(image_bytes, &format!("a {shown} image and its result"))
        .map_err(|m| usage(format!("--size: {m}")))?;
    let segmenter = Segmenter::new(model.clone(), options)?;
    let layout = segmenter.layout(&size)?;
    let image = synthetic(info.in_channels, &size, interrupt::requested)
        .map_err(|m| usage(format!("--size {shown}: {m}")))?
        .ok_or(CliError::Interrupted)?;

    // One untimed run: libtorch builds its kernels (oneDNN primitives, cuDNN
    // plans) on first use.
    run_once(&segmenter, &image)?;
    let mut seconds = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        run_once(&segmenter, &image)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    let median = median(&mut seconds.clone());
    let mpx = |s: f64| pixels as f64 / s / 1e6;
    let tile = layout.plan.input_tile_shape().to_vec();
    let dims = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    let name = model
        .metadata()
        .map(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".to_owned());
    let threads = tch::get_num_threads();
    let devices = model
        .devices()
        .into_iter()
        .map(unet_rt::device_name)
        .collect::<Vec<_>>()
        .join(",");
    if args.json {
        stdout_line(
            &json!({
                "model": model.path().display().to_string(),
                "name": name,
                "device": devices,
                "precision": model.precision().to_string(),
                "threads": threads,
                "size": size,
                "output": format!("{:?}", args.output_kind).to_lowercase(),
                "tiles": layout.plan.len(),
                "tile": tile,
                "batch": layout.batch_size,
                "conversion": format!("{:?}", args.conversion).to_lowercase(),
                "seconds": seconds,
                "median_seconds": median,
                "megapixels_per_second": mpx(median),
            })
            .to_string(),
        );
        return Ok(EXIT_OK);
    }
    let lines = [
        format!("model      {name} ({})", model.path().display()),
        format!(
            "device     {}, {}, {threads} CPU threads",
            devices,
            model.precision()
        ),
        format!(
            "image      {} ({:.2} Mpx), {} channel(s), uint16 noise",
            dims(&size),
            pixels as f64 / 1e6,
            info.in_channels
        ),
        format!(
            "tiles      {} of {}, batch {}",
            layout.plan.len(),
            dims(&tile),
            layout.batch_size
        ),
        format!("output     {:?}", args.output_kind).to_lowercase(),
        format!("conversion {:?}", args.conversion).to_lowercase(),
        String::new(),
        format!("{:>6}  {:>9}  {:>8}", "run", "seconds", "Mpx/s"),
    ];
    for line in lines {
        stdout_line(&line);
    }
    for (i, s) in seconds.iter().enumerate() {
        stdout_line(&format!("{:>6}  {s:>9.3}  {:>8.2}", i + 1, mpx(*s)));
    }
    stdout_line(&format!(
        "{:>6}  {median:>9.3}  {:>8.2}",
        "median",
        mpx(median)
    ));
    Ok(EXIT_OK)
}

fn run_once(segmenter: &Segmenter, image: &ArrayD<u16>) -> Result<(), CliError> {
    match segmenter.options().output {
        OutputMode::Labels => {
            let _: ArrayD<u16> = segmenter.segment(image.view())?;
        }
        OutputMode::Instances => {
            let _: ArrayD<u32> = segmenter.segment(image.view())?;
        }
        _ => {
            let _: ArrayD<f32> = segmenter.segment(image.view())?;
        }
    }
    Ok(())
}

/// Deterministic 12-bit noise with a smooth background, so that percentile
/// normalization sees a spread of values (`(C, spatial...)`); `None` when
/// `stop()` says so (it is asked every million pixels: a 20000^2 image took
/// half a minute, deaf to Ctrl-C).
fn synthetic(
    channels: usize,
    size: &[usize],
    stop: impl Fn() -> bool,
) -> Result<Option<ArrayD<u16>>, String> {
    let mut shape = vec![channels];
    shape.extend_from_slice(size);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut image = try_filled(&shape, 0u16)?;
    let width = size.last().copied().unwrap_or(1).max(1);
    let values = image.as_slice_mut().ok_or("the image is not contiguous")?;
    for (block, values) in values.chunks_mut(1 << 20).enumerate() {
        if stop() {
            return Ok(None);
        }
        for (i, v) in values.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = ((block << 20) + i) % width;
            let wave = (x as f64 / 37.0).sin() * 800.0 + 1600.0;
            *v = (wave + (state % 1024) as f64) as u16;
        }
    }
    Ok(Some(image))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
