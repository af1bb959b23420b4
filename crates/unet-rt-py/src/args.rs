//! Converting Python arguments, with errors that name them: `TypeError` for
//! a value of the wrong type, `InvalidArgumentError` (a `ValueError`) for a
//! value out of range. PyO3's own conversions raise `OverflowError` for a
//! negative or huge integer and name no argument, so every Python-facing
//! size goes through here instead.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyString};

use crate::errors::to_py_err;
use numpy::ndarray::Dimension;
use numpy::{Element, PyArray, PyArrayMethods, PyReadonlyArray, PyUntypedArrayMethods};

/// An `InvalidArgumentError` about `argument`.
pub(crate) fn invalid(argument: &'static str, message: String) -> PyErr {
    to_py_err(unet_rt::Error::InvalidArgument { argument, message })
}

/// `array` borrowed for reading by the engine, or the error naming
/// `argument`: written by another call (see [`being_written`]), or laid out
/// so that it cannot be read as elements of its type ([`check_layout`]).
pub(crate) fn readable<'py, T: Element, D: Dimension>(
    array: &Bound<'py, PyArray<T, D>>,
    argument: &'static str,
) -> PyResult<PyReadonlyArray<'py, T, D>> {
    check_layout(array, argument)?;
    array.try_readonly().map_err(|e| being_written(argument, e))
}

/// Refuses an array whose elements do not lie where rust-numpy's views
/// look for them: byte strides that are not multiples of the item size
/// (one field of a record array, some `as_strided` views) are divided by
/// it and truncated there, and data not aligned to its type is undefined
/// behaviour to read. Such an image was read at other pixels than NumPy's
/// and such an `out=` written over its neighbours' bytes, both silently.
pub(crate) fn check_layout<T: Element, D: Dimension>(
    array: &Bound<'_, PyArray<T, D>>,
    argument: &'static str,
) -> PyResult<()> {
    let item = std::mem::size_of::<T>();
    let strides = array.strides();
    let problem = if strides.iter().any(|s| s.unsigned_abs() % item != 0) {
        format!(
            "its strides {strides:?} (bytes) are not multiples of its item size ({item} bytes), as in one \
             field of a record array"
        )
    } else if (array.data() as usize) % std::mem::align_of::<T>() != 0 {
        format!("its data does not start on a multiple of its item size ({item} bytes) in memory")
    } else {
        return Ok(());
    };
    let remedy = if argument == "out" {
        "write into an array of its own and copy the result over"
    } else {
        "pass a copy (numpy.ascontiguousarray)"
    };
    Err(invalid(argument, format!("{problem}: {remedy}")))
}

/// The error for an array that cannot be read because a call still
/// running writes into it (it is that call's `out=`): rust-numpy's own
/// words ("The given array is already borrowed") named neither.
pub(crate) fn being_written(argument: &'static str, error: numpy::BorrowError) -> PyErr {
    invalid(
        argument,
        format!(
            "cannot be read while another call writes into it (it is that call's out=): wait for that call, \
             or pass a copy ({error})"
        ),
    )
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A non-negative integer: a Python `int` or a NumPy integer, not a bool,
/// float or string.
pub(crate) fn size(value: &Bound<'_, PyAny>, argument: &'static str) -> PyResult<usize> {
    if value.is_instance_of::<PyBool>()
        || value.is_instance_of::<PyFloat>()
        || value.is_instance_of::<PyString>()
    {
        return Err(PyTypeError::new_err(format!(
            "{argument} must be an int, got {}",
            type_name(value)
        )));
    }
    // `__index__` is what makes a type an integer (int, numpy.int64, ...).
    let index = value.call_method0("__index__").map_err(|_| {
        PyTypeError::new_err(format!(
            "{argument} must be an int, got {}",
            type_name(value)
        ))
    })?;
    match index.extract::<i128>() {
        Ok(v) if v < 0 => Err(invalid(argument, format!("{v} is negative"))),
        Ok(v) => usize::try_from(v).map_err(|_| {
            invalid(
                argument,
                format!("{v} is too large (at most {})", usize::MAX),
            )
        }),
        Err(_) => Err(invalid(
            argument,
            format!("{} is too large (at most {})", index, usize::MAX),
        )),
    }
}

/// An optional [`size`] that must be at least `minimum`.
pub(crate) fn optional_size(
    value: Option<&Bound<'_, PyAny>>,
    argument: &'static str,
    minimum: usize,
) -> PyResult<Option<usize>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let v = size(value, argument)?;
    if v < minimum {
        return Err(invalid(
            argument,
            format!("{v} is too small: it must be at least {minimum}"),
        ));
    }
    Ok(Some(v))
}

/// An optional real number: an `int`, `float` or NumPy number, not a bool
/// or string (its range is the core's to check).
pub(crate) fn optional_number(
    value: Option<&Bound<'_, PyAny>>,
    argument: &'static str,
) -> PyResult<Option<f64>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let name = type_name(value);
    // NumPy arrays of one element convert too (with a deprecation): only
    // 0-d arrays and scalars are numbers here.
    let shaped = value
        .getattr("ndim")
        .and_then(|n| n.extract::<usize>())
        .is_ok_and(|n| n > 0);
    // NumPy scalars say what they hold by their dtype's kind: a bool (whose
    // type is named `bool` in NumPy 2), a timedelta or a datetime converts
    // to a float too, and was taken for a size.
    let numpy_kind = value
        .getattr("dtype")
        .and_then(|d| d.getattr("kind"))
        .and_then(|k| k.extract::<String>())
        .ok();
    if value.is_instance_of::<PyBool>()
        || numpy_kind.is_some_and(|k| !matches!(k.as_str(), "i" | "u" | "f"))
        || value.is_instance_of::<PyString>()
        || shaped
    {
        return Err(PyTypeError::new_err(format!(
            "{argument} must be a number, got {name}"
        )));
    }
    let number = value.call_method0("__float__").map_err(|err| {
        // An int beyond float64 (10**400) is a number, too large.
        if err.is_instance_of::<pyo3::exceptions::PyOverflowError>(value.py()) {
            return invalid(
                argument,
                "is an integer too large for a float64 (beyond 1.8e308)".to_owned(),
            );
        }
        PyTypeError::new_err(format!(
            "{argument} must be a number, got {}",
            type_name(value)
        ))
    })?;
    number.extract::<f64>().map(Some)
}

/// An optional `bool` (or NumPy bool); nothing else is taken for one.
pub(crate) fn optional_flag(
    value: Option<&Bound<'_, PyAny>>,
    argument: &'static str,
) -> PyResult<Option<bool>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let is_numpy_bool = type_name(value) == "bool" || type_name(value) == "bool_";
    if !(value.is_instance_of::<PyBool>() || is_numpy_bool) {
        return Err(PyTypeError::new_err(format!(
            "{argument} must be a bool, got {}",
            type_name(value)
        )));
    }
    value.is_truthy().map(Some)
}

/// One size per spatial axis: an int (the same on every axis) or a
/// sequence of `dims` ints.
pub(crate) fn sizes(
    value: &Bound<'_, PyAny>,
    argument: &'static str,
    dims: Option<usize>,
) -> PyResult<Vec<usize>> {
    // Bytes iterate as ints: b"44" would be the sizes (52, 52).
    if value.is_instance_of::<PyString>()
        || value.is_instance_of::<PyFloat>()
        || value.is_instance_of::<PyBool>()
        || value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>()
    {
        return Err(PyTypeError::new_err(format!(
            "{argument} must be an int or a sequence of ints, got {}",
            type_name(value)
        )));
    }
    if value.hasattr("__index__")? {
        // NumPy arrays have __index__ too (for 0-d ones): a 1-d one is a
        // sequence ("tile must be an int, got ndarray").
        match size(value, argument) {
            Ok(one) => return Ok(vec![one; dims.unwrap_or(1)]),
            Err(e) if value.try_iter().is_err() => return Err(e),
            Err(_) => {}
        }
    }
    let items = value.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "{argument} must be an int or a sequence of ints, got {}",
            type_name(value)
        ))
    })?;
    let mut out = Vec::new();
    for item in items {
        out.push(size(&item?, argument)?);
        if out.len() > 64 {
            return Err(invalid(
                argument,
                "has more than 64 values; expected one per spatial axis".to_owned(),
            ));
        }
    }
    if let Some(dims) = dims.filter(|&d| d != out.len()) {
        return Err(invalid(
            argument,
            format!("{} sizes for a {dims}-D model", out.len()),
        ));
    }
    Ok(out)
}

/// Optional [`sizes`], each at least 1.
pub(crate) fn optional_sizes(
    value: Option<&Bound<'_, PyAny>>,
    argument: &'static str,
    dims: usize,
) -> PyResult<Option<Vec<usize>>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let sizes = sizes(value, argument, Some(dims))?;
    if sizes.contains(&0) {
        return Err(invalid(argument, format!("{sizes:?} has a zero size")));
    }
    Ok(Some(sizes))
}

/// A string option.
pub(crate) fn text<'a>(
    value: &'a Bound<'_, PyAny>,
    argument: &'static str,
) -> PyResult<std::borrow::Cow<'a, str>> {
    let s = value.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{argument} must be a str, got {}",
            type_name(value)
        ))
    })?;
    s.to_cow()
}

/// `(image, origin, start, shape)`, one size per spatial axis each.
pub(crate) fn window(value: &Bound<'_, PyAny>) -> PyResult<unet_rt::Window> {
    let parts: Vec<Bound<'_, PyAny>> = value
        .try_iter()
        .and_then(|items| items.collect::<PyResult<Vec<_>>>())
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "window must be a unet_rt.Window, got {}",
                type_name(value)
            ))
        })?;
    let [image, origin, start, shape] = parts.as_slice() else {
        return Err(PyTypeError::new_err(
            "window must be (image, origin, start, shape)",
        ));
    };
    Ok(unet_rt::Window {
        image: sizes(image, "window", None)?,
        origin: sizes(origin, "window", None)?,
        start: sizes(start, "window", None)?,
        shape: sizes(shape, "window", None)?,
    })
}
