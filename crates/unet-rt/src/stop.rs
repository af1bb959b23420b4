//! A caller's cancellation flag as long loops over pixels look at it: the
//! instance read-out (half a second per 10 megapixels) and the percentile
//! statistics of an image (a 10^10-pixel view took 28 s) waited for the
//! whole loop before Ctrl-C took effect.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// The flag, looked at between the steps of a long computation and every
/// [`Stop::EVERY`] pixels within them; `Stop(None)` never stops.
#[derive(Clone, Copy, Default)]
pub(crate) struct Stop<'a>(pub(crate) Option<&'a AtomicBool>);

impl Stop<'_> {
    /// Pixels between looks at the flag: milliseconds of work.
    pub(crate) const EVERY: usize = 1 << 16;

    /// [`Error::Cancelled`] once the flag is set.
    pub(crate) fn check(self) -> Result<()> {
        match self.0 {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }

    /// [`Stop::check`] at every [`Stop::EVERY`]-th pixel.
    #[inline]
    pub(crate) fn check_at(self, pixel: usize) -> Result<()> {
        if pixel % Self::EVERY == 0 {
            self.check()
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_flag_stops_at_the_next_look() {
        let flag = AtomicBool::new(false);
        let stop = Stop(Some(&flag));
        assert!(stop.check().is_ok() && stop.check_at(0).is_ok());
        flag.store(true, Ordering::Relaxed);
        assert!(matches!(stop.check(), Err(Error::Cancelled)));
        assert!(matches!(stop.check_at(Stop::EVERY), Err(Error::Cancelled)));
        // Between looks the flag is not read.
        assert!(stop.check_at(1).is_ok());
        assert!(Stop(None).check().is_ok());
    }
}
