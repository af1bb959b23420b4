//! What `segment` says about each input: a text line for people, or one
//! JSON object per line for programs (`--json`).

use std::path::{Path, PathBuf};

/// How an input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The result was written.
    Ok,
    /// `--skip-existing` found the result already there.
    Skipped,
    /// The input could not be processed.
    Failed,
    /// The run was interrupted while processing it.
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The summary of one input.
#[derive(Debug)]
pub(crate) struct Report {
    /// The input file.
    pub input: PathBuf,
    /// The result file (also when skipped).
    pub output: Option<PathBuf>,
    /// The input array's shape as read.
    pub shape: Option<Vec<usize>>,
    /// Wall time spent on the input.
    pub seconds: f64,
    /// How it ended.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// Objects found (`--output-kind instances`).
    pub objects: Option<usize>,
}

impl Report {
    /// A report with only the input and a status.
    pub(crate) fn new(input: &Path, status: Status) -> Self {
        Self {
            input: input.to_owned(),
            output: None,
            shape: None,
            seconds: 0.0,
            status,
            error: None,
            objects: None,
        }
    }

    /// One JSON object on one line.
    pub(crate) fn json(&self) -> String {
        let path = |p: &Path| shown(p);
        let mut value = serde_json::json!({
            "input": path(&self.input),
            "output": self.output.as_deref().map(path),
            "shape": self.shape,
            "seconds": (self.seconds * 1e4).round() / 1e4,
            "status": self.status.as_str(),
            "error": self.error,
        });
        if let (Some(objects), Some(map)) = (self.objects, value.as_object_mut()) {
            map.insert("objects".to_owned(), objects.into());
        }
        value.to_string()
    }

    /// A line for people (`None` for failures, which go to stderr).
    pub(crate) fn text(&self) -> Option<String> {
        let output = self.output.as_deref().map(shown).unwrap_or_default();
        match self.status {
            Status::Ok => {
                let shape = self
                    .shape
                    .as_deref()
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_default();
                let objects = self
                    .objects
                    .map(|n| format!(", {n} objects"))
                    .unwrap_or_default();
                Some(format!(
                    "{} -> {output} ({shape}, {:.2} s{objects})",
                    shown(&self.input),
                    self.seconds
                ))
            }
            Status::Skipped => Some(format!(
                "{} -> {output} (exists, skipped)",
                shown(&self.input)
            )),
            Status::Failed | Status::Cancelled => None,
        }
    }
}

/// A path as one line of text that tells it from every other: as it is
/// where it is UTF-8 without control characters or backslashes; otherwise
/// with `\\`, `\n`, `\t`, other control characters (`\u{1b}`) and bytes that
/// are not UTF-8 (`\xff`) escaped. `Path::display` replaced such bytes with
/// U+FFFD, so two inputs could be reported alike, and a newline split a
/// report line in two; a backslash shown as it is made `a\nb` (two
/// characters) read as `a<newline>b` escaped.
pub(crate) fn shown(path: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.chars().any(|c| c.is_control() || c == '\\') {
            return text.to_owned();
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&crate::output::escaped(c)),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_plain_text_are_escaped_and_stay_apart() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        assert_eq!(shown(Path::new("in/a bé.tif")), "in/a bé.tif");
        assert_eq!(shown(Path::new("in/a\\nb.tif")), "in/a\\\\nb.tif");
        assert_ne!(
            shown(Path::new("in/a\\nb.tif")),
            shown(Path::new("in/a\nb.tif"))
        );
        assert_eq!(shown(Path::new("in/a\nb.tif")), "in/a\\nb.tif");
        assert_eq!(shown(Path::new("x\u{1b}[31m\\y")), "x\\u{1b}[31m\\\\y");
        let latin1 = Path::new(OsStr::from_bytes(b"caf\xe9.tif"));
        let other = Path::new(OsStr::from_bytes(b"caf\xe8.tif"));
        assert_eq!(shown(latin1), "caf\\xe9.tif");
        assert_ne!(shown(latin1), shown(other));
        let mut r = Report::new(Path::new("in/a\nb.tif"), Status::Ok);
        r.output = Some(PathBuf::from(OsStr::from_bytes(b"out/\xff.tif")));
        assert!(!r.text().unwrap().contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["input"], "in/a\\nb.tif");
        assert_eq!(v["output"], "out/\\xff.tif");
    }

    #[test]
    fn json_lines_have_every_field() {
        let mut r = Report::new(Path::new("in/a.tif"), Status::Ok);
        r.output = Some(PathBuf::from("out/a.tif"));
        r.shape = Some(vec![3, 4]);
        r.seconds = 0.123456;
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["shape"], serde_json::json!([3, 4]));
        assert_eq!(v["seconds"], 0.1235);
        assert!(v["error"].is_null());
        assert!(!r.json().contains('\n'));
    }
}
