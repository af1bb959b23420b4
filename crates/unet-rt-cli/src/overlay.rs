//! `--overlay`: the image scaled to 8-bit gray with the outline of each
//! object drawn, as an RGB PNG for a quick look. Objects are the model's
//! instances (its read-out); with a read-out of its own (a boundary class
//! grown over) each object's outline gets a colour of its own, so touching
//! objects show apart; otherwise outlines take their class's colour.

use std::path::Path;

use ndarray::{Array2, ArrayView2};
use unet_rt::instances::ReadOut;
use unet_rt::Pixel;

use crate::errors::FileError;
use crate::limits::try_vec;
use crate::write::write_png_bytes;

/// Outline colours of classes 1, 2, ... (cycled): bright and far from gray.
const PALETTE: [[u8; 3]; 6] = [
    [0, 255, 0],
    [255, 0, 255],
    [0, 255, 255],
    [255, 255, 0],
    [255, 128, 0],
    [64, 128, 255],
];

/// Percentiles that map to black and white (those of the usual microscopy
/// normalization, so that a few bright pixels do not darken the rest).
const LOW: f64 = 1.0;
const HIGH: f64 = 99.8;

/// Writes the overlay of `classes` (0 = background) on `image`, objects by
/// `read_out`.
pub(crate) fn write_overlay<T: Pixel>(
    path: &Path,
    image: ArrayView2<'_, T>,
    classes: ArrayView2<'_, u16>,
    read_out: &ReadOut,
    per_metre: Option<(u32, u32)>,
) -> Result<(), FileError> {
    let (h, w) = image.dim();
    let rgb = render(image, classes, read_out).map_err(|m| FileError::new(path, m))?;
    let (w32, h32) = (
        u32::try_from(w).map_err(|e| FileError::new(path, e))?,
        u32::try_from(h).map_err(|e| FileError::new(path, e))?,
    );
    write_png_bytes(
        path,
        (w32, h32),
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &rgb,
        None,
        per_metre,
    )
}

/// The RGB bytes of the overlay, row-major.
fn render<T: Pixel>(
    image: ArrayView2<'_, T>,
    classes: ArrayView2<'_, u16>,
    read_out: &ReadOut,
) -> Result<Vec<u8>, String> {
    // Indexing below takes the classes at the image's pixels.
    if image.dim() != classes.dim() {
        return Err(format!(
            "the overlay's classes are {:?}, the image {:?}",
            classes.dim(),
            image.dim()
        ));
    }
    let gray = to_gray(image);
    let (objects, _) = read_out
        .apply(classes.into_dyn())
        .map_err(|e| e.to_string())?;
    let by_object = !read_out.is_components();
    let objects = objects
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| e.to_string())?;
    let (h, w) = gray.dim();
    let mut rgb = try_vec(
        h.checked_mul(w)
            .and_then(|n| n.checked_mul(3))
            .ok_or("the overlay is too large")?,
    )?;
    for ((y, x), &g) in gray.indexed_iter() {
        let id = objects[[y, x]];
        let edge = id != 0 && {
            // Touching objects of different classes form one instance; their
            // class boundary is drawn too.
            let differs = |yy: usize, xx: usize| {
                objects[[yy, xx]] != id || (!by_object && classes[[yy, xx]] != classes[[y, x]])
            };
            (y > 0 && differs(y - 1, x))
                || (y + 1 < h && differs(y + 1, x))
                || (x > 0 && differs(y, x - 1))
                || (x + 1 < w && differs(y, x + 1))
        };
        if edge {
            let key = if by_object {
                id as usize
            } else {
                usize::from(classes[[y, x]])
            };
            rgb.extend_from_slice(&PALETTE[(key.max(1) - 1) % PALETTE.len()]);
        } else {
            rgb.extend_from_slice(&[g, g, g]);
        }
    }
    Ok(rgb)
}

/// The image scaled from its `LOW`..`HIGH` percentiles to 0..255.
fn to_gray<T: Pixel>(image: ArrayView2<'_, T>) -> Array2<u8> {
    let mut values: Vec<f64> = image
        .iter()
        .map(|v| v.to_f64())
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = (percentile(&mut values, LOW), percentile(&mut values, HIGH));
    let range = if hi > lo { hi - lo } else { 1.0 };
    image.mapv(|v| {
        let t = ((v.to_f64() - lo) / range).clamp(0.0, 1.0);
        if t.is_nan() {
            0
        } else {
            (t * 255.0).round() as u8
        }
    })
}

/// The `q`-th percentile (nearest rank), 0 for no values.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * (values.len() - 1) as f64).round() as usize;
    let (_, v, _) = values.select_nth_unstable_by(rank.min(values.len() - 1), f64::total_cmp);
    *v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn outlines_objects_in_class_colours() {
        let image = array![
            [0u8, 50, 100, 150],
            [200, 250, 255, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0]
        ];
        let classes = array![[0u16, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 2]];
        let rgb = render(image.view(), classes.view(), &ReadOut::default()).unwrap();
        let px = |y: usize, x: usize| &rgb[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3];
        assert_eq!(px(0, 1), PALETTE[0]); // border of the class-1 object
        assert_eq!(px(3, 3), PALETTE[1]); // a one-pixel class-2 object is all border
        assert_eq!(px(0, 0), [0, 0, 0]);
        assert_eq!(px(1, 0)[0], px(1, 0)[1]); // background stays gray
        assert!(render(
            image.view(),
            classes.slice(ndarray::s![..3, ..]),
            &ReadOut::default()
        )
        .is_err());
    }

    #[test]
    fn touching_objects_of_a_read_out_get_colours_of_their_own() {
        let image = Array2::<u8>::zeros((3, 6));
        // Two interiors (1) touching along a boundary band (2).
        let classes = array![
            [2u16, 2, 2, 2, 2, 2],
            [2, 1, 2, 2, 1, 2],
            [2, 2, 2, 2, 2, 2]
        ];
        let read_out = ReadOut {
            seed_classes: vec![1],
            grow_classes: vec![2],
            grow: 2,
            ..ReadOut::default()
        };
        let rgb = render(image.view(), classes.view(), &read_out).unwrap();
        let px = |y: usize, x: usize| &rgb[(y * 6 + x) * 3..(y * 6 + x) * 3 + 3];
        assert_eq!(px(1, 2), PALETTE[0]); // the first object's edge, where it meets the second
        assert_eq!(px(1, 3), PALETTE[1]); // the second object's
        assert_eq!(px(1, 1), [0, 0, 0]); // an interior pixel inside both outlines stays gray
                                         // As plain components, the band and interiors are one object whose
                                         // class boundaries are drawn.
        let rgb = render(image.view(), classes.view(), &ReadOut::default()).unwrap();
        assert_eq!(&rgb[(6 + 2) * 3..(6 + 2) * 3 + 3], PALETTE[1]);
    }

    #[test]
    fn percentiles_by_rank() {
        let mut v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [], 5.0), 0.0);
    }
}
