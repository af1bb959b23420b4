//! The physical size of a TIFF's pixels, which results carry on: a result
//! without it was measured in pixels, and an anisotropic volume's labels
//! showed squashed beside the image in viewers.
//!
//! Read from the first page: `XResolution`, `YResolution` and
//! `ResolutionUnit` (kept as written, for TIFF results), and the size in
//! micrometres where the file says it: an inch or centimetre unit, ImageJ's
//! `unit=` and `spacing=`, or OME's `PhysicalSizeX/Y/Z` (for OME-Zarr
//! results).

use super::tiff_description::{imagej_text, ome_attribute, ome_pixels};

/// Pixels per unit along one axis, as a TIFF rational.
pub(crate) type Resolution = (u32, u32);

/// What a TIFF says of its pixels' physical size.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Calibration {
    /// `XResolution`, `YResolution` (pixels per unit) and `ResolutionUnit`
    /// (1 none, 2 inch, 3 centimetre), as written.
    pub tags: Option<(Resolution, Resolution, u16)>,
    /// A pixel's size in micrometres along `z`, `y` and `x`, where known.
    pub micrometres: [Option<f64>; 3],
}

/// The calibration of a page whose resolution tags are `x`, `y` and `unit`
/// (absent: `None`) and whose description is `description`; `None` where
/// the file says nothing beyond TIFF's defaults (1 pixel per unit, no unit).
pub(super) fn calibration(
    x: Option<Resolution>,
    y: Option<Resolution>,
    unit: Option<u16>,
    description: Option<&str>,
) -> Option<Calibration> {
    let unit = unit.unwrap_or(2);
    let tags = match (x, y) {
        (Some(x), Some(y)) if x.0 > 0 && x.1 > 0 && y.0 > 0 && y.1 > 0 => Some((x, y, unit)),
        _ => None,
    };
    // Micrometres per the tags' unit: TIFF's own, or ImageJ's word for a
    // file whose unit is "none".
    let imagej = description.filter(|d| d.starts_with("ImageJ="));
    let per_unit = match unit {
        2 => Some(25_400.0),
        3 => Some(10_000.0),
        _ => imagej
            .and_then(|d| imagej_text(d, "unit="))
            .and_then(micrometres_per),
    };
    let size = |r: Resolution| f64::from(r.1) / f64::from(r.0);
    let mut micrometres = match (tags, per_unit) {
        (Some((x, y, _)), Some(per)) => [None, Some(size(y) * per), Some(size(x) * per)],
        _ => [None; 3],
    };
    if let (Some(spacing), Some(per)) = (imagej.and_then(|d| imagej_text(d, "spacing=")), per_unit)
    {
        micrometres[0] = spacing.parse::<f64>().ok().map(|s| s * per);
    }
    if let Some(pixels) = description.and_then(ome_pixels) {
        for (slot, name) in micrometres.iter_mut().zip(["Z", "Y", "X"]) {
            let size = ome_attribute(pixels, &format!("PhysicalSize{name}"))
                .and_then(|v| v.parse::<f64>().ok());
            // OME's default unit is the micrometre.
            let per = ome_attribute(pixels, &format!("PhysicalSize{name}Unit"))
                .map_or(Some(1.0), micrometres_per);
            if let (Some(size), Some(per)) = (size, per) {
                *slot = Some(size * per);
            }
        }
    }
    for slot in &mut micrometres {
        *slot = slot.filter(|s| s.is_finite() && *s > 0.0);
    }
    let said = tags.is_some_and(|(x, y, unit)| x.0 != x.1 || y.0 != y.1 || unit != 1);
    (said || micrometres.iter().any(Option::is_some)).then_some(Calibration { tags, micrometres })
}

/// The calibration of a PNG whose pHYs chunk says `x` and `y` pixels per
/// metre (`None` where either is 0).
pub(super) fn png_calibration(x: u32, y: u32) -> Option<Calibration> {
    let size = |per_metre: u32| (per_metre > 0).then(|| 1e6 / f64::from(per_metre));
    Some(Calibration {
        tags: None,
        micrometres: [None, Some(size(y)?), Some(size(x)?)],
    })
}

/// Pixels per metre along `x` and `y` (a PNG's pHYs chunk) of pixels
/// `micrometres` (`z`, `y`, `x`) in size, where `y` and `x` are known and
/// the rounded counts fit PNG's 31 bits.
pub(crate) fn png_pixels_per_metre(micrometres: [Option<f64>; 3]) -> Option<(u32, u32)> {
    let per_metre = |size: Option<f64>| {
        let n = (1e6 / size?).round();
        (n >= 1.0 && n <= f64::from(i32::MAX as u32)).then_some(n as u32)
    };
    Some((per_metre(micrometres[2])?, per_metre(micrometres[1])?))
}

impl Calibration {
    /// The resolution tags of a TIFF result: pixels per centimetre where
    /// the pixel size in micrometres is known (TIFF's own unit, which every
    /// reader reads: ImageJ's "micron" lives in its description, OME's
    /// sizes in its XML, neither of which a result carries), else the
    /// input's tags as written.
    pub(crate) fn result_tags(&self) -> Option<(Resolution, Resolution, u16)> {
        match (self.micrometres[1], self.micrometres[2]) {
            (Some(y), Some(x)) => Some((per_centimetre(x)?, per_centimetre(y)?, 3)),
            _ => self.tags,
        }
    }
}

/// Pixels per centimetre of pixels `micrometres` wide, as a rational
/// (10^k in the denominator, as large as the numerator allows).
fn per_centimetre(micrometres: f64) -> Option<Resolution> {
    let value = 10_000.0 / micrometres;
    (0..=6).rev().map(|k| 10u32.pow(k)).find_map(|d| {
        let n = (value * f64::from(d)).round();
        (n >= 1.0 && n <= f64::from(u32::MAX)).then_some((n as u32, d))
    })
}

/// Micrometres in one `unit`, as ImageJ and OME name units.
fn micrometres_per(unit: &str) -> Option<f64> {
    match unit.trim().trim_matches('"') {
        "micron" | "microns" | "um" | "µm" | "\u{3bc}m" | "\\u00B5m" | "micrometer"
        | "micrometre" => Some(1.0),
        "nm" | "nanometer" | "nanometre" => Some(1e-3),
        "mm" | "millimeter" | "millimetre" => Some(1e3),
        "cm" | "centimeter" | "centimetre" => Some(1e4),
        "m" | "meter" | "metre" => Some(1e6),
        "inch" | "in" => Some(25_400.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::calibration;

    #[test]
    fn sizes_come_from_the_unit_imagej_or_ome() {
        // 4 pixels per micrometre, ImageJ's unit with TIFF's "none".
        let imagej = calibration(
            Some((4, 1)),
            Some((4, 1)),
            Some(1),
            Some("ImageJ=1.11a\nunit=micron\nspacing=2.0\n"),
        )
        .unwrap();
        assert_eq!(imagej.micrometres, [Some(2.0), Some(0.25), Some(0.25)]);
        assert_eq!(imagej.tags, Some(((4, 1), (4, 1), 1)));
        // 10000 pixels per centimetre.
        let cm = calibration(Some((10_000, 1)), Some((5_000, 1)), Some(3), None).unwrap();
        assert_eq!(cm.micrometres, [None, Some(2.0), Some(1.0)]);
        let ome = "<OME xmlns=\"x\"><Image><Pixels DimensionOrder=\"XYCZT\" PhysicalSizeX=\"0.5\" \
                   PhysicalSizeY=\"0.5\" PhysicalSizeZ=\"3\" PhysicalSizeZUnit=\"nm\"></Pixels></Image></OME>";
        assert_eq!(
            calibration(None, None, None, Some(ome))
                .unwrap()
                .micrometres,
            [Some(0.003), Some(0.5), Some(0.5)]
        );
        // TIFF's defaults, and nonsense, say nothing.
        assert_eq!(calibration(Some((1, 1)), Some((1, 1)), Some(1), None), None);
        assert_eq!(
            calibration(None, None, None, Some("{\"shape\": [5, 6]}")),
            None
        );
        assert_eq!(calibration(Some((0, 1)), Some((4, 0)), Some(1), None), None);
        let unknown = calibration(
            Some((4, 1)),
            Some((4, 1)),
            Some(1),
            Some("ImageJ=1.11a\nunit=parsec\n"),
        )
        .unwrap();
        assert_eq!(unknown.micrometres, [None; 3]);
        assert_eq!(unknown.tags, Some(((4, 1), (4, 1), 1)));
        // Results say the size in pixels per centimetre where it is known.
        let per_cm = (4_000_000_000, 100_000);
        assert_eq!(imagej.result_tags(), Some((per_cm, per_cm, 3)));
        assert_eq!(unknown.result_tags(), unknown.tags);
        assert_eq!(super::per_centimetre(0.325), Some((3_076_923_077, 100_000)));
        assert_eq!(super::per_centimetre(1e12), None);
    }
}
