//! What the machine can hold, and allocation that fails with an error
//! instead of aborting the process.
//!
//! A `Vec` that cannot be allocated aborts the whole process (Rust's
//! `handle_alloc_error`), and on Linux a large allocation that does succeed
//! can still get the process killed once it is touched. Every buffer whose
//! size comes from the caller (tiles, batches, results) is therefore checked
//! against the machine's memory and allocated with `try_reserve`.

use crate::error::{Error, Result};

/// The memory this process may use in bytes, when known: the machine's
/// (`MemTotal`), or the memory limit of its control group (a container, a
/// Slurm job, a systemd unit: the kernel kills a process beyond it) or its
/// own resource limit (`ulimit -d`, `ulimit -v`: an allocation beyond it
/// fails) when lower. Read once: plans must not change from call to call.
pub fn total_memory() -> Option<usize> {
    limit().map(|(bytes, _)| bytes)
}

/// Whose limit [`total_memory`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limiter {
    Machine,
    Cgroup,
    Rlimit,
}

/// [`total_memory`] and whose limit it is.
fn limit() -> Option<(usize, Limiter)> {
    static TOTAL: std::sync::OnceLock<Option<(usize, Limiter)>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let machine = meminfo_field("MemTotal:").map(|m| (m, Limiter::Machine));
        let group = crate::cgroup::process_limit()
            .and_then(|l| usize::try_from(l.bytes).ok())
            .map(|g| (g, Limiter::Cgroup));
        let rlimit = rlimits()
            .map(|(limit, _)| limit)
            .min()
            .map(|r| (r, Limiter::Rlimit));
        [machine, group, rlimit]
            .into_iter()
            .flatten()
            .min_by_key(|&(bytes, _)| bytes)
    })
}

/// When `bytes` exceed [`total_memory`], the words that say so in every
/// message: "more than this machine's 23.5 GiB", or "more than the 2 GiB
/// this process's cgroup allows (...)"; `None` when they fit or the total
/// is unknown.
pub fn beyond_limit(bytes: u128) -> Option<String> {
    let (total, limiter) = limit().filter(|&(total, _)| bytes > total as u128)?;
    let total = format_bytes(total as u128);
    Some(match limiter {
        Limiter::Cgroup => format!(
            "more than the {total} this process's cgroup allows (a container or job memory limit)"
        ),
        Limiter::Rlimit => {
            format!("more than the {total} this process's resource limit allows (ulimit -d or -v)")
        }
        Limiter::Machine => format!("more than this machine's {total}"),
    })
}

/// When `bytes` exceed the memory [`available_memory`] finds now, the
/// words that say so ([`available_now`]); `None` when they fit or it is
/// unknown. For what is read whole before anything checks it (a model
/// inside a package): the total, which [`beyond_limit`] compares with,
/// may be far from free.
pub fn beyond_available(bytes: u128) -> Option<String> {
    let available = available_memory()?;
    (bytes > available as u128).then(|| available_now(available))
}

/// "more than the 21.3 GiB of memory available now".
pub fn available_now(available: usize) -> String {
    format!(
        "more than the {} of memory available now",
        format_bytes(available as u128)
    )
}

/// Memory available to new allocations without swapping (`MemAvailable`),
/// or the room left under the process's cgroup limit or its own resource
/// limits (`ulimit -v`, `ulimit -d`) when that is less, when known.
pub fn available_memory() -> Option<usize> {
    let machine = meminfo_field("MemAvailable:");
    let group = crate::cgroup::process_limit().and_then(|l| usize::try_from(l.room).ok());
    [machine, group, rlimit_room()].into_iter().flatten().min()
}

/// The room left under this process's address-space and data limits
/// (`RLIMIT_AS`, `RLIMIT_DATA`: `ulimit -v`, `ulimit -d`), where either is
/// set: beyond it an allocation fails, however much the machine has free.
fn rlimit_room() -> Option<usize> {
    rlimits()
        .map(|(limit, used)| limit.saturating_sub(used))
        .min()
}

/// Each resource limit on this process's memory that is set, with what the
/// process uses of it now.
#[cfg(target_os = "linux")]
fn rlimits() -> impl Iterator<Item = (usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    [(libc::RLIMIT_AS, "VmSize:"), (libc::RLIMIT_DATA, "VmData:")]
        .into_iter()
        .filter_map(move |(resource, used)| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one `rlimit` into the struct it is
            // given, which is valid and lives for the call.
            if unsafe { libc::getrlimit(resource, &mut limit) } != 0
                || limit.rlim_cur == libc::RLIM_INFINITY
            {
                return None;
            }
            let used = parse_meminfo(&status, used).unwrap_or(0);
            Some((usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX), used))
        })
}

#[cfg(not(target_os = "linux"))]
fn rlimits() -> impl Iterator<Item = (usize, usize)> {
    std::iter::empty()
}

/// A field of `/proc/meminfo`, in bytes. Other systems report `None`, and
/// the checks that use it fall back to fallible allocation alone.
fn meminfo_field(name: &str) -> Option<usize> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?, name)
}

/// A field of this process's `/proc/self/status` (`VmRSS:`), in bytes, in
/// the same `kB` lines as `/proc/meminfo`; `None` off Linux.
pub(crate) fn status_field(name: &str) -> Option<usize> {
    parse_meminfo(&std::fs::read_to_string("/proc/self/status").ok()?, name)
}

/// The field `name` (with its colon) of `/proc/meminfo`'s text, in bytes;
/// `None` when it is missing, not in kB, or beyond `usize`.
fn parse_meminfo(text: &str, name: &str) -> Option<usize> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let mut words = line.split_whitespace();
    let value: usize = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// `bytes` for people: `1.5 GiB`.
pub fn format_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The byte size of `count` elements of `T`, as a `u128` that cannot
/// overflow for any `usize` count.
pub(crate) fn bytes_of<T>(count: usize) -> u128 {
    count as u128 * std::mem::size_of::<T>() as u128
}

/// Refuses `bytes` that `what` would need when they exceed the machine's
/// physical memory: with overcommit such an allocation can succeed and get
/// the process killed once it is touched, and the filling alone can take
/// minutes before a later step fails. Where the total is unknown, fallible
/// allocation is the only check.
pub(crate) fn check_fits(bytes: u128, argument: &'static str, what: &str) -> Result<()> {
    match beyond_limit(bytes) {
        Some(beyond) => Err(Error::InvalidArgument {
            argument,
            message: format!("{what} needs {} of memory, {beyond}", format_bytes(bytes)),
        }),
        None => Ok(()),
    }
}

/// A vector of `len` default values, or [`Error::InvalidArgument`] naming
/// `argument` (with the bytes it needed) when it cannot be allocated or is
/// larger than the machine ([`check_fits`]).
pub(crate) fn try_filled<T: Clone + Default>(
    len: usize,
    argument: &'static str,
    what: &str,
) -> Result<Vec<T>> {
    let mut v = try_with_capacity::<T>(len, bytes_of::<T>(len), argument, what)?;
    v.resize(len, T::default());
    Ok(v)
}

/// An empty vector with room for `len` elements that need `bytes` in all
/// (with what each element owns on the heap), or [`Error::InvalidArgument`]
/// naming `argument` as [`try_filled`]: `Vec::with_capacity` of a count
/// derived from user sizes panics ("capacity overflow") or aborts instead.
pub(crate) fn try_with_capacity<T>(
    len: usize,
    bytes: u128,
    argument: &'static str,
    what: &str,
) -> Result<Vec<T>> {
    check_fits(bytes, argument, what)?;
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| unallocatable(argument, what, bytes))?;
    Ok(v)
}

/// The error for `bytes` that `what` needed and did not get.
fn unallocatable(argument: &'static str, what: &str, bytes: u128) -> Error {
    Error::InvalidArgument {
        argument,
        message: format!(
            "{what} needs {} of memory, which cannot be allocated",
            format_bytes(bytes)
        ),
    }
}

/// A CPU tensor of `E`s, uninitialized, that only this value holds: network
/// input is gathered straight into libtorch's memory, with no zero fill
/// before and no copy into a tensor after. Allocating it runs no libtorch
/// kernel, so no OpenMP pool starts on the calling thread.
pub(crate) struct HostBuffer<E>(tch::Tensor, std::marker::PhantomData<E>);

/// Gathered network input: `f32`.
pub(crate) type HostFloats = HostBuffer<f32>;

impl HostFloats {
    /// Room for `len` floats; see [`HostBuffer::uninit`].
    pub(crate) fn floats(len: usize, argument: &'static str, what: &str) -> Result<Self> {
        Self::uninit(len, tch::Kind::Float, argument, what)
    }
}

impl<E: Copy> HostBuffer<E> {
    /// Room for `len` values held by libtorch as `kind`, or
    /// [`Error::InvalidArgument`] naming `argument` (with the bytes `what`
    /// needed) when it cannot be allocated. `kind` must have the size of
    /// `E` (the bits of `u16` travel as `i16`, for one).
    pub(crate) fn uninit(
        len: usize,
        kind: tch::Kind,
        argument: &'static str,
        what: &str,
    ) -> Result<Self> {
        if kind.elt_size_in_bytes() != std::mem::size_of::<E>() {
            return Err(Error::Internal(format!(
                "a host buffer of {kind:?} cannot hold elements of {} bytes",
                std::mem::size_of::<E>()
            )));
        }
        let too_large = || unallocatable(argument, what, bytes_of::<E>(len));
        let size = i64::try_from(len).map_err(|_| too_large())?;
        tch::Tensor::f_empty([size], (kind, tch::Device::Cpu))
            .map(|t| Self(t, std::marker::PhantomData))
            .map_err(|_| too_large())
    }

    /// The values, to write (every one, before the tensor is read).
    pub(crate) fn as_uninit_mut(&mut self) -> &mut [std::mem::MaybeUninit<E>] {
        let len = self.0.numel();
        if len == 0 {
            return &mut [];
        }
        // SAFETY: `uninit` made a contiguous CPU tensor of `len` elements
        // of `E`'s size (checked there), and no handle to it exists but this
        // value's (`into_tensor` consumes it), so the data pointer addresses
        // room for `len` `E`s that libtorch keeps while the tensor lives and
        // that nothing else reads or writes while `self` is borrowed; its
        // CPU allocator aligns to 64 bytes, more than any `E` here needs.
        // `MaybeUninit` asks nothing of the bytes it covers.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.0.data_ptr().cast::<std::mem::MaybeUninit<E>>(),
                len,
            )
        }
    }

    /// The tensor, to read (a flat tensor on the CPU).
    pub(crate) fn into_tensor(self) -> tch::Tensor {
        self.0
    }
}

/// A zeroed array of `shape`, or [`Error::InvalidArgument`] (`image`) saying
/// how much memory `what` needed when it cannot be allocated.
pub(crate) fn try_zeros<T: Clone + Default>(
    shape: &[usize],
    what: &str,
) -> Result<ndarray::ArrayD<T>> {
    let data = try_filled::<T>(element_count(shape, "image")?, "image", what)?;
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), data)
        .map_err(|e| Error::Internal(e.to_string()))
}

/// The number of elements of `shape`, or [`Error::InvalidArgument`] naming
/// `argument` when the product overflows.
pub(crate) fn element_count(shape: &[usize], argument: &'static str) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument {
            argument,
            message: format!("shape {shape:?} has more elements than this machine can address"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_readable_and_huge_requests_fail_cleanly() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert!(total_memory().is_none_or(|t| t > 1 << 20));
        let err = try_filled::<f32>(usize::MAX / 8, "tile", "a batch")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid tile: a batch needs")
                && (err.contains("cannot be allocated")
                    || beyond_limit(u128::MAX).is_some_and(|words| err.contains(&words))),
            "{err}"
        );
        if let Some(total) = total_memory() {
            // Beyond the machine, refused before any allocation is tried.
            let err = try_filled::<u8>(total + 1, "image", "the result")
                .unwrap_err()
                .to_string();
            let words = beyond_limit(total as u128 + 1).unwrap();
            assert!(err.contains(&words), "{err}");
            assert!(check_fits(total as u128, "image", "x").is_ok());
        }
        assert!(element_count(&[1 << 40, 1 << 40], "image").is_err());
        assert_eq!(element_count(&[3, 4], "image").unwrap(), 12);
    }

    #[test]
    fn host_buffers_hold_elements_of_their_kinds_size_only() {
        let mut bytes = HostBuffer::<u16>::uninit(5, tch::Kind::Int16, "tile", "a batch").unwrap();
        assert_eq!(bytes.as_uninit_mut().len(), 5);
        assert_eq!(bytes.into_tensor().kind(), tch::Kind::Int16);
        assert!(matches!(
            HostBuffer::<u16>::uninit(5, tch::Kind::Float, "tile", "a batch"),
            Err(Error::Internal(_))
        ));
        assert!(HostFloats::floats(usize::MAX / 2, "tile", "a batch").is_err());
    }

    #[test]
    fn reads_meminfo_fields_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemAvailable:   23934592 kB\n";
        assert_eq!(
            parse_meminfo(text, "MemAvailable:"),
            Some(23_934_592 * 1024)
        );
        assert_eq!(parse_meminfo(text, "MemTotal:"), Some(24_576_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n", "MemAvailable:"), None);
        assert_eq!(
            parse_meminfo("MemAvailable: lots kB\n", "MemAvailable:"),
            None
        );
        assert_eq!(
            parse_meminfo("MemAvailable: 18446744073709551615 kB\n", "MemAvailable:"),
            None
        );
    }
}
