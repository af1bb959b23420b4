//! Whole-image inference: mirror-pad the image once and run one forward pass.
//! It is the reference that the tiled engine must reproduce, and the simple
//! path for images small enough to fit in one pass.

use ndarray::{ArrayD, ArrayViewD, Axis, Dimension, IxDyn, Slice};

use crate::error::{Error, Result};
use crate::geometry::reflect_index;
use crate::metadata::{Metadata, Padding};
use crate::model::Model;
use crate::normalize;

/// The padding `(before, after)` per spatial axis that makes an axis of
/// `size` pixels a valid network input covering the whole axis: `halo`
/// before, and after enough to reach the next valid size.
pub fn whole_image_padding(size: usize, meta: &Metadata) -> (usize, usize) {
    let halo = match meta.padding {
        Padding::Valid => meta.halo,
        Padding::Same => 0,
    };
    let mut total = size + 2 * halo;
    while !meta.is_valid_size(total) || total <= 2 * halo {
        total += 1;
    }
    (halo, total - size - halo)
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

/// Normalises a `(C, spatial...)` image as the metadata says, mirror-pads it
/// to a valid size, runs one forward pass and crops the output to the image:
/// returns the raw output `(classes, spatial...)`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a model without metadata or an image of the
/// wrong rank; inference errors from libtorch.
pub fn forward_whole(model: &Model, image: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
    let meta = model.metadata().ok_or_else(|| Error::InvalidArgument {
        argument: "model",
        message: "whole-image inference needs a model with unet_rt metadata".to_owned(),
    })?;
    if image.ndim() != meta.spatial_dims + 1 {
        return Err(Error::InvalidArgument {
            argument: "image",
            message: format!(
                "expected (channels, {}) of rank {}, got shape {:?}",
                if meta.spatial_dims == 2 { "y, x" } else { "z, y, x" },
                meta.spatial_dims + 1,
                image.shape()
            ),
        });
    }
    let affine = normalize::resolve(&meta.normalization, image.iter().map(|&v| f64::from(v)));
    let normalized = image.mapv(|v| affine.apply(v));
    let pads: Vec<(usize, usize)> = image.shape()[1..].iter().map(|&s| whole_image_padding(s, meta)).collect();
    let padded = pad_reflect(&normalized.view(), &pads).insert_axis(Axis(0));
    let output = model.forward_array(padded.view())?.index_axis_move(Axis(0), 0);
    let mut cropped = output.view();
    for (d, &size) in image.shape()[1..].iter().enumerate() {
        cropped.slice_axis_inplace(Axis(d + 1), Slice::from(0..size));
    }
    Ok(cropped.to_owned())
}
