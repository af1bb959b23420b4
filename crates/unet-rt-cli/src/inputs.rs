//! Which files the `segment` inputs name: files, folders and glob patterns.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::errors::FileError;
use crate::read::{extension, EXTENSIONS};
use crate::special_files::refuse_special;

/// Expands the inputs in the order given: a file as it is, a folder as its
/// supported image files (not recursive, hidden files skipped, sorted by
/// name), a pattern with `*`, `?` or `[` that the shell left unexpanded as the
/// files it matches (sorted). Folders and patterns take regular files only
/// (`is_file` follows links): FIFOs, sockets and devices there are skipped,
/// and named alone they are refused. A name that is none of these, a folder
/// without images and a pattern matching nothing each give an error in
/// place, so the other inputs are still processed. Repeated files are kept
/// once.
pub(crate) fn discover(inputs: &[PathBuf]) -> Vec<Result<PathBuf, FileError>> {
    let mut out = Vec::new();
    for input in inputs {
        // A name that is there (a broken link included) is never a pattern.
        let found = if input.is_dir() {
            folder(input)
        } else if input.symlink_metadata().is_ok() || !is_pattern(input) {
            match unreadable(input) {
                Some(e) => Err(e),
                None => single(input).map(|files| files.into_iter().map(Ok).collect()),
            }
        } else {
            pattern(input)
        };
        match found {
            Ok(files) => out.extend(files),
            Err(e) => out.push(Err(e)),
        }
    }
    once_each(out)
}

/// Why the file at `path` cannot be read, in the system's words where it
/// has any: "no such file" was said of a symbolic link to nothing or in a
/// loop, of a path beyond the system's limit and of a folder that cannot
/// be searched. `None` where it can be looked at.
fn unreadable(path: &Path) -> Option<FileError> {
    let err = std::fs::metadata(path).err()?;
    let link = path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    Some(FileError::new(
        path,
        match err.kind() {
            std::io::ErrorKind::NotFound if link => {
                "a symbolic link to a file that does not exist".to_owned()
            }
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            _ => format!("cannot be read: {err}"),
        },
    ))
}

/// One file under several names (`a.tif`, `./a.tif`, its folder, a link to
/// it) is segmented once, where its first name stands, under a name that is
/// not a symbolic link when it has one: `alias.tif -> img.tif` in a folder
/// made the result `alias.tif` and left no word of `img.tif`.
fn once_each(found: Vec<Result<PathBuf, FileError>>) -> Vec<Result<PathBuf, FileError>> {
    // Each name resolved and looked at once: (the file, whether the name is a link).
    let keyed: Vec<Result<(PathBuf, PathBuf, bool), FileError>> = found
        .into_iter()
        .map(|item| {
            item.map(|name| {
                let file = std::fs::canonicalize(&name).unwrap_or_else(|_| name.clone());
                let link = name
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink());
                (name, file, link)
            })
        })
        .collect();
    // Per file, the first of its names that is not a link, else its first.
    let mut preferred: std::collections::HashMap<PathBuf, (PathBuf, bool)> =
        std::collections::HashMap::new();
    for (name, file, link) in keyed.iter().flatten() {
        let chosen = preferred
            .entry(file.clone())
            .or_insert_with(|| (name.clone(), *link));
        if chosen.1 && !link {
            *chosen = (name.clone(), false);
        }
    }
    let mut seen = HashSet::new();
    keyed
        .into_iter()
        .filter_map(|item| match item {
            Ok((name, file, _)) => {
                let chosen = preferred.remove(&file).map_or(name, |(chosen, _)| chosen);
                seen.insert(file).then_some(Ok(chosen))
            }
            Err(e) => Some(Err(e)),
        })
        .collect()
}

/// A file named on the command line: special files (a FIFO, `/dev/zero`)
/// are refused here, before anything opens them.
fn single(input: &Path) -> Result<Vec<PathBuf>, FileError> {
    refuse_special(input, "an image file").map_err(|m| FileError::new(input, m))?;
    Ok(vec![input.to_owned()])
}

fn is_pattern(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

fn is_image_name(path: &Path) -> bool {
    // Names that are not UTF-8 are images like any other.
    let hidden = path
        .file_name()
        .is_none_or(|n| n.to_string_lossy().starts_with('.'));
    !hidden && EXTENSIONS.contains(&extension(path).as_str())
}

/// A folder's image files, and an error for each image name in it that
/// cannot be read (a broken link, a folder that can be listed but not
/// searched): those were left out without a word.
fn folder(dir: &Path) -> Result<Vec<Result<PathBuf, FileError>>, FileError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| FileError::new(dir, format!("cannot list the folder: {e}")))?;
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_image_name(p))
        .collect();
    names.sort();
    let files = regular_files(names);
    if files.is_empty() {
        return Err(FileError::new(
            dir,
            "the folder holds no .tif, .tiff, .png or .npy file",
        ));
    }
    Ok(files)
}

/// Of `names` (sorted), the regular files, and an error in place for each
/// that cannot be looked at (a broken link): folders, FIFOs and devices
/// are left out.
fn regular_files(names: Vec<PathBuf>) -> Vec<Result<PathBuf, FileError>> {
    names
        .into_iter()
        .filter_map(|p| match unreadable(&p) {
            Some(e) => Some(Err(e)),
            None => p.is_file().then_some(Ok(p)),
        })
        .collect()
}

/// The names a pattern matches, as [`regular_files`] takes them: a broken
/// link among them is an error in place, as in a folder (it was left out
/// without a word).
fn pattern(input: &Path) -> Result<Vec<Result<PathBuf, FileError>>, FileError> {
    // Like a shell, `*` does not match a leading dot (hidden files, and the
    // temporaries of a run in progress).
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..glob::MatchOptions::new()
    };
    // Expanded one component at a time over the folders' listings (the
    // glob crate's walk panics on names that are not UTF-8); names are
    // matched as text, with such bytes replaced, and kept as they are.
    let mut candidates = vec![PathBuf::new()];
    for component in input.components() {
        let text = component.as_os_str().to_string_lossy();
        if !matches!(component, Component::Normal(_)) || !text.contains(['*', '?', '[']) {
            for candidate in &mut candidates {
                candidate.push(component);
            }
            continue;
        }
        // `**` is `*` within one name, as in a shell without globstar (the
        // glob crate refused `**.npy`, which the help says is `*.npy`).
        let matcher = glob::Pattern::new(&one_star_runs(&text)).map_err(|e| {
            FileError::new(input, format!("no such file, nor a valid pattern ({e})"))
        })?;
        let mut matched = Vec::new();
        for dir in &candidates {
            let listed = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let Ok(entries) = std::fs::read_dir(listed) else {
                continue;
            };
            for name in entries.filter_map(|e| e.ok().map(|e| e.file_name())) {
                if matcher.matches_with(&name.to_string_lossy(), options) {
                    matched.push(dir.join(name));
                }
            }
        }
        candidates = matched;
    }
    let others = candidates.len();
    let first_other = candidates.first().cloned();
    candidates.sort();
    let files = regular_files(candidates);
    if let (true, Some(first)) = (files.is_empty(), first_other) {
        // "no file matches" read as a typo where a FIFO or a folder matched.
        return Err(FileError::new(
            input,
            format!(
                "matches {others} entr{} but no regular file ({} is not one)",
                if others == 1 { "y" } else { "ies" },
                first.display()
            ),
        ));
    }
    if files.is_empty() {
        return Err(FileError::new(input, "no file matches this pattern"));
    }
    Ok(files)
}

/// `text` with each run of `*` as one `*` (the same pattern within one
/// name, a `[**]` class included).
fn one_star_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !(c == '*' && out.ends_with('*')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_folders_patterns_and_reports_missing_names() {
        let dir = std::env::temp_dir().join(format!("unet_rt_inputs_{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in [
            "b.tif",
            "a.PNG",
            "c.npy",
            "notes.txt",
            ".hidden.tif",
            ".a.tif.1.partial",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let found = discover(&[
            dir.clone(),
            dir.join("c.npy"),
            dir.join("*.tif"),
            dir.join("none*.tif"),
            dir.join("gone.tif"),
            dir.join("sub*"),
        ]);
        let names: Vec<String> = found
            .iter()
            .map(|r| match r {
                Ok(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
                Err(e) => format!("error: {}", e.message),
            })
            .collect();
        assert_eq!(
            names[..5],
            [
                "a.PNG",
                "b.tif",
                "c.npy",
                "error: no file matches this pattern",
                "error: no such file"
            ]
        );
        // A pattern matching a folder (or a FIFO) only said "no file matches".
        assert!(
            names[5].starts_with("error: matches 1 entry but no regular file"),
            "{}",
            names[5]
        );
        // `**` within a name is `*`, as the help says (it was refused).
        for pattern in ["**.tif", "s**/../**b.t[*i]f"] {
            let found = discover(&[dir.join(pattern)]);
            assert!(
                matches!(&found[..], [Ok(b)] if b.ends_with("b.tif")),
                "{found:?}"
            );
        }
        // A broken link a pattern matches is named, not left out.
        std::os::unix::fs::symlink(dir.join("away.tif"), dir.join("link.tif")).unwrap();
        let found = discover(&[dir.join("*.tif")]);
        assert!(
            matches!(&found[..], [Ok(b), Err(e)] if b.ends_with("b.tif")
                && e.path.ends_with("link.tif") && e.message.contains("does not exist")),
            "{found:?}"
        );
        let device = discover(&[PathBuf::from("/dev/null")]);
        assert!(matches!(&device[..], [Err(e)] if e.message.contains("character device")));
        let empty = discover(&[dir.join("sub")]);
        assert!(matches!(&empty[..], [Err(e)] if e.message.contains("no .tif")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
