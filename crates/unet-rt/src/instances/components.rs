//! Connected components of a mask.
//!
//! Pure Rust on `ndarray` (no tensors), so that front ends can turn labels
//! into numbered objects without libtorch. The numbering is exactly that of
//! `scipy.ndimage.label` with its default structure, which the training
//! metrics use (`training/metrics.py`), so instance counts and AP scores
//! computed from the runtime's output match the ones recorded at training.
//!
//! ```
//! use ndarray::array;
//! let mask = array![[1u8, 1, 0], [0, 0, 1], [1, 0, 1]];
//! let (labels, count) = unet_rt::instances::connected_components(mask.view().into_dyn()).unwrap();
//! assert_eq!(count, 3);
//! assert_eq!(labels.into_raw_vec_and_offset().0, vec![1, 1, 0, 0, 0, 2, 3, 0, 2]);
//! ```

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use std::sync::atomic::AtomicBool;

use super::Stop;
use crate::error::{Error, Result};
use crate::geometry::advance_index;

/// An element of a mask: foreground when nonzero (or `true`).
pub trait Foreground: Copy {
    /// Whether the pixel belongs to an object.
    fn is_foreground(self) -> bool;
}

impl Foreground for bool {
    #[inline]
    fn is_foreground(self) -> bool {
        self
    }
}

macro_rules! nonzero_foreground {
    ($($t:ty),*) => {$(
        impl Foreground for $t {
            #[inline]
            fn is_foreground(self) -> bool { self != 0 }
        }
    )*};
}
nonzero_foreground!(u8, u16, u32, i32, i64);

/// Labels the connected components of the foreground of `mask` with face
/// connectivity (4 neighbours in 2-D, 6 in 3-D, 2 per axis in general).
///
/// Returns the label image (0 for background, objects numbered `1..=N`) and
/// `N`. Objects are numbered in the raster (C) order of each one's first
/// pixel, exactly as `scipy.ndimage.label(mask)` numbers them. The mask may
/// have any memory layout; any rank works, 2 and 3 are the ones in use.
///
/// # Errors
/// [`Error::InvalidArgument`] when the mask has more components than a
/// `u32` label holds (only possible beyond four billion pixels).
pub fn connected_components<M: Foreground>(
    mask: ArrayViewD<'_, M>,
) -> Result<(ArrayD<u32>, usize)> {
    connected_components_cancellable(mask, None)
}

/// [`connected_components`], returning [`Error::Cancelled`] within
/// milliseconds once `cancel` is set.
///
/// # Errors
/// As [`connected_components`], and [`Error::Cancelled`].
pub fn connected_components_cancellable<M: Foreground>(
    mask: ArrayViewD<'_, M>,
    cancel: Option<&AtomicBool>,
) -> Result<(ArrayD<u32>, usize)> {
    let shape = mask.shape().to_vec();
    let (labels, count) = label_graph(
        &shape,
        mask.iter().map(|m| m.is_foreground()),
        |_, _| true,
        Stop(cancel),
    )?;
    let array =
        ArrayD::from_shape_vec(IxDyn(&shape), labels).map_err(|e| Error::InvalidArgument {
            argument: "mask",
            message: e.to_string(),
        })?;
    Ok((array, count as usize))
}

/// The connected components of a graph on the pixels of `shape`: its nodes
/// are the pixels `members` yields `true` for (in C order), and two member
/// pixels that are face neighbours are joined when `joined(pixel, earlier)`
/// says so (flat C-order indices; `earlier` precedes `pixel`). Components
/// are numbered as [`connected_components`] numbers them, in the raster
/// order of their first pixel. Returns the labels in C order and their
/// count, or [`Error::Cancelled`] once `stop` says so.
pub(super) fn label_graph(
    shape: &[usize],
    members: impl Iterator<Item = bool>,
    mut joined: impl FnMut(usize, usize) -> bool,
    stop: Stop<'_>,
) -> Result<(Vec<u32>, u32)> {
    let foreground = members;
    // Provisional labels in raster order; `parent` is a union-find forest over
    // them in which every parent is smaller than its child (union by minimum).
    let mut labels: Vec<u32> = Vec::new();
    let len = foreground.size_hint().0;
    labels
        .try_reserve_exact(len)
        .map_err(|_| Error::InvalidArgument {
            argument: "image",
            message: format!(
                "labelling {len} pixels needs {}, which cannot be allocated",
                crate::memory::format_bytes(crate::memory::bytes_of::<u32>(len))
            ),
        })?;
    let mut parent: Vec<u32> = vec![0];
    let strides = c_strides(shape);
    let mut index = vec![0usize; shape.len()];
    for (flat, is_foreground) in foreground.enumerate() {
        stop.check_at(flat)?;
        let mut label = 0u32;
        if is_foreground {
            // The one earlier face neighbour along each axis.
            for (axis, &stride) in strides.iter().enumerate() {
                if index[axis] == 0 {
                    continue;
                }
                let neighbour = labels[flat - stride];
                if neighbour == 0 || !joined(flat, flat - stride) {
                    continue;
                }
                label = if label == 0 {
                    find(&mut parent, neighbour)
                } else {
                    union(&mut parent, label, neighbour)
                };
            }
            if label == 0 {
                label = u32::try_from(parent.len()).map_err(|_| too_many())?;
                if label == u32::MAX {
                    return Err(too_many());
                }
                parent.push(label);
            }
        }
        labels.push(label);
        advance_index(&mut index, shape);
    }
    // A component's first pixel in raster order has no earlier neighbour in
    // it, so it opened the component's smallest provisional label, which is
    // the root. Numbering roots in increasing order therefore numbers the
    // components in the raster order of their first pixels. Parents are
    // smaller than children, so one forward sweep resolves every label.
    let mut count = 0u32;
    for l in 1..parent.len() {
        let p = parent[l] as usize;
        if p == l {
            count += 1;
            parent[l] = count;
        } else {
            // `p < l`, already replaced by its final number.
            parent[l] = parent[p];
        }
    }
    for label in &mut labels {
        *label = parent[*label as usize];
    }
    Ok((labels, count))
}

pub(super) fn too_many() -> Error {
    Error::InvalidArgument {
        argument: "mask",
        message: "more connected components than a 32-bit label holds".to_owned(),
    }
}

/// Strides of a C-ordered array of `shape`, in elements.
pub(super) fn c_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

/// The root of `label`, halving the path on the way.
fn find(parent: &mut [u32], mut label: u32) -> u32 {
    while parent[label as usize] != label {
        let grand = parent[parent[label as usize] as usize];
        parent[label as usize] = grand;
        label = grand;
    }
    label
}

/// Joins the trees of `a` (a root) and `b`; returns the new root, the
/// smaller of the two, which keeps every parent smaller than its children.
fn union(parent: &mut [u32], a: u32, b: u32) -> u32 {
    let (ra, rb) = (find(parent, a), find(parent, b));
    let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
    parent[child as usize] = root;
    root
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ndarray::{array, Array3, Dimension};

    /// A plain flood fill that numbers components in raster order of their
    /// first pixel: the definition the union-find must reproduce.
    fn flood_fill(mask: &ArrayD<bool>) -> (ArrayD<u32>, usize) {
        let shape = mask.shape().to_vec();
        let mut out = ArrayD::<u32>::zeros(IxDyn(&shape));
        let mut count = 0u32;
        let coords: Vec<Vec<usize>> = mask
            .indexed_iter()
            .map(|(i, _)| i.slice().to_vec())
            .collect();
        for start in coords {
            if !mask[start.as_slice()] || out[start.as_slice()] != 0 {
                continue;
            }
            count += 1;
            let mut stack = vec![start.clone()];
            out[start.as_slice()] = count;
            while let Some(p) = stack.pop() {
                for axis in 0..shape.len() {
                    for delta in [-1i64, 1] {
                        let v = p[axis] as i64 + delta;
                        if v < 0 || v >= shape[axis] as i64 {
                            continue;
                        }
                        let mut q = p.clone();
                        q[axis] = v as usize;
                        if mask[q.as_slice()] && out[q.as_slice()] == 0 {
                            out[q.as_slice()] = count;
                            stack.push(q);
                        }
                    }
                }
            }
        }
        (out, count as usize)
    }

    /// A small deterministic generator (no dependency for tests).
    fn random_mask(shape: &[usize], seed: u64, density: u64) -> ArrayD<bool> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ArrayD::from_shape_fn(IxDyn(shape), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % 100 < density
        })
    }

    #[test]
    fn numbers_like_scipy_in_2d() {
        // scipy.ndimage.label of this mask gives exactly these numbers: the
        // U-shaped object is found first through its left arm, and its two
        // arms join on the last row.
        let mask = array![
            [1u8, 0, 1, 0, 1],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 1],
            [0, 0, 0, 1, 1]
        ];
        let (labels, n) = connected_components(mask.view().into_dyn()).unwrap();
        let want = array![
            [1u32, 0, 1, 0, 2],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 3],
            [0, 0, 0, 3, 3]
        ];
        assert_eq!(n, 3);
        assert_eq!(labels, want.into_dyn());
    }

    #[test]
    fn diagonal_pixels_are_separate_objects() {
        let mask = array![[true, false], [false, true]];
        let (labels, n) = connected_components(mask.view().into_dyn()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(labels, array![[1u32, 0], [0, 2]].into_dyn());
    }

    #[test]
    fn joins_across_slices_in_3d() {
        let mut mask = Array3::<u8>::zeros((3, 3, 3));
        mask[[0, 0, 0]] = 1;
        mask[[1, 0, 0]] = 1; // face neighbour in z: same object
        mask[[2, 1, 1]] = 1;
        mask[[1, 1, 0]] = 1; // a face neighbour of [1,0,0]; only an edge away from [2,1,1]
        let (labels, n) = connected_components(mask.view().into_dyn()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(labels[[0, 0, 0]], 1);
        assert_eq!(labels[[1, 1, 0]], 1);
        assert_eq!(labels[[2, 1, 1]], 2);
    }

    #[test]
    fn equals_flood_fill_on_random_masks() {
        for (seed, shape) in [
            (1u64, vec![37usize, 41]),
            (2, vec![64, 9]),
            (3, vec![9, 11, 13]),
            (4, vec![1, 50]),
            (5, vec![5, 5, 5, 5]),
        ] {
            for density in [20u64, 50, 60, 80] {
                let mask = random_mask(&shape, seed * 100 + density, density);
                let (got, n) = connected_components(mask.view()).unwrap();
                let (want, m) = flood_fill(&mask);
                assert_eq!(n, m, "shape {shape:?} density {density}");
                assert_eq!(got, want, "shape {shape:?} density {density}");
            }
        }
    }

    #[test]
    fn any_memory_layout_and_empty_masks() {
        let mask = random_mask(&[23, 31], 7, 55);
        let (want, n) = connected_components(mask.view()).unwrap();
        // The same logical mask stored transposed (Fortran order).
        let transposed = mask.t().as_standard_layout().to_owned();
        let (got, m) = connected_components(transposed.t().into_dyn()).unwrap();
        assert_eq!((got, m), (want, n));
        let (labels, n) =
            connected_components(ArrayD::<bool>::from_elem(IxDyn(&[4, 4]), false).view()).unwrap();
        assert_eq!(n, 0);
        assert!(labels.iter().all(|&l| l == 0));
        let (_, n) =
            connected_components(ArrayD::<bool>::from_elem(IxDyn(&[0, 4]), true).view()).unwrap();
        assert_eq!(n, 0);
    }
}
