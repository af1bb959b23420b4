//! Panics: a panic is a bug, never a user error, and still must not end the
//! process with status 101 and a backtrace. The command runs inside
//! [`catch`], which turns a panic into an error that is reported in one line
//! (`unet-rt: internal error: ...`), and so does each input of `segment`, so
//! that a bug met on one file spares the others.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe, PanicHookInfo};
use std::sync::Mutex;

use crate::output::{one_line, stderr_line};

thread_local! {
    /// How many [`catch`] calls the current thread is inside.
    static CATCHING: Cell<usize> = const { Cell::new(0) };
}

/// The message of the last panic caught, kept by the hook for [`catch`]
/// (the payload alone lacks the location).
static LAST: Mutex<Option<String>> = Mutex::new(None);

/// What is appended to an internal error.
pub(crate) const BUG: &str = "this is a bug: please report it with the command that caused it";

/// Installs the panic hook. A panic inside [`catch`] is recorded for it to
/// report; any other (a thread of the engine, say) is printed in one line at
/// once, as nothing else will report it.
pub(crate) fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = describe(info);
        if CATCHING.with(Cell::get) > 0 {
            if let Ok(mut last) = LAST.lock() {
                *last = Some(message);
            }
        } else {
            stderr_line(&format!("unet-rt: internal error: {message}; {BUG}"));
        }
    }));
}

/// Runs `f`; a panic becomes `Err` with its message and location.
///
/// Whatever `f` left half-done is dropped or abandoned by the caller (an
/// input's report, the command), so observing it after a panic is not a
/// concern: hence `AssertUnwindSafe`.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    result.map_err(|payload| {
        let recorded = LAST.lock().ok().and_then(|mut last| last.take());
        recorded.unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

/// A panic's message and where it happened, on one line.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let message = payload_text(info.payload());
    match info.location() {
        Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
        None => message,
    }
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    };
    one_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_location() {
        install_hook();
        let err = catch(|| -> u8 { panic!("boom\nsecond line") }).unwrap_err();
        assert!(err.starts_with("boom second line (at "), "{err}");
        assert!(err.contains("panics.rs"), "{err}");
        assert_eq!(catch(|| 5).unwrap(), 5);
        let _ = std::panic::take_hook();
    }
}
