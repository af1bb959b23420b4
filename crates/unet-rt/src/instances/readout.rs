//! A model's instance read-out: seeds grown over a boundary class, small
//! objects removed, holes filled.
//!
//! A two-class model (background, object) cannot keep touching objects
//! apart: their pixels form one connected component. A model with a
//! boundary class can: its interiors are separate components (the seeds),
//! and each seed then claims the boundary pixels around it, one pixel per
//! step, so that objects get their full extent back. The read-out is part of
//! the model's metadata (field `instances`), written at training; users may
//! override `min_size` and `fill_holes`.
//!
//! ```
//! use ndarray::array;
//! use unet_rt::instances::ReadOut;
//! // Two nuclei (interior 1) touching along a boundary (class 2).
//! let classes = array![[2u8, 2, 2, 2, 2, 2], [2, 1, 2, 2, 1, 2], [2, 2, 2, 2, 2, 2]];
//! let read_out = ReadOut { seed_classes: vec![1], grow_classes: vec![2], grow: 2, ..ReadOut::default() };
//! let (ids, n) = read_out.apply(classes.view().into_dyn()).unwrap();
//! assert_eq!(n, 2);
//! assert_eq!(ids.into_raw_vec_and_offset().0, vec![1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2]);
//! ```

use std::sync::atomic::AtomicBool;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use super::components::{c_strides, label_graph, Foreground};
use super::Stop;
use crate::error::{Error, Result};
use crate::memory;

/// The most growth steps a read-out may ask for: a band this wide is far
/// beyond any boundary class, and it bounds the context a block-wise
/// read-out needs.
pub const MAX_GROW: u32 = 64;

/// A class map's element: its class index (0 is background).
pub trait ClassIndex: Foreground {
    /// The class of the pixel.
    fn class(self) -> u32;
}

macro_rules! class_index {
    ($($t:ty),*) => {$(
        impl ClassIndex for $t {
            #[inline]
            fn class(self) -> u32 { u32::from(self) }
        }
    )*};
}
class_index!(u8, u16, u32);

/// How a class map becomes numbered objects (metadata field `instances`).
///
/// The steps, each with face connectivity (4 neighbours in 2-D, 6 in 3-D):
/// 1. seeds: the connected components of the pixels of `seed_classes`;
/// 2. growth: a pixel of `grow_classes` at distance `t <= grow` from the
///    seeds (counted in steps through `grow_classes`) joins the object of
///    its first neighbour at distance `t - 1`, neighbours taken in the
///    fixed order -z, +z, -y, +y, -x, +x: a seed claims a band of up to
///    `grow` pixels around it, and where two meet the direction decides,
///    which keeps the rule local (a block of an image with `grow + 1`
///    pixels of context around it decides alone);
/// 3. what no seed reached of `grow_classes` forms objects of its own
///    (an object too small for an interior);
/// 4. objects of fewer than `min_size` pixels are removed;
/// 5. with `fill_holes`, background enclosed by one object joins it;
/// 6. objects are numbered `1..=N` in the raster order of their first pixel.
///
/// The default (every class but 0 seeds, nothing else) gives the connected
/// components of the non-background, numbered like
/// [`super::connected_components`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOut {
    /// Classes whose components seed the objects; empty: every class but 0.
    #[serde(default)]
    pub seed_classes: Vec<u32>,
    /// Classes the seeds grow over (a boundary class).
    #[serde(default)]
    pub grow_classes: Vec<u32>,
    /// Growth steps: the widest band of `grow_classes` a seed claims.
    #[serde(default)]
    pub grow: u32,
    /// Whether background regions enclosed by one object join it.
    #[serde(default)]
    pub fill_holes: bool,
    /// Objects of fewer pixels are removed (0 or 1: none).
    #[serde(default)]
    pub min_size: u64,
}

/// The objects of one block of a larger class map, before sizes, holes and
/// numbering (steps 1-3 of [`ReadOut`]), as [`ReadOut::block_objects`]
/// finds them.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockObjects {
    /// The block's pixels (without its context) labelled by the
    /// components of the read-out's graph within the block, `1..=count` in
    /// the raster order of their first pixel; 0: no object.
    pub labels: ArrayD<u32>,
    /// The number of components.
    pub count: u32,
    /// Per axis, the block's first and last slice along it: whether the
    /// pixel's object continues into the pixel across that face (as far as
    /// this block can tell: a link from the pixel across is known to the
    /// block across, which reports it on its own face).
    pub faces: Vec<(ArrayD<bool>, ArrayD<bool>)>,
}

/// Why `text` is not a read-out, naming the field where one is at fault:
/// serde's own message gave a line and column of a one-line text
/// ("invalid value: integer `-3`, expected u32 at line 1 column 11").
fn explain(text: &str, error: &serde_json::Error) -> String {
    let fields = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text);
    if let Ok(fields) = fields {
        for (name, value) in fields {
            let alone =
                serde_json::Value::Object([(name.clone(), value.clone())].into_iter().collect());
            if let Err(e) = serde_json::from_value::<ReadOut>(alone) {
                let why = e.to_string();
                let why = why.split(" at line ").next().unwrap_or_default();
                return format!("instances.{name} = {value}: {why}");
            }
        }
    }
    format!("is not a read-out (a JSON object of seed_classes, grow_classes, grow, fill_holes, min_size): {error}")
}

/// What a class is to the read-out.
const NONE: u8 = 0;
const SEED: u8 = 1;
const GROW: u8 = 2;
/// Distance of a pixel no seed reaches (or that is not a grow pixel).
const FAR: u32 = u32::MAX;

impl ReadOut {
    /// Checks the read-out against a model with `classes` label values.
    ///
    /// # Errors
    /// A message naming the field that is out of bounds.
    pub fn check(&self, classes: usize) -> std::result::Result<(), String> {
        self.check_classes(classes)?;
        if self.grow > MAX_GROW {
            return Err(format!(
                "instances.grow is {}, at most {MAX_GROW} is supported",
                self.grow
            ));
        }
        Ok(())
    }

    /// [`ReadOut::check`] less the bound on growth, which only a block-wise
    /// read-out needs (its context): growth in one piece is a breadth-first
    /// search, its cost the same at any number of steps, and `object_size`
    /// scales a model's growth with the objects (5 steps at a model's
    /// 24 px are 85 at 400 px).
    fn check_classes(&self, classes: usize) -> std::result::Result<(), String> {
        for (name, list) in [
            ("seed_classes", &self.seed_classes),
            ("grow_classes", &self.grow_classes),
        ] {
            if let Some(c) = list.iter().find(|&&c| c as usize >= classes) {
                return Err(format!(
                    "instances.{name} names class {c}, but the labels are 0..{}",
                    classes.saturating_sub(1)
                ));
            }
        }
        // Class 0 is the background: seeds of it make one object of all
        // the background (growing into it, a grow class 0, is a dilation).
        if self.seed_classes.contains(&0) {
            return Err(
                "instances.seed_classes names class 0, the background: seeds are object classes"
                    .to_owned(),
            );
        }
        if let Some(c) = self
            .grow_classes
            .iter()
            .find(|c| self.seed_classes.contains(c))
        {
            return Err(format!(
                "instances: class {c} is both a seed class and a grow class"
            ));
        }
        if let Some(c) = self
            .grow_classes
            .iter()
            .find(|&&c| self.seed_classes.is_empty() && c != 0)
        {
            return Err(format!(
                "instances: grow_classes names class {c} but seed_classes is empty, which makes \
                 every class but 0 a seed (class {c} too): name the seed classes"
            ));
        }
        Ok(())
    }

    /// A read-out from its JSON text (the metadata's `instances` field),
    /// checked against the largest label type (65536 classes).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`read_out`) naming what does not parse
    /// or is out of bounds.
    pub fn from_json(text: &str) -> Result<Self> {
        let invalid = |message: String| Error::InvalidArgument {
            argument: "read_out",
            message,
        };
        let read_out: Self = serde_json::from_str(text).map_err(|e| invalid(explain(text, &e)))?;
        read_out.check(1 << 16).map_err(invalid)?;
        Ok(read_out)
    }

    /// The read-out as JSON text, as [`ReadOut::from_json`] reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether this is the default: the components of the non-background.
    pub fn is_components(&self) -> bool {
        self.seed_classes.is_empty()
            && self.grow_classes.is_empty()
            && !self.fill_holes
            && self.min_size <= 1
    }

    /// The context a block needs on each side to find its objects alone
    /// ([`ReadOut::block_objects`]).
    pub fn context(&self) -> usize {
        if self.grow_classes.is_empty() {
            1
        } else {
            self.grow as usize + 1
        }
    }

    /// What `class` is to this read-out.
    fn kind(&self, class: u32) -> u8 {
        if self.grow_classes.contains(&class) {
            GROW
        } else if self.seed_classes.contains(&class) || self.seed_classes.is_empty() && class != 0 {
            SEED
        } else {
            NONE
        }
    }

    /// The kind of each pixel of `classes`, in C order.
    fn kinds<L: ClassIndex>(&self, classes: &ArrayViewD<'_, L>, stop: Stop<'_>) -> Result<Vec<u8>> {
        // A table for small class values keeps the per-pixel lookup cheap.
        let table: Vec<u8> = (0..256u32).map(|c| self.kind(c)).collect();
        let mut kinds: Vec<u8> =
            memory::try_filled(classes.len(), "image", "the instance read-out")?;
        for (i, (k, c)) in kinds.iter_mut().zip(classes.iter()).enumerate() {
            stop.check_at(i)?;
            let c = c.class();
            *k = table
                .get(c as usize)
                .copied()
                .unwrap_or_else(|| self.kind(c));
        }
        Ok(kinds)
    }

    /// The objects of `classes` (any layout, any rank; 2 and 3 in use):
    /// the instance ids (0 background, `1..=N`) in C order and `N`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`image`) when the working memory cannot
    /// be allocated or there are more objects than a `u32` numbers;
    /// (`read_out`) for a read-out [`ReadOut::check`] refuses other than
    /// for its growth (a struct built by hand: a class both seed and grow).
    pub fn apply<L: ClassIndex>(&self, classes: ArrayViewD<'_, L>) -> Result<(ArrayD<u32>, usize)> {
        self.apply_cancellable(classes, None)
    }

    /// [`ReadOut::apply`], returning [`Error::Cancelled`] within
    /// milliseconds once `cancel` is set.
    ///
    /// # Errors
    /// As [`ReadOut::apply`], and [`Error::Cancelled`].
    pub fn apply_cancellable<L: ClassIndex>(
        &self,
        classes: ArrayViewD<'_, L>,
        cancel: Option<&AtomicBool>,
    ) -> Result<(ArrayD<u32>, usize)> {
        let stop = Stop(cancel);
        self.check_classes(1 << 16)
            .map_err(|message| Error::InvalidArgument {
                argument: "read_out",
                message,
            })?;
        if self.is_components() {
            // The same objects in the same order (tested), without the
            // growth bookkeeping: twice as fast.
            return super::connected_components_cancellable(classes, cancel);
        }
        let shape = classes.shape().to_vec();
        let kinds = self.kinds(&classes, stop)?;
        let grid = Grid::new(&shape);
        let no_context = vec![(0, 0); shape.len()];
        let links = Links::new(self, &grid, &kinds, stop)?;
        let (mut labels, count) = Self::graph(&links, &no_context, stop)?;
        drop(links);
        drop(kinds);
        if self.min_size > 1 {
            stop.check()?;
            remove_small(&mut labels, count, self.min_size)?;
        }
        if self.fill_holes {
            fill_holes(&grid, &mut labels, stop)?;
        }
        stop.check()?;
        let count = renumber(&mut labels, count)?;
        let array = ArrayD::from_shape_vec(IxDyn(&shape), labels)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((array, count as usize))
    }

    /// Steps 1-3 for one block of a larger class map: `classes` is the
    /// block with `context[axis] = (before, after)` pixels of context
    /// around it (less at the map's faces; at least
    /// [`ReadOut::context`] elsewhere). The objects of a whole map are the
    /// blocks' objects joined across the faces where either side says so
    /// (see [`BlockObjects::faces`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`context`) when the context does not fit
    /// in `classes`; as [`ReadOut::apply`] otherwise.
    pub fn block_objects<L: ClassIndex>(
        &self,
        classes: ArrayViewD<'_, L>,
        context: &[(usize, usize)],
    ) -> Result<BlockObjects> {
        self.block_objects_cancellable(classes, context, None)
    }

    /// [`ReadOut::block_objects`], returning [`Error::Cancelled`] within
    /// milliseconds once `cancel` is set.
    ///
    /// # Errors
    /// As [`ReadOut::block_objects`], and [`Error::Cancelled`].
    pub fn block_objects_cancellable<L: ClassIndex>(
        &self,
        classes: ArrayViewD<'_, L>,
        context: &[(usize, usize)],
        cancel: Option<&AtomicBool>,
    ) -> Result<BlockObjects> {
        let stop = Stop(cancel);
        let shape = classes.shape().to_vec();
        if context.len() != shape.len()
            || context
                .iter()
                .zip(&shape)
                .any(|(&(a, b), &n)| a.checked_add(b).is_none_or(|c| c > n))
        {
            return Err(Error::InvalidArgument {
                argument: "context",
                message: format!("{context:?} does not fit in a block of shape {shape:?}"),
            });
        }
        let kinds = self.kinds(&classes, stop)?;
        let grid = Grid::new(&shape);
        // One growth for the block's objects and its faces.
        let links = Links::new(self, &grid, &kinds, stop)?;
        let (labels, count) = Self::graph(&links, context, stop)?;
        stop.check()?;
        let core: Vec<usize> = shape
            .iter()
            .zip(context)
            .map(|(&n, &(a, b))| n - a - b)
            .collect();
        let labels = ArrayD::from_shape_vec(IxDyn(&core), labels)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut faces = Vec::with_capacity(shape.len());
        for axis in 0..shape.len() {
            let mut sides = Vec::with_capacity(2);
            for (last, across) in [(false, context[axis].0 > 0), (true, context[axis].1 > 0)] {
                let mut face_shape = core.clone();
                face_shape.remove(axis);
                let mut flags = ArrayD::<bool>::from_elem(IxDyn(&face_shape), false);
                if across && core[axis] > 0 {
                    let at = if last { core[axis] - 1 } else { 0 };
                    let stride = grid.strides[axis];
                    for (index, flag) in flags.indexed_iter_mut() {
                        let mut p = 0usize;
                        let mut k = 0usize;
                        for (a, (&s, &(before, _))) in grid.strides.iter().zip(context).enumerate()
                        {
                            let c = if a == axis {
                                at
                            } else {
                                k += 1;
                                index[k - 1]
                            };
                            p += (c + before) * s;
                        }
                        let q = if last { p + stride } else { p - stride };
                        *flag = links.joined_one_way(p, q);
                    }
                }
                sides.push(flags);
            }
            let high = sides.pop().unwrap_or_default();
            let low = sides.pop().unwrap_or_default();
            faces.push((low, high));
        }
        Ok(BlockObjects {
            labels,
            count,
            faces,
        })
    }

    /// The components of the read-out's graph on the pixels of `grid`
    /// within `context` (steps 1-3), in C order over the block.
    fn graph(
        links: &Links<'_>,
        context: &[(usize, usize)],
        stop: Stop<'_>,
    ) -> Result<(Vec<u32>, u32)> {
        let (grid, kinds) = (links.grid, links.kinds);
        let core: Vec<usize> = grid
            .shape
            .iter()
            .zip(context)
            .map(|(&n, &(a, b))| n - a - b)
            .collect();
        let whole = context.iter().all(|&(a, b)| a == 0 && b == 0);
        let core_strides = c_strides(&core);
        // The pixel of the grid at flat index `i` of the block.
        let outer = |i: usize| -> usize {
            if whole {
                return i;
            }
            core_strides
                .iter()
                .zip(&core)
                .zip(grid.strides.iter().zip(context))
                .map(|((&cs, &n), (&s, &(before, _)))| ((i / cs) % n + before) * s)
                .sum()
        };
        let count = memory::element_count(&core, "image")?;
        label_graph(
            &core,
            (0..count).map(|i| kinds[outer(i)] != NONE),
            |i, j| links.joined(outer(i), outer(j)),
            stop,
        )
    }
}

/// The growth of one read-out over a grid: each pixel's distance from the
/// seeds, and with it the link of each grown pixel.
struct Links<'a> {
    grid: &'a Grid,
    kinds: &'a [u8],
    distance: Vec<u32>,
}

impl<'a> Links<'a> {
    fn new(read_out: &ReadOut, grid: &'a Grid, kinds: &'a [u8], stop: Stop<'_>) -> Result<Self> {
        let mut distance: Vec<u32> =
            memory::try_filled(kinds.len(), "image", "the growth distances")?;
        let mut frontier: Vec<usize> = Vec::new();
        for (i, (&k, d)) in kinds.iter().zip(distance.iter_mut()).enumerate() {
            *d = if k == SEED { 0 } else { FAR };
            if k == SEED && read_out.grow > 0 {
                frontier.push(i);
            }
        }
        if !read_out.grow_classes.is_empty() {
            for step in 1..=read_out.grow {
                stop.check()?;
                let mut next = Vec::new();
                for (n, &i) in frontier.iter().enumerate() {
                    stop.check_at(n)?;
                    grid.neighbours(i, |j| {
                        if kinds[j] == GROW && distance[j] == FAR {
                            distance[j] = step;
                            next.push(j);
                        }
                    });
                }
                if next.is_empty() {
                    break;
                }
                frontier = next;
            }
        }
        Ok(Self {
            grid,
            kinds,
            distance,
        })
    }

    /// The neighbour a grown pixel joins: its first at one step less.
    fn link(&self, i: usize) -> Option<usize> {
        let d = self.distance[i];
        if d == 0 || d == FAR {
            return None;
        }
        let mut found = None;
        self.grid.neighbours(i, |j| {
            if found.is_none() && self.distance[j] == d - 1 {
                found = Some(j);
            }
        });
        found
    }

    /// Whether `i` joins its neighbour `j` by its own kind or link: both
    /// seeds, both grow pixels no seed reached, or `j` is `i`'s link.
    fn joined_one_way(&self, i: usize, j: usize) -> bool {
        let (ki, kj) = (self.kinds[i], self.kinds[j]);
        if ki == NONE || kj == NONE {
            return false;
        }
        let (di, dj) = (self.distance[i], self.distance[j]);
        (ki == SEED && kj == SEED)
            || (ki == GROW && kj == GROW && di == FAR && dj == FAR)
            || self.link(i) == Some(j)
    }

    /// Whether neighbours `i` and `j` belong to one object.
    fn joined(&self, i: usize, j: usize) -> bool {
        self.joined_one_way(i, j) || self.link(j) == Some(i)
    }
}

/// Face neighbours of flat C-order indices.
struct Grid {
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl Grid {
    fn new(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            strides: c_strides(shape),
        }
    }

    /// Calls `f` with each face neighbour of `i`, in the order -z, +z, -y,
    /// +y, -x, +x (outer axes first): the order growth breaks ties in.
    #[inline]
    fn neighbours(&self, i: usize, mut f: impl FnMut(usize)) {
        for (&n, &stride) in self.shape.iter().zip(&self.strides) {
            let coordinate = (i / stride) % n;
            if coordinate > 0 {
                f(i - stride);
            }
            if coordinate + 1 < n {
                f(i + stride);
            }
        }
    }

    /// Whether `i` lies on a face of the array.
    #[inline]
    fn on_border(&self, i: usize) -> bool {
        self.shape.iter().zip(&self.strides).any(|(&n, &stride)| {
            let coordinate = (i / stride) % n;
            coordinate == 0 || coordinate + 1 == n
        })
    }
}

/// Sets the pixels of objects smaller than `min_size` to background.
fn remove_small(labels: &mut [u32], count: u32, min_size: u64) -> Result<()> {
    let mut sizes: Vec<u64> = memory::try_filled(count as usize + 1, "image", "the object sizes")?;
    for &l in labels.iter() {
        sizes[l as usize] += 1;
    }
    for l in labels.iter_mut() {
        if sizes[*l as usize] < min_size {
            *l = 0;
        }
    }
    Ok(())
}

/// Joins every background region that does not touch the array's faces and
/// borders exactly one object to that object.
fn fill_holes(grid: &Grid, labels: &mut [u32], stop: Stop<'_>) -> Result<()> {
    let shape = &grid.shape;
    let (regions, count) = label_graph(shape, labels.iter().map(|&l| l == 0), |_, _| true, stop)?;
    if count == 0 {
        return Ok(());
    }
    const OPEN: u32 = u32::MAX;
    // Per region: 0 while no object borders it, the object's id when one
    // does, OPEN when it touches the array's faces or several objects.
    let mut owner: Vec<u32> = memory::try_filled(count as usize + 1, "image", "the hole search")?;
    for (i, &r) in regions.iter().enumerate() {
        stop.check_at(i)?;
        if r == 0 || owner[r as usize] == OPEN {
            continue;
        }
        if grid.on_border(i) {
            owner[r as usize] = OPEN;
            continue;
        }
        let mut o = owner[r as usize];
        grid.neighbours(i, |j| {
            let l = labels[j];
            if l != 0 && o != OPEN {
                o = if o == 0 || o == l { l } else { OPEN };
            }
        });
        owner[r as usize] = o;
    }
    for (l, &r) in labels.iter_mut().zip(&regions) {
        if r != 0 {
            let o = owner[r as usize];
            if o != 0 && o != OPEN {
                *l = o;
            }
        }
    }
    Ok(())
}

/// Numbers the objects of `labels` (ids up to `count`) `1..=N` in the
/// raster order of their first pixel; returns `N`.
fn renumber(labels: &mut [u32], count: u32) -> Result<u32> {
    let mut number: Vec<u32> = memory::try_filled(count as usize + 1, "image", "the numbering")?;
    let mut next = 0u32;
    for l in labels.iter_mut() {
        if *l == 0 {
            continue;
        }
        let slot = &mut number[*l as usize];
        if *slot == 0 {
            next += 1;
            *slot = next;
        }
        *l = *slot;
    }
    Ok(next)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
