//! The display colour of each class of a label image (OME-Zarr's
//! `image-label` colours), one rule for every writer: the command line's
//! OME-Zarr results and `unet_rt.dask`'s.
//!
//! Class 0, the background, is transparent. Classes 1 to 12 take a palette
//! of distinct colours; later classes take colours that never repeat and
//! never equal a palette entry (earlier versions cycled the 12, so class 13
//! looked like class 1).

/// Distinct colours (RGB) of classes 1 to 12.
const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [220, 190, 255],
];

/// Bits of a class number beyond the palette spread over each channel.
const BITS_PER_CHANNEL: u32 = 7;

/// The RGBA colour of `class`.
///
/// Beyond the palette, the bits of `class - 12` are dealt in turn to red,
/// green and blue, most significant place first (so that consecutive
/// classes differ in the high bits), 7 bits per channel: distinct for the
/// first 2^21 classes beyond the palette (far more than a label image's
/// 16 bits hold). The lowest bits are set to odd red, even green, odd blue,
/// which no palette entry has.
///
/// ```
/// use unet_rt::class_colours::class_colour;
/// assert_eq!(class_colour(0), [0, 0, 0, 0]);
/// assert_eq!(class_colour(1), [230, 25, 75, 255]);
/// assert_ne!(class_colour(13), class_colour(1));
/// ```
pub fn class_colour(class: u64) -> [u8; 4] {
    if class == 0 {
        return [0, 0, 0, 0];
    }
    if let Some(&[r, g, b]) = usize::try_from(class - 1).ok().and_then(|i| PALETTE.get(i)) {
        return [r, g, b, 255];
    }
    let n = class - PALETTE.len() as u64;
    let mut rgb = [0u8; 3];
    for bit in 0..3 * BITS_PER_CHANNEL {
        if n >> bit & 1 == 1 {
            let place = 7 - bit / 3;
            rgb[(bit % 3) as usize] |= 1 << place;
        }
    }
    [rgb[0] | 1, rgb[1] & !1, rgb[2] | 1, 255]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_background_is_transparent_and_the_palette_comes_first() {
        assert_eq!(class_colour(0), [0, 0, 0, 0]);
        for (i, &[r, g, b]) in PALETTE.iter().enumerate() {
            assert_eq!(class_colour(i as u64 + 1), [r, g, b, 255]);
        }
    }

    #[test]
    fn every_class_of_a_16_bit_label_image_has_a_colour_of_its_own() {
        let mut seen = HashSet::new();
        for class in 1..=u64::from(u16::MAX) {
            let colour = class_colour(class);
            assert_eq!(colour[3], 255);
            assert!(seen.insert(colour), "class {class} repeats {colour:?}");
        }
    }

    #[test]
    fn consecutive_classes_beyond_the_palette_differ_in_a_high_bit() {
        let [r, g, b, _] = class_colour(13);
        assert_eq!([r, g, b], [129, 0, 1]);
        assert_eq!(class_colour(14)[..3], [1, 128, 1]);
        assert_eq!(class_colour(16)[..3], [1, 0, 129]);
        // Huge numbers (ids, not classes) still get a colour, without overflow.
        assert_eq!(class_colour(u64::MAX)[3], 255);
    }
}
