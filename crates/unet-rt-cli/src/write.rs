//! Writing results as TIFF, PNG or NPY, always through [`write_atomically`].

use std::io::{Seek, Write};
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;
use tiff::encoder::{colortype, Rational, TiffEncoder, TiffKind, TiffValue};
use tiff::tags::{ResolutionUnit, Tag};

use crate::args::Format;
use crate::atomic::write_atomically;
use crate::errors::FileError;
use crate::ome_tiff::{self, OmeResult};

/// A result ready to be written.
#[derive(Debug)]
pub(crate) enum Output {
    /// Class labels (up to 256 classes) or instances (up to 255).
    U8(ArrayD<u8>),
    /// Class labels or instances up to 65535.
    U16(ArrayD<u16>),
    /// Instances beyond 65535.
    U32(ArrayD<u32>),
    /// Probabilities or raw output, channel-first.
    F32(ArrayD<f32>),
}

impl Output {
    /// OME's name of the element type.
    fn ome_type(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::U16(_) => "uint16",
            Self::U32(_) => "uint32",
            Self::F32(_) => "float",
        }
    }

    /// The result's shape.
    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Self::U8(a) => a.shape(),
            Self::U16(a) => a.shape(),
            Self::U32(a) => a.shape(),
            Self::F32(a) => a.shape(),
        }
    }
}

impl Output {
    /// The result with its first axis (the pages of a stack) split in two
    /// of lengths `split` (slowest first, C order), where the input's time
    /// points and slices were merged into one axis of pages.
    pub(crate) fn with_pages_split(self, split: [usize; 2]) -> Result<Self, String> {
        fn split_first<T: Clone>(a: ArrayD<T>, split: [usize; 2]) -> Result<ArrayD<T>, String> {
            let shape = a.shape().to_vec();
            if shape.first() != split[0].checked_mul(split[1]).as_ref() {
                return Err(format!(
                    "internal error: cannot split the pages of a result of shape {shape:?} into {split:?}"
                ));
            }
            let new: Vec<usize> = split.iter().chain(&shape[1..]).copied().collect();
            let standard = if a.is_standard_layout() {
                a
            } else {
                a.as_standard_layout().into_owned()
            };
            standard.into_shape_with_order(new).map_err(|e| {
                format!("internal error: cannot split the pages of shape {shape:?}: {e}")
            })
        }
        Ok(match self {
            Self::U8(a) => Self::U8(split_first(a, split)?),
            Self::U16(a) => Self::U16(split_first(a, split)?),
            Self::U32(a) => Self::U32(split_first(a, split)?),
            Self::F32(a) => Self::F32(split_first(a, split)?),
        })
    }
}

/// The input's file name as a result records it (TIFF's `DocumentName`,
/// a PNG `tEXt` chunk `unet-rt input`, an OME-Zarr result's mark): bytes outside
/// printable ASCII and `%` percent-encoded, since TIFF's text is ASCII.
/// `--skip-existing` takes a result for done only where it records the
/// input's name: `a.tif`'s result was taken for `a.npy`'s.
pub(crate) fn source_name(file_name: &str) -> String {
    let mut out = String::with_capacity(file_name.len());
    for byte in file_name.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// TIFF's `DocumentName` tag (269), which the tiff crate does not name:
/// where a TIFF result records its input.
pub(crate) const DOCUMENT_NAME: Tag = Tag::Unknown(269);

/// The keyword of the PNG text chunk that records a result's input (PNG's
/// registered `Source` means the device that made the image).
pub(crate) const PNG_SOURCE_KEYWORD: &str = "unet-rt input";

/// TIFF files beyond this size are written as BigTIFF (classic TIFF offsets
/// are 32-bit; the margin leaves room for the directories).
const BIGTIFF_FROM: usize = 4_000_000_000;

/// Writes `output` to `path` in `format`; a TIFF's first page describes
/// its shape and `axes` (tifffile's letters, one per axis of `output`) as
/// tifffile does, so that a result of more than three axes (a volume's
/// probabilities, a batch's) reads back in its shape, not as flat pages.
/// A TIFF result's pages say the input's resolution (`tags`, see
/// [`crate::read::Calibration`]); a TIFF named `*.ome.tif` is described by
/// OME-XML instead, from `ome` (see [`crate::ome_tiff`]).
pub(crate) fn write_output(
    path: &Path,
    output: &Output,
    format: Format,
    axes: &str,
    tags: Option<ResolutionTags>,
    ome: &OmeResult<'_>,
) -> Result<(), FileError> {
    match format {
        Format::Npy => write_atomically(path, |w| {
            match output {
                Output::U8(a) => a.write_npy(w),
                Output::U16(a) => a.write_npy(w),
                Output::U32(a) => a.write_npy(w),
                Output::F32(a) => a.write_npy(w),
            }
            .map_err(|e| e.to_string())
        }),
        Format::Tif => {
            // Check the shape before creating anything.
            pages(output.shape()).map_err(|m| FileError::new(path, m))?;
            let named_ome = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(ome_tiff::is_ome_tiff_name);
            let described = named_ome
                .then(|| ome_tiff::ome_xml(output.shape(), axes, output.ome_type(), ome))
                .flatten()
                .unwrap_or_else(|| shape_description(output.shape(), axes));
            let source = source_name(ome.name);
            let page = Page {
                description: &described,
                tags,
                source: &source,
            };
            write_atomically(path, |w| match output {
                Output::U8(a) => write_tiff::<colortype::Gray8, _>(w, a, page),
                Output::U16(a) => write_tiff::<colortype::Gray16, _>(w, a, page),
                Output::U32(a) => write_tiff::<colortype::Gray32, _>(w, a, page),
                Output::F32(a) => write_tiff::<colortype::Gray32Float, _>(w, a, page),
            })
        }
        Format::Png => write_png(path, output, &source_name(ome.name), ome.micrometres),
        // Written with the image, by `ome_zarr::write_ome_zarr`.
        Format::Zarr => Err(FileError::new(
            path,
            "internal error: OME-Zarr results are written with their image",
        )),
    }
}

/// `(pages, height, width)` of an array written as TIFF pages: every axis
/// before the last two becomes pages, in C order.
fn pages(shape: &[usize]) -> Result<(usize, u32, u32), String> {
    if shape.len() < 2 {
        return Err(format!(
            "cannot write an array of shape {shape:?} as an image"
        ));
    }
    let n = shape.len();
    let to_u32 =
        |v: usize| u32::try_from(v).map_err(|_| format!("{v} pixels is too wide for TIFF"));
    Ok((
        shape[..n - 2].iter().product(),
        to_u32(shape[n - 2])?,
        to_u32(shape[n - 1])?,
    ))
}

/// tifffile's description of a shaped array: `{"shape": [...], "axes":
/// "..."}`, the axes left out where they do not name every axis.
fn shape_description(shape: &[usize], axes: &str) -> String {
    let mut description = serde_json::json!({ "shape": shape });
    if axes.chars().count() == shape.len() {
        description["axes"] = serde_json::Value::from(axes);
    }
    description.to_string()
}

/// `XResolution`, `YResolution` and `ResolutionUnit` of a page.
pub(crate) type ResolutionTags = ((u32, u32), (u32, u32), u16);

/// What every page of a TIFF result says besides its pixels.
#[derive(Clone, Copy)]
struct Page<'a> {
    /// The first page's description (the result's shape and axes).
    description: &'a str,
    tags: Option<ResolutionTags>,
    /// The first page's `DocumentName`: the input's name ([`source_name`]).
    source: &'a str,
}

fn write_tiff<C, W>(w: &mut W, array: &ArrayD<C::Inner>, page: Page<'_>) -> Result<(), String>
where
    C: colortype::ColorType,
    C::Inner: Copy,
    [C::Inner]: TiffValue,
    W: Write + Seek,
{
    let bytes = array.len() * std::mem::size_of::<C::Inner>();
    if bytes >= BIGTIFF_FROM {
        write_pages::<C, _, tiff::encoder::TiffKindBig>(
            TiffEncoder::new_big(w).map_err(|e| e.to_string())?,
            array,
            page,
        )
    } else {
        write_pages::<C, _, tiff::encoder::TiffKindStandard>(
            TiffEncoder::new(w).map_err(|e| e.to_string())?,
            array,
            page,
        )
    }
}

fn write_pages<C, W, K>(
    mut encoder: TiffEncoder<W, K>,
    array: &ArrayD<C::Inner>,
    described: Page<'_>,
) -> Result<(), String>
where
    C: colortype::ColorType,
    C::Inner: Copy,
    [C::Inner]: TiffValue,
    W: Write + Seek,
    K: TiffKind,
{
    let (count, height, width) = pages(array.shape())?;
    let standard = array.as_standard_layout();
    let Some(data) = standard.as_slice() else {
        return Err("internal error: a standard-layout array is not contiguous".to_owned());
    };
    let page_len = height as usize * width as usize;
    if page_len == 0 || count == 0 {
        return Err(format!(
            "cannot write an empty image of shape {:?}",
            array.shape()
        ));
    }
    for (index, page) in data.chunks_exact(page_len).enumerate() {
        let mut image = encoder
            .new_image::<C>(width, height)
            .map_err(|e| e.to_string())?;
        if index == 0 {
            image
                .encoder()
                .write_tag(Tag::ImageDescription, described.description)
                .map_err(|e| e.to_string())?;
            image
                .encoder()
                .write_tag(DOCUMENT_NAME, described.source)
                .map_err(|e| e.to_string())?;
        }
        if let Some(((xn, xd), (yn, yd), unit)) = described.tags {
            image.x_resolution(Rational { n: xn, d: xd });
            image.y_resolution(Rational { n: yn, d: yd });
            image.resolution_unit(ResolutionUnit::from_u16(unit).unwrap_or(ResolutionUnit::None));
        }
        image.write_data(page).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Refuses a result of `shape` for PNG, which holds one 2-D image: checked
/// before an input is segmented too (a 3000-page stack was segmented, then
/// refused).
pub(crate) fn check_png_shape(shape: &[usize]) -> Result<(), String> {
    if shape.len() != 2 {
        return Err(format!(
            "PNG holds one 2-D image, the result has shape {shape:?}: use --format tif or npy"
        ));
    }
    Ok(())
}

/// PNG holds one 2-D gray image of 8 or 16 bits; its pHYs chunk says the
/// input's pixel size where it is known (`micrometres`: `z`, `y`, `x`).
fn write_png(
    path: &Path,
    output: &Output,
    source: &str,
    micrometres: [Option<f64>; 3],
) -> Result<(), FileError> {
    let fail = |m: String| FileError::new(path, m);
    let shape = output.shape();
    check_png_shape(shape).map_err(fail)?;
    let (height, width) = (
        u32::try_from(shape[0]).map_err(|e| fail(e.to_string()))?,
        u32::try_from(shape[1]).map_err(|e| fail(e.to_string()))?,
    );
    let (depth, bytes): (png::BitDepth, Vec<u8>) = match output {
        Output::U8(a) => (png::BitDepth::Eight, a.iter().copied().collect()),
        Output::U16(a) => (
            png::BitDepth::Sixteen,
            a.iter().flat_map(|v| v.to_be_bytes()).collect(),
        ),
        Output::U32(a) => {
            if a.iter().any(|&v| v > u32::from(u16::MAX)) {
                return Err(fail(
                    "more than 65535 objects do not fit a 16-bit PNG: use --format tif or npy"
                        .to_owned(),
                ));
            }
            (
                png::BitDepth::Sixteen,
                a.iter().flat_map(|&v| (v as u16).to_be_bytes()).collect(),
            )
        }
        Output::F32(_) => {
            return Err(fail(
                "PNG cannot hold float results: use --format tif or npy".to_owned(),
            ))
        }
    };
    write_png_bytes(
        path,
        (width, height),
        png::ColorType::Grayscale,
        depth,
        &bytes,
        Some(source),
        crate::read::png_pixels_per_metre(micrometres),
    )
}

/// Writes raw PNG sample bytes (big-endian for 16 bits), with the input's
/// name ([`source_name`]) in a text chunk where `source` is given, and the
/// pixels per metre along `x` and `y` where `per_metre` is.
pub(crate) fn write_png_bytes(
    path: &Path,
    (width, height): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    bytes: &[u8],
    source: Option<&str>,
    per_metre: Option<(u32, u32)>,
) -> Result<(), FileError> {
    write_atomically(path, |w| {
        let mut encoder = png::Encoder::new(w, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        encoder.set_pixel_dims(per_metre.map(|(xppu, yppu)| png::PixelDimensions {
            xppu,
            yppu,
            unit: png::Unit::Meter,
        }));
        if let Some(source) = source {
            encoder
                .add_text_chunk(PNG_SOURCE_KEYWORD.to_owned(), source.to_owned())
                .map_err(|e| e.to_string())?;
        }
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(bytes).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    })
}
