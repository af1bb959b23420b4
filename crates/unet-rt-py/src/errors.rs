//! One Python exception class per `unet_rt::Error` variant, and the one
//! helper through which every long call releases the GIL.
//!
//! The classes are defined in `unet_rt/errors.py` (so that they can also
//! derive from `ValueError`, `FileNotFoundError`, ...); this module only picks
//! the class.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyType;

/// How often a waiting call looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

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
        E::NonFinite(_) => "NonFiniteError",
        E::Internal(_) => "InternalError",
        E::Cancelled => "CancelledError",
        E::Io { .. } => "UnetRtIOError",
    }
}

/// The `unet_rt.errors` class of every core error variant, in variant
/// order: lets the tests prove that each name resolves to its class (a typo
/// would otherwise surface as a plain `RuntimeError` the day it is raised).
#[pyfunction]
pub(crate) fn error_class_names() -> Vec<&'static str> {
    use unet_rt::Error as E;
    let samples = [
        E::ModelNotFound(Default::default()),
        E::InvalidModel {
            path: Default::default(),
            reason: String::new(),
        },
        E::InvalidMetadata {
            path: Default::default(),
            reason: String::new(),
        },
        E::InvalidArgument {
            argument: "",
            message: String::new(),
        },
        E::DeviceUnavailable(String::new()),
        E::Inference(String::new()),
        E::NonFinite(String::new()),
        E::Internal(String::new()),
        E::Cancelled,
        E::Io {
            path: Default::default(),
            source: std::io::Error::other(""),
        },
    ];
    samples.iter().map(class_name).collect()
}

/// Converts a core error into the matching `unet_rt.errors` exception.
pub(crate) fn to_py_err(err: unet_rt::Error) -> PyErr {
    Python::attach(|py| {
        let message = match err {
            // After `stop_at_exit` every call is refused or cancelled for
            // that reason; "cancelled" alone left the user looking for the
            // caller that cancelled it.
            unet_rt::Error::Cancelled if unet_rt::process::stopping() => {
                "cancelled: the interpreter is exiting (unet_rt's exit handler ran), so unet_rt \
                 refuses new work and stops what runs"
                    .to_owned()
            }
            _ => err.to_string(),
        };
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

/// Runs `work`, turning a panic (a bug) into [`unet_rt::Error::Internal`]:
/// every engine call from Python goes through here, so a bug raises
/// `InternalError`, never a `PanicException` that `except Exception` would
/// not catch.
pub(crate) fn catching<T>(work: impl FnOnce() -> unet_rt::Result<T>) -> unet_rt::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        Err(unet_rt::Error::Internal(what))
    })
}

/// Runs `work` with the GIL released, on a worker thread, while this thread
/// waits and looks for Ctrl-C every 100 ms: on a signal, `cancel` is set (the
/// engine stops at its next batch) and the signal's exception (normally
/// `KeyboardInterrupt`) is raised. Every long engine call goes through here,
/// so other Python threads run meanwhile.
pub(crate) fn run_released<T, F>(py: Python<'_>, cancel: &Arc<AtomicBool>, work: F) -> PyResult<T>
where
    F: FnOnce() -> unet_rt::Result<T> + Send,
    T: Send,
{
    // Counted until this thread holds the GIL again (see `stop_at_exit`).
    let _work = unet_rt::process::begin().map_err(to_py_err)?;
    py.detach(|| {
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = sync_channel::<unet_rt::Result<T>>(1);
            // Builder, not `scope.spawn`: a thread that cannot be started
            // (a process limit) panicked there, a PanicException to Python.
            std::thread::Builder::new()
                .name("unet-rt-call".to_owned())
                .spawn_scoped(scope, move || {
                    // The receiver only goes away after a signal; the result is moot then.
                    let _ = done_tx.send(catching(work));
                })
                .map_err(|e| {
                    to_py_err(unet_rt::Error::Internal(format!(
                        "cannot start a thread: {e}"
                    )))
                })?;
            wait_for(&done_rx, cancel, true)
        })
    })
}

/// [`run_released`] for work that cannot stop early and owns what it uses
/// (a model load, whose probing runs whole forward passes): on a signal the
/// exception is raised at once, and the work finishes on its own thread
/// with its result dropped. Ctrl-C waited for the whole load before.
pub(crate) fn run_released_detached<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: FnOnce() -> unet_rt::Result<T> + Send + 'static,
    T: Send + 'static,
{
    // The caller's wait and the work, which may outlive it, count apart.
    let _waiting = unet_rt::process::begin().map_err(to_py_err)?;
    let working = unet_rt::process::begin().map_err(to_py_err)?;
    py.detach(|| {
        let (done_tx, done_rx) = sync_channel::<unet_rt::Result<T>>(1);
        std::thread::Builder::new()
            .name(unet_rt::LOAD_THREAD_NAME.to_owned())
            .stack_size(unet_rt::LOAD_THREAD_STACK)
            .spawn(move || {
                let result = catching(work);
                // Counted until the result is dropped or handed over.
                let _ = done_tx.send(result);
                drop(working);
            })
            .map_err(|e| {
                to_py_err(unet_rt::Error::Internal(format!(
                    "cannot start a thread: {e}"
                )))
            })?;
        wait_for(&done_rx, &Arc::new(AtomicBool::new(false)), false)
    })
}

/// Waits for `done`, looking for signals every [`SIGNAL_POLL`]: on one,
/// `cancel` is set and, unless `drain` (the worker must be waited for: it
/// borrows), its exception is returned at once.
fn wait_for<T>(
    done: &Receiver<unet_rt::Result<T>>,
    cancel: &Arc<AtomicBool>,
    drain: bool,
) -> PyResult<T> {
    let mut interrupted: Option<PyErr> = None;
    loop {
        match done.recv_timeout(SIGNAL_POLL) {
            Ok(result) => {
                return match (interrupted, result) {
                    (Some(err), _) => Err(err),
                    (None, result) => result.map_err(to_py_err),
                };
            }
            // A daemon thread's call outlasting `stop_at_exit`: the
            // interpreter is finalizing, and attaching to it panicked.
            Err(RecvTimeoutError::Timeout) if !interpreter_running() => {}
            Err(RecvTimeoutError::Timeout) if interrupted.is_none() => {
                if let Err(err) = Python::attach(|py| py.check_signals()) {
                    cancel.store(true, Ordering::Relaxed);
                    if !drain {
                        return Err(err);
                    }
                    interrupted = Some(err);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(interrupted
                    .unwrap_or_else(|| PyKeyboardInterrupt::new_err("engine thread ended")));
            }
        }
    }
}

/// Whether the interpreter runs (it is not finalizing): a thread that is not
/// attached must not attach otherwise.
pub(crate) fn interpreter_running() -> bool {
    // SAFETY: `Py_IsInitialized` reads a flag of the runtime and may be
    // called without holding the GIL, also during finalization.
    unsafe { pyo3::ffi::Py_IsInitialized() != 0 }
}

/// Registered with `atexit` by the package: stops the engine's work (new
/// calls are refused, running ones cancel at their next batch, probing at
/// its next pass) and waits, without the GIL, up to `timeout` seconds for
/// what runs (a forward pass in progress finishes) and for calls of other
/// threads to hold the GIL again; a signal ends the wait. Interpreter exit
/// with a daemon thread inside a call crashed the process (arrays it read
/// were freed, libtorch torn down under its forward pass).
///
/// Where work still runs when the wait ends (a signal: exit status 130;
/// the timeout: 1), the process ends at once, after one line on stderr,
/// Python's standard streams flushed and logging shut down: finalizing
/// under it crashed (a segmentation fault when the abandoned pass ended,
/// an abort when a daemon thread's progress callback ran Python code
/// meanwhile). Exit handlers registered before unet_rt was imported do not
/// run then, and the exit status the program set is replaced.
#[pyfunction]
pub(crate) fn stop_at_exit(py: Python<'_>, timeout: f64) {
    let wait = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    let mut last_check = std::time::Instant::now();
    let mut signalled = false;
    let stopped = py.detach(|| {
        unet_rt::process::stop(wait, || {
            if last_check.elapsed() < SIGNAL_POLL {
                return false;
            }
            last_check = std::time::Instant::now();
            signalled = Python::attach(|py| py.check_signals()).is_err();
            signalled
        })
    });
    if stopped {
        return;
    }
    let (why, code) = if signalled {
        (
            "interrupted while waiting for its work to stop".to_owned(),
            130,
        )
    } else {
        (format!("its work did not stop within {timeout} s"), 1)
    };
    let line = format!(
        "unet_rt: {why} at interpreter exit (a forward pass, or another thread's call); the process \
         ends without finalizing, exit status {code}\n"
    );
    if let Ok(sys) = py.import("sys") {
        // Handlers that write files (logging.FileHandler) keep what they
        // buffered; only where the program used logging.
        if let Ok(logging) = sys.getattr("modules").and_then(|m| m.get_item("logging")) {
            let _ = logging.call_method0("shutdown");
        }
        for (stream, text) in [("stdout", ""), ("stderr", line.as_str())] {
            if let Ok(stream) = sys.getattr(stream) {
                if !text.is_empty() {
                    let _ = stream.call_method1("write", (text,));
                }
                let _ = stream.call_method0("flush");
            }
        }
    }
    unet_rt::process::exit_immediately(code)
}
