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
    /// `+1` when the source is read forwards, `-1` when backwards (mirrored).
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
/// yields one single-pixel run per position (its only pixel repeats, which no
/// `±1` step describes), and an empty axis (`n == 0`) yields no runs.
pub fn reflect_runs(start: isize, len: usize, n: usize) -> Vec<Run> {
    match n {
        0 => Vec::new(),
        1 => (0..len)
            .map(|dst| Run {
                dst,
                src: 0,
                len: 1,
                step: 1,
            })
            .collect(),
        _ => mirrored_runs(start, len, n),
    }
}

/// [`reflect_runs`] for `n >= 2`, walking the period run by run.
fn mirrored_runs(start: isize, len: usize, n: usize) -> Vec<Run> {
    let n = n as i128;
    let period = 2 * (n - 1);
    let mut runs = Vec::new();
    let mut dst = 0usize;
    while dst < len {
        let phase = (start as i128 + dst as i128).rem_euclid(period);
        // The rising half of the period, phases 0 .. n-2, reads forwards up to
        // pixel n - 1; from phase n - 1 on the signal falls back to pixel 0.
        let (src, step, available) = if phase < n - 1 {
            (phase, 1, n - phase)
        } else {
            (period - phase, -1, period - phase + 1)
        };
        let run_len = available.min((len - dst) as i128) as usize;
        runs.push(Run {
            dst,
            src: src as usize,
            len: run_len,
            step,
        });
        dst += run_len;
    }
    runs
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
    /// shape, but the outer `halo` pixels are damaged by zero padding and are
    /// never written.
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
        if let Blend::Gaussian { sigma_scale } = blend {
            if !(sigma_scale.is_finite() && sigma_scale > 0.0) {
                return Err(invalid(
                    "sigma_scale",
                    format!("{sigma_scale} must be a finite number greater than 0 (default {DEFAULT_SIGMA_SCALE})"),
                ));
            }
        }
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
mod tests {
    use super::*;

    /// SplitMix64: a tiny deterministic generator, enough for test inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `low..=high`.
        fn range(&mut self, low: usize, high: usize) -> usize {
            low + (self.next() % (high - low + 1) as u64) as usize
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.range(0, items.len() - 1)]
        }
    }

    /// Image sides that stress the geometry: tiny, smaller than any halo,
    /// primes, near and at powers of two.
    const AWKWARD_SIZES: &[usize] = &[
        1, 2, 3, 5, 7, 13, 16, 17, 31, 32, 33, 63, 97, 127, 128, 211, 300,
    ];

    /// A random (tile, halo, multiple) that a plan accepts: the output holds
    /// at least one stride, plus a little extra that is not a multiple.
    fn random_tile(rng: &mut Rng, max_halo: usize, max_strides: usize) -> (usize, usize, usize) {
        let halo = rng.range(0, max_halo);
        let multiple = rng.pick(&[1, 2, 4, 8, 16]);
        let output = multiple * rng.range(1, max_strides) + rng.range(0, multiple - 1);
        (2 * halo + output, halo, multiple)
    }

    fn random_blend(rng: &mut Rng) -> Blend {
        match rng.range(0, 2) {
            0 => Blend::gaussian(),
            1 => Blend::Gaussian { sigma_scale: 0.01 },
            _ => Blend::Constant,
        }
    }

    /// Calls `visit` with every index of a box of the given shape, row-major.
    fn for_each_index(shape: &[usize], mut visit: impl FnMut(&[usize])) {
        if shape.contains(&0) {
            return;
        }
        let mut index = vec![0; shape.len()];
        loop {
            visit(&index);
            let mut axis = shape.len();
            loop {
                if axis == 0 {
                    return;
                }
                axis -= 1;
                index[axis] += 1;
                if index[axis] < shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
    }

    fn flat(index: &[usize], shape: &[usize]) -> usize {
        index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
    }

    /// Row-major offset of `index + shift` in `shape`.
    fn flat_shifted(index: &[usize], shift: &[usize], shape: &[usize]) -> usize {
        index
            .iter()
            .zip(shift)
            .zip(shape)
            .fold(0, |acc, ((&i, &s), &n)| acc * n + i + s)
    }

    // -- numpy emulation --------------------------------------------------

    /// `numpy.pad(arange(n), (left, right), mode="reflect")`, emulated by
    /// porting numpy's algorithm literally (numpy/lib/_arraypad_impl.py:
    /// `pad` and `_set_reflect_both` with `include_edge=False`): pad areas
    /// wider than the signal are filled iteratively, each pass mirroring a
    /// chunk of the already padded array about its current edge, with chunks
    /// limited to multiples of the original period.
    fn numpy_reflect_pad(n: usize, left: usize, right: usize) -> Vec<usize> {
        let total = left + n + right;
        let mut padded: Vec<Option<usize>> = vec![None; total];
        for i in 0..n {
            padded[left + i] = Some(i);
        }
        if n == 1 && (left > 0 || right > 0) {
            // numpy: "Extending singleton dimension for 'reflect' is legacy
            // behavior", done with mode "edge".
            return vec![0; total];
        }
        let (mut left_pad, mut right_pad) = (left, right);
        while left_pad > 0 || right_pad > 0 {
            let mut old_length = total - right_pad - left_pad;
            let original_period = n;
            old_length = (old_length - 1) / (original_period - 1) * (original_period - 1) + 1;
            let edge_offset = 0;
            old_length -= 1;
            if left_pad > 0 {
                let chunk_length = old_length.min(left_pad);
                // left_slice = slice(start, stop, -1) with stop = left_pad - edge_offset.
                let stop = left_pad - edge_offset;
                let start = stop + chunk_length;
                let chunk: Vec<_> = (stop + 1..=start).rev().map(|i| padded[i]).collect();
                let area_start = left_pad - chunk_length;
                for (j, value) in chunk.into_iter().enumerate() {
                    padded[area_start + j] = value;
                }
                left_pad -= chunk_length;
            }
            if right_pad > 0 {
                let chunk_length = old_length.min(right_pad);
                // start = -right_pad + edge_offset - 2, a negative index.
                let start = total - right_pad + edge_offset - 2;
                let chunk: Vec<_> = (0..chunk_length).map(|j| padded[start - j]).collect();
                let area_start = total - right_pad;
                for (j, value) in chunk.into_iter().enumerate() {
                    padded[area_start + j] = value;
                }
                right_pad -= chunk_length;
            }
        }
        padded
            .into_iter()
            .map(|value| value.expect("numpy emulation left a hole"))
            .collect()
    }

    #[test]
    fn reflect_index_equals_numpy_reflect_padding() {
        for n in 1..12 {
            for left in [0, 1, 2, 5, 11, 23, 40, 97] {
                for right in [0, 1, 3, 10, 12, 37, 64] {
                    let padded = numpy_reflect_pad(n, left, right);
                    for (j, &expected) in padded.iter().enumerate() {
                        let i = j as isize - left as isize;
                        assert_eq!(
                            reflect_index(i, n),
                            expected,
                            "n {n} i {i} pads ({left}, {right})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reflect_index_known_values_and_extremes() {
        // numpy.pad(arange(4), 5, mode="reflect")
        let expected = [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2];
        let got: Vec<_> = (-5..9).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(got, expected);
        assert_eq!(reflect_index(-1, 10), 1);
        assert_eq!(reflect_index(10, 10), 8);
        for n in [0, 1, 2, 3, 1000, usize::MAX] {
            for i in [isize::MIN, isize::MIN + 1, -1, 0, 1, isize::MAX] {
                let r = reflect_index(i, n);
                assert!(r < n.max(1), "n {n} i {i} -> {r}");
            }
        }
        assert_eq!(reflect_index(isize::MAX, usize::MAX), isize::MAX as usize);
    }

    fn expand(runs: &[Run]) -> Vec<usize> {
        let mut out = Vec::new();
        for run in runs {
            assert_eq!(run.dst, out.len(), "runs must tile the window in order");
            assert!(run.len >= 1 && (run.step == 1 || run.step == -1), "{run:?}");
            for j in 0..run.len as isize {
                out.push((run.src as isize + j * run.step) as usize);
            }
        }
        out
    }

    #[test]
    fn reflect_runs_expand_to_reflect_index_and_are_maximal() {
        let mut rng = Rng(1);
        for _ in 0..4000 {
            let n = rng.range(0, 12);
            let start = rng.range(0, 200) as isize - 100;
            let len = rng.range(0, 80);
            let runs = reflect_runs(start, len, n);
            if n == 0 {
                assert!(runs.is_empty());
                continue;
            }
            let expected: Vec<_> = (0..len as isize)
                .map(|j| reflect_index(start + j, n))
                .collect();
            assert_eq!(expand(&runs), expected, "start {start} len {len} n {n}");
            for pair in runs.windows(2) {
                let last = pair[0].src as isize + (pair[0].len as isize - 1) * pair[0].step;
                let can_extend = pair[1].src as isize == last + pair[0].step;
                assert!(!can_extend, "runs {pair:?} could merge (n {n})");
            }
        }
    }

    #[test]
    fn reflect_runs_are_few_for_ordinary_windows() {
        // The paper's first tile: 572 wide from -92 on a 512 image is one
        // mirrored run down to pixel 0 and one forward run.
        let runs = reflect_runs(-92, 572, 512);
        assert_eq!(
            runs,
            vec![
                Run {
                    dst: 0,
                    src: 92,
                    len: 93,
                    step: -1
                },
                Run {
                    dst: 93,
                    src: 1,
                    len: 479,
                    step: 1
                }
            ]
        );
        assert!(reflect_runs(isize::MAX - 3, 10, 7).len() <= 3);
        assert!(reflect_runs(isize::MIN, 10, usize::MAX).len() == 1);
    }

    // -- size helpers ---------------------------------------------------------

    #[test]
    fn size_helpers_match_the_paper() {
        assert!(is_valid_size(572, 12, 16) && is_valid_size(188, 12, 16));
        assert!(!is_valid_size(570, 12, 16) && !is_valid_size(11, 12, 16));
        assert_eq!(smallest_valid_size(12, 16, 92), 204);
        assert_eq!(round_down_to_valid(600, 12, 16, 92), Some(588));
        assert_eq!(round_down_to_valid(572, 12, 16, 92), Some(572));
        assert_eq!(round_down_to_valid(203, 12, 16, 92), None);
        assert!(check_tile_size(&[572, 572], 12, 16, 92).is_ok());
    }

    #[test]
    fn size_helpers_match_their_definitions() {
        for offset in 0..20 {
            for multiple in 0..9 {
                for halo in 0..7 {
                    let m = multiple.max(1);
                    let usable = |s: usize| is_valid_size(s, offset, multiple) && s >= 2 * halo + m;
                    let smallest = smallest_valid_size(offset, multiple, halo);
                    assert!(usable(smallest));
                    assert!((0..smallest).all(|s| !usable(s)));
                    assert!(TilePlan::valid(&[50], &[smallest], halo, m).is_ok());
                    for size in 0..80 {
                        assert_eq!(
                            is_valid_size(size, offset, multiple),
                            size >= offset && (size - offset) % m == 0
                        );
                        let expected = (0..=size).rev().find(|&s| usable(s));
                        assert_eq!(round_down_to_valid(size, offset, multiple, halo), expected);
                        assert_eq!(
                            check_tile_size(&[size], offset, multiple, halo).is_ok(),
                            usable(size)
                        );
                    }
                }
            }
        }
        assert_eq!(
            smallest_valid_size(usize::MAX, usize::MAX, usize::MAX),
            usize::MAX
        );
        assert_eq!(round_down_to_valid(usize::MAX, 0, 0, usize::MAX), None);
    }

    #[test]
    fn check_tile_size_names_the_nearest_sizes() {
        let message = check_tile_size(&[572, 570], 12, 16, 92)
            .expect_err("570 is invalid")
            .to_string();
        assert!(
            message.contains("axis 1") && message.contains("556 or 572"),
            "{message}"
        );
        let message = check_tile_size(&[188], 12, 16, 92)
            .expect_err("188 is too small")
            .to_string();
        assert!(message.contains("smallest usable tile is 204"), "{message}");
        let message = check_tile_size(&[100], 12, 16, 92)
            .expect_err("100 is invalid")
            .to_string();
        assert!(message.contains("nearest usable: 204"), "{message}");
    }

    // -- plans: paper numbers and errors --------------------------------------

    #[test]
    fn paper_numbers() {
        let plan = TilePlan::valid(&[512, 512], &[572, 572], 92, 16).expect("paper tile");
        assert_eq!(plan.output_tile_shape(), &[388, 388]);
        assert_eq!(plan.stride(), &[384, 384]);
        assert_eq!(plan.grid_shape(), &[2, 2]);
        assert_eq!(plan.len(), 4);
        assert!(!plan.is_empty() && !plan.blends() && plan.weights().is_none());
        let last = plan.tile(3).expect("four tiles");
        assert_eq!(last.grid_index, vec![1, 1]);
        assert_eq!(last.read_start, vec![292, 292]);
        assert_eq!(last.write_start, vec![384, 384]);
        assert_eq!(last.write_shape, vec![128, 128]);
        assert_eq!(last.src_start, vec![0, 0]);
        let first = plan.tile(0).expect("four tiles");
        assert_eq!(
            (first.read_start, first.write_shape),
            (vec![-92, -92], vec![384, 384])
        );
        // 388 x 388 fits in one tile.
        assert_eq!(
            TilePlan::valid(&[388, 300], &[572, 572], 92, 16)
                .expect("fits")
                .len(),
            1
        );
        assert_eq!(
            TilePlan::valid(&[389, 1], &[572, 572], 92, 16)
                .expect("fits")
                .grid_shape(),
            &[2, 1]
        );
    }

    fn message_of(result: Result<TilePlan>) -> String {
        result.expect_err("must be rejected").to_string()
    }

    #[test]
    fn invalid_arguments_are_explained() {
        assert!(message_of(TilePlan::valid(&[], &[], 0, 1)).contains("no spatial axes"));
        assert!(message_of(TilePlan::valid(&[10, 10], &[20], 0, 1)).contains("1 axes"));
        assert!(message_of(TilePlan::valid(&[10, 0], &[20, 20], 0, 1))
            .contains("empty along spatial axis 1"));
        assert!(message_of(TilePlan::valid(&[10], &[20], 0, 0)).contains("at least 1"));
        let message = message_of(TilePlan::valid(&[512, 512], &[572, 188], 92, 16));
        assert!(
            message.contains("axis 1") && message.contains("smallest usable tile is 200"),
            "{message}"
        );
        assert!(message_of(TilePlan::valid(&[10], &[184], 92, 16))
            .contains("smallest usable tile is 200"));
        assert!(message_of(TilePlan::valid(&[10], &[100], 92, 16)).contains("too small"));
        assert!(message_of(TilePlan::valid(&[10], &[100], usize::MAX, 16)).contains("invalid halo"));
        assert!(
            message_of(TilePlan::valid(&[10], &[100], 1, usize::MAX)).contains("invalid multiple")
        );
        assert!(message_of(TilePlan::valid(&[usize::MAX], &[100], 1, 16)).contains("beyond"));
        assert!(message_of(TilePlan::valid(&[10], &[MAX_TILE_SIDE + 1], 1, 16)).contains("beyond"));
        for sigma_scale in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let result = TilePlan::same(&[10], &[32], 2, 4, Blend::Gaussian { sigma_scale });
            assert!(message_of(result).contains("sigma_scale"));
        }
        let message = message_of(TilePlan::valid(&[MAX_EXTENT; 3], &[1, 1, 1], 0, 1));
        assert!(message.contains("more tiles"), "{message}");
    }

    #[test]
    fn arbitrary_arguments_never_panic() {
        let mut rng = Rng(7);
        let values = [
            0,
            1,
            2,
            3,
            16,
            92,
            572,
            MAX_TILE_SIDE,
            MAX_TILE_SIDE + 1,
            MAX_EXTENT,
            MAX_EXTENT + 1,
            usize::MAX,
        ];
        for _ in 0..3000 {
            let rank = rng.range(0, 3);
            let image: Vec<_> = (0..rank).map(|_| rng.pick(&values)).collect();
            let tile: Vec<_> = (0..rng.range(0, 3)).map(|_| rng.pick(&values)).collect();
            let (halo, multiple) = (rng.pick(&values), rng.pick(&values));
            let blend = random_blend(&mut rng);
            for plan in [
                TilePlan::valid(&image, &tile, halo, multiple),
                TilePlan::same(&image, &tile, halo, multiple, blend),
            ]
            .into_iter()
            .flatten()
            {
                // Visiting the corners of the grid exercises every formula.
                let _ = plan.tile(0);
                let _ = plan.tile(plan.len() - 1);
                let _ = plan.tile(usize::MAX);
            }
            let _ = check_tile_size(&tile, halo, multiple, rng.pick(&values));
            let _ = round_down_to_valid(rng.pick(&values), halo, multiple, rng.pick(&values));
        }
    }

    // -- plans: properties ----------------------------------------------------

    /// Random plan arguments: rank 2 or 3, awkward or random image sides
    /// (3D kept small), tiles that may be far larger than the image.
    fn random_case(rng: &mut Rng) -> (Vec<usize>, Vec<usize>, usize, usize) {
        let rank = rng.range(2, 3);
        let (max_side, max_halo, max_strides) = if rank == 2 { (300, 12, 6) } else { (24, 4, 3) };
        let image: Vec<_> = (0..rank)
            .map(|_| {
                if rng.range(0, 1) == 0 {
                    rng.pick(AWKWARD_SIZES).min(max_side)
                } else {
                    rng.range(1, max_side)
                }
            })
            .collect();
        // Keep 2D pixel counts modest so the per-pixel checks stay fast.
        let image = if rank == 2 && image[0] * image[1] > 10_000 {
            vec![image[0], image[1].min(33)]
        } else {
            image
        };
        let (_, halo, multiple) = random_tile(rng, max_halo, max_strides);
        let tile = (0..rank)
            .map(|_| 2 * halo + multiple * rng.range(1, max_strides) + rng.range(0, multiple - 1))
            .collect();
        (image, tile, halo, multiple)
    }

    /// Checks shared by every plan: shapes, pooling grid, reads in range,
    /// writes inside the image and inside the tile's trusted output, and the
    /// mapping from tile output to image.
    fn check_common(plan: &TilePlan, tile_in: &[usize], halo: usize, multiple: usize) {
        let image = plan.image_shape();
        let out = plan.output_tile_shape();
        let same = plan.mode() != TileMode::Valid;
        let src_offset = if same { halo } else { 0 };
        assert_eq!(plan.tiles().len(), plan.len());
        assert_eq!(plan.len(), plan.grid_shape().iter().product::<usize>());
        for (position, tile) in plan.tiles().enumerate() {
            assert_eq!(tile.index, position);
            assert_eq!(tile.read_shape, tile_in, "every tile has the same shape");
            for axis in 0..image.len() {
                let (n, stride) = (image[axis], plan.stride()[axis]);
                assert!(stride > 0 && stride % multiple == 0);
                let origin = tile.read_start[axis] + halo as isize;
                assert_eq!(origin, (tile.grid_index[axis] * stride) as isize);
                assert_eq!(
                    origin % multiple as isize,
                    0,
                    "read window off the pooling grid"
                );
                for j in 0..tile_in[axis] as isize {
                    assert!(reflect_index(tile.read_start[axis] + j, n) < n);
                }
                assert!(tile.write_shape[axis] >= 1);
                assert!(
                    tile.write_start[axis] + tile.write_shape[axis] <= n,
                    "write past the image"
                );
                // Image position p comes from tile output position p - k*S (+ halo for same).
                assert_eq!(
                    tile.src_start[axis] as isize,
                    tile.write_start[axis] as isize - origin + src_offset as isize
                );
                assert!(tile.src_start[axis] >= src_offset);
                assert!(
                    tile.src_start[axis] + tile.write_shape[axis] <= out[axis] - src_offset,
                    "write from the damaged border"
                );
            }
        }
        for axis in 0..image.len() {
            let (count, stride, kept) = (
                plan.grid_shape()[axis],
                plan.stride()[axis],
                tile_in[axis] - 2 * halo,
            );
            assert!(
                (count - 1) * stride + kept >= image[axis],
                "axis not covered"
            );
            assert!(
                count == 1 || (count - 2) * stride + kept < image[axis],
                "more tiles than needed"
            );
        }
    }

    /// Per-pixel write counts of a plan.
    fn write_counts(plan: &TilePlan) -> Vec<u32> {
        let image = plan.image_shape();
        let mut counts = vec![0u32; image.iter().product()];
        for tile in plan.tiles() {
            for_each_index(&tile.write_shape, |offset| {
                counts[flat_shifted(offset, &tile.write_start, image)] += 1;
            });
        }
        counts
    }

    #[test]
    fn crop_plans_write_every_pixel_exactly_once() {
        let mut rng = Rng(42);
        for case in 0..400 {
            let (image, tile_in, halo, multiple) = random_case(&mut rng);
            let plan = if case % 2 == 0 {
                TilePlan::valid(&image, &tile_in, halo, multiple)
            } else {
                TilePlan::same(&image, &tile_in, halo, multiple, Blend::Crop)
            }
            .expect("random case is valid");
            check_common(&plan, &tile_in, halo, multiple);
            assert!(
                write_counts(&plan).iter().all(|&count| count == 1),
                "{image:?} {tile_in:?} h {halo} m {multiple}"
            );
        }
    }

    #[test]
    fn same_crop_is_the_valid_plan_shifted_by_the_halo() {
        let mut rng = Rng(3);
        for _ in 0..200 {
            let (image, tile_in, halo, multiple) = random_case(&mut rng);
            let valid = TilePlan::valid(&image, &tile_in, halo, multiple).expect("valid case");
            let same =
                TilePlan::same(&image, &tile_in, halo, multiple, Blend::Crop).expect("valid case");
            assert_eq!(same.output_tile_shape(), tile_in.as_slice());
            assert_eq!(valid.len(), same.len());
            for (a, b) in valid.tiles().zip(same.tiles()) {
                assert_eq!(
                    (&a.read_start, &a.write_start, &a.write_shape),
                    (&b.read_start, &b.write_start, &b.write_shape)
                );
                assert!(a
                    .src_start
                    .iter()
                    .zip(&b.src_start)
                    .all(|(x, y)| x + halo == *y));
            }
        }
    }

    #[test]
    fn blend_plans_cover_every_pixel_with_positive_weight() {
        let mut rng = Rng(99);
        for _ in 0..250 {
            let (image, tile_in, halo, multiple) = random_case(&mut rng);
            let blend = random_blend(&mut rng);
            let plan = TilePlan::same(&image, &tile_in, halo, multiple, blend)
                .expect("random case is valid");
            check_common(&plan, &tile_in, halo, multiple);
            let weights = plan.weights().expect("blend plans have weights");
            let mut sums = vec![0.0f32; image.iter().product()];
            for tile in plan.tiles() {
                for_each_index(&tile.write_shape, |offset| {
                    let mut weight = 1.0f32;
                    for axis in 0..offset.len() {
                        weight *= weights[axis][tile.src_start[axis] + offset[axis]];
                    }
                    assert!(weight > 0.0 && weight.is_normal());
                    sums[flat_shifted(offset, &tile.write_start, &image)] += weight;
                });
                // A tile writes its whole trusted centre, clipped to the image.
                for axis in 0..image.len() {
                    assert_eq!(tile.src_start[axis], halo);
                    let kept = tile_in[axis] - 2 * halo;
                    assert_eq!(
                        tile.write_shape[axis],
                        kept.min(image[axis] - tile.write_start[axis])
                    );
                }
            }
            assert!(
                sums.iter().all(|&sum| sum > 0.0),
                "{image:?} {tile_in:?} h {halo} m {multiple}"
            );
            for (axis, w) in weights.iter().enumerate() {
                assert_eq!(w.len(), tile_in[axis]);
                assert!(w[..halo]
                    .iter()
                    .chain(&w[tile_in[axis] - halo..])
                    .all(|&x| x == 0.0));
            }
        }
    }

    #[test]
    fn blend_stride_is_half_the_window_when_possible() {
        // Centres 96 and 40: halves 48 and 20 -> strides 48 and 16.
        let plan =
            TilePlan::same(&[1000, 1000], &[128, 72], 16, 16, Blend::gaussian()).expect("valid");
        assert_eq!(plan.stride(), &[48, 16]);
        // Centre 8 holds no stride of 16 at all.
        assert!(message_of(TilePlan::same(
            &[10, 10],
            &[128, 40],
            16,
            16,
            Blend::Constant
        ))
        .contains("axis 1"));
        let plan = TilePlan::same(&[100], &[46], 16, 8, Blend::Constant).expect("valid");
        assert_eq!(
            plan.stride(),
            &[8],
            "centre 14: half holds no multiple of 8, whole does"
        );
        // Centre 80, stride 32: pixels at least a centre away from the image
        // edges are covered by at least two tiles per axis.
        let plan = TilePlan::same(&[200, 200], &[96, 96], 8, 16, Blend::Constant).expect("valid");
        assert_eq!(plan.stride(), &[32, 32]);
        let counts = write_counts(&plan);
        for_each_index(&[200, 200], |p| {
            if p.iter().all(|&c| (80..120).contains(&c)) {
                assert!(counts[flat(p, &[200, 200])] >= 4, "{p:?}");
            }
        });
    }

    #[test]
    fn gaussian_weights_peak_in_the_centre() {
        let plan = TilePlan::same(&[64], &[48], 8, 4, Blend::gaussian()).expect("valid");
        let w = &plan.weights().expect("gaussian")[0];
        // Centre 32 pixels: sigma 4; edges 15.5 / 4 sigma away.
        assert!((w[8 + 15] - 1.0).abs() < 0.01 && (w[8 + 16] - 1.0).abs() < 0.01);
        let edge = (-0.5f64 * (15.5f64 / 4.0).powi(2)).exp() as f32;
        assert!((w[8] - edge).abs() < 1e-6 && (w[8 + 31] - edge).abs() < 1e-6);
        assert!(w[8..40].windows(2).take(15).all(|p| p[0] < p[1]));
    }

    // -- plans reproduce a whole-image computation ----------------------------

    /// A toy valid "network": each output pixel is the sum of the
    /// `2 * halo + 1` inputs around it. Its receptive field is exactly the
    /// halo, like a real valid U-Net's.
    fn valid_box_sum(input: &[i64], halo: usize) -> Vec<i64> {
        input
            .windows(2 * halo + 1)
            .map(|w| w.iter().sum())
            .collect()
    }

    /// The same toy as a same-padded network: zeros outside the input, so
    /// the outer `halo` outputs are wrong, as in a real same network.
    fn same_box_sum(input: &[i64], halo: usize) -> Vec<i64> {
        let n = input.len() as isize;
        (0..n)
            .map(|q| {
                (q - halo as isize..=q + halo as isize)
                    .filter(|&j| (0..n).contains(&j))
                    .map(|j| input[j as usize])
                    .sum()
            })
            .collect()
    }

    /// Gathers a tile's input window with the plan's mirrored runs.
    fn gather(signal: &[i64], start: isize, len: usize) -> Vec<i64> {
        let mut window = vec![0; len];
        for run in reflect_runs(start, len, signal.len()) {
            for j in 0..run.len {
                window[run.dst + j] = signal[(run.src as isize + j as isize * run.step) as usize];
            }
        }
        window
    }

    #[test]
    fn tiled_toy_network_equals_whole_signal_forward() {
        let mut rng = Rng(5);
        for case in 0..1000 {
            let n = if case % 3 == 0 {
                rng.pick(AWKWARD_SIZES)
            } else {
                rng.range(1, 400)
            };
            let signal: Vec<i64> = (0..n).map(|_| rng.range(0, 1000) as i64).collect();
            let (tile, halo, multiple) = random_tile(&mut rng, 20, 8);
            // Whole-signal forward of the mirror-padded signal.
            let padded: Vec<i64> = (-(halo as isize)..(n + halo) as isize)
                .map(|i| signal[reflect_index(i, n)])
                .collect();
            let whole = valid_box_sum(&padded, halo);
            let blend = match case % 4 {
                0 => None,
                1 => Some(Blend::Crop),
                2 => Some(Blend::gaussian()),
                _ => Some(Blend::Constant),
            };
            let plan = match blend {
                None => TilePlan::valid(&[n], &[tile], halo, multiple),
                Some(blend) => TilePlan::same(&[n], &[tile], halo, multiple, blend),
            }
            .expect("random tile is valid");
            let mut sum = vec![0.0f64; n];
            let mut weight_sum = vec![0.0f64; n];
            for t in plan.tiles() {
                let input = gather(&signal, t.read_start[0], t.read_shape[0]);
                let output = if blend.is_none() {
                    valid_box_sum(&input, halo)
                } else {
                    same_box_sum(&input, halo)
                };
                assert_eq!(output.len(), plan.output_tile_shape()[0]);
                for j in 0..t.write_shape[0] {
                    let w = plan
                        .weights()
                        .map_or(1.0, |w| f64::from(w[0][t.src_start[0] + j]));
                    sum[t.write_start[0] + j] += w * output[t.src_start[0] + j] as f64;
                    weight_sum[t.write_start[0] + j] += w;
                }
            }
            for p in 0..n {
                let tiled = sum[p] / weight_sum[p];
                let tolerance = if plan.blends() {
                    1e-9 * whole[p].abs().max(1) as f64
                } else {
                    0.0
                };
                assert!(
                    (tiled - whole[p] as f64).abs() <= tolerance,
                    "n {n} tile {tile} h {halo} m {multiple} p {p}"
                );
            }
        }
    }

    /// A 2D toy network on a row-major `shape` array: box sums of side
    /// `2 * halo + 1`, valid (output smaller by the halo) or same (zeros
    /// outside the input, output the input's shape).
    fn box_sum_2d(
        input: &[i64],
        shape: [usize; 2],
        halo: usize,
        valid: bool,
    ) -> (Vec<i64>, [usize; 2]) {
        let h = halo as isize;
        let (out_shape, shift) = if valid {
            ([shape[0] - 2 * halo, shape[1] - 2 * halo], h)
        } else {
            (shape, 0)
        };
        let mut output = Vec::with_capacity(out_shape[0] * out_shape[1]);
        for y in 0..out_shape[0] as isize {
            for x in 0..out_shape[1] as isize {
                let (cy, cx) = (y + shift, x + shift);
                let mut total = 0;
                for yy in (cy - h..=cy + h).filter(|&v| (0..shape[0] as isize).contains(&v)) {
                    for xx in (cx - h..=cx + h).filter(|&v| (0..shape[1] as isize).contains(&v)) {
                        total += input[yy as usize * shape[1] + xx as usize];
                    }
                }
                output.push(total);
            }
        }
        (output, out_shape)
    }

    /// Gathers a 2D tile window with mirrored runs along both axes.
    fn gather_2d(pixels: &[i64], image: [usize; 2], start: &[isize], shape: &[usize]) -> Vec<i64> {
        let expand_axis = |axis: usize| -> Vec<usize> {
            reflect_runs(start[axis], shape[axis], image[axis])
                .iter()
                .flat_map(|run| {
                    (0..run.len as isize).map(move |j| (run.src as isize + j * run.step) as usize)
                })
                .collect()
        };
        let (rows, cols) = (expand_axis(0), expand_axis(1));
        rows.iter()
            .flat_map(|&y| cols.iter().map(move |&x| pixels[y * image[1] + x]))
            .collect()
    }

    #[test]
    fn tiled_toy_network_equals_whole_image_forward_in_2d() {
        let mut rng = Rng(11);
        for case in 0..300 {
            let image = [rng.range(1, 30), rng.range(1, 30)];
            let pixels: Vec<i64> = (0..image[0] * image[1])
                .map(|_| rng.range(0, 100) as i64)
                .collect();
            let halo = rng.range(0, 3);
            let multiple = rng.pick(&[1, 2, 4]);
            let tile_in = [
                2 * halo + multiple * rng.range(1, 4) + 1,
                2 * halo + multiple * rng.range(1, 4),
            ];
            // Whole-image forward of the mirror-padded image.
            let padded_shape = [image[0] + 2 * halo, image[1] + 2 * halo];
            let start = [-(halo as isize), -(halo as isize)];
            let padded = gather_2d(&pixels, image, &start, &padded_shape);
            let (whole, _) = box_sum_2d(&padded, padded_shape, halo, true);
            let valid = case % 2 == 0;
            let plan = if valid {
                TilePlan::valid(&image, &tile_in, halo, multiple)
            } else {
                TilePlan::same(&image, &tile_in, halo, multiple, Blend::Crop)
            }
            .expect("valid case");
            let mut stitched = vec![None; pixels.len()];
            for t in plan.tiles() {
                let input = gather_2d(&pixels, image, &t.read_start, &t.read_shape);
                let (output, out_shape) = box_sum_2d(&input, tile_in, halo, valid);
                assert_eq!(out_shape.as_slice(), plan.output_tile_shape());
                for_each_index(&t.write_shape, |offset| {
                    let src =
                        (t.src_start[0] + offset[0]) * out_shape[1] + t.src_start[1] + offset[1];
                    let dst =
                        (t.write_start[0] + offset[0]) * image[1] + t.write_start[1] + offset[1];
                    assert!(
                        stitched[dst].replace(output[src]).is_none(),
                        "pixel written twice"
                    );
                });
            }
            let stitched: Vec<i64> = stitched
                .into_iter()
                .map(|v| v.expect("pixel never written"))
                .collect();
            assert_eq!(
                stitched, whole,
                "image {image:?} tile {tile_in:?} halo {halo} multiple {multiple}"
            );
        }
    }
}
