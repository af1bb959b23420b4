//! In-process fuzzing of the image readers: valid files of every layout the
//! readers take (TIFF strips, tiles and planes, compressed, multi-page and
//! BigTIFF; PNG of each colour type; NPY of each element type and order),
//! damaged in thousands of ways per run, read under a small memory limit.
//!
//! The contract: no panic, and a file that is read yields no more than the
//! limit's bytes of pixels (what it declares beyond that is refused before
//! anything is allocated). The command-line fuzz campaign (`tests/fuzz`)
//! runs the binary on a few dozen damaged files a run; reading in-process
//! reaches thousands, and the file of a failing case is kept to replay.
//!
//! `UNET_RT_FUZZ_SEED` replays a run (its seed is printed on failure; a run
//! otherwise draws one from the clock, or under `CI=true` from the commit);
//! `UNET_RT_READER_FUZZ_CASES` sets how many damaged files it reads and
//! `UNET_RT_READER_FUZZ_VERBOSE` prints how many of each kind were read.

use std::io::{Cursor, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tiff::encoder::{colortype, Compression, TiffEncoder};

use super::{npy_reader, png_reader, tiff_reader, with_pixels, Memory};

/// Damaged files read per run by default (about two seconds in release).
const DEFAULT_CASES: usize = 4000;

/// The memory the readers may use: small, so that a damaged size that the
/// file cannot back is refused rather than allocated.
const LIMIT: u64 = 64 << 20;

/// Values that break size arithmetic, written over a file's bytes.
const HOSTILE: [u64; 16] = [
    0,
    1,
    2,
    3,
    0x7F,
    0xFF,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// splitmix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A valid file to damage: its extension and what it is.
struct Seed {
    ext: &'static str,
    what: String,
    bytes: Vec<u8>,
}

/// One entry of a hand-made TIFF directory: SHORT (3) or LONG (4) values.
struct Entry {
    tag: u16,
    kind: u16,
    values: Vec<u32>,
}

fn short(tag: u16, values: &[u32]) -> Entry {
    Entry {
        tag,
        kind: 3,
        values: values.to_vec(),
    }
}

fn long(tag: u16, values: &[u32]) -> Entry {
    Entry {
        tag,
        kind: 4,
        values: values.to_vec(),
    }
}

/// An ImageDescription (ASCII, NUL-terminated).
fn description(text: &str) -> Entry {
    Entry {
        tag: 270,
        kind: 2,
        values: text.bytes().chain([0]).map(u32::from).collect(),
    }
}

/// A little-endian TIFF of one page, uncompressed, from `entries` and the
/// chunks (strips or tiles) it stores: the tiff crate's encoder writes
/// neither tiles nor separate planes, the layouts of two of our readers.
fn raw_tiff(mut entries: Vec<Entry>, chunks: &[Vec<u8>], tiled: bool) -> Vec<u8> {
    let mut out = b"II*\0\0\0\0\0".to_vec();
    let mut offsets = Vec::new();
    for chunk in chunks {
        offsets.push(out.len() as u32);
        out.extend_from_slice(chunk);
    }
    let counts: Vec<u32> = chunks.iter().map(|c| c.len() as u32).collect();
    let (offsets_tag, counts_tag) = if tiled { (324, 325) } else { (273, 279) };
    entries.push(long(offsets_tag, &offsets));
    entries.push(long(counts_tag, &counts));
    entries.sort_by_key(|e| e.tag);
    if out.len() % 2 == 1 {
        out.push(0);
    }
    let ifd = out.len();
    out[4..8].copy_from_slice(&(ifd as u32).to_le_bytes());
    // Values too long for an entry go after the directory.
    let extra = ifd + 2 + 12 * entries.len() + 4;
    let mut tail = Vec::new();
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in &entries {
        let size = match e.kind {
            2 => 1,
            3 => 2,
            _ => 4,
        };
        let mut data = Vec::new();
        for &v in &e.values {
            match e.kind {
                2 => data.push(v as u8),
                3 => data.extend_from_slice(&(v as u16).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.kind.to_le_bytes());
        out.extend_from_slice(&(e.values.len() as u32).to_le_bytes());
        if e.values.len() * size <= 4 {
            data.resize(4, 0);
            out.extend_from_slice(&data);
        } else {
            out.extend_from_slice(&((extra + tail.len()) as u32).to_le_bytes());
            tail.extend_from_slice(&data);
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(out.len(), extra);
    out.extend_from_slice(&tail);
    out
}

/// Tags of a hand-made page: size, samples, bits, sample format, and
/// whether the planes are separate.
fn page_tags(width: u32, height: u32, samples: u32, bits: u32, planar: bool) -> Vec<Entry> {
    vec![
        long(256, &[width]),
        long(257, &[height]),
        short(258, &vec![bits; samples as usize]),
        short(259, &[1]),
        short(262, &[if samples >= 3 { 2 } else { 1 }]),
        short(277, &[samples]),
        short(284, &[if planar { 2 } else { 1 }]),
        short(339, &vec![1; samples as usize]),
    ]
}

/// Tiled pages: a grid of `tile`-sided tiles, cut at the page's edge.
fn tiled_seed(rng: &mut Rng, width: u32, height: u32, samples: u32, planar: bool) -> Vec<u8> {
    let tile = 16u32;
    let per_plane = width.div_ceil(tile) * height.div_ceil(tile);
    let (planes, per_pixel) = if planar { (samples, 1) } else { (1, samples) };
    let chunks: Vec<Vec<u8>> = (0..per_plane * planes)
        .map(|_| rng.bytes((tile * tile * per_pixel) as usize))
        .collect();
    let mut tags = page_tags(width, height, samples, 8, planar);
    tags.push(short(322, &[tile]));
    tags.push(short(323, &[tile]));
    raw_tiff(tags, &chunks, true)
}

/// Separate planes in strips of `rows` rows, with `text` as the page's
/// description where given.
fn planar_strips_seed(
    rng: &mut Rng,
    width: u32,
    height: u32,
    samples: u32,
    rows: u32,
    text: Option<&str>,
) -> Vec<u8> {
    let mut chunks = Vec::new();
    for _ in 0..samples {
        let mut y = 0;
        while y < height {
            let n = rows.min(height - y);
            chunks.push(rng.bytes((width * n) as usize));
            y += n;
        }
    }
    let mut tags = page_tags(width, height, samples, 8, true);
    tags.push(long(278, &[rows]));
    tags.extend(text.map(description));
    raw_tiff(tags, &chunks, false)
}

/// A sample of a random bit pattern (every pattern is a valid value).
trait Random: Sized {
    fn random(rng: &mut Rng) -> Self;
}

macro_rules! random_from_bits {
    ($($t:ty),*) => {$(
        impl Random for $t {
            fn random(rng: &mut Rng) -> Self {
                let bytes = rng.next().to_le_bytes();
                let mut own = [0u8; std::mem::size_of::<$t>()];
                own.copy_from_slice(&bytes[..std::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(own)
            }
        }
    )*};
}
random_from_bits!(u8, i8, u16, i16, u32, i32, f32, f64);

impl Random for u64 {
    /// Within 2^53: a 64-bit image is read as float64 where it fits.
    fn random(rng: &mut Rng) -> Self {
        rng.next() >> 11
    }
}

/// `pages` pages of one colour type and compression, written by the tiff
/// crate (as a standard TIFF, or a BigTIFF where `big`).
fn encoded<C>(rng: &mut Rng, pages: usize, big: bool, compression: Compression) -> Vec<u8>
where
    C: colortype::ColorType,
    [C::Inner]: tiff::encoder::TiffValue,
    C::Inner: Random,
{
    fn write<C, K>(
        enc: TiffEncoder<&mut Cursor<Vec<u8>>, K>,
        rng: &mut Rng,
        pages: usize,
        compression: Compression,
    ) where
        C: colortype::ColorType,
        [C::Inner]: tiff::encoder::TiffValue,
        C::Inner: Random,
        K: tiff::encoder::TiffKind,
    {
        let mut enc = enc.with_compression(compression);
        let (width, height) = (23u32, 17u32);
        let n = (width * height) as usize * C::BITS_PER_SAMPLE.len();
        for _ in 0..pages {
            let data: Vec<C::Inner> = (0..n).map(|_| C::Inner::random(rng)).collect();
            enc.write_image::<C>(width, height, &data).expect("page");
        }
    }
    let mut out = Cursor::new(Vec::new());
    if big {
        write::<C, _>(
            TiffEncoder::new_big(&mut out).expect("encoder"),
            rng,
            pages,
            compression,
        );
    } else {
        write::<C, _>(
            TiffEncoder::new(&mut out).expect("encoder"),
            rng,
            pages,
            compression,
        );
    }
    out.into_inner()
}

fn png_seed(
    rng: &mut Rng,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: bool,
    frames: u32,
) -> Vec<u8> {
    let (width, height) = (19u32, 13u32);
    let channels = match color {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    let bits = depth as usize;
    let row = (width as usize * channels * bits).div_ceil(8);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(depth);
        if palette {
            enc.set_palette(rng.bytes(3 * 16));
            enc.set_trns(rng.bytes(5));
        }
        if frames > 1 {
            enc.set_animated(frames, 0).expect("animated");
        }
        let mut writer = enc.write_header().expect("header");
        for _ in 0..frames {
            let mut data = rng.bytes(row * height as usize);
            if palette {
                // Indices within the 16-colour palette.
                data.iter_mut().for_each(|b| *b &= 0x33);
            }
            writer.write_image_data(&data).expect("data");
        }
        writer.finish().expect("finish");
    }
    out
}

fn npy_seed(rng: &mut Rng, descr: &str, size: usize, shape: &[usize], fortran: bool) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_text}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let n: usize = shape.iter().product();
    let mut data = rng.bytes(n * size);
    if descr == "|b1" {
        data.iter_mut().for_each(|b| *b &= 1);
    }
    if descr == "<i8" {
        // Within 2^53: a 64-bit image is read as float64 where it fits.
        data.chunks_mut(8).for_each(|v| v[6..].fill(0));
    }
    out.extend_from_slice(&data);
    out
}

fn seeds(rng: &mut Rng) -> Vec<Seed> {
    use Compression::{Lzw, Packbits, Uncompressed};
    let deflate = Compression::Deflate(Default::default());
    let mut seeds = Vec::new();
    let mut tiff = |what: &str, bytes: Vec<u8>| {
        seeds.push(Seed {
            ext: "tif",
            what: what.to_owned(),
            bytes,
        })
    };
    tiff(
        "gray8",
        encoded::<colortype::Gray8>(rng, 1, false, Uncompressed),
    );
    tiff(
        "gray8 3 pages lzw",
        encoded::<colortype::Gray8>(rng, 3, false, Lzw),
    );
    tiff(
        "gray16 deflate",
        encoded::<colortype::Gray16>(rng, 1, false, deflate),
    );
    tiff(
        "int8 packbits",
        encoded::<colortype::GrayI8>(rng, 2, false, Packbits),
    );
    tiff(
        "int16",
        encoded::<colortype::GrayI16>(rng, 1, false, Uncompressed),
    );
    tiff("uint32", encoded::<colortype::Gray32>(rng, 1, false, Lzw));
    tiff(
        "float32",
        encoded::<colortype::Gray32Float>(rng, 2, false, Uncompressed),
    );
    tiff(
        "float64 deflate",
        encoded::<colortype::Gray64Float>(rng, 1, false, deflate),
    );
    tiff(
        "uint64",
        encoded::<colortype::Gray64>(rng, 1, false, Uncompressed),
    );
    tiff("rgb8 lzw", encoded::<colortype::RGB8>(rng, 1, false, Lzw));
    tiff(
        "rgba16",
        encoded::<colortype::RGBA16>(rng, 1, false, Uncompressed),
    );
    tiff(
        "bigtiff gray16",
        encoded::<colortype::Gray16>(rng, 1, true, Uncompressed),
    );
    tiff(
        "bigtiff rgb8 deflate",
        encoded::<colortype::RGB8>(rng, 1, true, deflate),
    );
    tiff("tiled gray8", tiled_seed(rng, 40, 24, 1, false));
    tiff("tiled rgb8", tiled_seed(rng, 33, 17, 3, false));
    tiff("tiled planar rgb8", tiled_seed(rng, 40, 24, 3, true));
    // Grey bands (MinIsBlack, 2 samples per pixel): interleaved and planar.
    tiff("tiled grey 2 bands", tiled_seed(rng, 40, 24, 2, false));
    tiff(
        "tiled planar grey 2 bands",
        tiled_seed(rng, 33, 17, 2, true),
    );
    tiff(
        "planar grey 2 bands strips",
        planar_strips_seed(rng, 20, 10, 2, 3, None),
    );
    tiff(
        "planar rgb8 strips",
        planar_strips_seed(rng, 20, 10, 3, 4, None),
    );
    tiff(
        "planar rgba8 strips",
        planar_strips_seed(rng, 9, 7, 4, 1, None),
    );
    // Descriptions: the reader takes shapes, axes and page counts from them.
    let zyx = r#"{"shape": [3, 10, 20], "axes": "ZYX"}"#;
    tiff(
        "planar slices named ZYX",
        planar_strips_seed(rng, 20, 10, 3, 4, Some(zyx)),
    );
    let unnamed = r#"{"shape": [3, 10, 20]}"#;
    tiff(
        "planar unnamed",
        planar_strips_seed(rng, 20, 10, 3, 10, Some(unnamed)),
    );
    let imagej = "ImageJ=1.11a\nunit=micron\nspacing=2.5\n";
    tiff(
        "planar ImageJ text",
        planar_strips_seed(rng, 20, 10, 3, 5, Some(imagej)),
    );
    tiff("int32", encoded::<colortype::GrayI32>(rng, 1, false, Lzw));
    use png::{BitDepth, ColorType};
    for (what, color, depth, palette, frames) in [
        ("gray8", ColorType::Grayscale, BitDepth::Eight, false, 1),
        ("gray16", ColorType::Grayscale, BitDepth::Sixteen, false, 1),
        ("gray1", ColorType::Grayscale, BitDepth::One, false, 1),
        (
            "gray alpha 8",
            ColorType::GrayscaleAlpha,
            BitDepth::Eight,
            false,
            1,
        ),
        ("rgb8", ColorType::Rgb, BitDepth::Eight, false, 1),
        ("rgba16", ColorType::Rgba, BitDepth::Sixteen, false, 1),
        (
            "palette 4-bit with alpha",
            ColorType::Indexed,
            BitDepth::Four,
            true,
            1,
        ),
        (
            "animated gray8",
            ColorType::Grayscale,
            BitDepth::Eight,
            false,
            3,
        ),
    ] {
        seeds.push(Seed {
            ext: "png",
            what: what.to_owned(),
            bytes: png_seed(rng, color, depth, palette, frames),
        });
    }
    for (descr, size, shape, fortran) in [
        ("|u1", 1, &[17usize, 23][..], false),
        ("<u2", 2, &[3, 11, 7], false),
        (">u2", 2, &[11, 7], false),
        ("<f4", 4, &[9, 13], true),
        ("<f8", 8, &[2, 5, 6, 3], false),
        ("<f2", 2, &[12, 10], false),
        ("<i8", 8, &[6, 9], false),
        ("|b1", 1, &[8, 8], false),
        ("|i1", 1, &[5, 4], true),
        ("<u4", 4, &[4, 4], false),
    ] {
        seeds.push(Seed {
            ext: "npy",
            what: format!("{descr} {shape:?}{}", if fortran { " fortran" } else { "" }),
            bytes: npy_seed(rng, descr, size, shape, fortran),
        });
    }
    seeds
}

/// Damages `bytes` by one to four of: a flipped bit, a random byte, a
/// hostile value (either byte order) over 2, 4 or 8 bytes, a cut, a slice
/// repeated, random bytes inserted, a range zeroed. Offsets favour the
/// first 64 bytes (headers), where one change moves the most. Returns what
/// was done, for the report.
fn damage(rng: &mut Rng, bytes: &mut Vec<u8>) -> Vec<String> {
    let mut done = Vec::new();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        let at = if rng.below(2) == 0 {
            rng.below(len.min(64))
        } else {
            rng.below(len)
        };
        match rng.below(7) {
            0 => {
                let bit = rng.below(8);
                bytes[at] ^= 1 << bit;
                done.push(format!("flip bit {bit} at {at}"));
            }
            1 => {
                let value = rng.next() as u8;
                bytes[at] = value;
                done.push(format!("byte {value} at {at}"));
            }
            2 => {
                let width = [2, 4, 8][rng.below(3)];
                let value = HOSTILE[rng.below(HOSTILE.len())];
                let big = rng.below(2) == 0;
                let all = if big {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                let part = if big {
                    &all[8 - width..]
                } else {
                    &all[..width]
                };
                let end = (at + width).min(len);
                bytes[at..end].copy_from_slice(&part[..end - at]);
                done.push(format!(
                    "{value:#x} ({width} bytes, {}) at {at}",
                    if big { "BE" } else { "LE" }
                ));
            }
            3 => {
                bytes.truncate(at.max(1));
                done.push(format!("cut to {}", bytes.len()));
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(len);
                let slice = bytes[at..end].to_vec();
                let to = rng.below(len);
                bytes.splice(to..to, slice);
                done.push(format!("bytes {at}..{end} repeated at {to}"));
            }
            5 => {
                let n = 1 + rng.below(16);
                let inserted = rng.bytes(n);
                bytes.splice(at..at, inserted);
                done.push(format!("{n} random bytes inserted at {at}"));
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(len);
                bytes[at..end].fill(0);
                done.push(format!("bytes {at}..{end} zeroed"));
            }
        }
    }
    done
}

/// The CRC-32 of PNG chunks (ISO 3309), bit by bit: files are small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Makes every whole chunk's CRC right again, so that damage inside a
/// chunk reaches the decoder instead of failing the checksum.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while let Some(len) = bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    {
        let end = at + 8 + len;
        if end + 4 > bytes.len() {
            break;
        }
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// Reads the file at `path` as its extension says, under [`LIMIT`]:
/// whether it was read (`false`: refused), or `Err` with what went wrong
/// where the contract is broken.
fn read_checked(path: &Path, ext: &str) -> Result<bool, String> {
    let open = || std::fs::File::open(path).map_err(|e| e.to_string());
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let memory = Memory::limited(LIMIT);
    let read = catch_unwind(AssertUnwindSafe(|| -> Result<_, String> {
        let image = match ext {
            "npy" => npy_reader::read_npy(open()?, len, memory),
            "png" => png_reader::read_png(open()?, len, memory),
            _ => tiff_reader::read_tiff(open()?, len, memory),
        };
        // What `--skip-existing` reads of a result must not panic either.
        let _ = match ext {
            "npy" => npy_reader::npy_element(open()?, len).map(|e| (e, None)),
            "png" => png_reader::png_element(open()?),
            _ => tiff_reader::tiff_element(open()?, len),
        };
        Ok(image)
    }));
    let image = match read {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            return Err(format!("panicked: {message}"));
        }
        Ok(image) => image?,
    };
    let Ok(image) = image else {
        return Ok(false);
    };
    fn bytes_of<T>(a: &ndarray::ArrayD<T>) -> usize {
        a.len() * std::mem::size_of::<T>()
    }
    let bytes = with_pixels!(&image.pixels, a => bytes_of(a));
    if bytes as u64 > LIMIT {
        return Err(format!(
            "read {bytes} bytes of pixels, over the limit of {LIMIT}"
        ));
    }
    Ok(true)
}

/// `UNET_RT_FUZZ_SEED`; else, under CI (`CI=true`), one drawn from the
/// commit, as the Python campaigns do (a submission's CI replays its
/// author's run, and each commit explores new cases); else the clock.
fn seed_of_run() -> u64 {
    if let Some(seed) = std::env::var("UNET_RT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return seed;
    }
    let ci = std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    let commit = || {
        let done = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        let text = String::from_utf8(done.stdout).ok()?;
        u64::from_str_radix(text.trim().get(..8)?, 16)
            .ok()
            .filter(|_| done.status.success())
    };
    ci.then(commit).flatten().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

#[test]
fn damaged_image_files_are_refused_or_read_within_the_memory_limit_never_panicking() {
    let seed = seed_of_run();
    let cases: usize = std::env::var("UNET_RT_READER_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut rng = Rng(seed);
    let seeds = seeds(&mut Rng(7));
    let dir = std::env::temp_dir().join(format!("unet_rt_reader_fuzz_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    // The valid files themselves read: the damage is what is tested.
    for s in &seeds {
        let path = dir.join(format!("seed.{}", s.ext));
        std::fs::write(&path, &s.bytes).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let len = s.bytes.len() as u64;
        let memory = Memory::limited(LIMIT);
        let read = match s.ext {
            "npy" => npy_reader::read_npy(file, len, memory),
            "png" => png_reader::read_png(file, len, memory),
            _ => tiff_reader::read_tiff(file, len, memory),
        };
        assert!(
            read.is_ok(),
            "the valid {} {} was refused: {:?}",
            s.what,
            s.ext,
            read.err()
        );
    }
    let mut failures: Vec<(String, PathBuf)> = Vec::new();
    let mut passed = 0usize;
    // Files read (not refused) per seed: damage that leaves the pixels'
    // layout alone must still be decoded, or the run tested only refusals.
    let mut read_per_seed = vec![0usize; seeds.len()];
    let mut slowest = (std::time::Duration::ZERO, String::new());
    for case in 0..cases {
        let which = rng.below(seeds.len());
        let s = &seeds[which];
        let mut bytes = s.bytes.clone();
        let mut done = damage(&mut rng, &mut bytes);
        if s.ext == "png" && rng.below(4) != 0 {
            fix_png_crcs(&mut bytes);
            done.push("CRCs fixed".to_owned());
        }
        let path = dir.join(format!("case.{}", s.ext));
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&bytes).expect("write");
        drop(file);
        let started = std::time::Instant::now();
        let checked = read_checked(&path, s.ext);
        if started.elapsed() > slowest.0 {
            slowest = (
                started.elapsed(),
                format!("case {case}, {} {}: {}", s.what, s.ext, done.join("; ")),
            );
        }
        match checked {
            Ok(read) => {
                passed += 1;
                read_per_seed[which] += usize::from(read);
            }
            Err(what) => {
                let kept = dir.join(format!("failure_{case}.{}", s.ext));
                std::fs::copy(&path, &kept).expect("keep");
                failures.push((
                    format!(
                        "case {case}, {} {}: {} ({})",
                        s.what,
                        s.ext,
                        what,
                        done.join("; ")
                    ),
                    kept,
                ));
            }
        }
    }
    if failures.is_empty() {
        std::fs::remove_dir_all(&dir).ok();
    }
    eprintln!(
        "{cases} damaged files (UNET_RT_FUZZ_SEED={seed}): {passed} kept the contract; the slowest took {:?} ({})",
        slowest.0, slowest.1
    );
    let shown: Vec<String> = failures
        .iter()
        .take(10)
        .map(|(what, path)| format!("{what}: {}", path.display()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {cases} damaged files broke the readers' contract (UNET_RT_FUZZ_SEED={seed}):\n{}",
        failures.len(),
        shown.join("\n")
    );
    if std::env::var_os("UNET_RT_READER_FUZZ_VERBOSE").is_some() {
        for (s, read) in seeds.iter().zip(&read_per_seed) {
            eprintln!("{read:6} read: {} {}", s.what, s.ext);
        }
    }
    if cases >= 20 * seeds.len() {
        for ext in ["tif", "png", "npy"] {
            let read: usize = seeds
                .iter()
                .zip(&read_per_seed)
                .filter(|(s, _)| s.ext == ext)
                .map(|(_, n)| n)
                .sum();
            assert!(
                read > 0,
                "no damaged .{ext} file was read (UNET_RT_FUZZ_SEED={seed})"
            );
        }
    }
}
