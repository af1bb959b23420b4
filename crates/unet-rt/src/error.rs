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

    /// The network produced NaN or infinite values (see
    /// [`crate::NonFinite`]); the message names the first tile affected.
    #[error("{0}")]
    NonFinite(String),

    /// A bug in unet_rt itself (a panic caught at a thread or API boundary).
    #[error("internal error (please report it): {0}")]
    Internal(String),

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

/// Whether a libtorch message is a failed allocation: CUDA's words, and
/// the CPU allocator's.
pub(crate) fn says_out_of_memory(message: &str) -> bool {
    [
        "out of memory",
        "not enough memory",
        "can't allocate memory",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Whether a libtorch message is two tensors of different floating types
/// meeting in one operation: input against weights ("Input type (double)
/// and bias type (float) should be the same"), or two matrices. Not a
/// device mismatch ("Input type (CUDAFloatType) and weight type
/// (CPUFloatType)": a network moving its input to a GPU) nor integer input
/// ("expected scalar type Long").
pub(crate) fn says_dtype_mismatch(message: &str) -> bool {
    let text = message.to_ascii_lowercase();
    let mismatch = (text.contains("type (") && text.contains("should be the same"))
        || text.contains("same dtype")
        || text.contains("expected scalar type")
        || text.contains("must share same datatype");
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let floating = text.contains("mixed dtype")
        || words.iter().any(|w| {
            ["double", "half", "bfloat16", "float64", "float16"]
                .iter()
                .any(|k| w.contains(k))
        });
    let other = text.contains("cuda")
        || words
            .iter()
            .any(|w| ["long", "int", "bool", "byte", "char", "short"].contains(w));
    mismatch && floating && !other
}

/// libtorch messages carry a C++ backtrace after the first lines, and
/// TorchScript errors a script traceback before the exception itself; users
/// need the exception's own words, with torch's names for C++ types.
pub(crate) fn first_line(message: &str) -> String {
    readable_types(&exception_words(message))
}

/// libtorch's `c10::` element types by torch's names ("bias type
/// (c10::complex<float>)" is complex64); any other `c10::` prefix dropped.
/// Every message of libtorch's that reaches a user passes here (through
/// [`first_line`], or probing's own cut).
pub(crate) fn readable_types(message: &str) -> String {
    [
        ("c10::complex<c10::Half>", "complex32"),
        ("c10::complex<float>", "complex64"),
        ("c10::complex<double>", "complex128"),
        ("c10::Half", "float16"),
        ("c10::BFloat16", "bfloat16"),
        ("c10::Float8_", "float8_"),
        ("c10::", ""),
    ]
    .iter()
    .fold(message.to_owned(), |text, (cpp, torch)| {
        text.replace(cpp, torch)
    })
}

/// [`first_line`] before the types are named.
fn exception_words(message: &str) -> String {
    // Everything from the first C++ frame on is for libtorch's developers.
    let mut kept: Vec<&str> = Vec::new();
    for line in message.lines() {
        let t = line.trim_start();
        // Frames only: the exception's own words name C++ types too
        // ("bias type (c10::Half)"), and cutting at them left the quoted
        // source's last line (")") as the message.
        let numbered_frame = t
            .strip_prefix('#')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
        if t.starts_with("Exception raised from") || t.starts_with("frame #") || numbered_frame {
            break;
        }
        kept.push(line);
    }
    let trimmed = kept.join("\n");
    let trimmed = trimmed.trim();
    if trimmed.contains("failed in the TorchScript interpreter") {
        if let Some(raised) = trimmed.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
            return format!("the model raised {raised}");
        }
    }
    let short: Vec<&str> = trimmed
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect();
    if short.is_empty() {
        // A message made only of frames: its first line still says something.
        return message
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(300)
            .collect();
    }
    short.join("\n")
}

#[cfg(test)]
mod tests {
    use super::{first_line, says_dtype_mismatch};

    #[test]
    fn dtype_mismatches_are_told_from_other_failures() {
        for message in [
            "RuntimeError: Input type (double) and bias type (float) should be the same",
            "RuntimeError: Input type (double) and bias type (c10::BFloat16) should be the same",
            "mat1 and mat2 must have the same dtype, but got Double and Float",
            "expected m1 and m2 to have the same dtype, but got: double != float",
            "mixed dtype (CPU): all inputs must share same datatype.",
            "expected scalar type Double but found Float",
            "Input type (CPUDoubleType) and weight type (CPUFloatType) should be the same",
        ] {
            assert!(says_dtype_mismatch(message), "{message}");
        }
        for message in [
            "Sizes of tensors must match except in dimension 1",
            "Given groups=1, weight of size [8, 1, 3, 3], expected input[1, 3, 8, 8] to have 1 channels",
            "CUDA out of memory. Tried to allocate 2 GiB",
            "Input type (CUDAFloatType) and weight type (CPUFloatType) should be the same",
            "Input type (CPUDoubleType) and weight type (CUDAFloatType) should be the same",
            "expected scalar type Long but found Float",
        ] {
            assert!(!says_dtype_mismatch(message), "{message}");
        }
    }

    #[test]
    fn keeps_the_exception_of_a_script_traceback() {
        let msg = "Internal torch error: The following operation failed in the TorchScript interpreter.\n\
                   Traceback of TorchScript, serialized code (most recent call last):\n  File \"code.py\", line 14\n\
                   RuntimeError: CUDA out of memory. Tried to allocate 2 GiB\n";
        assert_eq!(
            first_line(msg),
            "the model raised RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
        );
        assert_eq!(
            first_line("bad shape\nException raised from conv at x.cpp:1"),
            "bad shape"
        );
        let frames = "PytorchStreamReader failed reading zip archive: failed finding central directory\n\
                      frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9e (0x7f in libc10.so)\n\
                      frame #1: <unknown function> + 0x1 (0x2 in libtorch_cpu.so)";
        assert_eq!(
            first_line(frames),
            "PytorchStreamReader failed reading zip archive: failed finding central directory"
        );
        assert!(!first_line("frame #0: c10::x\nframe #1: y").contains("frame #1"));
        let half = "The following operation failed in the TorchScript interpreter.\n\
                    Traceback of TorchScript (most recent call last):\n  File \"code/x.py\", line 9\n    \
                    _0 = torch._convolution(x, w, b,\n    )\n\
                    RuntimeError: Input type (float) and bias type (c10::Half) should be the same\n";
        assert_eq!(
            first_line(half),
            "the model raised RuntimeError: Input type (float) and bias type (float16) should be the same"
        );
        // A weight made complex (a damaged archive) named it in C++.
        assert_eq!(
            first_line("RuntimeError: Input type (float) and bias type (c10::complex<float>) should be the same"),
            "RuntimeError: Input type (float) and bias type (complex64) should be the same"
        );
        assert!(!first_line("frame #0: c10::x\nframe #1: y").contains("c10::"));
        assert!(!first_line("oops\n#0 c10::Error::Error()\n#1 x").contains("#1"));
    }
}
