//! Raw pixels to network input, as the model's metadata prescribes.

use crate::metadata::Normalization;

/// An affine map `x * scale + shift` resolved for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Multiplier.
    pub scale: f32,
    /// Added after scaling.
    pub shift: f32,
}

impl Affine {
    /// The identity map.
    pub const IDENTITY: Self = Self { scale: 1.0, shift: 0.0 };

    /// Applies the map to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        x.mul_add(self.scale, self.shift)
    }
}

/// Resolves `norm` for an image whose pixels `values` yields (as f64).
/// Percentile normalisation needs the whole image's distribution; the others
/// do not look at the pixels.
pub fn resolve(norm: &Normalization, values: impl Iterator<Item = f64>) -> Affine {
    match *norm {
        Normalization::None => Affine::IDENTITY,
        Normalization::Scale { factor } => Affine { scale: factor as f32, shift: 0.0 },
        Normalization::Zscore { mean, std } => {
            let std = if std > 0.0 { std } else { 1.0 };
            Affine { scale: (1.0 / std) as f32, shift: (-mean / std) as f32 }
        }
        Normalization::Percentile { low, high } => {
            let mut sorted: Vec<f64> = values.collect();
            sorted.sort_by(f64::total_cmp);
            let lo = percentile(&sorted, low);
            let hi = percentile(&sorted, high);
            // A flat image maps to zero rather than dividing by zero.
            let range = if hi - lo > 1e-20 { hi - lo } else { 1.0 };
            Affine { scale: (1.0 / range) as f32, shift: (-lo / range) as f32 }
        }
    }
}

/// `numpy.percentile(values, q)` with its default linear interpolation, on
/// already sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(&last) = sorted.last() else { return 0.0 };
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
        let a = resolve(&Normalization::Percentile { low: 0.0, high: 100.0 }, [2.0, 4.0, 6.0].into_iter());
        assert!((a.apply(2.0)).abs() < 1e-6 && (a.apply(6.0) - 1.0).abs() < 1e-6);
        let flat = resolve(&Normalization::Percentile { low: 1.0, high: 99.0 }, [5.0; 4].into_iter());
        assert_eq!(flat.apply(5.0), 0.0);
    }

    #[test]
    fn zscore_and_scale() {
        let z = resolve(&Normalization::Zscore { mean: 10.0, std: 2.0 }, std::iter::empty());
        assert_eq!(z.apply(14.0), 2.0);
        let s = resolve(&Normalization::Scale { factor: 0.5 }, std::iter::empty());
        assert_eq!(s.apply(4.0), 2.0);
    }
}
