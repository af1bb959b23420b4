//! libtorch calls that tch offers only as panicking methods, made fallible:
//! a network's odd output or an odd tensor in its file is an error the
//! user reads, never a panic (an `InternalError` in Python, "internal
//! error" in the CLI).

use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::{CModule, Device, Kind, Tensor};

/// The strides of `tensor`, or libtorch's message where it has none: a
/// sparse CSR/CSC/BSR tensor or a nested one (tch's `Tensor::stride`
/// panics on them).
pub(crate) fn strides(tensor: &Tensor) -> Result<Vec<i64>, String> {
    let dims = tensor.dim();
    let mut strides = vec![0i64; dims];
    // SAFETY: `tensor.as_ptr()` points at a live tensor that `tensor`
    // borrows for the whole call, and at_stride only reads it (the
    // mutable pointer type is the C signature's); `strides` holds `dims`
    // values, as many as at_stride writes for a tensor of `dims`
    // dimensions, and it writes none where it fails.
    unsafe { torch_sys::at_stride(tensor.as_ptr().cast_mut(), strides.as_mut_ptr()) };
    match last_error() {
        Some(message) => Err(message),
        None => Ok(strides),
    }
}

/// libtorch's error from the last call on this thread, if it failed (and
/// clears it).
fn last_error() -> Option<String> {
    // SAFETY: get_and_reset_last_err returns null or a C string that
    // libtorch's C wrapper allocated with malloc (strdup) and handed over;
    // it is read once and freed once, here.
    unsafe {
        let message = torch_sys::get_and_reset_last_err();
        if message.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(message)
            .to_string_lossy()
            .into_owned();
        libc::free(message.cast());
        Some(text)
    }
}

/// `module.to(device, kind)`, or libtorch's message where a tensor of the
/// module cannot be converted (a quantized buffer: "Creation of quantized
/// tensor requires quantized dtype"). tch's `CModule::to` panics on
/// libtorch's error and has no fallible form, so its panic is caught here;
/// the module is then left as far as libtorch got, and the caller drops it.
pub(crate) fn module_to(module: &mut CModule, device: Device, kind: Kind) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| module.to(device, kind, false))).map_err(|payload| {
        let text = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "libtorch failed".to_owned());
        libtorch_message(&text)
    })
}

/// libtorch's message in the text of tch's panic, `called Result::unwrap()
/// on an Err value: Torch("...")`: the quoted part, its line breaks
/// escaped, whose first line says what failed (a C++ backtrace follows).
fn libtorch_message(panic: &str) -> String {
    let message = match panic.split_once("Torch(\"") {
        Some((_, rest)) => rest.trim_end_matches("\")"),
        None => panic,
    };
    message.split("\\n").next().unwrap_or(message).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_a_tch_panic_is_libtorchs_first_line() {
        let panic = r#"called `Result::unwrap()` on an `Err` value: Torch("Creation of quantized tensor requires quantized dtype\nException raised from x at y.cpp:115\nframe #0: ...")"#;
        assert_eq!(
            libtorch_message(panic),
            "Creation of quantized tensor requires quantized dtype"
        );
        assert_eq!(libtorch_message("boom"), "boom");
    }

    #[test]
    fn dense_tensors_have_strides() {
        let t = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
        assert_eq!(strides(&t).unwrap(), vec![12, 4, 1]);
        assert_eq!(strides(&t.permute([2, 0, 1])).unwrap(), vec![1, 12, 4]);
        assert!(last_error().is_none());
    }

    #[test]
    fn sparse_csr_tensors_have_none_and_no_panic() {
        let t = Tensor::eye(3, (Kind::Float, Device::Cpu)).to_sparse_csr(None);
        let err = strides(&t).unwrap_err();
        assert!(err.to_lowercase().contains("stride"), "{err}");
        // The error is consumed: the next call starts clean.
        assert!(last_error().is_none());
        assert!(strides(&Tensor::ones([2], (Kind::Float, Device::Cpu))).is_ok());
    }
}
