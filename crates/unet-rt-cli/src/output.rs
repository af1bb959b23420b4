//! Writing to stdout. A closed pipe (`unet-rt info | head -1`) must not
//! panic, as `println!` would: lines that cannot be written are dropped.

use std::io::Write;

/// Writes one line on stdout, ignoring a closed pipe.
pub(crate) fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
