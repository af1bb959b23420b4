//! Progress bars on a terminal: one for the files, one for the tiles of the
//! current file. Nothing is drawn when stderr is not a terminal (pipes, logs,
//! CI), or with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use unet_rt::{Progress, ProgressFn};

/// The two bars of a `segment` run.
#[derive(Debug)]
pub(crate) struct Bars {
    multi: MultiProgress,
    files: ProgressBar,
    tiles: ProgressBar,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bars {
    /// Bars for `files` inputs, drawn only when `wanted` and stderr is a terminal.
    pub(crate) fn new(files: usize, wanted: bool) -> Self {
        let target = if wanted && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let file_bar = multi.add(ProgressBar::new(u64::try_from(files).unwrap_or(u64::MAX)));
        file_bar.set_style(style("files [{bar:30}] {pos}/{len} {wide_msg}"));
        let tiles = multi.add(ProgressBar::new(0));
        tiles.set_style(style(
            "tiles [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        ));
        Self {
            multi,
            files: file_bar,
            tiles,
        }
    }

    /// A file starts: `tiles` tiles in all its pages.
    pub(crate) fn start_file(&self, name: &str, tiles: usize) {
        self.files.set_message(name.to_owned());
        self.tiles.reset();
        // Not yet counted (0): no length, where a length of 0 drew a full
        // bar at "0/0" before each image's tiles were counted.
        if tiles == 0 {
            self.tiles.unset_length();
        } else {
            self.tiles
                .set_length(u64::try_from(tiles).unwrap_or(u64::MAX));
        }
        self.tiles.set_position(0);
    }

    /// The engine's progress callback for the current file (the engine
    /// counts the tiles of all its pages).
    pub(crate) fn tile_callback(&self) -> ProgressFn {
        let tiles = self.tiles.clone();
        Arc::new(move |p: Progress| {
            if tiles.length().is_none() {
                tiles.set_length(u64::try_from(p.total).unwrap_or(u64::MAX));
            }
            tiles.set_position(u64::try_from(p.done).unwrap_or(u64::MAX));
        })
    }

    /// The current file is done (or failed, or was skipped).
    pub(crate) fn file_done(&self) {
        self.files.inc(1);
    }

    /// Prints a line on stdout without tearing the bars.
    pub(crate) fn println(&self, line: &str) {
        self.multi.suspend(|| crate::output::stdout_line(line));
    }

    /// Prints a line on stderr without tearing the bars.
    pub(crate) fn eprintln(&self, line: &str) {
        self.multi.suspend(|| crate::output::stderr_line(line));
    }

    /// Removes the bars.
    pub(crate) fn finish(&self) {
        self.tiles.finish_and_clear();
        self.files.finish_and_clear();
        let _ = self.multi.clear();
    }
}
