//! Whole-image inference: mirror-pad the image once and run one forward pass.
//! It is the reference that the tiled engine must reproduce, and the simple
//! path for images small enough to fit in one pass.

use ndarray::{ArrayD, ArrayViewD, Axis, Dimension, IxDyn, Slice};

use crate::error::{Error, Result};
use crate::geometry::reflect_index;
use crate::info::ModelInfo;
use crate::model::Model;
use crate::normalize;

/// The mirror padding `(before, after)` that makes an axis of `size` pixels a
/// valid network input covering the whole axis: the halo before (rounded up
/// to the pooling factor for same-padded models, as the tiled engine does),
/// and after enough to reach the next valid size.
pub fn whole_image_padding(size: usize, info: &ModelInfo) -> (usize, usize) {
    let before = info.effective_halo();
    let total = info.round_up_valid(size.saturating_add(2 * before));
    (before, total.saturating_sub(size + before))
}

/// Mirror-pads the spatial axes (all but the first, the channel axis) of
/// `image` with `numpy.pad(mode="reflect")` semantics.
pub fn pad_reflect(image: &ArrayViewD<'_, f32>, pads: &[(usize, usize)]) -> ArrayD<f32> {
    let mut shape = image.shape().to_vec();
    for (d, &(before, after)) in pads.iter().enumerate() {
        shape[d + 1] += before + after;
    }
    ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let mut src = idx.slice().to_vec();
        for (d, &(before, _)) in pads.iter().enumerate() {
            let i = src[d + 1] as isize - before as isize;
            src[d + 1] = reflect_index(i, image.shape()[d + 1]);
        }
        image[IxDyn(&src)]
    })
}

/// Normalises a `(C, spatial...)` image as the model prescribes, mirror-pads
/// it to a valid size, runs one forward pass and crops the output to the
/// image: returns the raw output `(classes, spatial...)` as `f32`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an image of the wrong rank or channel
/// count; inference errors from libtorch (including running out of memory:
/// this path holds the whole padded image on the device).
pub fn forward_whole(model: &Model, image: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
    let info = model.info();
    if image.ndim() != info.spatial_dims + 1 {
        return Err(Error::InvalidArgument {
            argument: "image",
            message: format!(
                "expected (channels, spatial...) of rank {}, got shape {:?}",
                info.spatial_dims + 1,
                image.shape()
            ),
        });
    }
    let affine = normalize::resolve_view(&info.normalization, &image);
    let normalized = image.mapv(|v| affine.apply(v));
    let pads: Vec<(usize, usize)> = image.shape()[1..]
        .iter()
        .map(|&s| whole_image_padding(s, info))
        .collect();
    let padded = pad_reflect(&normalized.view(), &pads).insert_axis(Axis(0));
    let output = model
        .forward_array(padded.view())?
        .index_axis_move(Axis(0), 0);
    let mut cropped = output.view();
    for (d, (&size, &(before, _))) in image.shape()[1..].iter().zip(&pads).enumerate() {
        let start = before - info.shrink() / 2;
        cropped.slice_axis_inplace(Axis(d + 1), Slice::from(start..start + size));
    }
    Ok(cropped.to_owned())
}
