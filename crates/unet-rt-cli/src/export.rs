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

/// `--flag=value` as one word: a value starting with `-` (`--name=-x`)
/// given as two was taken for a flag by Python's argparse.
fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
    let mut word = OsString::from(format!("--{name}="));
    word.push(value);
    word
}

/// Runs the export; returns the exit status.
pub(crate) fn run(args: &ExportArgs) -> Result<u8, CliError> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let python = python();
    let mut command = Command::new(&python);
    command.args(["-m", "unet_rt.bioimageio", "export"]);
    command.arg(flag("output", &args.output));
    if let Some(name) = &args.name {
        command.arg(flag("name", name));
    }
    for author in &args.author {
        command.arg(flag("author", author));
    }
    command.arg(flag("license", &args.license));
    if let Some(image) = &args.test_image {
        // A FIFO would block the export for ever.
        refuse_special(image, "an image file")
            .map_err(|m| CliError::Usage(format!("--test-image {}: {m}", image.display())))?;
        command.arg(flag("test-image", image));
    }
    if let Some(model) = &args.model {
        // After `--`: a model named `-model.pt` is not a flag.
        command.arg("--").arg(model);
    }
    // A process group of its own: a terminal's Ctrl-C reaches this process
    // alone, which passes one SIGINT on (the child's KeyboardInterrupt
    // removes its partial package), and waits for it.
    command.process_group(0);
    let mut child = command.spawn().map_err(|e| {
        CliError::Usage(format!(
            "cannot run {} ({e}): export-bioimageio needs Python with unet_rt[bioimageio]; set UNET_RT_PYTHON",
            python.to_string_lossy()
        ))
    })?;
    let mut passed_on = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                return Err(CliError::Engine(unet_rt::Error::Internal(format!(
                    "cannot wait for the Python export: {e}"
                ))))
            }
        }
        if crate::interrupt::requested() && !passed_on {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: `kill` only sends a signal; `pid` is our child,
                // not yet waited for, so the number is still its own.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            passed_on = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if passed_on {
        return Err(CliError::Interrupted);
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(0),
        (Some(code), _) => Ok(u8::try_from(code).unwrap_or(EXIT_FAILURE)),
        (None, signal) => {
            crate::output::stderr_line(&format!(
                "unet-rt: error: the Python export was killed by signal {} (out of memory?): no package written",
                signal.map_or_else(|| "?".to_owned(), |s| s.to_string())
            ));
            Ok(EXIT_FAILURE)
        }
    }
}
