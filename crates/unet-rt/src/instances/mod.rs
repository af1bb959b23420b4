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

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

pub use components::{connected_components, connected_components_cancellable, Foreground};
pub use readout::{BlockObjects, ClassIndex, ReadOut, MAX_GROW};

/// A caller's cancellation flag, looked at between the steps of a labelling
/// and every [`Stop::EVERY`] pixels within them: Ctrl-C waited for the whole
/// read-out before (half a second per 10 megapixels).
#[derive(Clone, Copy, Default)]
struct Stop<'a>(Option<&'a AtomicBool>);

impl Stop<'_> {
    /// Pixels between looks at the flag: milliseconds of work.
    const EVERY: usize = 1 << 16;

    /// [`Error::Cancelled`] once the flag is set.
    fn check(self) -> Result<()> {
        match self.0 {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }

    /// [`Stop::check`] at every [`Stop::EVERY`]-th pixel.
    #[inline]
    fn check_at(self, pixel: usize) -> Result<()> {
        if pixel % Self::EVERY == 0 {
            self.check()
        } else {
            Ok(())
        }
    }
}
