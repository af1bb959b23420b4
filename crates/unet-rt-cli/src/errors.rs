//! Errors and the exit status each one maps to.

use std::path::{Path, PathBuf};

use crate::output::one_line;

/// Exit status: every input was processed.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: some input failed at run time; the others were processed.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status: the command line must change (bad flag, model, device,
/// output folder).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status after Ctrl-C (128 + SIGINT); other signals give 128 + their
/// number (`interrupt::exit_status`).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// An error that stops the whole command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad arguments, an unusable model or output folder: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// A failure of the engine outside any one input.
    #[error("{}", in_flag_words(.0))]
    Engine(#[from] unet_rt::Error),
    /// Ctrl-C or a termination signal.
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    /// The process exit status for this error.
    pub(crate) fn exit_status(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Interrupted | Self::Engine(unet_rt::Error::Cancelled) => {
                crate::interrupt::exit_status()
            }
            // A model that is missing or not a model, an unknown device, a bad
            // option: the command line must change, so they are usage errors.
            Self::Engine(
                unet_rt::Error::ModelNotFound(_)
                | unet_rt::Error::InvalidModel { .. }
                | unet_rt::Error::InvalidMetadata { .. }
                | unet_rt::Error::InvalidArgument { .. }
                | unet_rt::Error::DeviceUnavailable(_),
            ) => EXIT_USAGE,
            Self::Engine(_) => EXIT_FAILURE,
        }
    }
}

/// The engine's error as this command line says it: an argument that is
/// a flag here is named as the flag (`invalid --object-size: ...`, where
/// the library says `object_size`).
pub(crate) fn in_flag_words(err: &unet_rt::Error) -> String {
    // The library's advice names its own argument; here it is a flag.
    flag_advice(&flag_argument(err))
}

/// `nonfinite="propagate"` (the library's spelling) as `--nonfinite propagate`.
fn flag_advice(message: &str) -> String {
    message.replace("nonfinite=\"propagate\"", "--nonfinite propagate")
}

fn flag_argument(err: &unet_rt::Error) -> String {
    const FLAGS: [(&str, &str); 9] = [
        ("tile", "--tile"),
        ("batch_size", "--batch-size"),
        ("object_size", "--object-size"),
        ("min_size", "--min-size"),
        ("fill_holes", "--fill-holes"),
        ("tta", "--tta"),
        ("device", "--device"),
        ("precision", "--precision"),
        ("nonfinite", "--nonfinite"),
    ];
    match err {
        unet_rt::Error::InvalidArgument { argument, message } => {
            match FLAGS.iter().find(|(name, _)| name == argument) {
                Some((_, flag)) => format!("invalid {flag}: {message}"),
                None => err.to_string(),
            }
        }
        _ => err.to_string(),
    }
}

/// A usage error with a message.
pub(crate) fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// A failure tied to one file: its message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", crate::report::shown(path))]
pub(crate) struct FileError {
    /// The file concerned.
    pub path: PathBuf,
    /// What went wrong, for a person.
    pub message: String,
    /// True when the run was interrupted while this file was processed.
    pub interrupted: bool,
}

impl FileError {
    /// An error about `path`. The message is kept on one line: it ends up
    /// on one line of stderr and in one JSON line.
    pub(crate) fn new(path: &Path, message: impl ToString) -> Self {
        Self {
            path: path.to_owned(),
            message: one_line(&message.to_string()),
            interrupted: false,
        }
    }

    /// An engine error while processing `path`.
    pub(crate) fn engine(path: &Path, err: unet_rt::Error) -> Self {
        let interrupted = matches!(err, unet_rt::Error::Cancelled);
        Self {
            interrupted,
            ..Self::new(path, in_flag_words(&err))
        }
    }
}
