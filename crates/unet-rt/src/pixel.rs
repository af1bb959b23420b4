//! Input element types the engine reads without converting the whole image.

use crate::error::{Error, Result};
use crate::normalize::Affine;

/// Stored integer types the engine does not read, each with the type it is
/// read as without loss. Every entry point widens them the same way: the
/// command line as it decodes a file, Python with one copy of the array.
/// 64-bit integers beyond 2^53 are refused ([`exact_f64`]).
pub const WIDENED: [(&str, &str); 5] = [
    ("int8", "int16"),
    ("uint32", "float64"),
    ("int32", "float64"),
    ("uint64", "float64"),
    ("int64", "float64"),
];

/// The largest integer magnitude float64 holds exactly, with all below it.
const EXACT_F64: i128 = 1 << 53;

/// A 64-bit integer pixel as the float64 it is read as, or an error naming
/// the image beyond 2^53 in magnitude, where float64 rounds (an image offset
/// by 2^60 lost its contrast, nuclei vanished, without a word).
///
/// ```
/// assert_eq!(unet_rt::pixel::exact_f64(-(1 << 53)).unwrap(), -9007199254740992.0);
/// assert!(unet_rt::pixel::exact_f64((1 << 53) + 1).is_err());
/// ```
pub fn exact_f64(value: i128) -> Result<f64> {
    if (-EXACT_F64..=EXACT_F64).contains(&value) {
        // Exact: within 2^53 every integer is a float64.
        Ok(value as f64)
    } else {
        Err(Error::InvalidArgument {
            argument: "image",
            message: format!(
                "a pixel holds {value}, beyond 2^53 in magnitude: float64, which 64-bit integer images are read \
                 as, cannot hold it exactly (scale the image into 32-bit integers or floats)"
            ),
        })
    }
}

/// A pixel type of an input image. Conversion to `f32` happens tile by tile
/// while gathering, so the caller's array is never copied whole.
///
/// Sealed: the engine indexes its histograms with [`Pixel::bin`] and
/// uploads [`Pixel::RAW`] kinds as their bytes, promises only the types
/// here keep (`u8`, `u16`, `i16`, `f16`, `f32`, `f64`).
pub trait Pixel: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The value as `f32`.
    fn to_f32(self) -> f32;
    /// The network input for this value under `affine`.
    #[inline]
    fn normalized(self, affine: Affine) -> f32 {
        affine.apply(self.to_f32())
    }
    /// The value as `f64` (for statistics).
    fn to_f64(self) -> f64;
    /// For 8- and 16-bit integers: the number of distinct values, which lets
    /// percentiles be computed exactly from a histogram.
    const HISTOGRAM_BINS: Option<usize> = None;
    /// The histogram bin of the value (only called when `HISTOGRAM_BINS` is set).
    fn bin(self) -> usize {
        0
    }
    /// The value of a histogram bin.
    fn from_bin(bin: usize) -> f64 {
        bin as f64
    }
    /// How the type travels to a device unconverted, when it can: the
    /// network input is then made there (see [`crate::Conversion`]).
    const RAW: Option<RawKind> = None;
    /// Whether the value is finite (integers always are).
    #[inline]
    fn is_finite(self) -> bool {
        true
    }
}

mod sealed {
    /// Implemented for the pixel types of this module only.
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for i16 {}
    impl Sealed for half::f16 {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A pixel type uploaded as it is, to be normalised on the device: a
/// quarter (8-bit) or half (16-bit) of the bytes of `f32` network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// `u8`.
    U8,
    /// `u16` (libtorch has no 16-bit unsigned kind on every device: the
    /// bits travel as `i16` and are read back as unsigned there).
    U16,
    /// `i16`.
    I16,
    /// IEEE half precision.
    F16,
}

impl RawKind {
    /// Whether `affine` sends every finite value of the type to a finite
    /// `f32` (the map is monotone, so its two extremes decide).
    pub fn keeps_finite(self, affine: Affine) -> bool {
        let (low, high) = match self {
            Self::U8 => (0.0, 255.0),
            Self::U16 => (0.0, 65535.0),
            Self::I16 => (-32768.0, 32767.0),
            Self::F16 => (-65504.0, 65504.0),
        };
        affine.apply(low).is_finite() && affine.apply(high).is_finite()
    }
}

impl Pixel for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    /// In `f32`, or in `f64` where that overflows for a finite value: a
    /// flat range near the type's extremes (`x - low` for -3e38 and 3e38)
    /// was refused as NaN or infinite pixels.
    #[inline]
    fn normalized(self, affine: Affine) -> f32 {
        let y = affine.apply(self);
        if y.is_finite() || !self.is_finite() {
            y
        } else {
            affine.apply_f64(f64::from(self))
        }
    }
    #[inline]
    fn is_finite(self) -> bool {
        self.is_finite()
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Pixel for f64 {
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    /// Normalized in `f64` first, so that values beyond the `f32` range
    /// still map to finite input.
    #[inline]
    fn normalized(self, affine: Affine) -> f32 {
        affine.apply_f64(self)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn is_finite(self) -> bool {
        self.is_finite()
    }
}

impl Pixel for half::f16 {
    const RAW: Option<RawKind> = Some(RawKind::F16);
    #[inline]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn is_finite(self) -> bool {
        self.is_finite()
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

/// 8- and 16-bit integers: exact percentiles from a histogram with one bin
/// per value, shifted so that the smallest value lands in bin 0.
macro_rules! integer_pixel {
    ($($t:ty => $raw:expr, $bins:expr, $shift:expr);* $(;)?) => {$(
        impl Pixel for $t {
            const HISTOGRAM_BINS: Option<usize> = Some($bins);
            const RAW: Option<RawKind> = Some($raw);
            #[inline]
            fn to_f32(self) -> f32 {
                f32::from(self)
            }
            #[inline]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline]
            fn bin(self) -> usize {
                (i32::from(self) + $shift) as usize
            }
            fn from_bin(bin: usize) -> f64 {
                bin as f64 - f64::from($shift)
            }
        }
    )*};
}
integer_pixel!(
    u8 => RawKind::U8, 256, 0;
    u16 => RawKind::U16, 65536, 0;
    i16 => RawKind::I16, 65536, 32768;
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_pixels_normalise_to_finite_input_and_infinite_ones_stay_infinite() {
        // A flat range at -3e38 (a pixel's value, as a percentile is): x -
        // low overflows f32 for x = 3e38.
        let flat = Affine::new(1.0, -f64::from(-3e38f32));
        assert_eq!(3e38f32.normalized(flat), f32::MAX);
        assert_eq!((-3e38f32).normalized(flat), 0.0);
        assert_eq!(2.0f32.normalized(Affine::new(0.5, 1.0)), 2.0);
        assert!(f32::INFINITY.normalized(flat).is_infinite());
        assert!(f32::NAN.normalized(flat).is_nan());
        assert_eq!(1e300f64.normalized(Affine::new(1.0, 0.0)), f32::MAX);
        assert!(f64::INFINITY
            .normalized(Affine::new(1e-3, 0.0))
            .is_infinite());
        assert!(f64::NEG_INFINITY
            .normalized(Affine::new(1e-3, 0.0))
            .is_infinite());
        assert!(f64::NAN.normalized(Affine::new(1e-3, 0.0)).is_nan());
    }

    #[test]
    fn widened_types_are_not_pixel_types_and_widen_to_one() {
        let read = ["uint8", "uint16", "int16", "float16", "float32", "float64"];
        for (stored, wide) in WIDENED {
            assert!(
                !read.contains(&stored) && read.contains(&wide),
                "{stored} -> {wide}"
            );
        }
        for beyond in [i128::from(u64::MAX), -(1 << 53) - 1] {
            let err = exact_f64(beyond).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidArgument {
                        argument: "image",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains(&beyond.to_string()), "{err}");
        }
        assert_eq!(exact_f64(1 << 53).unwrap(), 9007199254740992.0);
    }

    #[test]
    fn raw_pixels_go_to_the_device_only_under_maps_that_stay_finite() {
        let all = [RawKind::U8, RawKind::U16, RawKind::I16, RawKind::F16];
        assert!(all.iter().all(|k| k.keeps_finite(Affine::new(1e-3, -0.5))));
        assert!(all.iter().all(|k| k.keeps_finite(Affine::new(-2.0, 1e30))));
        // 255 * 1e36 is finite, 65535 * 1e36 is not.
        let steep = Affine::new(1e36, 0.0);
        assert!(RawKind::U8.keeps_finite(steep));
        assert!(!RawKind::U16.keeps_finite(steep));
        assert!(!RawKind::I16.keeps_finite(steep));
        assert!(!RawKind::F16.keeps_finite(steep));
        // A shift at the edge of f32 overflows for the largest pixels only.
        assert!(!RawKind::U8.keeps_finite(Affine::new(1e36, 3.4e38)));
        assert!(!RawKind::U8.keeps_finite(Affine::new(f64::NAN, 0.0)));
        assert_eq!(u16::RAW, Some(RawKind::U16));
        assert_eq!(<f32 as Pixel>::RAW, None);
        assert_eq!(<f64 as Pixel>::RAW, None);
        assert!(!Pixel::is_finite(half::f16::NAN) && Pixel::is_finite(7u8));
    }
}
