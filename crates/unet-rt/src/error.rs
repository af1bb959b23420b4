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

/// libtorch messages carry a C++ backtrace after the first lines; users need
/// only the message itself.
pub(crate) fn first_line(message: &str) -> String {
    let trimmed = message
        .split("\nException raised from")
        .next()
        .unwrap_or(message)
        .trim();
    trimmed.lines().take(6).collect::<Vec<_>>().join("\n")
}
