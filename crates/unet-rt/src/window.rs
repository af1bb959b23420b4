//! Segmenting one piece of a larger image exactly as the whole image would
//! be segmented: which tiles of the whole image's plan a region needs, what
//! they write there, and which input pixels they read.
//!
//! Floating-point results depend on the shape of the tensors a network
//! runs on (libraries pick kernels by shape), so a piece segmented with its
//! own tiles can differ from the whole image in the last bits, and a label
//! can flip where two classes tie. A [`Window`] instead runs the very tiles
//! of the whole image's plan that write into the region, on the same input
//! windows, so the result is the whole image's, bit for bit.

use crate::error::{Error, Result};
use crate::geometry::{reflect_runs, Tile, TilePlan};
use crate::memory;

/// One piece of a larger image: the input holds the pixels
/// `origin .. origin + input shape` of an image of spatial shape `image`,
/// and the result is wanted for the region `start .. start + shape`.
/// All coordinates are per spatial axis, in whole-image pixels.
///
/// The input must hold every pixel the region's tiles read, mirrored at the
/// whole image's borders (see [`Window::needed_input`]). For models with
/// percentile normalization, pass the whole image's percentile values as
/// [`crate::Options::input_range`]; a piece normalizes with its own
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Spatial shape of the whole image.
    pub image: Vec<usize>,
    /// Whole-image position of the input's first pixel.
    pub origin: Vec<usize>,
    /// First pixel of the region to compute.
    pub start: Vec<usize>,
    /// Shape of the region: the spatial shape of the result.
    pub shape: Vec<usize>,
}

impl Window {
    /// The window that is the whole of an image of spatial shape `image`.
    pub fn whole(image: &[usize]) -> Self {
        Self {
            image: image.to_vec(),
            origin: vec![0; image.len()],
            start: vec![0; image.len()],
            shape: image.to_vec(),
        }
    }

    /// Checks the window against an input of spatial shape `input`: the
    /// window itself ([`Window::check_region`]), one value per axis of the
    /// input, the input inside the image.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `window`.
    pub fn check(&self, input: &[usize]) -> Result<()> {
        self.check_region()?;
        let rank = self.image.len();
        if input.len() != rank {
            return Err(invalid(format!(
                "{self:?} must give one value per spatial axis of the input (spatial shape {input:?})"
            )));
        }
        for axis in 0..rank {
            if self.origin[axis]
                .checked_add(input[axis])
                .is_none_or(|end| end > self.image[axis])
            {
                return Err(invalid(format!(
                    "the input (spatial shape {input:?}) placed at {:?} reaches past the image of shape {:?}",
                    self.origin, self.image
                )));
            }
        }
        Ok(())
    }

    /// Checks the window on its own, the rule every use of a window shares
    /// (segmenting, planning, [`Window::tiles`], [`Window::needed_input`]):
    /// one value per axis in each field, at least one axis, a region that
    /// is not empty and lies inside the image.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `window`.
    pub fn check_region(&self) -> Result<()> {
        let rank = self.image.len();
        if rank == 0
            || [self.origin.len(), self.start.len(), self.shape.len()]
                .iter()
                .any(|&n| n != rank)
        {
            return Err(invalid(format!(
                "{self:?} must give one value per spatial axis of the image (at least one) in each field"
            )));
        }
        for axis in 0..rank {
            if self.shape[axis] == 0
                || self.start[axis]
                    .checked_add(self.shape[axis])
                    .is_none_or(|end| end > self.image[axis])
            {
                return Err(invalid(format!(
                    "the region of shape {:?} at {:?} must be non-empty and inside the image of shape {:?}",
                    self.shape, self.start, self.image
                )));
            }
        }
        Ok(())
    }

    /// [`Window::check_region`], and `plan` made for the window's image:
    /// the grid arithmetic below relies on both (a region past the image
    /// gave tiles that wrote 2^64 - 400 pixels, a window of another rank
    /// indexed past the plan's axes).
    fn check_plan(&self, plan: &TilePlan) -> Result<()> {
        self.check_region()?;
        if plan.image_shape() != self.image.as_slice() {
            return Err(invalid(format!(
                "the tile plan is for an image of shape {:?}, the window's image has shape {:?}",
                plan.image_shape(),
                self.image
            )));
        }
        // A blending plan's tiles overlap: several write each pixel, and the
        // grid ranges below (tile k writes from k * stride) would miss some.
        if plan.blends() {
            return Err(blending_refused());
        }
        Ok(())
    }

    /// The tiles of `plan` (made for the whole image) that write into the
    /// region, in plan order, each clipped to the region: `write_start` is
    /// relative to the region's start and `src_start` moves with it;
    /// `index` stays the tile's position in the whole plan.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `window` when the window fails
    /// [`Window::check_region`], the plan is for another image or blends,
    /// or the region's tiles do not fit in memory.
    pub fn tiles(&self, plan: &TilePlan) -> Result<Vec<Tile>> {
        self.check_plan(plan)?;
        let ranges: Vec<(usize, usize)> = (0..self.image.len())
            .map(|axis| self.grid_range(plan, axis))
            .collect();
        let grid = plan.grid_shape();
        // The region of a huge image can hold more tiles than a Vec can:
        // its count and memory are checked before anything is reserved.
        let count = ranges
            .iter()
            .try_fold(1usize, |n, &(lo, hi)| n.checked_mul(hi - lo + 1))
            .ok_or_else(|| {
                invalid(format!(
                    "the region of shape {:?} holds more tiles of {:?} than can be counted",
                    self.shape,
                    plan.input_tile_shape()
                ))
            })?;
        // Each tile owns six vectors of one value per axis.
        let per_tile = std::mem::size_of::<Tile>() + 6 * 8 * self.image.len();
        let bytes = count as u128 * per_tile as u128;
        let what = format!(
            "the {count} tiles of {:?} that the region of shape {:?} needs",
            plan.input_tile_shape(),
            self.shape
        );
        let mut tiles = memory::try_with_capacity::<Tile>(count, bytes, "window", &what)?;
        let mut k: Vec<usize> = ranges.iter().map(|&(lo, _)| lo).collect();
        for _ in 0..count {
            let index = k.iter().zip(grid).fold(0, |flat, (&i, &n)| flat * n + i);
            if let Some(tile) = plan.tile(index) {
                tiles.push(self.clip(tile));
            }
            for axis in (0..k.len()).rev() {
                k[axis] += 1;
                if k[axis] <= ranges[axis].1 {
                    break;
                }
                k[axis] = ranges[axis].0;
            }
        }
        Ok(tiles)
    }

    /// The smallest input, `(first, end)` per axis in whole-image pixels,
    /// that holds every pixel the region's tiles read (after mirroring at the
    /// image's borders). A window whose input covers it gives the whole
    /// image's result.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `window` when the window fails
    /// [`Window::check_region`] or the plan is for another image or blends.
    pub fn needed_input(&self, plan: &TilePlan) -> Result<(Vec<usize>, Vec<usize>)> {
        self.check_plan(plan)?;
        let rank = self.image.len();
        let (mut first, mut end) = (vec![0; rank], vec![0; rank]);
        for axis in 0..rank {
            let (lo, hi) = self.grid_range(plan, axis);
            // The plan bounds image and tile sides far below isize::MAX
            // (geometry's MAX_EXTENT), so these products cannot overflow.
            let stride = plan.stride()[axis] as isize;
            let halo = plan.halo() as isize;
            let read_start = lo as isize * stride - halo;
            let read_len = (hi - lo) * plan.stride()[axis] + plan.input_tile_shape()[axis];
            let (min, max) = mirrored_bounds(read_start, read_len, self.image[axis])?;
            first[axis] = min;
            end[axis] = max + 1;
        }
        Ok((first, end))
    }

    /// Checks that an input of spatial shape `input` holds what the region
    /// needs ([`Window::needed_input`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `window`: as [`Window::check`], or
    /// with the input needed.
    pub fn check_context(&self, plan: &TilePlan, input: &[usize]) -> Result<()> {
        self.check(input)?;
        let (first, end) = self.needed_input(plan)?;
        // `check` put the input inside the image: these sums cannot overflow.
        let holds = (0..input.len())
            .all(|a| self.origin[a] <= first[a] && end[a] <= self.origin[a] + input[a]);
        if holds {
            return Ok(());
        }
        let have: Vec<(usize, usize)> = (0..input.len())
            .map(|a| (self.origin[a], self.origin[a] + input[a]))
            .collect();
        let need: Vec<(usize, usize)> = first.into_iter().zip(end).collect();
        Err(invalid(format!(
            "the region of shape {:?} at {:?} reads the image's pixels {need:?} (first, end per axis) \
             with tiles of {:?}, but the input holds only {have:?}",
            self.shape,
            self.start,
            plan.input_tile_shape()
        )))
    }

    /// Tiles `lo ..= hi` of the grid along `axis` write into the region.
    /// Tile `k` writes from `k * stride`; the last one reaches the image end.
    fn grid_range(&self, plan: &TilePlan, axis: usize) -> (usize, usize) {
        let stride = plan.stride()[axis];
        let last = plan.grid_shape()[axis] - 1;
        let first_pixel = self.start[axis];
        let last_pixel = self.start[axis] + self.shape[axis] - 1;
        (
            (first_pixel / stride).min(last),
            (last_pixel / stride).min(last),
        )
    }

    fn clip(&self, mut tile: Tile) -> Tile {
        for axis in 0..tile.write_start.len() {
            let begin = tile.write_start[axis].max(self.start[axis]);
            let end = (tile.write_start[axis] + tile.write_shape[axis])
                .min(self.start[axis] + self.shape[axis]);
            tile.src_start[axis] += begin - tile.write_start[axis];
            tile.write_start[axis] = begin - self.start[axis];
            tile.write_shape[axis] = end - begin;
        }
        tile
    }
}

/// The one answer to a window with a blending plan (the engine refuses the
/// options at `Segmenter::new`, the geometry the plan here).
pub(crate) fn blending_refused() -> Error {
    invalid(
        "pieces of an image are segmented with crop plans: a blending plan's tiles overlap, and \
         blending needs the whole image (use blend crop)"
            .to_owned(),
    )
}

/// The smallest and largest source pixel read by the window
/// `[start, start + len)` of an axis of length `n`, mirrored at its borders.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `len` or `n` when either is 0 (an
/// empty window or axis has no pixel to bound).
pub fn mirrored_bounds(start: isize, len: usize, n: usize) -> Result<(usize, usize)> {
    if n == 0 {
        return Err(Error::InvalidArgument {
            argument: "n",
            message: "an empty axis has no pixel to read".to_owned(),
        });
    }
    if len == 0 {
        return Err(Error::InvalidArgument {
            argument: "len",
            message: "an empty window reads no pixel".to_owned(),
        });
    }
    let mut bounds = (usize::MAX, 0);
    // Every run after the first spans a whole half period, from one end of
    // the axis to the other, and with the first reaches both ends: the loop
    // stops after two runs whatever `len` (folding every run took one step
    // per pixel of the window, and first built them all in memory).
    for run in reflect_runs(start, len, n) {
        // A run stays inside the axis: `src + len - 1 < n` forwards,
        // `src + 1 >= len` backwards.
        let other = match run.step {
            1 => run.src + (run.len - 1),
            -1 => run.src + 1 - run.len,
            _ => run.src,
        };
        bounds = (
            bounds.0.min(run.src).min(other),
            bounds.1.max(run.src).max(other),
        );
        if bounds == (0, n - 1) {
            break;
        }
    }
    Ok(bounds)
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument {
        argument: "window",
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::reflect_index;

    fn plan(image: &[usize], tile: usize) -> TilePlan {
        // Halo 20, multiple 4: output 4 + 4k, stride the output rounded down.
        TilePlan::valid(image, &vec![tile; image.len()], 20, 4).unwrap()
    }

    #[test]
    fn mirrored_bounds_are_the_extremes_of_reflect_index() {
        for n in 1..12usize {
            for start in -30isize..30 {
                for len in 1..40usize {
                    let reads: Vec<usize> = (0..len)
                        .map(|j| reflect_index(start + j as isize, n))
                        .collect();
                    let want = (*reads.iter().min().unwrap(), *reads.iter().max().unwrap());
                    assert_eq!(
                        mirrored_bounds(start, len, n).expect("a case that succeeds"),
                        want,
                        "start {start} len {len} n {n}"
                    );
                }
            }
        }
    }

    /// Every pixel of the image is written once by the union of the pieces'
    /// tiles, each by the tile of the whole plan that writes it, with the
    /// same source pixel of that tile's output.
    #[test]
    fn pieces_write_what_the_whole_plan_writes() {
        for (image, tile) in [
            (vec![157, 203], 64),
            (vec![40, 97], 84),
            (vec![300], 48),
            (vec![9, 31, 50], 44),
        ] {
            let plan = plan(&image, tile);
            let whole = owner_map(&image, &Window::whole(&image), &plan);
            for (first, size) in [(0usize, 16usize), (13, 29), (40, 7), (5, 1000)] {
                let start: Vec<usize> = image.iter().map(|&n| first.min(n - 1)).collect();
                let shape: Vec<usize> = image
                    .iter()
                    .zip(&start)
                    .map(|(&n, &s)| size.min(n - s))
                    .collect();
                let window = Window {
                    image: image.clone(),
                    origin: vec![0; image.len()],
                    start: start.clone(),
                    shape: shape.clone(),
                };
                let piece = owner_map(&shape, &window, &plan);
                for (pixel, owner) in piece {
                    let global: Vec<usize> = pixel.iter().zip(&start).map(|(p, s)| p + s).collect();
                    assert_eq!(
                        whole.get(&global),
                        Some(&owner),
                        "image {image:?} window {window:?} pixel {global:?}"
                    );
                }
            }
        }
    }

    /// Pixel (relative to the region) -> (tile index, source pixel in the
    /// tile's output); panics if a pixel is written twice or never.
    fn owner_map(
        region: &[usize],
        window: &Window,
        plan: &TilePlan,
    ) -> std::collections::HashMap<Vec<usize>, (usize, Vec<usize>)> {
        let mut map = std::collections::HashMap::new();
        for tile in window.tiles(plan).expect("a case that succeeds") {
            let mut offset = vec![0usize; region.len()];
            loop {
                let pixel: Vec<usize> = offset
                    .iter()
                    .zip(&tile.write_start)
                    .map(|(o, s)| o + s)
                    .collect();
                let src: Vec<usize> = offset
                    .iter()
                    .zip(&tile.src_start)
                    .map(|(o, s)| o + s)
                    .collect();
                assert!(pixel.iter().zip(region).all(|(p, n)| p < n));
                assert!(
                    map.insert(pixel, (tile.index, src)).is_none(),
                    "written twice"
                );
                let mut axis = region.len();
                loop {
                    if axis == 0 {
                        break;
                    }
                    axis -= 1;
                    offset[axis] += 1;
                    if offset[axis] < tile.write_shape[axis] {
                        break;
                    }
                    offset[axis] = 0;
                }
                if offset.iter().all(|&o| o == 0) {
                    break;
                }
            }
        }
        assert_eq!(
            map.len(),
            region.iter().product::<usize>(),
            "every pixel written"
        );
        map
    }

    #[test]
    fn needed_input_holds_every_mirrored_read_and_no_more() {
        for (n, tile) in [(157usize, 64usize), (40, 84), (300, 48), (61, 44), (1, 44)] {
            let plan = plan(&[n], tile);
            for first in 0..n {
                for size in [1, 3, 17, 64, n] {
                    let shape = size.min(n - first);
                    let window = Window {
                        image: vec![n],
                        origin: vec![0],
                        start: vec![first],
                        shape: vec![shape],
                    };
                    let reads: Vec<usize> = window
                        .tiles(&plan)
                        .expect("a case that succeeds")
                        .iter()
                        .flat_map(|t| {
                            (0..t.read_shape[0])
                                .map(move |j| reflect_index(t.read_start[0] + j as isize, n))
                        })
                        .collect();
                    let want = (
                        vec![*reads.iter().min().unwrap()],
                        vec![reads.iter().max().unwrap() + 1],
                    );
                    assert_eq!(
                        window.needed_input(&plan).expect("a case that succeeds"),
                        want,
                        "n {n} tile {tile} region {first}+{shape}"
                    );
                }
            }
        }
    }

    #[test]
    fn context_and_shape_errors_say_what_is_missing() {
        let plan = plan(&[100, 100], 64);
        let window = Window {
            image: vec![100, 100],
            origin: vec![40, 40],
            start: vec![48, 48],
            shape: vec![20, 20],
        };
        assert!(window.check(&[60, 60]).is_ok());
        let message = window
            .check_context(&plan, &[60, 60])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("reads the image's pixels") && message.contains("holds only"),
            "{message}"
        );
        let inside = Window {
            origin: vec![0, 0],
            ..window.clone()
        };
        assert!(inside.check_context(&plan, &[100, 100]).is_ok());
        assert!(window
            .check(&[61, 60])
            .unwrap_err()
            .to_string()
            .contains("reaches past the image"));
        let empty = Window {
            shape: vec![0, 20],
            ..window.clone()
        };
        assert!(empty
            .check(&[60, 60])
            .unwrap_err()
            .to_string()
            .contains("non-empty"));
        assert!(window
            .check(&[60])
            .unwrap_err()
            .to_string()
            .contains("one value per spatial axis"));
    }

    fn argument(result: Result<impl std::fmt::Debug>) -> &'static str {
        match result {
            Err(Error::InvalidArgument { argument, .. }) => argument,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn mirrored_bounds_of_windows_beyond_memory_are_closed_form() {
        // These built one run per pixel (or per two) first: 35 TB for the
        // first (an abort), "capacity overflow" for the second, the OOM
        // killer for the others.
        assert_eq!(
            mirrored_bounds(0, 1 << 40, 1).expect("a case that succeeds"),
            (0, 0)
        );
        assert_eq!(
            mirrored_bounds(0, usize::MAX, 1).expect("a case that succeeds"),
            (0, 0)
        );
        assert_eq!(
            mirrored_bounds(0, 1 << 40, 2).expect("a case that succeeds"),
            (0, 1)
        );
        assert_eq!(
            mirrored_bounds(isize::MIN, 1 << 36, 2).expect("a case that succeeds"),
            (0, 1)
        );
        assert_eq!(
            mirrored_bounds(isize::MIN, usize::MAX, 1 << 62).expect("a case that succeeds"),
            (0, (1 << 62) - 1)
        );
        assert_eq!(
            mirrored_bounds(-3, 2, 7).expect("a case that succeeds"),
            (2, 3)
        );
        // An empty window or axis has no bounds: it gave (usize::MAX, 0).
        assert_eq!(argument(mirrored_bounds(0, 0, 5)), "len");
        assert_eq!(argument(mirrored_bounds(0, 5, 0)), "n");
    }

    #[test]
    fn tiles_of_a_region_beyond_memory_are_refused() {
        // Vec::with_capacity of 2^56 tiles panicked ("capacity overflow").
        let plan = TilePlan::valid(&[1 << 40, 1 << 40], &[1 << 12, 1 << 12], 0, 1)
            .expect("a case that succeeds");
        let whole = Window::whole(&[1 << 40, 1 << 40]);
        assert_eq!(argument(whole.tiles(&plan)), "window");
        // Its needs are still answered, in closed form.
        assert_eq!(
            whole.needed_input(&plan).expect("a case that succeeds"),
            (vec![0, 0], vec![1 << 40, 1 << 40])
        );
    }

    #[test]
    fn windows_that_do_not_fit_their_plan_are_refused() {
        let plan = plan(&[100, 100], 64);
        let good = Window {
            image: vec![100, 100],
            origin: vec![0, 0],
            start: vec![10, 10],
            shape: vec![5, 5],
        };
        assert!(good.tiles(&plan).is_ok() && good.needed_input(&plan).is_ok());
        let bad = [
            // Outside the image: tiles wrote 2^64 - 400 pixels.
            Window {
                start: vec![500, 500],
                shape: vec![10, 10],
                ..good.clone()
            },
            // Empty: 49 tiles for no pixel.
            Window {
                shape: vec![0, 0],
                ..good.clone()
            },
            // Fewer axes than the image: indexing panicked.
            Window {
                origin: vec![0],
                start: vec![0],
                shape: vec![5],
                ..good.clone()
            },
            // Another image than the plan's.
            Window {
                image: vec![100, 200],
                ..good.clone()
            },
            // The same rank as the fields but not the plan's.
            Window {
                image: vec![100],
                origin: vec![0],
                start: vec![0],
                shape: vec![5],
            },
            Window {
                image: vec![],
                origin: vec![],
                start: vec![],
                shape: vec![],
            },
            Window {
                start: vec![usize::MAX, 0],
                shape: vec![2, 5],
                ..good.clone()
            },
        ];
        for window in bad {
            assert_eq!(argument(window.tiles(&plan)), "window", "{window:?}");
            assert_eq!(argument(window.needed_input(&plan)), "window", "{window:?}");
            assert_eq!(
                argument(window.check_context(&plan, &[100, 100])),
                "window",
                "{window:?}"
            );
        }
        // An input of another rank than the window's indexed past it.
        assert_eq!(argument(good.check_context(&plan, &[100])), "window");
        assert_eq!(
            argument(good.check_context(&plan, &[100, 100, 100])),
            "window"
        );
    }

    /// A blending plan writes pixels from several tiles: the region's tiles
    /// and the input they need would be those of a crop plan, too few (the
    /// Rust API sized a client's overlap from them).
    #[test]
    fn blending_plans_are_refused() {
        use crate::geometry::Blend;
        for blend in [Blend::Constant, Blend::Gaussian { sigma_scale: 0.125 }] {
            let plan = TilePlan::same(&[100], &[24], 2, 1, blend).unwrap();
            assert!(plan.blends());
            let region = Window {
                image: vec![100],
                origin: vec![0],
                start: vec![15],
                shape: vec![1],
            };
            assert_eq!(argument(region.tiles(&plan)), "window");
            assert_eq!(argument(region.needed_input(&plan)), "window");
        }
        let crop = TilePlan::same(&[100], &[24], 2, 1, Blend::Crop).unwrap();
        let region = Window {
            image: vec![100],
            origin: vec![0],
            start: vec![15],
            shape: vec![1],
        };
        assert_eq!(region.tiles(&crop).unwrap().len(), 1);
    }
}
