//! `unet-rt export-bioimageio`: bioimage.io packages are built and
//! validated by the spec's own Python implementation (`bioimageio.spec`),
//! so this command runs `python -m unet_rt.bioimageio export` and passes its
//! exit status on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::args::ExportArgs;
use crate::errors::{CliError, EXIT_FAILURE};
use crate::special_files::refuse_special;

/// The Python to run: `$UNET_RT_PYTHON`, the `python` beside this binary
/// (a virtual environment's `bin/`), else `python3` on `PATH`.
fn python() -> OsString {
    if let Some(given) = std::env::var_os("UNET_RT_PYTHON") {
        return given;
    }
    let beside: Option<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("python")));
    match beside {
        Some(path) if path.is_file() => path.into_os_string(),
        _ => OsString::from("python3"),
    }
}

/// Runs the export; returns the exit status.
pub(crate) fn run(args: &ExportArgs) -> Result<u8, CliError> {
    let python = python();
    let mut command = Command::new(&python);
    command.args(["-m", "unet_rt.bioimageio", "export"]);
    if let Some(model) = &args.model {
        command.arg(model);
    }
    command.arg("--output").arg(&args.output);
    if let Some(name) = &args.name {
        command.arg("--name").arg(name);
    }
    for author in &args.author {
        command.arg("--author").arg(author);
    }
    command.arg("--license").arg(&args.license);
    if let Some(image) = &args.test_image {
        // A FIFO would block the export for ever.
        refuse_special(image, "an image file")
            .map_err(|m| CliError::Usage(format!("--test-image {}: {m}", image.display())))?;
        command.arg("--test-image").arg(image);
    }
    let status = command.status().map_err(|e| {
        CliError::Usage(format!(
            "cannot run {} ({e}): export-bioimageio needs Python with unet_rt[bioimageio]; set UNET_RT_PYTHON",
            python.to_string_lossy()
        ))
    })?;
    match status.code() {
        Some(0) => Ok(0),
        Some(code) => Ok(u8::try_from(code).unwrap_or(EXIT_FAILURE)),
        None => Ok(EXIT_FAILURE),
    }
}
