//! Reading input images: TIFF (8/16/32-bit integer and float, multi-page,
//! BigTIFF), PNG (8/16-bit) and NPY, in their stored element type.
//!
//! Each reader checks what a file declares against what it holds and the
//! memory available before allocating anything (see [`crate::limits`]), and
//! special files are refused before they are opened.

mod calibration;
#[cfg(test)]
mod fuzz;
mod npy_header;
mod npy_reader;
mod png_reader;
mod tiff_description;
mod tiff_planar;
mod tiff_reader;

use std::fs::File;
use std::path::Path;

use ndarray::ArrayD;

use crate::limits::Memory;
use crate::special_files::{refuse_special, refuse_special_metadata};
pub(crate) use calibration::{png_pixels_per_metre, Calibration};

/// File extensions read as images (lower case).
pub(crate) const EXTENSIONS: &[&str] = &["tif", "tiff", "png", "npy"];

/// A 64-bit integer pixel as the float64 the engine reads, refused beyond
/// 2^53 ([`unet_rt::pixel::exact_f64`], the rule every entry point keeps).
pub(crate) fn exact_f64<T: Into<i128>>(value: T) -> Result<f64, String> {
    unet_rt::pixel::exact_f64(value.into()).map_err(|e| match e {
        unet_rt::Error::InvalidArgument { message, .. } => message,
        other => other.to_string(),
    })
}

/// Pixels in one of the element types the engine reads directly; other
/// stored types are widened to the nearest of these without loss (64-bit
/// integers beyond 2^53 are refused, [`exact_f64`]).
#[derive(Debug)]
pub(crate) enum Pixels {
    /// 8-bit unsigned (also bool NPY).
    U8(ArrayD<u8>),
    /// 16-bit unsigned.
    U16(ArrayD<u16>),
    /// 16-bit signed (also 8-bit signed).
    I16(ArrayD<i16>),
    /// IEEE half precision (NPY), uploaded as it is where the device
    /// normalises.
    F16(ArrayD<half::f16>),
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
            $crate::read::Pixels::F16($a) => $body,
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

    /// The same pixels with a leading axis of length 1.
    pub(crate) fn with_leading_axis(self) -> Self {
        let lead = ndarray::Axis(0);
        match self {
            Self::U8(a) => Self::U8(a.insert_axis(lead)),
            Self::U16(a) => Self::U16(a.insert_axis(lead)),
            Self::I16(a) => Self::I16(a.insert_axis(lead)),
            Self::F16(a) => Self::F16(a.insert_axis(lead)),
            Self::F32(a) => Self::F32(a.insert_axis(lead)),
            Self::F64(a) => Self::F64(a.insert_axis(lead)),
        }
    }

    /// The same pixels with the first two axes as one (C order: the second
    /// runs fastest), without a copy.
    fn with_first_axes_merged(self) -> Result<Self, String> {
        fn merged<T>(a: ArrayD<T>) -> Result<ArrayD<T>, String> {
            let shape = a.shape().to_vec();
            let mut new = shape.get(1..).unwrap_or_default().to_vec();
            let (Some(first), Some(&outer)) = (new.first_mut(), shape.first()) else {
                return Err(format!("shape {shape:?} has no two axes to merge"));
            };
            *first *= outer;
            a.into_shape_with_order(new)
                .map_err(|e| format!("cannot merge the first two axes of shape {shape:?}: {e}"))
        }
        Ok(match self {
            Self::U8(a) => Self::U8(merged(a)?),
            Self::U16(a) => Self::U16(merged(a)?),
            Self::I16(a) => Self::I16(merged(a)?),
            Self::F16(a) => Self::F16(merged(a)?),
            Self::F32(a) => Self::F32(merged(a)?),
            Self::F64(a) => Self::F64(merged(a)?),
        })
    }

    /// The stored type, for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::F16(_) => "float16",
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
    /// Whether the file names its pages (slices, time points, channels in
    /// an ImageJ or OME description): a stack of pages it does not name may
    /// be the channels of one image ([`crate::axes::choose_axes`]).
    pub pages_named: bool,
    /// The physical size of its pixels, where a TIFF says it.
    pub calibration: Option<Calibration>,
    /// Where [`Image::into_pages_for`] merged time points and slices into
    /// one axis of pages: the two axes it was (`t` or `z`, and its length,
    /// slowest first), which the results are split back into.
    pub merged_pages: Option<[(char, usize); 2]>,
}

impl Image {
    /// For a 2-D model, the time points and slices of a stack whose
    /// description names both, next to each other (tifffile's `TZYX`, read
    /// as `bzyx`), as one axis of pages, in the file's order: as an ImageJ
    /// hyperstack's are read. They were refused quoting `"bzyx"`, letters the
    /// user never typed. Unchanged otherwise, and where `--axes` (`given`)
    /// names the axes.
    pub(crate) fn into_pages_for(
        self,
        spatial_dims: usize,
        given: Option<&str>,
    ) -> Result<Self, String> {
        let both = |axes: &str| axes.starts_with("bz") || axes.starts_with("zb");
        if spatial_dims != 2 || given.is_some() || !self.axes.as_deref().is_some_and(both) {
            return Ok(self);
        }
        let shape = self.pixels.shape();
        let letter = |axis: Option<char>| if axis == Some('b') { 't' } else { 'z' };
        let axes = self.axes.as_deref().unwrap_or_default();
        let merged_pages = match (shape.first(), shape.get(1)) {
            (Some(&outer), Some(&inner)) => Some([
                (letter(axes.chars().next()), outer),
                (letter(axes.chars().nth(1)), inner),
            ]),
            _ => None,
        };
        Ok(Self {
            merged_pages,
            pixels: self.pixels.with_first_axes_merged()?,
            axes: self
                .axes
                .map(|axes| format!("z{}", axes.get(2..).unwrap_or_default())),
            pages_named: self.pages_named,
            calibration: self.calibration,
        })
    }

    /// A single plane (a one-page file, `yx` or `yxc`; or any image whose
    /// `--axes`, `given`, name one more axis than it has, starting with
    /// `z`) as a volume of one plane, for a 3-D model: it refused the plane
    /// and then `--axes zyx`, which its advice named.
    pub(crate) fn into_volume_for(self, spatial_dims: usize, given: Option<&str>) -> Self {
        let ndim = self.pixels.shape().len();
        let plane = spatial_dims == 3
            && match given {
                Some(axes) => axes.len() == ndim + 1 && axes.starts_with('z'),
                None => matches!(self.axes.as_deref(), Some("yx" | "yxc")),
            };
        if !plane {
            return self;
        }
        Self {
            pixels: self.pixels.with_leading_axis(),
            axes: self.axes.map(|axes| format!("z{axes}")),
            pages_named: self.pages_named,
            calibration: self.calibration,
            merged_pages: self.merged_pages,
        }
    }
}

/// Reads an image file, choosing the reader by extension.
pub(crate) fn read_image(path: &Path) -> Result<Image, String> {
    let ext = extension(path);
    if !EXTENSIONS.contains(&ext.as_str()) {
        return Err(format!(
            "unsupported file type {ext:?}; expected .tif, .tiff, .png or .npy"
        ));
    }
    let (file, len) = open(path)?;
    if len == 0 {
        return Err("the file is empty".to_owned());
    }
    // Read once per file: what other files took is free again.
    let memory = Memory::available();
    match ext.as_str() {
        "npy" => npy_reader::read_npy(file, len, memory),
        "png" => png_reader::read_png(file, len, memory),
        _ => tiff_reader::read_tiff(file, len, memory),
    }
}

/// What a result file says of itself: numpy's name of the element type it
/// holds (`--skip-existing` tells another output kind's result from this
/// run's by it) and the input it records (see
/// [`crate::write::source_name`]; `None` for NPY results and those written
/// before results recorded it). `None` where it cannot be read or holds
/// less than it declares (an NPY's data, a TIFF's pages and strips, a
/// PNG's rows and end).
pub(crate) fn stored_result(path: &Path) -> Option<(&'static str, Option<String>)> {
    let (file, len) = open(path).ok()?;
    match extension(path).as_str() {
        "npy" => npy_reader::npy_element(file, len).map(|e| (e, None)),
        "png" => png_reader::png_element(file),
        "tif" | "tiff" => tiff_reader::tiff_element(file, len),
        _ => None,
    }
}

/// The lower-case extension of `path` ("" when none).
pub(crate) fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Opens a regular file for reading; returns it and its length. Special
/// files are refused before opening (a FIFO would block); the file opened is
/// checked again, in case the path changed in between.
fn open(path: &Path) -> Result<(File, u64), String> {
    refuse_special(path, "an image file")?;
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => format!("cannot open: {e}"),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the file's size: {e}"))?;
    refuse_special_metadata(&meta, "an image file")?;
    if meta.is_dir() {
        return Err("is a folder, not an image file".to_owned());
    }
    Ok((file, meta.len()))
}

/// Refuses an image with no pixels or fewer than two axes: nothing to
/// segment (a 0-d array was told to name its axes), and a zero-length
/// axis has no middle plane for the overlay.
fn refuse_empty(shape: &[usize]) -> Result<(), String> {
    if shape.len() < 2 {
        // A 0-d array was told to name its axes.
        let what = if shape.is_empty() {
            "a single value"
        } else {
            "one axis"
        };
        return Err(format!(
            "the file holds {what} (shape {shape:?}), not an image: an image has at least two axes (y, x)"
        ));
    }
    if shape.contains(&0) {
        return Err(format!("the image is empty (shape {shape:?})"));
    }
    Ok(())
}
