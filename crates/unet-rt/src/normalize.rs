//! Raw pixels to network input, as the model's metadata prescribes.

use std::convert::Infallible;
use std::sync::atomic::AtomicBool;

use ndarray::{ArrayViewD, Axis};

use crate::error::{Error, Result};
use crate::metadata::Normalization;
use crate::pixel::Pixel;
use crate::stop::Stop;

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
///
/// In `f32` it is applied as `(x - center) * scale`, the value it sends to
/// 0 (`-shift / scale`) held as the sum of two `f32`s: as `x * scale +
/// shift` the two large terms of an image far from 0 cancelled and left
/// their rounding (float32 pixels near 1e6 of a range of 10 were 0.6% of
/// the range off, and labels flipped against training's `f64` rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Multiplier, rounded to `f32`.
    scale: f32,
    /// The value sent to 0, rounded to `f32` (NaN where it has no `f32`
    /// form: the map is then applied in `f64`, see
    /// [`crate::pixel::RawKind::keeps_finite`]).
    center_high: f32,
    /// What `center_high` leaves of it, rounded to `f32`.
    center_low: f32,
    scale64: f64,
    shift64: f64,
}

impl Affine {
    /// The identity map.
    pub const IDENTITY: Self = Self {
        scale: 1.0,
        center_high: 0.0,
        center_low: 0.0,
        scale64: 1.0,
        shift64: 0.0,
    };

    /// The map `x * scale + shift`.
    pub fn new(scale: f64, shift: f64) -> Self {
        let center = -shift / scale;
        let (center_high, center_low) = if center.is_finite() && (center as f32).is_finite() {
            let high = center as f32;
            (high, (center - f64::from(high)) as f32)
        } else {
            (f32::NAN, f32::NAN)
        };
        Self {
            scale: scale as f32,
            center_high,
            center_low,
            scale64: scale,
            shift64: shift,
        }
    }

    /// The three `f32` operands of [`Self::apply`]: what is subtracted
    /// first, then second, and the multiplier (the device repeats its
    /// operations with them).
    pub fn f32_parts(self) -> (f32, f32, f32) {
        (self.center_high, self.center_low, self.scale)
    }

    /// Applies the map to one value: `((x - center_high) - center_low) *
    /// scale`, each step rounded to `f32`. The first subtraction is exact
    /// where `x` lies within a factor of two of the center, so the result
    /// is within a few roundings of its own size, however far the image
    /// lies from 0.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        // Not `mul_add`: without FMA in the target's baseline that is a
        // call to `fmaf` per value, which also keeps the gather's loops
        // from vectorizing.
        ((x - self.center_high) - self.center_low) * self.scale
    }

    /// Applies the map to an `f64` value in `f64`, then narrows it to `f32`,
    /// saturating a finite value at the largest finite `f32` (NaN and
    /// infinity stay what they are: saturated, an infinite pixel reached
    /// the network as 3.4e38 and came out as NaN blamed on its weights).
    #[inline]
    pub fn apply_f64(self, x: f64) -> f32 {
        let y = x * self.scale64 + self.shift64;
        if x.is_finite() {
            y.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
        } else {
            y as f32
        }
    }

    /// Whether the map sends finite values to finite values.
    pub fn is_finite(self) -> bool {
        self.scale.is_finite()
            && self.center_high.is_finite()
            && self.center_low.is_finite()
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
            // Of the finite values, as `select_percentile` takes them.
            let mut sorted: Vec<f64> = values.filter(|v| v.is_finite()).collect();
            sorted.sort_by(f64::total_cmp);
            affine_from_range(
                sorted_percentile(&sorted, low),
                sorted_percentile(&sorted, high),
            )
        }
    }
}

/// Resolves `norm` for an image view of any pixel type, reading it once
/// without copying it: an exact histogram for 8- and 16-bit pixels, a
/// selection over (at most [`PERCENTILE_SAMPLE`]) values for floats.
///
/// # Errors
/// [`Error::Cancelled`] once `cancel` is set (the histogram of a large
/// image takes seconds).
pub fn resolve_view<T: Pixel>(
    norm: &Normalization,
    image: &ArrayViewD<'_, T>,
    cancel: Option<&AtomicBool>,
) -> Result<Affine> {
    Ok(match range_of(norm, image, cancel)? {
        Some((lo, hi)) => affine_from_range(lo, hi),
        None => resolve(norm, std::iter::empty()),
    })
}

/// For percentile normalization, the pixel values it maps to 0 and 1 in
/// `image` (as [`resolve_view`] computes them); `None` for the other kinds.
/// Pass them as [`crate::Options::input_range`] to segment pieces of
/// `image` as the whole.
///
/// # Errors
/// [`Error::InvalidArgument`] (`image`) when a percentile is NaN or
/// infinite: the image holds such values, and no input range made of them
/// normalizes anything; [`Error::Cancelled`] once `cancel` is set.
pub fn percentile_range<T: Pixel>(
    norm: &Normalization,
    image: &ArrayViewD<'_, T>,
    cancel: Option<&AtomicBool>,
) -> Result<Option<(f64, f64)>> {
    let Normalization::Percentile { low, high } = *norm else {
        return Ok(None);
    };
    PercentileStats::of_image_cancellable(image, cancel)?
        .checked_range(low, high)
        .map(Some)
}

fn range_of<T: Pixel>(
    norm: &Normalization,
    image: &ArrayViewD<'_, T>,
    cancel: Option<&AtomicBool>,
) -> Result<Option<(f64, f64)>> {
    let Normalization::Percentile { low, high } = *norm else {
        return Ok(None);
    };
    Ok(Some(
        PercentileStats::of_image_cancellable(image, cancel)?.range(low, high),
    ))
}

/// What percentile normalization needs to know of (part of) one image: an
/// exact histogram for 8- and 16-bit pixels, else the values of the image's
/// strided sample (every value up to [`PERCENTILE_SAMPLE`], then every
/// `n / PERCENTILE_SAMPLE`-th in C order over `(C, spatial...)`) that fall
/// in the part. The statistics of the parts of an image, combined in any
/// grouping, are those of the whole image: this is how a piecewise run
/// (Dask blocks) finds the whole image's range, exactly as
/// [`percentile_range`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum PercentileStats {
    /// Pixel counts per value: bin `i` counts the value `first + i`.
    Histogram {
        /// One count per possible value.
        counts: Vec<u64>,
        /// The value of bin 0 (-32768 for int16).
        first: f64,
    },
    /// The sampled values.
    Sample(Vec<f64>),
}

impl PercentileStats {
    /// The statistics of a whole image (`(C, spatial...)`).
    pub fn of_image<T: Pixel>(image: &ArrayViewD<'_, T>) -> Self {
        let Ok(stats) = Self::counted(image, || Ok::<(), Infallible>(()));
        stats
    }

    /// [`PercentileStats::of_image`], looking at `cancel` as it counts.
    ///
    /// # Errors
    /// [`Error::Cancelled`] once `cancel` is set.
    pub fn of_image_cancellable<T: Pixel>(
        image: &ArrayViewD<'_, T>,
        cancel: Option<&AtomicBool>,
    ) -> Result<Self> {
        let stop = Stop(cancel);
        Self::counted(image, || stop.check())
    }

    /// The histogram or sample of `image`; `check` runs before each row of
    /// the histogram (the sample is a bounded number of values).
    fn counted<T: Pixel, E>(
        image: &ArrayViewD<'_, T>,
        mut check: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        let Some(bins) = T::HISTOGRAM_BINS else {
            return Ok(Self::Sample(strided_sample(
                image,
                sample_step(image.len()),
            )));
        };
        let mut counts = vec![0u64; bins];
        let mut count = |v: &T| counts[v.bin()] += 1;
        match image.ndim().checked_sub(1) {
            Some(last) => {
                for row in image.lanes(Axis(last)) {
                    check()?;
                    row.for_each(&mut count);
                }
            }
            None => image.for_each(&mut count),
        }
        Ok(Self::Histogram {
            counts,
            first: T::from_bin(0),
        })
    }

    /// The statistics of `part`, the region from `origin` on of an image of
    /// shape `image_shape` (both `(C, spatial...)`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`origin`) when the part does not lie
    /// inside the image.
    pub fn of_part<T: Pixel>(
        part: &ArrayViewD<'_, T>,
        origin: &[usize],
        image_shape: &[usize],
    ) -> Result<Self> {
        let inside = origin.len() == part.ndim()
            && image_shape.len() == part.ndim()
            && part
                .shape()
                .iter()
                .zip(origin)
                .zip(image_shape)
                .all(|((&n, &o), &m)| o.checked_add(n).is_some_and(|e| e <= m));
        if !inside {
            return Err(Error::InvalidArgument {
                argument: "origin",
                message: format!(
                    "a part of shape {:?} at {origin:?} does not lie inside an image of shape {image_shape:?}",
                    part.shape()
                ),
            });
        }
        let total = image_shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| Error::InvalidArgument {
                argument: "image_shape",
                message: format!("{image_shape:?} has too many elements"),
            })?;
        let step = sample_step(total);
        if T::HISTOGRAM_BINS.is_some() || step == 1 {
            // Every value counts: the part's own statistics are its share.
            return Ok(Self::of_image(part));
        }
        // C-order strides of the image; the part's elements whose flat index
        // in the image is a multiple of the step are the sample's.
        let mut strides = vec![1usize; image_shape.len()];
        for axis in (0..image_shape.len().saturating_sub(1)).rev() {
            strides[axis] = strides[axis + 1] * image_shape[axis + 1];
        }
        let values = part
            .indexed_iter()
            .filter(|(index, _)| {
                let flat: usize = (0..strides.len())
                    .map(|k| (index[k] + origin[k]) * strides[k])
                    .sum();
                flat % step == 0
            })
            .map(|(_, &v)| v.to_f64())
            .collect();
        Ok(Self::Sample(values))
    }

    /// Adds the statistics of another part of the same image.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`stats`) when the two are of different
    /// kinds or histograms of different pixel types.
    pub fn combine(&mut self, other: Self) -> Result<()> {
        let merged = Self::merge([self.view(), other.view()])?;
        *self = merged;
        Ok(())
    }

    /// The statistics of several parts of one image, from borrowed views
    /// (no part is copied before the one allocation of the result).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`stats`) for no parts, parts of different
    /// kinds, histograms of different pixel types, or counts that add up to
    /// 2^64 or more.
    pub fn merge<'a>(parts: impl IntoIterator<Item = StatsView<'a>>) -> Result<Self> {
        let mismatch = |message: &str| Error::InvalidArgument {
            argument: "stats",
            message: message.to_owned(),
        };
        let parts: Vec<StatsView<'a>> = parts.into_iter().collect();
        match parts.first() {
            None => Err(mismatch("no statistics to combine")),
            Some(StatsView::Histogram { counts, first }) => {
                let (bins, first) = (counts.len(), *first);
                let mut total = vec![0u64; bins];
                for part in &parts {
                    match part {
                        StatsView::Histogram { counts, first: f }
                            if counts.len() == bins && *f == first =>
                        {
                            // Counts come from callers (NumPy arrays through
                            // Python): a sum past u64 wrapped to a few pixels.
                            for (bin, (t, &c)) in total.iter_mut().zip(counts.iter()).enumerate() {
                                *t = t.checked_add(c).ok_or_else(|| {
                                    mismatch(&format!(
                                        "the counts of bin {bin} add up to more pixels than any image has (2^64)"
                                    ))
                                })?;
                            }
                        }
                        _ => {
                            return Err(mismatch(
                                "statistics of different pixel types cannot be combined",
                            ))
                        }
                    }
                }
                Ok(Self::Histogram {
                    counts: total,
                    first,
                })
            }
            Some(StatsView::Sample(_)) => {
                let mut length = 0usize;
                for part in &parts {
                    match part {
                        StatsView::Sample(values) => length += values.len(),
                        _ => {
                            return Err(mismatch(
                                "statistics of different pixel types cannot be combined",
                            ))
                        }
                    }
                }
                let mut total = Vec::new();
                total
                    .try_reserve_exact(length)
                    .map_err(|_| mismatch("the combined sample does not fit in memory"))?;
                for part in &parts {
                    if let StatsView::Sample(values) = part {
                        total.extend_from_slice(values);
                    }
                }
                Ok(Self::Sample(total))
            }
        }
    }

    /// These statistics, borrowed.
    pub fn view(&self) -> StatsView<'_> {
        match self {
            Self::Histogram { counts, first } => StatsView::Histogram {
                counts,
                first: *first,
            },
            Self::Sample(values) => StatsView::Sample(values),
        }
    }

    /// [`PercentileStats::range`], refusing what it would clamp or wrap and
    /// non-finite percentiles.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `low` or `high` when one is not a
    /// percentile (NaN, outside 0..=100) or `low > high`; naming `stats` for
    /// a histogram whose counts add up to 2^64 or more or whose values are
    /// not finite; naming `image` when a sample holds no finite value (the
    /// percentiles are those of its finite values) or a percentile
    /// overflows.
    pub fn checked_range(self, low: f64, high: f64) -> Result<(f64, f64)> {
        let counts = match self {
            Self::Sample(mut values) => return Self::checked_sample_range(&mut values, low, high),
            Self::Histogram { ref counts, .. } => counts,
        };
        check_percentiles(low, high)?;
        if histogram_total(counts) > u128::from(u64::MAX) {
            return Err(Error::InvalidArgument {
                argument: "stats",
                message: "its counts add up to more pixels than any image has (2^64)".to_owned(),
            });
        }
        // Bins count integer pixel values: only a malformed `first` gives
        // non-finite percentiles.
        finite_range(self.range(low, high), "stats")
    }

    /// [`PercentileStats::checked_range`] of a sample held elsewhere (a NumPy
    /// array, say), which it reorders.
    ///
    /// # Errors
    /// As [`PercentileStats::checked_range`].
    pub fn checked_sample_range(values: &mut [f64], low: f64, high: f64) -> Result<(f64, f64)> {
        check_percentiles(low, high)?;
        if !values.iter().any(|v| v.is_finite()) {
            return Err(no_finite_value("image"));
        }
        finite_range(
            (
                select_percentile(values, low),
                select_percentile(values, high),
            ),
            "image",
        )
    }

    /// The `low` and `high` percentiles (`numpy.percentile`, linear), each
    /// clamped to 0..=100: for percentiles already checked (a model's
    /// metadata); [`PercentileStats::checked_range`] checks them.
    pub fn range(self, low: f64, high: f64) -> (f64, f64) {
        match self {
            Self::Histogram { counts, first } => (
                histogram_percentile(&counts, first, low),
                histogram_percentile(&counts, first, high),
            ),
            Self::Sample(mut values) => (
                select_percentile(&mut values, low),
                select_percentile(&mut values, high),
            ),
        }
    }
}

/// [`PercentileStats`], borrowed (e.g. from NumPy arrays).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatsView<'a> {
    /// Pixel counts per value; bin `i` counts the value `first + i`.
    Histogram {
        /// One count per possible value.
        counts: &'a [u64],
        /// The value of bin 0.
        first: f64,
    },
    /// Sampled values.
    Sample(&'a [f64]),
}

/// `range` unless a percentile is NaN or infinite, blaming `argument`
/// (the statistics' source).
fn finite_range((lo, hi): (f64, f64), argument: &'static str) -> Result<(f64, f64)> {
    if lo.is_finite() && hi.is_finite() {
        return Ok((lo, hi));
    }
    Err(Error::InvalidArgument {
        argument,
        message: format!(
            "its percentiles are ({lo}, {hi}): it holds NaN or infinite values (or values beyond the range of its \
             dtype)"
        ),
    })
}

/// Refuses a `q` that is not a percentile, naming `argument`: NaN passed
/// through every comparison and came back as a NaN range blamed on the
/// image, and values outside 0..=100 were clamped silently.
fn check_percentile(q: f64, argument: &'static str) -> Result<()> {
    if (0.0..=100.0).contains(&q) {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        argument,
        message: format!("{q} is not a percentile (0 to 100)"),
    })
}

/// `check_percentile` for both bounds of a range, in order: the one rule
/// for percentile bounds given as arguments (here and in the binding).
///
/// # Errors
/// [`Error::InvalidArgument`] naming `low` or `high`.
pub fn check_percentiles(low: f64, high: f64) -> Result<()> {
    check_percentile(low, "low")?;
    check_percentile(high, "high")?;
    if low > high {
        return Err(Error::InvalidArgument {
            argument: "low",
            message: format!("{low} is above high ({high}): the range would be reversed"),
        });
    }
    Ok(())
}

/// The stride of the float sample for an image of `n` values.
fn sample_step(n: usize) -> usize {
    n.div_ceil(PERCENTILE_SAMPLE).max(1)
}

/// Every `step`-th value of `image` in C order, reached by index: an
/// iterator stepped over a view that is not in C order (a channels-last
/// permutation, a broadcast) visits every element on the way, and a
/// 40000^2 broadcast took 45 s for a sample of 1/96 of it.
fn strided_sample<T: Pixel>(image: &ArrayViewD<'_, T>, step: usize) -> Vec<f64> {
    if step == 1 {
        return image.iter().map(|&v| v.to_f64()).collect();
    }
    if let Some(flat) = image.as_slice() {
        return flat.iter().step_by(step).map(|&v| v.to_f64()).collect();
    }
    let shape = image.shape();
    let mut index = vec![0usize; shape.len()];
    (0..image.len())
        .step_by(step)
        .map(|mut flat| {
            for (axis, &n) in shape.iter().enumerate().rev() {
                index[axis] = flat % n;
                flat /= n;
            }
            image[index.as_slice()].to_f64()
        })
        .collect()
}

/// The map that sends `lo` to 0 and `hi` to 1. A range it cannot map is
/// flat and maps `lo` to 0 unscaled: an empty range, or one so narrow
/// (below about 1e-308, or 1e-308 of its values) that the map's scale or
/// shift is beyond `f64`. A map beyond `f32` (the network's input type) is
/// applied in `f64` (see [`crate::pixel::Pixel::normalized`]): a float64
/// image of values near 1e-44 was called flat, every label background.
/// The rule depends on the range against its values, never on an absolute
/// size: an image scaled by 1e-300 is normalised like the image itself.
/// `training/data.py` (`percentile_affine`) states the same rule.
pub fn affine_from_range(lo: f64, hi: f64) -> Affine {
    let range = hi - lo;
    if range.is_infinite() && range > 0.0 {
        // Extremes of f64 whose difference overflows: halve both first.
        let scale = 0.5 / (0.5 * hi - 0.5 * lo);
        return Affine::new(scale, -lo * scale);
    }
    let mappable = range > 0.0 && (1.0 / range).is_finite() && (lo / range).is_finite();
    let range = if mappable { range } else { 1.0 };
    Affine::new(1.0 / range, -lo / range)
}

/// The number of values a histogram counts. In u128, which no sum of
/// fewer than 2^64 bins of u64 can overflow (in u64 a malformed histogram
/// wrapped to a few pixels).
fn histogram_total(counts: &[u64]) -> u128 {
    counts.iter().map(|&c| u128::from(c)).sum()
}

/// The value of rank `k` (0-based) of the multiset a histogram describes.
fn histogram_rank(counts: &[u64], first: f64, k: u128) -> f64 {
    let mut seen = 0u128;
    for (bin, &c) in counts.iter().enumerate() {
        seen += u128::from(c);
        if seen > k {
            return first + bin as f64;
        }
    }
    0.0
}

fn histogram_percentile(counts: &[u64], first: f64, q: f64) -> f64 {
    let n = histogram_total(counts);
    if n == 0 {
        return 0.0;
    }
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
    // Beyond 2^53 values `n - 1` rounds up as a float: keep the rank in range.
    let below = (pos.floor() as u128).min(n - 1);
    let a = histogram_rank(counts, first, below);
    let b = if below + 1 < n {
        histogram_rank(counts, first, below + 1)
    } else {
        a
    };
    interpolate(a, b, pos - below as f64)
}

/// The value `frac` of the way from `a` to `b` (`a <= b`), as numpy's
/// percentiles interpolate, and finite between finite ends: where `b - a`
/// overflows (-1.7e308 to 1.7e308) numpy's formula gave infinity, a
/// percentile range refused as holding infinite values, or a low end of
/// +inf that segment normalised with.
fn interpolate(a: f64, b: f64, frac: f64) -> f64 {
    let step = b - a;
    if step.is_finite() {
        a + step * frac
    } else {
        a * (1.0 - frac) + b * frac
    }
}

/// `numpy.percentile` by selection (linear time); reorders `values`.
fn select_percentile(values: &mut [f64], q: f64) -> f64 {
    let finite = finite_first(values);
    let values = &mut values[..finite];
    if values.is_empty() {
        return 0.0;
    }
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (values.len() - 1) as f64;
    let below = (pos.floor() as usize).min(values.len() - 1);
    let (_, &mut a, rest) = values.select_nth_unstable_by(below, f64::total_cmp);
    let b = rest.iter().copied().min_by(f64::total_cmp).unwrap_or(a);
    interpolate(a, b, pos - below as f64)
}

/// Moves the finite values of `values` to its front; returns their count.
/// Percentiles are those of the finite values (`numpy.nanpercentile`, and
/// infinities left out too): with `nonfinite="propagate"`, an image of
/// NaN over 0.2% of its pixels had a NaN high percentile, and every finite
/// pixel was normalised flat (the labels wrong, without a word), or was
/// refused by the Dask layer.
fn finite_first(values: &mut [f64]) -> usize {
    let mut finite = 0;
    for i in 0..values.len() {
        if values[i].is_finite() {
            values.swap(finite, i);
            finite += 1;
        }
    }
    finite
}

/// The refusal of statistics without one finite value, blaming `argument`:
/// no percentile of them normalizes anything.
fn no_finite_value(argument: &'static str) -> Error {
    Error::InvalidArgument {
        argument,
        message: "it holds no finite value (every pixel NaN or infinite): it has no percentiles"
            .to_owned(),
    }
}

/// `numpy.percentile(values, q)` with its default linear interpolation, on
/// already sorted values; 0 for no values.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `q` when it is not a percentile (NaN,
/// or outside 0..=100).
pub fn percentile(sorted: &[f64], q: f64) -> Result<f64> {
    check_percentile(q, "q")?;
    Ok(sorted_percentile(sorted, q))
}

/// [`percentile`] with `q` clamped to 0..=100: for percentiles already
/// checked (a model's metadata).
fn sorted_percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let below = (pos.floor() as usize).min(sorted.len() - 1);
    let frac = pos - below as f64;
    match sorted.get(below + 1) {
        Some(&next) => interpolate(sorted[below], next, frac),
        None => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let v: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0).expect("a case that succeeds"), 5.0);
        assert!((percentile(&v, 99.8).expect("a case that succeeds") - 9.98).abs() < 1e-12);
        assert_eq!(percentile(&[3.0], 1.0).expect("a case that succeeds"), 3.0);
        assert_eq!(percentile(&[], 1.0).expect("a case that succeeds"), 0.0);
    }

    #[test]
    fn percentiles_between_the_extremes_of_f64_are_finite() {
        let extremes = [-1.7e308, 1.7e308];
        for q in [0.0, 1.0, 50.0, 99.8, 100.0] {
            let sorted = percentile(&extremes, q).expect("a valid q");
            let mut values = extremes.to_vec();
            let selected = select_percentile(&mut values, q);
            assert!(
                sorted.is_finite() && sorted == selected,
                "{q}: {sorted} {selected}"
            );
        }
        assert_eq!(percentile(&extremes, 50.0).expect("a valid q"), 0.0);
        assert_eq!(percentile(&extremes, 100.0).expect("a valid q"), 1.7e308);
        // Ordinary ranges keep numpy's formula to the bit.
        assert_eq!(interpolate(1.0, 3.0, 0.25), 1.0 + 2.0 * 0.25);
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
    fn images_far_from_zero_are_normalized_to_f32_rounding() {
        // As x * scale + shift the two terms cancelled: float32 pixels near
        // 1e6 of a range of 10 were 5.9e-3 off, uint16 ones near 30000 of a
        // range of 100 1.6e-5.
        for (lo, hi, step) in [
            (1e6 + 0.3, 1e6 + 10.7, 0.0625f32),
            (1e4 + 0.1, 1e4 + 1.2, 0.001),
            (30000.3, 30100.9, 1.0),
            (-123456.7, -123400.1, 0.0078125),
            (0.0, 1.0, 0.01),
        ] {
            let affine = affine_from_range(lo, hi);
            let mut x = (lo - 0.2 * (hi - lo)) as f32;
            while f64::from(x) < hi + 0.2 * (hi - lo) {
                let exact = (f64::from(x) - lo) / (hi - lo);
                let got = f64::from(affine.apply(x));
                assert!(
                    (got - exact).abs() <= 4e-7 * exact.abs().max(1.0),
                    "{x} in [{lo}, {hi}]: {got} against {exact}"
                );
                x += step;
            }
        }
        // A center beyond f32 leaves the f32 map non-finite: such maps are
        // applied in f64 (RawKind::keeps_finite, Pixel::normalized).
        let beyond = affine_from_range(-1e300, 1e300);
        assert!(affine_from_range(-1e300, 1e300).apply(0.0).is_nan());
        assert_eq!(0.0f32.normalized(beyond), 0.5);
    }

    #[test]
    fn percentiles_are_those_of_the_finite_values() {
        let mut values = vec![
            f64::NAN,
            4.0,
            f64::INFINITY,
            0.0,
            2.0,
            f64::NEG_INFINITY,
            8.0,
            f64::NAN,
        ];
        assert_eq!(select_percentile(&mut values, 0.0), 0.0);
        assert_eq!(select_percentile(&mut values, 100.0), 8.0);
        assert_eq!(select_percentile(&mut values, 50.0), 3.0);
        let norm = Normalization::Percentile {
            low: 0.0,
            high: 100.0,
        };
        let with_nan = ndarray::arr2(&[[f32::NAN, 2.0], [6.0, f32::NAN]]).into_dyn();
        assert_eq!(
            resolve_view(&norm, &with_nan.view(), None).unwrap(),
            affine_from_range(2.0, 6.0)
        );
        assert_eq!(
            resolve(&norm, [f64::NAN, 2.0, 6.0].into_iter()),
            affine_from_range(2.0, 6.0)
        );
        assert_eq!(
            PercentileStats::of_image(&with_nan.view())
                .checked_range(0.0, 100.0)
                .unwrap(),
            (2.0, 6.0)
        );
        let none = ndarray::arr1(&[f64::NAN, f64::INFINITY]).into_dyn();
        let refused = PercentileStats::of_image(&none.view())
            .checked_range(1.0, 99.0)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("no finite value"), "{refused}");
        assert!(PercentileStats::checked_sample_range(&mut [f64::NAN], 1.0, 99.0).is_err());
    }

    #[test]
    fn ranges_beyond_f32_are_mapped_in_f64_and_only_empty_or_f64_overflowing_ones_are_flat() {
        let tiny = affine_from_range(1e-44, 3e-44);
        assert!(!tiny.scale.is_finite());
        assert_eq!(tiny.apply_f64(1e-44), 0.0);
        assert_eq!(tiny.apply_f64(3e-44), 1.0);
        assert_eq!(1e-44f64.normalized(tiny), 0.0);
        // Denormal f32 pixels too: 2^-141 is half of a range of 2^-140.
        let denormal = affine_from_range(0.0, 2f64.powi(-140));
        assert_eq!((2f32.powi(-141)).normalized(denormal), 0.5);
        let offset = affine_from_range(1.0, 1.0 + 1e-15);
        assert_eq!(offset.apply_f64(1.0 + 1e-15), 1.0);
        for (lo, hi) in [(3.0, 3.0), (0.0, 5e-324), (1.0, 1.0 + 2.0 * f64::EPSILON)] {
            let a = affine_from_range(lo, hi);
            let want = if hi > lo && (1.0 / (hi - lo)).is_finite() {
                Affine::new(1.0 / (hi - lo), -lo / (hi - lo))
            } else {
                Affine::new(1.0, -lo)
            };
            assert_eq!(a, want, "{lo} {hi}");
        }
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
            let want = affine_from_range(
                percentile(&sorted, lo).expect("a case that succeeds"),
                percentile(&sorted, hi).expect("a case that succeeds"),
            );
            assert_eq!(resolve_view(&norm, &a.view(), None).unwrap(), want);
            assert_eq!(resolve_view(&norm, &f.view(), None).unwrap(), want);
        }
        let signed = ndarray::arr1(&[-5i16, 3, -100, 7]).into_dyn();
        let norm = Normalization::Percentile {
            low: 0.0,
            high: 100.0,
        };
        assert_eq!(
            resolve_view(&norm, &signed.view(), None).unwrap(),
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

    /// Splits `image` (`(C, Y, X)`) into blocks of `block` and combines
    /// their statistics in reverse order.
    fn blockwise<T: Pixel>(image: &ndarray::ArrayD<T>, block: usize) -> PercentileStats {
        let shape = image.shape().to_vec();
        let mut parts = Vec::new();
        for y in (0..shape[1]).step_by(block) {
            for x in (0..shape[2]).step_by(block) {
                let view = image.slice(ndarray::s![
                    ..,
                    y..(y + block).min(shape[1]),
                    x..(x + block).min(shape[2])
                ]);
                parts.push(PercentileStats::of_part(&view.into_dyn(), &[0, y, x], &shape).unwrap());
            }
        }
        let mut total = parts.pop().unwrap();
        while let Some(part) = parts.pop() {
            total.combine(part).unwrap();
        }
        total
    }

    #[test]
    fn parts_combine_to_the_whole_images_range() {
        let ramp = |n: usize| (0..n).map(|i| ((i * 7919) % 10007) as f64);
        let ints = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[2, 37, 53]),
            ramp(2 * 37 * 53).map(|v| v as i16 - 5000).collect(),
        )
        .unwrap();
        assert_eq!(
            blockwise(&ints, 10).range(1.0, 99.8),
            PercentileStats::of_image(&ints.view()).range(1.0, 99.8)
        );
        // Above PERCENTILE_SAMPLE values the float sample is strided (step 2 here).
        let side = 4100;
        let floats = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[1, side, side]),
            ramp(side * side).map(|v| v as f32).collect(),
        )
        .unwrap();
        let whole = PercentileStats::of_image(&floats.view());
        let PercentileStats::Sample(sample) = &whole else {
            panic!("floats are sampled")
        };
        assert_eq!(sample.len(), side * side / 2);
        assert_eq!(
            blockwise(&floats, 1000).range(1.0, 99.8),
            whole.range(1.0, 99.8)
        );
    }

    /// The sample of a view in another memory order is the same C-order
    /// sample, reached by index (a permuted, channels-last view stepped
    /// through every element).
    #[test]
    fn views_in_any_memory_order_sample_the_same_values() {
        let (c, side) = (3, 2400);
        let hwc = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[side, side, c]),
            (0..c * side * side)
                .map(|i| ((i * 7919) % 10007) as f32)
                .collect(),
        )
        .unwrap();
        let chw = hwc.view().permuted_axes(vec![2, 0, 1]);
        assert!(chw.as_slice().is_none());
        let standard = chw.as_standard_layout().into_owned();
        let of = |v: &ndarray::ArrayViewD<'_, f32>| match PercentileStats::of_image(v) {
            PercentileStats::Sample(values) => values,
            other => panic!("floats are sampled, got {other:?}"),
        };
        let sample = of(&chw);
        assert!(sample.len() < c * side * side, "strided: {}", sample.len());
        assert_eq!(sample, of(&standard.view()));
    }

    #[test]
    fn parts_outside_the_image_and_mixed_kinds_are_refused() {
        let a = ndarray::ArrayD::<u8>::zeros(ndarray::IxDyn(&[1, 4, 4]));
        assert!(PercentileStats::of_part(&a.view(), &[0, 1, 0], &[1, 4, 4]).is_err());
        assert!(PercentileStats::of_part(&a.view(), &[0, 0], &[1, 4, 4]).is_err());
        assert!(PercentileStats::of_part(&a.view(), &[0, usize::MAX, 0], &[1, 4, 4]).is_err());
        let mut h = PercentileStats::of_image(&a.view());
        assert!(h.combine(PercentileStats::Sample(vec![1.0])).is_err());
        let b = ndarray::ArrayD::<i16>::zeros(ndarray::IxDyn(&[1, 4, 4]));
        assert!(h.combine(PercentileStats::of_image(&b.view())).is_err());
    }

    fn argument<T: std::fmt::Debug>(result: Result<T>) -> &'static str {
        match result {
            Err(Error::InvalidArgument { argument, .. }) => argument,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn histograms_whose_counts_overflow_are_refused() {
        // The merge wrapped to [0, 1] and the range of [MAX, MAX] to (0, 0).
        let (a, b) = (vec![u64::MAX, 1], vec![1u64, 0]);
        let merged = PercentileStats::merge([
            StatsView::Histogram {
                counts: &a,
                first: 0.0,
            },
            StatsView::Histogram {
                counts: &b,
                first: 0.0,
            },
        ]);
        assert_eq!(argument(merged), "stats");
        let full = PercentileStats::Histogram {
            counts: vec![u64::MAX, u64::MAX],
            first: 0.0,
        };
        assert_eq!(argument(full.clone().checked_range(1.0, 99.0)), "stats");
        // Unchecked, the range no longer wraps: both bins hold half.
        assert_eq!(full.range(0.0, 100.0), (0.0, 1.0));
        // Up to 2^64 - 1 pixels in all is a histogram like any other.
        let most = PercentileStats::Histogram {
            counts: vec![u64::MAX - 1, 1],
            first: 0.0,
        };
        assert_eq!(
            most.checked_range(0.0, 100.0)
                .expect("a case that succeeds"),
            (0.0, 1.0)
        );
        // Bins count integer values: non-finite percentiles are the stats'.
        for first in [f64::NAN, f64::INFINITY] {
            let odd = PercentileStats::Histogram {
                counts: vec![1, 1],
                first,
            };
            assert_eq!(argument(odd.checked_range(1.0, 99.0)), "stats");
        }
    }

    #[test]
    fn percentiles_that_are_not_percentiles_are_refused_by_name() {
        let image =
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 8, 8]), |i| (i[1] * 8 + i[2]) as u8);
        let stats = PercentileStats::of_image(&image.view());
        let floats = PercentileStats::Sample(vec![3.0, 1.0, 2.0]);
        for s in [stats, floats] {
            // NaN blamed the image, a reversed range was returned reversed,
            // and bounds outside 0..=100 were clamped silently.
            assert_eq!(argument(s.clone().checked_range(f64::NAN, 99.0)), "low");
            assert_eq!(argument(s.clone().checked_range(1.0, f64::NAN)), "high");
            assert_eq!(argument(s.clone().checked_range(99.0, 1.0)), "low");
            assert_eq!(argument(s.clone().checked_range(-50.0, 50.0)), "low");
            assert_eq!(argument(s.clone().checked_range(1.0, 500.0)), "high");
            assert_eq!(
                argument(s.clone().checked_range(1.0, f64::INFINITY)),
                "high"
            );
            assert!(s.clone().checked_range(0.0, 100.0).is_ok());
            assert!(s.checked_range(50.0, 50.0).is_ok());
        }
        assert_eq!(
            argument(PercentileStats::checked_sample_range(
                &mut [1.0, 2.0],
                99.0,
                1.0
            )),
            "low"
        );
        // percentile returned NaN for a NaN q, and clamped 500.
        assert_eq!(argument(percentile(&[1.0, 2.0, 3.0], f64::NAN)), "q");
        assert_eq!(argument(percentile(&[1.0, 2.0, 3.0], 500.0)), "q");
        assert_eq!(
            argument(percentile(&[1.0, 2.0, 3.0], f64::NEG_INFINITY)),
            "q"
        );
        // A model's normalization that is not a percentile range is named too.
        let nan = Normalization::Percentile {
            low: f64::NAN,
            high: 99.0,
        };
        assert_eq!(argument(percentile_range(&nan, &image.view(), None)), "low");
    }
}
