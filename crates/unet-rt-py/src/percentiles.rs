//! Percentile normalization from Python: `Model.percentile_range` of a whole
//! image, and the piecewise statistics a Dask run combines over blocks
//! (`percentile_stats`, `combine_percentile_stats`, `percentile_ranges`).
//! Every rule lives in the core (`unet_rt::normalize::PercentileStats`);
//! this module converts.
//!
//! In Python, the statistics of one image are a tuple `(first, values)`: a
//! histogram (`first` the value of bin 0, `values` uint64 counts) or, with
//! `first` None, the float64 values of the engine's sample. A block's are a
//! dict `{image index: (first, values)}`: plain data that pickles.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ndarray::Axis;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use unet_rt::normalize::{PercentileStats, StatsView};

use crate::args;
use crate::errors::run_released;

/// The pixel values the model's percentile normalization maps to 0 and 1 in
/// `image` (`(C, spatial...)`), or `None` for other normalizations.
pub(crate) fn percentile_range(
    py: Python<'_>,
    model: &unet_rt::Model,
    image: &Bound<'_, PyAny>,
) -> PyResult<Option<(f64, f64)>> {
    let norm = &model.info().normalization;
    let cancel = Arc::new(AtomicBool::new(false));
    with_pixel_array!(image, array: _T => {
        let input = args::readable(array, "image")?;
        let view = input.as_array();
        let flag = Arc::clone(&cancel);
        run_released(py, &cancel, move || unet_rt::normalize::percentile_range(norm, &view, Some(&flag)))
    })
}

/// The percentile statistics of `block`, `(b, C, spatial...)`, whose first
/// element sits at `origin` (`(b, C, spatial...)`) of an array of images of
/// shape `image_shape` (`(C, spatial...)`): `{image index: (first, values)}`.
/// Combined over all blocks they give each whole image's percentiles.
#[pyfunction]
pub(crate) fn percentile_stats<'py>(
    py: Python<'py>,
    block: &Bound<'py, PyAny>,
    origin: &Bound<'py, PyAny>,
    image_shape: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let origin = args::sizes(origin, "origin", None)?;
    let image_shape = args::sizes(image_shape, "image_shape", None)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let stats = with_pixel_array!(block, array: _T => {
        let input = args::readable(array, "block")?;
        let view = input.as_array();
        if view.ndim() != origin.len() || view.ndim() != image_shape.len() + 1 {
            return Err(args::invalid(
                "origin",
                format!(
                    "a block of shape {:?} needs an origin of {} values and an image shape of {}, got {origin:?} \
                     and {image_shape:?}",
                    view.shape(),
                    view.ndim(),
                    view.ndim().saturating_sub(1)
                ),
            ));
        }
        let (first_image, part_origin) = (origin[0], &origin[1..]);
        let shape = &image_shape;
        run_released(py, &cancel, move || {
            view.axis_iter(Axis(0))
                .enumerate()
                .map(|(i, image)| {
                    let index = first_image.checked_add(i).ok_or_else(|| unet_rt::Error::InvalidArgument {
                        argument: "origin",
                        message: format!("image index {first_image} + {i} overflows"),
                    })?;
                    Ok((index, PercentileStats::of_part(&image, part_origin, shape)?))
                })
                .collect::<unet_rt::Result<Vec<_>>>()
        })
    })?;
    to_dict(py, stats)
}

/// The statistics of several blocks' statistics (dicts from
/// [`percentile_stats`] or from this function), per image.
#[pyfunction]
pub(crate) fn combine_percentile_stats<'py>(
    py: Python<'py>,
    parts: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let held = Held::of(parts)?;
    let views = held.views()?;
    let cancel = Arc::new(AtomicBool::new(false));
    let merged = run_released(py, &cancel, move || {
        views
            .into_iter()
            .map(|(image, parts)| Ok((image, PercentileStats::merge(parts)?)))
            .collect::<unet_rt::Result<Vec<_>>>()
    })?;
    to_dict(py, merged)
}

/// The `(images, 2)` float64 array of each image's `low` and `high`
/// percentile values from the statistics of all its blocks (as
/// [`combine_percentile_stats`] takes them); `(0, 0)` for an image without
/// any.
#[pyfunction]
pub(crate) fn percentile_ranges<'py>(
    py: Python<'py>,
    parts: &Bound<'py, PyAny>,
    images: &Bound<'py, PyAny>,
    low: f64,
    high: f64,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let images = args::size(images, "images")?;
    unet_rt::normalize::check_percentiles(low, high).map_err(crate::errors::to_py_err)?;
    let held = Held::of(parts)?;
    let views = held.views()?;
    if let Some(image) = views.keys().find(|&&i| i >= images) {
        return Err(args::invalid(
            "parts",
            format!("hold statistics of image {image}, beyond the {images} images"),
        ));
    }
    // The result is checked against memory, then made by NumPy (lazily
    // zeroed; a failure is a Python error, not an abort).
    let bytes = images.saturating_mul(16);
    if let Some(beyond) = unet_rt::memory::beyond_limit(bytes as u128) {
        return Err(args::invalid(
            "images",
            format!(
                "{images} images need {}, {beyond}",
                unet_rt::memory::format_bytes(bytes as u128)
            ),
        ));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let found = run_released(py, &cancel, move || {
        views
            .into_iter()
            .map(|(image, parts)| {
                let range = PercentileStats::merge(parts)?
                    .checked_range(low, high)
                    .map_err(|err| of_image(err, image, images))?;
                Ok((image, range))
            })
            .collect::<unet_rt::Result<Vec<_>>>()
    })?;
    let ranges = py
        .import("numpy")?
        .call_method1("zeros", ((images, 2), "float64"))?
        .cast_into::<PyArray2<f64>>()
        .map_err(PyErr::from)?;
    {
        let mut writable = ranges
            .try_readwrite()
            .map_err(|e| args::invalid("images", e.to_string()))?;
        let mut view = writable.as_array_mut();
        for (image, (lo, hi)) in found {
            view[[image, 0]] = lo;
            view[[image, 1]] = hi;
        }
    }
    Ok(ranges)
}

/// `err` (about an image's pixels) naming image `image` of `images`: one
/// image without a finite value failed a batch, and the message did not
/// say which.
fn of_image(err: unet_rt::Error, image: usize, images: usize) -> unet_rt::Error {
    match err {
        unet_rt::Error::InvalidArgument {
            argument: "image",
            message,
        } if images > 1 => unet_rt::Error::InvalidArgument {
            argument: "image",
            message: format!("image {image} of the batch: {message}"),
        },
        other => other,
    }
}

/// `{image index: (first, values)}`.
fn to_dict(py: Python<'_>, stats: Vec<(usize, PercentileStats)>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (index, one) in stats {
        out.set_item(index, to_python(py, one)?)?;
    }
    Ok(out)
}

/// One image's statistics as `(first, values)`; the values move into NumPy
/// without a copy.
fn to_python(py: Python<'_>, stats: PercentileStats) -> PyResult<Bound<'_, PyTuple>> {
    match stats {
        PercentileStats::Histogram { counts, first } => PyTuple::new(
            py,
            [
                first.into_pyobject(py)?.into_any(),
                PyArray1::from_vec(py, counts).into_any(),
            ],
        ),
        PercentileStats::Sample(values) => PyTuple::new(
            py,
            [
                py.None().into_bound(py),
                PyArray1::from_vec(py, values).into_any(),
            ],
        ),
    }
}

/// `values` read-only as a 1-D array of `T` whose data is one aligned slice
/// (statistics that crossed a network may arrive misaligned: those are
/// copied), or `None` for another type.
fn slice_ready<'py, T: numpy::Element>(
    values: &Bound<'py, PyAny>,
) -> Option<PyResult<PyReadonlyArray1<'py, T>>> {
    let array = values.cast::<PyArray1<T>>().ok()?;
    let ready = |array: &Bound<'py, PyArray1<T>>| -> PyResult<PyReadonlyArray1<'py, T>> {
        args::readable(array, "parts")
    };
    Some((|| {
        if args::check_layout(array, "parts").is_ok() {
            let readonly = ready(array)?;
            if readonly.as_slice().is_ok() {
                return Ok(readonly);
            }
        }
        let copy = array.call_method0("copy")?;
        ready(copy.cast::<PyArray1<T>>()?)
    })())
}

/// Statistics borrowed from Python for the length of one call.
enum Borrowed<'py> {
    Histogram(PyReadonlyArray1<'py, u64>, f64),
    Sample(PyReadonlyArray1<'py, f64>),
}

/// The borrowed statistics of a sequence of `{image: (first, values)}` dicts.
struct Held<'py> {
    parts: Vec<(usize, Borrowed<'py>)>,
}

impl<'py> Held<'py> {
    fn of(parts: &Bound<'py, PyAny>) -> PyResult<Self> {
        let bad = |what: String| {
            PyTypeError::new_err(format!(
                "parts must be a sequence of {{image: (first, values)}} dicts of percentile statistics; {what}"
            ))
        };
        let mut held = Vec::new();
        let items = parts
            .try_iter()
            .map_err(|_| bad("got no sequence".to_owned()))?;
        for part in items {
            let part = part?;
            let part = part
                .cast::<PyDict>()
                .map_err(|_| bad("an item is no dict".to_owned()))?;
            for (image, stats) in part.iter() {
                let image = args::size(&image, "parts")?;
                let stats = stats
                    .cast::<PyTuple>()
                    .map_err(|_| bad("a value is no tuple".to_owned()))?;
                if stats.len() != 2 {
                    return Err(bad(format!("a tuple has {} items", stats.len())));
                }
                let (first, values) = (stats.get_item(0)?, stats.get_item(1)?);
                let borrowed = if first.is_none() {
                    Borrowed::Sample(
                        slice_ready::<f64>(&values)
                            .ok_or_else(|| bad("a sample is no 1-D float64 array".to_owned()))??,
                    )
                } else {
                    let first: f64 = first
                        .extract()
                        .map_err(|_| bad("a histogram's first value is no float".to_owned()))?;
                    Borrowed::Histogram(
                        slice_ready::<u64>(&values).ok_or_else(|| {
                            bad("a histogram is no 1-D uint64 array".to_owned())
                        })??,
                        first,
                    )
                };
                held.push((image, borrowed));
            }
        }
        Ok(Self { parts: held })
    }

    /// The views per image, in image order.
    fn views(&self) -> PyResult<BTreeMap<usize, Vec<StatsView<'_>>>> {
        let mut views: BTreeMap<usize, Vec<StatsView<'_>>> = BTreeMap::new();
        for (image, borrowed) in &self.parts {
            let view = match borrowed {
                Borrowed::Histogram(counts, first) => StatsView::Histogram {
                    counts: counts
                        .as_slice()
                        .map_err(|e| args::invalid("parts", e.to_string()))?,
                    first: *first,
                },
                Borrowed::Sample(values) => StatsView::Sample(
                    values
                        .as_slice()
                        .map_err(|e| args::invalid("parts", e.to_string()))?,
                ),
            };
            views.entry(*image).or_default().push(view);
        }
        Ok(views)
    }
}
