//! Special files (FIFOs, sockets, character and block devices) are refused
//! before they are opened: opening a FIFO blocks until some other process
//! writes to it, and a device such as `/dev/zero` never ends. A path is
//! judged by what it leads to, so a symbolic link `x.npy -> /dev/zero` is a
//! device.

use std::fs::Metadata;
use std::path::Path;

pub(crate) use unet_rt::files::special_kind;

/// An error when `path` leads to a special file; `Ok` for regular files,
/// folders and paths that cannot be examined (opening them reports why).
pub(crate) fn refuse_special(path: &Path, role: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) => refuse_special_metadata(&meta, role),
        Err(_) => Ok(()),
    }
}

/// [`refuse_special`] on metadata already read (of an open file, say).
pub(crate) fn refuse_special_metadata(meta: &Metadata, role: &str) -> Result<(), String> {
    match special_kind(meta.file_type()) {
        Some(kind) => Err(format!("is {kind}, not {role}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_folders_pass_devices_do_not() {
        let dir = std::env::temp_dir();
        assert!(refuse_special(&dir, "an image file").is_ok());
        assert!(refuse_special(Path::new("/nonexistent/x.tif"), "an image file").is_ok());
        let err = refuse_special(Path::new("/dev/null"), "an image file").unwrap_err();
        assert_eq!(err, "is a character device, not an image file");
    }
}
