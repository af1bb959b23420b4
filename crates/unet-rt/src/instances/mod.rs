//! Instances from a class map.
//!
//! Pure Rust on `ndarray` (no tensors), so that front ends can turn labels
//! into numbered objects without libtorch.
//!
//! - [`connected_components`]: the components of a mask, numbered exactly
//!   as `scipy.ndimage.label` numbers them (the training metrics use it).
//! - [`ReadOut`]: a model's instance read-out: seeds (connected components
//!   of some classes, e.g. nucleus interiors) grown over other classes
//!   (e.g. a boundary class), small objects removed, holes filled. Without
//!   a read-out in its metadata a model's instances are the connected
//!   components of its non-background classes.

mod components;
mod readout;

use crate::stop::Stop;

pub use components::{connected_components, connected_components_cancellable, Foreground};
pub use readout::{BlockObjects, ClassIndex, ReadOut, MAX_GROW};
