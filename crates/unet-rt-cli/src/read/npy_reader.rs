//! Reading NPY files.
//!
//! The header is read with a bounded read and parsed by [`npy_header`](super::npy_header); the
//! data it declares (shape times element size, checked) must be
//! exactly what the file holds after it, and its decoded size must fit in
//! memory, before anything is allocated. The data is then read in chunks
//! into a vector reserved fallibly: never the whole declared size at once.

use std::fs::File;
use std::io::{BufReader, Read};

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use super::npy_header::{parse_header, Header};
use super::{refuse_empty, Image, Pixels};
use crate::limits::{bytes_of, elements, show_bytes, try_vec, Memory};

/// The signature every NPY file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The longest header accepted. numpy's own `np.load` refuses longer ones
/// (`max_header_size`) as unsafe to parse; the headers numpy writes for the
/// arrays read here are under 200 bytes.
const MAX_HEADER_LEN: usize = 10_000;

/// Data is read this many bytes at a time (a multiple of every element size).
const CHUNK_BYTES: usize = 1 << 20;

/// Reads an NPY file of `file_len` bytes.
/// numpy's name of the element type a `.npy` file declares (its header
/// only), `None` where it cannot be read.
pub(super) fn npy_element(file: File, file_len: u64) -> Option<&'static str> {
    let (header, data_start) = read_header(&mut BufReader::new(file), file_len).ok()?;
    let element = header.descr.as_deref().and_then(Element::parse)?;
    // A file cut short (not by this tool, which writes atomically: a copy
    // or a full disk elsewhere) is no finished result; `--skip-existing`
    // took it for one and left it unreadable.
    let declared = u64::try_from(elements(&header.shape)?)
        .ok()?
        .checked_mul(element.size)?;
    (declared == file_len.saturating_sub(data_start)).then_some(element.name)
}

pub(super) fn read_npy(file: File, file_len: u64, memory: Memory) -> Result<Image, String> {
    let mut reader = BufReader::new(file);
    let (header, data_start) = read_header(&mut reader, file_len)?;
    let element = header
        .descr
        .as_deref()
        .and_then(Element::parse)
        .ok_or_else(|| {
            format!(
            "unsupported .npy element type {}: expected bool, (u)int8/16/32/64 or float16/32/64 \
             (structured, complex, string and object arrays are not images)",
            header.descr_text
        )
        })?;
    let shape = header.shape;
    let too_many =
        || format!("the shape {shape:?} declares more data than this machine can address");
    let len = elements(&shape).ok_or_else(too_many)?;
    let declared = u64::try_from(len)
        .ok()
        .and_then(|n| n.checked_mul(element.size))
        .ok_or_else(too_many)?;
    // `read_header` checked that the header ends within the file.
    let held = file_len.saturating_sub(data_start);
    if declared != held {
        return Err(format!(
            "the file declares {} of data (shape {shape:?}, {}) but holds {}",
            show_bytes(declared),
            element.name,
            show_bytes(held)
        ));
    }
    refuse_empty(&shape)?;
    let decoded = element.decoded_bytes(len).ok_or_else(too_many)?;
    memory.check(
        decoded,
        &format!("the image (shape {shape:?}, {})", element.name),
    )?;
    let pixels = element.read(&mut reader, &shape, header.fortran_order)?;
    Ok(Image {
        pixels,
        axes: None,
        pages_named: false,
        calibration: None,
        merged_pages: None,
    })
}

/// Reads the header: magic, version, length and the header text, each
/// checked before the next is read. Returns the header and where the data
/// starts.
fn read_header(reader: &mut impl Read, file_len: u64) -> Result<(Header, u64), String> {
    let short = |_| "not an .npy file: it ends inside the header".to_owned();
    let mut prefix = [0u8; 8];
    reader.read_exact(&mut prefix).map_err(short)?;
    if !prefix.starts_with(MAGIC) {
        return Err("not an .npy file (it does not start with \\x93NUMPY)".to_owned());
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let length_bytes: usize = match major {
        1 => 2,
        2 | 3 => 4,
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let mut length = [0u8; 4];
    reader
        .read_exact(&mut length[..length_bytes])
        .map_err(short)?;
    let header_len = u32::from_le_bytes(length);
    // At most 12 + u32::MAX: no overflow.
    let data_start = 8 + u64::from(header_len) + if length_bytes == 2 { 2 } else { 4 };
    if data_start > file_len {
        return Err(format!(
            "the header declares {header_len} bytes but the file holds {} in all",
            show_bytes(file_len)
        ));
    }
    let header_len = usize::try_from(header_len).unwrap_or(usize::MAX);
    if header_len > MAX_HEADER_LEN {
        return Err(format!("the header is {header_len} bytes long, more than the {MAX_HEADER_LEN} numpy itself reads"));
    }
    // Bounded by MAX_HEADER_LEN: no need for a fallible allocation.
    let mut bytes = vec![0u8; header_len];
    reader.read_exact(&mut bytes).map_err(short)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "the .npy header is not text".to_owned())?;
    let header = parse_header(text).map_err(|e| format!("not a readable .npy header: {e}"))?;
    Ok((header, data_start))
}

/// The element types read, by their NPY type code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
}

/// One element type of a file: kind and byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Element {
    kind: Kind,
    big_endian: bool,
    /// Bytes per element in the file.
    size: u64,
    /// numpy's name, for messages.
    name: &'static str,
}

impl Element {
    /// Parses a descriptor such as `<f8`, `>u2`, `|u1` or `|b1`.
    fn parse(descr: &str) -> Option<Self> {
        let (order, code) = match descr.as_bytes().first() {
            Some(b'<' | b'>' | b'|' | b'=') => descr.split_at(1),
            _ => ("", descr),
        };
        let (kind, size, name) = match code {
            "b1" | "?" => (Kind::Bool, 1, "bool"),
            "u1" | "B" => (Kind::U8, 1, "uint8"),
            "i1" | "b" => (Kind::I8, 1, "int8"),
            "u2" => (Kind::U16, 2, "uint16"),
            "i2" => (Kind::I16, 2, "int16"),
            "u4" => (Kind::U32, 4, "uint32"),
            "i4" => (Kind::I32, 4, "int32"),
            "u8" => (Kind::U64, 8, "uint64"),
            "i8" => (Kind::I64, 8, "int64"),
            "f2" | "e" => (Kind::F16, 2, "float16"),
            "f4" => (Kind::F32, 4, "float32"),
            "f8" => (Kind::F64, 8, "float64"),
            _ => return None,
        };
        // `=` and no mark mean the writer's native order, which numpy
        // writes out explicitly; take it as this machine's.
        let big_endian = order == ">" || (matches!(order, "=" | "") && cfg!(target_endian = "big"));
        Some(Self {
            kind,
            big_endian,
            size,
            name,
        })
    }

    /// Bytes `len` elements take once read (some types are widened).
    fn decoded_bytes(self, len: usize) -> Option<u64> {
        match self.kind {
            Kind::Bool | Kind::U8 => bytes_of::<u8>(len),
            Kind::U16 | Kind::F16 => bytes_of::<u16>(len),
            Kind::I8 | Kind::I16 => bytes_of::<i16>(len),
            Kind::F32 => bytes_of::<f32>(len),
            Kind::U32 | Kind::I32 | Kind::U64 | Kind::I64 | Kind::F64 => bytes_of::<f64>(len),
        }
    }

    /// Reads the data into pixels of `shape` (column-major when `fortran`),
    /// widening types the engine does not take directly: int8 to int16,
    /// 32/64-bit integers to float64 (as the reader always did; 64-bit
    /// integers beyond 2^53 round).
    fn read(
        self,
        reader: &mut impl Read,
        shape: &[usize],
        fortran: bool,
    ) -> Result<Pixels, String> {
        let len = elements(shape).ok_or("the shape overflows")?;
        let be = self.big_endian;
        // Reads elements of one stored type, converted by `$convert`.
        macro_rules! values {
            ($t:ty, $convert:expr) => {
                read_values(reader, len, |b| {
                    let v = if be {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    };
                    Ok($convert(v))
                })
            };
        }
        // 64-bit integers, as float64 where it holds them exactly.
        macro_rules! exact_values {
            ($t:ty) => {
                read_values(reader, len, |b| {
                    super::exact_f64(if be {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    })
                })
            };
        }
        Ok(match self.kind {
            Kind::Bool => Pixels::U8(shaped(
                read_values(reader, len, |[b]: [u8; 1]| bool_byte(b))?,
                shape,
                fortran,
            )?),
            Kind::U8 => Pixels::U8(shaped(values!(u8, |v| v)?, shape, fortran)?),
            Kind::I8 => Pixels::I16(shaped(values!(i8, i16::from)?, shape, fortran)?),
            Kind::U16 => Pixels::U16(shaped(values!(u16, |v| v)?, shape, fortran)?),
            Kind::I16 => Pixels::I16(shaped(values!(i16, |v| v)?, shape, fortran)?),
            Kind::F16 => Pixels::F16(shaped(values!(half::f16, |v| v)?, shape, fortran)?),
            Kind::F32 => Pixels::F32(shaped(values!(f32, |v| v)?, shape, fortran)?),
            Kind::F64 => Pixels::F64(shaped(values!(f64, |v| v)?, shape, fortran)?),
            Kind::U32 => Pixels::F64(shaped(values!(u32, f64::from)?, shape, fortran)?),
            Kind::I32 => Pixels::F64(shaped(values!(i32, f64::from)?, shape, fortran)?),
            Kind::U64 => Pixels::F64(shaped(exact_values!(u64)?, shape, fortran)?),
            Kind::I64 => Pixels::F64(shaped(exact_values!(i64)?, shape, fortran)?),
        })
    }
}

/// The values as an array of `shape`, column-major when `fortran`.
fn shaped<T>(values: Vec<T>, shape: &[usize], fortran: bool) -> Result<ArrayD<T>, String> {
    ArrayD::from_shape_vec(IxDyn(shape).set_f(fortran), values).map_err(|e| e.to_string())
}

/// A bool stored as a byte: numpy writes 0 and 1 only.
fn bool_byte(byte: u8) -> Result<u8, String> {
    match byte {
        0 | 1 => Ok(byte),
        other => Err(format!("a bool element holds {other}, not 0 or 1")),
    }
}

/// Reads `len` elements of `N` bytes each, converting each with `convert`.
/// The result is reserved fallibly; the file is read a chunk at a time.
fn read_values<T, const N: usize>(
    reader: &mut impl Read,
    len: usize,
    mut convert: impl FnMut([u8; N]) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut values = try_vec::<T>(len)?;
    let mut chunk = vec![0u8; CHUNK_BYTES.min(len.saturating_mul(N))];
    let mut remaining = len;
    while remaining > 0 {
        let count = remaining.min(CHUNK_BYTES / N);
        let bytes = &mut chunk[..count * N];
        reader
            .read_exact(bytes)
            .map_err(|e| format!("cannot read the data: {e}"))?;
        for element in bytes.chunks_exact(N) {
            let mut array = [0u8; N];
            array.copy_from_slice(element);
            values.push(convert(array)?);
        }
        remaining -= count;
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_types_are_read_as_the_engine_widens_them() {
        let codes = [
            "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8",
        ];
        for code in codes {
            let element = Element::parse(&format!("<{code}")).unwrap();
            let zeros = [0u8; 8];
            let pixels = element.read(&mut &zeros[..], &[1], false).unwrap();
            let wide = unet_rt::pixel::WIDENED
                .iter()
                .find(|(stored, _)| *stored == element.name)
                .map_or(element.name, |(_, wide)| wide);
            assert_eq!(pixels.type_name(), wide, "{code}");
        }
    }
}
