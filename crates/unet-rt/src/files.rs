//! What a path leads to, for the checks that refuse special files before
//! opening them: opening a FIFO blocks until another process writes to it,
//! and a device such as `/dev/zero` never ends.

use std::fs::FileType;

/// What a file of this type is, for messages, when it is neither a regular
/// file nor a folder: `Some("a FIFO (named pipe)")`, `Some("a socket")`...
pub fn special_kind(file_type: FileType) -> Option<&'static str> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
        if file_type.is_char_device() {
            return Some("a character device");
        }
        if file_type.is_block_device() {
            return Some("a block device");
        }
    }
    (!file_type.is_file() && !file_type.is_dir()).then_some("a special file")
}
