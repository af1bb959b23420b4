//! One Python exception class per `unet_rt::Error` variant. The classes are
//! defined in `unet_rt/errors.py` (so that they can also derive from
//! `ValueError`, `FileNotFoundError`, ...); this module only picks the class.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The name of the `unet_rt.errors` class that stands for `err`.
fn class_name(err: &unet_rt::Error) -> &'static str {
    use unet_rt::Error as E;
    match err {
        E::ModelNotFound(_) => "ModelNotFoundError",
        E::InvalidModel { .. } => "ModelError",
        E::InvalidMetadata { .. } => "MetadataError",
        E::InvalidArgument { .. } => "InvalidArgumentError",
        E::DeviceUnavailable(_) => "DeviceError",
        E::Inference(_) => "InferenceError",
        E::Cancelled => "CancelledError",
        E::Io { .. } => "UnetRtIOError",
    }
}

/// Converts a core error into the matching `unet_rt.errors` exception.
pub(crate) fn to_py_err(err: unet_rt::Error) -> PyErr {
    Python::attach(|py| {
        let message = err.to_string();
        let class = py
            .import("unet_rt.errors")
            .and_then(|m| m.getattr(class_name(&err)))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message),
            // Only reachable if the extension is imported without its package.
            Err(_) => PyRuntimeError::new_err(message),
        }
    })
}

/// Runs `f` with the GIL released and converts its error: every long engine
/// call goes through here so that other Python threads keep running.
pub(crate) fn without_gil<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> unet_rt::Result<T> + Send,
    T: Send,
{
    py.detach(f).map_err(to_py_err)
}
