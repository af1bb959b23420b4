//! How long the network's forward passes take: what probing's time-based
//! decisions read (whether a larger probe, or one more check, fits in the
//! rest of its budget).
//!
//! The estimate is the lower median of the passes on the largest input
//! measured, not the slowest pass so far: the first pass of a TorchScript
//! module (its profiling run) or one pass that shared the machine with
//! other work took twice the time of the rest, and read as the cost of
//! every pass to come it made FCN-ResNet50's probe stop early (its tiles
//! then called approximate) on a busy machine now and then.

use std::time::Duration;

/// The times of the passes probing has run.
#[derive(Debug, Default)]
pub(super) struct PassTimes {
    /// Values of the largest input a pass succeeded on.
    largest: u128,
    /// The times of the passes that succeeded on inputs of `largest`
    /// values.
    on_largest: Vec<Duration>,
    /// The slowest pass of all, its input shape and time: said when
    /// probing gives up, so that a slow network is told from a reach that
    /// never settles.
    slowest: Option<(Vec<i64>, Duration)>,
}

impl PassTimes {
    /// Records a pass on an input of `shape` (`values` values) that took
    /// `took`; `succeeded` is false where the network failed on it (most
    /// often its size, found before most of the work is done: no measure
    /// of a pass that returns).
    pub(super) fn record(&mut self, shape: &[i64], values: u128, took: Duration, succeeded: bool) {
        if self
            .slowest
            .as_ref()
            .is_none_or(|(_, slowest)| took > *slowest)
        {
            self.slowest = Some((shape.to_vec(), took));
        }
        if !succeeded || values < self.largest {
            return;
        }
        if values > self.largest {
            self.largest = values;
            self.on_largest.clear();
        }
        self.on_largest.push(took);
    }

    /// The time a pass on the largest input measured takes: the lower
    /// median of its passes (the faster of two, the middle of three), zero
    /// before any pass succeeded.
    pub(super) fn typical(&self) -> Duration {
        let mut times = self.on_largest.clone();
        times.sort_unstable();
        times
            .get(times.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// The slowest pass of all: its input shape and time.
    pub(super) fn slowest(&self) -> Option<&(Vec<i64>, Duration)> {
        self.slowest.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn nothing_measured_is_zero() {
        let times = PassTimes::default();
        assert_eq!(times.typical(), Duration::ZERO);
        assert!(times.slowest().is_none());
    }

    #[test]
    fn one_slow_pass_of_two_or_three_is_not_the_estimate() {
        let mut times = PassTimes::default();
        times.record(&[1, 3, 256, 256], 196_608, ms(900), true);
        assert_eq!(times.typical(), ms(900));
        times.record(&[1, 3, 256, 256], 196_608, ms(350), true);
        assert_eq!(times.typical(), ms(350));
        times.record(&[1, 3, 256, 256], 196_608, ms(400), true);
        assert_eq!(times.typical(), ms(400));
        assert_eq!(times.slowest(), Some(&(vec![1, 3, 256, 256], ms(900))));
    }

    #[test]
    fn the_largest_input_sets_the_estimate_whatever_came_before() {
        let mut times = PassTimes::default();
        // The first pass of all, a profiling run on a small input.
        times.record(&[1, 3, 64, 64], 12_288, ms(330), true);
        times.record(&[1, 3, 64, 64], 12_288, ms(60), true);
        assert_eq!(times.typical(), ms(60));
        times.record(&[1, 3, 128, 128], 49_152, ms(140), true);
        assert_eq!(times.typical(), ms(140));
        // Smaller inputs after a larger one leave it the estimate.
        times.record(&[1, 3, 64, 64], 12_288, ms(50), true);
        assert_eq!(times.typical(), ms(140));
        assert_eq!(times.slowest(), Some(&(vec![1, 3, 64, 64], ms(330))));
    }

    #[test]
    fn failed_passes_are_no_estimate_but_can_be_the_slowest() {
        let mut times = PassTimes::default();
        times.record(&[1, 1, 64, 64], 4096, ms(20), true);
        times.record(&[1, 1, 65, 65], 4225, ms(5), false);
        assert_eq!(times.typical(), ms(20));
        times.record(&[1, 1, 2048, 2048], 4_194_304, ms(3000), false);
        assert_eq!(times.typical(), ms(20));
        assert_eq!(times.slowest(), Some(&(vec![1, 1, 2048, 2048], ms(3000))));
    }

    #[test]
    fn inputs_of_equal_values_share_an_estimate() {
        let mut times = PassTimes::default();
        times.record(&[1, 1, 512, 1024], 524_288, ms(3400), true);
        times.record(&[2, 1, 512, 512], 524_288, ms(3000), true);
        assert_eq!(times.typical(), ms(3000));
    }
}
