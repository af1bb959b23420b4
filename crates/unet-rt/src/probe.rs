//! Finding the geometry of a TorchScript model that carries no metadata, by
//! running it: the size rule from the output sizes of zero inputs, and for
//! networks that keep the input size (or accept any size) the overlap and
//! the pooling factor from random probe images, where a tile is compared
//! with the whole image. A few dozen forward passes at most, bounded in time.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::container;
use crate::error::{Error, Result};
use crate::info::{Agreement, Exactness, GeometryMismatch, ModelInfo, EXACT_TOLERANCE};
use crate::metadata::{Activation, Normalization, OutputKey, Padding};
use crate::pass_memory::PassMemory;

/// Input sizes tried for a first output: powers of two up to this (2-D)...
const FIRST_LIMIT_2D: usize = 1024;
/// ... and in 3-D.
const FIRST_LIMIT_3D: usize = 256;
/// Strides tried for networks that only take sizes on their pooling grid.
const STRIDES: [usize; 20] = [
    2, 3, 4, 6, 8, 9, 12, 16, 24, 27, 32, 48, 64, 81, 96, 128, 192, 256, 384, 512,
];
/// Where no power of two is a size the network takes, the first size is
/// looked for among these times powers of two: networks that pool by 3
/// take multiples of 3, 9, 27 or 81 only.
const ODD_GRIDS: [usize; 4] = [3, 9, 27, 81];
/// The largest pooling factor looked for in networks that take any size
/// (a power of two: shifts are bisected over their exponents), in 2-D and
/// in 3-D. The first overlap probe is four times as wide: 64 in 3-D made
/// it 256 voxels a side, seconds a pass even for small networks, and a
/// 3-D network that takes any size (MONAI's BasicUNet, VNet) gave up
/// after 30 s; four poolings are what 3-D networks use.
const MAX_HIDDEN_FACTOR: [usize; 2] = [64, 16];
/// Probe images for the overlap start at this side and double up to the
/// limit while a change still reaches their far edge.
const REACH_START: [usize; 2] = [256, 64];
const REACH_LIMIT: [usize; 2] = [2048, 128];
/// A change counts when it moves the output by more than this, relative to
/// the output's largest magnitude: float32 rounding. Both passes have the
/// same shapes, so they run the same kernels and agree bit for bit where
/// the change does not reach (Winograd tiles may add a few pixels); weak
/// deep paths of an untrained network still count ...
const REACH_TOLERANCE: f64 = 1.2e-7;
/// ... and, for networks whose every pixel depends on the whole input, the
/// overlap is where changes fall below this.
const APPROXIMATE_TOLERANCE: f64 = 1e-3;

/// A tile shift is on the pooling grid when it differs from the whole image
/// by at most this times the baseline (a shift on every grid) plus the floor
/// (two float32 epsilons: tiles at aligned shifts run the same kernels on
/// the same shapes, and agree to the last bits).
const SHIFT_RATIO: f64 = 4.0;
const SHIFT_FLOOR: f64 = 2.4e-7;

/// The largest probe tensor (values of a probe image or its output): a
/// network with thousands of channels, or metadata asking for a huge
/// overlap, gets an error instead of gigabytes allocated (or the process
/// killed by the kernel).
const MAX_PROBE_VALUES: usize = 1 << 26;

/// Probing gives up after this long: a model it cannot read in that time
/// needs metadata, and a load must not take minutes. FCN-ResNet50 (a
/// dilated ResNet, passes of seconds at 512 px) probes in about 24 s on two
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

/// How output sizes follow input sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    /// Only sizes on a grid work (a concatenation fails elsewhere).
    Strict,
    /// Every size from some point works; the output grows in steps of the
    /// pooling factor (floor pooling in a valid U-Net).
    Steps,
    /// Every size works with the same loss (resizing back, padding):
    /// the output size says nothing of the pooling factor.
    AnySize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    offset: usize,
    multiple: usize,
    lost: usize,
    kind: Growth,
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

/// How far a change reaches into the unchanged side of a probe, from
/// `hits` (whether each output position moved) ordered by distance from
/// the changed side: the distance past the farthest hit, or `None` where
/// the change reaches the far edge. Hits at the far edge no wider than the
/// near ones, across a gap at least as wide, came around the edge
/// (circular padding wraps each tile onto itself): the near reach counts.
/// Counted as reaching the edge, such a network's probes doubled to 2048
/// pixels (seconds a pass; under load it gave up) for an overlap of 512
/// where 14 held.
fn side_reach(hits: &[bool]) -> Option<usize> {
    let Some(last) = hits.iter().rposition(|&h| h) else {
        return Some(0);
    };
    if last + 1 < hits.len() {
        return Some(last + 1);
    }
    // The longest run without hits: [start, end).
    let (mut best, mut run_start) = ((0, 0), None);
    for (i, &h) in hits.iter().enumerate() {
        match (h, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(start)) => {
                if i - start > best.1 - best.0 {
                    best = (start, i);
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let (near, far) = (best.0, hits.len() - best.1);
    let wrapped = near > 0 && best.1 - best.0 >= near && far <= near + 2;
    wrapped.then_some(near)
}

/// How far a change to part of a probe moves the output
/// ([`Prober::reach`]): each `None` where it reaches the far edge.
#[derive(Debug, Clone, Copy)]
struct Reach {
    /// By [`REACH_TOLERANCE`] of the output's scale.
    strict: Option<usize>,
    /// By [`APPROXIMATE_TOLERANCE`].
    loose: Option<usize>,
    /// By any amount: past a convolution's receptive field the output is
    /// the same to the bit; a statistic of the whole tile moves it all.
    any: Option<usize>,
    /// Whether the strict reach ends in [`scattered`] single pixels.
    scattered: bool,
}

/// Named among a probed network's whole-tile operations where probing
/// finds [`scattered`] far hits.
const WHOLE_TILE_STATISTIC: &str = "a statistic of the whole tile (found by probing)";

/// Named among a probed network's whole-tile operations where changes
/// reach the far edge of a 2048 px probe (2-D).
const REACH_BEYOND_PROBES: &str = "a reach beyond its largest probe (found by probing)";

/// Hits farther than this past the last one still extend the near reach.
const NEAR_GAP: usize = 4;
/// Far hits count as scattered over at least this many pixels.
const SCATTER_SPAN: usize = 32;

/// Whether a change reaches, beyond its dense near reach, scattered single
/// pixels over a long span: what a statistic of the whole tile does (a
/// channel gate from a global mean moves every pixel a little, above the
/// rounding floor at a few); a convolution's reach is dense up to where
/// it ends, and a dilated one's far taps come in runs, as do hits that
/// came around the edge (circular padding).
fn scattered(hits: &[bool]) -> bool {
    let mut near_end = 0;
    for (i, &h) in hits.iter().enumerate() {
        if h {
            if i > near_end + NEAR_GAP {
                break;
            }
            near_end = i + 1;
        }
    }
    let far: Vec<usize> = (near_end..hits.len()).filter(|&i| hits[i]).collect();
    let Some(&last) = far.last() else {
        return false;
    };
    let alone = |i: usize| !(i > 0 && hits[i - 1] || hits.get(i + 1).copied().unwrap_or(false));
    let isolated = far.iter().filter(|&&i| alone(i)).count();
    far.len() >= 3 && 4 * isolated >= 3 * far.len() && last - near_end >= SCATTER_SPAN
}

/// The length of the half of a probe side of `size` pixels that a reach
/// probe changes: half the side, on the pooling grid so that the change
/// does not move the grid's windows on the other side.
fn changed_half(size: usize, grid: usize) -> usize {
    let grid = grid.clamp(1, (size / 2).max(1));
    size / 2 / grid * grid
}

/// Distances 1, 2, 4 ... below `first` that leave a size of at least 1.
fn below(first: usize) -> impl Iterator<Item = usize> {
    std::iter::successors(Some(1usize), |d| d.checked_mul(2)).take_while(move |&d| d < first)
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
    /// The slowest pass so far (its input shape and time): said when
    /// probing gives up, so that a slow network is told from a reach that
    /// never settles.
    slowest: Option<(Vec<i64>, Duration)>,
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

/// Measures, for a model with metadata, how well tiles agree with the
/// whole-image forward (for networks whose code has whole-tile layers), on
/// uniform noise and the probes beyond it ([`Placement::beyond_uniform`]).
pub(crate) fn measure(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
) -> Result<Agreement> {
    with_placement(module, device, path, info, |prober, at| {
        let uniform = at.uniform(prober)?;
        at.beyond_uniform(prober, uniform, sees_raw_values(info))
    })
}

/// Whether the network of `info` sees pixel values as they are, 0 to 255
/// for 8-bit images and beyond (no normalization, or a scale that leaves
/// them above 1): metadata declaring halo 1 for a network whose wide path
/// opens only above 5 loaded as exact, and 8-bit images tiled 7.8% of the
/// range off.
fn sees_raw_values(info: &ModelInfo) -> bool {
    match info.normalization {
        Normalization::None => true,
        Normalization::Scale { factor } => factor.abs() * 255.0 > 1.0 + 1e-6,
        _ => false,
    }
}

/// Runs `measure` with a prober for the model of `info` and the
/// [`Placement`] of its tile, gradients and graph optimisations off.
fn with_placement<T>(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
    measure: impl FnOnce(&mut Prober<'_>, &Placement) -> T,
) -> T {
    let _guard = tch::no_grad_guard();
    let _plain = PlainExecutor::enter();
    let mut prober = Prober::of_info(module, device, path, info);
    measure(&mut prober, &Placement::of(info))
}

/// Where [`measure`] cuts its tile: a probe image wide enough for tiles
/// beyond the overlap, and the smallest tile the engine makes.
#[derive(Debug, Clone, Copy)]
struct Placement {
    size: usize,
    shift: usize,
    inner: usize,
    margin: usize,
    lost: usize,
}

impl Placement {
    fn of(info: &ModelInfo) -> Self {
        let dims = usize::from(info.spatial_dims == 3);
        let shift = info.size_multiple.max(1);
        let size = info.round_up_valid(
            REACH_START[dims]
                .max(2 * info.effective_halo() + 2 * shift)
                .max(info.min_size + shift),
        );
        Self {
            size,
            shift,
            inner: info.min_tile().min(size.saturating_sub(shift)),
            margin: match info.padding {
                Padding::Valid => 0,
                Padding::Same => info.effective_halo(),
            },
            lost: info.shrink(),
        }
    }

    /// The agreement on uniform noise.
    fn uniform(&self, prober: &mut Prober<'_>) -> Result<Agreement> {
        let image = prober.noise(self.size, 1)?;
        let whole = prober.output(&image)?;
        prober.agreement(&image, &whole, self)
    }

    /// The worse of `uniform` and the agreements on the probes that find
    /// what uniform noise does not: the structured probe, the raw 8-bit
    /// range where the network sees it (`raw_values`), a flat tile, a
    /// smooth field and the structured probe negated (last: the probe a
    /// slow network on a busy machine can most easily do without). Models
    /// with metadata were checked on the first alone, and those the others
    /// find loaded as exact.
    fn beyond_uniform(
        &self,
        prober: &mut Prober<'_>,
        uniform: Agreement,
        raw_values: bool,
    ) -> Result<Agreement> {
        let measured = prober.with_structured(uniform, self)?;
        let measured = if raw_values {
            prober.with_raw_range(measured, self)?
        } else {
            measured
        };
        let measured = prober.with_flat_tile(measured, self)?;
        let measured = prober.with_smooth_field(measured, self)?;
        prober.with_negative(measured, self)
    }
}

/// For a model with metadata, or a valid network probed without it, whose
/// code shows no whole-tile layer: tiles against the whole-image forward
/// ([`measure`]). `None` where they agree to the device's rounding, or
/// where the measurement cannot run (the network's own checks stand).
/// Otherwise the agreement and, for a same-padded model whose tiles differ
/// on uniform noise already (a reach or a pooling grid beyond the declared
/// ones), its declared geometry and what probing the network finds (the
/// probe runs only then).
///
/// A valid network's output size proves how far its convolutions reach,
/// not that nothing else sees the whole tile: a division by the input's
/// maximum, a layer norm over the image, attention or a squeeze-excitation
/// written by hand (none of them in the code scan's list), bilinear
/// upsampling reaching past what the network crops. Such networks loaded
/// as exact, and their tiles were off by up to half the output's range.
pub(crate) fn check_tiles(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
) -> Result<Option<(Agreement, Option<GeometryMismatch>)>> {
    // A GPU's convolutions round in TF32 by default (about 1e-3 of the
    // range over a deep network); an undeclared reach or pooling grid, or
    // a layer that sees the whole tile, moves outputs by percents.
    let tolerance = match device {
        Device::Cpu => EXACT_TOLERANCE,
        _ => 10.0 * APPROXIMATE_TOLERANCE,
    };
    if info.fixed_size > 0 {
        // No whole-image forward to compare with: tiles the engine cuts
        // overlap, and must agree where they do. Metadata of a fixed size
        // was never checked: declared halo 0 for a network that sees 20
        // pixels around each, it loaded as exact and outputs at a tile seam
        // were half the range off.
        let measured = with_placement(module, device, path, info, |prober, _| {
            unless_cancelled(prober.overlapping_fixed_tiles(info)).map(Option::flatten)
        })?;
        return Ok(measured
            .filter(|measured| measured.max_difference > tolerance)
            .map(|measured| (measured, None)));
    }
    // Uniform noise shows a reach or a grid; the probes beyond it find
    // networks that scale by their input, which no overlap fixes, and
    // paths that uniform noise leaves closed.
    let measured = with_placement(module, device, path, info, |prober, at| {
        let Some(uniform) = unless_cancelled(at.uniform(prober))? else {
            return Ok(None);
        };
        if uniform.max_difference > tolerance {
            return Ok(Some((uniform, true)));
        }
        let measured = at.beyond_uniform(prober, uniform, sees_raw_values(info));
        Ok(unless_cancelled(measured)?.map(|measured| (measured, false)))
    })?;
    let Some((measured, on_uniform)) = measured.filter(|(m, _)| m.max_difference > tolerance)
    else {
        return Ok(None);
    };
    // Only a same-padded model whose tiles differ on uniform noise may
    // reach, or pool, beyond what it declares.
    if !(on_uniform && info.padding == Padding::Same) {
        return Ok(Some((measured, None)));
    }
    let probed = unless_cancelled(probe(
        module,
        device,
        path,
        Vec::new(),
        sees_raw_values(info),
    ))?
    .filter(|probed| probed.padding == Padding::Same);
    let declared = (info.halo, info.size_multiple);
    // Probing finds the declared geometry: the network itself is what
    // tiles cannot reproduce (it told users to declare what they had).
    if probed.as_ref().map(|p| (p.halo, p.size_multiple)) == Some(declared) {
        return Ok(Some((measured, None)));
    }
    let mismatch = GeometryMismatch {
        declared_halo: info.halo,
        declared_multiple: info.size_multiple,
        // Advice only where the geometry found holds: a network whose
        // tiles probing finds approximate too was told to declare a halo
        // that tiled 8% of its labels off.
        found: probed
            .filter(|p| p.exactness.is_exact())
            .map(|p| (p.halo, p.size_multiple)),
    };
    Ok(Some((measured, Some(mismatch))))
}

/// `result`'s value, `None` where its pass failed (a measurement that
/// could not be made finds nothing), and the error where the work was
/// cancelled: a load that ran on after an exit-time cancellation reached
/// libtorch while the interpreter was tearing down.
pub(crate) fn unless_cancelled<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Cancelled) => Err(Error::Cancelled),
        Err(_) => Ok(None),
    }
}

/// Runs `module` on two images at once and on the first alone (twice,
/// where they differ): the [`Passes`] found. A network
/// whose output for one image moves with the other images of its batch
/// gave results that changed with the planner's batch size; one that
/// differs between passes on one input cannot be tiled reproducibly. Three
/// passes on small images at most; a failure here (a network that fails
/// on this size) finds nothing, and the network's own checks stand.
///
/// For a model with metadata, passes first check what the metadata
/// declares (the network runs at two sizes its rule allows, and returns
/// the channels and the size its padding and halo give there, values that
/// can be probabilities where it declares them: [`check_declared_sizes`]):
/// a contradiction is an error at load, not at the first image.
///
/// # Errors
/// [`Error::InvalidMetadata`] for such a contradiction.
pub(crate) fn check_passes(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
) -> Result<Passes> {
    let _guard = tch::no_grad_guard();
    let _plain = PlainExecutor::enter();
    let mut prober = Prober::of_info(module, device, path, info);
    let size = info.round_up_valid(REACH_START[usize::from(info.spatial_dims == 3)] / 4);
    let declared = match info.output {
        Activation::Probabilities => Some("probabilities"),
        Activation::Masks => Some("masks"),
        _ => None,
    };
    if let Some(declared) = declared.filter(|_| !info.probed) {
        // Taken at its word, logits would be written as probabilities.
        let reading = prober
            .noise(size, 1)
            .and_then(|x| prober.any_output(&x))
            .and_then(|y| prober.reading(&y));
        let unlike = match reading {
            Ok(Reading::Unbounded(values)) => Some(values),
            Ok(Reading::ClassNumbers(high)) => Some(format!("values from 0 to {high}")),
            Ok(Reading::Masks(sums)) if info.output == Activation::Probabilities => {
                Some(format!("{sums} (declare \"masks\" for independent masks)"))
            }
            _ => None,
        };
        if let Some(unlike) = unlike {
            return Err(Error::InvalidMetadata {
                path: path.to_owned(),
                reason: format!(
                    "it declares output \"{declared}\", but for a random input the network returns \
                     {unlike}: declare \"softmax\" or \"sigmoid\" for logits"
                ),
            });
        }
    }
    let logits = matches!(info.output, Activation::Softmax | Activation::Sigmoid);
    if logits && !info.probed {
        // Taken at its word, probabilities would get a second softmax (off
        // by up to 0.5) or, with one channel, labels at logit 0 (every
        // pixel). One pass for logits networks, whose output leaves [0, 1].
        if let Some(kind) = unless_cancelled(prober.returns_probabilities(size))?.flatten() {
            return Err(Error::InvalidMetadata {
                path: path.to_owned(),
                reason: format!(
                    "it declares output \"{}\" (logits), but the network returns values within [0, 1] \
                     even for inputs a thousand times as strong{}: declare \"{}\"",
                    info.output.name(),
                    if kind == Activation::Probabilities && info.out_channels > 1 {
                        ", summing to 1 over its channels"
                    } else {
                        ""
                    },
                    kind.name()
                ),
            });
        }
    }
    if !info.probed {
        check_declared_sizes(&mut prober, info, size)?;
    }
    let Some((mut passes, _)) = unless_cancelled(prober.batch_and_repeat(size))? else {
        return Ok(Passes::default());
    };
    passes.contiguous_input = unless_cancelled(prober.fails_channels_last(size))?.unwrap_or(false);
    Ok(passes)
}

/// For a model with metadata: the network runs at `size` and at the next
/// size its rule declares valid (one image each), and returns the
/// channels and output size declared there. Metadata naming other
/// input channels, another rank, or a size rule off the network's pooling
/// grid loaded as exact, and every call then failed with libtorch's words
/// ("Given groups=1 ...", "Sizes of tensors must match") naming no field.
///
/// # Errors
/// [`Error::InvalidMetadata`] quoting the network's message;
/// [`Error::Cancelled`]. A pass that cannot run for other reasons (too
/// large to probe, a container the engine refuses with its own message)
/// finds nothing.
fn check_declared_sizes(prober: &mut Prober<'_>, info: &ModelInfo, size: usize) -> Result<()> {
    let next = if info.fixed_size > 0 {
        size
    } else {
        info.round_up_valid(size.saturating_add(1))
    };
    // The second pass is `size` along the first axis and `next` along the
    // others: a network that swaps its axes returns them the other way.
    let mut passes = vec![vec![size; info.spatial_dims]];
    if next != size {
        let mut axes = vec![next; info.spatial_dims];
        axes[0] = size;
        passes.push(axes);
    }
    for axes in passes {
        let largest = axes.iter().copied().max().unwrap_or(size);
        if !prober.fits(largest) {
            return Ok(());
        }
        let input = prober
            .noise(largest, 1)
            // Contiguous, as the engine's tiles are: a network viewing its
            // input (`x.view(...)`) fails on a strided one.
            .and_then(|cube| {
                prober.torch(
                    cube.f_narrow(2, 0, i64::try_from(axes[0]).unwrap_or(i64::MAX))
                        .and_then(|t| t.f_contiguous()),
                )
            })?;
        let size = shape_text(&input.size()[2..]);
        prober.last_failure = None;
        match prober.forward(input) {
            Ok(Some(output)) => {
                let mut expected = vec![1, info.out_channels];
                expected.extend(axes.iter().map(|side| side.saturating_sub(info.shrink())));
                let got: Vec<usize> = output
                    .size()
                    .iter()
                    .map(|&d| usize::try_from(d).unwrap_or(0))
                    .collect();
                if got != expected {
                    // No metadata fixes a network that swaps its axes (and
                    // probing refuses it, so it would say nothing).
                    let found = if swaps_axes(&axes, got.get(2..).unwrap_or_default()) {
                        format!(": its spatial axes in another order {SWAPPED_AXES}")
                    } else {
                        what_probing_finds(prober, info)?
                    };
                    return Err(Error::InvalidMetadata {
                        path: prober.path.to_owned(),
                        reason: format!(
                            "it declares {} output channel(s) and, with {:?} padding, halo {} and input sizes \
                             {} + k * {}, an output of {expected:?} for an input of {size} pixels; \
                             the network returns {got:?}{found}",
                            info.out_channels,
                            info.padding,
                            info.halo,
                            info.size_offset,
                            info.size_multiple,
                        ),
                    });
                }
            }
            // A device short of memory says nothing of the metadata.
            Ok(None)
                if prober
                    .last_failure
                    .as_deref()
                    .is_some_and(crate::error::says_out_of_memory) =>
            {
                return Ok(())
            }
            Ok(None) => {
                if let Some(error) = type_error(prober) {
                    return Err(error);
                }
                return Err(Error::InvalidMetadata {
                    path: prober.path.to_owned(),
                    reason: format!(
                        "it declares {} input channel(s), {} spatial dimensions and input sizes {} + k * {} \
                         ({:?} padding, halo {}), but at {size} pixels the network fails: {}{}",
                        info.in_channels,
                        info.spatial_dims,
                        info.size_offset,
                        info.size_multiple,
                        info.padding,
                        info.halo,
                        prober.last_failure.clone().unwrap_or_else(|| "(no message)".to_owned()),
                        what_probing_finds(prober, info)?
                    ),
                });
            }
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// The error for a network whose last pass failed on two floating types
/// meeting (`None` for other failures): a cast inside it (x.double())
/// fails at every size once its weights run in float32, and was reported
/// as a size rule the network does not follow, or metadata it contradicts,
/// with the type error at the message's tail.
fn type_error(prober: &Prober<'_>) -> Option<Error> {
    let failure = prober
        .last_failure
        .as_deref()
        .filter(|m| crate::error::says_dtype_mismatch(m))?;
    Some(Error::InvalidModel {
        path: prober.path.to_owned(),
        reason: format!(
            "its forward pass fails with a type error ({failure}): the network casts its input to a \
             floating type its weights are not in. unet_rt feeds float32 and runs the weights in the chosen \
             precision (fp32, bf16 or fp16); remove the cast (x.double(), x.to(...)) from forward, or cast to \
             the weights' dtype (x.to(self.conv.weight.dtype))"
        ),
    })
}

/// "; probing the network finds ...": the geometry and channels probing
/// finds, said with metadata the network contradicts (empty where probing
/// fails too, or finds what is declared).
///
/// # Errors
/// [`Error::Cancelled`] where the work was cancelled meanwhile.
fn what_probing_finds(prober: &Prober<'_>, info: &ModelInfo) -> Result<String> {
    let found = probe(
        prober.module,
        prober.device,
        prober.path,
        Vec::new(),
        sees_raw_values(info),
    );
    Ok(match unless_cancelled(found)? {
        Some(found) => format!(
            "; probing the network finds {} spatial dimensions, {} input channel(s), {} output channel(s), \
             {:?} padding, halo {} and input sizes {} + k * {}: declare those",
            found.spatial_dims,
            found.in_channels,
            found.out_channels,
            found.padding,
            found.halo,
            found.size_offset,
            found.size_multiple
        ),
        None => String::new(),
    })
}

/// Whether a pass with `inputs` pixels per axis that returned `outputs`
/// swaps its axes: a convolutional network's output side grows with the
/// input's along the same axis, and here a longer axis gave the shorter
/// side (a transpose or permute inside). On square tiles such a network
/// ran, and returned every tile mirrored about its diagonal.
fn swaps_axes(inputs: &[usize], outputs: &[usize]) -> bool {
    let pairs: Vec<(usize, usize)> = inputs
        .iter()
        .copied()
        .zip(outputs.iter().copied())
        .collect();
    pairs.iter().enumerate().any(|(i, a)| {
        pairs[..i]
            .iter()
            .any(|b| (b.0 < a.0 && b.1 > a.1) || (b.0 > a.0 && b.1 < a.1))
    })
}

/// What to do about a network [`swaps_axes`] finds.
const SWAPPED_AXES: &str = "(a transpose or permute of the image axes inside the network?): \
                            unet_rt needs the output's axes in the input's order";

/// What [`check_passes`] finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Passes {
    /// The output for one image moves with the other images of its batch.
    pub batch_dependent: bool,
    /// Two passes on one input differ.
    pub nondeterministic: bool,
    /// A pass of two images fails (or does not return two) where one works:
    /// a batch size fixed in the network (a traced `reshape(1, ...)`),
    /// which loaded as exact and failed at the first batch the planner
    /// chose (on a GPU, for any large image).
    pub one_image_per_pass: bool,
    /// A pass on a channels-last input, the layout the engine's batches
    /// have, fails where the contiguous one worked: a network that `view`s
    /// its input across channels loaded, then failed at every call
    /// ("view size is not compatible with input tensor's size and stride").
    pub contiguous_input: bool,
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
            slowest: None,
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
                .slowest
                .as_ref()
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
        let took = started.elapsed();
        if self
            .slowest
            .as_ref()
            .is_none_or(|(_, slowest)| took > *slowest)
        {
            self.slowest = Some((shape, took));
        }
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

    fn no_rule(&self, detail: &str) -> Error {
        let failure = match &self.last_failure {
            Some(message) => format!("; its last failing pass said: {message}"),
            None => String::new(),
        };
        self.invalid(format!(
            "its output follows no size rule ({detail}): is it fully convolutional, with {} input channel(s)?{failure}",
            self.channels
        ))
    }

    /// The first size of 1, 2, 4 ... that the network takes, if any, else
    /// of [`ODD_GRIDS`] times those: where the size rule starts.
    fn first_size(&mut self) -> Result<Option<usize>> {
        for base in std::iter::once(1).chain(ODD_GRIDS) {
            let mut size = base;
            while size <= self.first_limit() {
                if self.lost(size)?.is_some() {
                    return Ok(Some(size));
                }
                size *= 2;
            }
        }
        Ok(None)
    }

    fn first_limit(&self) -> usize {
        if self.dims == 2 {
            FIRST_LIMIT_2D
        } else {
            FIRST_LIMIT_3D
        }
    }

    /// The error for a network that takes none of [`Self::first_size`]'s
    /// sizes.
    fn no_size(&self) -> Error {
        if let Some((size, side)) = self.grown {
            // A whole multiple is an upscaling; a few pixels more are
            // convolutions padded beyond their reach (a 3x3 convolution
            // with padding 2), which were asked whether they upscale.
            if side % size.max(1) != 0 {
                return self.invalid(format!(
                    "its output is {} pixels larger than its input ({side} for {size}): a convolution \
                     pads more than its kernel reaches (padding 2 on a 3x3 kernel?); unet_rt runs networks \
                     whose output covers their input pixel for pixel, or loses a margin: pad each \
                     convolution by kernel_size // 2 (same) or 0 (valid)",
                    side - size
                ));
            }
            return self.invalid(format!(
                "its output is larger than its input ({side} pixels for {size}, a super-resolution \
                 network?): unet_rt segments at the input's resolution; resize the output back to the \
                 input's size in the network (F.interpolate), or enlarge the image first"
            ));
        }
        if let Some(error) = type_error(self) {
            return error;
        }
        if let Some((input, output)) = &self.uneven {
            return self.invalid(format!(
                "its axes lose different margins: an input of {} gives an output of {} (valid \
                 convolutions of other extents along some axes, such as 1x3x3 on a 3-D network's \
                 top level?). unet_rt's geometry has one halo and one size rule for all axes: pad \
                 the convolutions (same padding, kernel_size // 2) so that every axis keeps its size, \
                 or give every axis the same kernels",
                shape_text(input),
                shape_text(output)
            ));
        }
        self.no_rule(&format!(
            "no input size of 1, 2, 4 ... {} (nor 3, 9, 27 or 81 times those) works; a network \
             that takes sizes on another grid needs metadata with its size_multiple and size_offset, \
             and one that takes one size only, with fixed_size",
            self.first_limit()
        ))
    }

    /// The size rule from `first`, the first size that works: the next
    /// size tells how the output follows the input. Where no rule fits, an
    /// output that grows one pixel per several input pixels (a network
    /// without its upsampling) is named as such.
    fn size_rule(&mut self, first: usize) -> Result<Rule> {
        let rule = self
            .size_rule_from(first)
            .and_then(|rule| self.rule_holds_further(first, rule));
        if matches!(rule, Err(Error::Cancelled)) {
            return rule;
        }
        if rule.is_err() {
            if let Some(stride) = self.output_stride()? {
                return Err(self.invalid(format!(
                    "its output grows one pixel per {stride} input pixels (an output stride of {stride}): \
                     unet_rt runs networks whose output covers their input pixel for pixel, or loses a \
                     fixed margin; resize the output back to the input's size in the network \
                     (F.interpolate) and export it again"
                )));
            }
        }
        rule
    }

    /// `rule`, where the network loses what it says at the third grid
    /// size after `first` too: a rule is read off two or three sizes, and
    /// a network whose output grows one pixel per two input pixels
    /// (`max_pool2d` before its head) read as valid, losing 2 pixels, and
    /// returned full-size results that were not its output.
    ///
    /// The pass runs `first` and `far` along different axes (and a size
    /// between them on a third): a network that swaps its axes is refused
    /// there ([`Self::pass`]), where square probes never showed it.
    fn rule_holds_further(&mut self, first: usize, rule: Rule) -> Result<Rule> {
        let multiple = rule.multiple.max(1);
        let on_rule = |steps: usize| {
            (first / multiple + steps)
                .checked_mul(multiple)
                .and_then(|size| size.checked_add(rule.offset % multiple))
        };
        let (Some(far), Some(between)) = (on_rule(3), on_rule(2)) else {
            return Err(self.no_rule("its size rule overflows"));
        };
        let group = [first, far, between];
        if let Some(sides) = self.pass(&group[..self.dims.min(3)])? {
            for (&size, side) in group.iter().zip(sides).skip(1) {
                self.sides.insert(size, Some(side));
            }
        }
        match self.lost(far)? {
            Some(lost) if lost == rule.lost => Ok(rule),
            Some(lost) => Err(self.no_rule(&format!(
                "inputs of {first} and {far} pixels lose {} and {lost}",
                rule.lost
            ))),
            None => Err(self.no_rule(&format!(
                "input size {far} fails where its rule says it works"
            ))),
        }
    }

    /// `k` where inputs of 256 and 512 pixels give outputs 256 / k pixels
    /// apart (`k` of 2 or more); `None` otherwise, or where either fails.
    ///
    /// # Errors
    /// [`Error::Cancelled`] where the work was cancelled.
    fn output_stride(&mut self) -> Result<Option<usize>> {
        let Some(small) = unless_cancelled(self.side(256))?.flatten() else {
            return Ok(None);
        };
        let Some(large) = unless_cancelled(self.side(512))?.flatten() else {
            return Ok(None);
        };
        let grown = large.checked_sub(small).filter(|&g| g > 0 && g < 256);
        Ok(grown.and_then(|g| (256 % g == 0).then_some(256 / g)))
    }

    /// See [`Self::size_rule`]: from as few forward passes as the network
    /// allows.
    fn size_rule_from(&mut self, first: usize) -> Result<Rule> {
        let lost_first = self.lost(first)?.unwrap_or(0);
        let side_first = first - lost_first;
        // The size below tells the class from a pass cheaper than the one
        // above (smaller, in memory already touched), with the first sizes
        // `steps_below` looks at in the same pass; where it fails (the
        // network's smallest size), the size above tells.
        let sizes: Vec<usize> = below(first).take(self.dims).map(|d| first - d).collect();
        self.sides(&sizes)?;
        let probe_above = match first.checked_sub(1).filter(|&s| s > 0) {
            Some(size) => match self.side(size)? {
                Some(side) if side == side_first => false,
                Some(side) => side + lost_first != size,
                None => true,
            },
            None => true,
        };
        let next = if probe_above { first + 1 } else { first - 1 };
        let rule = match self.lost(next)? {
            None => self.strict_rule(first, lost_first),
            Some(lost) if next - lost == side_first => self.steps_rule(first, side_first),
            Some(lost) if lost == lost_first => Ok(Rule {
                offset: 0,
                multiple: 1,
                lost,
                kind: Growth::AnySize,
            }),
            Some(_) => Err(self.no_rule(&format!(
                "inputs of {first} and {next} lose {lost_first} and a different amount"
            ))),
        }?;
        if rule.lost % 2 == 1 {
            return Err(self.no_rule(&format!(
                "it loses {} pixels per axis, which cannot be split evenly between the two sides",
                rule.lost
            )));
        }
        Ok(rule)
    }

    /// Only sizes on a grid work: the first stride that works again is the
    /// grid, confirmed one stride further.
    fn strict_rule(&mut self, first: usize, lost: usize) -> Result<Rule> {
        for multiple in STRIDES {
            if self.lost(first + multiple)?.is_some() {
                if self.lost(first + multiple)? != Some(lost)
                    || self.lost(first + 2 * multiple)? != Some(lost)
                {
                    break;
                }
                return Ok(Rule {
                    offset: first % multiple,
                    multiple,
                    lost,
                    kind: Growth::Strict,
                });
            }
        }
        Err(self.no_rule(&format!(
            "input size {first} works, and no size on a grid of up to {} pixels after it does alike; \
             a network that takes one size only needs metadata with fixed_size",
            STRIDES[STRIDES.len() - 1]
        )))
    }

    /// The step below `first`, where passes are cheaper (smaller, and in
    /// memory the larger passes already touched): sizes `first - d` for
    /// `d` = 1, 2, 4 ... until the output shrinks. The step then is what
    /// it lost (the last distance that kept it is below the step, so this
    /// one is under two steps), and the grid point, the smallest size that
    /// keeps `first`'s output, lies between the last two distances: found
    /// by a search that probes one size per axis in each pass. `None` when
    /// a size fails on the way (below the network's smallest size): the
    /// step is then looked for above.
    fn steps_below(&mut self, first: usize, side_first: usize) -> Result<Option<Rule>> {
        let distances: Vec<usize> = below(first).collect();
        let (mut same, mut shrunk) = (0, None);
        'gallop: for group in distances.chunks(self.dims) {
            let sizes: Vec<usize> = group.iter().map(|&d| first - d).collect();
            for (&d, side) in group.iter().zip(self.sides(&sizes)?) {
                match side {
                    Some(side) if side == side_first => same = d,
                    Some(side) if side < side_first => {
                        shrunk = Some(d);
                        break 'gallop;
                    }
                    _ => return Ok(None),
                }
            }
        }
        let Some(shrunk) = shrunk else {
            return Ok(None);
        };
        let multiple = side_first - self.side(first - shrunk)?.unwrap_or(side_first);
        let (same, _, complete) = self.narrow(
            same,
            shrunk,
            |d| first - d,
            |side| match side {
                Some(side) if side == side_first => Some(true),
                Some(side) if side < side_first => Some(false),
                _ => None,
            },
        )?;
        if !complete {
            return Ok(None);
        }
        let aligned = first - same;
        if multiple < 2 || aligned < side_first {
            return Ok(None);
        }
        Ok(Some(Rule {
            offset: aligned % multiple,
            multiple,
            lost: aligned - side_first,
            kind: Growth::Steps,
        }))
    }

    /// Narrows `(low, high)` to neighbours, where position `low` keeps the
    /// first output and `high` does not, probing up to one position per
    /// axis in each pass at input size `size(position)`. `keeps` reads a
    /// probed output side: `Some(true)` keeps, `Some(false)` does not,
    /// `None` (the size failed, or follows no rule) ends the search after
    /// that pass: the last value says whether it ran to its end.
    fn narrow(
        &mut self,
        mut low: usize,
        mut high: usize,
        size: impl Fn(usize) -> usize,
        keeps: impl Fn(Option<usize>) -> Option<bool>,
    ) -> Result<(usize, usize, bool)> {
        while high - low > 1 {
            let probes = self.dims.min(high - low - 1);
            let positions: Vec<usize> = (1..=probes)
                .map(|j| low + (high - low) * j / (probes + 1))
                .collect();
            let sizes: Vec<usize> = positions.iter().map(|&p| size(p)).collect();
            let (mut next_low, mut next_high, mut complete) = (low, high, true);
            for (&position, side) in positions.iter().zip(self.sides(&sizes)?) {
                match keeps(side) {
                    Some(true) => next_low = next_low.max(position),
                    Some(false) => next_high = next_high.min(position),
                    None => complete = false,
                }
            }
            (low, high) = (next_low, next_high);
            if !complete {
                return Ok((low, high, false));
            }
        }
        Ok((low, high, true))
    }

    /// The output grows in steps: the first size where it grows is on the
    /// grid, the step is the multiple. Distances from `first` double until
    /// the output grows; the first size where it does lies between the
    /// last two, found by a search that probes one size per axis in each
    /// pass. Sizes that fail in between (FCN-8s takes only the first few
    /// sizes of each step, pix2pix only the first two) leave the search
    /// blind: bisection then finds where the run of sizes with the grown
    /// output starts.
    fn steps_rule(&mut self, first: usize, side_first: usize) -> Result<Rule> {
        let limit = 4 * STRIDES[STRIDES.len() - 1];
        if let Some(rule) = self.steps_below(first, side_first)? {
            return Ok(rule);
        }
        let mut low = first + 1; // same output as `first`
        let mut blind = false;
        let mut distance = 2;
        let mut high = None;
        while high.is_none() {
            if distance > limit {
                return Err(self.no_rule("the output stops growing with the input"));
            }
            let group: Vec<usize> = (0..self.dims).map(|i| first + (distance << i)).collect();
            for (size, side) in group.iter().zip(self.sides(&group)?) {
                match side {
                    Some(side) if side == side_first => low = *size,
                    Some(_) => {
                        high = Some(*size);
                        break;
                    }
                    None => blind = true,
                }
            }
            distance <<= self.dims;
        }
        let mut high = high.unwrap_or(low + 1);
        if !blind {
            let complete;
            (low, high, complete) =
                self.narrow(low, high, |size| size, |side| side.map(|s| s == side_first))?;
            blind = !complete;
        }
        let mut side = self.side(high)?.unwrap_or(0);
        if blind {
            // The sizes that give `high`'s output are one run from the grid
            // point up; below it sizes fail or give less: bisection, a size
            // at a time (a failing pass tells nothing of its other sizes).
            while high - low > 1 {
                let mid = low + (high - low) / 2;
                if self.side(mid)? == Some(side) {
                    high = mid;
                } else {
                    low = mid;
                }
            }
            // Blind doubling may have stepped over grid points: the step is
            // then a fraction of what the output grew, and one step back
            // from `high` keeps the output one step smaller.
            'fraction: loop {
                let grown = side.saturating_sub(side_first);
                for part in [2, 3] {
                    let step = grown / part;
                    if grown % part == 0
                        && step > 0
                        && high > first + step
                        && self.side(high - step)? == Some(side - step)
                    {
                        high -= step;
                        side -= step;
                        continue 'fraction;
                    }
                }
                break;
            }
        }
        let aligned = high;
        let multiple = side.saturating_sub(side_first);
        let lost = aligned - side;
        if multiple == 0 {
            return Err(self.no_rule(&format!("the output shrinks at input size {aligned}")));
        }
        Ok(Rule {
            offset: aligned % multiple,
            multiple,
            lost,
            kind: Growth::Steps,
        })
    }

    /// The smallest size on the rule that works (small sizes fail fast),
    /// where the network must lose what the rule says: this also confirms
    /// the rule away from the sizes it was found at.
    fn min_size(&mut self, info: &ModelInfo) -> Result<usize> {
        let mut size = info.smallest_valid_size();
        for _ in 0..64 {
            match self.lost(size)? {
                Some(lost) if lost == info.shrink() => {
                    return Ok(if size == info.smallest_valid_size() {
                        0
                    } else {
                        size
                    })
                }
                Some(lost) => {
                    return Err(self.no_rule(&format!(
                    "input size {size} loses {lost} pixels per axis where the rule found says {}",
                    info.shrink()
                )))
                }
                None => size += info.size_multiple.max(1),
            }
        }
        Err(self.no_rule(&format!("no size on its rule up to {size} works")))
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

    /// How far a change of the input moves the output, per side of every
    /// axis, at probe size `size`: the largest distance over which a change
    /// moves the output by more than `tolerance` (relative), or `None`
    /// when changes reach the far edge of the probe. Without `loose` (a
    /// larger probe follows), it stops at the first change that reaches
    /// the edge. Last, whether on some side the change reaches
    /// [`scattered`] pixels far beyond where it reaches densely.
    ///
    /// The change stops on a line of the pooling grid `grid`, as tile edges
    /// do: a pixel's reach depends on where it sits in its pooling cells,
    /// and a split inside a cell measured a U-Net pooling by 3 twice one
    /// cell short (tiles then differed by 8e-5).
    fn reach(&mut self, size: usize, grid: usize, loose_needed: bool) -> Result<Reach> {
        let image = self.noise(size, 1)?;
        let other = self.noise(size, 2)?;
        self.reach_in(
            &image,
            &other,
            0..self.dims,
            &[true, false],
            grid,
            loose_needed,
        )
    }

    /// Whether the strict reach `reach` found at probe size `size` holds on
    /// a probe twice as long on the last axis (`next` pixels), where no
    /// change moves the output by [`APPROXIMATE_TOLERANCE`] farther: dilated taps
    /// past a small probe's feature map read only padding (a dilation of 18
    /// at output stride 16 reaches 288 px; on the 256 px probe it measured
    /// 24, tiles of 32 px overlap were called exact, and a quarter of the
    /// labels differed). Two passes of twice the pixels, on one side of one
    /// axis: confirming on a square probe cost FCN-ResNet50 its time budget.
    fn reach_holds(&mut self, reach: usize, size: usize, next: usize, grid: usize) -> Result<bool> {
        let longer = self.reach_along_last(size, next, grid, 1.0)?;
        // The loose reach: a deep network's strict one creeps outwards on
        // longer probes by amounts far below what tiles would show
        // (FCN-ResNet50's 232 px), where taps that read padding before
        // move the output by a sizeable fraction.
        Ok(!longer.scattered
            && longer
                .loose
                .is_some_and(|r| r.next_multiple_of(grid) <= reach.next_multiple_of(grid) + grid))
    }

    /// The strict reach on a probe twice as long on the last axis (`next`
    /// pixels) where the scattered far reach found at `size` is a deep
    /// path's, not a statistic of the whole tile; `None` where it may be
    /// one. Through ReLUs and max-pooling a narrow network's deepest
    /// paths pass a change to a few pixels only (a U-Net pooling 6 times,
    /// 4 channels wide: single pixels out to 181 px on a 512 px probe,
    /// called a statistic of the whole tile with tiles measured exact).
    /// A statistic moves every pixel by some bits however far; a
    /// convolution leaves the pixels past its receptive field the same to
    /// the bit, and the longer probe has room for such a run at its far
    /// end.
    fn deep_path_reach(&mut self, size: usize, next: usize, grid: usize) -> Result<Option<usize>> {
        let longer = self.reach_along_last(size, next, grid, 1.0)?;
        let unchanged_side = next - changed_half(next, grid);
        Ok(match (longer.strict, longer.any) {
            (Some(strict), Some(any)) if any + SCATTER_SPAN <= unchanged_side => Some(strict),
            _ => None,
        })
    }

    /// The strict reach on noise at 255 times its values (`size` pixels,
    /// the low half of the last axis changed: two passes), where the raw
    /// values of 8-bit images open paths that [0, 1] noise leaves closed;
    /// `None` where changes reach the far edge or scatter (a statistic,
    /// which the raw-range comparison of tiles reports).
    fn raw_range_reach(&mut self, size: usize, grid: usize) -> Result<Option<usize>> {
        let reach = self.reach_along_last(size, size, grid, 255.0)?;
        Ok(reach.strict.filter(|_| !reach.scattered))
    }

    /// [`Self::reach_in`] of the low half of the last axis on noise
    /// `next` pixels long on that axis and `size` on the others, its values
    /// times `scale`: two passes of twice the pixels, where a square probe
    /// would cost four of four times (confirming on square probes cost
    /// FCN-ResNet50 its time budget).
    fn reach_along_last(
        &mut self,
        size: usize,
        next: usize,
        grid: usize,
        scale: f64,
    ) -> Result<Reach> {
        let strip = |prober: &mut Self, seed: u64| -> Result<Tensor> {
            let mut t = prober.noise(next, seed)?;
            for axis in 0..prober.dims.saturating_sub(1) {
                t = prober.torch(t.f_narrow((axis + 2) as i64, 0, size as i64))?;
            }
            if scale != 1.0 {
                t = prober.torch(t.f_mul_scalar(scale))?;
            }
            prober.torch(t.f_contiguous())
        };
        let image = strip(self, 1)?;
        let other = strip(self, 2)?;
        let last = self.dims.saturating_sub(1);
        self.reach_in(&image, &other, last..self.dims, &[true], grid, true)
    }

    /// Whether `passes` more passes as slow as the slowest so far end
    /// within `share` of the probing budget. The checks that only add to
    /// what probing finds (a reach confirmed on a longer probe, tiles
    /// compared on bright input) run where they leave the budget's rest
    /// for the comparisons every network needs, with room for a machine
    /// twice as busy: FCN-ResNet50 probed in 38 s on 2 idle cores with both
    /// (25 s without), ran out of its 60 s on busy ones when it confirmed
    /// its reach regardless, and now confirms none (its reach is no
    /// dilation's artefact) and compares bright tiles where it has time.
    fn time_for_passes(&self, passes: u32, share: f64) -> bool {
        self.time_for_slowest(f64::from(passes), share)
    }

    /// [`Self::time_for_passes`] for `passes` as slow as the slowest so far,
    /// a fraction of one included.
    fn time_for_slowest(&self, passes: f64, share: f64) -> bool {
        let needed = self.slowest_took().as_secs_f64() * passes;
        self.started.elapsed().as_secs_f64() + needed <= PROBE_BUDGET.as_secs_f64() * share
    }

    /// How long the slowest pass so far took.
    fn slowest_took(&self) -> Duration {
        self.slowest
            .as_ref()
            .map_or(Duration::ZERO, |(_, took)| *took)
    }

    /// [`Self::reach`] of `image` changed to `other` on either half
    /// (`low_halves`: the low one, the high one or both) of each of `axes`.
    fn reach_in(
        &mut self,
        image: &Tensor,
        other: &Tensor,
        axes: std::ops::Range<usize>,
        low_halves: &[bool],
        grid: usize,
        loose_needed: bool,
    ) -> Result<Reach> {
        let whole = self.output(image)?;
        let scale = self.scale(&whole)?;
        let mut strict = Some(0usize);
        let mut loose = Some(0usize);
        let mut any = Some(0usize);
        let mut global = false;
        for axis in axes {
            let dim = (axis + 2) as i64;
            let size = usize::try_from(image.size()[axis + 2]).unwrap_or(0);
            let half = changed_half(size, grid);
            for &low_half in low_halves {
                let (start, len) = if low_half {
                    (0, half)
                } else {
                    (half, size - half)
                };
                let (start, len) = (start as i64, len as i64); // below MAX_PROBE_VALUES
                let changed = self.torch((|| {
                    let mut copy = image.f_zeros_like()?;
                    copy.f_copy_(image)?;
                    copy.f_narrow(dim, start, len)?
                        .f_copy_(&other.f_narrow(dim, start, len)?)?;
                    Ok(copy)
                })())?;
                let moved = self.output(&changed)?;
                let profile: Vec<f32> = self.torch((|| {
                    let moved = moved.f_sub(&whole)?.f_abs()?;
                    let others: Vec<i64> = (1..moved.dim() as i64).filter(|&d| d != dim).collect();
                    Vec::try_from(moved.f_amax(others.as_slice(), false)?.f_flatten(0, -1)?)
                })())?;
                for (tolerance, reach) in [
                    (REACH_TOLERANCE, &mut strict),
                    (APPROXIMATE_TOLERANCE, &mut loose),
                    (0.0, &mut any),
                ] {
                    let hit = |v: &f32| f64::from(*v) > tolerance * scale;
                    // The unchanged side, by distance from the changed one.
                    let hits: Vec<bool> = if low_half {
                        profile.iter().skip(half).map(hit).collect()
                    } else {
                        profile.iter().take(half).rev().map(hit).collect()
                    };
                    if tolerance == REACH_TOLERANCE {
                        global |= scattered(&hits);
                    }
                    *reach = match (*reach, side_reach(&hits)) {
                        (Some(r), Some(distance)) => Some(r.max(distance)),
                        _ => None,
                    };
                }
                if strict.is_none() && !loose_needed && !global {
                    return Ok(Reach {
                        strict,
                        loose: None,
                        any: None,
                        scattered: false,
                    });
                }
            }
        }
        Ok(Reach {
            strict,
            loose,
            any,
            scattered: global,
        })
    }

    /// The tile of `image` placed `at` (`at.inner` pixels from `at.shift`
    /// on every axis), a view. Every size here is below
    /// [`MAX_PROBE_VALUES`]: the casts cannot wrap.
    fn tile_of(&self, image: &Tensor, at: &Placement) -> Result<Tensor> {
        self.cube(image, at.shift, at.inner)
    }

    /// The tile of `image` placed `at` against the whole image's output
    /// `whole`, on the pixels the engine would keep: `at.margin` discarded
    /// at each tile edge (same-padded), `at.lost` the network's own crop
    /// (valid).
    fn agreement(&mut self, image: &Tensor, whole: &Tensor, at: &Placement) -> Result<Agreement> {
        let Placement {
            shift,
            inner,
            margin,
            lost,
            ..
        } = *at;
        let size = image
            .size()
            .get(2)
            .and_then(|&s| usize::try_from(s).ok())
            .unwrap_or(0);
        let part = self.output(&self.tile_of(image, at)?)?;
        let kept = inner.saturating_sub(lost).saturating_sub(2 * margin);
        if kept == 0 {
            return Err(self.invalid(format!(
                "a probe of {size} pixels leaves no pixel beyond an overlap of {margin}"
            )));
        }
        let a = self.cube(&part, margin, kept)?;
        let b = self.cube(whole, shift + margin, kept)?;
        self.compared(&a, &b, whole, size)
    }

    /// `kept` pixels of `t` from `start` on every spatial axis, a view.
    fn cube(&self, t: &Tensor, start: usize, kept: usize) -> Result<Tensor> {
        let mut t = t.shallow_clone();
        for axis in 0..self.dims {
            // Below MAX_PROBE_VALUES: the casts cannot wrap.
            t = self.torch(t.f_narrow((axis + 2) as i64, start as i64, kept as i64))?;
        }
        Ok(t)
    }

    /// For a network of one input size (`info.fixed_size`): two passes on
    /// tiles of one noise image (uniform, then structured) shifted by half
    /// a tile on every axis (less where that leaves no pixel both keep:
    /// the largest shift on the size grid that does), against each other
    /// on the pixels both keep beyond the declared overlap, the worse of
    /// the two probes. `None` where the tile keeps no more than one step of
    /// the size grid.
    fn overlapping_fixed_tiles(&mut self, info: &ModelInfo) -> Result<Option<Agreement>> {
        let size = info.fixed_size;
        let out = size.saturating_sub(info.shrink());
        let margin = match info.padding {
            Padding::Valid => 0,
            Padding::Same => info.effective_halo(),
        };
        let shift = fixed_tile_shift(out, margin, info.size_multiple);
        if shift == 0 {
            return Ok(None);
        }
        let kept = out - 2 * margin - shift;
        let mut worst: Option<Agreement> = None;
        for structured in [false, true] {
            let image = self.noise_with(size + shift, 1, structured)?;
            let first = self.output(&self.torch(self.cube(&image, 0, size)?.f_contiguous())?)?;
            let second =
                self.output(&self.torch(self.cube(&image, shift, size)?.f_contiguous())?)?;
            let a = self.cube(&second, margin, kept)?;
            let b = self.cube(&first, shift + margin, kept)?;
            let agreement = self.compared(&a, &b, &first, size)?;
            worst = Some(match worst {
                Some(so_far) => so_far.or_worse(&agreement),
                None => agreement,
            });
        }
        Ok(worst)
    }

    /// The agreement of a tile's output `a` with `b`, the same pixels of
    /// the reference output `whole` (its largest magnitude the scale), on a
    /// probe of `size` pixels.
    fn compared(&self, a: &Tensor, b: &Tensor, whole: &Tensor, size: usize) -> Result<Agreement> {
        let scale = self.scale(whole)?;
        let max_difference = self.largest(&self.beyond_rounding(a, b)?)? / scale;
        let several = self.out_channels > 1;
        let mask_at = self.mask_at;
        let label_agreement = self
            .torch((|| {
                let labels = |t: &Tensor| {
                    if several {
                        t.f_argmax(1, false)
                    } else {
                        t.f_gt(mask_at)?.f_squeeze_dim(1)
                    }
                };
                labels(a)?
                    .f_eq_tensor(&labels(b)?)?
                    .f_to_kind(Kind::Double)?
                    .f_mean(Kind::Double)
            })())?
            .double_value(&[]);
        let pixels = a
            .size()
            .iter()
            .skip(2)
            .map(|&s| usize::try_from(s).unwrap_or(0))
            .product();
        Ok(Agreement {
            probe_size: size,
            pixels,
            max_difference: if max_difference.is_finite() {
                max_difference
            } else {
                f64::INFINITY
            },
            label_agreement,
        })
    }

    /// The worse of `uniform` (measured on uniform noise) and the same
    /// measurement on the structured probe of [`Self::noise_with`]: each
    /// misses what the other finds (a network scaling by its input's
    /// maximum is exact on uniform noise; an untrained network's global
    /// path may barely move labels on the structured one).
    fn with_structured(&mut self, uniform: Agreement, at: &Placement) -> Result<Agreement> {
        let image = self.noise_with(at.size, 1, true)?;
        let whole = self.output(&image)?;
        let structured = self.agreement(&image, &whole, at)?;
        Ok(uniform.or_worse(&structured))
    }

    /// `so_far` and the agreement on the structured probe negated (0 to
    /// -4), as the dark side of a z-scored image or a float image with
    /// negative values is: every other probe is non-negative, so a path
    /// that opens only on negative input (a gate on `relu(-x)`'s maximum
    /// or on a negative mean) never opened, and such networks were called
    /// exact with tiles 2.5% to 93% of the range off on a standard-normal
    /// image. (Uniform noise in [-1, 1) found the sum alone: its maximum is
    /// the same in every tile, its mean near 0 in all.) Skipped as
    /// [`Self::with_raw_range`] is, with a larger share of the budget left
    /// to the passes that follow: FCN-ResNet50 ran out of its 60 s with it
    /// on two busy cores.
    fn with_negative(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(3, 0.5) {
            return Ok(so_far);
        }
        let structured = self.noise_with(at.size, 5, true)?;
        let image = self.torch(structured.f_neg())?;
        self.or_worse_on(so_far, &image, at)
    }

    /// `so_far` and the agreement on the structured probe at 255 times its
    /// values: without metadata, or with none that normalizes, a network
    /// sees an image's raw values (0 to 255 for 8-bit pixels), and one that
    /// scales its input itself can be
    /// quiet on probes below 4 (a deep level whose biases silence it on
    /// dark input was measured exact, and real 8-bit images tiled 8% of
    /// the range off). A network that fails or overflows there, or too slow
    /// for the budget's rest ([`Self::time_for_passes`]), is left to the
    /// probes it ran.
    fn with_raw_range(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(3, 0.6) {
            return Ok(so_far);
        }
        let noise = self.noise_with(at.size, 3, true)?;
        let image = self.torch(noise.f_mul_scalar(255.0))?;
        self.or_worse_on(so_far, &image, at)
    }

    /// `so_far` and the agreement where the compared tile is flat (zeros)
    /// inside a noisy probe, as a tile in a mosaic's border or a masked
    /// well is: a network that returns zeros for a flat input ("nothing to
    /// segment", from `x.std()` over its tile) never met one on noise, was
    /// called exact, and half the labels of an image with a black part
    /// differed. Skipped as [`Self::with_raw_range`] is.
    fn with_flat_tile(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(2, 0.7) {
            return Ok(so_far);
        }
        let image = self.noise(at.size, 4)?;
        let mut region = self.tile_of(&image, at)?;
        let _ = self.torch(region.f_zero_())?;
        self.or_worse_on(so_far, &image, at)
    }

    /// `so_far` and the agreement on a smooth field spanning [0, 1] (a
    /// sine along each axis, over about half the probe, averaged): every
    /// brightness in it sits in a region of little contrast, as in an
    /// image's background. A network whose deep path opens only on a flat
    /// background of one brightness (a gate on the local variance and the
    /// level) was silent on every noise probe: called exact with an
    /// overlap of 16, and tiles were 20% of the range off on a bright-field
    /// image. Skipped as [`Self::with_raw_range`] is.
    fn with_smooth_field(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(2, 0.6) {
            return Ok(so_far);
        }
        let image = self.smooth_field(at.size)?;
        self.or_worse_on(so_far, &image, at)
    }

    /// The probe of [`Self::with_smooth_field`], `self.channels` alike.
    fn smooth_field(&self, size: usize) -> Result<Tensor> {
        if !self.fits(size) {
            return Err(self.too_large(size));
        }
        let side = i64::try_from(size).unwrap_or(i64::MAX);
        let period = (size as f64 / 2.0).max(2.0);
        let mut field = self.torch(Tensor::f_zeros(
            self.shape(size).as_slice(),
            (Kind::Float, self.device),
        ))?;
        for axis in 0..self.dims {
            let mut view = vec![1i64; self.dims + 2];
            view[axis + 2] = side;
            // A phase per axis, so that the axes' waves do not cancel.
            let phase = 0.7 * (axis as f64 + 1.0);
            let wave = self.torch((|| {
                Tensor::f_arange(side, (Kind::Float, self.device))?
                    .f_mul_scalar(std::f64::consts::TAU / period)?
                    .f_add_scalar(phase)?
                    .f_sin()?
                    .f_mul_scalar(0.5 / self.dims as f64)?
                    .f_add_scalar(0.5 / self.dims as f64)?
                    .f_reshape(view.as_slice())
            })())?;
            field = self.torch(field.f_add(&wave))?;
        }
        Ok(field)
    }

    /// `so_far` and the agreement of tiles of `image` placed `at`; `so_far`
    /// alone where the network fails on `image` or returns NaN or infinite
    /// values there ([`Self::output`]): the extra probes only add to what
    /// the others found.
    fn or_worse_on(
        &mut self,
        so_far: Agreement,
        image: &Tensor,
        at: &Placement,
    ) -> Result<Agreement> {
        let measured = self
            .output(image)
            .and_then(|whole| self.agreement(image, &whole, at));
        Ok(match unless_cancelled(measured)? {
            Some(measured) => so_far.or_worse(&measured),
            None => so_far,
        })
    }

    /// For networks that keep the input size or take any size: the overlap
    /// from how far input changes reach, the pooling factor from the tile
    /// shifts that reproduce the whole image, and the measured agreement.
    fn settle_overlap(&mut self, info: &mut ModelInfo, rule: Rule, raw_values: bool) -> Result<()> {
        let axis_kind = usize::from(self.dims == 3);
        let factor = if rule.kind == Growth::AnySize {
            MAX_HIDDEN_FACTOR[axis_kind]
        } else {
            rule.multiple
        };
        let rule_info = info.clone();
        let on_grid = |size: usize| rule_info.round_up_valid(size.next_multiple_of(factor));
        let mut size = on_grid(REACH_START[axis_kind].max(4 * factor));
        let mut halo = None;
        let mut fallback = size / 4;
        // Half the last probe whose changes reached its far edge.
        let mut edge_before = 0;
        // Whether changes still reached the far edge of the last probe when
        // the budget's rest left no time for a larger one.
        let mut out_of_time = false;
        if rule.lost == 0 {
            let limit = REACH_LIMIT[axis_kind].max(4 * factor);
            // The slowest pass before the last probe, where that was half
            // its side: how a pass grows with the side.
            let mut half_side_took: Option<Duration> = None;
            loop {
                let next = on_grid(size * 2);
                // Layers that see the whole tile reach every edge at any
                // size: larger probes would only cost time.
                // A larger probe must also fit in memory: passes are
                // measured, and a network whose memory grows with the
                // square of its pixels (global attention) stops here.
                let planned_last = next > limit
                    || !self.fits(next)
                    || !info.exactness.whole_tile_ops.is_empty()
                    || !self.affordable(next);
                let Reach {
                    strict,
                    mut loose,
                    scattered,
                    ..
                } = self.reach(size, factor, planned_last)?;
                // A convolution that reached the far edge of the last probe
                // reaches at least that far in this one; a change that
                // reached it there and falls short of it here is a
                // statistic of the whole tile, weaker the more pixels it
                // averages (a channel gate from the mean: at 2048 px it
                // moved only the pixels its convolutions reach, and tiles
                // of that overlap were called exact).
                let faded = strict.is_some_and(|r| r < edge_before);
                // Its 2 passes of twice the pixels, and the tile
                // comparisons after them, as for `reach_holds` below.
                let deep_path = match strict {
                    Some(reach)
                        if scattered
                            && !faded
                            && !planned_last
                            && self.time_for_passes(14, 0.5) =>
                    {
                        self.deep_path_reach(size, next, factor)?
                            .map(|longer| reach.max(longer))
                    }
                    _ => None,
                };
                if deep_path.is_some() {
                    halo = deep_path;
                    break;
                }
                if scattered || faded {
                    // A statistic of the whole tile that no code scan
                    // names (a mean gating the channels): larger probes
                    // only reach farther (an overlap of 1022 px at 2048,
                    // called exact on noise, for a network whose
                    // convolutions see 14 px), and no overlap makes tiles
                    // exact.
                    info.exactness
                        .whole_tile_ops
                        .push(WHOLE_TILE_STATISTIC.to_owned());
                    fallback = strict.or(loose).unwrap_or(size / 4);
                    break;
                }
                if let Some(reach) = strict {
                    // A reach short of the probe's edge holds on a longer
                    // probe, or the longer probes are measured in full.
                    if planned_last
                        // Its 2 passes of twice the pixels, and the tile
                        // comparisons after them (about 10 passes).
                        || !self.time_for_passes(14, 0.5)
                        || self.reach_holds(reach, size, next, factor)?
                    {
                        halo = strict;
                        break;
                    }
                    // Its passes were of another shape: no growth to read.
                    half_side_took = None;
                    size = next;
                    continue;
                }
                // The passes just run may show that the next size would
                // not fit after all: this size is the last one, and its
                // loose reach is wanted.
                // The larger probe's reach passes and the comparisons after
                // it, each slower by 2^dims (the pixels) or by what the last
                // doubling cost, if more (attention grows with their
                // square): Cellpose's network (a style vector from the
                // whole tile) ran out of its 60 s on the 2048 px probe and
                // was refused as too slow, and Segformer's 2048 px pass took
                // 91 s and 9 GB before it was.
                let took = self.slowest_took();
                let growth = half_side_took
                    .filter(|before| !before.is_zero())
                    .map_or(0.0, |before| took.as_secs_f64() / before.as_secs_f64())
                    .max(f64::from(1u32 << self.dims));
                out_of_time = !planned_last
                    && !self.time_for_slowest(f64::from(2 * self.dims as u32 + 7) * growth, 0.6);
                let last = planned_last || !self.affordable(next) || out_of_time;
                if last && !planned_last {
                    loose = self.reach(size, factor, true)?.loose;
                }
                fallback = loose.unwrap_or(size / 4);
                if last {
                    break;
                }
                edge_before = size / 2;
                half_side_took = Some(took);
                size = next;
            }
            // Changes still reach the far edge of a 2048 px probe: tiles
            // cannot be shown exact, however small the difference measured
            // on noise (a channel gate from the image's mean moved every
            // pixel of it, and tiles of 12 px overlap were called exact at
            // 3.6e-6). No 2-D convolution reaches 1024 px without metadata
            // saying so; 3-D probes stop at 128 voxels, which a 3-D U-Net's
            // weak deep paths pass (measured exact to 1e-6 all the same).
            // A 2-D network too slow for the larger probes is no better
            // known.
            if halo.is_none()
                && info.exactness.whole_tile_ops.is_empty()
                && self.dims == 2
                && (size >= REACH_LIMIT[0] || out_of_time)
            {
                info.exactness
                    .whole_tile_ops
                    .push(REACH_BEYOND_PROBES.to_owned());
            }
        } else {
            halo = Some(rule.lost / 2);
            size = on_grid(size.max(rule.lost + 4 * factor));
        }
        if let Some(reach) =
            halo.filter(|_| raw_values && rule.lost == 0 && self.time_for_passes(4, 0.5))
        {
            // A network that sees raw values: a path that
            // uniform noise leaves closed (one opening above 5) reaches
            // farther on 8-bit images, and tiles of the reach found on
            // noise were 70% of the range off there (then called
            // approximate where the farther overlap is exact).
            if let Some(raw) = unless_cancelled(self.raw_range_reach(size, factor))?.flatten() {
                halo = Some(reach.max(raw));
            }
        }
        let overlap = halo.unwrap_or(fallback);
        info.halo = overlap;
        // The tile compared must keep pixels beyond the overlap on both sides.
        let size = size.max(on_grid(2 * overlap.next_multiple_of(factor) + 2 * factor));
        let image = self.noise(size, 1)?;
        let whole = self.output(&image)?;
        let margin = |multiple: usize| {
            if rule.lost == 0 {
                overlap.next_multiple_of(multiple.max(1))
            } else {
                0
            }
        };
        // Tiles as small as the engine makes them: the agreement reported is
        // the worst a user meets (larger tiles see more of the image).
        let inner = on_grid(2 * overlap.next_multiple_of(factor) + factor).min(size - factor);
        let place = |shift: usize, inner: usize| Placement {
            size,
            shift,
            inner,
            margin: margin(shift),
            lost: rule.lost,
        };
        let (at, uniform) = if rule.kind == Growth::AnySize {
            // A shift by the largest factor looked for is on every pooling
            // grid: its difference is the baseline (rounding, or what
            // global layers add). The smallest shift that does about as
            // well is the pooling factor; a shift off the grid moves every
            // pooling window and differs by far more.
            //
            // A shift's tile is an odd multiple of it (`inner` is a multiple
            // of the factor, so of twice the shift): tiles the engine makes
            // on that grid are, and a network that pads itself to a larger
            // multiple, centred (a symmetric `DivisiblePad(16)` around a net
            // pooling by 4), shifts its pooling grid on them. Tiles that
            // were all multiples of 64 never showed it: multiple 4, called
            // exact, and 10% of the range off at image sides off 16.
            let baseline = self.agreement(&image, &whole, &place(factor, inner))?;
            let bound = SHIFT_RATIO * baseline.max_difference + SHIFT_FLOOR;
            let mut chosen = (place(factor, inner), baseline.clone());
            // Where even the baseline is not exact (global layers), shifts
            // cannot be told apart: the largest factor is on every grid.
            // Else a power of two is on the grid when it is at least the
            // factor: bisection over the exponents.
            let (mut low, mut high) = (0, factor.trailing_zeros());
            if !baseline.is_exact() {
                low = high;
            }
            while low < high {
                let exponent = low + (high - low) / 2;
                let shift = 1usize << exponent;
                // Within the probe: `inner` leaves a factor beyond it, and
                // the shift is at most half the factor.
                let at = place(shift, inner + shift);
                let agreement = self.agreement(&image, &whole, &at)?;
                if agreement.max_difference <= bound {
                    chosen = (at, agreement);
                    high = exponent;
                } else {
                    low = exponent + 1;
                }
            }
            info.size_multiple = chosen.0.shift;
            info.size_offset = 0;
            chosen
        } else {
            let at = place(rule.multiple, inner);
            (at, self.agreement(&image, &whole, &at)?)
        };
        info.exactness.measured = Some(at.beyond_uniform(self, uniform, raw_values)?);
        Ok(())
    }
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
    let line = raised.or(lines.first()).copied().unwrap_or_default();
    let mut message: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        message.push_str("...");
    }
    message
}

/// How far apart [`Prober::overlapping_fixed_tiles`] cuts its two tiles
/// of a fixed-size network whose tiles give `out` pixels and keep all but
/// `margin` on each side: half a tile on the grid of `multiple`, or less
/// where that leaves no pixel both keep. Half a tile only, a declared halo
/// of 16 on a 64-pixel tile left none, and the metadata's overlap was never
/// measured: a network that sees 24 pixels loaded as exact, tiles 4% off.
/// 0 where no shift on the grid leaves one.
fn fixed_tile_shift(out: usize, margin: usize, multiple: usize) -> usize {
    let multiple = multiple.max(1);
    let kept = out.saturating_sub(2 * margin);
    let half = (out / 2 / multiple * multiple).max(multiple);
    let widest = kept.saturating_sub(1) / multiple * multiple;
    half.min(widest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_swapped_where_a_longer_axis_gives_the_shorter_side() {
        assert!(swaps_axes(&[64, 80], &[80, 64]));
        assert!(swaps_axes(&[64, 80, 72], &[64, 72, 80]));
        // Same-padded, valid (a margin lost), and equal sides: not swapped.
        assert!(!swaps_axes(&[64, 80], &[64, 80]));
        assert!(!swaps_axes(&[64, 80], &[60, 76]));
        assert!(!swaps_axes(&[64, 64], &[60, 60]));
        // Floor pooling steps keep the order (or tie it).
        assert!(!swaps_axes(&[65, 66], &[64, 64]));
    }

    #[test]
    fn fixed_size_tiles_are_shifted_to_share_kept_pixels_wherever_the_grid_allows() {
        // Half a tile where that leaves pixels both keep.
        assert_eq!(fixed_tile_shift(256, 16, 16), 128);
        assert_eq!(fixed_tile_shift(64, 0, 16), 32);
        // A halo of 16 on 64 pixels keeps 32: half a tile shared none.
        assert_eq!(fixed_tile_shift(64, 16, 16), 16);
        assert_eq!(fixed_tile_shift(64, 16, 1), 31);
        // One grid step kept (or nothing): no shift on the grid shares a pixel.
        assert_eq!(fixed_tile_shift(64, 24, 16), 0);
        assert_eq!(fixed_tile_shift(64, 40, 16), 0);
        assert_eq!(fixed_tile_shift(0, 0, 0), 0);
        for (out, margin, multiple) in [(64, 16, 16), (100, 7, 4), (572, 0, 16), (33, 16, 1)] {
            let shift = fixed_tile_shift(out, margin, multiple);
            assert!(shift == 0 || (shift % multiple == 0 && shift < out - 2 * margin));
        }
    }

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

    #[test]
    fn reach_is_the_farthest_hit_and_wrapped_hits_do_not_count() {
        let side = |text: &str| side_reach(&text.chars().map(|c| c == 'x').collect::<Vec<_>>());
        assert_eq!(side(""), Some(0));
        assert_eq!(side("...."), Some(0));
        assert_eq!(side("xx.x...."), Some(4));
        assert_eq!(side("xxxxxxxx"), None);
        assert_eq!(side("x......x"), Some(1));
        // Around the edge: as wide as the near hits, across a wider gap.
        assert_eq!(side("xxx.........xxx"), Some(3));
        assert_eq!(side("xx.x.......xxxx"), Some(4));
        // Far hits wider than the near ones, or no gap as wide: reaching.
        assert_eq!(side("xx.........xxxxxx"), None);
        assert_eq!(side("xxxx..xxxx"), None);
        assert_eq!(side("......xx"), None);
    }

    #[test]
    fn far_hits_are_scattered_when_single_pixels_over_a_long_span() {
        let side = |text: &str| scattered(&text.chars().map(|c| c == 'x').collect::<Vec<_>>());
        let gap = ".".repeat(40);
        // A mean gate: dense near, single pixels far.
        assert!(side(&format!("xxxxxxxx{gap}x{gap}x{gap}x..")));
        // Convolutions: dense, with small gaps; nothing far.
        assert!(!side(
            "xxxx.xxxx..x.x......................................"
        ));
        // A dilated tap: a run far away; hits around the edge: a run.
        assert!(!side(&format!("xxx{gap}xxxxxx{gap}")));
        assert!(!side(&format!("xxx{gap}{gap}xxx")));
        // Two far pixels, or scattered hits close by, are not enough.
        assert!(!side(&format!("xxxx{gap}x{gap}x")));
        assert!(!side("xxxx......x...x...x......................"));
        assert!(!side(""));
    }

    #[test]
    fn strides_are_increasing_and_cover_eight_poolings() {
        assert!(STRIDES.windows(2).all(|w| w[0] < w[1]));
        assert!(STRIDES.contains(&256) && STRIDES.contains(&16));
        assert!(MAX_HIDDEN_FACTOR.iter().all(|f| f.is_power_of_two()));
        // The first overlap probe in 3-D stays at its start (64 voxels).
        assert_eq!(REACH_START[1].max(4 * MAX_HIDDEN_FACTOR[1]), REACH_START[1]);
    }
}
