use std::path::PathBuf;

/// Everything that can go wrong in `unet_rt`. Each variant is a distinct kind
/// of failure so that front ends (CLI exit codes, Python exception classes)
/// can map them one to one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model path does not exist.
    #[error("model file not found: {}", .0.display())]
    ModelNotFound(PathBuf),

    /// The file exists but is not a loadable TorchScript archive.
    #[error("cannot load model {}: {reason}", path.display())]
    InvalidModel {
        /// The file that failed to load.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// The embedded `unet_rt.json` metadata is malformed.
    #[error("invalid metadata in {}: {reason}", path.display())]
    InvalidMetadata {
        /// The model file.
        path: PathBuf,
        /// What was wrong with the metadata.
        reason: String,
    },

    /// A caller-supplied argument (array shape, option value) is unusable.
    #[error("invalid {argument}: {message}")]
    InvalidArgument {
        /// The argument's name as the caller knows it.
        argument: &'static str,
        /// What was given and what is accepted.
        message: String,
    },

    /// The requested device does not exist on this machine.
    #[error("{0}")]
    DeviceUnavailable(String),

    /// libtorch raised an error while running the model.
    #[error("inference failed: {0}")]
    Inference(String),

    /// The call was cancelled through [`crate::Options::cancel`].
    #[error("cancelled")]
    Cancelled,

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn inference(err: tch::TchError) -> Self {
        Self::Inference(first_line(&err.to_string()))
    }
}

/// libtorch messages carry a C++ backtrace after the first lines, and
/// TorchScript errors a script traceback before the exception itself; users
/// need the exception's own words.
pub(crate) fn first_line(message: &str) -> String {
    let trimmed = message
        .split("\nException raised from")
        .next()
        .unwrap_or(message)
        .trim();
    if trimmed.contains("failed in the TorchScript interpreter") {
        if let Some(raised) = trimmed.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
            return format!("the model raised {raised}");
        }
    }
    trimmed.lines().take(6).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn keeps_the_exception_of_a_script_traceback() {
        let msg = "Internal torch error: The following operation failed in the TorchScript interpreter.\n\
                   Traceback of TorchScript, serialized code (most recent call last):\n  File \"code.py\", line 14\n\
                   RuntimeError: CUDA out of memory. Tried to allocate 2 GiB\n";
        assert_eq!(first_line(msg), "the model raised RuntimeError: CUDA out of memory. Tried to allocate 2 GiB");
        assert_eq!(first_line("bad shape\nException raised from conv at x.cpp:1"), "bad shape");
    }
}
