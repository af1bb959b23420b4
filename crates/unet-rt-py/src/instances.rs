//! Instances from label images: `connected_components`, and the block-wise
//! read-out the Dask layer joins across blocks (`instance_block`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use numpy::PyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyList;
use unet_rt::instances::{BlockObjects, ReadOut};

use crate::errors::{run_released, to_py_err};

fn wrong_labels() -> PyErr {
    to_py_err(unet_rt::Error::InvalidArgument {
        argument: "labels",
        message: "expected a uint8, uint16 or uint32 label array".to_owned(),
    })
}

/// `$body` with `$view` bound to `$labels` as a read-only view of its label
/// type (uint8, uint16 or uint32), or the labels error.
macro_rules! with_labels {
    ($labels:expr, $view:ident => $body:expr) => {
        if let Ok(array) = $labels.cast::<PyArrayDyn<u8>>() {
            let array = crate::args::readable(array, "labels")?;
            let $view = array.as_array();
            $body
        } else if let Ok(array) = $labels.cast::<PyArrayDyn<u16>>() {
            let array = crate::args::readable(array, "labels")?;
            let $view = array.as_array();
            $body
        } else if let Ok(array) = $labels.cast::<PyArrayDyn<u32>>() {
            let array = crate::args::readable(array, "labels")?;
            let $view = array.as_array();
            $body
        } else {
            Err(wrong_labels())
        }
    };
}

/// Numbers the connected components of the nonzero pixels of `labels`
/// (uint8 or uint16, 2-D or 3-D; face connectivity) in raster order, as
/// `scipy.ndimage.label` does. Returns uint32 instance ids.
#[pyfunction]
pub(crate) fn connected_components<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
    let cancel = Arc::new(AtomicBool::new(false));
    with_labels!(labels, view => {
        let (ids, _) = run_released(py, &cancel, || {
            unet_rt::instances::connected_components_cancellable(view, Some(&cancel))
        })?;
        Ok(PyArrayDyn::from_owned_array(py, ids))
    })
}

/// A read-out from its JSON text (as `Model.read_out` gives it), checked.
fn parse_read_out(text: &str) -> PyResult<ReadOut> {
    ReadOut::from_json(text).map_err(to_py_err)
}

/// The objects of one block of a label image (the read-out's steps before
/// sizes, holes and numbering): `labels` is the block with `context`
/// (`(before, after)` pixels per axis) around it. Returns the block's
/// labels (uint32, `1..=count` in raster order), `count`, and per axis the
/// face flags `(first, last)` (bool arrays: the object continues across).
#[pyfunction]
pub(crate) fn instance_block<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyAny>,
    context: Vec<(usize, usize)>,
    read_out: &str,
) -> PyResult<(Bound<'py, PyArrayDyn<u32>>, u32, Bound<'py, PyList>)> {
    let read_out = parse_read_out(read_out)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let found: BlockObjects = with_labels!(labels, view => {
        run_released(py, &cancel, || read_out.block_objects_cancellable(view, &context, Some(&cancel)))
    })?;
    let faces = PyList::empty(py);
    for (low, high) in found.faces {
        faces.append((
            PyArrayDyn::from_owned_array(py, low),
            PyArrayDyn::from_owned_array(py, high),
        ))?;
    }
    Ok((
        PyArrayDyn::from_owned_array(py, found.labels),
        found.count,
        faces,
    ))
}

/// The instances of a whole label image by `read_out` (JSON text, as
/// `Model.read_out` gives it): what `segment(..., output="instances")`
/// computes from the labels. Returns uint32 ids.
#[pyfunction]
pub(crate) fn read_out_instances<'py>(
    py: Python<'py>,
    labels: &Bound<'py, PyAny>,
    read_out: &str,
) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
    let read_out = parse_read_out(read_out)?;
    let cancel = Arc::new(AtomicBool::new(false));
    with_labels!(labels, view => {
        let (ids, _) = run_released(py, &cancel, || read_out.apply_cancellable(view, Some(&cancel)))?;
        Ok(PyArrayDyn::from_owned_array(py, ids))
    })
}

/// The context (pixels per side) a block needs for `read_out` (JSON text)
/// to find its objects alone: the core's `ReadOut::context`.
#[pyfunction]
pub(crate) fn instance_context(read_out: &str) -> PyResult<usize> {
    Ok(parse_read_out(read_out)?.context())
}
