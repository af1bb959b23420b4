//! Reading input images: TIFF (8/16/32-bit integer and float, multi-page,
//! BigTIFF), PNG (8/16-bit) and NPY, in their stored element type.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::ColorType;

/// File extensions read as images (lower case).
pub(crate) const EXTENSIONS: &[&str] = &["tif", "tiff", "png", "npy"];

/// Pixels in one of the element types the engine reads directly; other
/// stored types are widened to the nearest of these without loss.
#[derive(Debug)]
pub(crate) enum Pixels {
    /// 8-bit unsigned (also bool NPY).
    U8(ArrayD<u8>),
    /// 16-bit unsigned.
    U16(ArrayD<u16>),
    /// 16-bit signed (also 8-bit signed).
    I16(ArrayD<i16>),
    /// 32-bit float.
    F32(ArrayD<f32>),
    /// 64-bit float (also 32/64-bit integers).
    F64(ArrayD<f64>),
}

/// Runs `$body` with `$a` bound to the typed array inside a [`Pixels`].
macro_rules! with_pixels {
    ($pixels:expr, $a:ident => $body:expr) => {
        match $pixels {
            $crate::read::Pixels::U8($a) => $body,
            $crate::read::Pixels::U16($a) => $body,
            $crate::read::Pixels::I16($a) => $body,
            $crate::read::Pixels::F32($a) => $body,
            $crate::read::Pixels::F64($a) => $body,
        }
    };
}
pub(crate) use with_pixels;

impl Pixels {
    /// The array's shape.
    pub(crate) fn shape(&self) -> &[usize] {
        with_pixels!(self, a => a.shape())
    }

    /// The stored type, for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
        }
    }
}

/// An image as read from a file.
#[derive(Debug)]
pub(crate) struct Image {
    /// The pixels.
    pub pixels: Pixels,
    /// The axes the file format implies (`yx`, `yxc`, `zyx`, `zyxc`), `None`
    /// where it implies none (NPY).
    pub axes: Option<String>,
}

/// Reads an image file, choosing the reader by extension.
pub(crate) fn read_image(path: &Path) -> Result<Image, String> {
    match extension(path).as_str() {
        "npy" => read_npy(path),
        "tif" | "tiff" => read_tiff(path),
        "png" => read_png(path),
        ext => Err(format!("unsupported file type {ext:?}; expected .tif, .tiff, .png or .npy")),
    }
}

/// The lower-case extension of `path` ("" when none).
pub(crate) fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path).map(BufReader::new).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => format!("cannot open: {e}"),
    })
}

fn read_npy(path: &Path) -> Result<Image, String> {
    // The header names the type; each attempt reads only the header unless
    // the type matches.
    macro_rules! attempt {
        ($t:ty => $wrap:expr) => {
            match ArrayD::<$t>::read_npy(open(path)?) {
                Ok(a) => return Ok(Image { pixels: $wrap(a), axes: None }),
                Err(ndarray_npy::ReadNpyError::WrongDescriptor(_)) => {}
                Err(e) => return Err(format!("not a readable .npy file: {e}")),
            }
        };
    }
    attempt!(u8 => Pixels::U8);
    attempt!(u16 => Pixels::U16);
    attempt!(i16 => Pixels::I16);
    attempt!(f32 => Pixels::F32);
    attempt!(f64 => Pixels::F64);
    attempt!(bool => |a: ArrayD<bool>| Pixels::U8(a.mapv(u8::from)));
    attempt!(i8 => |a: ArrayD<i8>| Pixels::I16(a.mapv(i16::from)));
    attempt!(i32 => |a: ArrayD<i32>| Pixels::F64(a.mapv(f64::from)));
    attempt!(u32 => |a: ArrayD<u32>| Pixels::F64(a.mapv(f64::from)));
    attempt!(i64 => |a: ArrayD<i64>| Pixels::F64(a.mapv(|v| v as f64)));
    attempt!(u64 => |a: ArrayD<u64>| Pixels::F64(a.mapv(|v| v as f64)));
    Err("unsupported .npy element type: expected bool, (u)int8/16/32/64, float32 or float64".to_owned())
}

/// Pages of a TIFF appended one after the other, in the first page's type.
enum Buffer {
    U8(Vec<u8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buffer {
    fn from_page(page: DecodingResult) -> Self {
        match page {
            DecodingResult::U8(v) => Self::U8(v),
            DecodingResult::U16(v) => Self::U16(v),
            DecodingResult::I16(v) => Self::I16(v),
            DecodingResult::I8(v) => Self::I16(v.into_iter().map(i16::from).collect()),
            DecodingResult::F32(v) => Self::F32(v),
            DecodingResult::F64(v) => Self::F64(v),
            DecodingResult::U32(v) => Self::F64(v.into_iter().map(f64::from).collect()),
            DecodingResult::I32(v) => Self::F64(v.into_iter().map(f64::from).collect()),
            DecodingResult::U64(v) => Self::F64(v.into_iter().map(|x| x as f64).collect()),
            DecodingResult::I64(v) => Self::F64(v.into_iter().map(|x| x as f64).collect()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Appends a page; false when its type differs from the first page's.
    fn append(&mut self, page: Self) -> bool {
        match (self, page) {
            (Self::U8(a), Self::U8(b)) => a.extend(b),
            (Self::U16(a), Self::U16(b)) => a.extend(b),
            (Self::I16(a), Self::I16(b)) => a.extend(b),
            (Self::F32(a), Self::F32(b)) => a.extend(b),
            (Self::F64(a), Self::F64(b)) => a.extend(b),
            _ => return false,
        }
        true
    }

    fn into_pixels(self, shape: &[usize]) -> Result<Pixels, String> {
        let shape = IxDyn(shape);
        let err = |e: ndarray::ShapeError| e.to_string();
        Ok(match self {
            Self::U8(v) => Pixels::U8(ArrayD::from_shape_vec(shape, v).map_err(err)?),
            Self::U16(v) => Pixels::U16(ArrayD::from_shape_vec(shape, v).map_err(err)?),
            Self::I16(v) => Pixels::I16(ArrayD::from_shape_vec(shape, v).map_err(err)?),
            Self::F32(v) => Pixels::F32(ArrayD::from_shape_vec(shape, v).map_err(err)?),
            Self::F64(v) => Pixels::F64(ArrayD::from_shape_vec(shape, v).map_err(err)?),
        })
    }
}

fn samples_per_pixel(color: ColorType) -> Result<usize, String> {
    match color {
        ColorType::Gray(_) => Ok(1),
        ColorType::GrayA(_) => Ok(2),
        ColorType::RGB(_) => Ok(3),
        ColorType::RGBA(_) | ColorType::CMYK(_) => Ok(4),
        other => Err(format!("unsupported TIFF colour type {other:?}: expected grayscale, RGB or RGBA")),
    }
}

/// Reads every page of a TIFF (or BigTIFF) file. Pages must share size and
/// type; several pages make a stack with a leading page axis.
fn read_tiff(path: &Path) -> Result<Image, String> {
    let mut decoder = Decoder::new(open(path)?)
        .map_err(|e| format!("not a readable TIFF file: {e}"))?
        .with_limits(Limits::unlimited());
    let tiff_err = |page: usize, e: tiff::TiffError| format!("cannot read TIFF page {}: {e}", page + 1);
    let mut buffer: Option<Buffer> = None;
    let mut first: Option<(u32, u32, usize)> = None;
    let mut pages = 0usize;
    loop {
        let (width, height) = decoder.dimensions().map_err(|e| tiff_err(pages, e))?;
        let samples = samples_per_pixel(decoder.colortype().map_err(|e| tiff_err(pages, e))?)?;
        match first {
            None => first = Some((width, height, samples)),
            Some(f) if f != (width, height, samples) => {
                return Err(format!(
                    "page {} is {width}x{height} with {samples} sample(s), page 1 is {}x{} with {} \
                     (only stacks of equal pages are read)",
                    pages + 1,
                    f.0,
                    f.1,
                    f.2
                ))
            }
            Some(_) => {}
        }
        let page = Buffer::from_page(decoder.read_image().map_err(|e| tiff_err(pages, e))?);
        let expected = width as usize * height as usize * samples;
        if page.len() != expected {
            return Err(format!("page {} holds {} samples, expected {expected}", pages + 1, page.len()));
        }
        match &mut buffer {
            None => buffer = Some(page),
            Some(b) => {
                if !b.append(page) {
                    return Err(format!("page {} has another sample type than page 1", pages + 1));
                }
            }
        }
        pages += 1;
        if !decoder.more_images() {
            break;
        }
        decoder.next_image().map_err(|e| tiff_err(pages, e))?;
    }
    let (Some(buffer), Some((width, height, samples))) = (buffer, first) else {
        return Err("the TIFF file has no image".to_owned());
    };
    let mut shape = Vec::with_capacity(4);
    let mut axes = String::new();
    if pages > 1 {
        shape.push(pages);
        axes.push('z');
    }
    shape.extend([height as usize, width as usize]);
    axes.push_str("yx");
    if samples > 1 {
        shape.push(samples);
        axes.push('c');
    }
    Ok(Image { pixels: buffer.into_pixels(&shape)?, axes: Some(axes) })
}

/// Reads a PNG: 1- to 16-bit gray, gray+alpha, RGB(A) or palette (expanded).
fn read_png(path: &Path) -> Result<Image, String> {
    let mut decoder = png::Decoder::new(open(path)?);
    // Palettes become RGB and 1/2/4-bit gray becomes 8-bit; 16 bits stay.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| format!("not a readable PNG file: {e}"))?;
    let size = reader.output_buffer_size().ok_or("the PNG image is too large")?;
    let mut bytes = vec![0u8; size];
    let frame = reader.next_frame(&mut bytes).map_err(|e| format!("cannot read the PNG image: {e}"))?;
    bytes.truncate(frame.buffer_size());
    let samples = frame.color_type.samples();
    let (h, w) = (frame.height as usize, frame.width as usize);
    let (shape, axes) = if samples == 1 { (vec![h, w], "yx") } else { (vec![h, w, samples], "yxc") };
    let shape = IxDyn(&shape);
    let pixels = match frame.bit_depth {
        png::BitDepth::Sixteen => {
            // PNG stores 16-bit samples big-endian.
            let v: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
            Pixels::U16(ArrayD::from_shape_vec(shape, v).map_err(|e| e.to_string())?)
        }
        _ => Pixels::U8(ArrayD::from_shape_vec(shape, bytes).map_err(|e| e.to_string())?),
    };
    Ok(Image { pixels, axes: Some(axes.to_owned()) })
}
