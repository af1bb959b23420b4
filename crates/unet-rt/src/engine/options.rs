//! What a [`Segmenter`](super::Segmenter) is asked to do: its options and
//! the progress it reports.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{NonFinite, OutputMode, Tta};
use crate::error::{Error, Result};
use crate::geometry::Blend;
use crate::window::Window;

/// Progress of one call, reported after each stitched batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Tiles written so far.
    pub done: usize,
    /// Tiles in all.
    pub total: usize,
}

/// A progress callback; called from the stitching thread.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How a [`Segmenter`](super::Segmenter) runs.
#[derive(Clone, Default)]
pub struct Options {
    /// What to compute (labels by default).
    pub output: OutputMode,
    /// Input tile size per spatial axis; chosen from the memory budget when
    /// `None`.
    pub tile: Option<Vec<usize>>,
    /// One tile covering the whole image and its overlap: the exact result
    /// for networks whose tiles are approximate (see
    /// [`Exactness`](crate::Exactness)), where the image fits in one pass.
    /// Not with `tile`. Asked for by the word [`Options::WHOLE`].
    pub whole: bool,
    /// Tiles per forward pass; chosen from the memory budget when `None`.
    pub batch_size: Option<usize>,
    /// Bytes of activations one batch may take; a device default when `None`.
    pub memory_budget: Option<usize>,
    /// How tiles of same-padded models are combined (crop by default).
    pub blend: Blend,
    /// Called after each batch is written. A panic in it stops the call
    /// and is resumed on the calling thread (it is the caller's panic, not
    /// an error of the engine); the segmenter stays usable.
    pub progress: Option<ProgressFn>,
    /// Set to `true` (from any thread) to stop the call with
    /// [`Error::Cancelled`](crate::Error::Cancelled) at the next batch.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Segment the input as a piece of a larger image: the result covers
    /// the window's region and equals the whole image's result there, bit
    /// for bit (see [`Window`]). Crop plans only (valid models, or same
    /// models with [`Blend::Crop`]).
    pub window: Option<Window>,
    /// For models with percentile normalization: the pixel values mapped to
    /// 0 and 1, in place of the input's own percentiles (for example the
    /// whole image's, when the input is a piece of it).
    pub input_range: Option<(f64, f64)>,
    /// Whether NaN or infinity in the network's input or output is an error
    /// (the default) or passed on.
    pub nonfinite: NonFinite,
    /// Test-time augmentation: each tile's logits averaged over flips (and
    /// rotations); exact tiling is kept (see [`Tta`]).
    pub tta: Tta,
    /// The typical object diameter in the input, in pixels: the image is
    /// resampled to the model's training scale (its metadata's
    /// `object_size`) and the result back (the engine's `rescale` module).
    pub object_size: Option<f64>,
    /// Instances: objects of fewer pixels of the image are removed; the
    /// model's read-out default when `None` (given at the model's training
    /// scale, and scaled with `object_size`).
    pub min_size: Option<u64>,
    /// Instances: whether background enclosed by one object joins it; the
    /// model's read-out default when `None`.
    pub fill_holes: Option<bool>,
    /// Where pixels become network input (see [`Conversion`]).
    pub conversion: Conversion,
}

impl Options {
    /// The tile option's word for one tile covering the image
    /// ([`Options::whole`]).
    pub const WHOLE: &'static str = "whole";

    /// Whether a tile option's text asks for [`Options::whole`]: read as
    /// every option word is, in any case and with surrounding spaces (the
    /// Python API took only "whole", the CLI any case).
    ///
    /// ```
    /// assert!(unet_rt::Options::names_whole(" WHOLE"));
    /// assert!(!unet_rt::Options::names_whole("256"));
    /// ```
    pub fn names_whole(text: &str) -> bool {
        text.trim().eq_ignore_ascii_case(Self::WHOLE)
    }

    /// Refuses `min_size` and `fill_holes` where no instances are read out
    /// of the result (`reads_instances` false, as for labels or
    /// probabilities): they shape instances only, and other outputs
    /// ignored them without a word. The command line reads instances out
    /// for its overlay too, so it says when.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first option given.
    ///
    /// ```
    /// let options = unet_rt::Options { min_size: Some(5), ..Default::default() };
    /// assert!(options.check_read_out_used(true).is_ok());
    /// assert!(options.check_read_out_used(false).is_err());
    /// ```
    pub fn check_read_out_used(&self, reads_instances: bool) -> Result<()> {
        let given = [
            ("min_size", self.min_size.is_some()),
            ("fill_holes", self.fill_holes.is_some()),
        ];
        match given.into_iter().find(|&(_, given)| given) {
            Some((argument, _)) if !reads_instances => Err(Error::InvalidArgument {
                argument,
                message: format!(
                    "it shapes instances, and the output is {}: ask for instances, or leave it out \
                     (it would be ignored)",
                    self.output.name()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Where the image's pixels are mirrored into tiles, converted to `f32` and
/// normalised: the result is the same bit for bit either way, only the
/// work moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conversion {
    /// On the device for models on a GPU, where the pixels can travel as
    /// they are (8- and 16-bit integers, half floats: a quarter or half of
    /// the bytes of `f32` tiles, and no conversion on the host); on the
    /// host for the CPU and for other pixel types.
    #[default]
    Auto,
    /// On the host: `f32` tiles go to the device.
    Host,
    /// Pixels as they are to the device, wherever their type allows (the
    /// CPU's libtorch included: this is how the device path is tested).
    Device,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("output", &self.output)
            .field("tile", &self.tile)
            .field("whole", &self.whole)
            .field("batch_size", &self.batch_size)
            .field("memory_budget", &self.memory_budget)
            .field("blend", &self.blend)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel.is_some())
            .field("window", &self.window)
            .field("input_range", &self.input_range)
            .field("nonfinite", &self.nonfinite)
            .field("tta", &self.tta)
            .field("object_size", &self.object_size)
            .field("min_size", &self.min_size)
            .field("fill_holes", &self.fill_holes)
            .field("conversion", &self.conversion)
            .finish()
    }
}
