//! The core's axes rules: inference for arrays nobody named, and the
//! arrangement into the engine's layout.

use pyo3::prelude::*;

use crate::args;
use crate::errors::to_py_err;

/// The axes of an array of `shape` for a model of `spatial_dims` dimensions
/// and `in_channels` input channels (`unet_rt::axes::infer_axes`).
#[pyfunction]
pub(crate) fn infer_axes(
    shape: &Bound<'_, PyAny>,
    spatial_dims: usize,
    in_channels: usize,
) -> PyResult<String> {
    let shape = args::sizes(shape, "shape", None)?;
    unet_rt::axes::infer_axes(&shape, spatial_dims, in_channels).map_err(to_py_err)
}

/// How an array of `shape` with `axes` (None: inferred) maps onto the
/// engine's `(batch, channels, spatial...)` layout
/// (`unet_rt::axes::Arrangement`): the axes used, and for each engine axis
/// the array's axis, or None where the array lacks it.
#[pyfunction]
#[pyo3(signature = (shape, axes, spatial_dims, in_channels))]
pub(crate) fn arrangement(
    shape: &Bound<'_, PyAny>,
    axes: Option<&Bound<'_, PyAny>>,
    spatial_dims: usize,
    in_channels: usize,
) -> PyResult<(String, Vec<Option<usize>>)> {
    let shape = args::sizes(shape, "shape", None)?;
    let axes = match axes.filter(|a| !a.is_none()) {
        Some(value) => Some(args::text(value, "axes")?),
        None => None,
    };
    let arranged =
        unet_rt::axes::Arrangement::of(&shape, axes.as_deref(), spatial_dims, in_channels)
            .map_err(to_py_err)?;
    Ok((arranged.axes().to_owned(), arranged.sources().to_vec()))
}
