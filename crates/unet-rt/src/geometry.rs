//! Overlap-tile geometry (docs/design.md section 5): which input window each tile
//! reads, which part of its output is kept, and where that part goes in the
//! output image. Pure integer arithmetic on shapes, one entry per spatial
//! axis, so the same code serves 2D images and 3D volumes.
//!
//! Conventions used throughout:
//!
//! * `T` is the input tile size on an axis, `h` the halo, `O = T - 2h` the
//!   part of a tile's output that is trusted (all of a valid network's output,
//!   the centre of a same network's output), `S` the grid stride.
//! * The grid is anchored at the image origin: tile `k` owns output
//!   `[k*S, k*S + O)` and reads input `[k*S - h, k*S - h + T)`. Reads outside
//!   the image are mirrored with [`reflect_index`], which is exactly
//!   `numpy.pad(mode="reflect")`, so a tiled valid network sees precisely the
//!   mirror-padded whole image and its stitched output equals one whole-image
//!   forward pass.
//! * `S` is a multiple of the network's pooling factor: moving a tile by
//!   anything else shifts every max-pool window and changes the result.

use crate::error::{Error, Result};

/// Bound on every extent the planner accepts (image side, tile side, halo,
/// multiple). Keeping inputs this far below `isize::MAX` lets every derived
/// coordinate, including reads that start before the origin, be formed in
/// `isize` without overflow; no real image comes near it.
const MAX_EXTENT: usize = (isize::MAX as usize) / 4;

/// Largest tile side accepted. A tile is materialised whole by the consumer,
/// and blend plans hold one weight per tile pixel and axis, so a side beyond
/// this is a mistake that would otherwise surface as an allocation failure.
pub const MAX_TILE_SIDE: usize = 1 << 20;

/// The nnU-Net default: the Gaussian's sigma is one eighth of the window.
pub const DEFAULT_SIGMA_SCALE: f64 = 0.125;

/// Smallest per-axis blending weight. A Gaussian with a tiny sigma underflows
/// to zero at the window's edge, and a pixel covered only by such edges would
/// then divide by zero. With this floor the product over up to six axes is
/// still a normal `f32` (1e-36 > `f32::MIN_POSITIVE`).
const MIN_WEIGHT: f64 = 1e-6;

// ---------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------

/// Steps a multi-index to the next element in row-major (C) order over
/// axes of `sizes`; past the last element it wraps to all zeros.
pub(crate) fn advance_index(index: &mut [usize], sizes: &[usize]) {
    for (i, &n) in index.iter_mut().zip(sizes).rev() {
        *i += 1;
        if *i < n {
            return;
        }
        *i = 0;
    }
}

/// The multi-index of element `flat` in row-major (C) order over axes of
/// `sizes` (empty axes count as one).
pub fn unravel_index(mut flat: usize, sizes: &[usize]) -> Vec<usize> {
    let mut index = vec![0usize; sizes.len()];
    for (i, &n) in index.iter_mut().zip(sizes).rev() {
        let n = n.max(1);
        *i = flat % n;
        flat /= n;
    }
    index
}

/// Maps a possibly out-of-range coordinate `i` on an axis of length `n` to the
/// pixel that `numpy.pad(mode="reflect")` puts there.
///
/// The edge pixel is not repeated (`-1 -> 1`, `n -> n - 2`), and coordinates
/// any distance away are mirrored again and again, so the padded signal is
/// periodic with period `2 (n - 1)`. NumPy reaches the same values by padding
/// iteratively; releases before the fix of numpy issue #25926 lose the
/// periodicity when pads on both sides are several times wider than the
/// signal, so compare against a current NumPy. An axis of length 1 always
/// gives 0 (numpy extends singleton axes with their one value). An empty axis
/// (`n == 0`) has no pixel to return; the function returns 0 rather than
/// panic, and callers must not read an empty axis.
pub fn reflect_index(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    // i128 holds 2 (n - 1) for any usize n and any isize i, so no input can
    // overflow here.
    let n = n as i128;
    let period = 2 * (n - 1);
    let phase = (i as i128).rem_euclid(period);
    let mirrored = if phase < n { phase } else { period - phase };
    // 0 <= mirrored < n <= usize::MAX, so the conversion is lossless.
    mirrored as usize
}

/// A stretch of a gathered window that reads consecutive source pixels: window
/// positions `dst .. dst + len` read source pixels `src, src + step, ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First position in the window (0 is the window's start).
    pub dst: usize,
    /// Source pixel read at `dst`, in `0..n`.
    pub src: usize,
    /// Number of pixels in the run, at least 1.
    pub len: usize,
    /// `+1` when the source is read forwards, `-1` when backwards (mirrored),
    /// `0` when one pixel repeats (the only pixel of an axis of length 1).
    pub step: isize,
}

/// Splits the window `[start, start + len)` of a mirrored axis of length `n`
/// into the fewest runs of consecutive source pixels, so that a gather can
/// copy slices instead of mirroring pixel by pixel.
///
/// Expanding the runs gives [`reflect_index`] at every window position. Runs
/// are maximal: each one continues up to a mirror turning point (pixel 0 or
/// `n - 1`) or the window's end. Taking the longest run at every step is
/// optimal because any piece of a run is itself a run. An axis of length 1
/// yields one run of `step` 0 (its only pixel repeats), and an empty axis
/// (`n == 0`) yields no runs.
///
/// The runs are produced one at a time: a window may be far longer than
/// memory (`len` comes from callers' sizes), and its run count,
/// `len / (n - 1)` or so, is then just as far out of reach; the iterator
/// knows that count in closed form ([`ExactSizeIterator`]).
pub fn reflect_runs(start: isize, len: usize, n: usize) -> ReflectRuns {
    ReflectRuns {
        start,
        len,
        n,
        dst: 0,
    }
}

/// The runs of [`reflect_runs`], in window order.
#[derive(Debug, Clone)]
pub struct ReflectRuns {
    start: isize,
    len: usize,
    n: usize,
    /// Window position of the next run.
    dst: usize,
}

impl ReflectRuns {
    /// The next run's source pixel, step and the most pixels it can cover
    /// before a turning point (`n >= 2`). i128 holds `2 (n - 1)` and any
    /// window position, so nothing here can overflow.
    fn next_shape(&self) -> (usize, isize, usize) {
        let n = self.n as i128;
        let period = 2 * (n - 1);
        let phase = (self.start as i128 + self.dst as i128).rem_euclid(period);
        // The rising half of the period, phases 0 .. n-2, reads forwards up to
        // pixel n - 1; from phase n - 1 on the signal falls back to pixel 0.
        let (src, step, available) = if phase < n - 1 {
            (phase, 1, n - phase)
        } else {
            (period - phase, -1, period - phase + 1)
        };
        // 0 <= src < n and 1 <= available <= n, so both fit in usize.
        (src as usize, step, available as usize)
    }
}

impl Iterator for ReflectRuns {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        if self.dst >= self.len || self.n == 0 {
            return None;
        }
        let rest = self.len - self.dst;
        let (src, step, len) = if self.n == 1 {
            (0, 0, rest)
        } else {
            let (src, step, available) = self.next_shape();
            (src, step, available.min(rest))
        };
        let run = Run {
            dst: self.dst,
            src,
            len,
            step,
        };
        self.dst += len;
        Some(run)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let count = self.remaining();
        (count, Some(count))
    }
}

impl ExactSizeIterator for ReflectRuns {}

impl ReflectRuns {
    /// How many runs are left. After the first, every run but the last
    /// spans a whole half period: `n - 1` pixels from one turning point to
    /// the other (2 for `n == 2`, whose half periods start on the turning
    /// points themselves).
    fn remaining(&self) -> usize {
        if self.dst >= self.len || self.n == 0 {
            return 0;
        }
        if self.n == 1 {
            return 1;
        }
        let rest = self.len - self.dst;
        let first = self.next_shape().2.min(rest);
        let half = if self.n == 2 { 2 } else { self.n - 1 };
        1 + (rest - first).div_ceil(half)
    }
}

// ---------------------------------------------------------------------------
// Size rules
// ---------------------------------------------------------------------------

/// Whether `size` is an input size the model accepts: `offset + k * multiple`
/// for some `k >= 0` (the paper's U-Net: offset 12, multiple 16, so 572 is and
/// 570 is not). A `multiple` of 0 is treated as 1 (no constraint beyond
/// `size >= offset`), as in the other size helpers, which cannot report
/// errors.
pub fn is_valid_size(size: usize, offset: usize, multiple: usize) -> bool {
    let multiple = multiple.max(1);
    size >= offset && (size - offset) % multiple == 0
}

/// The smallest accepted size `offset + k * multiple` that a tile plan can
/// use: its output `size - 2 * halo` must hold at least one stride, i.e. be at
/// least `multiple` (paper's U-Net: offset 12, multiple 16, halo 92 -> 204).
/// A `multiple` of 0 is treated as 1. Returns `usize::MAX` when no such size
/// fits in `usize` (absurd halos), which no tile can reach.
pub fn smallest_valid_size(offset: usize, multiple: usize, halo: usize) -> usize {
    checked_smallest_valid_size(offset, multiple, halo).unwrap_or(usize::MAX)
}

/// [`smallest_valid_size`], or `None` when that size does not fit in `usize`.
fn checked_smallest_valid_size(offset: usize, multiple: usize, halo: usize) -> Option<usize> {
    let multiple = multiple.max(1);
    let needed = halo.checked_mul(2)?.checked_add(multiple)?;
    if offset >= needed {
        return Some(offset);
    }
    let steps = (needed - offset).div_ceil(multiple);
    offset.checked_add(steps.checked_mul(multiple)?)
}

/// The largest accepted size `<= size` that a tile plan can use (see
/// [`smallest_valid_size`]), or `None` when even the smallest is larger than
/// `size`. Used to turn a memory-derived tile size into one the model takes.
pub fn round_down_to_valid(
    size: usize,
    offset: usize,
    multiple: usize,
    halo: usize,
) -> Option<usize> {
    let multiple = multiple.max(1);
    if size < checked_smallest_valid_size(offset, multiple, halo)? {
        return None;
    }
    // size >= smallest >= offset, so the subtraction cannot underflow.
    Some(offset + (size - offset) / multiple * multiple)
}

/// Checks a user-chosen tile against the model's size rule and the planner's
/// needs, with a message that names the nearest sizes that would work.
///
/// [`TilePlan`] itself knows only the halo and the pooling multiple, not the
/// model's `offset`; call this first when the tile comes from the user.
pub fn check_tile_size(tile: &[usize], offset: usize, multiple: usize, halo: usize) -> Result<()> {
    let smallest = smallest_valid_size(offset, multiple, halo);
    for (axis, &size) in tile.iter().enumerate() {
        if !is_valid_size(size, offset, multiple) {
            let below = round_down_to_valid(size, offset, multiple, halo);
            let above = smallest.max(next_valid_size(size, offset, multiple));
            let nearest = match below {
                Some(below) => format!("{below} or {above}"),
                None => above.to_string(),
            };
            return Err(invalid(
                "tile",
                format!(
                    "size {size} on axis {axis} is not accepted by the model: input sizes are \
                     {offset} + k * {multiple}; nearest usable: {nearest}"
                ),
            ));
        }
        if size < smallest {
            return Err(invalid(
                "tile",
                format!(
                    "size {size} on axis {axis} is too small for halo {halo} and size multiple \
                     {multiple}; the smallest usable tile is {smallest}"
                ),
            ));
        }
    }
    Ok(())
}

/// The smallest accepted size `>= size` (ignoring the planner's minimum),
/// saturating at `usize::MAX`.
fn next_valid_size(size: usize, offset: usize, multiple: usize) -> usize {
    round_up_to_valid(size, offset, multiple).unwrap_or(usize::MAX)
}

/// The smallest size `offset + k * multiple` that is `>= size`, in closed
/// form, or `None` when it does not fit in `usize`. A `multiple` of 0 is
/// treated as 1.
///
/// ```
/// use unet_rt::geometry::round_up_to_valid;
/// assert_eq!(round_up_to_valid(570, 12, 16), Some(572));
/// assert_eq!(round_up_to_valid(5, 12, 16), Some(12));
/// assert_eq!(round_up_to_valid(usize::MAX, 12, 16), None);
/// ```
pub fn round_up_to_valid(size: usize, offset: usize, multiple: usize) -> Option<usize> {
    let multiple = multiple.max(1);
    if size <= offset {
        return Some(offset);
    }
    offset.checked_add((size - offset).div_ceil(multiple).checked_mul(multiple)?)
}

// ---------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------

/// How a same-padded network's overlapping tiles are combined.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Blend {
    /// Keep each tile's centre only; every output pixel is written once.
    /// Geometrically this is the valid plan (see [`TilePlan::same`]).
    #[default]
    Crop,
    /// Weighted average with a separable Gaussian window (nnU-Net style)
    /// over the written centre `tile - 2 * halo`: `sigma = sigma_scale *
    /// centre size` per axis; see [`DEFAULT_SIGMA_SCALE`].
    Gaussian {
        /// Sigma as a fraction of the weighted window's size; finite, > 0.
        sigma_scale: f64,
    },
    /// Plain average of all tiles covering a pixel.
    Constant,
}

impl Blend {
    /// The nnU-Net Gaussian, sigma one eighth of the window.
    pub const fn gaussian() -> Self {
        Self::Gaussian {
            sigma_scale: DEFAULT_SIGMA_SCALE,
        }
    }

    /// Refuses a Gaussian `sigma_scale` that is not a finite positive
    /// number, whatever network it is given for.
    pub fn check(self) -> Result<()> {
        match self {
            Self::Gaussian { sigma_scale } if !(sigma_scale.is_finite() && sigma_scale > 0.0) => Err(invalid(
                "sigma_scale",
                format!("{sigma_scale} must be a finite number greater than 0 (default {DEFAULT_SIGMA_SCALE})"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether tiles overlap in the output and must be accumulated.
    fn accumulates(self) -> bool {
        !matches!(self, Self::Crop)
    }
}

/// What kind of network a plan was made for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TileMode {
    /// Unpadded convolutions: output tile `T - 2h`, used whole, written once.
    Valid,
    /// Zero-padded convolutions: output tile `T`, its `h` outer pixels
    /// discarded, the rest cropped or blended as given.
    Same(Blend),
}

/// One tile of a plan: where to read its input and where its output goes.
/// All coordinates are per spatial axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    /// Position in the plan's order, `0..plan.len()`.
    pub index: usize,
    /// Position in the tile grid (see [`TilePlan::grid_shape`]).
    pub grid_index: Vec<usize>,
    /// Origin of the input window in image coordinates; may be negative or
    /// reach past the image, where reads are mirrored ([`reflect_index`]).
    pub read_start: Vec<isize>,
    /// Shape of the input window: the plan's input tile shape.
    pub read_shape: Vec<usize>,
    /// Origin of the written region in image coordinates.
    pub write_start: Vec<usize>,
    /// Shape of the written region; never empty, never past the image.
    pub write_shape: Vec<usize>,
    /// Origin of the written region inside the network's output tile
    /// (shape [`TilePlan::output_tile_shape`]).
    pub src_start: Vec<usize>,
}

/// The tiling of one image: every tile has the same input shape, tiles are
/// listed in row-major grid order (last axis fastest).
///
/// Crop plans ([`TilePlan::valid`], and [`TilePlan::same`] with
/// [`Blend::Crop`]) write every output pixel exactly once, so the consumer
/// copies. Blend plans write overlapping regions: the consumer accumulates
/// `weight * value` and `weight`, then divides; see [`TilePlan::weights`].
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    image: Vec<usize>,
    tile_in: Vec<usize>,
    tile_out: Vec<usize>,
    stride: Vec<usize>,
    grid: Vec<usize>,
    halo: usize,
    multiple: usize,
    mode: TileMode,
    len: usize,
    weights: Option<Vec<Vec<f32>>>,
}

impl TilePlan {
    /// Plans a valid-padded network (the paper's U-Net): input tile `tile_in`
    /// yields an output of `tile_in - 2 * halo` per axis, all of it trusted.
    ///
    /// The stride is the largest multiple of `multiple` (the pooling factor,
    /// `2^(depth-1)`) that fits in the output tile; the remainder of the
    /// output overlaps the next tile and is not copied. The last tile along
    /// an axis writes up to the image end (its surplus output, computed from
    /// mirrored input, is cropped). Paper's numbers: tile 572, halo 92,
    /// multiple 16 -> output 388, stride 384.
    ///
    /// Errors: empty or mismatched shapes, a zero image axis, `multiple == 0`,
    /// or a tile whose output is smaller than `multiple` (the message gives
    /// the smallest usable tile).
    pub fn valid(image: &[usize], tile_in: &[usize], halo: usize, multiple: usize) -> Result<Self> {
        Self::build(image, tile_in, halo, multiple, TileMode::Valid)
    }

    /// Plans a same-padded network: its output tile has the input tile's
    /// shape, but the outer `halo` pixels are damaged by the padding beyond
    /// the tile (zeros, reflected or wrapped) and are never written.
    ///
    /// * [`Blend::Crop`]: the valid plan with the network's output tile being
    ///   `tile_in` and the kept centre `tile_in - 2 * halo` starting at `halo`:
    ///   the same read windows, strides and write regions as
    ///   [`TilePlan::valid`], with `src_start` shifted by `halo`. Every output
    ///   pixel is written once.
    /// * [`Blend::Gaussian`] / [`Blend::Constant`]: every tile writes its whole
    ///   centre `O' = tile_in - 2 * halo`, and the stride is the largest
    ///   multiple of `multiple` that is at most `O' / 2`, so that inside the
    ///   image every pixel gets at least two tiles per axis. This is nnU-Net's step of
    ///   half a window, which its sigma of 1/8 was tuned for, while keeping
    ///   the stride on the pooling grid (nnU-Net instead spaces tiles evenly,
    ///   which moves them off it). Input windows then overlap by
    ///   `2 * halo + O' / 2 >= 2 * halo`. When `O' / 2` holds no multiple the
    ///   stride falls back to the largest multiple that fits `O'` (the crop
    ///   stride: less overlap, still every pixel covered). Weights come from
    ///   [`TilePlan::weights`].
    ///
    /// Pooling alignment: a same network's whole-image forward pools on a
    /// grid anchored at the image origin, and tile windows start at
    /// `k * S - halo`, so tiles share that grid exactly when `halo` is a
    /// multiple of `multiple`; choose such a halo when results should be as
    /// close as possible to the whole-image forward.
    ///
    /// Errors: as [`TilePlan::valid`], plus a Gaussian `sigma_scale` that is
    /// not a finite positive number.
    pub fn same(
        image: &[usize],
        tile_in: &[usize],
        halo: usize,
        multiple: usize,
        blend: Blend,
    ) -> Result<Self> {
        blend.check()?;
        Self::build(image, tile_in, halo, multiple, TileMode::Same(blend))
    }

    /// Shared by both constructors: the per-axis stride and tile count are
    /// all that differ between the modes, the tiles derive from them lazily.
    fn build(
        image: &[usize],
        tile_in: &[usize],
        halo: usize,
        multiple: usize,
        mode: TileMode,
    ) -> Result<Self> {
        validate_arguments(image, tile_in, halo, multiple)?;
        let blend = match mode {
            TileMode::Valid => Blend::Crop,
            TileMode::Same(blend) => blend,
        };
        let mut tile_out = Vec::with_capacity(image.len());
        let mut stride = Vec::with_capacity(image.len());
        let mut grid = Vec::with_capacity(image.len());
        for (axis, (&size, &tile)) in image.iter().zip(tile_in).enumerate() {
            let kept = kept_length(axis, tile, halo, multiple)?;
            let step = choose_stride(kept, multiple, blend.accumulates())
                .ok_or_else(|| too_small(axis, tile, halo, multiple))?;
            stride.push(step);
            grid.push(tiles_needed(size, kept, step));
            tile_out.push(if mode == TileMode::Valid { kept } else { tile });
        }
        let len = grid.iter().try_fold(1usize, |total, &count| total.checked_mul(count)).ok_or_else(|| {
            invalid(
                "image shape",
                format!("{image:?} would need more tiles than this machine can count; use larger tiles"),
            )
        })?;
        let weights = blend_weights(blend, &tile_out, halo);
        Ok(Self {
            image: image.to_vec(),
            tile_in: tile_in.to_vec(),
            tile_out,
            stride,
            grid,
            halo,
            multiple,
            mode,
            len,
            weights,
        })
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a valid image has at least one pixel, so at least one
    /// tile.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The image (and output image) shape the plan covers.
    pub fn image_shape(&self) -> &[usize] {
        &self.image
    }

    /// The network's input tile shape, shared by all tiles.
    pub fn input_tile_shape(&self) -> &[usize] {
        &self.tile_in
    }

    /// The network's output tile shape: `tile_in - 2 * halo` for valid
    /// networks, `tile_in` for same networks. `src_start` and the weights are
    /// indexed in this tile.
    pub fn output_tile_shape(&self) -> &[usize] {
        &self.tile_out
    }

    /// Grid stride per axis, a multiple of [`TilePlan::multiple`].
    pub fn stride(&self) -> &[usize] {
        &self.stride
    }

    /// Number of tiles per axis.
    pub fn grid_shape(&self) -> &[usize] {
        &self.grid
    }

    /// Halo in pixels per side.
    pub fn halo(&self) -> usize {
        self.halo
    }

    /// The pooling factor the stride is a multiple of.
    pub fn multiple(&self) -> usize {
        self.multiple
    }

    /// What kind of network, and for same networks how tiles combine.
    pub fn mode(&self) -> TileMode {
        self.mode
    }

    /// Whether tiles overlap in the output, so the consumer must accumulate
    /// weighted values and divide instead of copying.
    pub fn blends(&self) -> bool {
        self.weights.is_some()
    }

    /// Separable blending weights, one vector per axis of length
    /// [`TilePlan::output_tile_shape`], indexed like `src_start`: a tile's
    /// output pixel `q` has weight `weights[0][q[0]] * weights[1][q[1]] * ...`.
    /// Positive over every written region (zero on the discarded border).
    /// Shared by all tiles; `None` for crop plans.
    pub fn weights(&self) -> Option<&[Vec<f32>]> {
        self.weights.as_deref()
    }

    /// The tile at position `index` in plan order, or `None` past the end.
    pub fn tile(&self, index: usize) -> Option<Tile> {
        if index >= self.len {
            return None;
        }
        let mut grid_index = vec![0; self.grid.len()];
        let mut rest = index;
        for (slot, &count) in grid_index.iter_mut().zip(&self.grid).rev() {
            *slot = rest % count;
            rest /= count;
        }
        Some(self.tile_at(index, grid_index))
    }

    /// All tiles in plan order.
    pub fn tiles(&self) -> Tiles<'_> {
        Tiles {
            plan: self,
            next: 0,
        }
    }

    fn tile_at(&self, index: usize, grid_index: Vec<usize>) -> Tile {
        let rank = self.image.len();
        let mut tile = Tile {
            index,
            grid_index,
            read_start: Vec::with_capacity(rank),
            read_shape: self.tile_in.clone(),
            write_start: Vec::with_capacity(rank),
            write_shape: Vec::with_capacity(rank),
            src_start: Vec::with_capacity(rank),
        };
        // Same networks put the trusted centre `halo` pixels into their output.
        let src_offset = if self.mode == TileMode::Valid {
            0
        } else {
            self.halo
        };
        for axis in 0..rank {
            let k = tile.grid_index[axis];
            let origin = k * self.stride[axis];
            // All extents are <= MAX_EXTENT (checked on construction) and
            // origin < image, so these isize values cannot overflow.
            tile.read_start.push(origin as isize - self.halo as isize);
            tile.write_start.push(origin);
            tile.write_shape.push(self.write_length(axis, k));
            tile.src_start.push(src_offset);
        }
        tile
    }

    /// Length written by tile `k` along `axis`, starting at `k * stride`.
    fn write_length(&self, axis: usize, k: usize) -> usize {
        let size = self.image[axis];
        let origin = k * self.stride[axis];
        let kept = self.tile_in[axis] - 2 * self.halo;
        let end = if self.blends() || k + 1 == self.grid[axis] {
            // Blending writes the whole centre; the last crop tile writes up
            // to the image end. Both stop at the image.
            (origin + kept).min(size)
        } else {
            // A crop tile hands over to the next tile at its start, so the
            // overlapping remainder of its output is written once, by the
            // next tile.
            origin + self.stride[axis]
        };
        end - origin
    }
}

/// Iterator over a plan's tiles, in plan order; see [`TilePlan::tiles`].
#[derive(Debug, Clone)]
pub struct Tiles<'a> {
    plan: &'a TilePlan,
    next: usize,
}

impl Iterator for Tiles<'_> {
    type Item = Tile;

    fn next(&mut self) -> Option<Tile> {
        let tile = self.plan.tile(self.next)?;
        self.next += 1;
        Some(tile)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.len.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Tiles<'_> {}

impl<'a> IntoIterator for &'a TilePlan {
    type Item = Tile;
    type IntoIter = Tiles<'a>;

    fn into_iter(self) -> Tiles<'a> {
        self.tiles()
    }
}

/// Shape and option checks shared by all plans; after this, every axis's
/// arithmetic stays far from overflow (see [`MAX_EXTENT`]).
fn validate_arguments(
    image: &[usize],
    tile_in: &[usize],
    halo: usize,
    multiple: usize,
) -> Result<()> {
    if image.is_empty() {
        return Err(invalid(
            "image shape",
            "has no spatial axes; expected one size per spatial axis".to_owned(),
        ));
    }
    if image.len() != tile_in.len() {
        return Err(invalid(
            "tile",
            format!(
                "{tile_in:?} has {} axes but the image {image:?} has {} spatial axes; give one tile size per axis",
                tile_in.len(),
                image.len()
            ),
        ));
    }
    if let Some(axis) = image.iter().position(|&size| size == 0) {
        return Err(invalid(
            "image shape",
            format!("{image:?} is empty along spatial axis {axis}"),
        ));
    }
    if multiple == 0 {
        return Err(invalid(
            "multiple",
            "must be at least 1 (use 1 for networks without pooling)".to_owned(),
        ));
    }
    if let Some((axis, &size)) = image
        .iter()
        .enumerate()
        .find(|(_, &size)| size > MAX_EXTENT)
    {
        return Err(invalid(
            "image shape",
            format!("size {size} on axis {axis} is beyond the supported {MAX_EXTENT}"),
        ));
    }
    if let Some((axis, &size)) = tile_in
        .iter()
        .enumerate()
        .find(|(_, &size)| size > MAX_TILE_SIDE)
    {
        return Err(invalid(
            "tile",
            format!("size {size} on axis {axis} is beyond the supported {MAX_TILE_SIDE}"),
        ));
    }
    // A halo or multiple larger than the tile is rejected later as "too
    // small"; bounding them here keeps `2 * halo + multiple` from overflowing.
    if halo > MAX_TILE_SIDE || multiple > MAX_TILE_SIDE {
        let (argument, value) = if halo > MAX_TILE_SIDE {
            ("halo", halo)
        } else {
            ("multiple", multiple)
        };
        return Err(invalid(
            argument,
            format!("{value} is larger than any supported tile ({MAX_TILE_SIDE})"),
        ));
    }
    Ok(())
}

/// `tile - 2 * halo`, the part of a tile's output that is trusted.
fn kept_length(axis: usize, tile: usize, halo: usize, multiple: usize) -> Result<usize> {
    match tile.checked_sub(2 * halo) {
        Some(kept) if kept > 0 => Ok(kept),
        _ => Err(too_small(axis, tile, halo, multiple)),
    }
}

/// The grid stride for a trusted output length `kept`: a multiple of the
/// pooling factor, at most `kept` so that neighbours leave no gap, and for
/// blending at most `kept / 2` when possible (see [`TilePlan::same`]).
fn choose_stride(kept: usize, multiple: usize, blending: bool) -> Option<usize> {
    let fit = |length: usize| Some(length / multiple * multiple).filter(|&stride| stride > 0);
    if blending {
        if let Some(half) = fit(kept / 2) {
            return Some(half);
        }
    }
    fit(kept)
}

/// Tiles a valid (crop) plan puts along an axis of `size` pixels with input
/// tiles of `tile`, or `None` when the tile is too small for the halo: the
/// count [`TilePlan::valid`] would give, without building a plan.
pub(crate) fn valid_tiles_along(
    size: usize,
    tile: usize,
    halo: usize,
    multiple: usize,
) -> Option<usize> {
    let kept = kept_length(0, tile, halo, multiple).ok()?;
    let stride = choose_stride(kept, multiple, false)?;
    Some(tiles_needed(size, kept, stride))
}

/// Fewest tiles of trusted length `kept` at `stride` that cover `[0, size)`.
fn tiles_needed(size: usize, kept: usize, stride: usize) -> usize {
    if size <= kept {
        1
    } else {
        1 + (size - kept).div_ceil(stride)
    }
}

fn too_small(axis: usize, tile: usize, halo: usize, multiple: usize) -> Error {
    let smallest = 2 * halo + multiple;
    invalid(
        "tile",
        format!(
            "size {tile} on axis {axis} is too small for halo {halo} and size multiple {multiple}: \
             the output left after removing the halo must hold at least one stride of {multiple}; \
             the smallest usable tile is {smallest} (rounded up to a size the model accepts)"
        ),
    )
}

/// Per-axis weights for blend plans, over the network's output tile: the
/// damaged border gets 0 and is never written, the centre gets the window.
fn blend_weights(blend: Blend, tile_out: &[usize], halo: usize) -> Option<Vec<Vec<f32>>> {
    let window = |length: usize| -> Vec<f64> {
        match blend {
            Blend::Gaussian { sigma_scale } => gaussian_window(length, sigma_scale),
            _ => vec![1.0; length],
        }
    };
    if !blend.accumulates() {
        return None;
    }
    let axes = tile_out
        .iter()
        .map(|&length| {
            let centre = window(length - 2 * halo);
            let mut weights = vec![0.0f32; length];
            for (slot, value) in weights[halo..length - halo].iter_mut().zip(centre) {
                *slot = value as f32;
            }
            weights
        })
        .collect();
    Some(axes)
}

/// A Gaussian over `length` pixels centred on the window, peak 1, floored at
/// [`MIN_WEIGHT`].
fn gaussian_window(length: usize, sigma_scale: f64) -> Vec<f64> {
    let sigma = sigma_scale * length as f64;
    let centre = (length as f64 - 1.0) / 2.0;
    (0..length)
        .map(|i| {
            let distance = (i as f64 - centre) / sigma;
            (-0.5 * distance * distance).exp().max(MIN_WEIGHT)
        })
        .collect()
}

fn invalid(argument: &'static str, message: String) -> Error {
    Error::InvalidArgument { argument, message }
}

#[cfg(test)]
mod tests;
