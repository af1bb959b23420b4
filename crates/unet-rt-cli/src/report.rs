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
        let path = |p: &Path| p.display().to_string();
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
        let output = self
            .output
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
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
                    self.input.display(),
                    self.seconds
                ))
            }
            Status::Skipped => Some(format!(
                "{} -> {output} (exists, skipped)",
                self.input.display()
            )),
            Status::Failed | Status::Cancelled => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
