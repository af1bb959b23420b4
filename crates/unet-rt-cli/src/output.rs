//! Writing to stdout and stderr. A closed pipe (`unet-rt info | head -1`)
//! must not panic, as `println!` and `eprintln!` would: lines that cannot be
//! written are dropped.

use std::io::Write;

/// The first failure to write stdout other than a closed pipe (a full
/// disk under `--json > log.jsonl`): the command then fails, since the log
/// a caller resumes from is incomplete.
static STDOUT_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Writes one line on stdout, ignoring a closed pipe; other failures are
/// kept for [`stdout_failure`].
pub(crate) fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_FAILURE.set(err.to_string());
        }
    }
}

/// Why a line could not be written on stdout, if one could not (a closed
/// pipe aside).
pub(crate) fn stdout_failure() -> Option<&'static str> {
    STDOUT_FAILURE.get().map(String::as_str)
}

/// Writes `line` on stderr as one line (line breaks inside it, from a
/// library's message, become spaces), ignoring a closed pipe.
pub(crate) fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", one_line(line));
}

/// `text` on one line: its lines trimmed and joined by spaces, and other
/// control characters but tabs escaped (`\u{1b}`): a file name's terminal
/// escapes, quoted in a message, cleared the screen or coloured the text.
pub(crate) fn one_line(text: &str) -> String {
    let joined = if text.contains(['\n', '\r']) {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        text.to_owned()
    };
    if !joined.chars().any(|c| c.is_control() && c != '\t') {
        return joined;
    }
    joined
        .chars()
        .map(|c| match c {
            c if c.is_control() && c != '\t' => escaped(c),
            c => c.to_string(),
        })
        .collect()
}

/// A control character as text (`\u{1b}`), as every line written shows it.
pub(crate) fn escaped(c: char) -> String {
    format!("\\u{{{:x}}}", u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_lines() {
        assert_eq!(one_line("a: b"), "a: b");
        assert_eq!(one_line("x\u{1b}[2J\ty"), "x\\u{1b}[2J\ty");
        assert_eq!(
            one_line("syntax error:\n --> 1:3\n  |\n\n"),
            "syntax error: --> 1:3 |"
        );
    }
}
