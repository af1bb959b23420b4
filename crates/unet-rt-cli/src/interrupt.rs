//! Ctrl-C and termination signals.
//!
//! The first signal sets the engine's cancel flag: the current batch ends, no
//! further output is started, temporaries are removed and the command exits
//! with status 128 + the signal's number, as a shell reports a command the
//! signal ended (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP: a job
//! scheduler's SIGTERM read as a Ctrl-C before). A second signal removes the
//! temporaries being written and exits at once.
//!
//! The handler itself only writes the signal's number to a pipe (all it may
//! do inside a signal handler); a thread of ours reads the pipe and acts.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::errors::EXIT_INTERRUPTED;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The first signal received (0 before any).
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The pipe's writing end, for the handler (-1 before `install`).
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// The signals that stop the command.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The process-wide cancel flag, shared with the engine's `Options::cancel`.
pub(crate) fn flag() -> Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Whether an interruption was requested.
pub(crate) fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// The exit status of an interrupted command: 128 + the number of the
/// first signal received, 130 (SIGINT's) when none was.
pub(crate) fn exit_status() -> u8 {
    status_of(FIRST_SIGNAL.load(Ordering::SeqCst))
}

fn status_of(signal: libc::c_int) -> u8 {
    u8::try_from(signal)
        .ok()
        .filter(|&s| s > 0 && s < 128)
        .map_or(EXIT_INTERRUPTED, |s| 128 + s)
}

extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: `__errno_location` returns this thread's errno, which `write`
    // may change: it is put back, as the interrupted code expects.
    let saved = unsafe { *libc::__errno_location() };
    let fd = PIPE.load(Ordering::Relaxed);
    let byte = u8::try_from(signal).unwrap_or(0);
    // SAFETY: `write` is async-signal-safe; `fd` is the pipe's writing
    // end, open for the life of the process and non-blocking, and the
    // buffer is one byte on this stack frame. A full pipe (signals far
    // faster than the thread reads them) loses the byte at once: the
    // earlier ones already stop the command.
    unsafe {
        libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
        *libc::__errno_location() = saved;
    }
}

/// Installs the signal handler (SIGINT, SIGTERM, SIGHUP); `cleanup` runs
/// before a second signal ends the process (it removes the temporaries
/// being written: passed in, so that this module and `atomic`, which asks
/// whether to stop, do not import each other). Where the pipe, the thread or
/// a handler cannot be set up, the default action still ends the process
/// (temporaries are hidden files, removed by the next run).
pub(crate) fn install(cleanup: fn()) {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `pipe2` writes two descriptors into the array it is given,
    // which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [read_end, write_end] = fds;
    // The handler must never wait: with the writing end blocking, a pipe
    // filled by signals faster than the thread reads them would hang the
    // process inside the handler.
    // SAFETY: `fcntl` on a descriptor this function just opened; F_SETFL
    // takes an int of flags.
    if unsafe { libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return;
    }
    let flag = flag();
    let listener = std::thread::Builder::new()
        .name("unet-rt-signals".to_owned())
        .spawn(move || loop {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a local of one byte from the
            // pipe's reading end, which only this thread uses.
            let got = unsafe { libc::read(read_end, std::ptr::addr_of_mut!(byte).cast(), 1) };
            if got == 1 {
                received(libc::c_int::from(byte), &flag, cleanup);
            } else if got == 0
                || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                return;
            }
        });
    if listener.is_err() {
        return;
    }
    PIPE.store(write_end, Ordering::SeqCst);
    for signal in SIGNALS {
        // SAFETY: a zeroed `sigaction` is a valid value (no flags, empty
        // mask) before the fields set here; `on_signal` is an
        // `extern "C" fn(c_int)`, the handler type without SA_SIGINFO, and
        // does only async-signal-safe work. SA_RESTART resumes the system
        // calls the signal interrupts, as the default handling would.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// What a signal does: the first stops the command after its batch, a
/// second ends it at once.
fn received(signal: libc::c_int, flag: &AtomicBool, cleanup: fn()) {
    // Before the flag: whoever sees the flag set reads the status after it.
    let _ = FIRST_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    if flag.swap(true, Ordering::SeqCst) {
        cleanup();
        // Not `exit`: it tears libtorch down under the running pass.
        use std::io::Write;
        let _ = std::io::stderr().flush();
        unet_rt::process::exit_immediately(exit_status());
    }
    // A line of its own, after whatever the terminal showed (`^C`).
    crate::output::stderr_line("");
    crate::output::stderr_line(
        "unet-rt: interrupted: stopping after the current batch (again to stop at once)",
    );
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

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn the_exit_status_is_128_plus_the_first_signal() {
        assert_eq!(status_of(libc::SIGINT), 130);
        assert_eq!(status_of(libc::SIGTERM), 143);
        assert_eq!(status_of(libc::SIGHUP), 129);
        assert_eq!(status_of(0), 130);
        assert_eq!(status_of(200), 130);
    }
}
