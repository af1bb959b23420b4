//! Raw pixels to network input, as the model's metadata prescribes.

use ndarray::ArrayViewD;

use crate::error::{Error, Result};
use crate::metadata::Normalization;
use crate::pixel::Pixel;

/// Above this many pixels, percentiles of float images are taken from an
/// evenly strided sample of this size instead of every pixel, which bounds
/// the memory of normalisation (64 MiB) on images of any size. 8- and 16-bit
/// images are always exact (histogram).
pub const PERCENTILE_SAMPLE: usize = 1 << 24;

/// An affine map `x * scale + shift` resolved for one image.
///
/// The map is kept in `f64` too, so that `f64` pixels are normalized before
/// they are narrowed: any finite `f64` image then gives finite network
/// input, even beyond the `f32` range (see [`Affine::apply_f64`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Multiplier.
    pub scale: f32,
    /// Added after scaling.
    pub shift: f32,
    scale64: f64,
    shift64: f64,
}

impl Affine {
    /// The identity map.
    pub const IDENTITY: Self = Self {
        scale: 1.0,
        shift: 0.0,
        scale64: 1.0,
        shift64: 0.0,
    };

    /// The map `x * scale + shift`.
    pub fn new(scale: f64, shift: f64) -> Self {
        Self {
            scale: scale as f32,
            shift: shift as f32,
            scale64: scale,
            shift64: shift,
        }
    }

    /// Applies the map to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        x.mul_add(self.scale, self.shift)
    }

    /// Applies the map to an `f64` value in `f64`, then narrows it to `f32`,
    /// saturating at the largest finite `f32` (NaN stays NaN).
    #[inline]
    pub fn apply_f64(self, x: f64) -> f32 {
        let y = x.mul_add(self.scale64, self.shift64);
        y.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
    }

    /// Whether the map sends finite values to finite values.
    pub fn is_finite(self) -> bool {
        self.scale.is_finite()
            && self.shift.is_finite()
            && self.scale64.is_finite()
            && self.shift64.is_finite()
    }
}

/// Resolves `norm` for an image whose pixels `values` yields (as f64).
/// Percentile normalisation needs the whole image's distribution; the others
/// do not look at the pixels.
pub fn resolve(norm: &Normalization, values: impl Iterator<Item = f64>) -> Affine {
    match *norm {
        Normalization::None => Affine::IDENTITY,
        Normalization::Scale { factor } => Affine::new(factor, 0.0),
        // Metadata validation guarantees a finite std > 0.
        Normalization::Zscore { mean, std } => Affine::new(1.0 / std, -mean / std),
        Normalization::Percentile { low, high } => {
            let mut sorted: Vec<f64> = values.collect();
            sorted.sort_by(f64::total_cmp);
            affine_from_range(percentile(&sorted, low), percentile(&sorted, high))
        }
    }
}

/// Resolves `norm` for an image view of any pixel type, reading it once
/// without copying it: an exact histogram for 8- and 16-bit pixels, a
/// selection over (at most [`PERCENTILE_SAMPLE`]) values for floats.
pub fn resolve_view<T: Pixel>(norm: &Normalization, image: &ArrayViewD<'_, T>) -> Affine {
    match range_of(norm, image) {
        Some((lo, hi)) => affine_from_range(lo, hi),
        None => resolve(norm, std::iter::empty()),
    }
}

/// For percentile normalization, the pixel values it maps to 0 and 1 in
/// `image` (as [`resolve_view`] computes them); `None` for the other kinds.
/// Pass them as [`crate::Options::input_range`] to segment pieces of
/// `image` as the whole.
///
/// # Errors
/// [`Error::InvalidArgument`] (`image`) when a percentile is NaN or
/// infinite: the image holds such values, and no input range made of them
/// normalizes anything.
pub fn percentile_range<T: Pixel>(
    norm: &Normalization,
    image: &ArrayViewD<'_, T>,
) -> Result<Option<(f64, f64)>> {
    match range_of(norm, image) {
        Some((lo, hi)) if !(lo.is_finite() && hi.is_finite()) => Err(Error::InvalidArgument {
            argument: "image",
            message: format!(
                "its percentiles are ({lo}, {hi}): it holds NaN or infinite values (or values beyond the range \
                 of its dtype)"
            ),
        }),
        range => Ok(range),
    }
}

fn range_of<T: Pixel>(norm: &Normalization, image: &ArrayViewD<'_, T>) -> Option<(f64, f64)> {
    let Normalization::Percentile { low, high } = *norm else {
        return None;
    };
    Some(match T::HISTOGRAM_BINS {
        Some(bins) => {
            let mut counts = vec![0u64; bins];
            image.iter().for_each(|&v| counts[v.bin()] += 1);
            (
                histogram_percentile::<T>(&counts, low),
                histogram_percentile::<T>(&counts, high),
            )
        }
        None => {
            let step = image.len().div_ceil(PERCENTILE_SAMPLE).max(1);
            let mut values: Vec<f64> = image.iter().step_by(step).map(|&v| v.to_f64()).collect();
            (
                select_percentile(&mut values, low),
                select_percentile(&mut values, high),
            )
        }
    })
}

/// The map that sends `lo` to 0 and `hi` to 1 (a flat range maps to 0).
pub fn affine_from_range(lo: f64, hi: f64) -> Affine {
    // A flat image maps to zero rather than dividing by zero.
    let range = hi - lo;
    if range.is_infinite() && range > 0.0 {
        // Extremes of f64 whose difference overflows: halve both first.
        let scale = 0.5 / (0.5 * hi - 0.5 * lo);
        return Affine::new(scale, -lo * scale);
    }
    let range = if range > 1e-20 { range } else { 1.0 };
    Affine::new(1.0 / range, -lo / range)
}

/// The value of rank `k` (0-based) of the multiset a histogram describes.
fn histogram_rank<T: Pixel>(counts: &[u64], k: u64) -> f64 {
    let mut seen = 0u64;
    for (bin, &c) in counts.iter().enumerate() {
        seen += c;
        if seen > k {
            return T::from_bin(bin);
        }
    }
    0.0
}

fn histogram_percentile<T: Pixel>(counts: &[u64], q: f64) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
    let below = pos.floor() as u64;
    let a = histogram_rank::<T>(counts, below);
    let b = if below + 1 < n {
        histogram_rank::<T>(counts, below + 1)
    } else {
        a
    };
    a + (b - a) * (pos - below as f64)
}

/// `numpy.percentile` by selection (linear time); reorders `values`.
fn select_percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (values.len() - 1) as f64;
    let below = pos.floor() as usize;
    let (_, &mut a, rest) = values.select_nth_unstable_by(below, f64::total_cmp);
    let b = rest.iter().copied().min_by(f64::total_cmp).unwrap_or(a);
    a + (b - a) * (pos - below as f64)
}

/// `numpy.percentile(values, q)` with its default linear interpolation, on
/// already sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let below = pos.floor() as usize;
    let frac = pos - below as f64;
    match sorted.get(below + 1) {
        Some(&next) => sorted[below] + (next - sorted[below]) * frac,
        None => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let v: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert!((percentile(&v, 99.8) - 9.98).abs() < 1e-12);
        assert_eq!(percentile(&[3.0], 1.0), 3.0);
        assert_eq!(percentile(&[], 1.0), 0.0);
    }

    #[test]
    fn percentile_maps_low_to_zero_and_high_to_one() {
        let a = resolve(
            &Normalization::Percentile {
                low: 0.0,
                high: 100.0,
            },
            [2.0, 4.0, 6.0].into_iter(),
        );
        assert!((a.apply(2.0)).abs() < 1e-6 && (a.apply(6.0) - 1.0).abs() < 1e-6);
        let flat = resolve(
            &Normalization::Percentile {
                low: 1.0,
                high: 99.0,
            },
            [5.0; 4].into_iter(),
        );
        assert_eq!(flat.apply(5.0), 0.0);
    }

    #[test]
    fn histogram_and_selection_agree_with_sorting() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u16
        };
        let data: Vec<u16> = (0..1001).map(|_| next() % 700).collect();
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[7, 143]), data.clone()).unwrap();
        let f = a.mapv(f32::from);
        let mut sorted: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
        sorted.sort_by(f64::total_cmp);
        for (lo, hi) in [(1.0, 99.8), (0.0, 100.0), (37.3, 62.1)] {
            let norm = Normalization::Percentile { low: lo, high: hi };
            let want = affine_from_range(percentile(&sorted, lo), percentile(&sorted, hi));
            assert_eq!(resolve_view(&norm, &a.view()), want);
            assert_eq!(resolve_view(&norm, &f.view()), want);
        }
        let signed = ndarray::arr1(&[-5i16, 3, -100, 7]).into_dyn();
        let norm = Normalization::Percentile {
            low: 0.0,
            high: 100.0,
        };
        assert_eq!(
            resolve_view(&norm, &signed.view()),
            affine_from_range(-100.0, 7.0)
        );
    }

    #[test]
    fn zscore_and_scale() {
        let z = resolve(
            &Normalization::Zscore {
                mean: 10.0,
                std: 2.0,
            },
            std::iter::empty(),
        );
        assert_eq!(z.apply(14.0), 2.0);
        let s = resolve(&Normalization::Scale { factor: 0.5 }, std::iter::empty());
        assert_eq!(s.apply(4.0), 2.0);
    }
}
