//! Pages whose channels are stored as separate planes (TIFF planar
//! configuration 2: all of the red, then all of the green, ...): tifffile's
//! default for a `(3, y, x)` array and GDAL's `INTERLEAVE=BAND`. The `tiff`
//! decoder reads only the first plane of such a page, so each strip or tile
//! of every plane is decoded on its own and interleaved here into
//! `(y, x, channel)`, the order of a contiguous page, or placed plane after
//! plane, `(channel, y, x)`, where the file says its planes are an axis of
//! their own (tifffile's `{"shape": [3, y, x], "axes": "ZYX"}`).

use std::fs::File;
use std::io::BufReader;

use tiff::decoder::{ChunkType, Decoder, DecodingResult};
use tiff::tags::Tag;

use crate::limits::{elements, try_filled_vec};

/// Where the chunks of one plane lie in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PlaneGrid {
    /// The page's width and height.
    pub width: usize,
    pub height: usize,
    /// Channels (one plane each).
    pub samples: usize,
    /// A chunk's width and height: `(width, rows per strip)` for strips,
    /// the tile size for tiles.
    pub chunk_width: usize,
    pub chunk_height: usize,
    /// Whether the page is read plane after plane, `(channel, y, x)`,
    /// rather than interleaved.
    pub planes_first: bool,
}

/// The pixels of one chunk of a plane within its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    plane: usize,
    row: usize,
    column: usize,
    rows: usize,
    columns: usize,
}

impl PlaneGrid {
    /// The grid of the decoder's current page of `width` x `height` pixels
    /// and `samples` channels. Sizes were checked by the decoder when it
    /// read the directory (a zero tile size is refused there); a strip
    /// taller than the page (the default, 2^32 - 1 rows) is the page.
    pub fn of_page(
        decoder: &mut Decoder<BufReader<File>>,
        width: u32,
        height: u32,
        samples: u16,
        planes_first: bool,
    ) -> Self {
        let chunk_type = decoder.get_chunk_type();
        let mut tag = |tag: Tag| {
            decoder
                .find_tag_unsigned::<u64>(tag)
                .ok()
                .flatten()
                .map(crate::limits::saturating_usize)
        };
        let (width, height) = (width as usize, height as usize);
        let (chunk_width, chunk_height) = match chunk_type {
            ChunkType::Strip => (width, tag(Tag::RowsPerStrip).unwrap_or(height)),
            ChunkType::Tile => (
                tag(Tag::TileWidth).unwrap_or(width),
                tag(Tag::TileLength).unwrap_or(height),
            ),
        };
        Self {
            width,
            height,
            samples: usize::from(samples),
            chunk_width: chunk_width.clamp(1, width.max(1)),
            chunk_height: chunk_height.clamp(1, height.max(1)),
            planes_first,
        }
    }

    fn across(&self) -> usize {
        self.width.div_ceil(self.chunk_width)
    }

    /// Chunks per plane.
    fn per_plane(&self) -> usize {
        self.across() * self.height.div_ceil(self.chunk_height)
    }

    /// Chunks in the page: the planes' one after the other.
    fn chunks(&self) -> usize {
        self.per_plane() * self.samples
    }

    /// The pixels chunk `index` holds (those of a chunk past the page's
    /// right or bottom edge are cut off).
    fn region(&self, index: usize) -> Region {
        let (plane, within) = (index / self.per_plane(), index % self.per_plane());
        let (row, column) = (
            within / self.across() * self.chunk_height,
            within % self.across() * self.chunk_width,
        );
        Region {
            plane,
            row,
            column,
            rows: self.chunk_height.min(self.height - row),
            columns: self.chunk_width.min(self.width - column),
        }
    }
}

/// Decodes the decoder's current page, of `len` samples in `grid`, into
/// one contiguous page's order. Errors are the decoder's (told by
/// `tiff_err`), or a chunk that holds fewer pixels than its place.
pub(super) fn read_planar(
    decoder: &mut Decoder<BufReader<File>>,
    grid: PlaneGrid,
    len: usize,
    tiff_err: impl Fn(tiff::TiffError) -> String,
) -> Result<DecodingResult, String> {
    if elements(&[grid.width, grid.height, grid.samples]) != Some(len) || len == 0 {
        return Err(format!("a page of {len} samples is not {grid:?}"));
    }
    let mut page: Option<DecodingResult> = None;
    for index in 0..grid.chunks() {
        // The decoder holds as many chunks (it checked their count).
        let chunk_index = u32::try_from(index).map_err(|e| e.to_string())?;
        let chunk = decoder.read_chunk(chunk_index).map_err(&tiff_err)?;
        let page = match &mut page {
            Some(page) => page,
            None => page.insert(zeros_like(&chunk, len)?),
        };
        place(page, &chunk, grid, grid.region(index))?;
    }
    page.ok_or_else(|| "the page holds no strips or tiles".to_owned())
}

/// A page of `len` zeros of `chunk`'s sample type (allocated fallibly).
fn zeros_like(chunk: &DecodingResult, len: usize) -> Result<DecodingResult, String> {
    Ok(match chunk {
        DecodingResult::U8(_) => DecodingResult::U8(try_filled_vec(len, 0)?),
        DecodingResult::U16(_) => DecodingResult::U16(try_filled_vec(len, 0)?),
        DecodingResult::U32(_) => DecodingResult::U32(try_filled_vec(len, 0)?),
        DecodingResult::U64(_) => DecodingResult::U64(try_filled_vec(len, 0)?),
        DecodingResult::I8(_) => DecodingResult::I8(try_filled_vec(len, 0)?),
        DecodingResult::I16(_) => DecodingResult::I16(try_filled_vec(len, 0)?),
        DecodingResult::I32(_) => DecodingResult::I32(try_filled_vec(len, 0)?),
        DecodingResult::I64(_) => DecodingResult::I64(try_filled_vec(len, 0)?),
        DecodingResult::F32(_) => DecodingResult::F32(try_filled_vec(len, 0.0)?),
        DecodingResult::F64(_) => DecodingResult::F64(try_filled_vec(len, 0.0)?),
        // Refused by their sample kind before anything is decoded.
        DecodingResult::F16(_) => {
            return Err("16-bit float samples are not read from TIFF".to_owned())
        }
    })
}

/// Copies `chunk`, the pixels of `region` (rows of `region.columns`; a
/// bottom tile may hold rows past the page's edge), into channel
/// `region.plane` of `page`.
fn place(
    page: &mut DecodingResult,
    chunk: &DecodingResult,
    grid: PlaneGrid,
    region: Region,
) -> Result<(), String> {
    fn copy<T: Copy>(
        page: &mut [T],
        chunk: &[T],
        grid: PlaneGrid,
        region: Region,
    ) -> Result<(), String> {
        if chunk.len() < region.rows * region.columns {
            return Err(format!(
                "a strip or tile of channel {} holds {} samples, its place in the page {}x{}",
                region.plane + 1,
                chunk.len(),
                region.columns,
                region.rows
            ));
        }
        for (r, row) in chunk
            .chunks_exact(region.columns)
            .take(region.rows)
            .enumerate()
        {
            let pixel = (region.row + r) * grid.width + region.column;
            if grid.planes_first {
                let start = region.plane * grid.width * grid.height + pixel;
                page[start..start + row.len()].copy_from_slice(row);
                continue;
            }
            let start = pixel * grid.samples + region.plane;
            for (c, &value) in row.iter().enumerate() {
                page[start + c * grid.samples] = value;
            }
        }
        Ok(())
    }
    match (page, chunk) {
        (DecodingResult::U8(p), DecodingResult::U8(c)) => copy(p, c, grid, region),
        (DecodingResult::U16(p), DecodingResult::U16(c)) => copy(p, c, grid, region),
        (DecodingResult::U32(p), DecodingResult::U32(c)) => copy(p, c, grid, region),
        (DecodingResult::U64(p), DecodingResult::U64(c)) => copy(p, c, grid, region),
        (DecodingResult::I8(p), DecodingResult::I8(c)) => copy(p, c, grid, region),
        (DecodingResult::I16(p), DecodingResult::I16(c)) => copy(p, c, grid, region),
        (DecodingResult::I32(p), DecodingResult::I32(c)) => copy(p, c, grid, region),
        (DecodingResult::I64(p), DecodingResult::I64(c)) => copy(p, c, grid, region),
        (DecodingResult::F32(p), DecodingResult::F32(c)) => copy(p, c, grid, region),
        (DecodingResult::F64(p), DecodingResult::F64(c)) => copy(p, c, grid, region),
        _ => Err("the planes of the page decode to different sample types".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(width: usize, height: usize, chunk: (usize, usize)) -> PlaneGrid {
        PlaneGrid {
            width,
            height,
            samples: 3,
            chunk_width: chunk.0,
            chunk_height: chunk.1,
            planes_first: false,
        }
    }

    #[test]
    fn strips_cover_each_plane_in_turn_the_last_cut_to_the_page() {
        let g = grid(5, 7, (5, 3));
        assert_eq!(g.chunks(), 9);
        let r = |plane, row, rows| Region {
            plane,
            row,
            column: 0,
            rows,
            columns: 5,
        };
        assert_eq!(g.region(0), r(0, 0, 3));
        assert_eq!(g.region(2), r(0, 6, 1));
        assert_eq!(g.region(3), r(1, 0, 3));
        assert_eq!(g.region(8), r(2, 6, 1));
    }

    #[test]
    fn tiles_go_across_then_down_within_each_plane() {
        let g = grid(5, 3, (4, 2));
        assert_eq!(g.chunks(), 12);
        assert_eq!(
            g.region(5),
            Region {
                plane: 1,
                row: 0,
                column: 4,
                rows: 2,
                columns: 1
            }
        );
        assert_eq!(
            g.region(11),
            Region {
                plane: 2,
                row: 2,
                column: 4,
                rows: 1,
                columns: 1
            }
        );
    }

    #[test]
    fn planes_are_interleaved_into_pixels() {
        // Two channels of 3x2, in strips of one row; tile-style chunks with
        // rows past the page's edge are cut.
        let g = PlaneGrid {
            width: 3,
            height: 2,
            samples: 2,
            chunk_width: 3,
            chunk_height: 1,
            planes_first: false,
        };
        let placed = |g: PlaneGrid| {
            let mut page = zeros_like(&DecodingResult::U16(vec![]), 12).unwrap();
            for index in 0..g.chunks() {
                let base = (index * 10) as u16;
                let chunk = DecodingResult::U16(vec![base, base + 1, base + 2]);
                place(&mut page, &chunk, g, g.region(index)).unwrap();
            }
            let DecodingResult::U16(v) = page else {
                unreachable!()
            };
            v
        };
        assert_eq!(placed(g), [0, 20, 1, 21, 2, 22, 10, 30, 11, 31, 12, 32]);
        // Plane after plane where the file says the planes are an axis.
        let first = PlaneGrid {
            planes_first: true,
            ..g
        };
        assert_eq!(placed(first), [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32]);
        let mut page = zeros_like(&DecodingResult::U8(vec![]), 12).unwrap();
        let short = DecodingResult::U8(vec![1, 2]);
        assert!(place(&mut page, &short, g, g.region(0)).is_err());
        assert!(place(
            &mut page,
            &DecodingResult::U16(vec![1, 2, 3]),
            g,
            g.region(0)
        )
        .is_err());
    }
}
