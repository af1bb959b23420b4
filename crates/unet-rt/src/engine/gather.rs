//! Cutting tile windows out of the borrowed input: mirror at the borders,
//! convert to `f32` and normalise, all in one pass per tile.

use ndarray::ArrayViewD;

use crate::error::{Error, Result};
use crate::geometry::{reflect_index, Tile};
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
        }
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

    /// Fills `dst` (of length [`Self::tile_len`]) with the tile's window.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the tile reads a pixel the input does
    /// not hold (a window without enough context; checked beforehand by
    /// [`crate::Window::check_context`], so this is a second line).
    pub(crate) fn gather(&self, tile: &Tile, dst: &mut [f32]) -> Result<()> {
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
        let base = self.input.as_ptr();
        let Some((last, outer)) = offsets.split_last() else {
            return Ok(());
        };
        let row_len = last.len() * self.channels;
        let mut index = vec![0usize; outer.len()];
        let mut finite = true;
        for row in dst.chunks_exact_mut(row_len) {
            let row_offset: isize = outer.iter().zip(&index).map(|(table, &i)| table[i]).sum();
            for (pixel, &x) in row.chunks_exact_mut(self.channels).zip(last) {
                for (value, &c) in pixel.iter_mut().zip(&channel_offsets) {
                    // SAFETY: every table entry is `i * stride` for an index `i`
                    // checked above to lie in `0..n` of its axis of the view, and
                    // the channel index is below the channel count, so the offset
                    // addresses an element of the view, which borrows the memory
                    // for `'a`.
                    let v = unsafe { *base.offset(row_offset + x + c) };
                    *value = v.normalized(self.affine);
                    finite &= value.is_finite();
                }
            }
            advance(&mut index, outer);
        }
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
}

/// Row-major increment of a multi-index over the outer axes.
fn advance(index: &mut [usize], tables: &[Vec<isize>]) {
    for (i, table) in index.iter_mut().zip(tables).rev() {
        *i += 1;
        if *i < table.len() {
            return;
        }
        *i = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        g.gather(&tile, &mut buf).unwrap();
        let padded = ArrayD::from_shape_fn(IxDyn(&[12, 12, 2]), |i| {
            let y = reflect_index(tile.read_start[0] + i[0] as isize, 5);
            let x = reflect_index(tile.read_start[1] + i[1] as isize, 7);
            f32::from(view[[i[2], y, x]])
        });
        assert_eq!(buf, padded.as_slice().unwrap());
    }

    #[test]
    fn applies_the_normalisation() {
        let data = ndarray::Array3::<u8>::from_elem((1, 3, 3), 10);
        let g = Gatherer::new(data.view().into_dyn(), Affine::new(0.5, 1.0));
        let plan = TilePlan::valid(&[3, 3], &[4, 4], 0, 4).unwrap();
        let tile = plan.tile(0).unwrap();
        let mut buf = vec![0f32; 16];
        g.gather(&tile, &mut buf).unwrap();
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
        full.gather(&tile, &mut a).unwrap();
        piece.gather(&tile, &mut b).unwrap();
        assert_eq!(a, b);
        let first = plan.tile(0).unwrap(); // reads column 0, which the piece lacks
        assert!(piece
            .gather(&first, &mut b)
            .unwrap_err()
            .to_string()
            .contains("outside the input"));
    }

    #[test]
    fn non_finite_input_is_refused_unless_let_through_and_huge_f64_stays_finite() {
        let mut data = Array3::<f32>::from_elem((1, 6, 6), 1.0);
        data[[0, 2, 3]] = f32::NAN;
        let plan = TilePlan::valid(&[6, 6], &[8, 8], 0, 4).unwrap();
        let tile = plan.tile(0).unwrap();
        let mut buf = vec![0f32; 64];
        let strict = Gatherer::new(data.view().into_dyn(), Affine::IDENTITY);
        let message = strict.gather(&tile, &mut buf).unwrap_err().to_string();
        assert!(
            message.contains("NaN or infinite") && message.contains("propagate"),
            "{message}"
        );
        let lenient = Gatherer::new(data.view().into_dyn(), Affine::IDENTITY).check_finite(false);
        lenient.gather(&tile, &mut buf).unwrap();
        assert!(buf.iter().any(|v| v.is_nan()));

        let huge =
            Array3::<f64>::from_shape_fn(
                (1, 6, 6),
                |(_, y, x)| if (y + x) % 2 == 0 { 1e300 } else { -1e308 },
            );
        let affine = crate::normalize::affine_from_range(-1e308, 1e300);
        Gatherer::new(huge.view().into_dyn(), affine)
            .gather(&tile, &mut buf)
            .unwrap();
        assert!(
            buf.iter()
                .all(|v| v.is_finite() && (-1e-6..=1.0 + 1e-6).contains(v)),
            "{buf:?}"
        );
        Gatherer::new(huge.view().into_dyn(), Affine::IDENTITY)
            .gather(&tile, &mut buf)
            .unwrap();
        assert!(buf.iter().all(|v| v.is_finite()));
    }
}
