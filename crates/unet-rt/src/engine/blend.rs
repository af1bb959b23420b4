//! Blending the overlapping tiles of same-padded models (`Blend::Gaussian`,
//! `Blend::Constant`): weighted averages of probabilities (or of raw values
//! for raw output and identity models), then the requested output.
//!
//! The averages need an `f32` accumulator of `(classes, image)` and a weight
//! sum of the image's size: blending costs memory proportional to the image,
//! which crop mode (the default) does not.

use ndarray::{ArrayD, ArrayViewMutD, Axis, IxDyn, Slice, Zip};

use super::gather::Gatherer;
use super::{Layout, OutputElement, OutputMode, Segmenter, Written};
use crate::error::{Error, Result};
use crate::memory;
use crate::metadata::Activation;
use crate::pixel::Pixel;

pub(super) fn run_blended<T: Pixel, U: OutputElement>(
    segmenter: &Segmenter,
    gatherer: &Gatherer<'_, T>,
    layout: &Layout,
    mut out: ArrayViewMutD<'_, U>,
) -> Result<()> {
    let info = segmenter.model.info();
    let weights = layout
        .plan
        .weights()
        .ok_or_else(|| Error::Inference("a blending plan without weights".to_owned()))?;
    let averaged =
        if segmenter.options.output == OutputMode::Raw || info.output == Activation::Identity {
            OutputMode::Raw
        } else {
            OutputMode::Probabilities
        };
    let image = layout.plan.image_shape();
    let with_channels = |spatial: &[usize]| -> Vec<usize> {
        std::iter::once(info.out_channels)
            .chain(spatial.iter().copied())
            .collect()
    };
    let mut sum = memory::try_zeros::<f32>(&with_channels(image), "the blending accumulator")?;
    let mut weight = memory::try_zeros::<f32>(image, "the blending weights")?;
    let tile_shape = with_channels(layout.plan.output_tile_shape());
    let tiles: Vec<_> = layout.plan.tiles().collect();
    segmenter.run::<T, f32, _>(
        gatherer,
        layout,
        &tiles,
        averaged,
        |written: &Written<f32>| {
            accumulate(&mut sum, &mut weight, written, &tile_shape, weights);
        },
    )?;
    // Every pixel has positive weight (the plan guarantees it).
    sum /= &weight.insert_axis(Axis(0));
    match segmenter.options.output {
        OutputMode::Labels | OutputMode::Instances => {
            // Averaged probabilities: one channel is a mask at 0.5.
            let mask = info.output.mask_threshold(info.out_channels).is_some();
            Zip::from(&mut out)
                .and(sum.lanes(Axis(0)))
                .for_each(|o, lane| {
                    let class = if mask {
                        usize::from(lane[0] > 0.5)
                    } else {
                        lane.iter()
                            .enumerate()
                            .fold((0, f32::NEG_INFINITY), |best, (c, &v)| {
                                if v > best.1 {
                                    (c, v)
                                } else {
                                    best
                                }
                            })
                            .0
                    };
                    *o = U::from_f32(class as f32);
                });
        }
        _ => Zip::from(&mut out)
            .and(&sum)
            .for_each(|o, &v| *o = U::from_f32(v)),
    }
    Ok(())
}

/// Adds each tile's weighted values and its weights over its write region.
fn accumulate(
    sum: &mut ArrayD<f32>,
    weight: &mut ArrayD<f32>,
    written: &Written<f32>,
    tile_shape: &[usize],
    weights: &[Vec<f32>],
) {
    let tile_len: usize = tile_shape.iter().product();
    for (tile, data) in written
        .tiles
        .iter()
        .zip(written.data.chunks_exact(tile_len))
    {
        let Ok(mut src) = ndarray::ArrayViewD::from_shape(IxDyn(tile_shape), data) else {
            continue;
        };
        let mut dst_sum = sum.view_mut();
        let mut dst_weight = weight.view_mut();
        for (a, (&from, &len)) in tile.src_start.iter().zip(&tile.write_shape).enumerate() {
            src.slice_axis_inplace(Axis(a + 1), Slice::from(from..from + len));
            let start = tile.write_start[a];
            dst_sum.slice_axis_inplace(Axis(a + 1), Slice::from(start..start + len));
            dst_weight.slice_axis_inplace(Axis(a), Slice::from(start..start + len));
        }
        // The separable window over the written region.
        let window = ArrayD::from_shape_fn(IxDyn(&tile.write_shape), |idx| {
            (0..tile.write_shape.len())
                .map(|a| weights[a][tile.src_start[a] + idx[a]])
                .product::<f32>()
        });
        dst_weight += &window;
        for (mut channel_sum, channel) in dst_sum.outer_iter_mut().zip(src.outer_iter()) {
            Zip::from(&mut channel_sum)
                .and(&channel)
                .and(&window)
                .for_each(|s, &v, &w| *s += v * w);
        }
    }
}
