//! Reading PNG files: 1- to 16-bit gray, gray+alpha, RGB(A) or palette
//! (expanded).
//!
//! The size the header (IHDR) declares is checked before the image buffer
//! is allocated: against the memory available, and against the file size,
//! since deflate cannot expand data more than [`DEFLATE_MAX_RATIO`] times.

use std::fs::File;
use std::io::BufReader;

use ndarray::{ArrayD, IxDyn};

use super::{refuse_empty, Image, Pixels};
use crate::limits::{checked_product, show_bytes, try_vec, Memory};

/// The most deflate can expand its input: a 258-byte match coded in 2 bits.
/// A PNG of `n` bytes cannot hold more than this times `n` bytes of pixels.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// numpy's name of the element type of a greyscale PNG, `None` for colour,
/// unreadable or incomplete files. Every row is decoded (one at a time) and
/// the end chunk read: a file cut short (not by this tool, which writes
/// atomically: a copy or a full disk elsewhere) is no finished result, and
/// `--skip-existing` took one for done by its header and left it
/// unreadable.
pub(super) fn png_element(file: File) -> Option<(&'static str, Option<String>)> {
    let mut reader = png::Decoder::new(BufReader::new(file)).read_info().ok()?;
    let info = reader.info();
    if info.color_type != png::ColorType::Grayscale {
        return None;
    }
    let element = match info.bit_depth {
        png::BitDepth::Eight => "uint8",
        png::BitDepth::Sixteen => "uint16",
        _ => return None,
    };
    while reader.next_row().ok()?.is_some() {}
    reader.finish().ok()?;
    let source = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|chunk| chunk.keyword == crate::write::PNG_SOURCE_KEYWORD)
        .map(|chunk| chunk.text.clone());
    Some((element, source))
}

/// Reads a PNG of `file_len` bytes. A transparent colour (tRNS) of a gray
/// or RGB image, or the transparency of a palette's entries, is not read as
/// an alpha channel: a gray PNG with one was refused as an image of 2
/// channels, a palette one read as RGBA (PIL and imageio read its colours).
/// 1-, 2- and 4-bit gray are scaled to 8 bits as libpng expands them (1-bit
/// white is 255).
pub(super) fn read_png(file: File, file_len: u64, memory: Memory) -> Result<Image, String> {
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // Palettes become RGB and 1/2/4-bit gray becomes 8-bit; 16 bits stay.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG file: {e}"))?;
    let info = reader.info();
    let (width, height) = info.size();
    let calibration = info
        .pixel_dims
        .filter(|d| d.unit == png::Unit::Meter)
        .and_then(|d| super::calibration::png_calibration(d.xppu, d.yppu));
    let declared = format!("the PNG declares {width}x{height} pixels");
    let overflow = || format!("{declared}: more than this machine can address");
    // The pixel data before expansion, in bits: what the compressed data
    // must hold at least (rows pad to a byte and add a filter byte each).
    let samples = u64::try_from(info.color_type.samples()).map_err(|_| overflow())?;
    let bits_per_pixel = samples * u64::from(bit_depth(info.bit_depth));
    let pixel_bytes = checked_product([u64::from(width), u64::from(height), bits_per_pixel])
        .ok_or_else(overflow)?
        / 8;
    let at_most = file_len.saturating_mul(DEFLATE_MAX_RATIO);
    if pixel_bytes > at_most {
        return Err(format!(
            "{declared}, {} of pixel data, but a file of {} cannot hold more than {}",
            show_bytes(pixel_bytes),
            show_bytes(file_len),
            show_bytes(at_most)
        ));
    }
    let size = reader.output_buffer_size().ok_or_else(overflow)?;
    let size_bytes = u64::try_from(size).map_err(|_| overflow())?;
    // 16-bit samples are converted into a second buffer of the same size.
    let sixteen = reader.output_color_type().1 == png::BitDepth::Sixteen;
    let needed = if sixteen {
        size_bytes.saturating_mul(2)
    } else {
        size_bytes
    };
    memory.check(needed, &format!("the image ({width}x{height})"))?;
    let mut bytes = try_vec::<u8>(size)?;
    bytes.resize(size, 0);
    let frame = reader
        .next_frame(&mut bytes)
        .map_err(|e| format!("cannot read the PNG image: {e}"))?;
    bytes.truncate(frame.buffer_size());
    let mut samples = frame.color_type.samples();
    let stored = reader.info().color_type;
    // A palette expands to RGB, and to RGBA where it has a tRNS chunk.
    let colours = match stored {
        png::ColorType::Indexed => 3,
        other => other.samples(),
    };
    if matches!(
        stored,
        png::ColorType::Grayscale | png::ColorType::Rgb | png::ColorType::Indexed
    ) && samples == colours + 1
    {
        drop_last_sample(&mut bytes, samples, frame.bit_depth);
        samples -= 1;
    }
    let (h, w) = (
        usize::try_from(frame.height).map_err(|_| overflow())?,
        usize::try_from(frame.width).map_err(|_| overflow())?,
    );
    let (shape, axes) = if samples == 1 {
        (vec![h, w], "yx")
    } else {
        (vec![h, w, samples], "yxc")
    };
    refuse_empty(&shape)?;
    let pixels = match frame.bit_depth {
        png::BitDepth::Sixteen => {
            // PNG stores 16-bit samples big-endian.
            let mut values = try_vec::<u16>(bytes.len() / 2)?;
            values.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]])),
            );
            drop(bytes);
            Pixels::U16(ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())?)
        }
        _ => Pixels::U8(ArrayD::from_shape_vec(IxDyn(&shape), bytes).map_err(|e| e.to_string())?),
    };
    Ok(Image {
        pixels,
        axes: Some(axes.to_owned()),
        pages_named: false,
        calibration,
        merged_pages: None,
    })
}

/// Removes the last of the `samples` samples of every pixel of `bytes` (the
/// alpha channel the decoder made of a tRNS chunk), in place.
fn drop_last_sample(bytes: &mut Vec<u8>, samples: usize, depth: png::BitDepth) {
    let width = if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let (pixel, kept) = (samples * width, (samples - 1) * width);
    let pixels = bytes.len() / pixel;
    for i in 0..pixels {
        // Forward: pixel i's kept bytes move to i * kept <= i * pixel.
        bytes.copy_within(i * pixel..i * pixel + kept, i * kept);
    }
    bytes.truncate(pixels * kept);
}

fn bit_depth(depth: png::BitDepth) -> u8 {
    match depth {
        png::BitDepth::One => 1,
        png::BitDepth::Two => 2,
        png::BitDepth::Four => 4,
        png::BitDepth::Eight => 8,
        png::BitDepth::Sixteen => 16,
    }
}
