//! Input element types the engine reads without converting the whole image.

use crate::normalize::Affine;

/// A pixel type of an input image. Conversion to `f32` happens tile by tile
/// while gathering, so the caller's array is never copied whole.
pub trait Pixel: Copy + Send + Sync + 'static {
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
}

impl Pixel for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
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
}

impl Pixel for half::f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

/// 8- and 16-bit integers: exact percentiles from a histogram with one bin
/// per value, shifted so that the smallest value lands in bin 0.
macro_rules! integer_pixel {
    ($($t:ty => $bins:expr, $shift:expr);* $(;)?) => {$(
        impl Pixel for $t {
            const HISTOGRAM_BINS: Option<usize> = Some($bins);
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
integer_pixel!(u8 => 256, 0; u16 => 65536, 0; i16 => 65536, 32768);
