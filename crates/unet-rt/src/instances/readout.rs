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

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use super::components::{c_strides, label_components, too_many};
use crate::error::{Error, Result};
use crate::memory;

/// The most growth steps a read-out may ask for: a band this wide is far
/// beyond any boundary class, and it bounds the context a block-wise
/// read-out needs.
pub const MAX_GROW: u32 = 64;

/// A class map's element: its class index.
pub trait ClassIndex: Copy {
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
/// 2. growth: `grow` times, every pixel of `grow_classes` next to an object
///    joins it (the smallest-numbered one when several meet), so a seed
///    claims a band of up to `grow` pixels around it;
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

/// What a class is to the read-out.
const NONE: u8 = 0;
const SEED: u8 = 1;
const GROW: u8 = 2;

impl ReadOut {
    /// Checks the read-out against a model with `classes` label values.
    ///
    /// # Errors
    /// A message naming the field that is out of bounds.
    pub fn check(&self, classes: usize) -> std::result::Result<(), String> {
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
        if let Some(c) = self
            .grow_classes
            .iter()
            .find(|c| self.seed_classes.is_empty() && **c != 0 || self.seed_classes.contains(c))
        {
            return Err(format!(
                "instances: class {c} is both a seed class and a grow class"
            ));
        }
        if self.grow > MAX_GROW {
            return Err(format!(
                "instances.grow is {}, at most {MAX_GROW} is supported",
                self.grow
            ));
        }
        Ok(())
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

    /// The objects of `classes` (any layout, any rank; 2 and 3 in use):
    /// the instance ids (0 background, `1..=N`) in C order and `N`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`image`) when the working memory cannot
    /// be allocated or there are more objects than a `u32` numbers.
    pub fn apply<L: ClassIndex>(&self, classes: ArrayViewD<'_, L>) -> Result<(ArrayD<u32>, usize)> {
        let shape = classes.shape().to_vec();
        let n = memory::element_count(&shape, "image")?;
        // A table for small class values keeps the per-pixel lookup cheap.
        let table: Vec<u8> = (0..256u32).map(|c| self.kind(c)).collect();
        let kind_of = |c: u32| {
            table
                .get(c as usize)
                .copied()
                .unwrap_or_else(|| self.kind(c))
        };
        let mut kinds: Vec<u8> = memory::try_filled(n, "image", "the instance read-out")?;
        for (k, c) in kinds.iter_mut().zip(classes.iter()) {
            *k = kind_of(c.class());
        }
        let (mut labels, seeds) = label_components(&shape, kinds.iter().map(|&k| k == SEED))?;
        let grid = Grid::new(&shape);
        if self.grow > 0 && !self.grow_classes.is_empty() {
            grow(&grid, &kinds, &mut labels, self.grow);
        }
        let mut count = seeds;
        if kinds.contains(&GROW) {
            let rest = kinds
                .iter()
                .zip(&labels)
                .map(|(&k, &l)| k == GROW && l == 0);
            let (extra, found) = label_components(&shape, rest)?;
            if found > 0 {
                count = seeds
                    .checked_add(found)
                    .filter(|&c| c < u32::MAX)
                    .ok_or_else(too_many)?;
                for (l, &e) in labels.iter_mut().zip(&extra) {
                    if e != 0 {
                        *l = seeds + e;
                    }
                }
            }
        }
        drop(kinds);
        if self.min_size > 1 {
            remove_small(&mut labels, count, self.min_size)?;
        }
        if self.fill_holes {
            fill_holes(&grid, &mut labels)?;
        }
        let count = renumber(&mut labels, count)?;
        let array = ArrayD::from_shape_vec(IxDyn(&shape), labels)
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((array, count as usize))
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

    /// Calls `f` with each face neighbour of `i`.
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

/// `steps` rounds of growth of the labelled pixels over unlabelled `GROW`
/// pixels. A round reads only the labels of the rounds before it, so the
/// result does not depend on the order pixels are visited in.
fn grow(grid: &Grid, kinds: &[u8], labels: &mut [u32], steps: u32) {
    let mut candidates: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == GROW).collect();
    for _ in 0..steps {
        let mut claims: Vec<(usize, u32)> = Vec::new();
        for &i in &candidates {
            if labels[i] != 0 {
                continue;
            }
            let mut best = 0u32;
            grid.neighbours(i, |j| {
                let l = labels[j];
                if l != 0 && (best == 0 || l < best) {
                    best = l;
                }
            });
            if best != 0 {
                claims.push((i, best));
            }
        }
        if claims.is_empty() {
            return;
        }
        for &(i, l) in &claims {
            labels[i] = l;
        }
        candidates.clear();
        for &(i, _) in &claims {
            grid.neighbours(i, |j| {
                if labels[j] == 0 && kinds[j] == GROW {
                    candidates.push(j);
                }
            });
        }
        candidates.sort_unstable();
        candidates.dedup();
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
fn fill_holes(grid: &Grid, labels: &mut [u32]) -> Result<()> {
    let shape = &grid.shape;
    let (regions, count) = label_components(shape, labels.iter().map(|&l| l == 0))?;
    if count == 0 {
        return Ok(());
    }
    const OPEN: u32 = u32::MAX;
    // Per region: 0 while no object borders it, the object's id when one
    // does, OPEN when it touches the array's faces or several objects.
    let mut owner: Vec<u32> = memory::try_filled(count as usize + 1, "image", "the hole search")?;
    for (i, &r) in regions.iter().enumerate() {
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
///
/// # Errors
/// [`Error::InvalidArgument`] (`image`) when the table of `count` ids cannot
/// be allocated.
pub fn renumber(labels: &mut [u32], count: u32) -> Result<u32> {
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
