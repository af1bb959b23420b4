//! Free memory of a CUDA device, asked of the CUDA runtime that libtorch
//! loaded (tch exposes no such call): the default GPU memory budget is a
//! share of it rather than a constant.

/// Bytes `(free, total)` of CUDA device `index` as the process first saw
/// them, or `None` without a loaded CUDA runtime or such a device.
///
/// Asked once per device and remembered: libtorch's caching allocator keeps
/// what a call used, so a later answer would shrink after every call and
/// with it the tiling, which must stay the same from call to call (the
/// same tiles give the same result bit for bit).
pub fn device_memory(index: usize) -> Option<(usize, usize)> {
    const DEVICES: usize = 64;
    static SEEN: [std::sync::OnceLock<Option<(usize, usize)>>; DEVICES] =
        [const { std::sync::OnceLock::new() }; DEVICES];
    let slot = SEEN.get(index)?;
    *slot.get_or_init(|| on_own_thread(index))
}

/// Bytes `(free, total)` of CUDA device `index` now (not remembered, unlike
/// [`device_memory`]): what probe passes measure their memory by, as
/// libtorch's caching allocator keeps what each pass reserved.
pub(crate) fn device_memory_now(index: usize) -> Option<(usize, usize)> {
    on_own_thread(index)
}

/// [`query`] on a thread of its own (selecting the device changes only
/// that thread's current device, never a caller's); `None` where no thread
/// can be started (`std::thread::spawn` would panic).
fn on_own_thread(index: usize) -> Option<(usize, usize)> {
    std::thread::Builder::new()
        .name("unet-rt-cuda-memory".to_owned())
        .spawn(move || query(index))
        .ok()?
        .join()
        .ok()
        .flatten()
}

#[cfg(target_os = "linux")]
fn query(index: usize) -> Option<(usize, usize)> {
    use std::ffi::{c_int, c_void, CStr};

    type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
    // The runtimes of the CUDA versions libtorch 2.x ships with.
    const NAMES: [&CStr; 4] = [
        c"libcudart.so.13",
        c"libcudart.so.12",
        c"libcudart.so.11.0",
        c"libcudart.so",
    ];
    let device = c_int::try_from(index).ok()?;
    let handle = NAMES.iter().find_map(|name| {
        // SAFETY: `name` is a NUL-terminated string; with RTLD_NOLOAD
        // dlopen only finds a library already loaded (by libtorch) and runs
        // no initialiser; a null result means it is not loaded.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        (!h.is_null()).then_some(h)
    })?;
    let symbol = |name: &CStr| -> Option<*mut c_void> {
        // SAFETY: `handle` is a live handle from dlopen above and `name`
        // is NUL-terminated; dlsym only looks the name up.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let result = symbol(c"cudaSetDevice")
        .zip(symbol(c"cudaMemGetInfo"))
        .and_then(|(set, info)| {
            // SAFETY: these are the CUDA runtime's exported functions of
            // these C signatures (`cudaError_t cudaSetDevice(int)`,
            // `cudaError_t cudaMemGetInfo(size_t*, size_t*)`, stable since
            // CUDA 2); `cudaError_t` is a C enum, an `int`.
            let (set, info) = unsafe {
                (
                    std::mem::transmute::<*mut c_void, SetDevice>(set),
                    std::mem::transmute::<*mut c_void, MemGetInfo>(info),
                )
            };
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: plain calls into the runtime on this thread of our
            // own; the pointers are to live locals of the right type.
            let ok = unsafe { set(device) == 0 && info(&mut free, &mut total) == 0 };
            (ok && free <= total && total > 0).then_some((free, total))
        });
    // SAFETY: `handle` came from dlopen above and is closed once; the
    // library stays loaded (libtorch holds it).
    unsafe { libc::dlclose(handle) };
    result
}

#[cfg(not(target_os = "linux"))]
fn query(_index: usize) -> Option<(usize, usize)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_for_existing_devices_only() {
        let devices = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        for index in 0..devices {
            let (free, total) = device_memory(index).expect("a visible device answers");
            assert!(free <= total && total > 0);
            // Remembered: the same answer again.
            assert_eq!(device_memory(index), Some((free, total)));
        }
        assert_eq!(device_memory(devices), None);
        assert_eq!(device_memory(10_000), None);
    }
}
