//! Ctrl-C and termination signals.
//!
//! The first signal sets the engine's cancel flag: the current batch ends, no
//! further output is started, temporaries are removed and the command exits
//! with status 130. A second signal removes the temporaries being written and
//! exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::errors::EXIT_INTERRUPTED;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The process-wide cancel flag, shared with the engine's `Options::cancel`.
pub(crate) fn flag() -> Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Whether an interruption was requested.
pub(crate) fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Installs the signal handler (SIGINT, SIGTERM, SIGHUP); `cleanup` runs
/// before a second signal ends the process (it removes the temporaries
/// being written: passed in, so that this module and `atomic`, which asks
/// whether to stop, do not import each other).
pub(crate) fn install(cleanup: fn()) {
    let flag = flag();
    // Without a handler (one already set, which cannot happen here) the
    // default action still ends the process; temporaries are hidden files.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            cleanup();
            // Not `exit`: it tears libtorch down under the running pass.
            use std::io::Write;
            let _ = std::io::stderr().flush();
            unet_rt::process::exit_immediately(EXIT_INTERRUPTED);
        }
        // A line of its own, after whatever the terminal showed (`^C`).
        crate::output::stderr_line("");
        crate::output::stderr_line(
            "unet-rt: interrupted: stopping after the current batch (again to stop at once)",
        );
    });
}

/// Makes a write beyond the file-size limit (`ulimit -f`) an error of that
/// write (`EFBIG`), reported for its input like a full disk, instead of
/// SIGXFSZ, which killed the command mid-batch: no message, exit status
/// 153, the remaining inputs never read and the temporary left behind.
pub(crate) fn ignore_file_size_signal() {
    // SAFETY: SIG_IGN installs no handler of ours (no code runs on the
    // signal), and setting a disposition reads and writes no memory of ours.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
