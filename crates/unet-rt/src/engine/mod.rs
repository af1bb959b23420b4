//! Overlap-tile execution: gather -> infer -> reduce -> stitch.
//!
//! Gathering and stitching run on their own threads, connected to the
//! inference thread (the caller's) by bounded queues, so a few batches are in
//! flight whatever the image size. libtorch's intra-op pool does the parallel
//! work inside each forward pass.

mod blend;
mod gather;
mod output;
mod plan;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn, Slice};
use tch::{Device, Kind, Tensor};

pub use output::{NonFinite, OutputElement, OutputMode};

use crate::error::{Error, Result};
use crate::geometry::{Blend, Tile, TilePlan};
use crate::memory;
use crate::metadata::{Normalization, Padding};
use crate::model::Model;
use crate::normalize::{self, Affine};
use crate::pixel::Pixel;
use crate::window::Window;
use gather::Gatherer;

/// Default memory budget for one batch of activations on the CPU.
pub const DEFAULT_CPU_BUDGET: usize = 1 << 30;
/// Default memory budget on a GPU.
pub const DEFAULT_CUDA_BUDGET: usize = 4 << 30;
/// Batches in flight between two stages.
const QUEUE_DEPTH: usize = 2;

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

/// How a [`Segmenter`] runs.
#[derive(Clone, Default)]
pub struct Options {
    /// What to compute (labels by default).
    pub output: OutputMode,
    /// Input tile size per spatial axis; chosen from the memory budget when
    /// `None`.
    pub tile: Option<Vec<usize>>,
    /// Tiles per forward pass; chosen from the memory budget when `None`.
    pub batch_size: Option<usize>,
    /// Bytes of activations one batch may take; a device default when `None`.
    pub memory_budget: Option<usize>,
    /// How tiles of same-padded models are combined (crop by default).
    pub blend: Blend,
    /// Called after each batch is written.
    pub progress: Option<ProgressFn>,
    /// Set to `true` (from any thread) to stop the call with
    /// [`Error::Cancelled`] at the next batch.
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
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("output", &self.output)
            .field("tile", &self.tile)
            .field("batch_size", &self.batch_size)
            .field("memory_budget", &self.memory_budget)
            .field("blend", &self.blend)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel.is_some())
            .field("window", &self.window)
            .field("input_range", &self.input_range)
            .field("nonfinite", &self.nonfinite)
            .finish()
    }
}

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
    /// The tiles to write, in plan order.
    tiles: Vec<Tile>,
    /// Position of each tile in the forward pass.
    slots: Vec<usize>,
    /// Samples in the forward pass: the whole plan's batch this one
    /// reproduces (see [`batch_groups`]).
    n: usize,
    data: Vec<f32>,
}

pub(crate) struct Written<U> {
    tiles: Vec<Tile>,
    data: Vec<U>,
}

impl Segmenter {
    /// Checks the options against the model.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a tile of the wrong rank or not a valid
    /// input size of the model, a zero batch size or memory budget.
    pub fn new(model: Model, options: Options) -> Result<Self> {
        let info = model.info();
        if let Some(tile) = &options.tile {
            if tile.len() != info.spatial_dims {
                return Err(invalid(
                    "tile",
                    format!("{} sizes for a {}-D model", tile.len(), info.spatial_dims),
                ));
            }
            if let Some(&bad) = tile
                .iter()
                .find(|&&t| !info.is_valid_size(t) || t < info.min_tile())
            {
                return Err(invalid(
                    "tile",
                    format!(
                        "{bad} is not a usable tile size for this model: sizes are {} + k * {} from {} up",
                        info.size_offset,
                        info.size_multiple,
                        info.min_tile()
                    ),
                ));
            }
            if let Some(&bad) = tile.iter().find(|&&t| t > crate::geometry::MAX_TILE_SIDE) {
                return Err(invalid(
                    "tile",
                    format!(
                        "{bad} is larger than the largest supported tile side, {}",
                        crate::geometry::MAX_TILE_SIDE
                    ),
                ));
            }
        }
        if options.batch_size == Some(0) {
            return Err(invalid("batch_size", "must be at least 1".to_owned()));
        }
        if options.memory_budget == Some(0) {
            return Err(invalid(
                "memory_budget",
                "must be at least 1 byte (it is the activation memory one batch may use)"
                    .to_owned(),
            ));
        }
        if let Some(range) = options.input_range {
            if !matches!(info.normalization, Normalization::Percentile { .. }) {
                return Err(invalid(
                    "input_range",
                    format!("the model's normalization is {:?}, which takes no range (only percentile normalization does)", info.normalization),
                ));
            }
            if !(range.0.is_finite() && range.1.is_finite() && range.0 <= range.1) {
                return Err(invalid(
                    "input_range",
                    format!("{range:?} must be two finite numbers, low <= high"),
                ));
            }
        }
        if options.window.is_some() && info.padding == Padding::Same && options.blend != Blend::Crop
        {
            return Err(invalid(
                "window",
                "pieces of an image are segmented with crop plans: blending needs the whole image (use blend crop)".to_owned(),
            ));
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
        match self.options.output {
            OutputMode::Labels => spatial.to_vec(),
            _ => std::iter::once(self.model.info().out_channels)
                .chain(spatial.iter().copied())
                .collect(),
        }
    }

    /// The input, `(first, end)` per spatial axis in whole-image pixels,
    /// that segmenting `window`'s region needs: pass at least this much of
    /// the image (see [`Window::needed_input`]).
    ///
    /// # Errors
    /// As [`Segmenter::layout`] for the window's image.
    pub fn needed_input(&self, window: &Window) -> Result<(Vec<usize>, Vec<usize>)> {
        let layout = self.layout(&window.image)?;
        Ok(window.needed_input(&layout.plan))
    }

    /// The tiling for an image of spatial shape `image`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an image the tiles cannot cover, and
    /// for tiles and batches whose buffers this machine cannot hold (checked
    /// before anything is allocated; the message gives the size needed).
    pub fn layout(&self, image: &[usize]) -> Result<Layout> {
        let info = self.model.info();
        let halo = info.effective_halo();
        let element_bytes = self.model.precision().kind().elt_size_in_bytes();
        let budget = self
            .options
            .memory_budget
            .unwrap_or(match self.model.device() {
                Device::Cuda(_) => DEFAULT_CUDA_BUDGET,
                _ => DEFAULT_CPU_BUDGET,
            });
        let tile = match &self.options.tile {
            Some(t) => t.clone(),
            None => plan::choose_tile(info, image, halo, budget, element_bytes)
                .into_iter()
                .map(|t| t.max(info.min_tile()))
                .collect(),
        };
        let layout = self.layout_with_tile(image, tile, budget, element_bytes)?;
        self.check_memory(&layout)?;
        Ok(layout)
    }

    /// Refuses a layout whose buffers cannot fit this machine: the gathered
    /// input and reduced output of a batch on the host, and (on the CPU) the
    /// estimated activations of its forward pass. Above physical memory a
    /// pass would fail to allocate or, with overcommit, get the process
    /// killed; refusing it first gives an error that says what to change.
    fn check_memory(&self, layout: &Layout) -> Result<()> {
        let info = self.model.info();
        let pixels = layout
            .plan
            .input_tile_shape()
            .iter()
            .fold(1u128, |n, &t| n.saturating_mul(t as u128));
        let batch = layout.batch_size as u128;
        let element = self.model.precision().kind().elt_size_in_bytes();
        let host = pixels * batch * 4 * (info.in_channels + info.out_channels) as u128;
        let activations = pixels * batch * plan::bytes_per_pixel(info, element) as u128;
        let need = match self.model.device() {
            Device::Cuda(_) => host,
            _ => host + activations,
        };
        let limit = memory::total_memory().map_or(usize::MAX as u128, |m| m as u128);
        if need <= limit {
            return Ok(());
        }
        let argument = match (
            &self.options.tile,
            self.options.batch_size,
            self.options.memory_budget,
        ) {
            (None, Some(b), _) if b > 1 => "batch_size",
            (None, _, Some(_)) => "memory_budget",
            _ => "tile",
        };
        let whose = match (&self.options.tile, self.options.memory_budget) {
            (Some(_), _) => "",
            (None, Some(_)) => " (chosen for the memory budget)",
            (None, None) => " (the smallest this model takes)",
        };
        Err(invalid(
            argument,
            format!(
                "tiles of {:?}{whose} in batches of {} need about {} of memory, more than this machine's {}: \
                 use a smaller tile or batch_size",
                layout.plan.input_tile_shape(),
                layout.batch_size,
                memory::format_bytes(need),
                memory::format_bytes(limit)
            ),
        ))
    }

    fn layout_with_tile(
        &self,
        image: &[usize],
        tile: Vec<usize>,
        budget: usize,
        element_bytes: usize,
    ) -> Result<Layout> {
        let info = self.model.info();
        let halo = info.effective_halo();
        let plan = match info.padding {
            Padding::Valid => TilePlan::valid(image, &tile, info.halo, info.size_multiple)?,
            Padding::Same => {
                TilePlan::same(image, &tile, halo, info.size_multiple, self.options.blend)?
            }
        };
        let batch_size = self
            .options
            .batch_size
            .unwrap_or_else(|| plan::choose_batch(info, &tile, plan.len(), budget, element_bytes))
            .min(plan.len().max(1));
        Ok(Layout { plan, batch_size })
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
        let data = memory::try_filled::<U>(
            memory::element_count(&shape, "image")?,
            "image",
            "the result",
        )?;
        let mut out = ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| Error::Internal(e.to_string()))?;
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
        let mut out = out;
        let local = input.shape()[1..].to_vec();
        let window = match &self.options.window {
            Some(window) => {
                window.check(&local)?;
                window.clone()
            }
            None => Window::whole(&local),
        };
        let mut layout = self.layout(&window.image)?;
        let affine = self.affine(&input);
        let gatherer = Gatherer::piece(input, affine, window.origin.clone(), window.image.clone())
            .check_finite(self.options.nonfinite == NonFinite::Raise);
        if layout.plan.blends() {
            return blend::run_blended(self, &gatherer, &layout, out);
        }
        loop {
            window.check_context(&layout.plan, &local)?;
            let tiles = window.tiles(&layout.plan);
            let crop = self.device_crop();
            let mode = self.options.output;
            let tile_shape = self.reduced_tile_shape(&layout.plan);
            let mut target = out.view_mut();
            let sink =
                move |written: &Written<U>| stitch(&mut target, written, &tile_shape, mode, crop);
            match self.run(&gatherer, &layout, &tiles, mode, sink) {
                // Batches already shrank to one tile: smaller tiles give the
                // same result (the tiling is exact) in less memory.
                Err(err) if is_out_of_memory(&err) => match self.halved(&layout)? {
                    Some(smaller) if window.check_context(&smaller.plan, &local).is_ok() => {
                        layout = smaller
                    }
                    _ => return Err(err),
                },
                other => return other,
            }
        }
    }

    /// The input's normalization: the model's, or the caller's range.
    fn affine<T: Pixel>(&self, input: &ArrayViewD<'_, T>) -> Affine {
        match self.options.input_range {
            // `new` accepted the range for percentile models only.
            Some((low, high)) => normalize::affine_from_range(low, high),
            None => normalize::resolve_view(&self.model.info().normalization, input),
        }
    }

    /// The layout with tiles about half as large per axis, or `None` when
    /// they cannot shrink any more.
    fn halved(&self, layout: &Layout) -> Result<Option<Layout>> {
        let info = self.model.info();
        let tile = layout.plan.input_tile_shape();
        let smaller: Vec<usize> = tile
            .iter()
            .map(|&t| {
                let target = (t / 2).max(info.min_tile());
                let steps = (target.saturating_sub(info.min_tile())) / info.size_multiple;
                info.min_tile() + steps * info.size_multiple
            })
            .collect();
        if smaller == tile {
            return Ok(None);
        }
        let element_bytes = self.model.precision().kind().elt_size_in_bytes();
        self.layout_with_tile(
            layout.plan.image_shape(),
            smaller,
            usize::MAX,
            element_bytes,
        )
        .map(|mut l| {
            l.batch_size = 1;
            Some(l)
        })
    }

    fn check_input(&self, shape: &[usize]) -> Result<()> {
        let info = self.model.info();
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

    fn cancelled(&self) -> bool {
        self.options
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Runs the pipeline over `tiles` (of `layout`'s plan, in plan order),
    /// reducing the network output as `mode` says and handing each batch to
    /// `sink` on the stitching thread.
    fn run<T: Pixel, U: OutputElement, S: FnMut(&Written<U>) + Send>(
        &self,
        gatherer: &Gatherer<'_, T>,
        layout: &Layout,
        tiles: &[Tile],
        mode: OutputMode,
        mut sink: S,
    ) -> Result<()> {
        let plan = &layout.plan;
        let total = tiles.len();
        let tile_len = gatherer.tile_len(plan.input_tile_shape());
        let batch_len = tile_len.checked_mul(layout.batch_size).ok_or_else(|| {
            invalid(
                "tile",
                format!(
                    "tiles of {:?} in batches of {} are too large to address",
                    plan.input_tile_shape(),
                    layout.batch_size
                ),
            )
        })?;
        let groups = batch_groups(tiles, layout.batch_size, plan.len());
        std::thread::scope(|scope| {
            let (batch_tx, batch_rx) = sync_channel::<Batch>(QUEUE_DEPTH);
            let (out_tx, out_rx) = sync_channel::<Written<U>>(QUEUE_DEPTH);
            let gathering = scope.spawn(move || -> Result<()> {
                for group in groups {
                    if self.cancelled() {
                        return Ok(());
                    }
                    // group.n <= batch size, so this cannot overflow (checked above).
                    let mut data = memory::try_filled::<f32>(
                        batch_len / layout.batch_size * group.n,
                        "tile",
                        "a batch of tiles",
                    )?;
                    let chunk = &tiles[group.range.clone()];
                    for (tile, &slot) in chunk.iter().zip(&group.slots) {
                        gatherer.gather(tile, &mut data[slot * tile_len..(slot + 1) * tile_len])?;
                    }
                    // Slots of tiles outside a window repeat a gathered tile:
                    // a sample's result does not depend on the other samples,
                    // only the batch's size picks the kernels.
                    let first = group.slots[0] * tile_len;
                    for slot in (0..group.n).filter(|s| !group.slots.contains(s)) {
                        data.copy_within(first..first + tile_len, slot * tile_len);
                    }
                    let batch = Batch {
                        tiles: chunk.to_vec(),
                        slots: group.slots,
                        n: group.n,
                        data,
                    };
                    if batch_tx.send(batch).is_err() {
                        return Ok(()); // inference stopped
                    }
                }
                Ok(())
            });
            let progress = self.options.progress.clone();
            let stitcher = scope.spawn(move || {
                let mut done = 0;
                for written in out_rx {
                    sink(&written);
                    done += written.tiles.len();
                    if let Some(report) = &progress {
                        report(Progress { done, total });
                    }
                }
                done
            });
            let result = self.infer_all(batch_rx, out_tx, plan, mode);
            let gathered = gathering.join().unwrap_or_else(|_| {
                Err(Error::Internal("the gathering thread panicked".to_owned()))
            });
            let written = stitcher
                .join()
                .map_err(|_| Error::Internal("the stitching thread panicked".to_owned()));
            result?;
            gathered?;
            let written = written?;
            if self.cancelled() || written < total {
                return Err(Error::Cancelled);
            }
            Ok(())
        })
    }

    /// Shape of one reduced tile output: `([classes,] spatial...)`.
    fn reduced_tile_shape(&self, plan: &TilePlan) -> Vec<usize> {
        let spatial = plan
            .output_tile_shape()
            .iter()
            .map(|&o| o - 2 * self.device_crop());
        match self.options.output {
            OutputMode::Labels => spatial.collect(),
            _ => std::iter::once(self.model.info().out_channels)
                .chain(spatial)
                .collect(),
        }
    }

    /// Pixels cropped per side on the device: the damaged border of
    /// same-padded models (valid models' outputs are already cropped).
    fn device_crop(&self) -> usize {
        let info = self.model.info();
        match (info.padding, self.options.blend) {
            (Padding::Same, Blend::Crop) => info.effective_halo(),
            // Blending weighs whole tiles (zero weight on the damaged border).
            _ => 0,
        }
    }

    fn infer_all<U: OutputElement>(
        &self,
        batches: std::sync::mpsc::Receiver<Batch>,
        out: std::sync::mpsc::SyncSender<Written<U>>,
        plan: &TilePlan,
        mode: OutputMode,
    ) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for batch in batches {
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            let data = self.infer_batch::<U>(&batch, plan, mode)?;
            if out
                .send(Written {
                    tiles: batch.tiles,
                    data,
                })
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    fn infer_batch<U: OutputElement>(
        &self,
        batch: &Batch,
        plan: &TilePlan,
        mode: OutputMode,
    ) -> Result<Vec<U>> {
        let info = self.model.info();
        let tile = plan.input_tile_shape();
        let n = batch.n;
        let input = batch_tensor(
            &batch.data,
            n,
            tile,
            info.in_channels,
            self.model.device(),
            self.model.precision().kind(),
        )?;
        let y = self.forward_splitting(&input)?;
        let expect_spatial = plan.output_tile_shape();
        let got = y.size();
        let ok = got.len() == tile.len() + 2
            && got[0] == n as i64
            && got[1] == info.out_channels as i64
            && got[2..]
                .iter()
                .zip(expect_spatial)
                .all(|(&g, &e)| g == e as i64);
        if !ok {
            return Err(Error::Inference(format!(
                "the model returned shape {got:?} for input {:?}; expected ({n}, {}, {expect_spatial:?})",
                input.size(),
                info.out_channels
            )));
        }
        let crop = self.device_crop() as i64;
        let mut y = y;
        if crop > 0 {
            for (d, &e) in expect_spatial.iter().enumerate() {
                y = y
                    .f_narrow(d as i64 + 2, crop, e as i64 - 2 * crop)
                    .map_err(Error::inference)?;
            }
        }
        if self.options.nonfinite == NonFinite::Raise {
            check_finite(&y, batch)?;
        }
        let mut reduced = output::reduce::<U>(&y, mode, info.output)?;
        if batch.slots.len() < n {
            let slots: Vec<i64> = batch.slots.iter().map(|&s| s as i64).collect();
            reduced = Tensor::f_from_slice(&slots)
                .and_then(|index| index.f_to_device(reduced.device()))
                .and_then(|index| reduced.f_index_select(0, &index))
                .map_err(Error::inference)?;
        }
        let host = reduced
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(Error::inference)?;
        let numel = host.numel();
        let mut raw = vec![U::Raw::default(); numel];
        host.f_copy_data(&mut raw, numel)
            .map_err(Error::inference)?;
        Ok(raw.into_iter().map(U::from_raw).collect())
    }

    /// One forward pass; on GPU out-of-memory the batch is split in halves and
    /// retried, which gives the same result with less memory.
    fn forward_splitting(&self, input: &Tensor) -> Result<Tensor> {
        match self
            .model
            .forward_tensor(input, self.options.cancel.as_deref())
        {
            Err(Error::Inference(msg)) if msg.contains("out of memory") && input.size()[0] > 1 => {
                let n = input.size()[0];
                let halves = [(0, n / 2), (n / 2, n - n / 2)];
                let mut parts = Vec::with_capacity(2);
                for (start, len) in halves {
                    let part = input.f_narrow(0, start, len).map_err(Error::inference)?;
                    parts.push(self.forward_splitting(&part)?);
                }
                Tensor::f_cat(&parts, 0).map_err(Error::inference)
            }
            other => other,
        }
    }
}

/// A batch tensor `(N, C, spatial...)` in channels-last memory layout from
/// channels-last data, on `device` in `kind`.
fn batch_tensor(
    data: &[f32],
    n: usize,
    tile: &[usize],
    channels: usize,
    device: Device,
    kind: Kind,
) -> Result<Tensor> {
    let mut last: Vec<i64> = vec![n as i64];
    last.extend(tile.iter().map(|&t| t as i64));
    last.push(channels as i64);
    let dims = last.len() as i64;
    // (N, spatial..., C) -> (N, C, spatial...): a view, channels-last strides.
    let mut order = vec![0i64, dims - 1];
    order.extend(1..dims - 1);
    let host = Tensor::f_from_slice(data)
        .and_then(|t| t.f_view(last.as_slice()))
        .map_err(Error::inference)?;
    // A plain (pageable) copy: libtorch 2.11 warns on every pin_memory(device)
    // call, the only form tch exposes, and the copy is small beside the
    // forward pass (measured on an H100, see the README).
    let moved = match device {
        Device::Cuda(_) => host.f_to_device_(device, kind, false, false),
        _ => host.f_to_kind(kind),
    };
    moved
        .and_then(|t| t.f_permute(order.as_slice()))
        .map_err(Error::inference)
}

/// Tiles of one forward pass: `range` of the tile list, at `slots` of a
/// batch of `n` samples.
struct Group {
    id: usize,
    range: std::ops::Range<usize>,
    slots: Vec<usize>,
    n: usize,
}

/// Groups `tiles` (in plan order, from a plan of `total` tiles) into the
/// forward passes of the whole plan: batch `id` holds the plan's tiles
/// `id * batch ..`, so a window's tiles run in batches of the same sizes,
/// at the same positions, as in the whole image (kernels are chosen by
/// shape, batch size included). For a whole plan these are its tiles in
/// consecutive batches of `batch`.
fn batch_groups(tiles: &[Tile], batch: usize, total: usize) -> Vec<Group> {
    let batch = batch.max(1);
    let mut groups: Vec<Group> = Vec::new();
    for (i, tile) in tiles.iter().enumerate() {
        let id = tile.index / batch;
        match groups.last_mut() {
            Some(group) if group.id == id => {
                group.range.end = i + 1;
                group.slots.push(tile.index % batch);
            }
            _ => groups.push(Group {
                id,
                range: i..i + 1,
                slots: vec![tile.index % batch],
                n: batch.min(total - id * batch),
            }),
        }
    }
    groups
}

/// Copies the written part of each tile of a batch into the output.
/// `crop` pixels per side were already cut from each tile on the device.
fn stitch<U: OutputElement>(
    out: &mut ArrayViewMutD<'_, U>,
    written: &Written<U>,
    tile_shape: &[usize],
    mode: OutputMode,
    crop: usize,
) {
    let tile_len: usize = tile_shape.iter().product();
    let channel_axes = usize::from(mode != OutputMode::Labels);
    for (tile, data) in written
        .tiles
        .iter()
        .zip(written.data.chunks_exact(tile_len))
    {
        let Ok(src) = ndarray::ArrayViewD::from_shape(IxDyn(tile_shape), data) else {
            continue;
        };
        let mut src = src;
        let mut dst = out.view_mut();
        for a in 0..tile.write_shape.len() {
            let ax = ndarray::Axis(a + channel_axes);
            let from = tile.src_start[a] - crop;
            src.slice_axis_inplace(ax, Slice::from(from..from + tile.write_shape[a]));
            let start = tile.write_start[a];
            dst.slice_axis_inplace(ax, Slice::from(start..start + tile.write_shape[a]));
        }
        dst.assign(&src);
    }
}

/// libtorch's words for a failed allocation: CUDA's, and the CPU
/// allocator's.
fn is_out_of_memory(err: &Error) -> bool {
    matches!(err, Error::Inference(msg) if ["out of memory", "not enough memory", "can't allocate memory"].iter().any(|m| msg.contains(m)))
}

/// Fails with [`Error::NonFinite`] naming the first tile of `batch` whose
/// network output `y` (one sample per slot) holds NaN or infinity.
fn check_finite(y: &Tensor, batch: &Batch) -> Result<()> {
    let finite = y.f_isfinite().map_err(Error::inference)?;
    if finite
        .f_all()
        .and_then(|t| t.f_int64_value(&[]))
        .map_err(Error::inference)?
        != 0
    {
        return Ok(());
    }
    let per_sample = finite
        .f_reshape([batch.n as i64, -1])
        .and_then(|t| t.f_all_dim(1, false))
        .and_then(|t| t.f_to_device(Device::Cpu))
        .map_err(Error::inference)?;
    for (tile, &slot) in batch.tiles.iter().zip(&batch.slots) {
        if per_sample
            .f_int64_value(&[slot as i64])
            .map_err(Error::inference)?
            == 0
        {
            return Err(Error::NonFinite(format!(
                "the network's output holds NaN or infinite values in tile {} (its input window starts at {:?} \
                 and spans {:?}); check the model's weights and the input's value range, or pass \
                 nonfinite=\"propagate\" to keep such values",
                tile.index, tile.read_start, tile.read_shape
            )));
        }
    }
    // Only slots that repeat a tile to fill the batch went wrong: nothing
    // of theirs is written.
    Ok(())
}

fn invalid(argument: &'static str, message: String) -> Error {
    Error::InvalidArgument { argument, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_groups_reproduce_the_whole_plans_batches() {
        let plan = TilePlan::valid(&[50, 70], &[24, 24], 4, 4).unwrap(); // 4 x 5 tiles
        let all: Vec<Tile> = plan.tiles().collect();
        let whole = batch_groups(&all, 3, plan.len());
        assert_eq!(
            whole.iter().map(|g| g.n).collect::<Vec<_>>(),
            vec![3, 3, 3, 3, 3, 3, 2]
        );
        assert!(whole
            .iter()
            .all(|g| g.slots == (0..g.n).collect::<Vec<_>>() && g.range.len() == g.n));
        let window = Window {
            image: vec![50, 70],
            origin: vec![0, 0],
            start: vec![16, 16],
            shape: vec![34, 54],
        };
        let tiles = window.tiles(&plan);
        let indices: Vec<usize> = tiles.iter().map(|t| t.index).collect();
        assert_eq!(indices, vec![6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19]);
        let groups = batch_groups(&tiles, 3, plan.len());
        let summary: Vec<(usize, Vec<usize>, usize)> = groups
            .iter()
            .map(|g| (g.id, g.slots.clone(), g.n))
            .collect();
        assert_eq!(
            summary,
            vec![
                (2, vec![0, 1, 2], 3),
                (3, vec![0, 2], 3),
                (4, vec![0, 1, 2], 3),
                (5, vec![1, 2], 3),
                (6, vec![0, 1], 2)
            ]
        );
    }
}
