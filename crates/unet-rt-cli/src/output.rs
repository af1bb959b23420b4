//! Writing to stdout and stderr. A closed pipe (`unet-rt info | head -1`)
//! must not panic, as `println!` and `eprintln!` would: lines that cannot be
//! written are dropped.

use std::io::Write;

/// Writes one line on stdout, ignoring a closed pipe.
pub(crate) fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Writes `line` on stderr as one line (line breaks inside it, from a
/// library's message, become spaces), ignoring a closed pipe.
pub(crate) fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", one_line(line));
}

/// `text` on one line: its lines trimmed and joined by spaces.
pub(crate) fn one_line(text: &str) -> String {
    if !text.contains(['\n', '\r']) {
        return text.to_owned();
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_lines() {
        assert_eq!(one_line("a: b"), "a: b");
        assert_eq!(
            one_line("syntax error:\n --> 1:3\n  |\n\n"),
            "syntax error: --> 1:3 |"
        );
    }
}
