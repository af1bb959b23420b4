//! Finding the geometry of a TorchScript model that carries no metadata, by
//! running it: the size rule from the output sizes of zero inputs, and for
//! networks that keep the input size (or accept any size) the overlap and
//! the pooling factor from random probe images, where a tile is compared
//! with the whole image. A few dozen forward passes at most, bounded in time.
//!
//! This module holds the prober (its passes, their bounds in memory and
//! time, what an output reads as) and [`probe`]; `size_rule` finds the
//! sizes a network takes, `overlap` its reach and pooling grid, `tiles`
//! compares tiles with the whole image on each probe, and `declared`
//! checks a model's metadata against a few passes at load.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::container;
use crate::error::{Error, Result};
use crate::info::{Agreement, Exactness, GeometryMismatch, ModelInfo, EXACT_TOLERANCE};
use crate::metadata::{Activation, Normalization, OutputKey, Padding};
use crate::pass_memory::PassMemory;

mod declared;
mod overlap;
mod pass_times;
mod size_rule;
mod tiles;

pub(crate) use declared::{check_passes, Passes};
use declared::{swaps_axes, type_error, SWAPPED_AXES};
use overlap::{APPROXIMATE_TOLERANCE, REACH_START};
use pass_times::PassTimes;
use size_rule::{Growth, Rule};
pub(crate) use tiles::{check_tiles, measure, unless_cancelled};
use tiles::{sees_raw_values, Placement};

/// The largest probe tensor (values of a probe image or its output): a
/// network with thousands of channels, or metadata asking for a huge
/// overlap, gets an error instead of gigabytes allocated (or the process
/// killed by the kernel). The exporter bounds its own check passes by it.
pub const MAX_PROBE_VALUES: usize = 1 << 26;

/// Probing gives up after this long: a model it cannot read in that time
/// needs metadata, and a load must not take minutes. FCN-ResNet50 (a
/// dilated ResNet, passes of seconds at 512 px) probes in about 35 s on two
/// cores; at 30 s it gave up whenever other work shared the machine.
const PROBE_BUDGET: Duration = Duration::from_secs(60);

/// The values of a tensor of `shape` (negative sides as none).
fn values_of(shape: &[i64]) -> u128 {
    shape
        .iter()
        .map(|&side| u128::try_from(side).unwrap_or(0))
        .fold(1u128, u128::saturating_mul)
}

/// A tensor shape as `1x3x512x512`.
fn shape_text(shape: &[i64]) -> String {
    shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// Input channel counts tried (those of the first convolution weights, in
/// the order the network registers them) before probing gives up; then
/// one for coordinate channels, and an image's usual 1 and 3 (see
/// [`probe`]).
const MAX_CHANNEL_GUESSES: usize = 4;

/// Turns the graph executor's optimisations off on this thread for a scope
/// (they are per thread, and on by default): it specialises and keeps a
/// plan per input shape, which over many probe sizes held gigabytes.
struct PlainExecutor;

impl PlainExecutor {
    fn enter() -> Self {
        let _ = tch::jit::f_set_graph_executor_optimize(false);
        Self
    }
}

impl Drop for PlainExecutor {
    fn drop(&mut self) {
        let _ = tch::jit::f_set_graph_executor_optimize(true);
    }
}

/// What a network's output can be read as (see `Prober::reading`).
enum Reading {
    /// Within [0, 1], several channels summing to 1.
    Probabilities,
    /// Within [0, 1], channels not summing to 1: how far they are off.
    Masks(String),
    /// Outside [0, 1]: the range found.
    Unbounded(String),
    /// One channel of whole numbers from 0 to this, 2 or more: class
    /// numbers (a network ending in `argmax(...).float()`), which read as
    /// logits merged every class above 0 into one.
    ClassNumbers(f64),
}

struct Prober<'a> {
    module: &'a CModule,
    device: Device,
    path: &'a Path,
    dims: usize,
    channels: i64,
    started: Instant,
    /// The container key picked at the first output, used from then on.
    key: Option<OutputKey>,
    keyed: bool,
    out_channels: usize,
    /// Input size -> output side, `None` where it failed.
    sides: HashMap<usize, Option<usize>>,
    /// The network's own message at its last failing pass: said when no
    /// size rule is found (a forward that takes other arguments fails at
    /// every size, and "is it fully convolutional?" hid why).
    last_failure: Option<String>,
    /// The first pass whose equal input sides gave unequal output sides
    /// (input and output spatial shapes): a network whose axes lose
    /// different margins (thick-slice 3-D networks convolving 1x3x3 on
    /// top), which was told only that no size worked.
    uneven: Option<(Vec<i64>, Vec<i64>)>,
    /// Where a one-channel output becomes foreground when labels are
    /// compared: logit 0, or 0.5 for a network that returns probabilities.
    mask_at: f64,
    /// How long its passes took: what the time-based decisions read, and
    /// the slowest pass, said when probing gives up.
    times: PassTimes,
    /// An input side and the larger output side a pass returned for it
    /// (a super-resolution network): said where no size works.
    grown: Option<(usize, usize)>,
    /// The relative rounding of the network's output type (one unit in the
    /// last place of bfloat16 or half; 0 for float32 and double): tiles
    /// and batches computed in float32 to the last bits round to the next
    /// step of a 16-bit output apart.
    output_rounding: f64,
    /// The memory of its CPU passes, and whether a larger one fits.
    memory: PassMemory,
}

/// Probes `module` (already in eval mode on `device`); `whole_tile_ops` are
/// the operations of its code that see the whole tile
/// ([`crate::archive::whole_tile_ops`]). `raw_values`: whether the network
/// sees pixel values as they are (a model without metadata, or metadata
/// without a normalization to [0, 1]): its reach and tiles are measured on
/// the 8-bit range then too.
pub(crate) fn probe(
    module: &CModule,
    device: Device,
    path: &Path,
    whole_tile_ops: Vec<String>,
    raw_values: bool,
) -> Result<ModelInfo> {
    let invalid = |reason: String| Error::InvalidModel {
        path: path.to_owned(),
        reason,
    };
    let params = module
        .named_parameters()
        .map_err(|e| invalid(e.to_string()))?;
    let Some((_, first)) = params.iter().find(|(_, p)| matches!(p.dim(), 4 | 5)) else {
        if params.iter().any(|(_, p)| p.dim() == 3) {
            return Err(invalid(
                "it has no unet_rt metadata and its convolution weights are 1-D (Conv1d): unet_rt \
                 segments 2-D and 3-D images"
                    .to_owned(),
            ));
        }
        return Err(invalid(
            "it has no unet_rt metadata and no convolution weights to probe \
             (a frozen module, or one without convolution layers?): export the module with metadata \
             (python -m unet_rt.export; before torch.jit.freeze for a frozen one), or save it with its \
             unet_rt.json (torch.jit.save(module, path, _extra_files=...), README: Model files)"
                .to_owned(),
        ));
    };
    let _guard = tch::no_grad_guard();
    let _plain = PlainExecutor::enter();
    // The first weight's input channels are the network's where it is
    // the first layer; a network that registers its head first (or a
    // depthwise first layer) fails at every size with them: the next
    // convolution's count is tried, on the same time budget.
    let mut candidates: Vec<i64> = Vec::new();
    for (_, p) in params.iter().filter(|(_, p)| p.dim() == first.dim()) {
        let channels = p.size()[1];
        if !candidates.contains(&channels) && candidates.len() < MAX_CHANNEL_GUESSES {
            candidates.push(channels);
        }
    }
    let dims = first.dim() - 2;
    // A network that adds a coordinate channel per axis to its input
    // (CoordConv) has a first layer of that many more: last, since the
    // others are the common case.
    let coordinates = first.size()[1] - dims as i64;
    if coordinates > 0 && !candidates.contains(&coordinates) {
        candidates.push(coordinates);
    }
    // A network that folds pixels into channels first (pixel_unshuffle:
    // its first layer takes 4 or 16 channels of a one-channel image) takes
    // an image's usual counts: grey, then RGB.
    for usual in [1, 3] {
        if !candidates.contains(&usual) {
            candidates.push(usual);
        }
    }
    let started = Instant::now();
    let mut found = None;
    let mut failed: Option<Prober> = None;
    for channels in candidates {
        let mut prober = Prober::new(module, device, path, dims, channels, None);
        prober.started = started;
        match prober.first_size()? {
            Some(size) => {
                found = Some((prober, size));
                break;
            }
            None => {
                failed.get_or_insert(prober);
            }
        }
    }
    let Some((mut prober, first_size)) = found else {
        return Err(failed.map_or_else(
            || invalid("it has no convolution weights to probe".to_owned()),
            |prober| prober.no_size(),
        ));
    };
    let rule = prober.size_rule(first_size)?;
    let mut info = ModelInfo {
        spatial_dims: prober.dims,
        in_channels: usize::try_from(prober.channels).unwrap_or(1),
        out_channels: prober.out_channels,
        // Without metadata the output is taken as logits.
        output: if prober.out_channels == 1 {
            Activation::Sigmoid
        } else {
            Activation::Softmax
        },
        padding: if rule.lost == 0 {
            Padding::Same
        } else {
            Padding::Valid
        },
        halo: rule.lost / 2,
        size_multiple: rule.multiple,
        size_offset: rule.offset,
        normalization: Normalization::None,
        min_size: 0,
        fixed_size: 0,
        output_key: prober.key.clone(),
        // The width of the layer that takes the input.
        first_layer_width: params
            .iter()
            .find(|(_, p)| p.dim() == first.dim() && p.size()[1] == prober.channels)
            .and_then(|(_, p)| usize::try_from(p.size()[0]).ok()),
        probed: true,
        exactness: Exactness {
            whole_tile_ops,
            ..Exactness::default()
        },
        read_out: crate::instances::ReadOut::default(),
        object_size: None,
        square_memory: 0.0,
    };
    if let Some(kind) = prober.returns_probabilities(
        info.round_up_valid(REACH_START[usize::from(info.spatial_dims == 3)] / 4),
    )? {
        info.output = kind;
        prober.mask_at = 0.5;
    }
    // Valid networks lose exactly their convolutions' reach (the paper's
    // proof); the others are measured, and so is what else a valid one
    // computes over the whole tile ([`check_tiles`]).
    let settled =
        rule.lost == 0 || rule.kind == Growth::AnySize || !info.exactness.whole_tile_ops.is_empty();
    if settled {
        prober.settle_overlap(&mut info, rule, raw_values)?;
    }
    info.min_size = prober.min_size(&info)?;
    if !settled {
        info.exactness.measured =
            check_tiles(module, device, path, &info)?.map(|(measured, _)| measured);
    }
    // Per input value squared in the passes (one image of C channels):
    // per pixel squared, C^2 times that. Only for a network whose tiles are
    // not exact: memory that grows with the square is every position seen
    // from every other, which no overlap holds. An exact one read as a
    // square is the sampler missing a short pass's peak (pix2pix read
    // 4e-5 bytes per pixel squared once in a busy test process), and would
    // only shrink its tiles and make its plan differ between loads.
    if !info.exactness.is_exact() {
        info.square_memory = prober.memory.square_bytes() * (prober.channels as f64).powi(2);
    }
    Ok(info)
}

/// The line of a libtorch error that is the network's own message: a
/// TorchScript exception carries the traceback of the scripted code and
/// then the Python exception's line ("RuntimeError: ..."); the first line
/// otherwise.
fn model_message(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let raised = lines.iter().rev().find(|l| {
        l.split_once(':')
            .is_some_and(|(kind, _)| kind.ends_with("Error") || kind.ends_with("Exception"))
    });
    let line = crate::error::readable_types(raised.or(lines.first()).copied().unwrap_or_default());
    let mut message: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        message.push_str("...");
    }
    message
}

impl<'a> Prober<'a> {
    /// Whether the network returns probabilities already, and of which kind:
    /// its output stays within [0, 1] on noise and on signed noise a
    /// thousand times as strong, which carries logits far outside; it is
    /// [`Activation::Probabilities`] (a softmax over its channels, or a
    /// sigmoid of its one channel) where several channels also sum to 1 on
    /// every input, [`Activation::Masks`] (a sigmoid per channel) where they
    /// do not. Taken for logits, such an output got a second softmax
    /// (probabilities off by up to 0.5) or, with one channel, the logit
    /// threshold 0 (every pixel foreground). A failing pass says no.
    ///
    /// # Errors
    /// [`Error::InvalidModel`] for a network returning class numbers.
    fn returns_probabilities(&mut self, size: usize) -> Result<Option<Activation>> {
        let strong = self
            .noise(size, 3)
            .and_then(|t| self.torch(t.f_sub_scalar(0.5).and_then(|t| t.f_mul_scalar(2000.0))));
        let inputs = [self.noise(size, 1), self.noise_with(size, 2, true), strong];
        let mut kind = Activation::Probabilities;
        for input in inputs {
            match input
                .and_then(|input| self.output(&input))
                .and_then(|y| self.reading(&y))
            {
                Ok(Reading::Probabilities) => {}
                Ok(Reading::Masks(_)) => kind = Activation::Masks,
                Ok(Reading::ClassNumbers(largest)) => {
                    return Err(self.invalid(format!(
                        "it returns one channel of whole numbers from 0 to {largest} (class numbers, as after \
                         an argmax), not logits or probabilities: export the network without its final argmax"
                    )))
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Ok(Reading::Unbounded(_)) | Err(_) => return Ok(None),
            }
        }
        Ok(Some(kind))
    }

    /// What the output `y` can be read as. Non-finite values are left to
    /// the engine's own check.
    fn reading(&self, y: &Tensor) -> Result<Reading> {
        let y = &self.torch(y.f_nan_to_num(0.5, 0.5, 0.5))?;
        let low = self.torch(y.f_min())?.double_value(&[]);
        let high = self.torch(y.f_max())?.double_value(&[]);
        if self.out_channels == 1 && low >= 0.0 && (2.0..=65535.0).contains(&high) {
            let fractions = self.torch(y.f_frac())?;
            if self.largest(&fractions)? == 0.0 {
                return Ok(Reading::ClassNumbers(high));
            }
        }
        if !(low >= 0.0 && high <= 1.0) {
            return Ok(Reading::Unbounded(format!(
                "values from {low:.3} to {high:.3}"
            )));
        }
        if self.out_channels == 1 {
            return Ok(Reading::Probabilities);
        }
        let sums = self.torch(y.f_sum_dim_intlist(1, false, Kind::Float))?;
        let off = self.largest(&self.torch(sums.f_sub_scalar(1.0))?)?;
        Ok(if off > 1e-3 {
            Reading::Masks(format!(
                "channels whose sums differ from 1 by up to {off:.3}"
            ))
        } else {
            Reading::Probabilities
        })
    }

    /// Whether one pass on noise of `size` laid out channels-last fails
    /// (the contiguous one has run in [`Self::batch_and_repeat`]). One
    /// channel is laid out alike either way: no pass.
    fn fails_channels_last(&mut self, size: usize) -> Result<bool> {
        if self.channels <= 1 {
            return Ok(false);
        }
        let rank = self.dims + 2;
        let input = self.noise(size, 1).and_then(|t| {
            self.torch(
                t.f_permute(crate::axes::channels_last_order(rank).as_slice())
                    .and_then(|t| t.f_contiguous())
                    .and_then(|t| t.f_permute(crate::axes::channels_first_order(rank).as_slice())),
            )
        })?;
        Ok(self.forward(input)?.is_none())
    }

    /// See [`check_passes`].
    fn batch_and_repeat(&mut self, size: usize) -> Result<(Passes, Vec<i64>)> {
        if !self.fits(size.saturating_mul(2)) {
            return Err(self.too_large(size));
        }
        let first = self.noise(size, 1)?;
        let second = self.noise_with(size, 2, true)?;
        let both = self.torch(Tensor::f_cat(&[&first, &second], 0))?;
        let alone = self.output(&first)?;
        let shape = alone.size();
        let batched = match self.output(&both) {
            Ok(batched) if batched.size().first() == Some(&2) => batched,
            _ => {
                let passes = Passes {
                    one_image_per_pass: true,
                    ..Passes::default()
                };
                return Ok((passes, shape));
            }
        };
        let scale = self.scale(&alone)?;
        // GPUs may run other kernels for another batch size, in TF32 by
        // default (about 1e-3 of the range): a wider margin there. The
        // networks this finds move by tens of percent.
        let tolerance = match self.device {
            Device::Cpu => APPROXIMATE_TOLERANCE,
            _ => 20.0 * APPROXIMATE_TOLERANCE,
        };
        let differs = |prober: &Self, a: &Tensor, b: &Tensor| -> Result<bool> {
            let difference = prober.scale(&prober.beyond_rounding(a, b)?)?;
            Ok(difference > tolerance * scale)
        };
        let row = self.torch(batched.f_narrow(0, 0, 1))?;
        if !differs(self, &row, &alone)? {
            return Ok((Passes::default(), shape));
        }
        let again = self.output(&first)?;
        let nondeterministic = differs(self, &again, &alone)?;
        let passes = Passes {
            batch_dependent: !nondeterministic,
            nondeterministic,
            ..Passes::default()
        };
        Ok((passes, shape))
    }

    /// `key`: `None` to pick the output container's entry at the first
    /// forward, `Some(key)` to use the metadata's.
    fn new(
        module: &'a CModule,
        device: Device,
        path: &'a Path,
        dims: usize,
        channels: i64,
        key: Option<Option<OutputKey>>,
    ) -> Self {
        Self {
            module,
            device,
            path,
            dims,
            channels,
            started: Instant::now(),
            keyed: key.is_some(),
            key: key.flatten(),
            out_channels: 0,
            sides: HashMap::new(),
            last_failure: None,
            uneven: None,
            mask_at: 0.0,
            times: PassTimes::default(),
            grown: None,
            output_rounding: 0.0,
            memory: PassMemory::start(device),
        }
    }

    /// A prober for a model whose geometry is known (its metadata, or
    /// probed already): its channels and output key.
    fn of_info(module: &'a CModule, device: Device, path: &'a Path, info: &ModelInfo) -> Self {
        let channels = i64::try_from(info.in_channels).unwrap_or(i64::MAX);
        let mut prober = Self::new(
            module,
            device,
            path,
            info.spatial_dims,
            channels,
            Some(info.output_key.clone()),
        );
        prober.out_channels = info.out_channels;
        prober.mask_at = f64::from(info.output.mask_threshold(info.out_channels).unwrap_or(0.0));
        prober
    }

    /// A libtorch failure while probing (out of memory, a shape the network
    /// did not give): an error naming the model, never a panic.
    fn torch<T>(&self, result: std::result::Result<T, tch::TchError>) -> Result<T> {
        result.map_err(|e| {
            self.invalid(format!(
                "probing it failed in libtorch: {}",
                crate::error::first_line(&e.to_string())
            ))
        })
    }

    /// Whether a probe of side `size` (input and output) stays within
    /// [`MAX_PROBE_VALUES`]; in checked arithmetic, so any size is answered.
    fn fits(&self, size: usize) -> bool {
        self.fits_axes(&vec![size; self.dims])
    }

    /// [`Self::fits`] for a probe with `sizes` along its axes.
    fn fits_axes(&self, sizes: &[usize]) -> bool {
        let channels = usize::try_from(self.channels)
            .unwrap_or(usize::MAX)
            .max(self.out_channels)
            .max(1);
        sizes
            .iter()
            .try_fold(channels, |n, &size| n.checked_mul(size))
            .is_some_and(|n| n <= MAX_PROBE_VALUES)
    }

    /// Whether a pass on a probe of side `size` is predicted to fit in the
    /// memory free now ([`PassMemory::refusal`]).
    fn affordable(&self, size: usize) -> bool {
        self.memory.refusal(values_of(&self.shape(size))).is_none()
    }

    fn too_large(&self, size: usize) -> Error {
        self.invalid(format!(
            "probing it needs images of {size} pixels per axis, more than can be probed in memory \
             ({MAX_PROBE_VALUES} values); export it with metadata (python -m unet_rt.export)"
        ))
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidModel {
            path: self.path.to_owned(),
            reason: format!("it has no unet_rt metadata and {reason}"),
        }
    }

    /// One forward pass: `Ok(None)` when the network fails on this input
    /// (most often its size), an error when no input can fix what it
    /// returns, or when probing has used its time.
    fn forward(&mut self, input: Tensor) -> Result<Option<Tensor>> {
        if crate::process::stopping() {
            return Err(Error::Cancelled);
        }
        if self.started.elapsed() > PROBE_BUDGET {
            let slowest = self
                .times
                .slowest()
                .map_or_else(String::new, |(shape, took)| {
                    format!(
                        "; its slowest pass, on {}, took {:.1} s",
                        shape_text(shape),
                        took.as_secs_f64()
                    )
                });
            return Err(self.invalid(format!(
                "probing its geometry gave up after {} s (each forward pass is slow, or most sizes fail{slowest}); \
                 export it with metadata (python -m unet_rt.export), declaring --padding, --halo and --size-multiple",
                PROBE_BUDGET.as_secs()
            )));
        }
        let shape = input.size();
        let values = values_of(&shape);
        if let Some(why) = self.memory.refusal(values) {
            return Err(self.invalid(format!(
                "probing it on {} {why}; export it with metadata (python -m unet_rt.export), declaring \
                 --padding, --halo and --size-multiple",
                shape_text(&shape)
            )));
        }
        let started = Instant::now();
        let module = self.module;
        let result = self
            .memory
            .measure(values, || module.forward_is(&[IValue::Tensor(input)]));
        self.times
            .record(&shape, values, started.elapsed(), result.is_ok());
        let output = match result {
            Ok(output) => output,
            Err(e) => {
                self.last_failure = Some(model_message(&e.to_string()));
                return Ok(None);
            }
        };
        let key = if self.keyed { self.key.as_ref() } else { None };
        let (tensor, used) = container::select(output, key).map_err(|e| self.invalid(e))?;
        if !self.keyed {
            self.key = used;
            self.keyed = true;
        }
        let sizes = tensor.size();
        if sizes.len() != self.dims + 2 {
            return Err(self.invalid(format!(
                "it returns shape {sizes:?}: a segmentation network returns (N, classes, spatial...) of rank {}",
                self.dims + 2
            )));
        }
        if !matches!(
            tensor.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(self.invalid(format!(
                "it returns {:?} values, not floating-point logits or probabilities",
                tensor.kind()
            )));
        }
        self.output_rounding = match tensor.kind() {
            Kind::BFloat16 => 2f64.powi(-7),
            Kind::Half => 2f64.powi(-10),
            _ => 0.0,
        };
        Ok(Some(tensor))
    }

    /// `|a - b|` beyond the output type's own rounding: less one step of
    /// that type at the larger of the two values (zero where within it).
    /// Float32 outputs are compared as they are. A network ending in
    /// `.to(torch.bfloat16)` was found batch-dependent, or approximate,
    /// where float32 rounding moved one value across a bfloat16 step (a
    /// 0.4% difference, with "largest difference 0.0e0" in the warning).
    fn beyond_rounding(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let difference = self.torch(a.f_sub(b).and_then(|d| d.f_abs()))?;
        if self.output_rounding == 0.0 {
            return Ok(difference);
        }
        self.torch((|| {
            let step = a
                .f_abs()?
                .f_maximum(&b.f_abs()?)?
                .f_mul_scalar(self.output_rounding)?;
            difference.f_sub(&step)?.f_clamp_min(0.0)
        })())
    }

    fn shape(&self, size: usize) -> Vec<i64> {
        let mut shape = vec![1, self.channels];
        shape.extend(std::iter::repeat_n(
            i64::try_from(size).unwrap_or(i64::MAX),
            self.dims,
        ));
        shape
    }

    /// Output side at input size `size` (a cube of zeros), `None` if the
    /// network fails there, changes the axes unevenly or grows the image.
    fn side(&mut self, size: usize) -> Result<Option<usize>> {
        Ok(self.sides(&[size])?[0])
    }

    /// Output sides at the input sizes `sizes`, as [`Self::side`], probed
    /// up to one size per axis in each forward pass: a convolutional
    /// network's output along an axis follows the input along that axis
    /// alone, so a pass of 257 x 258 answers for both sizes at the cost of
    /// one. A pass that fails (it cannot tell which size did) is redone
    /// one size at a time.
    fn sides(&mut self, sizes: &[usize]) -> Result<Vec<Option<usize>>> {
        let mut unknown: Vec<usize> = Vec::new();
        for &size in sizes {
            if !self.sides.contains_key(&size) && !unknown.contains(&size) {
                unknown.push(size);
            }
        }
        for group in unknown.chunks(self.dims.max(1)) {
            let found = self.pass(group)?;
            if group.len() == 1 || found.is_some() {
                for (i, &size) in group.iter().enumerate() {
                    self.sides.insert(size, found.as_ref().map(|f| f[i]));
                }
            } else {
                for &size in group {
                    let alone = self.pass(&[size])?;
                    self.sides.insert(size, alone.map(|f| f[0]));
                }
            }
        }
        Ok(sizes.iter().map(|size| self.sides[size]).collect())
    }

    /// One pass on zeros with `group[i]` pixels along axis `i` (the last
    /// repeated on the remaining axes): the output side along each of
    /// `group`'s axes, `None` if the network fails, or grows an axis.
    fn pass(&mut self, group: &[usize]) -> Result<Option<Vec<usize>>> {
        let last = group.last().copied().unwrap_or(1);
        let axes: Vec<usize> = (0..self.dims)
            .map(|axis| group.get(axis).copied().unwrap_or(last))
            .collect();
        if !self.fits_axes(&axes) {
            return Ok(None);
        }
        let mut shape = vec![1, self.channels];
        shape.extend(
            axes.iter()
                .map(|&size| i64::try_from(size).unwrap_or(i64::MAX)),
        );
        let Ok(input) = Tensor::f_zeros(shape.as_slice(), (Kind::Float, self.device)) else {
            return Ok(None);
        };
        let Some(output) = self.forward(input)? else {
            return Ok(None);
        };
        let sizes = output.size();
        let sides: Vec<usize> = sizes[2..]
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect();
        if swaps_axes(&axes, &sides) {
            return Err(self.invalid(format!(
                "it returns its spatial axes in another order: an input of {} gives an output of {} \
                 {SWAPPED_AXES}",
                shape_text(&shape[2..]),
                shape_text(&sizes[2..])
            )));
        }
        if let Some((&side, &size)) = sides.iter().zip(&axes).find(|(&side, &size)| side > size) {
            self.grown = Some((size, side));
            return Ok(None);
        }
        if sides.contains(&0) {
            return Ok(None);
        }
        // Equal input sizes must give equal outputs (a network that treats
        // its axes alike).
        let uneven =
            (0..axes.len()).any(|i| (0..i).any(|j| axes[i] == axes[j] && sides[i] != sides[j]));
        if uneven {
            self.uneven
                .get_or_insert_with(|| (shape[2..].to_vec(), sizes[2..].to_vec()));
            return Ok(None);
        }
        self.out_channels = usize::try_from(sizes[1]).unwrap_or(0);
        Ok(Some(sides[..group.len()].to_vec()))
    }

    /// Pixels lost per axis (both sides together) at input size `size`.
    fn lost(&mut self, size: usize) -> Result<Option<usize>> {
        Ok(self.side(size)?.map(|s| size - s))
    }

    /// A deterministic uniform [0, 1) cube of side `size` (xorshift): the
    /// same probe on every load, and no change to torch's random state.
    /// With `structured`, the values' range shrinks from [0, 1) at the
    /// first row to [0, 0.25) at the last, and the first corner is 4:
    /// tiles cut from it differ from the whole image in their maximum, mean
    /// and spread, as tiles of images do. Every tile of a uniform probe has
    /// the whole's statistics, and a network that scales its input by its
    /// own maximum or mean was measured exact (93% of labels then differed
    /// on a real image).
    fn noise(&self, size: usize, seed: u64) -> Result<Tensor> {
        self.noise_with(size, seed, false)
    }

    fn noise_with(&self, size: usize, seed: u64, structured: bool) -> Result<Tensor> {
        if !self.fits(size) {
            return Err(self.too_large(size));
        }
        let count = usize::try_from(self.channels).unwrap_or(0) * size.pow(self.dims as u32);
        let mut values: Vec<f32> = Vec::new();
        values
            .try_reserve_exact(count)
            .map_err(|_| self.too_large(size))?;
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let per_channel = size.pow(self.dims as u32).max(1);
        let per_row = (per_channel / size.max(1)).max(1);
        let last_row = size.saturating_sub(1).max(1) as f32;
        values.extend((0..count).map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let uniform = (state >> 40) as f32 / (1u64 << 24) as f32;
            if !structured {
                return uniform;
            }
            let at = i % per_channel;
            if at == 0 {
                return 4.0;
            }
            uniform * (1.0 - 0.75 * (at / per_row) as f32 / last_row)
        }));
        self.torch(
            Tensor::f_from_slice(&values)
                .and_then(|t| t.f_reshape(self.shape(size).as_slice()))
                .and_then(|t| t.f_to_device(self.device)),
        )
    }

    /// The largest magnitude of `t` (at least the smallest positive float,
    /// so that relative differences are defined).
    fn scale(&self, t: &Tensor) -> Result<f64> {
        let max = self.largest(t)?;
        Ok(if max.is_finite() {
            max.max(f64::MIN_POSITIVE)
        } else {
            f64::INFINITY
        })
    }

    /// The largest magnitude of `t`, 0 for zeros (a difference that is
    /// none was reported as 2e-308 through [`Self::scale`]'s floor).
    fn largest(&self, t: &Tensor) -> Result<f64> {
        Ok(self
            .torch(t.f_abs().and_then(|a| a.f_max()))?
            .double_value(&[]))
    }

    /// The float32 output for `input`; a failure here, on a size that
    /// worked with zeros, is the network's and is reported. The network
    /// gets a copy: one that changes its input in place (`x.mul_(2)`)
    /// changed the probe image that tiles are then cut from, and its
    /// geometry came out as the fallback's (halo 512, multiple 64).
    fn output(&mut self, input: &Tensor) -> Result<Tensor> {
        let t = self.any_output(input)?;
        let finite = self.torch(t.f_isfinite().and_then(|f| f.f_all()))?;
        if !bool::try_from(finite).unwrap_or(false) {
            return Err(self.invalid(format!(
                "its output holds NaN or infinite values for a random input of shape {:?} \
                 (values in [0, 1), or up to 4): its geometry cannot be measured",
                input.size()
            )));
        }
        Ok(t)
    }

    /// [`Self::output`], non-finite values included. An output of another
    /// batch than the input's is refused: no result can be read from it,
    /// and its other images read as changes that reach every pixel (a
    /// network returning twice its batch probed up to 2048 px for 15 s).
    fn any_output(&mut self, input: &Tensor) -> Result<Tensor> {
        let copy = self.torch(input.f_detach_copy())?;
        let batch = input.size().first().copied();
        match self.forward(copy)? {
            Some(t) if t.size().first().copied() != batch => Err(self.invalid(format!(
                "it returns a batch of {} for an input batch of {} (shape {:?}): a segmentation \
                 network returns one result per image",
                t.size().first().copied().unwrap_or(0),
                batch.unwrap_or(0),
                input.size()
            ))),
            Some(t) => self.torch(t.f_to_kind(Kind::Float)),
            // A size that worked with zeros: what the pass said is the cause.
            None => Err(self.invalid(format!(
                "its forward fails on a random input of shape {:?}{}",
                input.size(),
                self.last_failure
                    .as_deref()
                    .map_or_else(String::new, |m| format!(": {m}"))
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_is_said_as_its_sides() {
        assert_eq!(shape_text(&[1, 3, 512, 640]), "1x3x512x640");
        assert_eq!(shape_text(&[]), "");
    }

    #[test]
    fn the_model_message_is_the_raised_line_of_a_torchscript_error() {
        let text = "The following operation failed in the TorchScript interpreter.\n\
                    Traceback of TorchScript (most recent call last):\n  File \"code/x.py\", line 3\n\
                    RuntimeError: forward() is missing value for argument 'y'.\n";
        assert_eq!(
            model_message(text),
            "RuntimeError: forward() is missing value for argument 'y'."
        );
        assert_eq!(model_message("first\nsecond"), "first");
        assert_eq!(model_message(""), "");
    }
}
