//! Atomic output files: each result is written to a temporary file in the
//! destination folder and renamed into place once complete, so a file under
//! its final name is always whole, whatever interrupts the run.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
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
    hidden_beside(path, "partial")
}

/// `.<name>.<pid>.<suffix>` beside `path`; a name too long to take the
/// additions (file names stop at 255 bytes) keeps its first part and a
/// hash of the whole: a legal result name of 244 bytes failed with "File
/// name too long", blamed on the result.
fn hidden_beside(path: &Path, suffix: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};

    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_owned());
    let mut short = name.clone();
    if name.len() > 180 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let mut end = 160;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        short = format!("{}~{:016x}", &name[..end], hasher.finish());
    }
    path.with_file_name(format!(".{short}.{}.{suffix}", std::process::id()))
}

/// Writes `path` through a temporary file renamed into place at the end.
/// The writer given to `write` fails once an interruption is requested, so
/// a long write stops early; the temporary is then removed.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut Guarded<BufWriter<File>>) -> Result<(), String>,
) -> Result<(), FileError> {
    through_temporary(path, false, |tmp| {
        // The file `through_temporary` created and holds locked.
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
        write(tmp)?;
        sync_tree(tmp).map_err(|e| format!("cannot flush {} to disk: {e}", tmp.display()))
    })
}

/// Flushes every file and folder under `root` to the disk, as a single
/// result file is before its rename: renamed first, a store whose chunks
/// were still in the page cache could stand whole under its final name
/// and lose them in a power cut.
fn sync_tree(root: &Path) -> io::Result<()> {
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                File::open(entry.path())?.sync_all()?;
            }
        }
        // A folder's entries (the chunk names) are its own data.
        File::open(&folder)?.sync_all()?;
    }
    Ok(())
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
    // Held until the result has its name: a later run's sweep takes a
    // temporary whose lock it gets for one a killed run left.
    let claim = claim(&tmp, folder)
        .map_err(|e| format!("cannot create a file in {}: {e}", self::folder(path)));
    let result = claim.and_then(|_lock| {
        write(&tmp).and_then(|()| {
            if interrupt::requested() {
                return Err("interrupted".to_owned());
            }
            check_replaceable(path, folder)?;
            if folder {
                replace_folder(&tmp, path)
            } else {
                std::fs::rename(&tmp, path).map_err(|e| e.to_string())
            }
        })
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

/// Creates the temporary `tmp` (an empty file, or an empty folder when
/// `folder`; one of a previous process of this pid is replaced) and locks
/// it for as long as the returned handle lives.
fn claim(tmp: &Path, folder: bool) -> io::Result<File> {
    remove(tmp);
    if folder {
        std::fs::create_dir(tmp)?;
    } else {
        File::create(tmp)?;
    }
    let handle = File::open(tmp)?;
    // A file system without locks leaves it unlocked: a sweep then cannot
    // lock it either, and leaves it alone.
    let _ = try_lock(&handle);
    Ok(handle)
}

/// Takes an exclusive `flock` on `file` without waiting; false when another
/// open file holds one (or the file system has no locks).
fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call (`file` is
    // borrowed); flock only acts on it and reads no memory of ours.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// What [`sweep_stale`] did in a folder: the names it removed, and the
/// previous results it put back under their names.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub(crate) removed: Vec<String>,
    pub(crate) restored: Vec<String>,
}

/// Clears what runs killed outright (SIGKILL, out of memory, power cut)
/// left in `dir`: their temporaries (`.<name>.<pid>.partial`, a whole
/// `.zarr` store's worth of chunks at times) are removed, and a previous
/// `.zarr` result moved aside (`.<name>.<pid>.old`) is put back where its
/// name stands empty. A temporary counts as left only when its process is
/// gone from this machine and its lock (held while it is written) is free:
/// a run of another machine writing into a shared folder keeps its own.
pub(crate) fn sweep_stale(dir: &Path) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return swept;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(left) = left_behind(name) else {
            continue;
        };
        let path = entry.path();
        if process_alive(left.pid) {
            continue;
        }
        // Held until the entry is gone, so no writer can claim it between.
        let Ok(handle) = File::open(&path) else {
            continue;
        };
        if !try_lock(&handle) {
            continue;
        }
        let discard = match left.kind {
            Left::Partial => true,
            Left::Old { result } => {
                let target = dir.join(result);
                if target.symlink_metadata().is_err() && !shortened(result) {
                    if std::fs::rename(&path, &target).is_ok() {
                        swept.restored.push(result.to_owned());
                    }
                    false
                } else {
                    is_zarr_store(&target)
                }
            }
        };
        if discard {
            remove(&path);
            if path.symlink_metadata().is_err() {
                swept.removed.push(name.to_owned());
            }
        }
    }
    swept.removed.sort();
    swept.restored.sort();
    swept
}

/// A name this module (or the output folder's write test) gives to what
/// lives only while a run does, with the process that made it.
#[derive(Debug, PartialEq, Eq)]
struct LeftBehind<'a> {
    pid: i32,
    kind: Left<'a>,
}

#[derive(Debug, PartialEq, Eq)]
enum Left<'a> {
    /// A result being written, or the output folder's write test.
    Partial,
    /// A previous `.zarr` result moved aside, of the result name given.
    Old { result: &'a str },
}

fn left_behind(name: &str) -> Option<LeftBehind<'_>> {
    let pid_of = |text: &str| {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<i32>().ok())
            .flatten()
            .filter(|&pid| pid > 0)
    };
    if let Some(pid) = name.strip_prefix(WRITE_TEST).and_then(pid_of) {
        return Some(LeftBehind {
            pid,
            kind: Left::Partial,
        });
    }
    let inner = name.strip_prefix('.')?;
    let (rest, suffix) = inner.rsplit_once('.')?;
    let (result, pid) = rest.rsplit_once('.')?;
    let pid = pid_of(pid)?;
    if result.is_empty() {
        return None;
    }
    let kind = match suffix {
        "partial" => Left::Partial,
        "old" => Left::Old { result },
        _ => return None,
    };
    Some(LeftBehind { pid, kind })
}

/// Whether `result` is the shortened form [`hidden_beside`] gives long
/// names (first part, `~`, 16 hex digits): the full name is not known.
fn shortened(result: &str) -> bool {
    result
        .rsplit_once('~')
        .is_some_and(|(_, hash)| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether process `pid` exists on this machine (one of another user's
/// counts: `kill` then fails with EPERM, not ESRCH).
fn process_alive(pid: i32) -> bool {
    if pid == std::process::id() as i32 {
        return true;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the process
    // exists and may be signalled, and touches no memory of ours.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The prefix of the output folder's write test, a file made and removed
/// at once (`.unet-rt-write-test.<pid>`).
pub(crate) const WRITE_TEST: &str = ".unet-rt-write-test.";

/// Renames the folder `tmp` to `path`. A folder already at `path` (a
/// previous `.zarr` result) is moved aside first and removed after, so a
/// whole result stays under the final name throughout.
fn replace_folder(tmp: &Path, path: &Path) -> Result<(), String> {
    if !path.is_dir() {
        return std::fs::rename(tmp, path).map_err(|e| e.to_string());
    }
    // `through_temporary` checked that the folder is a previous result.
    // One step where the file system can: the name never stands empty
    // (in two, a process killed between them left only `.x.zarr.<pid>.old`).
    if exchange(tmp, path).is_ok() {
        // `tmp` holds the previous result now; left behind, it is clutter.
        let _ = std::fs::remove_dir_all(tmp);
        return Ok(());
    }
    let old = hidden_beside(path, "old");
    std::fs::rename(path, &old).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    if let Err(e) = std::fs::rename(tmp, path) {
        // The previous result goes back under its name.
        let _ = std::fs::rename(&old, path);
        return Err(format!("cannot replace {}: {e}", path.display()));
    }
    std::fs::remove_dir_all(&old).map_err(|e| e.to_string())
}

/// Swaps the entries `a` and `b` in one step (Linux's `renameat2` with
/// `RENAME_EXCHANGE`); an error where the file system cannot.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let nul = |path: &Path| CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other);
    let (a, b) = (nul(a)?, nul(b)?);
    // SAFETY: both are NUL-terminated C strings that outlive the call,
    // which only reads them; AT_FDCWD resolves relative paths as std does.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The attribute of a `.zarr` result's top group that says this tool wrote
/// it, with its output kind and levels.
pub(crate) const STORE_MARK: &str = "unet_rt";

/// What a `.zarr` result of this tool records of itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StoreMark {
    /// `labels` or `instances`.
    pub output: String,
    /// Resolution levels.
    pub levels: u64,
    /// The input's name ([`crate::write::source_name`]); `None` in stores
    /// written before results recorded it.
    pub source: Option<String>,
}

/// The mark of the `.zarr` result at `path` ([`STORE_MARK`] in its top
/// `zarr.json`); `None` for any other folder or store: a store of the
/// user's of that name (their raw data, say) was deleted as a previous
/// result, and `--skip-existing` took any store for this run's result.
pub(crate) fn result_store(path: &Path) -> Option<StoreMark> {
    // Ours is a few kilobytes; a large file is someone else's.
    let mut text = String::new();
    File::open(path.join("zarr.json"))
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    let meta: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mark = meta.get("attributes")?.get(STORE_MARK)?;
    Some(StoreMark {
        output: mark.get("output")?.as_str()?.to_owned(),
        levels: mark.get("levels")?.as_u64()?,
        source: mark
            .get("source")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
    })
}

/// Checks that the result `path` (a file, or a `.zarr` folder when
/// `folder`) may be written: nothing there, or a previous result of its
/// kind that is not write-protected. Called before an input is segmented
/// (these were found after it, the work lost) and again before the rename.
pub(crate) fn check_replaceable(path: &Path, folder: bool) -> Result<(), String> {
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(());
    };
    let shown = path.display();
    if meta.is_dir() && !folder {
        return Err(format!(
            "{shown} is a folder: it is not replaced; move it away"
        ));
    }
    if folder && meta.is_dir() && result_store(path).is_none() {
        return Err(if is_zarr_store(path) {
            format!(
                "{shown} is a zarr store unet-rt did not write: it is not replaced; move it away or choose \
                 another --output folder"
            )
        } else {
            format!(
                "{shown} is a folder that is not a zarr store: it is not replaced; move it away"
            )
        });
    }
    if folder && !meta.is_dir() {
        return Err(format!(
            "{shown} is a file, not a previous .zarr result: it is not replaced; move it away"
        ));
    }
    // A link of the result's name is replaced itself (its target is left
    // alone): only a file's own protection counts.
    if meta.is_file() && meta.permissions().readonly() {
        return Err(format!(
            "{shown} is write-protected: it is not replaced; make it writable (chmod u+w) or choose another \
             --output folder"
        ));
    }
    Ok(())
}

/// Whether `path` is a zarr store (v3 or v2 metadata at its top): a
/// previous `.zarr` result or a store of the user's.
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
    fn a_tree_is_flushed_through_every_level() {
        let root = std::env::temp_dir().join(format!("unet_rt_sync_{}", std::process::id()));
        std::fs::create_dir_all(root.join("0/1/2")).unwrap();
        std::fs::write(root.join("0/1/2/c"), b"chunk").unwrap();
        std::fs::write(root.join("zarr.json"), b"{}").unwrap();
        sync_tree(&root).unwrap();
        // A store that is gone is an error, not one taken as flushed.
        std::fs::remove_dir_all(&root).unwrap();
        assert!(sync_tree(&root).is_err());
    }

    #[test]
    fn folders_are_exchanged_in_one_step() {
        let root = std::env::temp_dir().join(format!("unet_rt_exchange_{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("new"), b"").unwrap();
        std::fs::write(b.join("old"), b"").unwrap();
        exchange(&a, &b).unwrap();
        assert!(b.join("new").is_file() && a.join("old").is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn temporary_names_of_long_results_stay_within_a_file_name() {
        let long = "n".repeat(250);
        let tmp = temporary_path(&Path::new("out").join(format!("{long}.tif")));
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.len() <= 255 && name.starts_with(".nnn") && name.ends_with(".partial"),
            "{name}"
        );
        let other = temporary_path(&Path::new("out").join(format!("{long}.npy")));
        assert_ne!(tmp, other);
        assert_eq!(
            temporary_path(Path::new("out/a.tif")),
            Path::new("out").join(format!(".a.tif.{}.partial", std::process::id()))
        );
    }

    /// The pid of a process that has ended.
    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_alive(pid));
        pid
    }

    #[test]
    fn a_sweep_clears_what_killed_runs_left_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("unet_rt_sweep_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dead = dead_pid();
        let write = |name: &str| std::fs::write(dir.join(name), b"x").unwrap();
        let store = |name: &str| {
            std::fs::create_dir_all(dir.join(name).join("0")).unwrap();
            std::fs::write(dir.join(name).join("zarr.json"), b"{}").unwrap();
            std::fs::write(dir.join(name).join("0/c"), b"chunk").unwrap();
        };
        write(&format!(".a.tif.{dead}.partial"));
        store(&format!(".b.zarr.{dead}.partial"));
        write(&format!("{WRITE_TEST}{dead}"));
        // A previous result moved aside: put back where its name is empty,
        // removed where a newer result stands.
        store(&format!(".c.zarr.{dead}.old"));
        store(&format!(".d.zarr.{dead}.old"));
        store("d.zarr");
        // Kept: a live process's (pid 1), this process's, one whose lock is
        // held (a run of another machine with a pid free here), names of
        // other kinds, and a long name whose result is not known.
        write(".e.tif.1.partial");
        write(&format!(".f.tif.{}.partial", std::process::id()));
        write(&format!(".g.tif.{dead}.partial"));
        let held = File::open(dir.join(format!(".g.tif.{dead}.partial"))).unwrap();
        assert!(try_lock(&held));
        for name in [
            "notes.partial",
            ".h.tif",
            ".i.tif.x1.partial",
            ".j.tif.12.tmp",
            "k.tif",
        ] {
            write(name);
        }
        let long = format!(".{}~0123456789abcdef.{dead}.old", "n".repeat(160));
        store(&long);

        let swept = sweep_stale(&dir);
        assert_eq!(
            swept,
            Swept {
                removed: vec![
                    format!(".a.tif.{dead}.partial"),
                    format!(".b.zarr.{dead}.partial"),
                    format!(".d.zarr.{dead}.old"),
                    format!("{WRITE_TEST}{dead}"),
                ],
                restored: vec!["c.zarr".to_owned()],
            }
        );
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = vec![
            ".e.tif.1.partial".to_owned(),
            format!(".f.tif.{}.partial", std::process::id()),
            format!(".g.tif.{dead}.partial"),
            ".h.tif".to_owned(),
            ".i.tif.x1.partial".to_owned(),
            ".j.tif.12.tmp".to_owned(),
            long,
            "c.zarr".to_owned(),
            "d.zarr".to_owned(),
            "k.tif".to_owned(),
            "notes.partial".to_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected);
        assert!(is_zarr_store(&dir.join("c.zarr")));
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_temporary_being_written_is_locked_against_sweeps() {
        let dir = std::env::temp_dir().join(format!("unet_rt_claim_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for folder in [false, true] {
            let path = dir.join(if folder { "a.zarr" } else { "a.tif" });
            through_temporary(&path, folder, |tmp| {
                let other = File::open(tmp).map_err(|e| e.to_string())?;
                assert!(!try_lock(&other), "a sweep could take {}", tmp.display());
                if folder {
                    std::fs::write(tmp.join("zarr.json"), b"{}").map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .unwrap();
            assert!(path.exists());
        }
        // A temporary of this pid from a run before (a reused pid) is
        // replaced, not written into.
        let stale = temporary_path(&dir.join("b.zarr"));
        std::fs::create_dir_all(stale.join("old")).unwrap();
        through_temporary(&dir.join("b.zarr"), true, |tmp| {
            assert!(!tmp.join("old").exists());
            std::fs::write(tmp.join("zarr.json"), b"{}").map_err(|e| e.to_string())
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_left_behind_are_read_strictly() {
        assert_eq!(
            left_behind(".a.b.tif.42.partial"),
            Some(LeftBehind {
                pid: 42,
                kind: Left::Partial
            })
        );
        assert_eq!(
            left_behind(".x.zarr.7.old"),
            Some(LeftBehind {
                pid: 7,
                kind: Left::Old { result: "x.zarr" }
            })
        );
        for name in [
            ".a.tif.0.partial",
            "..42.partial",
            ".a.tif.-1.partial",
            ".a.tif.+1.partial",
            "a.tif.42.partial",
            ".42.partial",
            ".a.tif.99999999999.partial",
            ".unet-rt-write-test.",
        ] {
            assert_eq!(left_behind(name), None, "{name}");
        }
        assert!(shortened(&format!("{}~0123456789abcdef", "n".repeat(160))));
        assert!(!shortened("plain~name.zarr"));
    }

    #[test]
    fn an_interrupted_write_all_stops_instead_of_retrying() {
        let mut sink = Guarded(Vec::new(), || true);
        let result = sink.write_all(b"pixels");
        assert_eq!(result.unwrap_err().to_string(), "interrupted");
        assert!(sink.0.is_empty());
    }
}
