use std::path::PathBuf;

use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::errors::{to_py_err, without_gil};

/// A TorchScript model loaded once onto a device; safe to share between
/// Python threads.
#[pyclass(frozen, module = "unet_rt._unet_rt")]
pub(crate) struct Model {
    inner: unet_rt::Model,
}

#[pymethods]
impl Model {
    /// Loads `path` onto `device` (`"cpu"`, `"cuda"`, `"cuda:N"`, `"auto"`).
    #[new]
    #[pyo3(signature = (path, device = "cpu"))]
    fn new(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let device = unet_rt::parse_device(device).map_err(to_py_err)?;
        let inner = without_gil(py, || unet_rt::Model::load(&path, device))?;
        Ok(Self { inner })
    }

    /// The embedded metadata as a JSON string, or `None`.
    #[getter]
    fn metadata_json(&self) -> Option<String> {
        self.inner.metadata().and_then(|m| m.to_json().ok())
    }

    /// The file the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_owned()
    }

    /// The device as a string, e.g. `"cpu"` or `"cuda:0"`.
    #[getter]
    fn device(&self) -> String {
        match self.inner.device() {
            unet_rt::Device::Cuda(i) => format!("cuda:{i}"),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    /// One forward pass on a float32 batch `(N, C, spatial...)`; returns the
    /// raw network output as float32.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        batch: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let view = batch.as_array();
        let model = &self.inner;
        let output = without_gil(py, || model.forward_array(view))?;
        // Moves the Vec into NumPy: no copy of the result.
        Ok(PyArrayDyn::from_owned_array(py, output))
    }

    fn __repr__(&self) -> String {
        format!("Model(path={:?}, device={:?})", self.inner.path(), self.device())
    }
}
