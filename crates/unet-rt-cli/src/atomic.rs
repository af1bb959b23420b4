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
    let tmp = temporary_path(path);
    register(&tmp);
    let result = (|| {
        let file = File::create(&tmp)
            .map_err(|e| format!("cannot create a file in {}: {e}", folder(path)))?;
        let mut out = Guarded(BufWriter::new(file));
        write(&mut out)?;
        let file = out.0.into_inner().map_err(|e| e.error().to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        drop(file);
        if interrupt::requested() {
            return Err("interrupted".to_owned());
        }
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    unregister(&tmp);
    result.map_err(|message| FileError {
        interrupted: interrupt::requested(),
        ..FileError::new(path, message)
    })
}

fn folder(path: &Path) -> String {
    path.parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ".".to_owned())
}

pub(crate) fn register(tmp: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(tmp.to_owned());
    }
}

pub(crate) fn unregister(tmp: &Path) {
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
        if std::fs::remove_file(&tmp).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
}

/// A writer that fails once an interruption is requested.
#[derive(Debug)]
pub(crate) struct Guarded<W>(W);

impl<W: Write> Write for Guarded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if interrupt::requested() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
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
