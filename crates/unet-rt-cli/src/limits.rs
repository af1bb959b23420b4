//! Limits on what an input may make the CLI allocate.
//!
//! A file declares its size (an NPY shape, TIFF and PNG dimensions) before
//! it holds any data, so a file of a few bytes can declare terabytes. Every
//! size a file declares is computed with checked arithmetic and compared with
//! the bytes the file holds (where the format is uncompressed) and with the
//! memory available *before* anything is allocated; what is then allocated is
//! reserved fallibly, so that a refusal is an error for that one file rather
//! than an abort of the whole run.

use ndarray::{ArrayD, IxDyn};

/// The memory an input may use: `MemAvailable` of `/proc/meminfo`, or the
/// room under the process's cgroup limit (a container or batch job) or its
/// own `ulimit -v`/`-d` when less, when the command starts reading it. Where neither can be read
/// there is no memory limit (the file-size checks still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    available: Option<u64>,
}

impl Memory {
    /// The memory available now.
    pub(crate) fn available() -> Self {
        Self {
            available: unet_rt::memory::available_memory().and_then(|b| u64::try_from(b).ok()),
        }
    }

    /// No limit (the memory available is unknown, or nothing is allocated).
    pub(crate) fn unlimited() -> Self {
        Self { available: None }
    }

    /// Exactly `bytes` available.
    #[cfg(test)]
    pub(crate) fn limited(bytes: u64) -> Self {
        Self {
            available: Some(bytes),
        }
    }

    /// Refuses `needed` bytes when they exceed the memory available; `what`
    /// says what needs them ("the image (shape [3, 4], float64)").
    pub(crate) fn check(self, needed: u64, what: &str) -> Result<(), String> {
        match self.available {
            Some(available) if needed > available => Err(format!(
                "{what} needs {} of memory, more than the {} available",
                show_bytes(needed),
                show_bytes(available)
            )),
            _ => Ok(()),
        }
    }

    /// The limit as a decoder takes it: `usize::MAX` when unknown.
    pub(crate) fn as_usize(self) -> usize {
        self.available.map_or(usize::MAX, saturating_usize)
    }
}

/// `value` as a `usize`, `usize::MAX` beyond.
pub(crate) fn saturating_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// A byte count for people: exact, with a binary-prefixed size when large.
pub(crate) fn show_bytes(bytes: u64) -> String {
    if bytes < 1 << 20 {
        return format!("{bytes} bytes");
    }
    format!(
        "{bytes} bytes ({})",
        unet_rt::memory::format_bytes(u128::from(bytes))
    )
}

/// The product of `values`, `None` when it overflows `u64`.
pub(crate) fn checked_product(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    values.into_iter().try_fold(1u64, u64::checked_mul)
}

/// The number of elements of `shape`, `None` when it overflows `usize`.
pub(crate) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The bytes `len` elements of `T` take, `None` when that overflows `u64`.
pub(crate) fn bytes_of<T>(len: usize) -> Option<u64> {
    u64::try_from(len)
        .ok()?
        .checked_mul(u64::try_from(std::mem::size_of::<T>()).ok()?)
}

/// An empty vector with room for exactly `len` elements, or an error saying
/// how many bytes could not be had (the allocator refused, or the size
/// overflows): never the abort an infallible allocation ends in.
pub(crate) fn try_vec<T>(len: usize) -> Result<Vec<T>, String> {
    let mut vec = Vec::new();
    vec.try_reserve_exact(len)
        .map_err(|_| match bytes_of::<T>(len) {
            Some(bytes) => format!("could not allocate {}", show_bytes(bytes)),
            None => format!(
                "could not allocate {len} elements of {} bytes",
                std::mem::size_of::<T>()
            ),
        })?;
    Ok(vec)
}

/// An array of `shape` filled with `value`, allocated fallibly.
pub(crate) fn try_filled<T: Clone>(shape: &[usize], value: T) -> Result<ArrayD<T>, String> {
    let len = elements(shape).ok_or_else(|| {
        format!("an array of shape {shape:?} has more elements than this machine can address")
    })?;
    ArrayD::from_shape_vec(IxDyn(shape), try_filled_vec(len, value)?).map_err(|e| e.to_string())
}

/// `len` copies of `value`, allocated fallibly.
pub(crate) fn try_filled_vec<T: Clone>(len: usize, value: T) -> Result<Vec<T>, String> {
    let mut data = try_vec(len)?;
    data.resize(len, value);
    Ok(data)
}

/// `f` applied to every element of `array` (in logical order) into a new
/// array of the same shape, allocated fallibly.
pub(crate) fn try_map<A, B>(
    array: &ArrayD<A>,
    f: impl FnMut(&A) -> B,
) -> Result<ArrayD<B>, String> {
    let mut data = try_vec(array.len())?;
    data.extend(array.iter().map(f));
    ArrayD::from_shape_vec(array.raw_dim(), data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_exceeds_the_memory() {
        let memory = Memory::limited(1000);
        assert!(memory.check(1000, "it").is_ok());
        let err = memory.check(1001, "the image").unwrap_err();
        assert_eq!(
            err,
            "the image needs 1001 bytes of memory, more than the 1000 bytes available"
        );
        assert!(Memory::unlimited().check(u64::MAX, "it").is_ok());
        assert_eq!(Memory::unlimited().as_usize(), usize::MAX);
    }

    #[test]
    fn sizes_are_checked_not_wrapped() {
        assert_eq!(checked_product([200_000, 200_000]), Some(40_000_000_000));
        assert_eq!(
            checked_product([u64::from(u32::MAX), u64::from(u32::MAX), 3]),
            None
        );
        assert_eq!(elements(&[1 << 32, 1 << 32]), None);
        assert_eq!(elements(&[]), Some(1));
        assert_eq!(bytes_of::<f64>(usize::MAX), None);
        assert_eq!(show_bytes(16), "16 bytes");
        assert_eq!(show_bytes(40_000_000_000), "40000000000 bytes (37.3 GiB)");
    }

    #[test]
    fn impossible_allocations_are_errors() {
        let err = try_vec::<u64>(usize::MAX / 2).unwrap_err();
        assert!(err.starts_with("could not allocate"), "{err}");
        assert!(try_filled(&[usize::MAX, 2], 0u8).is_err());
        let a = try_filled(&[2, 3], 7u16).unwrap();
        assert_eq!(try_map(&a, |&v| f64::from(v) + 1.0).unwrap().sum(), 48.0);
    }
}
