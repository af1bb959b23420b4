//! `Model.segment`: dispatch on the NumPy dtypes of the image and of the
//! result, borrow both arrays without copying, run the engine with the GIL
//! released.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use numpy::{Element, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use unet_rt::{NaturalElement, OutputElement, Pixel, Progress, Segmenter};

use crate::errors::{run_released, to_py_err};

fn invalid(argument: &'static str, message: String) -> PyErr {
    to_py_err(unet_rt::Error::InvalidArgument { argument, message })
}

/// A Python progress callable, called as `callback(done, total)` from the
/// engine's stitching thread. An exception it raises cancels the call and
/// is re-raised; once the call is cancelled (so, or by Ctrl-C) it is not
/// called again (batches already in flight called it after it raised), nor
/// once the process stops its work at exit.
pub(crate) fn progress_callback(
    callback: Py<PyAny>,
    cancel: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<PyErr>>>,
) -> unet_rt::ProgressFn {
    Arc::new(move |p: Progress| {
        // Nor during the exit wait: a daemon thread's callback running
        // Python code then is what the wait cannot end.
        if cancel.load(std::sync::atomic::Ordering::Relaxed)
            || unet_rt::process::stopping()
            || !crate::errors::interpreter_running()
        {
            return;
        }
        Python::attach(|py| {
            if let Err(err) = callback.call1(py, (p.done, p.total)) {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut slot) = failure.lock() {
                    slot.get_or_insert(err);
                }
            }
        });
    })
}

/// Segments a batch of images (arranged `(N, C, spatial...)` by the Python
/// layer) into `out` or a new array `(N, ...)`; `ranges`: one input range
/// per image.
pub(crate) fn segment<'py>(
    py: Python<'py>,
    segmenter: &Segmenter,
    image: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    ranges: Option<&[(f64, f64)]>,
    cancel: &Arc<AtomicBool>,
) -> PyResult<Bound<'py, PyAny>> {
    let info = segmenter.model().info();
    let out_dtype: Option<String> = out
        .map(|o| {
            o.getattr("dtype")
                .and_then(|d| d.str())
                .map(|s| s.to_string())
        })
        .transpose()?;
    // The element type of the result: what `out` has, else the natural one.
    let element = out_dtype.unwrap_or_else(|| {
        segmenter
            .options()
            .output
            .natural_element(info.out_channels)
            .name()
            .to_owned()
    });
    match element.as_str() {
        "uint8" => by_input::<u8>(py, segmenter, image, out, ranges, cancel),
        "uint16" => by_input::<u16>(py, segmenter, image, out, ranges, cancel),
        "float32" => by_input::<f32>(py, segmenter, image, out, ranges, cancel),
        "float16" => by_input::<half::f16>(py, segmenter, image, out, ranges, cancel),
        "uint32" => by_input::<u32>(py, segmenter, image, out, ranges, cancel),
        "uint64" => by_input::<u64>(py, segmenter, image, out, ranges, cancel),
        "int64" => by_input::<i64>(py, segmenter, image, out, ranges, cancel),
        // NumPy spells a byte-swapped dtype by its code (">u2"): the types
        // above read as if that one were taken.
        other if other.starts_with(['>', '<']) => Err(invalid(
            "out",
            format!(
                "has dtype {other}, in the other byte order than this machine's; results are written in \
                 native byte order: pass np.empty(shape, out.dtype.newbyteorder(\"=\")) and byte-swap it after"
            ),
        )),
        other => Err(invalid(
            "out",
            format!(
                "has dtype {other}; {}",
                segmenter.options().output.written_as()
            ),
        )),
    }
}

fn by_input<'py, U: OutputElement + Element>(
    py: Python<'py>,
    segmenter: &Segmenter,
    image: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    ranges: Option<&[(f64, f64)]>,
    cancel: &Arc<AtomicBool>,
) -> PyResult<Bound<'py, PyAny>> {
    with_pixel_array!(image, array: T => run::<T, U>(py, segmenter, array, out, ranges, cancel))
}

/// A zeroed result array of `shape` in `element`, checked against memory
/// like every result.
pub(crate) fn new_natural_result<'py>(
    py: Python<'py>,
    shape: Vec<usize>,
    element: NaturalElement,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match element {
        NaturalElement::U8 => new_result::<u8>(py, shape)?.into_any(),
        NaturalElement::U16 => new_result::<u16>(py, shape)?.into_any(),
        NaturalElement::U32 => new_result::<u32>(py, shape)?.into_any(),
        NaturalElement::F32 => new_result::<f32>(py, shape)?.into_any(),
    })
}

fn run<'py, T: Pixel + Element, U: OutputElement + Element>(
    py: Python<'py>,
    segmenter: &Segmenter,
    image: &Bound<'py, PyArrayDyn<T>>,
    out: Option<&Bound<'py, PyAny>>,
    ranges: Option<&[(f64, f64)]>,
    cancel: &Arc<AtomicBool>,
) -> PyResult<Bound<'py, PyAny>> {
    let input = crate::args::readable(image, "image")?;
    let result: Bound<'py, PyArrayDyn<U>> = match out {
        Some(o) => o
            .cast::<PyArrayDyn<U>>()
            .map_err(|e| invalid("out", e.to_string()))?
            .clone(),
        None => {
            let shape = image.shape();
            let mut result = vec![shape.first().copied().unwrap_or(0)];
            result.extend(segmenter.output_shape(shape.get(1..).unwrap_or(&[])));
            new_result::<U>(py, result)?
        }
    };
    crate::args::check_layout(&result, "out")?;
    {
        // rust-numpy refuses a second borrow of memory that is borrowed
        // already: here the image (read) or another call's `out` (written).
        let mut writable = result.try_readwrite().map_err(|_| {
            invalid(
                "out",
                "is in use: it shares memory with the image, or another call is writing into it; \
                 pass an array of its own"
                    .to_owned(),
            )
        })?;
        let view = input.as_array();
        let out_view = writable.as_array_mut();
        run_released(py, cancel, move || {
            segmenter.segment_batch_into(view, out_view, ranges)
        })?;
    }
    Ok(result.into_any())
}

/// Refuses a copy of the image of `nbytes` (one the engine can read, made
/// because `why`) that this machine cannot hold, before NumPy tries: its
/// `MemoryError` names nothing, and with overcommit the copy may be granted
/// and then killed.
#[pyfunction]
#[pyo3(signature = (
    nbytes,
    why = "its byte order is not native",
    remedy = "pass an array in native byte order (e.g. a numpy.memmap with dtype '<f4')",
    argument = "image",
))]
pub(crate) fn check_image_copy(
    nbytes: &Bound<'_, PyAny>,
    why: &str,
    remedy: &str,
    argument: &str,
) -> PyResult<()> {
    let nbytes = crate::args::size(nbytes, "nbytes")? as u128;
    let argument = match argument {
        "batch" => "batch",
        "block" => "block",
        _ => "image",
    };
    match unet_rt::memory::beyond_limit(nbytes) {
        Some(beyond) => Err(invalid(
            argument,
            format!(
                "{why}, and the copy the engine reads needs {} of memory, {beyond}: {remedy}",
                unet_rt::memory::format_bytes(nbytes),
            ),
        )),
        None => Ok(()),
    }
}

/// Refuses 64-bit integer pixels from `low` to `high` (an image's
/// extremes) that float64, the type they are widened to, cannot hold
/// exactly: the core's rule, as the command line keeps it.
#[pyfunction]
pub(crate) fn check_exact_f64(low: i128, high: i128) -> PyResult<()> {
    for value in [low, high] {
        unet_rt::pixel::exact_f64(value).map_err(to_py_err)?;
    }
    Ok(())
}

/// A zeroed array for the result, or an `InvalidArgumentError` that says
/// how much memory it needed when it cannot be allocated (NumPy's own
/// constructor raises `MemoryError`, PyO3's panics).
fn new_result<U: Element>(py: Python<'_>, shape: Vec<usize>) -> PyResult<Bound<'_, PyArrayDyn<U>>> {
    let bytes = shape
        .iter()
        .try_fold(std::mem::size_of::<U>() as u128, |n, &d| {
            n.checked_mul(d as u128)
        });
    let too_large = |need: String| {
        invalid(
            "image",
            format!(
                "the result of shape {shape:?} needs {need}: segment a smaller image, or pass out= (e.g. a \
                 numpy.memmap on disk)"
            ),
        )
    };
    let unallocatable = |b: u128| {
        too_large(format!(
            "{} of memory, which cannot be allocated",
            unet_rt::memory::format_bytes(b)
        ))
    };
    let Some(bytes) = bytes else {
        return Err(too_large("more bytes than can be counted".to_owned()));
    };
    if let Some(beyond) = unet_rt::memory::beyond_limit(bytes) {
        return Err(too_large(format!(
            "{} of memory, {beyond}",
            unet_rt::memory::format_bytes(bytes)
        )));
    }
    if bytes > isize::MAX as u128 {
        return Err(unallocatable(bytes));
    }
    let dtype = numpy::dtype::<U>(py);
    let array = py
        .import("numpy")?
        .call_method1("zeros", (shape.clone(), dtype))
        .map_err(|e| {
            if e.is_instance_of::<pyo3::exceptions::PyMemoryError>(py) {
                unallocatable(bytes)
            } else {
                e
            }
        })?;
    array.cast_into::<PyArrayDyn<U>>().map_err(PyErr::from)
}

/// The error for an image whose dtype the engine does not read.
pub(crate) fn unsupported_dtype(image: &Bound<'_, PyAny>) -> PyErr {
    let dtype = image
        .getattr("dtype")
        .map(|d| d.to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    invalid(
        "image",
        format!(
            "dtype {dtype} is not supported; use {}",
            crate::PIXEL_DTYPES.join(", ")
        ),
    )
}
