//! The OME-XML description of a TIFF result named `*.ome.tif`: the result
//! of an OME-TIFF input keeps its name, and readers that go by the name
//! (Bio-Formats in Fiji and QuPath) expect OME-XML in it. With it they also
//! see the result's axes (slices, time points, classes as channels) and the
//! pixels' physical size, where a plain TIFF is a flat run of pages.

use std::fmt::Write;

/// What an OME-TIFF result says besides its shape.
#[derive(Debug, Clone, Default)]
pub(crate) struct OmeResult<'a> {
    /// A pixel's size in micrometres along `z`, `y` and `x`, where known.
    pub micrometres: [Option<f64>; 3],
    /// Names of the result's channels (the classes of probabilities).
    pub channel_names: &'a [String],
    /// The image's name (the input's file name).
    pub name: &'a str,
}

/// Whether a result at `file_name` is an OME-TIFF by its name.
pub(crate) fn is_ome_tiff_name(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    lower.ends_with(".ome.tif") || lower.ends_with(".ome.tiff")
}

/// The OME-XML of a result of `shape` whose axes are `axes` (letters of
/// `TZCYX`, each at most once, ending in `YX`, as the TIFF writer names
/// them), pages in C order, of OME pixel type `pixel_type` (`uint8`,
/// `uint16`, `uint32`, `float`); `None` where the axes are not such.
pub(crate) fn ome_xml(
    shape: &[usize],
    axes: &str,
    pixel_type: &str,
    about: &OmeResult<'_>,
) -> Option<String> {
    let letters: Vec<char> = axes.chars().collect();
    if letters.len() != shape.len() || !axes.ends_with("YX") {
        return None;
    }
    let pages = &letters[..letters.len() - 2];
    if pages.iter().any(|l| !"TZC".contains(*l))
        || pages
            .iter()
            .enumerate()
            .any(|(i, l)| pages[..i].contains(l))
    {
        return None;
    }
    let size = |letter: char| {
        letters
            .iter()
            .position(|&l| l == letter)
            .map_or(1, |i| shape[i])
    };
    // Fastest first after X and Y: the page axes reversed, then those the
    // result lacks (length 1).
    let mut order: String = "XY".into();
    order.extend(pages.iter().rev());
    order.extend("ZCT".chars().filter(|l| !pages.contains(l)));
    let planes: usize = pages.iter().map(|&l| size(l)).product();

    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"http://www.openmicroscopy.org/Schemas/OME/2016-06 \
         http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd\"",
    );
    let _ = write!(
        xml,
        " Creator=\"unet-rt {}\"><Image ID=\"Image:0\" Name=\"{}\">\
         <Pixels ID=\"Pixels:0\" DimensionOrder=\"{order}\" Type=\"{pixel_type}\" \
         SizeX=\"{}\" SizeY=\"{}\" SizeZ=\"{}\" SizeC=\"{}\" SizeT=\"{}\"",
        env!("CARGO_PKG_VERSION"),
        escape(about.name),
        size('X'),
        size('Y'),
        size('Z'),
        size('C'),
        size('T'),
    );
    let [z, y, x] = about.micrometres;
    for (axis, value) in [("X", x), ("Y", y), ("Z", z.filter(|_| size('Z') > 1))] {
        if let Some(v) = value.filter(|v| v.is_finite() && *v > 0.0) {
            let _ = write!(xml, " PhysicalSize{axis}=\"{v}\"");
        }
    }
    xml.push('>');
    for c in 0..size('C') {
        let _ = write!(xml, "<Channel ID=\"Channel:0:{c}\" SamplesPerPixel=\"1\"");
        if let Some(name) = about.channel_names.get(c).filter(|_| size('C') > 1) {
            let _ = write!(xml, " Name=\"{}\"", escape(name));
        }
        xml.push_str("/>");
    }
    let _ = write!(xml, "<TiffData IFD=\"0\" PlaneCount=\"{planes}\"/>");
    xml.push_str("</Pixels></Image></OME>");
    Some(xml)
}

/// `text` as an XML attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters have no place in XML 1.0 attributes.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_say_ome_tiff() {
        assert!(is_ome_tiff_name("cells.ome.tif"));
        assert!(is_ome_tiff_name("cells.OME.TIFF"));
        assert!(!is_ome_tiff_name("cells.tif"));
        assert!(!is_ome_tiff_name("home.tif"));
    }

    #[test]
    fn page_axes_are_listed_fastest_first_after_x_and_y() {
        let about = OmeResult::default();
        let xml = ome_xml(&[4, 3, 20, 30], "ZCYX", "float", &about).unwrap();
        assert!(xml.contains("DimensionOrder=\"XYCZT\""), "{xml}");
        assert!(xml.contains("SizeX=\"30\" SizeY=\"20\" SizeZ=\"4\" SizeC=\"3\" SizeT=\"1\""));
        assert!(xml.contains("<TiffData IFD=\"0\" PlaneCount=\"12\"/>"));
        assert_eq!(xml.matches("<Channel ").count(), 3);
        let xml = ome_xml(&[2, 5, 20, 30], "TZYX", "uint8", &about).unwrap();
        assert!(xml.contains("DimensionOrder=\"XYZTC\""), "{xml}");
        let xml = ome_xml(&[20, 30], "YX", "uint16", &about).unwrap();
        assert!(xml.contains("DimensionOrder=\"XYZCT\"") && xml.contains("PlaneCount=\"1\""));
    }

    #[test]
    fn axes_outside_ome_s_model_give_none() {
        let about = OmeResult::default();
        assert!(ome_xml(&[2, 20, 30], "QYX", "uint8", &about).is_none());
        assert!(ome_xml(&[2, 2, 20, 30], "ZZYX", "uint8", &about).is_none());
        assert!(ome_xml(&[20, 30], "XY", "uint8", &about).is_none());
        assert!(ome_xml(&[2, 20, 30], "YX", "uint8", &about).is_none());
    }

    #[test]
    fn sizes_and_names_are_written_escaped() {
        let names = ["back\"ground".to_owned(), "a<b & c".to_owned()];
        let about = OmeResult {
            micrometres: [Some(2.0), Some(0.25), Some(0.5)],
            channel_names: &names,
            name: "x&y.ome.tif",
        };
        let xml = ome_xml(&[2, 20, 30], "CYX", "float", &about).unwrap();
        assert!(
            xml.contains("PhysicalSizeX=\"0.5\" PhysicalSizeY=\"0.25\""),
            "{xml}"
        );
        assert!(
            !xml.contains("PhysicalSizeZ"),
            "a single plane has no z size: {xml}"
        );
        assert!(
            xml.contains("Name=\"back&quot;ground\"") && xml.contains("Name=\"a&lt;b &amp; c\"")
        );
        assert!(xml.contains("Name=\"x&amp;y.ome.tif\""));
    }
}
