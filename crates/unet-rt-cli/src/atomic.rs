//! Atomic output files: each result is written to a temporary file in the
//! destination folder and renamed into place once complete, so a file under
//! its final name is always whole, whatever interrupts the run.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::errors::FileError;
use crate::interrupt;

/// Temporary files being written now, removed on interruption.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The temporary name for `path`: hidden, in the same folder (a rename across
/// file systems would not be atomic), unique per process, and with a suffix
/// no reader takes for a result.
pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Writes `path` through a temporary file renamed into place at the end.
/// The writer given to `write` fails once an interruption is requested, so
/// a long write stops early; the temporary is then removed.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut Guarded<BufWriter<File>>) -> Result<(), String>,
) -> Result<(), FileError> {
    through_temporary(path, false, |tmp| {
        let file = File::create(tmp)
            .map_err(|e| format!("cannot create a file in {}: {e}", folder(path)))?;
        let mut out = Guarded(BufWriter::new(file), interrupt::requested);
        write(&mut out)?;
        let file = out.0.into_inner().map_err(|e| e.error().to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Writes the folder `path` (a `.zarr` store) through a temporary folder
/// renamed into place at the end; a previous result is replaced only then.
/// `write` should stop early once an interruption is requested.
pub(crate) fn write_folder_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), FileError> {
    through_temporary(path, true, |tmp| {
        let _ = std::fs::remove_dir_all(tmp);
        write(tmp)
    })
}

/// The one way results reach their name: `write` fills the temporary for
/// `path` (a file, or a folder when `folder`), which is renamed into place
/// unless writing failed or an interruption came; otherwise it is removed.
fn through_temporary(
    path: &Path,
    folder: bool,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), FileError> {
    let tmp = temporary_path(path);
    register(&tmp);
    let result = write(&tmp).and_then(|()| {
        if interrupt::requested() {
            return Err("interrupted".to_owned());
        }
        if folder {
            replace_folder(&tmp, path)
        } else {
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())
        }
    });
    if result.is_err() {
        remove(&tmp);
    }
    unregister(&tmp);
    result.map_err(|message| FileError {
        interrupted: interrupt::requested(),
        ..FileError::new(path, message)
    })
}

/// Renames the folder `tmp` to `path`. A folder already at `path` (a
/// previous `.zarr` result) is moved aside first and removed after, so a
/// whole result stays under the final name throughout.
fn replace_folder(tmp: &Path, path: &Path) -> Result<(), String> {
    if !path.is_dir() {
        return std::fs::rename(tmp, path).map_err(|e| e.to_string());
    }
    // Only a store is a previous result: any other folder of that name is
    // the user's, and it would be deleted.
    if !is_zarr_store(path) {
        return Err(format!(
            "{} is a folder that is not a zarr store: it is not replaced; move it away",
            path.display()
        ));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("result");
    let old = path.with_file_name(format!(".{name}.{}.old", std::process::id()));
    std::fs::rename(path, &old).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    std::fs::rename(tmp, path).map_err(|e| e.to_string())?;
    std::fs::remove_dir_all(&old).map_err(|e| e.to_string())
}

/// Whether `path` is a zarr store (v3 or v2 metadata at its top): a
/// previous `.zarr` result, as opposed to a folder of the user's.
pub(crate) fn is_zarr_store(path: &Path) -> bool {
    ["zarr.json", ".zgroup", ".zarray"]
        .iter()
        .any(|m| path.join(m).is_file())
}

/// Removes a temporary file or folder.
fn remove(tmp: &Path) {
    if std::fs::remove_file(tmp).is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
}

fn folder(path: &Path) -> String {
    path.parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ".".to_owned())
}

fn register(tmp: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(tmp.to_owned());
    }
}

fn unregister(tmp: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| p != tmp);
    }
}

/// Removes every temporary file (or `.zarr` folder) still being written
/// (called before an immediate exit on a second interruption).
pub(crate) fn remove_all() {
    let live = match LIVE.lock() {
        Ok(live) => live.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for tmp in live {
        remove(&tmp);
    }
}

/// A writer that fails once `stop` says so (an interruption was
/// requested).
#[derive(Debug)]
pub(crate) struct Guarded<W>(W, fn() -> bool);

impl<W: Write> Write for Guarded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if (self.1)() {
            // Not `ErrorKind::Interrupted`: `write_all` (and the encoders
            // built on it) retry that kind for ever.
            return Err(io::Error::other("interrupted"));
        }
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Seek> Seek for Guarded<W> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_write_all_stops_instead_of_retrying() {
        let mut sink = Guarded(Vec::new(), || true);
        let result = sink.write_all(b"pixels");
        assert_eq!(result.unwrap_err().to_string(), "interrupted");
        assert!(sink.0.is_empty());
    }
}
