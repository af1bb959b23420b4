//! The core's rule for the axes of an array nobody named.

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
