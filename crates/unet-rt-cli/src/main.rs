//! `unet-rt`: segment images with U-Net models from the command line.
//!
//! Exit status: 0 when every input was processed, 1 when some input failed
//! at run time (the others are still processed), 2 for usage errors, 128 +
//! the signal's number when interrupted (130 Ctrl-C, 143 SIGTERM). Never 101 or a signal: a panic is caught and reported
//! in one line with status 1, and what an input declares is checked before
//! it is allocated (see `limits`).

// Tests may unwrap: a failure there is the test's report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod args;
mod atomic;
mod axes;
mod bench;
mod errors;
mod export;
mod info;
mod inputs;
mod interrupt;
mod limits;
mod loader;
mod ome_tiff;
mod ome_zarr;
mod output;
mod overlay;
mod panics;
mod progress;
mod read;
mod report;
mod segment;
mod special_files;
mod write;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};
use crate::errors::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

fn main() -> ExitCode {
    panics::install_hook();
    // A panic is a bug; it still ends the command with status 1 and one line.
    let status = match panics::catch(run) {
        Ok(status) => status,
        Err(message) => {
            atomic::remove_all();
            output::stderr_line(&format!(
                "unet-rt: internal error: {message}; {}",
                panics::BUG
            ));
            EXIT_FAILURE
        }
    };
    finish(status)
}

/// Ends the command with `status`. After Ctrl-C (or a load abandoned at a
/// signal) a forward pass may still run on its own thread; exiting tore
/// libtorch down under it and the command died of a segmentation fault
/// after saying it was interrupted. Results are complete or removed by
/// now, so what runs is only waited for briefly, then left unfinished.
fn finish(status: u8) -> ExitCode {
    if !unet_rt::process::stop(std::time::Duration::from_millis(200), || false) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        unet_rt::process::exit_immediately(status);
    }
    ExitCode::from(status)
}

/// Parses the command line and runs the command; returns the exit status.
fn run() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    if cli.version {
        output::stdout_line(&long_version());
        return EXIT_OK;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return EXIT_USAGE;
    };
    interrupt::install(atomic::remove_all);
    interrupt::ignore_file_size_signal();
    let result = match command {
        Command::Segment(args) => segment::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::ExportBioimageio(args) => export::run(&args),
    };
    match result {
        // Said whatever else failed: the --json log is what a resume reads.
        Ok(status) => match output::stdout_failure() {
            Some(why) => {
                output::stderr_line(&format!("unet-rt: error: cannot write to stdout: {why}"));
                if status == EXIT_OK {
                    EXIT_FAILURE
                } else {
                    status
                }
            }
            None => status,
        },
        Err(err) => {
            output::stderr_line(&format!("unet-rt: error: {err}"));
            err.exit_status()
        }
    }
}

/// Reports a command line clap refused: help and version as clap prints
/// them, a usage error as one `unet-rt: error:` line (what every other
/// failure prints, so that scripts and logs see one line per problem).
fn usage_error(err: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    let status = u8::try_from(err.exit_code()).unwrap_or(EXIT_USAGE);
    if !err.use_stderr() || err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return status;
    }
    // clap's report: the message (which may list items on further lines),
    // a blank line, then tips and usage. The message, on one line.
    let text = err.render().to_string();
    let message = text.split("\n\n").next().unwrap_or_default();
    let message: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    output::stderr_line(&format!("unet-rt: error: {message} (see 'unet-rt --help')"));
    status
}

/// The version with libtorch's and the devices. Computed only for
/// `--version`: asking libtorch about CUDA takes time every other command
/// should not pay.
fn long_version() -> String {
    let info = unet_rt::build_info();
    format!(
        "unet-rt {}\nlibtorch {}\nCUDA {} ({} device(s))\nCPU threads {}\nbundled model: {}",
        info.version,
        info.libtorch_version,
        if info.cuda_available {
            "available"
        } else {
            "unavailable"
        },
        info.cuda_device_count,
        info.cpu_threads,
        if loader::bundled_bytes().is_some() {
            "yes"
        } else {
            "no (--model is required)"
        }
    )
}
