//! Whole-image inference: mirror-pad the image once and run one forward pass.
//! It is the reference that the tiled engine must reproduce, and the simple
//! path for images small enough to fit in one pass.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use crate::error::{Error, Result};
use crate::geometry::{advance_index, reflect_index};
use crate::info::ModelInfo;
use crate::memory;
use crate::model::Model;
use crate::normalize;
use crate::pixel::Pixel;

/// The mirror padding `(before, after)` that makes an axis of `size` pixels a
/// valid network input covering the whole axis: the halo before (rounded up
/// to the pooling factor for same-padded models, as the tiled engine does),
/// and after enough to reach the next valid size. Saturating: where no valid
/// size covers the axis, `after` is beyond any image ([`forward_whole`]
/// refuses it).
pub fn whole_image_padding(size: usize, info: &ModelInfo) -> (usize, usize) {
    let before = info.effective_halo();
    let total = info.round_up_valid(size.saturating_add(before.saturating_mul(2)));
    (before, total.saturating_sub(size.saturating_add(before)))
}

/// Mirror-pads the spatial axes (all but the first, the channel axis) of
/// `image` with `numpy.pad(mode="reflect")` semantics: `pads` holds
/// `(before, after)` for each spatial axis.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `image` for an array without a channel
/// axis or padded along an empty axis (there is nothing to mirror), and
/// naming `pads` when it does not hold one pair per spatial axis or the
/// padded array is larger than the machine can address or hold.
pub fn pad_reflect(image: &ArrayViewD<'_, f32>, pads: &[(usize, usize)]) -> Result<ArrayD<f32>> {
    let Some(spatial) = image.ndim().checked_sub(1) else {
        return Err(invalid(
            "image",
            "has no axes: expected (channels, spatial...)".to_owned(),
        ));
    };
    if pads.len() != spatial {
        return Err(invalid(
            "pads",
            format!(
                "{pads:?} must hold one (before, after) pair per spatial axis of the image of shape {:?}",
                image.shape()
            ),
        ));
    }
    let mut shape = image.shape().to_vec();
    for (axis, &(before, after)) in pads.iter().enumerate() {
        let size = shape[axis + 1];
        if size == 0 && (before, after) != (0, 0) {
            return Err(invalid(
                "image",
                format!(
                    "is empty along spatial axis {axis} (shape {:?}): there is nothing to mirror",
                    image.shape()
                ),
            ));
        }
        // Below isize::MAX every padded position, less its pad, is an
        // isize for reflect_index (wrapping sums gave small shapes silently).
        shape[axis + 1] = size
            .checked_add(before)
            .and_then(|n| n.checked_add(after))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| {
                invalid(
                    "pads",
                    format!("({before}, {after}) around {size} pixels is beyond any array"),
                )
            })?;
    }
    let count = memory::element_count(&shape, "pads")?;
    let mut data = memory::try_with_capacity::<f32>(
        count,
        memory::bytes_of::<f32>(count),
        "pads",
        "the padded image",
    )?;
    // With no element there is no axis to walk (and maybe none to read).
    if count > 0 {
        let mut index = vec![0usize; shape.len()];
        let mut source = vec![0usize; shape.len()];
        for _ in 0..count {
            source[0] = index[0];
            for (axis, &(before, _)) in pads.iter().enumerate() {
                // Both below isize::MAX (checked above): no overflow.
                let position = index[axis + 1] as isize - before as isize;
                source[axis + 1] = reflect_index(position, image.shape()[axis + 1]);
            }
            data.push(image[IxDyn(&source)]);
            advance_index(&mut index, &shape);
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::Internal(e.to_string()))
}

/// Normalises a `(C, spatial...)` image as the model prescribes, mirror-pads
/// it to a valid size, runs one forward pass and crops the output to the
/// image: returns the raw output `(classes, spatial...)` as `f32`.
///
/// # Errors
/// [`Error::InvalidArgument`] (`image`) for an image of the wrong rank or
/// channel count, with an empty axis, that no valid input size of the model
/// covers, or whose pass needs more memory than the machine has (checked
/// before any pixel is read); inference errors from libtorch (including
/// running out of memory: this path holds the whole padded image on the
/// device).
pub fn forward_whole(model: &Model, image: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
    let info = model.info();
    crate::engine::check_image(info, image.shape())?;
    let pads: Vec<(usize, usize)> = image.shape()[1..]
        .iter()
        .map(|&s| whole_image_padding(s, info))
        .collect();
    // The padded pixels per channel; an axis no valid size covers saturates
    // its padding, and its sum then overflows here.
    let padded = image.shape()[1..]
        .iter()
        .zip(&pads)
        .try_fold(1u128, |n, (&size, &(before, after))| {
            let side = size.checked_add(before)?.checked_add(after)?;
            Some(n.saturating_mul(side as u128))
        })
        .ok_or_else(|| {
            invalid(
                "image",
                format!(
                    "no valid input size of this model covers the image of shape {:?}",
                    image.shape()
                ),
            )
        })?;
    // Before the percentiles are read (minutes on a broadcast view of
    // 80000^2 pixels, before its normalized copy failed to fit): the
    // normalized image, its padded copy, the pass and the cropped output.
    let pixels = image.len() as u128;
    let element = model.precision().kind().elt_size_in_bytes();
    let need = (pixels.saturating_mul(4))
        .saturating_add(padded.saturating_mul(4 * info.in_channels as u128))
        .saturating_add(crate::engine::forward_host_bytes(
            info,
            padded,
            1,
            element,
            model.device(),
        ))
        .saturating_add(
            (pixels / image.shape()[0] as u128).saturating_mul(4 * info.out_channels as u128),
        );
    memory::check_fits(need, "image", "the whole image in one forward pass")?;
    let affine = normalize::resolve_view(&info.normalization, &image, None)?;
    let normalized = image.mapv(|v| v.normalized(affine));
    let padded = pad_reflect(&normalized.view(), &pads)?.insert_axis(Axis(0));
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

fn invalid(argument: &'static str, message: String) -> Error {
    Error::InvalidArgument { argument, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argument<T: std::fmt::Debug>(result: Result<T>) -> &'static str {
        match result {
            Err(Error::InvalidArgument { argument, .. }) => argument,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn pads_mirror_as_numpy_reflect_does() {
        let image = ArrayD::from_shape_vec(IxDyn(&[1, 2, 3]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .expect("a case that succeeds");
        let padded = pad_reflect(&image.view(), &[(0, 1), (2, 3)]).expect("a case that succeeds");
        // numpy.pad([[1, 2, 3], [4, 5, 6]], ((0, 1), (2, 3)), mode="reflect")
        let want = [
            [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0],
            [6.0, 5.0, 4.0, 5.0, 6.0, 5.0, 4.0, 5.0],
            [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0],
        ];
        assert_eq!(padded.shape(), &[1, 3, 8]);
        for (row, values) in want.iter().enumerate() {
            for (column, &v) in values.iter().enumerate() {
                assert_eq!(padded[[0, row, column]], v, "{row} {column}");
            }
        }
        // A 1-pixel axis repeats its pixel; no pads is a copy.
        let dot = ArrayD::from_elem(IxDyn(&[2, 1]), 7.0f32);
        assert_eq!(
            pad_reflect(&dot.view(), &[(3, 2)]).expect("a case that succeeds"),
            ArrayD::from_elem(IxDyn(&[2, 6]), 7.0)
        );
        assert_eq!(
            pad_reflect(&image.view(), &[(0, 0), (0, 0)]).expect("a case that succeeds"),
            image
        );
        // An empty axis with no pads stays empty.
        let empty = ArrayD::<f32>::zeros(IxDyn(&[1, 0, 5]));
        assert_eq!(
            pad_reflect(&empty.view(), &[(0, 0), (1, 1)])
                .expect("a case that succeeds")
                .shape(),
            &[1, 0, 7]
        );
    }

    #[test]
    fn pads_that_cannot_be_made_are_refused_by_name() {
        // Each of these panicked (index out of bounds) or, for the huge pads,
        // wrapped to a small shape silently.
        let empty = ArrayD::<f32>::zeros(IxDyn(&[1, 0, 5]));
        assert_eq!(
            argument(pad_reflect(&empty.view(), &[(1, 1), (0, 0)])),
            "image"
        );
        let image = ArrayD::<f32>::zeros(IxDyn(&[1, 5, 5]));
        assert_eq!(
            argument(pad_reflect(&image.view(), &[(1, 1), (1, 1), (1, 1)])),
            "pads"
        );
        assert_eq!(argument(pad_reflect(&image.view(), &[(1, 1)])), "pads");
        let half = usize::MAX / 2;
        assert_eq!(
            argument(pad_reflect(&image.view(), &[(half, half), (0, 0)])),
            "pads"
        );
        assert_eq!(
            argument(pad_reflect(&image.view(), &[(1 << 40, 0), (1 << 40, 0)])),
            "pads"
        );
        let scalar = ArrayD::<f32>::zeros(IxDyn(&[]));
        assert_eq!(argument(pad_reflect(&scalar.view(), &[])), "image");
    }
}
