//! Reading TIFF (and BigTIFF) files: every page, as a stack.
//!
//! Reading is planned before anything is decoded: a first pass reads each
//! page's directory and checks what it declares (size computed with checked
//! arithmetic, strips or tiles within the file, uncompressed data no larger
//! than the file, pages equal to the first, the running total within the
//! memory available and within what the file's bytes can decompress to, the
//! pages as many as the file's description declares); the second pass
//! decodes the pages into one buffer reserved fallibly for them all. The decoder's own limits come from the
//! file size and the memory available, never unlimited.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use ndarray::{ArrayD, IxDyn};
use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::ColorType;

use super::tiff_description::{
    contiguous_axes, declared_pages, describe_pages, pages_differ, shaped, PageAxes, SERIES,
};
use super::tiff_planar::{read_planar, PlaneGrid};
use super::{calibration, refuse_empty, Calibration, Image, Pixels};
use crate::limits::{checked_product, elements, saturating_usize, show_bytes, try_vec, Memory};

type TiffDecoder = Decoder<BufReader<File>>;

/// Whether a TIFF (or BigTIFF) header says the file holds no page: its
/// first directory offset is 0.
fn first_directory_is_none(header: &[u8]) -> bool {
    let zero = |bytes: &[u8]| bytes.iter().all(|&b| b == 0);
    match header {
        [b'I', b'I', 42, 0, rest @ ..] | [b'M', b'M', 0, 42, rest @ ..] if rest.len() >= 4 => {
            zero(&rest[..4])
        }
        // BigTIFF: offset size (8) and a reserved word come first.
        [b'I', b'I', 43, 0, _, _, _, _, rest @ ..] | [b'M', b'M', 0, 43, _, _, _, _, rest @ ..]
            if rest.len() >= 8 =>
        {
            zero(&rest[..8])
        }
        _ => false,
    }
}

/// numpy's name of the element type of a TIFF's one-channel pages
/// (unsigned or floating-point samples of 8 to 64 bits), `None` where it
/// cannot be read or is cut short: every page's directory is read and its
/// strips must lie in the file (`plan`; nothing is decoded). A file cut
/// short (not by this tool, which writes atomically: a copy or a full disk
/// elsewhere) is no finished result; `--skip-existing` took one for done by
/// its first page and left it unreadable.
pub(super) fn tiff_element(file: File, file_len: u64) -> Option<(&'static str, Option<String>)> {
    let mut decoder = Decoder::new(BufReader::new(file)).ok()?;
    let (page, _) = plan(&mut decoder, file_len, Memory::unlimited()).ok()?;
    decoder.seek_to_image(0).ok()?;
    let source = decoder
        .get_tag_ascii_string(crate::write::DOCUMENT_NAME)
        .ok();
    let element = match (page.samples, page.kind) {
        (1, Samples::Uint(8)) => Some("uint8"),
        (1, Samples::Uint(16)) => Some("uint16"),
        (1, Samples::Uint(32)) => Some("uint32"),
        (1, Samples::Float(32)) => Some("float32"),
        (1, Samples::Float(64)) => Some("float64"),
        _ => None,
    }?;
    Some((element, source))
}

/// Reads every page of a TIFF file of `file_len` bytes. Pages must share size
/// and type; several pages make a stack with a leading page axis.
pub(super) fn read_tiff(mut file: File, file_len: u64, memory: Memory) -> Result<Image, String> {
    let mut header = [0u8; 16];
    let got = file
        .read(&mut header)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if first_directory_is_none(&header[..got]) {
        // The decoder said "failed to fill whole buffer".
        return Err(
            "a TIFF file without pages (its first directory offset is 0): no image in it"
                .to_owned(),
        );
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let mut decoder = Decoder::new(BufReader::new(file))
        .map_err(|e| match e {
            // A header or first directory cut short said "failed to fill
            // whole buffer".
            e if cut_short(&e) => format!(
                "not a readable TIFF file: it ends ({}) before its header and first directory do (truncated?)",
                show_bytes(file_len)
            ),
            e => format!("not a readable TIFF file: {e}"),
        })?
        .with_limits(limits(file_len, memory));
    let description = description(&mut decoder);
    let described = description
        .as_deref()
        .map_or(PageAxes::Unknown, describe_pages);
    let calibration = page_calibration(&mut decoder, description.as_deref());
    let (page, indices) = plan(&mut decoder, file_len, memory)?;
    let pages = indices.len();
    let samples = usize::from(page.samples);
    // Separate planes are read as tifffile reads them, `(planes, y, x)`:
    // interleaved into `(y, x, c)`, the axes a description or `--axes`
    // names (tifffile's order) fell on the wrong dimensions, and three
    // slices named "ZYX" went to a 3-channel model as one colour image.
    let planes_first = samples > 1 && {
        decoder.seek_to_image(0).map_err(|e| page_error(1, e))?;
        is_planar(&mut decoder, page.samples).map_err(|e| page_error(1, e))?
    };
    // What the description must hold, and the end of the image's shape.
    let page_axes = if planes_first {
        "cyx"
    } else {
        contiguous_axes(samples)
    };
    let page_shape = page_shape(&page, planes_first);
    if let Some(declared) = description
        .as_deref()
        .map(|text| declared_pages(text, &page_shape, samples))
        .transpose()?
        .flatten()
    {
        if declared != pages {
            return Err(pages_differ(declared, pages));
        }
    }
    let buffer = decode(&mut decoder, &page, &indices, planes_first)?;
    let mut shape = Vec::with_capacity(4);
    let mut axes = String::new();
    let mut pages_named = false;
    match &described {
        // A hyperstack stores the channels of each plane as consecutive
        // pages (ImageJ's order, OME's XYC..), its slices within each time
        // point: read as a stack of pages they were mixed in with the planes.
        PageAxes::Named(named) if page.samples == 1 || described.channels().is_none() => {
            let sizes: Vec<usize> = named.iter().map(|&(_, n)| n).collect();
            pages_named = true;
            if elements(&sizes) == Some(pages) {
                shape.extend(sizes);
                axes.extend(named.iter().map(|&(l, _)| l));
            } else if let Some(c) = described.channels() {
                // A description whose sizes do not multiply to the pages:
                // its channels still come in runs of `c` pages.
                if pages % c != 0 {
                    return Err(format!(
                        "its description gives {c} channels, but the file holds {pages} pages (not a multiple)"
                    ));
                }
                let fastest = named.last().is_some_and(|&(l, _)| l == 'c');
                let planes = pages / c;
                match (planes > 1, fastest) {
                    (false, _) => {
                        shape.push(c);
                        axes.push('c');
                    }
                    (true, true) => {
                        shape.extend([planes, c]);
                        axes.push_str("zc");
                    }
                    (true, false) => {
                        shape.extend([c, planes]);
                        axes.push_str("cz");
                    }
                }
            } else if pages > 1 {
                shape.push(pages);
                axes.push('z');
            }
        }
        PageAxes::Interleaved => {
            return Err(
                "its OME description interleaves the channels between slices and time points \
                 (DimensionOrder with C between Z and T, both longer than 1), which is not read: \
                 save it as one file per time point"
                    .to_owned(),
            );
        }
        described if pages > 1 => {
            // Slices or time points by the file's own word are never the
            // channels of one image (a plain stack of as many pages as a
            // model has channels is).
            pages_named = *described == PageAxes::Planes;
            shape.push(pages);
            axes.push('z');
        }
        _ => {}
    }
    shape.extend_from_slice(&page_shape);
    axes.push_str(page_axes);
    refuse_empty(&shape)?;
    let mut axes = Some(axes);
    if described == PageAxes::Unknown {
        // A plain stack: `(pages, y, x[, samples])`, or one page.
        if let Some(shaped) = description
            .as_deref()
            .and_then(|text| shaped(text, pages, &page_shape, page_axes))
        {
            // Only axes the file names say its pages are planes: an
            // unnamed stack of as many pages as the model has channels
            // stays one image's channels.
            pages_named = shaped.named
                && shaped
                    .axes
                    .as_deref()
                    .is_some_and(|a| a.contains(['z', 'b']));
            shape = shaped.shape;
            axes = shaped.axes;
            // tifffile stores any `(3, y, x)` or `(4, y, x)` array as one
            // page of separate planes, slices as well as colours (scikit-
            // image's and imageio's z-stacks): unnamed, its planes are an
            // unnamed stack's pages, a model's channels where it takes as
            // many, else slices ([`crate::axes::choose_axes`]).
            if planes_first && pages == 1 && !shaped.named {
                axes = Some("zyx".to_owned());
            }
        }
    }
    Ok(Image {
        pixels: buffer.into_pixels(&shape)?,
        axes,
        pages_named,
        calibration,
        merged_pages: None,
    })
}

/// What page 1's resolution tags and `description` say of the pixels'
/// physical size (tags that cannot be read say nothing).
fn page_calibration(decoder: &mut TiffDecoder, description: Option<&str>) -> Option<Calibration> {
    let mut rational = |tag| match decoder.find_tag(tag) {
        Ok(Some(tiff::decoder::ifd::Value::Rational(n, d))) => Some((n, d)),
        _ => None,
    };
    let (x, y) = (rational(Tag::XResolution), rational(Tag::YResolution));
    let unit = decoder
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten();
    calibration::calibration(x, y, unit, description)
}

/// Page 1's description, if it has one in text.
fn description(decoder: &mut TiffDecoder) -> Option<String> {
    decoder
        .find_tag(Tag::ImageDescription)
        .ok()
        .flatten()
        .and_then(|value| value.into_string().ok())
}

/// The decoder's limits: one decoded page within the memory available, and
/// tag values and compressed chunks within the file (the file holds them).
fn limits(file_len: u64, memory: Memory) -> Limits {
    let in_file = saturating_usize(file_len).min(memory.as_usize());
    let mut limits = Limits::default();
    limits.decoding_buffer_size = memory.as_usize();
    limits.ifd_value_size = in_file;
    limits.intermediate_buffer_size = in_file;
    limits
}

/// How a page's samples are stored and what they are read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Samples {
    /// Unsigned integers of up to 8, 16, 32 or 64 bits.
    Uint(u8),
    /// Signed integers of up to 8, 16, 32 or 64 bits.
    Int(u8),
    /// IEEE floats of 32 or 64 bits.
    Float(u8),
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uint(b) => write!(f, "{b}-bit unsigned"),
            Self::Int(b) => write!(f, "{b}-bit signed"),
            Self::Float(b) => write!(f, "{b}-bit float"),
        }
    }
}

impl Samples {
    /// Bytes per sample as the decoder returns them.
    fn decoded_size(self) -> u64 {
        let bits = match self {
            Self::Uint(b) | Self::Int(b) | Self::Float(b) => b,
        };
        match bits {
            0..=8 => 1,
            9..=16 => 2,
            17..=32 => 4,
            _ => 8,
        }
    }

    /// Bytes per sample once stored: 8-bit signed becomes int16, 32/64-bit
    /// integers become float64 (the types the engine reads).
    fn stored_size(self) -> u64 {
        match self {
            Self::Uint(0..=8) => 1,
            Self::Uint(9..=16) | Self::Int(0..=16) => 2,
            Self::Float(32) => 4,
            _ => 8,
        }
    }

    /// Whether the decoded samples are converted (into a copy) to be stored.
    fn is_converted(self) -> bool {
        matches!(self, Self::Uint(17..) | Self::Int(0..=8) | Self::Int(17..))
    }
}

/// What one page declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    width: u32,
    height: u32,
    samples: u16,
    bits: u8,
    kind: Samples,
    /// Whether its samples are YCbCr in JPEG, which the decoder returns
    /// as stored (tiff 0.11 turns the JPEG decoder's conversion off).
    ycbcr_jpeg: bool,
    /// Samples in the page (width x height x samples).
    len: usize,
    /// Bytes the decoder returns for the page.
    decoded_bytes: u64,
    /// Bytes the page takes once stored in the stack.
    stored_bytes: u64,
}

/// Reads and checks the directory of every page; returns the first page and
/// the indices of the pages of the image (all but reduced-resolution copies
/// and transparency masks, [`is_auxiliary`]). Nothing is decoded. The pages
/// together must need no more compressed data than the file holds
/// ([`most_expanded`]): an 800 KB
/// file whose 100,000 strips all pointed at one deflate stream of 100
/// bytes declared 10 GB, which fit the memory check and were decoded.
fn plan(
    decoder: &mut TiffDecoder,
    file_len: u64,
    memory: Memory,
) -> Result<(Page, Vec<usize>), String> {
    let (first, mut needed) = check_page(decoder, 0, file_len, memory)?;
    let within_file = |needed: u64, pages: usize| {
        if needed <= file_len.saturating_add(EXPANSION_SLACK) {
            return Ok(());
        }
        Err(format!(
            "its first {pages} page(s) decode to more than their compression can make of the file's {} \
             (they need at least {} of compressed data: their strips or tiles share data, or claim more \
             than they hold): a damaged or crafted file, not read",
            show_bytes(file_len),
            show_bytes(needed)
        ))
    };
    within_file(needed, 1)?;
    // The pages the first image's description covers, where it says: a
    // page unlike the first beyond them starts another image (series).
    let first_covers = decoder
        .get_tag_ascii_string(Tag::ImageDescription)
        .ok()
        .and_then(|text| {
            let planes_first = is_planar(decoder, first.samples).ok()?;
            let shape = page_shape(&first, planes_first);
            declared_pages(&text, &shape, usize::from(first.samples))
                .ok()
                .flatten()
        });
    let mut read = vec![0usize];
    let mut index = 0usize;
    while decoder.more_images() {
        decoder.next_image().map_err(|e| page_error(index + 2, e))?;
        index += 1;
        if is_auxiliary(decoder).map_err(|e| page_error(index + 1, e))? {
            continue;
        }
        let pages = read.len();
        let (page, page_needs) = check_page(decoder, index, file_len, memory)?;
        needed = needed.saturating_add(page_needs);
        within_file(needed, pages + 1)?;
        let unlike = (page.width, page.height, page.samples, page.kind)
            != (first.width, first.height, first.samples, first.kind);
        if let (true, Some(covered)) = (unlike, first_covers.filter(|&d| d == pages)) {
            return Err(format!(
                "its description covers the first {covered} page(s), and page {} is unlike them: {SERIES}",
                index + 1
            ));
        }
        if (page.width, page.height, page.samples) != (first.width, first.height, first.samples) {
            return Err(format!(
                "page {} is {}x{} with {} sample(s), page 1 is {}x{} with {} (only stacks of equal pages are read)",
                index + 1,
                page.width,
                page.height,
                page.samples,
                first.width,
                first.height,
                first.samples
            ));
        }
        if page != first {
            return Err(format!(
                "page {} has {} samples, page 1 has {} (only stacks of equal pages are read)",
                index + 1,
                page.kind,
                first.kind
            ));
        }
        read.push(index);
        let pages = read.len();
        // The running total: all pages so far, and one more being decoded.
        let total = u64::try_from(pages)
            .ok()
            .and_then(|n| first.stored_bytes.checked_mul(n))
            .and_then(|t| t.checked_add(first.decoded_bytes));
        memory.check(
            total.unwrap_or(u64::MAX),
            &format!(
                "the first {pages} pages ({}x{} each)",
                first.width, first.height
            ),
        )?;
    }
    Ok((first, read))
}

/// Whether the decoder's current page is a reduced-resolution copy of
/// another or a transparency mask (NewSubfileType bits 0 and 2): GDAL's
/// overviews and masks, which tifffile leaves out of the image's series
/// too (they were refused as "only stacks of equal pages are read").
fn is_auxiliary(decoder: &mut TiffDecoder) -> Result<bool, tiff::TiffError> {
    let kind = decoder.find_tag_unsigned::<u32>(Tag::NewSubfileType)?;
    Ok(kind.is_some_and(|k| k & 0b101 != 0))
}

/// The most one byte of data compressed with TIFF compression `code`
/// decodes to: deflate's limit (258 bytes from 2 bits), about 2,700 for
/// LZW's 12-bit codes of strings up to 4,096 bytes (with room), 64 for
/// PackBits (128 bytes from 2), 1,024 for JPEG (two bits per 8x8 block at
/// best, subsampled), 1 for none.
fn most_expanded(code: u16) -> u64 {
    match code {
        8 | 32946 => 1032,
        5 => 4096,
        7 => 1024,
        32773 => 64,
        _ => 1,
    }
}

/// Bytes allowed beyond [`most_expanded`]'s bound: the bound is a least
/// size (a real file's streams are longer, with their headers), rounded up
/// per page.
const EXPANSION_SLACK: u64 = 4096;

/// The TIFF compressions the `tiff` crate decodes: none, LZW, JPEG,
/// deflate (both codes) and PackBits. Others were refused in its words,
/// "Compression method Unknown(50000) is unsupported", naming no codec and
/// no way out.
const DECODED_COMPRESSIONS: [u16; 6] = [1, 5, 7, 8, 32773, 32946];

/// The name of a TIFF compression code, as tifffile and libtiff call it.
fn compression_name(code: u16) -> &'static str {
    match code {
        2 => "CCITT RLE",
        3 => "CCITT Group 3 fax",
        4 => "CCITT Group 4 fax",
        6 => "old-style JPEG",
        33003 | 33004 | 33005 | 34712 => "JPEG 2000",
        34887 => "LERC",
        34892 => "lossy deflate",
        34925 => "LZMA",
        34933 => "PNG",
        34934 => "JPEG XR",
        50000 => "Zstandard (zstd)",
        50001 => "WebP",
        50002 | 52546 => "JPEG XL",
        _ => "a codec",
    }
}
/// Checks what the current page declares: a supported sample type, a size
/// that can be computed and fits in memory, strips or tiles within the file,
/// and for uncompressed data, no more than the file and its strips hold.
/// Returns the page and the least compressed data it decodes from.
fn check_page(
    decoder: &mut TiffDecoder,
    index: usize,
    file_len: u64,
    memory: Memory,
) -> Result<(Page, u64), String> {
    let number = index + 1;
    let tiff_err = |e: tiff::TiffError| page_error(number, e);
    let (width, height) = decoder.dimensions().map_err(tiff_err)?;
    let colour = decoder
        .colortype()
        .map_err(|e| colour_refusal(e, number).unwrap_or_else(&tiff_err))?;
    let compression = decoder
        .find_tag_unsigned::<u16>(Tag::Compression)
        .map_err(tiff_err)?
        .unwrap_or(1);
    let photometric = decoder
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .map_err(tiff_err)?;
    // The samples the decoder returns per pixel: the colour type counts
    // the colour's own (3 for RGB with an extra sample the file leaves
    // unnamed), the decoder all of them.
    let per_pixel = decoder
        .find_tag_unsigned::<u16>(Tag::SamplesPerPixel)
        .map_err(tiff_err)?
        .unwrap_or(1);
    let (samples, bits) = samples_and_bits(colour, per_pixel, photometric, compression, number)?;
    // The decoder returns a colour's own samples only, leaving out extra
    // samples it does not take for alpha (GDAL's 4-band RGB without
    // ALPHA=YES): read so, a (y, x, 4) image came back (y, x, 3). Separate
    // planes are read plane by plane here, every one of them.
    let planar = is_planar(decoder, samples).map_err(tiff_err)?;
    if samples != colour.num_samples() && !planar {
        return Err(format!(
            "page {number} holds {samples} samples per pixel, {} of them its {} colour and {} extra \
             (not alpha), which the TIFF reader does not decode: save them as channels of a grey \
             page, e.g. tifffile.imwrite(new, tifffile.imread(path), photometric='minisblack')",
            colour.num_samples(),
            match colour {
                ColorType::RGB(_) | ColorType::RGBA(_) => "RGB(A)",
                ColorType::CMYK(_) | ColorType::CMYKA(_) => "CMYK",
                _ => "photometric",
            },
            samples - colour.num_samples().min(samples),
        ));
    }
    let format = decoder
        .find_tag_unsigned_vec::<u16>(Tag::SampleFormat)
        .map_err(tiff_err)?;
    let format = format
        .as_ref()
        .and_then(|f| f.first())
        .copied()
        .unwrap_or(1);
    let kind = sample_kind(format, bits).ok_or_else(|| {
        // Advice for the file at hand: a half-float page was told to save
        // packed 1-bit images as 8-bit.
        let advice = match (format, bits) {
            (3, 16) => "16-bit floats are not read from TIFF: save it as float32 \
                        (tifffile.imwrite(path, image.astype('float32'))) or as NPY"
                .to_owned(),
            (_, 1..=7) => "save packed 1-, 2- or 4-bit images as 8-bit".to_owned(),
            _ => "expected 8, 16, 32 or 64-bit integers or 32/64-bit floats".to_owned(),
        };
        format!("page {number} has unsupported samples: {bits} bits of sample format {format} ({advice})")
    })?;
    // tiff 0.9 refused the horizontal predictor on floats (GDAL's and
    // OpenCV's PREDICTOR=2) and the floating-point one on integers; 0.11
    // undoes them, into values neither tifffile nor GDAL reads: refused as
    // before, with the advice that works.
    let predictor = decoder
        .find_tag_unsigned::<u16>(Tag::Predictor)
        .map_err(tiff_err)?
        .unwrap_or(1);
    let is_float = matches!(kind, Samples::Float(_));
    if (predictor == 2 && is_float) || (predictor == 3 && !is_float) {
        return Err(format!(
            "cannot read TIFF page {number}: the {} predictor on {kind} samples is not undone (the decoder \
             undoes the horizontal predictor on integers and the floating-point one on floats only): \
             re-save it, e.g. tifffile.imwrite(new, tifffile.imread(path), compression='zlib')",
            if predictor == 2 { "horizontal" } else { "floating-point" }
        ));
    }
    if compression == JPEG && planar {
        return Err(format!(
            "page {number} stores its {samples} channels as separate JPEG planes (planar configuration 2), \
             which is not read; save the channels interleaved (contiguous), or as pages"
        ));
    }
    // Bits stored least significant first: every byte read as it is was
    // another value (8-bit pixels 225 off, without a word).
    let fill_order = decoder
        .find_tag_unsigned::<u16>(Tag::FillOrder)
        .map_err(tiff_err)?;
    if fill_order.is_some_and(|order| order != 1) {
        return Err(format!(
            "page {number} stores the bits of each byte in reverse (FillOrder {}), which is not read; \
             re-save it, e.g. tifffile.imwrite(path, tifffile.imread(path))",
            fill_order.unwrap_or_default()
        ));
    }
    let declared = format!(
        "page {number} declares {width}x{height} pixels with {samples} sample(s) of {bits} bits"
    );
    let overflow = || format!("{declared}: more than this machine can address");
    let count = checked_product([u64::from(width), u64::from(height), u64::from(samples)])
        .ok_or_else(overflow)?;
    let decoded_bytes = count
        .checked_mul(kind.decoded_size())
        .ok_or_else(overflow)?;
    let stored_bytes = count.checked_mul(kind.stored_size()).ok_or_else(overflow)?;
    let len = usize::try_from(count).map_err(|_| overflow())?;

    if !DECODED_COMPRESSIONS.contains(&compression) {
        return Err(format!(
            "page {number} is compressed with {} (TIFF compression {compression}), which unet-rt does not \
             decode: re-save it uncompressed or with zlib (deflate), LZW, PackBits or JPEG, e.g. \
             tifffile.imwrite(path, tifffile.imread(path), compression='zlib')",
            compression_name(compression)
        ));
    }
    let (offsets_tag, counts_tag) = match decoder.get_chunk_type() {
        ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
        ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
    };
    let offsets = decoder
        .find_tag_unsigned_vec::<u64>(offsets_tag)
        .map_err(tiff_err)?
        .unwrap_or_default();
    let counts = decoder
        .find_tag_unsigned_vec::<u64>(counts_tag)
        .map_err(tiff_err)?
        .unwrap_or_default();
    let mut held = 0u64;
    for (i, (&offset, &count)) in offsets.iter().zip(&counts).enumerate() {
        let end = offset.checked_add(count).filter(|&end| end <= file_len).ok_or_else(|| {
            format!(
                "page {number}: its data chunk {} lies at bytes {offset}..{}, beyond the end of the file ({})",
                i + 1,
                offset.saturating_add(count),
                show_bytes(file_len)
            )
        })?;
        held = held.saturating_add(end - offset);
    }
    if compression == 1 {
        // Uncompressed: the file must hold every byte of the page.
        let (raw, tile) = raw_bytes(decoder, width, height, samples, bits);
        let declared = match tile {
            Some((w, h)) => format!("{declared} in tiles of {w}x{h}"),
            None => declared,
        };
        let raw = raw.ok_or_else(|| format!("{declared}: more than this machine can address"))?;
        if raw > file_len {
            return Err(format!(
                "{declared}: {} of uncompressed data, but the file holds {}",
                show_bytes(raw),
                show_bytes(file_len)
            ));
        }
        if raw > held {
            return Err(format!(
                "{declared}: {} of uncompressed data, but its strips or tiles hold {}",
                show_bytes(raw),
                show_bytes(held)
            ));
        }
    }
    // The page decoded, and its widened copy if its type is widened (the
    // running total in `plan` counts the copies of a stack's pages).
    let copy = if kind.is_converted() { stored_bytes } else { 0 };
    memory.check(
        decoded_bytes.saturating_add(copy),
        &format!("page {number} ({width}x{height}, {samples} sample(s) of {bits} bits)"),
    )?;
    let page = Page {
        width,
        height,
        samples,
        bits,
        kind,
        ycbcr_jpeg: compression == JPEG && photometric == Some(YCBCR),
        len,
        decoded_bytes,
        stored_bytes,
    };
    Ok((page, decoded_bytes.div_ceil(most_expanded(compression))))
}

/// The bytes uncompressed data of the page takes at least: whole tiles
/// (with their padding) or rows padded to a byte; `None` when that
/// overflows. Also the tile size, for tiled pages.
fn raw_bytes(
    decoder: &mut TiffDecoder,
    width: u32,
    height: u32,
    samples: u16,
    bits: u8,
) -> (Option<u64>, Option<(u64, u64)>) {
    let pixel_bits = u64::from(samples) * u64::from(bits);
    let (across, down, tile_width, tile_height, tile) = match decoder.get_chunk_type() {
        ChunkType::Strip => (1, 1, u64::from(width), u64::from(height), None),
        ChunkType::Tile => {
            // The decoder read both tags (and refused zeros) already.
            let mut size = |tag| {
                decoder
                    .find_tag_unsigned::<u64>(tag)
                    .ok()
                    .flatten()
                    .unwrap_or(1)
                    .max(1)
            };
            let (tile_width, tile_height) = (size(Tag::TileWidth), size(Tag::TileLength));
            let (across, down) = (
                u64::from(width).div_ceil(tile_width),
                u64::from(height).div_ceil(tile_height),
            );
            (
                across,
                down,
                tile_width,
                tile_height,
                Some((tile_width, tile_height)),
            )
        }
    };
    let row = tile_width.checked_mul(pixel_bits).map(|b| b.div_ceil(8));
    (
        row.and_then(|row| checked_product([across, down, tile_height, row])),
        tile,
    )
}

/// The TIFF code of JPEG compression (new style).
const JPEG: u16 = 7;

/// The TIFF code of the YCbCr photometric interpretation.
const YCBCR: u16 = 6;

/// Samples per pixel and bits per sample of the colour types read, on page
/// `number` of `per_pixel` samples (SamplesPerPixel), photometric
/// interpretation `photometric`, compressed with `compression`.
fn samples_and_bits(
    color: ColorType,
    per_pixel: u16,
    photometric: Option<u16>,
    compression: u16,
    number: usize,
) -> Result<(u16, u8), String> {
    let jpeg_channels = |what: &str| {
        format!(
            "page {number} stores {what} compressed with JPEG, which is not read: re-save it with LZW or zlib \
             (deflate) compression, e.g. tifffile.imwrite(new, tifffile.imread(path), compression='zlib')"
        )
    };
    match color {
        ColorType::Gray(b) => Ok((1, b)),
        ColorType::GrayA(b) => Ok((2, b)),
        // The decoder inverts MinIsWhite grey only ("unknown interpretation"
        // for more samples), and which of several samples are inverted is
        // no one's convention.
        ColorType::Multiband { bit_depth, num_samples } if photometric == Some(0) => Err(format!(
            "page {number} holds {num_samples} samples of {bit_depth} bits per pixel stored MinIsWhite \
             (0 is white; grey and {} extra), which the TIFF reader does not decode: {AS_PAGES}",
            num_samples.saturating_sub(1)
        )),
        ColorType::Multiband { num_samples, .. } if compression == JPEG => {
            Err(jpeg_channels(&format!("{num_samples} grey channels")))
        }
        // Grey with extra samples (alpha or more channels) and multi-band
        // rasters (GDAL's INTERLEAVE=PIXEL, tifffile's minisblack (y, x, c)):
        // read as tifffile reads them, every sample a channel.
        ColorType::Multiband {
            bit_depth,
            num_samples,
        } => Ok((num_samples, bit_depth)),
        // JPEG decoders disagree on a CMYK stream's inks (Adobe's
        // inverted convention or not): PIL's came back with every ink
        // inverted, 8,850 of 8,960 samples off.
        ColorType::CMYK(_) | ColorType::CMYKA(_) if compression == JPEG => Err(format!(
            "page {number} stores CMYK inks compressed with JPEG, whose inks decoders read two ways (Adobe's \
             inverted convention or not), so it is not read: re-save it with LZW or zlib (deflate) \
             compression, e.g. PIL: Image.open(path).save(new, compression='tiff_lzw')"
        )),
        // The JPEG decoder takes four channels as inks only: PIL's RGBA
        // JPEG pages got its words ("Invalid number of channels (4) for
        // RGB data").
        ColorType::RGBA(_) | ColorType::RGB(_) if compression == JPEG && per_pixel == 4 => Err(format!(
            "page {number} stores RGBA compressed with JPEG, which is not read: re-save it with LZW or zlib \
             (deflate) compression, e.g. PIL: Image.open(path).save(new, compression='tiff_lzw')"
        )),
        // RGB(A) with more samples than its colour's: JPEG holds 3 only.
        ColorType::RGB(_) | ColorType::RGBA(_) | ColorType::YCbCr(_) if compression == JPEG && per_pixel != 3 => {
            Err(jpeg_channels(&format!("{per_pixel} channels (RGB and {} extra)", per_pixel.saturating_sub(3))))
        }
        ColorType::RGB(b) => Ok((per_pixel.max(3), b)),
        ColorType::RGBA(b) | ColorType::CMYK(b) => Ok((per_pixel.max(4), b)),
        ColorType::CMYKA(b) => Ok((per_pixel.max(5), b)),
        // The JPEG decoder returns YCbCr as RGB: tifffile's RGB JPEG (its
        // default colour space) was refused.
        ColorType::YCbCr(8) if compression == JPEG => Ok((3, 8)),
        // tifffile.imread returns such samples as stored, YCbCr: saved as
        // RGB (the advice this gave) they were colours up to 255 off.
        ColorType::YCbCr(b) => Err(format!(
            "page {number} stores YCbCr colour of {b} bits{}, which is read from JPEG compression only: \
             convert it to RGB, e.g. PIL: Image.open(path).convert('RGB').save(new)",
            if compression == JPEG { "" } else { " without JPEG compression" }
        )),
        // As the decoder refused it before it named ICC Lab.
        ColorType::Lab(b) => Err(format!(
            "page {number} is IccLab with {per_pixel} sample(s) of {b} bits per pixel, which is not \
             read: save it as grayscale or RGB, or as NPY"
        )),
        other => Err(format!(
            "page {number} has the unsupported TIFF colour type {other:?}: expected grayscale, RGB or RGBA"
        )),
    }
}

/// Why page `number` could not be read: a page cut short by the file's end
/// said "failed to fill whole buffer".
fn page_error(number: usize, error: tiff::TiffError) -> String {
    use tiff::TiffUnsupportedError::{FloatingPointPredictor, HorizontalPredictor};
    if let tiff::TiffError::UnsupportedError(HorizontalPredictor(_) | FloatingPointPredictor(_)) =
        &error
    {
        // The decoder said "Horizontal predictor for Gray(32) is
        // unsupported": GDAL's and OpenCV's PREDICTOR=2 on floats.
        return format!(
            "cannot read TIFF page {number}: {error} (the decoder undoes the horizontal predictor on \
             integers and the floating-point one on floats only): re-save it, e.g. \
             tifffile.imwrite(new, tifffile.imread(path), compression='zlib')"
        );
    }
    if cut_short(&error) {
        format!("cannot read TIFF page {number}: the file ends inside it (truncated?)")
    } else {
        format!("cannot read TIFF page {number}: {error}")
    }
}

/// Whether the decoder met the file's end where it needed more.
fn cut_short(error: &tiff::TiffError) -> bool {
    matches!(error, tiff::TiffError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// The refusal of a page whose colour layout the decoder does not decode,
/// with advice for it (it said "The Decoder does not support the image
/// format `BlackIsZero with [8, 8] bits per sample is unsupported`"); the
/// error itself for other errors.
fn colour_refusal(error: tiff::TiffError, number: usize) -> Result<String, tiff::TiffError> {
    use tiff::tags::PhotometricInterpretation as Photometric;
    let tiff::TiffError::UnsupportedError(tiff::TiffUnsupportedError::InterpretationWithBits(
        photometric,
        ref bits,
    )) = error
    else {
        return Err(error);
    };
    let samples = bits.len();
    let depth = bits.first().copied().unwrap_or(0);
    let as_pages = AS_PAGES;
    Ok(match photometric {
        Photometric::RGBPalette => format!(
            "page {number} is a palette (indexed-colour) image, which is not read: convert it to its colours \
             (PIL: Image.open(path).convert('RGB').save(new)), or to grayscale where they are grey \
             (.convert('L'))"
        ),
        Photometric::BlackIsZero | Photometric::WhiteIsZero if samples > 1 => format!(
            "page {number} holds {samples} samples of {depth} bits per pixel (grey and {} extra: alpha or \
             more channels), which the TIFF reader does not decode: {as_pages}",
            samples - 1
        ),
        Photometric::RGB if samples > 4 => format!(
            "page {number} holds {samples} samples of {depth} bits per pixel (RGB and {} extra), which the \
             TIFF reader does not decode: {as_pages}",
            samples - 3
        ),
        other => format!(
            "page {number} is {other:?} with {samples} sample(s) of {depth} bits per pixel, which is not \
             read: save it as grayscale or RGB, or as NPY"
        ),
    })
}

/// Advice for channels the reader does not decode as they are stored.
// tifffile.imread gives (y, x, channels) for a page whose channels are
// interleaved, (channels, y, x) for separate planes (GDAL's
// INTERLEAVE=BAND): moving the last axis of that made (x, channels, y).
const AS_PAGES: &str = "save its channels as pages: tifffile.imwrite(new, image) where image = \
                        tifffile.imread(path) is (channels, y, x), numpy.moveaxis(image, -1, 0) where it is \
                        (y, x, channels); or as NPY";

/// The sample type for a `SampleFormat` value (1 unsigned, 2 signed, 3 IEEE
/// float) and a bit depth, as the decoder reads them.
fn sample_kind(format: u16, bits: u8) -> Option<Samples> {
    match (format, bits) {
        // Sub-byte samples come from the decoder packed, eight to a byte:
        // read as bytes they were quietly wrong.
        (1, 8 | 16 | 32 | 64) => Some(Samples::Uint(bits)),
        (2, 8 | 16 | 32 | 64) => Some(Samples::Int(bits)),
        (3, 32 | 64) => Some(Samples::Float(bits)),
        _ => None,
    }
}

/// Decodes the pages at `indices` into one buffer, reserved for them all at
/// once; a single page of a type the engine reads is kept as decoded (no
/// copy). Separate planes are read plane after plane where `planes_first`.
fn decode(
    decoder: &mut TiffDecoder,
    page: &Page,
    indices: &[usize],
    planes_first: bool,
) -> Result<Buffer, String> {
    if let [index] = indices {
        decoder
            .seek_to_image(*index)
            .map_err(|e| page_error(index + 1, e))?;
        let decoded = read_page(decoder, page, index + 1, planes_first)?;
        return Buffer::from_page(decoded, page.kind, page.len)
            .map_err(|m| as_displayed(decoder, m));
    }
    let total = page
        .len
        .checked_mul(indices.len())
        .ok_or("the pages hold more samples than this machine can address")?;
    let mut buffer = Buffer::reserve(page.kind, total)?;
    for &index in indices {
        let number = index + 1;
        let tiff_err = |e: tiff::TiffError| page_error(number, e);
        decoder.seek_to_image(index).map_err(tiff_err)?;
        // Checked again: the directory is read again.
        let (width, height) = decoder.dimensions().map_err(tiff_err)?;
        if (width, height) != (page.width, page.height) {
            return Err(format!("page {number} changed size while it was read"));
        }
        let decoded = read_page(decoder, page, number, planes_first)?;
        buffer
            .append(decoded, page.len)
            .map_err(|m| format!("page {number}: {}", as_displayed(decoder, m)))?;
    }
    Ok(buffer)
}

/// `message`, a refusal of a sample of the decoder's current page, saying
/// that a MinIsWhite page's values are quoted as displayed: the decoder
/// inverts them, and a refused value was quoted unlike any in the file.
fn as_displayed(decoder: &mut TiffDecoder, message: String) -> String {
    let min_is_white = decoder
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .ok()
        .flatten()
        == Some(0);
    if min_is_white {
        format!(
            "{message}; the value is as displayed: the page is stored MinIsWhite (0 is white) and read inverted"
        )
    } else {
        message
    }
}

/// Decodes the decoder's current page, page `number` of the file, which
/// declares what `page` does; its separate planes (if it has them) plane
/// after plane where `planes_first`, as the first page's are.
fn read_page(
    decoder: &mut TiffDecoder,
    page: &Page,
    number: usize,
    planes_first: bool,
) -> Result<DecodingResult, String> {
    let tiff_err = |e: tiff::TiffError| page_error(number, e);
    if is_planar(decoder, page.samples).map_err(tiff_err)? {
        let grid = PlaneGrid::of_page(decoder, page.width, page.height, page.samples, planes_first);
        return read_planar(decoder, grid, page.len, tiff_err);
    }
    if planes_first {
        return Err(format!(
            "page {number} stores its channels interleaved, page 1 as separate planes: \
             the pages do not make one array"
        ));
    }
    let mut decoded = decoder.read_image().map_err(tiff_err)?;
    if let (true, DecodingResult::U8(samples)) = (page.ycbcr_jpeg, &mut decoded) {
        ycbcr_to_rgb(samples);
    }
    Ok(decoded)
}

/// Converts interleaved 8-bit YCbCr samples to RGB in place, as libjpeg
/// does (JFIF's full-range BT.601), the colours tifffile and PIL read: the
/// decoder of tiff 0.11 returns a JPEG's YCbCr as stored (tifffile's RGB
/// JPEG came back with colours up to 0.55 of the range off).
fn ycbcr_to_rgb(samples: &mut [u8]) {
    for pixel in samples.chunks_exact_mut(3) {
        let y = f32::from(pixel[0]);
        let cb = f32::from(pixel[1]) - 128.0;
        let cr = f32::from(pixel[2]) - 128.0;
        // `as u8` saturates: the sums are clamped to 0..=255.
        pixel[0] = (y + 1.402 * cr).round() as u8;
        pixel[1] = (y - 0.344_136 * cb - 0.714_136 * cr).round() as u8;
        pixel[2] = (y + 1.772 * cb).round() as u8;
    }
}

/// The shape of one page as the image's shape ends: `(y, x)`, `(y, x, c)`
/// or, for separate planes (`planes_first`), `(c, y, x)`.
fn page_shape(page: &Page, planes_first: bool) -> Vec<usize> {
    let (height, width) = (
        saturating_usize(page.height.into()),
        saturating_usize(page.width.into()),
    );
    let samples = usize::from(page.samples);
    let axes = if planes_first {
        "cyx"
    } else {
        contiguous_axes(samples)
    };
    axes.chars()
        .map(|axis| match axis {
            'y' => height,
            'x' => width,
            _ => samples,
        })
        .collect()
}

/// Whether the decoder's current page of `samples` channels stores them as
/// separate planes (planar configuration 2), which the decoder's
/// `read_image` reads only the first of.
fn is_planar(decoder: &mut TiffDecoder, samples: u16) -> Result<bool, tiff::TiffError> {
    let planar = decoder.find_tag_unsigned::<u16>(Tag::PlanarConfiguration)?;
    Ok(samples > 1 && planar == Some(2))
}

/// Pages of a TIFF appended one after the other, in the stored type.
enum Buffer {
    U8(Vec<u8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buffer {
    /// An empty buffer with room for `len` samples of what `kind` is stored as.
    fn reserve(kind: Samples, len: usize) -> Result<Self, String> {
        Ok(match kind {
            Samples::Uint(0..=8) => Self::U8(try_vec(len)?),
            Samples::Uint(9..=16) => Self::U16(try_vec(len)?),
            Samples::Int(0..=16) => Self::I16(try_vec(len)?),
            Samples::Float(32) => Self::F32(try_vec(len)?),
            _ => Self::F64(try_vec(len)?),
        })
    }

    /// A buffer of one decoded page of `len` samples: the decoder's vector
    /// itself when the engine reads its type, else a widened copy.
    fn from_page(page: DecodingResult, kind: Samples, len: usize) -> Result<Self, String> {
        let buffer = match page {
            DecodingResult::U8(v) => Self::U8(v),
            DecodingResult::U16(v) => Self::U16(v),
            DecodingResult::I16(v) => Self::I16(v),
            DecodingResult::F32(v) => Self::F32(v),
            DecodingResult::F64(v) => Self::F64(v),
            other => {
                let mut buffer = Self::reserve(kind, len)?;
                buffer.append(other, len)?;
                return Ok(buffer);
            }
        };
        if buffer.len() != len {
            return Err(format!(
                "the page holds {} samples, expected {len}",
                buffer.len()
            ));
        }
        Ok(buffer)
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

    /// Appends a decoded page of `len` samples, widened to the stored type.
    /// The room was reserved: nothing is allocated here.
    fn append(&mut self, page: DecodingResult, len: usize) -> Result<(), String> {
        let got = match &page {
            DecodingResult::U8(v) => v.len(),
            DecodingResult::U16(v) => v.len(),
            DecodingResult::U32(v) => v.len(),
            DecodingResult::U64(v) => v.len(),
            DecodingResult::I8(v) => v.len(),
            DecodingResult::I16(v) => v.len(),
            DecodingResult::I32(v) => v.len(),
            DecodingResult::I64(v) => v.len(),
            DecodingResult::F32(v) => v.len(),
            DecodingResult::F64(v) => v.len(),
            // Refused by their sample kind before anything is decoded.
            DecodingResult::F16(_) => {
                return Err("16-bit float samples are not read from TIFF".to_owned())
            }
        };
        if got != len {
            return Err(format!("the page holds {got} samples, expected {len}"));
        }
        match (self, page) {
            (Self::U8(a), DecodingResult::U8(b)) => a.extend_from_slice(&b),
            (Self::U16(a), DecodingResult::U16(b)) => a.extend_from_slice(&b),
            (Self::I16(a), DecodingResult::I16(b)) => a.extend_from_slice(&b),
            (Self::I16(a), DecodingResult::I8(b)) => a.extend(b.into_iter().map(i16::from)),
            (Self::F32(a), DecodingResult::F32(b)) => a.extend_from_slice(&b),
            (Self::F64(a), DecodingResult::F64(b)) => a.extend_from_slice(&b),
            (Self::F64(a), DecodingResult::U32(b)) => a.extend(b.into_iter().map(f64::from)),
            (Self::F64(a), DecodingResult::I32(b)) => a.extend(b.into_iter().map(f64::from)),
            (Self::F64(a), DecodingResult::U64(b)) => {
                for x in b {
                    a.push(super::exact_f64(x)?);
                }
            }
            (Self::F64(a), DecodingResult::I64(b)) => {
                for x in b {
                    a.push(super::exact_f64(x)?);
                }
            }
            _ => {
                return Err(
                    "the decoder returned another sample type than the page declares".to_owned(),
                )
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::first_directory_is_none;
    use super::read_tiff;
    use crate::limits::Memory;
    use crate::read::Pixels;
    use tiff::encoder::{colortype::ColorType, Compression, TiffEncoder};
    use tiff::tags::{PhotometricInterpretation, SampleFormat};

    /// Grey pages of `N` 16-bit samples per pixel (MinIsBlack, no
    /// ExtraSamples tag), as GDAL writes multi-band rasters.
    struct Bands<const N: usize>;

    impl<const N: usize> ColorType for Bands<N> {
        type Inner = u16;
        const TIFF_VALUE: PhotometricInterpretation = PhotometricInterpretation::BlackIsZero;
        const BITS_PER_SAMPLE: &'static [u16] = &[16; N];
        const SAMPLE_FORMAT: &'static [SampleFormat] = &[SampleFormat::Uint; N];

        fn horizontal_predict(row: &[u16], result: &mut Vec<u16>) {
            result.extend_from_slice(row);
        }
    }

    /// Writes `pages` pages of `N` bands to a file and reads it back.
    fn bands<const N: usize>(
        pages: usize,
        compression: Compression,
    ) -> (Vec<u16>, crate::read::Image) {
        let (width, height) = (7u32, 5u32);
        let data: Vec<u16> = (0..pages * (width * height) as usize * N)
            .map(|i| (i * 37 % 65521) as u16)
            .collect();
        let path = std::env::temp_dir().join(format!(
            "unet-rt-bands-{N}-{pages}-{}-{}.tif",
            std::process::id(),
            compression != Compression::Uncompressed
        ));
        {
            let file = std::fs::File::create(&path).unwrap();
            let mut encoder = TiffEncoder::new(file)
                .unwrap()
                .with_compression(compression);
            for page in data.chunks((width * height) as usize * N) {
                encoder
                    .write_image::<Bands<N>>(width, height, page)
                    .unwrap();
            }
        }
        let file = std::fs::File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let image = read_tiff(file, len, Memory::unlimited());
        std::fs::remove_file(&path).unwrap();
        (data, image.unwrap())
    }

    #[test]
    fn grey_pages_of_several_samples_are_read_as_channels_last() {
        // They were refused: "page 1 holds 2 samples of 16 bits per pixel
        // (grey and 1 extra ...), which the TIFF reader does not decode".
        let (data, image) = bands::<2>(1, Compression::Uncompressed);
        let Pixels::U16(pixels) = image.pixels else {
            panic!("not uint16")
        };
        assert_eq!(pixels.shape(), [5, 7, 2]);
        assert_eq!(image.axes.as_deref(), Some("yxc"));
        assert_eq!(pixels.iter().copied().collect::<Vec<_>>(), data);
        // Four bands, compressed, three pages: a stack of them.
        let (data, image) = bands::<4>(3, Compression::Deflate(Default::default()));
        let Pixels::U16(pixels) = image.pixels else {
            panic!("not uint16")
        };
        assert_eq!(pixels.shape(), [3, 5, 7, 4]);
        assert_eq!(image.axes.as_deref(), Some("zyxc"));
        assert_eq!(pixels.iter().copied().collect::<Vec<_>>(), data);
    }

    #[test]
    fn a_header_whose_first_directory_offset_is_zero_holds_no_page() {
        assert!(first_directory_is_none(b"II*\0\0\0\0\0"));
        assert!(first_directory_is_none(b"MM\0*\0\0\0\0"));
        assert!(first_directory_is_none(b"II+\0\x08\0\0\0\0\0\0\0\0\0\0\0"));
        assert!(!first_directory_is_none(b"II*\0\x08\0\0\0"));
        assert!(!first_directory_is_none(
            b"MM\0+\0\x08\0\0\0\0\0\0\0\0\0\x10"
        ));
        assert!(!first_directory_is_none(b"II*\0"));
        assert!(!first_directory_is_none(b"\x89PNG\r\n\x1a\n"));
    }
}
