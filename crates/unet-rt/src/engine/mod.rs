//! Overlap-tile execution: gather -> infer -> reduce -> stitch.
//!
//! Gathering and stitching run on their own threads, connected to the
//! inference thread (the caller's) by bounded queues, so a few batches are in
//! flight whatever the image size. libtorch's intra-op pool does the parallel
//! work inside each forward pass (docs/design.md section 6).
//!
//! Here: the [`Segmenter`], its checks and its entry points. The rest, by
//! stage: `options` (what a call asks for), `layout` and `plan` (tile and
//! batch size), `gather` (windows, mirroring, normalisation), `pipeline`
//! (the three stages and stitching), `infer` (device, forward, reduction),
//! `output` (what a result element is, the reduction on the device),
//! `reduce` (the reduction of CPU output, one pass), `blend` (weighted same-padded
//! tiles), `tta` (test-time augmentation).

mod blend;
mod gather;
mod infer;
mod layout;
pub use layout::Planner;
mod options;
mod output;
mod pipeline;
mod plan;
pub(crate) use plan::forward_host_bytes;
mod reduce;
pub mod rescale;
mod tta;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

pub use options::{Conversion, Options, Progress, ProgressFn};
pub use output::{NaturalElement, NonFinite, OutputElement, OutputMode};
pub use tta::Tta;

use crate::error::{Error, Result};
use crate::geometry::{Blend, Tile, TilePlan};
use crate::instances;
use crate::memory;
use crate::metadata::{Normalization, Padding};
use crate::model::Model;
use crate::normalize::{self, Affine};
use crate::pixel::{Pixel, RawKind};
use crate::window::Window;
use gather::Gatherer;
use infer::is_out_of_memory;
use pipeline::stitch;

/// Default memory budget for one batch of activations on the CPU.
pub const DEFAULT_CPU_BUDGET: usize = 1 << 30;
/// Default memory budget on a GPU whose free memory is unknown (a plan made
/// on a machine without it); see [`cuda_budget`] for a GPU that answers.
pub const DEFAULT_CUDA_BUDGET: usize = 4 << 30;

/// The default activation budget on a GPU with `memory` `(free, total)`
/// bytes when first asked: a quarter of the free memory (the rest for
/// libtorch's workspaces, its cache and the caller's own tensors), at least
/// 1 GiB and at most 16 GiB (beyond that batches only grow, not speed).
pub fn cuda_budget(memory: Option<(usize, usize)>) -> usize {
    match memory {
        Some((free, _)) => (free / 4).clamp(1 << 30, 16 << 30),
        None => DEFAULT_CUDA_BUDGET,
    }
}
/// Batches in flight between two stages.
const QUEUE_DEPTH: usize = 2;

/// The tiling chosen for one image.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The tile plan.
    pub plan: TilePlan,
    /// Tiles per forward pass.
    pub batch_size: usize,
}

/// Runs a [`Model`] over images of any size with the overlap-tile strategy.
///
/// ```no_run
/// use unet_rt::{Device, Model, Options, Segmenter};
/// let model = Model::load("nuclei.pt", Device::Cpu)?;
/// let segmenter = Segmenter::new(model, Options::default())?;
/// let image = ndarray::Array3::<u16>::zeros((1, 2048, 2048));
/// let labels: ndarray::ArrayD<u8> = segmenter.segment(image.view().into_dyn())?;
/// # Ok::<(), unet_rt::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Segmenter {
    model: Model,
    options: Options,
}

pub(crate) struct Batch {
    /// Position in the call's sequence of batches: results are stitched in
    /// this order whichever device finishes first (blending sums them, and
    /// a sum's last bits depend on its order).
    seq: usize,
    /// The tiles to write, in plan order.
    tiles: Vec<Tile>,
    /// Position of each tile in the forward pass.
    slots: Vec<usize>,
    /// Samples in the forward pass: the whole plan's batch this one
    /// reproduces (see [`batch_groups`]).
    n: usize,
    /// The gathered tiles, channels-last: a flat CPU tensor, `f32` network
    /// input or, with `raw`, pixels as they are.
    data: tch::Tensor,
    /// For pixels gathered as they are: their type and the map that makes
    /// them network input on the device.
    raw: Option<(RawKind, Affine)>,
}

pub(crate) struct Written<U> {
    /// The batch's [`Batch::seq`].
    seq: usize,
    tiles: Vec<Tile>,
    data: Vec<U>,
}

impl Segmenter {
    /// Checks the options against the model.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a tile of the wrong rank or not a valid
    /// input size of the model, a zero batch size or memory budget, a
    /// window that does not fit the model, `min_size` or `fill_holes` with
    /// an output other than instances (nothing would read them), a Gaussian
    /// blend's `sigma_scale` that is not a finite positive number.
    pub fn new(model: Model, options: Options) -> Result<Self> {
        let info = model.info();
        // A valid network never blends, and took a NaN sigma without a word.
        options.blend.check()?;
        let planner = Planner::new(info, &options)?;
        // Labels and probabilities ignored them without a word.
        options.check_read_out_used(options.output == OutputMode::Instances)?;
        if let Some(window) = &options.window {
            check_window(planner, window)?;
        }
        if let Some(range) = options.input_range {
            if !matches!(info.normalization, Normalization::Percentile { .. }) {
                return Err(invalid(
                    "input_range",
                    format!(
                        "the model's normalization is {}, which takes no range (only percentile normalization does)",
                        serde_json::to_string(&info.normalization).unwrap_or_else(|_| format!("{:?}", info.normalization))
                    ),
                ));
            }
            if !(range.0.is_finite() && range.1.is_finite() && range.0 <= range.1) {
                return Err(invalid(
                    "input_range",
                    format!("{range:?} must be two finite numbers, low <= high"),
                ));
            }
        }
        if rescale::factor(info, options.object_size)?.is_some() && options.window.is_some() {
            return Err(invalid(
                "object_size",
                "resampling needs the whole image: it cannot be combined with window (resample the image first, or leave object_size out)".to_owned(),
            ));
        }
        if options.window.is_some() && options.output == OutputMode::Instances {
            // The read-out (growth, hole filling, min_size) took an object
            // cut by the window's edge for the piece inside it, and ids
            // were the window's own: not the whole image's result there.
            return Err(invalid(
                "window",
                "instances are read out over the whole image: an object cut by the window's edge would be \
                 read as its piece inside (segment labels through the window, or the whole image; \
                 unet_rt.dask reads instances across blocks)"
                    .to_owned(),
            ));
        }
        if options.window.is_some() && info.padding == Padding::Same && options.blend != Blend::Crop
        {
            return Err(crate::window::blending_refused());
        }
        Ok(Self { model, options })
    }

    /// The model this segmenter runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Shape of the result for an input of shape `(C, spatial...)`: the
    /// window's region when there is one.
    pub fn output_shape(&self, input_shape: &[usize]) -> Vec<usize> {
        let spatial = match &self.options.window {
            Some(window) => window.shape.as_slice(),
            None => &input_shape[1.min(input_shape.len())..],
        };
        self.options
            .output
            .result_shape(self.model.info().out_channels, spatial)
    }

    /// The input, `(first, end)` per spatial axis in whole-image pixels,
    /// that segmenting `window`'s region needs: pass at least this much of
    /// the image (see [`Window::needed_input`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `window` for a window that does not
    /// fit the model ([`Window::check_region`], one value per spatial axis
    /// of the model); as [`Segmenter::layout`] for the window's image.
    pub fn needed_input(&self, window: &Window) -> Result<(Vec<usize>, Vec<usize>)> {
        self.check_window(window)?;
        let layout = self.layout_of_input(&window.image)?;
        window.needed_input(&layout.plan)
    }

    /// [`Segmenter::needed_input`] of many windows, the tiling planned once
    /// per image shape (a Dask client asks this of every block).
    ///
    /// # Errors
    /// As [`Segmenter::needed_input`] for each window.
    pub fn needed_inputs(&self, windows: &[Window]) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
        let mut layouts: Vec<(&[usize], Layout)> = Vec::new();
        windows
            .iter()
            .map(|window| {
                self.check_window(window)?;
                let index = match layouts
                    .iter()
                    .position(|(image, _)| *image == window.image.as_slice())
                {
                    Some(index) => index,
                    None => {
                        layouts.push((&window.image, self.layout_of_input(&window.image)?));
                        layouts.len() - 1
                    }
                };
                window.needed_input(&layouts[index].1.plan)
            })
            .collect()
    }

    /// Segments an image laid out `(C, spatial...)` into a new array.
    ///
    /// # Errors
    /// See [`Segmenter::segment_into`].
    pub fn segment<T: Pixel, U: OutputElement>(
        &self,
        input: ArrayViewD<'_, T>,
    ) -> Result<ArrayD<U>> {
        self.check_input(input.shape())?;
        let shape = self.output_shape(input.shape());
        let mut out = memory::try_zeros::<U>(&shape, "the result")?;
        self.segment_into(input, out.view_mut())?;
        Ok(out)
    }

    /// Segments an image laid out `(C, spatial...)` into `out`, whose shape
    /// must be [`Segmenter::output_shape`]. The input is read tile by tile
    /// and never copied whole; results are written straight into `out`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for shapes, channel counts or output types
    /// that do not fit the model; [`Error::Cancelled`] when cancelled;
    /// [`Error::Inference`] when libtorch fails.
    pub fn segment_into<T: Pixel, U: OutputElement>(
        &self,
        input: ArrayViewD<'_, T>,
        out: ArrayViewMutD<'_, U>,
    ) -> Result<()> {
        let info = self.model.info();
        output::check_mode::<U>(self.options.output, info.output, info.out_channels)?;
        self.check_input(input.shape())?;
        let expected = self.output_shape(input.shape());
        if out.shape() != expected.as_slice() {
            return Err(invalid(
                "out",
                format!(
                    "has shape {:?}, the result has shape {expected:?}",
                    out.shape()
                ),
            ));
        }
        if self.options.output == OutputMode::Instances {
            return self.instances_into(input, out);
        }
        let mut out = out;
        if let Some(factor) = rescale::factor(info, self.options.object_size)? {
            self.rescaled_into(input, out.view_mut(), factor)?;
        } else {
            self.tiled_into(input, out.view_mut())?;
        }
        if U::NARROWS
            && self.options.nonfinite == NonFinite::Raise
            && !out.iter().all(|v| v.is_finite())
        {
            return Err(Error::NonFinite(format!(
                "the result holds values beyond the range of {} (the network's output is finite): \
                 write it as float32, or pass nonfinite=\"propagate\" to keep them as infinity",
                U::NAME
            )));
        }
        Ok(())
    }

    /// [`Segmenter::segment_into`] past its checks, without object_size:
    /// the image tiled, its tiles' results stitched into `out`.
    fn tiled_into<T: Pixel, U: OutputElement>(
        &self,
        input: ArrayViewD<'_, T>,
        mut out: ArrayViewMutD<'_, U>,
    ) -> Result<()> {
        let local = input.shape()[1..].to_vec();
        // `check_input` checked the window against the input.
        let window = match &self.options.window {
            Some(window) => window.clone(),
            None => Window::whole(&local),
        };
        let mut layout = self.layout_of_input(&window.image)?;
        // The statistics pass reads the whole input: a call cancelled before
        // it starts ends here, not after it.
        if self.cancelled() {
            return Err(Error::Cancelled);
        }
        let affine = self.affine(&input)?;
        let gatherer = Gatherer::piece(input, affine, window.origin.clone(), window.image.clone())
            .check_finite(self.options.nonfinite == NonFinite::Raise)
            .workers(host_workers());
        if layout.plan.blends() {
            return blend::run_blended(self, &gatherer, &layout, out);
        }
        loop {
            window.check_context(&layout.plan, &local)?;
            let tiles = window.tiles(&layout.plan)?;
            let crop = self.device_crop();
            let mode = self.options.output;
            let tile_shape = self.reduced_tile_shape(&layout.plan);
            let mut target = out.view_mut();
            let sink =
                move |written: &Written<U>| stitch(&mut target, written, &tile_shape, mode, crop);
            match self.run(&gatherer, &layout, &tiles, mode, sink) {
                // Batches already shrank to one tile: smaller tiles give the
                // same result (where the tiling is exact) in less memory.
                Err(err) if is_out_of_memory(&err) => {
                    if !self.tiles_may_shrink() {
                        return Err(match err {
                            Error::Inference(message) => Error::Inference(format!(
                                "{message}; this model's tiles are approximate (its result changes with \
                                 them), so tiles smaller than those asked for were not tried in their \
                                 place: give a smaller tile to accept that"
                            )),
                            other => other,
                        });
                    }
                    match self.planner().halved(&layout, self.model.precision())? {
                        Some(smaller) if window.check_context(&smaller.plan, &local).is_ok() => {
                            layout = smaller
                        }
                        _ => return Err(err),
                    }
                }
                other => return other,
            }
        }
    }

    /// Whether a pass out of memory may run again in smaller tiles: where
    /// the tiling is exact, or the tiles are the planner's (which follow the
    /// memory at hand anyway). An approximate model's result changes with
    /// its tiles: tiles asked for (tile="whole") came back smaller, silently.
    fn tiles_may_shrink(&self) -> bool {
        self.model.info().exactness.is_exact()
            || !(self.options.whole || self.options.tile.is_some())
    }

    /// Segments a batch of images laid out `(N, C, spatial...)` into `out`
    /// of shape `(N, ...)` (each image's [`Segmenter::output_shape`]), one
    /// image after the other, each written straight into its part of `out`.
    /// `ranges` gives each image its own `input_range` (else the options'
    /// one, or each image's own statistics). Progress counts the tiles of
    /// the whole batch.
    ///
    /// # Errors
    /// As [`Segmenter::segment_into`], and
    /// [`Error::InvalidArgument`] when `out` or `ranges` do not have one
    /// entry per image.
    pub fn segment_batch_into<T: Pixel, U: OutputElement>(
        &self,
        images: ArrayViewD<'_, T>,
        mut out: ArrayViewMutD<'_, U>,
        ranges: Option<&[(f64, f64)]>,
    ) -> Result<()> {
        let rank = self.model.info().spatial_dims + 2;
        if images.ndim() != rank {
            return Err(invalid(
                "image",
                format!(
                    "a batch is (N, channels, spatial...) of rank {rank}, got shape {:?}",
                    images.shape()
                ),
            ));
        }
        let count = images.shape()[0];
        if out.ndim() == 0 || out.shape()[0] != count {
            return Err(invalid(
                "out",
                format!(
                    "has shape {:?}, which does not hold one result for each of the {count} images",
                    out.shape()
                ),
            ));
        }
        if let Some(ranges) = ranges.filter(|r| r.len() != count) {
            return Err(invalid(
                "input_range",
                format!("has {} rows for {count} images", ranges.len()),
            ));
        }
        let images_out = images.outer_iter().zip(out.outer_iter_mut());
        for (index, (image, target)) in images_out.enumerate() {
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            let progress = self.options.progress.clone().map(|report| {
                let whole: ProgressFn = Arc::new(move |p: Progress| {
                    report(Progress {
                        done: index.saturating_mul(p.total).saturating_add(p.done),
                        total: count.saturating_mul(p.total),
                    })
                });
                whole
            });
            let one = Segmenter::new(
                self.model.clone(),
                Options {
                    input_range: ranges.map_or(self.options.input_range, |r| Some(r[index])),
                    progress,
                    ..self.options.clone()
                },
            )?;
            one.segment_into(image, target)?;
        }
        Ok(())
    }

    /// [`OutputMode::Instances`]: the labels, then the read-out
    /// ([`Segmenter::read_out`]), written into `out`.
    fn instances_into<T: Pixel, U: OutputElement>(
        &self,
        input: ArrayViewD<'_, T>,
        mut out: ArrayViewMutD<'_, U>,
    ) -> Result<()> {
        let labeller = Self {
            model: self.model.clone(),
            options: Options {
                output: OutputMode::Labels,
                ..self.options.clone()
            },
        };
        let mut labels = memory::try_zeros::<u16>(out.shape(), "the labels behind its instances")?;
        labeller.segment_into(input, labels.view_mut())?;
        let (ids, _) = self
            .read_out()?
            .apply_cancellable(labels.view(), self.options.cancel.as_deref())?;
        out.zip_mut_with(&ids, |o, &id| *o = U::from_id(id));
        Ok(())
    }

    /// How this segmenter turns labels (on the image's grid) into
    /// instances: the model's read-out with the options' `min_size` and
    /// `fill_holes`. With `object_size`, the labels come resampled from the
    /// model's scale, and the model's sizes (growth steps, `min_size`) are
    /// scaled with them; a `min_size` option is in the image's pixels.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`object_size`) where the options' object
    /// size is not a finite diameter within the accepted range.
    pub fn read_out(&self) -> Result<instances::ReadOut> {
        let info = self.model.info();
        let mut read_out = info.read_out.clone();
        if let Some(factor) = rescale::factor(info, self.options.object_size)? {
            // `factor` is model pixels per image pixel.
            let steps = up_to_whole(f64::from(read_out.grow) / factor);
            read_out.grow = if steps >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                steps as u32
            };
            // Up: an object under `min_size` at the model's scale is under
            // this many image pixels (1.25 rounded to 1 kept a 1-pixel
            // object that is 4 at the model's scale, below its 5).
            let area =
                up_to_whole(read_out.min_size as f64 / factor.powi(info.spatial_dims as i32));
            read_out.min_size = if area >= u64::MAX as f64 {
                u64::MAX
            } else {
                area as u64
            };
        }
        if let Some(min_size) = self.options.min_size {
            read_out.min_size = min_size;
        }
        if let Some(fill_holes) = self.options.fill_holes {
            read_out.fill_holes = fill_holes;
        }
        Ok(read_out)
    }

    /// `object_size`: the input resampled by `factor` to the model's scale,
    /// segmented there, and the result resampled back into `out`. Instances
    /// do not come here: they are read out of the labels this gives (see
    /// [`Segmenter::read_out`]).
    fn rescaled_into<T: Pixel, U: OutputElement>(
        &self,
        input: ArrayViewD<'_, T>,
        mut out: ArrayViewMutD<'_, U>,
        factor: f64,
    ) -> Result<()> {
        let info = self.model.info();
        let spatial = rescale::scaled_shape(&input.shape()[1..], factor)?;
        // Before the statistics: they take seconds on an image this large.
        rescale::check_peak(input.shape(), &spatial)?;
        // Statistics of the image as given: resampling must not move them.
        let input_range = match self.options.input_range {
            Some(range) => Some(range),
            None => normalize::percentile_range(
                &info.normalization,
                &input,
                self.options.cancel.as_deref(),
            )?,
        };
        let resampled = rescale::resample_image(input, &spatial, || self.cancelled())?;
        let inner = Self {
            model: self.model.clone(),
            options: Options {
                object_size: None,
                input_range,
                ..self.options.clone()
            },
        };
        let shape = inner.output_shape(resampled.shape());
        let mut small = memory::try_zeros::<U>(&shape, "the result at the model's scale")?;
        inner.segment_into(resampled.view(), small.view_mut())?;
        drop(resampled);
        rescale::resample_nearest(small.view(), out.view_mut(), || self.cancelled())
    }

    /// The input's normalization: the model's, or the caller's range.
    fn affine<T: Pixel>(&self, input: &ArrayViewD<'_, T>) -> Result<Affine> {
        match self.options.input_range {
            // `new` accepted the range for percentile models only.
            Some((low, high)) => Ok(normalize::affine_from_range(low, high)),
            None => normalize::resolve_view(
                &self.model.info().normalization,
                input,
                self.options.cancel.as_deref(),
            ),
        }
    }

    fn check_input(&self, shape: &[usize]) -> Result<()> {
        check_image(self.model.info(), shape)?;
        match &self.options.window {
            Some(window) => window.check(&shape[1..]),
            None => Ok(()),
        }
    }

    fn check_window(&self, window: &Window) -> Result<()> {
        check_window(self.planner(), window)
    }

    /// The type in which pixels of `T` go to the device, when they go as
    /// they are (see [`Conversion`]): only where `affine` keeps every finite
    /// value of the type finite, so that the host's check of the input
    /// stays the whole check.
    fn raw_upload<T: Pixel>(&self, affine: Affine) -> Option<RawKind> {
        let raw = T::RAW?;
        let wanted = match self.options.conversion {
            Conversion::Auto => self.model.device() != tch::Device::Cpu,
            Conversion::Host => false,
            Conversion::Device => true,
        };
        (wanted && raw.keeps_finite(affine)).then_some(raw)
    }

    fn cancelled(&self) -> bool {
        self.options
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
            || crate::process::stopping()
    }
}

/// Checks an image laid out `(C, spatial...)` against the model: its rank,
/// its channel count, no empty axis. Every entry that takes one image
/// ([`Segmenter::segment_into`], [`crate::forward_whole`]) applies it.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `image`.
pub(crate) fn check_image(info: &crate::info::ModelInfo, shape: &[usize]) -> Result<()> {
    if shape.len() != info.spatial_dims + 1 {
        return Err(invalid(
            "image",
            format!(
                "expected (channels, {}) of rank {}, got shape {shape:?}",
                if info.spatial_dims == 2 {
                    "y, x"
                } else {
                    "z, y, x"
                },
                info.spatial_dims + 1
            ),
        ));
    }
    if shape[0] != info.in_channels {
        return Err(invalid(
            "image",
            format!(
                "the model takes {} channel(s), the image has {} (shape {shape:?})",
                info.in_channels, shape[0]
            ),
        ));
    }
    if shape.contains(&0) {
        return Err(invalid("image", format!("empty image of shape {shape:?}")));
    }
    Ok(())
}

/// Checks a window against the model: [`Window::check_region`] and one
/// value per spatial axis of the model. Without the second, a window of
/// another rank was planned as an image of that rank (a 3-D plan for a 2-D
/// model) instead of refused.
fn check_window(planner: Planner<'_>, window: &Window) -> Result<()> {
    window.check_region()?;
    planner.check_rank(&window.image, "window")
}

/// Threads for the host's share of a pipeline stage (gathering a tile):
/// the machine's cores, up to 8 (beyond that the stage is bound by memory
/// bandwidth, not by cores).
fn host_workers() -> usize {
    // Asked once: std reads the cgroup's files on every call (three opens
    // per segment call, a million calls in a pipeline's life).
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

pub(super) fn invalid(argument: &'static str, message: String) -> Error {
    Error::InvalidArgument { argument, message }
}

/// `x` rounded up to a whole number, except where it is one already to
/// within rounding (a factor of 0.5 gives 160.00000000000003 for 40).
fn up_to_whole(x: f64) -> f64 {
    let nearest = x.round();
    if (x - nearest).abs() <= 1e-9 * nearest.abs().max(1.0) {
        nearest
    } else {
        x.ceil()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_budget_is_a_share_of_its_free_memory_within_bounds() {
        const GIB: usize = 1 << 30;
        assert_eq!(cuda_budget(None), DEFAULT_CUDA_BUDGET);
        assert_eq!(cuda_budget(Some((20 * GIB, 24 * GIB))), 5 * GIB);
        assert_eq!(cuda_budget(Some((2 * GIB, 8 * GIB))), GIB);
        assert_eq!(cuda_budget(Some((0, 8 * GIB))), GIB);
        assert_eq!(cuda_budget(Some((139 * GIB, 141 * GIB))), 16 * GIB);
    }

    #[test]
    fn scaled_sizes_round_up_unless_whole_to_within_rounding() {
        assert_eq!(up_to_whole(1.25), 2.0);
        assert_eq!(up_to_whole(10.35), 11.0);
        assert_eq!(up_to_whole(40.0 / (0.1_f64 * 5.0).powi(2)), 160.0);
        assert_eq!(up_to_whole(160.000_000_000_000_03), 160.0);
        assert_eq!(up_to_whole(0.0), 0.0);
        assert_eq!(up_to_whole(1e-3), 1.0);
    }
}
