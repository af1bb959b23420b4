//! `connected_components`: instances from a label image.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::errors::{run_released, to_py_err};

/// Numbers the connected components of the nonzero pixels of `labels`
/// (uint8 or uint16, 2-D or 3-D; face connectivity) in raster order, as
/// `scipy.ndimage.label` does. Returns uint32 instance ids.
#[pyfunction]
pub(crate) fn connected_components<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
    let cancel = Arc::new(AtomicBool::new(false));
    macro_rules! try_type {
        ($($t:ty),*) => {$(
            if let Ok(array) = labels.extract::<PyReadonlyArrayDyn<'py, $t>>() {
                let view = array.as_array();
                let (ids, _) = run_released(py, &cancel, || unet_rt::instances::connected_components(view))?;
                return Ok(PyArrayDyn::from_owned_array(py, ids));
            }
        )*};
    }
    try_type!(u8, u16, u32);
    Err(to_py_err(unet_rt::Error::InvalidArgument {
        argument: "labels",
        message: "expected a uint8, uint16 or uint32 label array".to_owned(),
    }))
}
