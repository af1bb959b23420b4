//! Cutting tile windows out of the borrowed input: mirror at the borders,
//! convert to `f32` and normalise, all in one pass per tile.

use std::mem::MaybeUninit;

use ndarray::ArrayViewD;

use crate::error::{Error, Result};
use crate::geometry::{advance_index, reflect_index, unravel_index, Tile};
use crate::normalize::Affine;
use crate::pixel::Pixel;

/// Reads tiles of an input laid out `(C, spatial...)` into channels-last
/// buffers: element `(position, channel)` of a tile lands at
/// `position * C + channel`, with positions in row-major order over the tile.
///
/// The input may be a piece of a larger image (a [`crate::Window`]): tile
/// coordinates are then whole-image coordinates, mirrored at the whole
/// image's borders and read `origin` pixels into the piece.
pub(crate) struct Gatherer<'a, T: Pixel> {
    input: ArrayViewD<'a, T>,
    affine: Affine,
    channels: usize,
    origin: Vec<usize>,
    image: Vec<usize>,
    check_finite: bool,
    /// Threads that gather one tile (rows split between them).
    workers: usize,
    /// Whether pixels are normalised in `f64` (see [`Widened`]).
    widened: bool,
}

impl<'a, T: Pixel> Gatherer<'a, T> {
    /// A gatherer over a whole image.
    #[cfg(test)]
    pub(crate) fn new(input: ArrayViewD<'a, T>, affine: Affine) -> Self {
        let image = input.shape()[1..].to_vec();
        Self::piece(input, affine, vec![0; image.len()], image)
    }

    /// A gatherer over the piece of an image of spatial shape `image` whose
    /// first pixel sits at `origin`.
    pub(crate) fn piece(
        input: ArrayViewD<'a, T>,
        affine: Affine,
        origin: Vec<usize>,
        image: Vec<usize>,
    ) -> Self {
        let channels = input.shape()[0];
        Self {
            input,
            affine,
            channels,
            origin,
            image,
            check_finite: true,
            workers: 1,
            widened: T::RAW.is_some_and(|raw| !raw.keeps_finite(affine)),
        }
    }

    /// Gathers each large tile with up to `workers` threads.
    pub(crate) fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Whether a tile with NaN or infinite network input is an error (the
    /// default) or is passed on (see [`crate::NonFinite`]).
    pub(crate) fn check_finite(mut self, check: bool) -> Self {
        self.check_finite = check;
        self
    }

    /// Number of `f32` values one tile of `shape` occupies.
    pub(crate) fn tile_len(&self, shape: &[usize]) -> usize {
        shape.iter().product::<usize>() * self.channels
    }

    /// Fills `dst` (of length [`Self::tile_len`]) with the tile's window:
    /// every element is written (so `dst` may start uninitialized).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the tile reads a pixel the input does
    /// not hold (a window without enough context; checked beforehand by
    /// [`crate::Window::check_context`], so this is a second line).
    pub(crate) fn gather(&self, tile: &Tile, dst: &mut [MaybeUninit<f32>]) -> Result<()> {
        if self.widened {
            self.gather_with(tile, dst, Widened(self.affine))
        } else {
            self.gather_with(tile, dst, Normalized(self.affine))
        }
    }

    /// Fills `dst` as [`Self::gather`] does, with the pixels as they are
    /// (mirrored, not converted), to be normalised on the device by
    /// [`Self::affine`]; NaN and infinity are refused here all the same.
    pub(crate) fn gather_raw(&self, tile: &Tile, dst: &mut [MaybeUninit<T>]) -> Result<()> {
        self.gather_with(tile, dst, Raw)
    }

    /// The map from pixel values to network input.
    pub(crate) fn affine(&self) -> Affine {
        self.affine
    }

    fn gather_with<S: Store<T>>(
        &self,
        tile: &Tile,
        dst: &mut [MaybeUninit<S::Out>],
        store: S,
    ) -> Result<()> {
        let shape = &tile.read_shape;
        let local = &self.input.shape()[1..];
        let strides = self.input.strides();
        // Element offsets of every mirrored coordinate, per axis: the reads
        // below are then sums of table entries.
        let mut offsets: Vec<Vec<isize>> = Vec::with_capacity(shape.len());
        for a in 0..shape.len() {
            let mut table = Vec::with_capacity(shape[a]);
            for j in 0..shape[a] {
                let pixel = reflect_index(tile.read_start[a] + j as isize, self.image[a]);
                match pixel.checked_sub(self.origin[a]).filter(|&i| i < local[a]) {
                    Some(i) => table.push(i as isize * strides[a + 1]),
                    None => {
                        return Err(Error::InvalidArgument {
                            argument: "window",
                            message: format!(
                                "a tile reads pixel {pixel} of axis {a}, outside the input's pixels {}..{}",
                                self.origin[a],
                                self.origin[a] + local[a]
                            ),
                        })
                    }
                }
            }
            offsets.push(table);
        }
        let channel_offsets: Vec<isize> = (0..self.channels)
            .map(|c| c as isize * strides[0])
            .collect();
        let Some((last, outer)) = offsets.split_last() else {
            return Ok(());
        };
        let tables = Tables {
            runs: unit_runs(last, strides[strides.len() - 1]),
            last,
            outer,
            outer_sizes: outer.iter().map(Vec::len).collect(),
            channel_offsets,
        };
        let row_len = last.len() * self.channels;
        let rows = dst.len() / row_len.max(1);
        let workers = self
            .workers
            .min(rows * last.len() / MIN_PIXELS_PER_WORKER)
            .max(1);
        let finite = if workers == 1 {
            self.gather_rows(&tables, 0, dst, store)
        } else {
            // Whole rows per worker, the last one takes the remainder; this
            // thread gathers the first part itself.
            let per_worker = rows.div_ceil(workers) * row_len;
            std::thread::scope(|scope| -> Result<bool> {
                let mut parts = dst.chunks_mut(per_worker).enumerate();
                let (_, first) = parts.next().unwrap_or((0, &mut []));
                let mut handles = Vec::new();
                for (k, part) in parts {
                    let tables = &tables;
                    let first_row = k * per_worker / row_len;
                    let handle = std::thread::Builder::new()
                        .name("unet-rt-gather".to_owned())
                        .spawn_scoped(scope, move || {
                            self.gather_rows(tables, first_row, part, store)
                        })
                        .map_err(|e| {
                            Error::Internal(format!("cannot start a gathering thread: {e}"))
                        })?;
                    handles.push(handle);
                }
                let mut finite = true;
                finite &= self.gather_rows(&tables, 0, first, store);
                for handle in handles {
                    finite &= handle
                        .join()
                        .map_err(|_| Error::Internal("a gathering thread panicked".to_owned()))?;
                }
                Ok(finite)
            })?
        };
        if self.check_finite && !finite {
            return Err(Error::InvalidArgument {
                argument: "image",
                message: format!(
                    "holds NaN or infinite values (in the pixels tile {} reads, from {:?} over {:?}); \
                     replace them (e.g. numpy.nan_to_num), or pass nonfinite=\"propagate\" to let them through",
                    tile.index, tile.read_start, tile.read_shape
                ),
            });
        }
        Ok(())
    }

    /// Gathers the tile rows (lines along the last axis) from `first_row`
    /// on into `dst`, which holds whole rows; returns whether every value
    /// came out finite.
    fn gather_rows<S: Store<T>>(
        &self,
        tables: &Tables<'_>,
        first_row: usize,
        dst: &mut [MaybeUninit<S::Out>],
        store: S,
    ) -> bool {
        let Tables {
            last,
            outer,
            outer_sizes,
            runs,
            channel_offsets,
        } = tables;
        let base = self.input.as_ptr();
        let channels = self.channels;
        let row_len = last.len() * channels;
        let mut index = unravel_index(first_row, outer_sizes);
        let mut finite = true;
        for row in dst.chunks_exact_mut(row_len.max(1)) {
            let row_offset: isize = outer.iter().zip(&index).map(|(table, &i)| table[i]).sum();
            for run in runs {
                let pixels = &mut row[run.start * channels..run.end * channels];
                if run.contiguous {
                    // The run's pixels are consecutive in memory, channel by
                    // channel: plain slices, which the compiler vectorizes.
                    for (c, &channel) in channel_offsets.iter().enumerate() {
                        // SAFETY: the run's table entries are `i * stride`,
                        // `(i + 1) * stride`, ... for indices `i..i + len`
                        // checked in `gather` to lie in their axis of the
                        // view, with a stride of one element; the outer
                        // offsets and the channel address the same view. So
                        // the `len` elements from the first are all elements
                        // of the view, which borrows them, immutably, for `'a`.
                        let src = unsafe {
                            std::slice::from_raw_parts(
                                base.offset(row_offset + last[run.start] + channel),
                                run.end - run.start,
                            )
                        };
                        finite &= convert(src, pixels, c, channels, store);
                    }
                    continue;
                }
                for (pixel, &x) in pixels.chunks_exact_mut(channels).zip(&last[run.range()]) {
                    for (value, &c) in pixel.iter_mut().zip(channel_offsets) {
                        // SAFETY: every table entry is `i * stride` for an
                        // index `i` checked in `gather` to lie in `0..n` of
                        // its axis of the view, and the channel index is below
                        // the channel count, so the offset addresses an
                        // element of the view, which borrows the memory for `'a`.
                        let v = unsafe { *base.offset(row_offset + x + c) };
                        let out = store.store(v);
                        finite &= S::finite(v, out);
                        value.write(out);
                    }
                }
            }
            advance_index(&mut index, outer_sizes);
        }
        finite
    }
}

/// Where a tile's values come from: the element offsets of its mirrored
/// coordinates per axis (`outer` axes, of `outer_sizes` entries, and the
/// `last` one split in `runs`) and of each channel.
struct Tables<'t> {
    last: &'t [isize],
    outer: &'t [Vec<isize>],
    outer_sizes: Vec<usize>,
    runs: Vec<Run>,
    channel_offsets: Vec<isize>,
}

/// Below this many pixels per worker a tile is gathered by one thread:
/// starting a thread costs about as much as converting that many pixels.
const MIN_PIXELS_PER_WORKER: usize = 1 << 16;

/// A stretch of a tile row: pixels `start..end` of the row, `contiguous`
/// when they are consecutive elements of the input (an interior stretch of
/// a row stored with unit stride) rather than mirrored or strided.
#[derive(Debug, PartialEq)]
struct Run {
    start: usize,
    end: usize,
    contiguous: bool,
}

impl Run {
    fn range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// Splits a row's element offsets into [`Run`]s: the longest stretches of
/// consecutive elements (at least [`MIN_RUN`] long), and what lies between.
fn unit_runs(offsets: &[isize], stride: isize) -> Vec<Run> {
    const MIN_RUN: usize = 8;
    let mut runs: Vec<Run> = Vec::new();
    let mut push = |start: usize, end: usize, contiguous: bool| match runs.last_mut() {
        Some(last) if !last.contiguous && !contiguous => last.end = end,
        _ => runs.push(Run {
            start,
            end,
            contiguous,
        }),
    };
    let mut start = 0;
    while start < offsets.len() {
        let mut end = start + 1;
        while stride == 1 && end < offsets.len() && offsets[end] == offsets[end - 1] + 1 {
            end += 1;
        }
        push(start, end, stride == 1 && end - start >= MIN_RUN);
        start = end;
    }
    runs
}

/// What a gathered pixel becomes in the tile buffer.
trait Store<T: Pixel>: Copy + Send + Sync {
    type Out: Copy + Send;
    fn store(self, x: T) -> Self::Out;
    /// Whether the pixel `x`, stored as `out`, is usable network input.
    fn finite(x: T, out: Self::Out) -> bool;
}

/// Network input made on the host: `f32`, normalised.
#[derive(Clone, Copy)]
struct Normalized(Affine);

impl<T: Pixel> Store<T> for Normalized {
    type Out = f32;
    #[inline]
    fn store(self, x: T) -> f32 {
        x.normalized(self.0)
    }
    #[inline]
    fn finite(_: T, out: f32) -> bool {
        out.is_finite()
    }
}

/// Network input made on the host in `f64`, for 8- and 16-bit pixels whose
/// map sends the type's extremes beyond `f32` (a caller's `input_range` of
/// 1e-34 on `u16`): in `f32` they became infinite and the image was refused
/// as holding NaN or infinite values; here they saturate, as `f64` pixels do
/// (see [`Affine::apply_f64`]). Chosen per image, so that the common map
/// keeps its branch-free `f32` loop.
#[derive(Clone, Copy)]
struct Widened(Affine);

impl<T: Pixel> Store<T> for Widened {
    type Out = f32;
    #[inline]
    fn store(self, x: T) -> f32 {
        self.0.apply_f64(x.to_f64())
    }
    #[inline]
    fn finite(_: T, out: f32) -> bool {
        out.is_finite()
    }
}

/// Pixels as they are, normalised later on the device (only where the map
/// keeps every finite value finite, see [`crate::Conversion`]).
#[derive(Clone, Copy)]
struct Raw;

impl<T: Pixel> Store<T> for Raw {
    type Out = T;
    #[inline]
    fn store(self, x: T) -> T {
        x
    }
    #[inline]
    fn finite(x: T, _: T) -> bool {
        x.is_finite()
    }
}

/// Stores `src` into channel `channel` of the channels-last `dst`;
/// returns whether every value is usable (see [`Store::finite`]).
#[inline]
fn convert<T: Pixel, S: Store<T>>(
    src: &[T],
    dst: &mut [MaybeUninit<S::Out>],
    channel: usize,
    channels: usize,
    store: S,
) -> bool {
    // A fold of `&`, no early exit: the loops stay branch-free and vectorize.
    let mut finite = true;
    if channels == 1 {
        for (d, &s) in dst.iter_mut().zip(src) {
            let v = store.store(s);
            finite &= S::finite(s, v);
            d.write(v);
        }
        return finite;
    }
    for (d, &s) in dst[channel..].iter_mut().step_by(channels).zip(src) {
        let v = store.store(s);
        finite &= S::finite(s, v);
        d.write(v);
    }
    finite
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T: Pixel> Gatherer<'_, T> {
        /// `gather` into initialized values, as the tests hold them.
        fn gather_floats(&self, tile: &Tile, dst: &mut [f32]) -> Result<()> {
            let mut uninit = vec![MaybeUninit::new(f32::NAN); dst.len()];
            let result = self.gather(tile, &mut uninit);
            for (d, u) in dst.iter_mut().zip(&uninit) {
                // SAFETY: every element was initialized (with NaN) above.
                *d = unsafe { u.assume_init() };
            }
            result
        }
    }
    use crate::geometry::TilePlan;
    use ndarray::{Array3, ArrayD, IxDyn};

    #[test]
    fn gathers_mirrored_channels_last_windows_from_strided_views() {
        // Two channels, 5x7 image; view it transposed to get odd strides.
        let data = Array3::from_shape_fn((2, 7, 5), |(c, x, y)| (c * 100 + y * 10 + x) as u16);
        let view = data.view().permuted_axes([0, 2, 1]).into_dyn(); // (C, y, x) = (2, 5, 7)
        let plan = TilePlan::valid(&[5, 7], &[12, 12], 4, 4).unwrap();
        let g = Gatherer::new(view.clone(), Affine::IDENTITY);
        let tile = plan.tile(0).unwrap();
        let mut buf = vec![0f32; g.tile_len(&tile.read_shape)];
        g.gather_floats(&tile, &mut buf).unwrap();
        let padded = ArrayD::from_shape_fn(IxDyn(&[12, 12, 2]), |i| {
            let y = reflect_index(tile.read_start[0] + i[0] as isize, 5);
            let x = reflect_index(tile.read_start[1] + i[1] as isize, 7);
            f32::from(view[[i[2], y, x]])
        });
        assert_eq!(buf, padded.as_slice().unwrap());
    }

    #[test]
    fn runs_split_rows_into_consecutive_stretches_and_the_rest() {
        let run = |start, end, contiguous| Run {
            start,
            end,
            contiguous,
        };
        // Mirrored 3 pixels, 10 consecutive, mirrored 2.
        let offsets: Vec<isize> = [3, 2, 1].into_iter().chain(0..10).chain([8, 7]).collect();
        assert_eq!(
            unit_runs(&offsets, 1),
            vec![run(0, 3, false), run(3, 13, true), run(13, 15, false)]
        );
        // Strided rows and short stretches are never contiguous.
        let strided: Vec<isize> = (0..20).map(|i| i * 5).collect();
        assert_eq!(unit_runs(&strided, 5), vec![run(0, 20, false)]);
        assert_eq!(unit_runs(&[0, 1, 2, 3], 1), vec![run(0, 4, false)]);
        assert_eq!(unit_runs(&[], 1), vec![]);
    }

    /// The gathered tile against a reference built pixel by pixel.
    fn check_against_reference<T: Pixel + From<u8>>(channels: usize) {
        let (h, w) = (37, 53);
        let data = ndarray::Array3::from_shape_fn((channels, h, w), |(c, y, x)| {
            T::from(((c * 31 + y * 7 + x * 3) % 251) as u8)
        });
        let affine = Affine::new(0.25, -3.0);
        let plan = TilePlan::valid(&[h, w], &[28, 28], 6, 4).unwrap();
        let g = Gatherer::new(data.view().into_dyn(), affine);
        for tile in plan.tiles() {
            let mut buf = vec![0f32; g.tile_len(&tile.read_shape)];
            g.gather_floats(&tile, &mut buf).unwrap();
            let want = ArrayD::from_shape_fn(IxDyn(&[28, 28, channels]), |i| {
                let y = reflect_index(tile.read_start[0] + i[0] as isize, h);
                let x = reflect_index(tile.read_start[1] + i[1] as isize, w);
                data[[i[2], y, x]].normalized(affine)
            });
            assert_eq!(buf, want.as_slice().unwrap(), "tile {}", tile.index);
        }
    }

    #[test]
    fn contiguous_rows_gather_as_the_pixel_by_pixel_reference() {
        for channels in [1, 3] {
            check_against_reference::<u8>(channels);
            check_against_reference::<u16>(channels);
            check_against_reference::<f32>(channels);
            check_against_reference::<f64>(channels);
        }
    }

    #[test]
    fn workers_split_a_tile_by_rows_and_agree_with_one_thread() {
        let data = Array3::from_shape_fn((2, 700, 300), |(c, y, x)| {
            ((c * 7 + y * 3 + x) % 65_000) as u16
        });
        let plan = TilePlan::valid(&[700, 300], &[500, 340], 20, 4).unwrap();
        let one = Gatherer::new(data.view().into_dyn(), Affine::new(0.01, 1.0));
        for workers in [2, 3, 8] {
            let many =
                Gatherer::new(data.view().into_dyn(), Affine::new(0.01, 1.0)).workers(workers);
            for tile in plan.tiles() {
                let (mut a, mut b) = (vec![0f32; 340_000], vec![1f32; 340_000]);
                one.gather_floats(&tile, &mut a).unwrap();
                many.gather_floats(&tile, &mut b).unwrap();
                assert_eq!(a, b, "{workers} workers, tile {}", tile.index);
            }
        }
        // A non-finite value in the last worker's rows is still found.
        let mut bad = Array3::<f32>::zeros((1, 600, 256));
        bad[[0, 590, 100]] = f32::NAN;
        let plan = TilePlan::valid(&[600, 256], &[600, 256], 0, 4).unwrap();
        let mut buf = vec![0f32; 600 * 256];
        assert!(Gatherer::new(bad.view().into_dyn(), Affine::IDENTITY)
            .workers(4)
            .gather_floats(&plan.tile(0).unwrap(), &mut buf)
            .is_err());
    }

    #[test]
    fn raw_gathering_mirrors_the_pixels_as_they_are() {
        let (h, w) = (37, 53);
        for channels in [1, 3] {
            let data = Array3::from_shape_fn((channels, h, w), |(c, y, x)| {
                (c * 20_011 + y * 1_009 + x * 3) as u16
            });
            let plan = TilePlan::valid(&[h, w], &[28, 28], 6, 4).unwrap();
            let g = Gatherer::new(data.view().into_dyn(), Affine::new(0.5, 1.0)).workers(3);
            for tile in plan.tiles() {
                let mut buf = vec![MaybeUninit::new(0u16); g.tile_len(&tile.read_shape)];
                g.gather_raw(&tile, &mut buf).unwrap();
                // SAFETY: initialized above.
                let got: Vec<u16> = buf.iter().map(|v| unsafe { v.assume_init() }).collect();
                let want = ArrayD::from_shape_fn(IxDyn(&[28, 28, channels]), |i| {
                    let y = reflect_index(tile.read_start[0] + i[0] as isize, h);
                    let x = reflect_index(tile.read_start[1] + i[1] as isize, w);
                    data[[i[2], y, x]]
                });
                assert_eq!(got, want.as_slice().unwrap(), "tile {}", tile.index);
            }
        }
        // Half floats: NaN is refused before it travels, unless let through.
        let mut halves = Array3::from_elem((1, 6, 40), half::f16::ONE);
        halves[[0, 3, 20]] = half::f16::NAN;
        let plan = TilePlan::valid(&[6, 40], &[8, 40], 0, 4).unwrap();
        let tile = plan.tile(0).unwrap();
        let mut buf = vec![MaybeUninit::new(half::f16::ZERO); 320];
        let strict = Gatherer::new(halves.view().into_dyn(), Affine::IDENTITY);
        assert!(strict.gather_raw(&tile, &mut buf).is_err());
        let lenient = strict.check_finite(false);
        lenient.gather_raw(&tile, &mut buf).unwrap();
        // SAFETY: initialized above.
        assert!(buf.iter().any(|v| unsafe { v.assume_init() }.is_nan()));
    }

    #[test]
    fn applies_the_normalisation() {
        let data = ndarray::Array3::<u8>::from_elem((1, 3, 3), 10);
        let g = Gatherer::new(data.view().into_dyn(), Affine::new(0.5, 1.0));
        let plan = TilePlan::valid(&[3, 3], &[4, 4], 0, 4).unwrap();
        let tile = plan.tile(0).unwrap();
        let mut buf = vec![0f32; 16];
        g.gather_floats(&tile, &mut buf).unwrap();
        assert!(buf.iter().all(|&v| v == 6.0));
    }

    #[test]
    fn a_piece_reads_whole_image_coordinates_and_refuses_missing_context() {
        let whole = Array3::from_shape_fn((1, 9, 11), |(_, y, x)| (y * 20 + x) as u8);
        let plan = TilePlan::valid(&[9, 11], &[12, 12], 4, 4).unwrap();
        let full = Gatherer::new(whole.view().into_dyn(), Affine::IDENTITY);
        let piece_view = whole.slice(ndarray::s![.., .., 2..]).into_dyn();
        let piece = Gatherer::piece(piece_view, Affine::IDENTITY, vec![0, 2], vec![9, 11]);
        let tile = plan.tile(plan.len() - 1).unwrap(); // reads columns 4..=10, mirrored

        let (mut a, mut b) = (vec![0f32; 144], vec![0f32; 144]);
        full.gather_floats(&tile, &mut a).unwrap();
        piece.gather_floats(&tile, &mut b).unwrap();
        assert_eq!(a, b);
        let first = plan.tile(0).unwrap(); // reads column 0, which the piece lacks
        assert!(piece
            .gather_floats(&first, &mut b)
            .unwrap_err()
            .to_string()
            .contains("outside the input"));
    }

    #[test]
    fn non_finite_input_is_refused_unless_let_through_and_huge_f64_stays_finite() {
        let mut data = Array3::<f32>::from_elem((1, 6, 6), 1.0);
        data[[0, 2, 3]] = f32::NAN;
        let plan = TilePlan::valid(&[6, 6], &[8, 8], 0, 4).unwrap();
        // The same in a row long enough to be read as a contiguous run.
        let mut wide = Array3::<f32>::from_elem((1, 3, 40), 1.0);
        wide[[0, 1, 20]] = f32::INFINITY;
        let wide_plan = TilePlan::valid(&[3, 40], &[4, 40], 0, 4).unwrap();
        let mut wide_buf = vec![0f32; 160];
        let wide_tile = wide_plan.tile(0).unwrap();
        assert!(Gatherer::new(wide.view().into_dyn(), Affine::IDENTITY)
            .gather_floats(&wide_tile, &mut wide_buf)
            .is_err());
        let tile = plan.tile(0).unwrap();
        let mut buf = vec![0f32; 64];
        let strict = Gatherer::new(data.view().into_dyn(), Affine::IDENTITY);
        let message = strict
            .gather_floats(&tile, &mut buf)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("NaN or infinite") && message.contains("propagate"),
            "{message}"
        );
        let lenient = Gatherer::new(data.view().into_dyn(), Affine::IDENTITY).check_finite(false);
        lenient.gather_floats(&tile, &mut buf).unwrap();
        assert!(buf.iter().any(|v| v.is_nan()));

        let huge =
            Array3::<f64>::from_shape_fn(
                (1, 6, 6),
                |(_, y, x)| if (y + x) % 2 == 0 { 1e300 } else { -1e308 },
            );
        let affine = crate::normalize::affine_from_range(-1e308, 1e300);
        Gatherer::new(huge.view().into_dyn(), affine)
            .gather_floats(&tile, &mut buf)
            .unwrap();
        assert!(
            buf.iter()
                .all(|v| v.is_finite() && (-1e-6..=1.0 + 1e-6).contains(v)),
            "{buf:?}"
        );
        Gatherer::new(huge.view().into_dyn(), Affine::IDENTITY)
            .gather_floats(&tile, &mut buf)
            .unwrap();
        assert!(buf.iter().all(|v| v.is_finite()));

        // A range too narrow for f32's map: f64 pixels near 1e-44 map to
        // [0, 1]; u16 pixels under a steep map saturate (they were refused
        // as NaN or infinite).
        let tiny = Array3::<f64>::from_shape_fn((1, 6, 6), |(_, y, x)| (y * 6 + x) as f64 * 1e-44);
        Gatherer::new(
            tiny.view().into_dyn(),
            crate::normalize::affine_from_range(0.0, 35e-44),
        )
        .gather_floats(&tile, &mut buf)
        .unwrap();
        assert!(
            buf.iter().all(|v| (0.0..=1.0).contains(v)) && buf.contains(&1.0),
            "{buf:?}"
        );
        let steep = Array3::<u16>::from_shape_fn((1, 6, 6), |(_, y, x)| (y * 6 + x) as u16 * 1000);
        Gatherer::new(
            steep.view().into_dyn(),
            crate::normalize::affine_from_range(0.0, 1e-34),
        )
        .gather_floats(&tile, &mut buf)
        .unwrap();
        assert!(buf.contains(&0.0) && buf.contains(&f32::MAX), "{buf:?}");
    }
}
