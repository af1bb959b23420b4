//! `Model.percentile_range`: the whole image's percentile values (the rules
//! live in the core, `unet_rt::normalize::PercentileStats`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;

use crate::args;
use crate::errors::run_released;
use crate::segment::unsupported_dtype;

/// The pixel values the model's percentile normalization maps to 0 and 1 in
/// `image` (`(C, spatial...)`), or `None` for other normalizations.
pub(crate) fn percentile_range(
    py: Python<'_>,
    model: &unet_rt::Model,
    image: &Bound<'_, PyAny>,
) -> PyResult<Option<(f64, f64)>> {
    let norm = &model.info().normalization;
    let cancel = Arc::new(AtomicBool::new(false));
    macro_rules! try_input {
        ($($t:ty),*) => {$(
            if let Ok(array) = image.cast::<PyArrayDyn<$t>>() {
                let input = array.try_readonly().map_err(|e| args::invalid("image", e.to_string()))?;
                let view = input.as_array();
                return run_released(py, &cancel, move || unet_rt::normalize::percentile_range(norm, &view));
            }
        )*};
    }
    try_input!(u8, u16, i16, half::f16, f32, f64);
    Err(unsupported_dtype(image))
}
