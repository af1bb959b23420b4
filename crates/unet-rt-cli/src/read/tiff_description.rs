//! What a TIFF's first description says of the file: tifffile's shaped
//! arrays (`{"shape": [...], "axes": "ZCYX"}`), ImageJ's hyperstacks
//! (`channels=`, `slices=`, `frames=`) and OME-XML's dimensions, which the
//! reader turns into the image's shape and axes.

/// What a description written by Python's tifffile says of the array the
/// pages hold: its shape, and its axes where the writer named them.
pub(super) struct Shaped {
    pub(super) shape: Vec<usize>,
    /// In this tool's letters; `None` where the file names axes this tool
    /// has no letter for (they are then guessed, or named with --axes).
    pub(super) axes: Option<String>,
    /// Whether the file names its axes (tifffile's `axes`).
    pub(super) named: bool,
}

/// tifffile's description of a shaped array (`{"shape": [9, 2, 45, 31],
/// "axes": "ZCYX"}`), where it holds what the file does: `pages` pages of
/// `page`, whose axes are `page_axes` (`yx`, `yxc`, or `cyx` for planes
/// read plane after plane). tifffile reads such a file
/// back in that shape; read as a plain stack of pages, a one-plane volume
/// `(1, y, x)` could not be given to a 3-D model, nor a ZCYX stack named.
pub(super) fn shaped(text: &str, pages: usize, page: &[usize], page_axes: &str) -> Option<Shaped> {
    let (value, shape) = tifffile_shape(text)?;
    let leading = shape.len().checked_sub(page.len())?;
    if !shape.ends_with(page) || elements(&shape)? != elements(page)?.checked_mul(pages)? {
        return None;
    }
    // Axes the file names but this tool cannot (Q, two channel axes) are
    // left to --axes, not guessed from the shape.
    let axes = match value.get("axes") {
        Some(named) => named
            .as_str()
            .filter(|a| a.chars().count() == shape.len())
            .and_then(our_letters),
        // Unnamed: one page axis is a stack's z; several stay one stack of
        // pages, as they were read before (a 2-D model reads them all).
        None => match leading {
            0 => Some(page_axes.to_owned()),
            // Unless the pages are slivers: tifffile stores an array of
            // `(y, x, c)` with 2 or more than 4 channels as `y` pages of
            // `x` by `c`, which read as a stack was 96 images of 128x2 px.
            // The shape rule (Python's for the same array) decides.
            1 if page.len() == 2 && page[1] <= CHANNEL_LIKE && page[1] < page[0] => None,
            1 => Some(format!("z{page_axes}")),
            _ => return None,
        },
    };
    let named = value.get("axes").is_some();
    Some(Shaped { shape, axes, named })
}

/// The axes of a page of `samples` channels read as it is stored
/// (interleaved: `yxc`).
pub(super) fn contiguous_axes(samples: usize) -> &'static str {
    if samples > 1 {
        "yxc"
    } else {
        "yx"
    }
}

/// The widest page whose unnamed tifffile shape may be a `(y, x, c)` array
/// stored as pages (see [`shaped`]).
const CHANNEL_LIKE: usize = 8;

/// The JSON document and shape of a tifffile description.
fn tifffile_shape(text: &str) -> Option<(serde_json::Value, Vec<usize>)> {
    if !text.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let shape: Vec<usize> = value
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()?;
    Some((value, shape))
}

/// The number of elements of `shape`, `None` where that overflows.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// How many pages the image of a TIFF's first description takes, where it
/// says: ImageJ's `images=`, the planes of OME's one image (`SizeZ` x
/// `SizeT` x the channels not held in a page's `samples`), or the pages a
/// tifffile shape covers (`page`: `(y, x)`, `(y, x, samples)`, or
/// `(samples, y, x)` for separate planes). A file
/// of more pages holds other images after it (series), one of fewer keeps a
/// stack in one page (tifffile's `truncate=True`, ImageJ's stacks beyond 4
/// GB): read as a plain stack, the first gave every series as one stack and
/// the second plane 1 alone, without a word.
///
/// # Errors
/// For an OME document of several images (series).
pub(super) fn declared_pages(
    text: &str,
    page: &[usize],
    samples: usize,
) -> Result<Option<usize>, String> {
    if text.starts_with("ImageJ=") {
        return Ok(imagej_field(text, "images="));
    }
    if let Some(pixels) = ome_pixels(text) {
        let images = text
            .match_indices("Image ")
            .filter(|&(at, _)| at > 0 && matches!(text.as_bytes()[at - 1], b'<' | b':'))
            .count();
        if images > 1 {
            return Err(format!(
                "its OME description holds {images} images (series), which are not read as one: save \
                 each as its own file (tifffile.imread(path, series=n) reads the n-th)"
            ));
        }
        let samples = samples.max(1);
        let size = |name| ome_size(pixels, name);
        return Ok(match (size("SizeC"), size("SizeZ"), size("SizeT")) {
            (Some(c), Some(z), Some(t)) => Some(
                [c.div_ceil(samples), z, t]
                    .into_iter()
                    .fold(1usize, usize::saturating_mul),
            ),
            _ => None,
        });
    }
    let Some((_, shape)) = tifffile_shape(text) else {
        return Ok(None);
    };
    let (Some(all), Some(one)) = (elements(&shape), elements(page)) else {
        return Ok(None);
    };
    Ok((shape.ends_with(page) && one > 0 && all % one == 0).then_some(all / one))
}

/// What a file of several images (series) is told.
pub(super) const SERIES: &str =
    "the file holds several images (series), which are not read as one; save each \
     as its own file (tifffile.imread(path, series=n) reads the n-th)";

/// Why a file of `pages` pages whose description says its image takes
/// `declared` (see [`declared_pages`]) is not read.
pub(super) fn pages_differ(declared: usize, pages: usize) -> String {
    if declared > pages {
        format!(
            "its description declares {declared} planes, but the file holds {pages} page(s): a stack kept \
             in one page (tifffile's truncate=True, ImageJ's stacks over 4 GB) or spread over several \
             files is not read; save it with one page per plane (tifffile.imwrite(path, stack)) or as OME-Zarr"
        )
    } else {
        format!("its description covers the first {declared} of its {pages} pages: {SERIES}")
    }
}

/// tifffile's axis letters as this tool's (`T` is a batch, `S` samples
/// are channels); `None` for others (`Q`, unknown) or a letter twice.
fn our_letters(axes: &str) -> Option<String> {
    let letters: String = axes
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            'Y' => Some('y'),
            'X' => Some('x'),
            'Z' => Some('z'),
            'C' | 'S' => Some('c'),
            'T' => Some('b'),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let distinct: std::collections::BTreeSet<char> = letters.chars().collect();
    (distinct.len() == letters.len()).then_some(letters)
}

/// What a TIFF's first description says its pages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PageAxes {
    /// Nothing (a plain stack).
    Unknown,
    /// Slices or time points, one channel (or the channels in each page's
    /// samples), in an order the description does not say.
    Planes,
    /// The axes the pages run along, slowest first, in this tool's letters
    /// (`b` time points, `z` slices, `c` channels) with their lengths; only
    /// those longer than 1.
    Named(Vec<(char, usize)>),
    /// OME's C between Z and T, both longer than 1.
    Interleaved,
}

impl PageAxes {
    /// The length of the `c` axis, where the pages have one.
    pub(super) fn channels(&self) -> Option<usize> {
        match self {
            Self::Named(axes) => axes.iter().find(|(l, _)| *l == 'c').map(|&(_, n)| n),
            _ => None,
        }
    }
}

/// The axes of `sizes` (`(letter, length)`, slowest first) longer than 1,
/// as [`PageAxes::Named`]; [`PageAxes::Planes`] where only their order
/// would be named.
fn named(sizes: impl IntoIterator<Item = (char, usize)>) -> PageAxes {
    let axes: Vec<(char, usize)> = sizes.into_iter().filter(|&(_, n)| n > 1).collect();
    if axes.is_empty() {
        PageAxes::Planes
    } else {
        PageAxes::Named(axes)
    }
}

/// What page 1's description says the pages are: an ImageJ description
/// (`channels=`, `slices=`, `frames=`, pages in that order, channels
/// fastest) or OME-XML (`DimensionOrder`, `SizeC`, `SizeZ`, `SizeT` of its
/// `Pixels`). Only ImageJ's `channels=` was read: an ImageJ or OME z-stack
/// with as many slices as a model has channels was read as one image's
/// channels, and an OME file's channels as separate images. Time points
/// are a batch (`b`), as in tifffile's `T`: read as slices, a time series
/// of volumes reached a 3-D model as one volume of every time point's
/// slices.
pub(super) fn describe_pages(text: &str) -> PageAxes {
    if text.starts_with("ImageJ=") {
        let field = |name| imagej_field(text, name).unwrap_or(1);
        let (c, z, t) = (field("channels="), field("slices="), field("frames="));
        if c <= 1 && z <= 1 && t <= 1 {
            return PageAxes::Unknown;
        }
        return named([('b', t), ('z', z), ('c', c)]);
    }
    let Some(pixels) = ome_pixels(text) else {
        return PageAxes::Unknown;
    };
    let size = |name| ome_size(pixels, name);
    let (Some(order), Some(c), Some(z), Some(t)) = (
        ome_attribute(pixels, "DimensionOrder"),
        size("SizeC"),
        size("SizeZ"),
        size("SizeT"),
    ) else {
        return PageAxes::Unknown;
    };
    // The order after XY, fastest first.
    let inner = order.trim().to_ascii_uppercase();
    let letters = inner
        .strip_prefix("XY")
        .filter(|rest| rest.len() == 3 && ["C", "Z", "T"].iter().all(|l| rest.contains(l)));
    let Some(letters) = letters else {
        return if c <= 1 {
            PageAxes::Planes
        } else {
            PageAxes::Unknown
        };
    };
    let axes = named(letters.chars().rev().map(|l| match l {
        'C' => ('c', c),
        'Z' => ('z', z),
        _ => ('b', t),
    }));
    let order: String = match &axes {
        PageAxes::Named(axes) => axes.iter().map(|&(l, _)| l).collect(),
        _ => String::new(),
    };
    if order == "bcz" || order == "zcb" {
        return PageAxes::Interleaved;
    }
    axes
}

/// The number after `name` (`"slices="`) on a line of an ImageJ description.
fn imagej_field(text: &str, name: &str) -> Option<usize> {
    imagej_text(text, name)?.parse::<usize>().ok()
}

/// The text after `name` (`"unit="`) on the first line of an ImageJ
/// description that starts with it, trimmed.
pub(super) fn imagej_text<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
}

/// The value of attribute `name` among `pixels` (see [`ome_pixels`]).
pub(super) fn ome_attribute<'a>(pixels: &'a str, name: &str) -> Option<&'a str> {
    let at = pixels.find(&format!(" {name}=\""))? + name.len() + 3;
    pixels[at..].split('"').next()
}

/// A size attribute of `pixels` (`SizeC` ...), where it is a number.
fn ome_size(pixels: &str, name: &str) -> Option<usize> {
    ome_attribute(pixels, name).and_then(|v| v.trim().parse::<usize>().ok())
}

/// The attributes of the first `Pixels` element of an OME-XML document
/// (any namespace prefix), up to its closing `>`.
pub(super) fn ome_pixels(text: &str) -> Option<&str> {
    if !text.contains("<OME") && !text.contains(":OME") {
        return None;
    }
    let start = text
        .match_indices("Pixels ")
        .map(|(at, _)| at)
        .find(|&at| at > 0 && matches!(text.as_bytes()[at - 1], b'<' | b':'))?;
    let rest = &text[start..];
    Some(&rest[..rest.find('>')?])
}

#[cfg(test)]
mod tests {
    use super::contiguous_axes;
    use super::{declared_pages, describe_pages, shaped, PageAxes};

    #[test]
    fn tifffile_shapes_are_read_where_they_hold_the_pages() {
        let read = |text: &str, pages: usize, page: &[usize]| {
            shaped(
                text,
                pages,
                page,
                contiguous_axes(page.get(2).copied().unwrap_or(1)),
            )
            .map(|s| (s.shape, s.axes))
        };
        // A one-plane volume, a named ZCYX stack, an unnamed one, colour.
        assert_eq!(
            read(r#"{"shape": [1, 40, 52]}"#, 1, &[40, 52]),
            Some((vec![1, 40, 52], Some("zyx".to_owned())))
        );
        assert_eq!(
            read(r#"{"shape": [9, 2, 5, 6], "axes": "ZCYX"}"#, 18, &[5, 6]),
            Some((vec![9, 2, 5, 6], Some("zcyx".to_owned())))
        );
        // Unnamed page axes, several: read as one stack of pages.
        assert_eq!(read(r#"{"shape": [9, 2, 5, 6]}"#, 18, &[5, 6]), None);
        assert_eq!(
            read(r#"{"shape": [4, 5, 6, 3]}"#, 4, &[5, 6, 3]),
            Some((vec![4, 5, 6, 3], Some("zyxc".to_owned())))
        );
        assert_eq!(
            read(r#"{"shape": [2, 3, 5, 6], "axes": "TZYX"}"#, 6, &[5, 6]),
            Some((vec![2, 3, 5, 6], Some("bzyx".to_owned())))
        );
        // Only a file that names its axes names its pages.
        let named = |text: &str| shaped(text, 2, &[5, 6], "yx").map(|s| s.named);
        assert_eq!(named(r#"{"shape": [2, 5, 6]}"#), Some(false));
        assert_eq!(named(r#"{"shape": [2, 5, 6], "axes": "ZYX"}"#), Some(true));
        // Unknown or repeated letters: the shape without names.
        assert_eq!(
            read(r#"{"shape": [9, 2, 5, 6], "axes": "QQYX"}"#, 18, &[5, 6]).map(|s| s.1),
            Some(None)
        );
        assert_eq!(
            read(r#"{"shape": [2, 5, 6, 3], "axes": "CYXS"}"#, 2, &[5, 6, 3]).map(|s| s.1),
            Some(None)
        );
        // Descriptions that do not hold the pages, or are not tifffile's.
        assert_eq!(read(r#"{"shape": [7, 5, 6]}"#, 6, &[5, 6]), None);
        assert_eq!(read(r#"{"shape": [6, 6, 5]}"#, 6, &[5, 6]), None);
        assert_eq!(
            read(r#"{"shape": [18446744073709551615, 2, 5, 6]}"#, 6, &[5, 6]),
            None
        );
        assert_eq!(read(r#"{"shape": "x"}"#, 1, &[5, 6]), None);
        assert_eq!(read("ImageJ=1.11a", 1, &[5, 6]), None);
        assert_eq!(read("{not json", 1, &[5, 6]), None);
    }

    #[test]
    fn imagej_and_ome_descriptions_say_what_pages_are() {
        let named = |axes: &[(char, usize)]| PageAxes::Named(axes.to_vec());
        assert_eq!(
            describe_pages("ImageJ=1.11a\nimages=6\nchannels=2\nslices=3\n"),
            named(&[('z', 3), ('c', 2)])
        );
        assert_eq!(
            describe_pages("ImageJ=1.11a\nimages=2\nslices=2\n"),
            named(&[('z', 2)])
        );
        // Time points are a batch, slowest: never slices of one volume.
        assert_eq!(
            describe_pages("ImageJ=1.11a\nimages=4\nframes=4\n"),
            named(&[('b', 4)])
        );
        assert_eq!(
            describe_pages("ImageJ=1.11a\nimages=24\nchannels=3\nslices=4\nframes=2\n"),
            named(&[('b', 2), ('z', 4), ('c', 3)])
        );
        assert_eq!(describe_pages("ImageJ=1.11a\n"), PageAxes::Unknown);
        assert_eq!(describe_pages("{\"shape\": [2, 5, 6]}"), PageAxes::Unknown);
        let ome = |order: &str, c: usize, z: usize, t: usize| {
            format!(
                "<?xml version=\"1.0\"?><OME xmlns=\"x\"><Image ID=\"Image:0\"><Pixels ID=\"Pixels:0\" \
                 DimensionOrder=\"{order}\" Type=\"uint8\" SizeX=\"6\" SizeY=\"5\" SizeC=\"{c}\" SizeZ=\"{z}\" \
                 SizeT=\"{t}\"><Channel ID=\"Channel:0:0\"/></Pixels></Image></OME>"
            )
        };
        assert_eq!(describe_pages(&ome("XYCZT", 2, 1, 1)), named(&[('c', 2)]));
        assert_eq!(
            describe_pages(&ome("XYCZT", 2, 3, 1)),
            named(&[('z', 3), ('c', 2)])
        );
        assert_eq!(
            describe_pages(&ome("XYZCT", 2, 3, 1)),
            named(&[('c', 2), ('z', 3)])
        );
        assert_eq!(
            describe_pages(&ome("XYZTC", 2, 1, 4)),
            named(&[('c', 2), ('b', 4)])
        );
        assert_eq!(
            describe_pages(&ome("XYZCT", 2, 1, 4)),
            named(&[('b', 4), ('c', 2)])
        );
        assert_eq!(
            describe_pages(&ome("XYZTC", 1, 3, 2)),
            named(&[('b', 2), ('z', 3)])
        );
        assert_eq!(
            describe_pages(&ome("XYTZC", 1, 3, 2)),
            named(&[('z', 3), ('b', 2)])
        );
        assert_eq!(
            describe_pages(&ome("XYZCT", 2, 3, 4)),
            PageAxes::Interleaved
        );
        assert_eq!(describe_pages(&ome("XYZCT", 1, 3, 1)), named(&[('z', 3)]));
        assert_eq!(describe_pages(&ome("XYZCT", 1, 1, 1)), PageAxes::Planes);
        let prefixed = ome("XYCZT", 3, 1, 1)
            .replace("<OME", "<ome:OME")
            .replace("<Pixels", "<ome:Pixels");
        assert_eq!(describe_pages(&prefixed), named(&[('c', 3)]));
        assert_eq!(
            describe_pages("<OME><Pixels SizeC=\"2\"></Pixels></OME>"),
            PageAxes::Unknown
        );
        let max = usize::MAX;
        assert_eq!(
            describe_pages(&ome("XYZCT", 2, max, 1)),
            named(&[('c', 2), ('z', max)])
        );
        assert_eq!(
            describe_pages(&ome("XYZTC", 2, max, max)),
            named(&[('c', 2), ('b', max), ('z', max)])
        );
        // An order that is not XY and the three others names nothing.
        assert_eq!(
            describe_pages(&ome("XY\u{e9}C", 2, 3, 1)),
            PageAxes::Unknown
        );
        assert_eq!(describe_pages(&ome("XY\u{e9}C", 1, 3, 1)), PageAxes::Planes);
    }

    #[test]
    fn descriptions_say_how_many_pages_the_image_takes() {
        let pages = |text: &str, page: &[usize]| {
            declared_pages(text, page, page.get(2).copied().unwrap_or(1))
        };
        assert_eq!(
            pages("ImageJ=1.11a\nimages=6\nslices=6\n", &[5, 6]),
            Ok(Some(6))
        );
        assert_eq!(pages("ImageJ=1.11a\n", &[5, 6]), Ok(None));
        assert_eq!(pages(r#"{"shape": [9, 2, 5, 6]}"#, &[5, 6]), Ok(Some(18)));
        assert_eq!(pages(r#"{"shape": [4, 5, 6, 3]}"#, &[5, 6, 3]), Ok(Some(4)));
        assert_eq!(pages(r#"{"shape": [5, 6]}"#, &[5, 6]), Ok(Some(1)));
        // Shapes that do not end with the page say nothing.
        assert_eq!(pages(r#"{"shape": [6, 5]}"#, &[5, 6]), Ok(None));
        assert_eq!(
            pages(r#"{"shape": [18446744073709551615, 5, 6]}"#, &[5, 6]),
            Ok(None)
        );
        let ome = |images: usize, c: usize, z: usize| {
            let image = format!(
                "<Image ID=\"Image:0\"><Pixels DimensionOrder=\"XYCZT\" SizeX=\"6\" SizeY=\"5\" \
                 SizeC=\"{c}\" SizeZ=\"{z}\" SizeT=\"1\"></Pixels></Image>"
            );
            format!(
                "<?xml version=\"1.0\"?><OME xmlns=\"x\">{}</OME>",
                image.repeat(images)
            )
        };
        assert_eq!(pages(&ome(1, 2, 3), &[5, 6]), Ok(Some(6)));
        // RGB pages hold three channels each.
        assert_eq!(pages(&ome(1, 3, 4), &[5, 6, 3]), Ok(Some(4)));
        assert!(pages(&ome(2, 1, 3), &[5, 6]).is_err_and(|e| e.contains("holds 2 images")));
    }

    #[test]
    fn an_unnamed_stack_of_slivers_is_left_to_the_shape_rule() {
        let axes = |text: &str, pages: usize, page: &[usize]| {
            shaped(
                text,
                pages,
                page,
                contiguous_axes(page.get(2).copied().unwrap_or(1)),
            )
            .map(|s| s.axes)
        };
        assert_eq!(
            axes(r#"{"shape": [96, 128, 2]}"#, 96, &[128, 2]),
            Some(None)
        );
        assert_eq!(
            axes(r#"{"shape": [96, 128, 9]}"#, 96, &[128, 9]),
            Some(Some("zyx".to_owned()))
        );
        assert_eq!(axes(r#"{"shape": [3, 4, 2]}"#, 3, &[4, 2]), Some(None));
        assert_eq!(
            axes(r#"{"shape": [3, 2, 4]}"#, 3, &[2, 4]),
            Some(Some("zyx".to_owned()))
        );
    }
}
