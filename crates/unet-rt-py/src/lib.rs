//! `unet_rt._unet_rt`: the Python extension. It converts arguments, releases
//! the GIL around engine calls and converts results; all logic lives in the
//! `unet_rt` crate.

/// The NumPy dtypes of the pixels the binding accepts: those of
/// [`with_pixel_array`], in its order.
const PIXEL_DTYPES: [&str; 6] = ["uint8", "uint16", "int16", "float16", "float32", "float64"];

/// `$body` with `$array` bound to `$image` cast to a `&Bound<PyArrayDyn<T>>`
/// of the pixel type `T` it holds (named `$t` in the body), or the error
/// naming the unsupported dtype: the one list of pixel types the binding
/// accepts.
macro_rules! with_pixel_array {
    ($image:expr, $array:ident: $t:ident => $body:expr) => {
        with_pixel_array!(@each $image, $array, $t, $body; u8, u16, i16, half::f16, f32, f64)
    };
    (@each $image:expr, $array:ident, $t:ident, $body:expr; $($ty:ty),*) => {
        $(if let Ok($array) = $image.cast::<numpy::PyArrayDyn<$ty>>() {
            #[allow(dead_code)]
            type $t = $ty;
            $body
        } else)* {
            Err($crate::segment::unsupported_dtype($image))
        }
    };
}

mod args;
mod axes;
mod errors;
mod instances;
mod model;
mod percentiles;
mod segment;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Versions and devices of this build, as a dict.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = unet_rt::build_info();
    let dict = PyDict::new(py);
    dict.set_item("version", info.version)?;
    dict.set_item("libtorch_version", info.libtorch_version)?;
    dict.set_item("cuda_available", info.cuda_available)?;
    dict.set_item("cuda_device_count", info.cuda_device_count)?;
    dict.set_item("cpu_threads", info.cpu_threads)?;
    Ok(dict)
}

/// A precision's canonical name (`"fp32"`, `"bf16"`, `"fp16"` or
/// `"auto"`) from any spelling the core accepts (`"float32"`, `" BF16"`).
#[pyfunction]
fn canonical_precision(text: &str) -> PyResult<String> {
    text.parse::<unet_rt::Precision>()
        .map(|p| p.to_string())
        .map_err(errors::to_py_err)
}

/// The devices a device name stands for, as a loaded model's `devices`
/// reads them (`["cuda:0"]` for `"cuda"`, `"GPU"` or `"cuda:00"`; every
/// visible GPU for `"cuda:all"`), or `["auto"]` for `"auto"`: what a
/// call's `device=` is compared with when it is given a loaded model.
/// The device need not exist here.
#[pyfunction]
fn canonical_devices(text: &str) -> PyResult<Vec<String>> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("auto") {
        return Ok(vec!["auto".to_owned()]);
    }
    if trimmed.eq_ignore_ascii_case(unet_rt::ALL_GPUS) {
        let count = unet_rt::build_info().cuda_device_count;
        return Ok((0..count)
            .map(|i| unet_rt::device_name(unet_rt::Device::Cuda(i)))
            .collect());
    }
    unet_rt::parse_device_name(text)
        .map(|device| vec![unet_rt::device_name(device)])
        .map_err(errors::to_py_err)
}

/// Bytes for people, as every message of the core says them (`1.5 GiB`).
/// Checks a normalization document (JSON) by the rules metadata is held
/// to at load; `InvalidArgumentError` naming `normalization` otherwise.
#[pyfunction]
fn check_normalization(text: &str) -> PyResult<()> {
    unet_rt::Normalization::parse_checked(text)
        .map(|_| ())
        .map_err(|e| args::invalid("normalization", e))
}

/// The RGBA display colour of a class (OME-Zarr `image-label` colours):
/// the core's rule, shared with the command line's OME-Zarr results.
#[pyfunction]
fn class_colour(class_id: u64) -> (u8, u8, u8, u8) {
    // A tuple: PyO3 gives an array of bytes as `bytes`.
    let [r, g, b, a] = unet_rt::class_colours::class_colour(class_id);
    (r, g, b, a)
}

#[pyfunction]
fn format_bytes(bytes: u128) -> String {
    unet_rt::memory::format_bytes(bytes)
}

/// The words that say `bytes` exceed the memory available now, `None`
/// where they fit: the Python side's package reader refuses what the
/// core's archive loader would, in the core's words.
#[pyfunction]
fn beyond_available_memory(bytes: u128) -> Option<String> {
    unet_rt::memory::beyond_available(bytes)
}

#[pymodule]
fn _unet_rt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Planners outside the engine (unet_rt.dask) choose tiles for a device
    // they may not have: they need the budget the engine would default to.
    m.add("DEFAULT_CPU_BUDGET", unet_rt::DEFAULT_CPU_BUDGET)?;
    m.add("DEFAULT_CUDA_BUDGET", unet_rt::DEFAULT_CUDA_BUDGET)?;
    // One default precision for every entry point (the core's).
    m.add("DEFAULT_PRECISION", unet_rt::Precision::DEFAULT_NAME)?;
    // The names Python checks arguments against before converting them.
    m.add("PIXEL_DTYPES", PIXEL_DTYPES.to_vec())?;
    m.add("WIDENED_DTYPES", unet_rt::pixel::WIDENED.to_vec())?;
    m.add("OUTPUTS", unet_rt::OutputMode::NAMES.to_vec())?;
    m.add("TTA_MODES", unet_rt::Tta::NAMES.to_vec())?;
    m.add("NONFINITE_MODES", unet_rt::NonFinite::NAMES.to_vec())?;
    m.add("MAX_GEOMETRY", unet_rt::MAX_GEOMETRY)?;
    m.add("MAX_PROBE_VALUES", unet_rt::MAX_PROBE_VALUES)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(format_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(class_colour, m)?)?;
    m.add_function(wrap_pyfunction!(beyond_available_memory, m)?)?;
    m.add_function(wrap_pyfunction!(check_normalization, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_precision, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_devices, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(instances::connected_components, m)?)?;
    m.add_function(wrap_pyfunction!(instances::instance_block, m)?)?;
    m.add_function(wrap_pyfunction!(instances::read_out_instances, m)?)?;
    m.add_function(wrap_pyfunction!(instances::instance_context, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_class_names, m)?)?;
    m.add_function(wrap_pyfunction!(errors::stop_at_exit, m)?)?;
    m.add_function(wrap_pyfunction!(segment::check_image_copy, m)?)?;
    m.add_function(wrap_pyfunction!(segment::check_exact_f64, m)?)?;
    m.add_function(wrap_pyfunction!(axes::infer_axes, m)?)?;
    m.add_function(wrap_pyfunction!(axes::arrangement, m)?)?;
    m.add_function(wrap_pyfunction!(percentiles::percentile_stats, m)?)?;
    m.add_function(wrap_pyfunction!(percentiles::combine_percentile_stats, m)?)?;
    m.add_function(wrap_pyfunction!(percentiles::percentile_ranges, m)?)?;
    Ok(())
}
