//! Reading images (TIFF, NPY) as `f32` and writing results atomically.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use tiff::decoder::{Decoder, DecodingResult};
use tiff::encoder::{colortype, TiffEncoder};

/// A failure tied to one file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub(crate) struct FileError {
    pub path: PathBuf,
    pub message: String,
}

fn file_error(path: &Path, message: impl ToString) -> FileError {
    FileError { path: path.to_owned(), message: message.to_string() }
}

/// Reads a 2-D image as `f32`, whatever its stored integer or float type.
pub(crate) fn read_image(path: &Path) -> Result<ArrayD<f32>, FileError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "npy" => read_npy(path),
        "tif" | "tiff" => read_tiff(path),
        _ => Err(file_error(path, format!("unsupported file type {ext:?}; expected .tif, .tiff or .npy"))),
    }
}

fn read_npy(path: &Path) -> Result<ArrayD<f32>, FileError> {
    let open = || File::open(path).map(BufReader::new).map_err(|e| file_error(path, e));
    macro_rules! try_dtype {
        ($($t:ty),*) => {$(
            if let Ok(a) = ArrayD::<$t>::read_npy(open()?) {
                return Ok(a.mapv(|v| v as f32));
            }
        )*};
    }
    try_dtype!(f32, f64, u8, u16, i16, i32, u32);
    Err(file_error(path, "not a readable .npy array of a numeric type (f32, f64, u8, u16, i16, i32, u32)"))
}

fn read_tiff(path: &Path) -> Result<ArrayD<f32>, FileError> {
    let file = File::open(path).map_err(|e| file_error(path, e))?;
    let mut decoder = Decoder::new(BufReader::new(file)).map_err(|e| file_error(path, format!("not a TIFF file: {e}")))?;
    let (width, height) = decoder.dimensions().map_err(|e| file_error(path, e))?;
    let data: Vec<f32> = match decoder.read_image().map_err(|e| file_error(path, e))? {
        DecodingResult::U8(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::U16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::I16(v) => v.into_iter().map(f32::from).collect(),
        DecodingResult::F32(v) => v,
        DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => return Err(file_error(path, "unsupported TIFF sample type (expected 8/16-bit integer or float)")),
    };
    let (h, w) = (height as usize, width as usize);
    if data.len() != h * w {
        return Err(file_error(path, format!("{} samples for a {h}x{w} image: only single-channel 2-D TIFF is read", data.len())));
    }
    ArrayD::from_shape_vec(IxDyn(&[h, w]), data).map_err(|e| file_error(path, e))
}

/// Writes through a temporary file in the destination folder, renamed into
/// place at the end, so an interrupted run never leaves a half-written file
/// under the final name.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<(), String>) -> Result<(), FileError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    let tmp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| e.to_string())?);
        write(&mut out)?;
        out.flush().map_err(|e| e.to_string())?;
        out.into_inner().map_err(|e| e.to_string())?.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|m| file_error(path, m))
}

/// Writes `labels` as a 2-D TIFF (8-bit or 16-bit).
pub(crate) fn write_labels_tiff(path: &Path, labels: &Array2<u16>, wide: bool) -> Result<(), FileError> {
    let (h, w) = labels.dim();
    let (w32, h32) = (u32::try_from(w).map_err(|e| file_error(path, e))?, u32::try_from(h).map_err(|e| file_error(path, e))?);
    write_atomically(path, |out| {
        let mut enc = TiffEncoder::new(out).map_err(|e| e.to_string())?;
        let flat = labels.as_standard_layout();
        let flat = flat.as_slice().unwrap_or_default();
        if wide {
            enc.write_image::<colortype::Gray16>(w32, h32, flat).map_err(|e| e.to_string())
        } else {
            let bytes: Vec<u8> = flat.iter().map(|&v| v as u8).collect();
            enc.write_image::<colortype::Gray8>(w32, h32, &bytes).map_err(|e| e.to_string())
        }
    })
}

/// Writes any array as `.npy`.
pub(crate) fn write_npy<A: ndarray_npy::WritableElement>(path: &Path, array: &ArrayD<A>) -> Result<(), FileError> {
    write_atomically(path, |out| array.write_npy(out).map_err(|e| e.to_string()))
}
