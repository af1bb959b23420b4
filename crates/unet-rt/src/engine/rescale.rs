//! `object_size`: segmenting images at the scale the model was trained at.
//!
//! A network learns objects of the size it was shown. When a user's objects
//! are `k` times larger (another objective, another camera), the image is
//! resampled by `1 / k` (linear, per channel), segmented, and the result
//! resampled back to the image's grid (nearest neighbour: labels stay
//! labels, instance ids stay ids). Normalization statistics come from the
//! original image, so resampling never shifts them. Instances are read out
//! of the labels on the image's grid, with the read-out's sizes (growth,
//! the model's `min_size`) scaled to mean what they meant at training
//! ([`super::Segmenter::read_out`]).
//!
//! Both directions map pixel centres the same way (`scipy.ndimage.zoom`
//! with `grid_mode=True`): output pixel `i` of `m` samples the input at
//! `(i + 0.5) * n / m - 0.5`, clamped to the input.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};

use super::invalid;
use crate::error::Result;
use crate::info::ModelInfo;
use crate::memory;
use crate::metadata::{MAX_OBJECT_SIZE, MIN_OBJECT_SIZE};
use crate::pixel::Pixel;

/// Factors this close to 1 leave the image as it is: the resampled grid
/// would be the same to well under a pixel on any image.
const IDENTITY: f64 = 1e-9;

/// The factor an image with objects of `object_size` pixels is resampled by
/// to the model's training scale; `None` when it is 1.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] (`object_size`) when the size is not a
/// finite diameter within the supported bounds or the model records no
/// training object size.
pub fn factor(info: &ModelInfo, object_size: Option<f64>) -> Result<Option<f64>> {
    let Some(size) = object_size else {
        return Ok(None);
    };
    if !(size.is_finite() && (MIN_OBJECT_SIZE..=MAX_OBJECT_SIZE).contains(&size)) {
        return Err(invalid(
            "object_size",
            format!(
                "is {}; give the typical object diameter in pixels, between {MIN_OBJECT_SIZE} and {MAX_OBJECT_SIZE}",
                readable(size)
            ),
        ));
    }
    let Some(trained) = info.object_size else {
        return Err(invalid(
            "object_size",
            "the model records no object size of its training data (metadata field object_size), so there is no scale to resample to".to_owned(),
        ));
    };
    let f = trained / size;
    Ok(((f - 1.0).abs() > IDENTITY).then_some(f))
}

/// The spatial shape an image of `spatial` pixels has once resampled by
/// `factor` (at least one pixel per axis).
///
/// # Errors
/// [`crate::Error::InvalidArgument`] (`object_size`) when a size does not
/// fit in memory arithmetic.
pub fn scaled_shape(spatial: &[usize], factor: f64) -> Result<Vec<usize>> {
    spatial
        .iter()
        .map(|&n| {
            let scaled = (n as f64 * factor).round().max(1.0);
            if scaled > (usize::MAX / 2) as f64 {
                return Err(invalid(
                    "object_size",
                    format!("resampling {spatial:?} by {factor} gives sizes no array can hold"),
                ));
            }
            Ok(scaled as usize)
        })
        .collect()
}

/// Source position and weight of the upper neighbour for each of `m`
/// output samples of an axis of `n` input pixels (linear interpolation).
fn linear_taps(n: usize, m: usize) -> Vec<(usize, usize, f32)> {
    let ratio = n as f64 / m as f64;
    (0..m)
        .map(|i| {
            let x = ((i as f64 + 0.5) * ratio - 0.5).clamp(0.0, (n - 1) as f64);
            let lo = x.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            (lo, hi, (x - lo as f64) as f32)
        })
        .collect()
}

/// The input pixel each of `m` output samples of an axis of `n` takes
/// (nearest neighbour).
fn nearest_taps(n: usize, m: usize) -> Vec<usize> {
    let ratio = n as f64 / m as f64;
    (0..m)
        .map(|i| {
            let x = (i as f64 + 0.5) * ratio - 0.5;
            (x + 0.5).floor().clamp(0.0, (n - 1) as f64) as usize
        })
        .collect()
}

/// `image` `(C, spatial...)` resampled linearly to `spatial` (as `f32`, in
/// the pixels' own units), one axis after the other. `cancelled` is asked
/// between output slices: resampling a large image takes seconds, and
/// Ctrl-C waited for all of it.
///
/// # Errors
/// [`crate::Error::InvalidArgument`]: `object_size` when the steps' buffers
/// exceed the machine's memory (nothing is allocated then), `image` when the
/// result cannot be allocated; [`crate::Error::Cancelled`] once `cancelled`
/// says so.
pub fn resample_image<T: Pixel>(
    image: ArrayViewD<'_, T>,
    spatial: &[usize],
    cancelled: impl Fn() -> bool,
) -> Result<ArrayD<f32>> {
    check_peak(image.shape(), spatial)?;
    let mut current: ArrayD<f32> = {
        let mut a = memory::try_zeros::<f32>(image.shape(), "the image to resample")?;
        a.zip_mut_with(&image, |o, &v| *o = v.to_f32());
        a
    };
    for (k, &m) in spatial.iter().enumerate() {
        let axis = k + 1;
        let n = current.shape()[axis];
        if n == m {
            continue;
        }
        let mut shape = current.shape().to_vec();
        shape[axis] = m;
        let mut next = memory::try_zeros::<f32>(&shape, "the resampled image")?;
        for (i, (lo, hi, w)) in linear_taps(n, m).into_iter().enumerate() {
            if cancelled() {
                return Err(crate::Error::Cancelled);
            }
            let a = current.index_axis(Axis(axis), lo);
            let b = current.index_axis(Axis(axis), hi);
            let mut out = next.index_axis_mut(Axis(axis), i);
            ndarray::Zip::from(&mut out)
                .and(&a)
                .and(&b)
                .for_each(|o, &x, &y| *o = x + (y - x) * w);
        }
        current = next;
    }
    Ok(current)
}

/// `x` as people read it: plain for everyday sizes, in exponent form when
/// plain would spell out hundreds of digits (`1e300`, `1e-300`).
fn readable(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-4..1e9).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Refuses a resampling whose buffers cannot fit the machine before any is
/// allocated: one axis is resampled at a time, each step holding the last
/// step's image and its own, and an early step that fits can take minutes
/// to fill before a later one fails.
pub(super) fn check_peak(shape: &[usize], spatial: &[usize]) -> Result<()> {
    let elements = |s: &[usize]| s.iter().fold(1u128, |n, &d| n.saturating_mul(d as u128));
    let mut current = shape.to_vec();
    let mut peak = elements(&current);
    for (k, &m) in spatial.iter().enumerate() {
        let before = elements(&current);
        let Some(side) = current.get_mut(k + 1) else {
            break;
        };
        *side = m;
        peak = peak.max(before.saturating_add(elements(&current)));
    }
    memory::check_fits(
        peak.saturating_mul(std::mem::size_of::<f32>() as u128),
        "object_size",
        "the resampled image",
    )
}

/// Writes `source` into `out` by nearest neighbour over the trailing
/// `spatial` axes (leading axes, such as channels, are copied as they are),
/// asking `cancelled` every [`CANCEL_EVERY`] pixels.
///
/// # Errors
/// [`crate::Error::Cancelled`] once `cancelled` says so (`out` is then
/// partly written).
pub fn resample_nearest<U: Copy>(
    source: ArrayViewD<'_, U>,
    mut out: ArrayViewMutD<'_, U>,
    cancelled: impl Fn() -> bool,
) -> Result<()> {
    let rank = out.ndim();
    let taps: Vec<Vec<usize>> = (0..rank)
        .map(|a| nearest_taps(source.shape()[a], out.shape()[a]))
        .collect();
    let mut at = vec![0usize; rank];
    for (n, (index, o)) in out.indexed_iter_mut().enumerate() {
        if n % CANCEL_EVERY == 0 && cancelled() {
            return Err(crate::Error::Cancelled);
        }
        for (a, t) in taps.iter().enumerate() {
            at[a] = t[index[a]];
        }
        *o = source[IxDyn(&at)];
    }
    Ok(())
}

/// Pixels [`resample_nearest`] writes between looks at cancellation (a few
/// milliseconds of work).
const CANCEL_EVERY: usize = 1 << 16;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn taps_map_pixel_centres() {
        // Doubling: each input pixel becomes two output pixels.
        assert_eq!(nearest_taps(3, 6), vec![0, 0, 1, 1, 2, 2]);
        // Halving then doubling brings every pixel back to its own block.
        assert_eq!(nearest_taps(6, 3), vec![1, 3, 5]);
        assert_eq!(nearest_taps(5, 5), vec![0, 1, 2, 3, 4]);
        let taps = linear_taps(2, 4);
        assert_eq!(taps[0], (0, 1, 0.0));
        assert_eq!(taps[1], (0, 1, 0.25));
        assert_eq!(taps[3], (1, 1, 0.0));
    }

    #[test]
    fn linear_resampling_keeps_ramps_and_constants() {
        let ramp = Array2::from_shape_fn((1, 8), |(_, x)| x as u16).into_dyn();
        let half = resample_image(ramp.view(), &[4], || false).unwrap();
        assert_eq!(half, array![[0.5f32, 2.5, 4.5, 6.5]].into_dyn());
        let flat = ndarray::Array3::<u8>::from_elem((2, 5, 7), 9).into_dyn();
        let out = resample_image(flat.view(), &[11, 3], || false).unwrap();
        assert_eq!(out.shape(), &[2, 11, 3]);
        assert!(out.iter().all(|&v| v == 9.0));
    }

    #[test]
    fn resampling_beyond_memory_is_refused_before_any_step() {
        if memory::total_memory().is_none() {
            return; // the check needs to know the machine
        }
        // A broadcast (zero-stride) image: the first axis alone would fit
        // most machines, the second needs exabytes.
        let one = ndarray::Array3::<u8>::zeros((1, 1, 1)).into_dyn();
        let image = one.broadcast(IxDyn(&[1, 8192, 8192])).unwrap();
        let start = std::time::Instant::now();
        let err = resample_image(image, &[1 << 30, 1 << 30], || false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid object_size: the resampled image needs"),
            "{err}"
        );
        // Nothing was filled (that takes seconds at this size).
        assert!(start.elapsed().as_secs() < 5);
        assert_eq!(check_peak(&[1, 4, 4], &[8, 2]).ok(), Some(()));
    }

    #[test]
    fn nearest_resampling_copies_values_and_keeps_leading_axes() {
        let labels = array![[[1u32, 2], [3, 4]], [[5, 6], [7, 8]]].into_dyn();
        let mut out = ndarray::ArrayD::<u32>::zeros(IxDyn(&[2, 4, 4]));
        resample_nearest(labels.view(), out.view_mut(), || false).unwrap();
        assert_eq!(out.index_axis(Axis(0), 1)[[3, 0]], 7);
        assert_eq!(out.index_axis(Axis(0), 0)[[0, 3]], 2);
        assert_eq!(out.iter().filter(|&&v| v == 4).count(), 4);
    }

    #[test]
    fn resampling_stops_when_cancelled() {
        let image = ndarray::Array3::<u8>::zeros((1, 64, 64)).into_dyn();
        let stop = || true;
        assert!(matches!(
            resample_image(image.view(), &[128, 128], stop),
            Err(crate::Error::Cancelled)
        ));
        let mut out = ndarray::ArrayD::<u8>::zeros(IxDyn(&[1, 128, 128]));
        assert!(matches!(
            resample_nearest(image.view(), out.view_mut(), stop),
            Err(crate::Error::Cancelled)
        ));
    }

    #[test]
    fn sizes_are_checked() {
        let mut info = crate::info::tests_support::info();
        assert_eq!(factor(&info, None).unwrap(), None);
        let err = factor(&info, Some(20.0)).unwrap_err().to_string();
        assert!(
            err.contains("object_size") && err.contains("records no"),
            "{err}"
        );
        info.object_size = Some(20.0);
        assert_eq!(factor(&info, Some(20.0)).unwrap(), None);
        assert_eq!(factor(&info, Some(40.0)).unwrap(), Some(0.5));
        let err = factor(&info, Some(1e300)).unwrap_err().to_string();
        assert!(err.contains("is 1e300;"), "{err}");
        for bad in [f64::NAN, f64::INFINITY, 0.0, -3.0, 1e9] {
            assert!(factor(&info, Some(bad))
                .unwrap_err()
                .to_string()
                .contains("object_size"));
        }
        assert_eq!(scaled_shape(&[100, 3], 0.5).unwrap(), vec![50, 2]);
        assert_eq!(scaled_shape(&[1, 1], 0.01).unwrap(), vec![1, 1]);
    }
}
