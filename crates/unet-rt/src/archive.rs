//! The TorchScript archive as a zip file: opened once for the metadata and
//! checked before libtorch reads it.
//!
//! libtorch takes a storage's size from the archive's pickle and its bytes
//! from the `data/N` record without comparing the two, so a record shorter
//! than its pickle says (a truncated download, a damaged file) is read past
//! its end: a segfault, or weights silently taken from other memory. The
//! check here refuses such archives with a message naming the record.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use zip::ZipArchive;

use crate::error::{Error, Result};
use crate::pickle::{scan, Scan};

/// The pickles of an archive that refer to tensor records, with the folder
/// their records live in (`<archive>/data.pkl` -> `<archive>/data/<key>`).
const PICKLES: [&str; 2] = ["data", "constants"];

/// Largest pickle the loader replays: real networks' pickles are kilobytes
/// (their weights are separate records).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Opens the model file at `path`: only regular files (through links) are
/// models, since opening a FIFO blocks until a writer comes and a device
/// never ends.
pub(crate) fn open_file(path: &Path) -> Result<File> {
    let io_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => Error::ModelNotFound(path.to_owned()),
        _ => Error::Io {
            path: path.to_owned(),
            source,
        },
    };
    let kind = std::fs::metadata(path).map_err(io_error)?.file_type();
    if kind.is_dir() {
        // A package folder was only "not a regular file", where its zip
        // was told what to do.
        if let Some(name) = PACKAGE_DESCRIPTIONS
            .iter()
            .find(|name| path.join(name).is_file())
        {
            return Err(invalid(path, package_advice(name)));
        }
    }
    if !kind.is_file() {
        return Err(invalid(
            path,
            format!(
                "not a regular file (it is {}); a TorchScript archive (.pt) is expected",
                crate::files::special_kind(kind).unwrap_or("a directory")
            ),
        ));
    }
    File::open(path).map_err(io_error)
}

/// Reads the zip directory of an archive; `origin` names it in messages.
pub(crate) fn open_zip<R: Read + Seek>(mut reader: R, origin: &Path) -> Result<ZipArchive<R>> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    let read = reader
        .by_ref()
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .and_then(|_| reader.rewind());
    ZipArchive::new(reader).map_err(|e| {
        let reason = match read.ok().and_then(|()| sniff(&head, origin)) {
            Some(what) => format!("it is {what}"),
            // A zip's first entry, no directory: the file was cut short,
            // which "not a TorchScript archive" did not say.
            None if head.starts_with(b"PK\x03\x04") => format!(
                "a zip archive without its directory (which comes last): cut short, copied or downloaded \
                 in part? ({e})"
            ),
            None => format!("not a TorchScript archive (a zip file is expected): {e}"),
        };
        invalid(origin, reason)
    })
}

/// Bytes read from the start of a file that is not a zip archive, to say
/// what it is instead.
const SNIFF_BYTES: usize = 512;

/// What a file that is not a zip archive is, by its first bytes (and, for
/// ONNX, whose protobuf has no magic number, its name), with what to do:
/// "invalid Zip archive: Could not find EOCD" was all a user learned of a
/// Git LFS pointer or a saved HTML error page.
fn sniff(head: &[u8], origin: &Path) -> Option<String> {
    let export = "export the PyTorch network with torch.jit.save(torch.jit.script(model), path) \
                  (or torch.jit.trace), or with python -m unet_rt.export";
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start().to_ascii_lowercase();
    let safetensors = head.len() > 8
        && head[8] == b'{'
        && head[..8]
            .try_into()
            .is_ok_and(|n| (2..1 << 30).contains(&u64::from_le_bytes(n)));
    let what = if head.is_empty() {
        "an empty file (an interrupted download or copy?)".to_owned()
    } else if text.starts_with("version https://git-lfs") {
        "a Git LFS pointer, not the model itself: fetch it with `git lfs pull`".to_owned()
    } else if text.starts_with("<!doctype html") || text.starts_with("<html") {
        "an HTML page, not a model (a download that got a login or error page?)".to_owned()
    } else if head.starts_with(b"\x89HDF\r\n\x1a\n") {
        format!("an HDF5 file (a Keras or TensorFlow model?), not TorchScript; unet_rt runs PyTorch networks: {export}")
    } else if head.get(4..8) == Some(b"TFL3") {
        format!("a TensorFlow Lite model, not TorchScript; unet_rt runs PyTorch networks: {export}")
    } else if safetensors {
        format!(
            "a safetensors file (weights without the network's code), not TorchScript; {export}"
        )
    } else if head.first() == Some(&0x80) && head.get(1).is_some_and(|v| (2..=5).contains(v)) {
        format!(
            "a pickle (a torch.save file of weights or of a Python module, without the network's \
             code), not TorchScript; {export}"
        )
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "gzip-compressed: decompress it first (TorchScript archives are zip files)".to_owned()
    } else if origin
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        format!("an ONNX model, not TorchScript; unet_rt runs PyTorch networks: {export}")
    } else {
        return None;
    };
    Some(what)
}

/// Refuses a zip file that is not a TorchScript archive, saying what it is
/// where that is clear: `torch.save` writes a pickle of weights (or of a
/// Python module) without the network's code, `torch.export` a program in
/// a format of its own; libtorch's answer to both was "PytorchStreamReader
/// failed locating file constants.pkl ... your checkpoint file is corrupted".
pub(crate) fn check_torchscript<R: Read + Seek>(
    archive: &ZipArchive<R>,
    origin: &Path,
) -> Result<()> {
    let has = |suffix: &str| archive.file_names().any(|name| name.ends_with(suffix));
    let code = archive.file_names().any(|name| name.contains("/code/"));
    if code && has("/constants.pkl") {
        return Ok(());
    }
    if let Some(refusal) = bioimageio_refusal(archive) {
        return Err(invalid(origin, refusal));
    }
    let what = if has("/data.pkl") {
        "a torch.save file (weights, or a pickled Python module, without the network's code)"
    } else if has("archive_format")
        || archive
            .file_names()
            .any(|name| name.contains("serialized_exported_program"))
    {
        "a torch.export program (.pt2)"
    } else {
        "a zip file without TorchScript code"
    };
    Err(invalid(
        origin,
        format!(
            "it is {what}, not a TorchScript archive; export the network with \
             torch.jit.save(torch.jit.script(model), path) (or torch.jit.trace), \
             or with python -m unet_rt.export"
        ),
    ))
}

/// Deepest nesting of brackets, and longest chain of binary operators on
/// one line, that a code file may have: libtorch's TorchScript compiler
/// recurses once per level, and 1,500 nested parentheses (or 20,000 terms
/// of one sum) overflowed a 2 MiB thread stack and killed the process.
/// Generated code of real networks nests a few levels and chains a few
/// terms.
pub const MAX_CODE_NESTING: usize = 500;

/// The deepest bracket nesting of `code`, and the most binary operators
/// on one line (an operator character after an operand: `a+b`, `a + b`,
/// not the unary `-1` or `*args`).
fn code_nesting(code: &[u8]) -> (usize, usize) {
    let (mut depth, mut deepest, mut chain, mut longest) = (0usize, 0usize, 0usize, 0usize);
    let mut after_operand = false;
    for &b in code {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => chain = 0,
            b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^' | b'<' | b'>' | b'='
                if after_operand =>
            {
                chain += 1;
                longest = longest.max(chain);
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            after_operand =
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b')' | b']' | b'"' | b'\'');
        }
    }
    (deepest, longest)
}

/// The names a bioimage.io package's description has at its top.
const PACKAGE_DESCRIPTIONS: [&str; 2] = ["rdf.yaml", "bioimageio.yaml"];

/// What to do with a bioimage.io package (zip or folder) whose description
/// is `name`.
fn package_advice(name: &str) -> String {
    format!(
        "it is a bioimage.io package ({name}): the Python package loads it with its pre- and \
         post-processing (unet_rt.Model(path)); the command-line tool takes TorchScript files"
    )
}

/// For a bioimage.io package (a zip with an `rdf.yaml`), what to do with it:
/// both were refused as "a zip file without TorchScript code". The Python
/// package loads one whose description is at the top, with its pre- and
/// post-processing; the runtime's own loader (the command-line tool) takes
/// TorchScript files, and the weights alone would lose that processing.
fn bioimageio_refusal<R: Read + Seek>(archive: &ZipArchive<R>) -> Option<String> {
    let is_description = |name: &str| {
        let base = name.rsplit('/').next().unwrap_or(name);
        PACKAGE_DESCRIPTIONS.contains(&base) || base.ends_with(".bioimageio.yaml")
    };
    let name = archive
        .file_names()
        .filter(|name| is_description(name))
        .min_by_key(|name| name.matches('/').count())?;
    Some(match name.rsplit_once('/') {
        None => package_advice(name),
        Some((folder, base)) => format!(
            "it is a bioimage.io package with its {base} in the folder {folder}/ of the zip: unzip it \
             and load that folder, or zip the folder's contents so that {base} is at the top"
        ),
    })
}

/// Operations that mix every pixel of their input: a tile then sees other
/// values than the whole image, at any overlap. Names as TorchScript code
/// spells them (`torch.instance_norm(...)`, `torch.adaptive_avg_pool2d(...)`).
const WHOLE_TILE_OPS: [&str; 7] = [
    "instance_norm",
    "group_norm",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "scaled_dot_product_attention",
    "multi_head_attention",
    "fft_",
];

/// Largest code file read for [`whole_tile_ops`]: generated code of real
/// networks is kilobytes to a few megabytes.
const MAX_CODE_BYTES: u64 = 64 << 20;

/// The operations of [`WHOLE_TILE_OPS`] that the archive's TorchScript code
/// calls, sorted. Scripted and traced modules both store their code as
/// Python source under `<archive>/code/`; unreadable entries are skipped
/// (libtorch judges the archive itself).
///
/// The bodies of `torch.nn.functional`'s functions are not the network's
/// code: `F.interpolate` carries `adaptive_avg_pool` for its `"area"` mode
/// into every network that resizes. A network that calls one of these
/// functions names it in its own code (`...functional.adaptive_avg_pool2d`).
pub(crate) fn whole_tile_ops<R: Read + Seek>(archive: &mut ZipArchive<R>) -> Vec<String> {
    let names: Vec<(String, String)> = archive
        .file_names()
        .filter(|name| name.ends_with(".py"))
        .filter_map(|name| {
            let (_, file) = name.split_once("/code/")?;
            let own = !file.starts_with("__torch__/torch/nn/functional");
            own.then(|| (name.to_owned(), file.to_owned()))
        })
        .collect();
    let mut files = Vec::new();
    for (name, file) in names {
        let Ok(entry) = archive.by_name(&name) else {
            continue;
        };
        let mut text = String::new();
        if entry.take(MAX_CODE_BYTES).read_to_string(&mut text).is_ok() {
            files.push((file, text));
        }
    }
    let mut found = std::collections::BTreeSet::new();
    // Classes held but never read (a ResNet encoder's unused head) are not
    // the network's code.
    for text in crate::code_classes::runnable_code(&files) {
        for op in WHOLE_TILE_OPS {
            let called = if op == "instance_norm" {
                instance_norm_sees_the_tile(text)
            } else {
                calls_of(text, op).next().is_some()
            };
            if called {
                found.insert(op.trim_end_matches('_').to_owned());
            }
        }
    }
    found.into_iter().collect()
}

/// How TorchScript code names an operation it calls: `torch.group_norm(`
/// (traced), `__torch__.torch.nn.functional.group_norm` (scripted),
/// `functional._adaptive_max_pool2d`, `torch._native_multi_head_attention(`.
const CALL_PREFIXES: [&str; 4] = ["torch.", "functional.", "functional._", "torch._native_"];

/// Where `text` calls `op` (the offsets just past its name): a name
/// elsewhere is not a call. A batch norm stored as `self.group_norm` was
/// read as a group norm, and its network warned about as approximate with
/// a measured difference of 0.
fn calls_of<'t>(text: &'t str, op: &'t str) -> impl Iterator<Item = usize> + 't {
    text.match_indices(op)
        .filter(|&(at, _)| {
            CALL_PREFIXES
                .iter()
                .any(|prefix| text[..at].ends_with(prefix))
        })
        .map(move |(at, _)| at + op.len())
}

/// Whether the instance norm a code file calls normalises by the tile's
/// own statistics. `InstanceNorm2d(track_running_stats=True)` in
/// evaluation mode uses its running statistics, a per-pixel affine map:
/// traced, its call passes `use_input_stats` (the sixth argument) as a
/// literal `False`; scripted, its class declares `track_running_stats`
/// final and true (`use_input_stats` is `training or not
/// track_running_stats`, and models run in evaluation mode). Such networks
/// were warned about as approximate with a measured difference of 0.
fn instance_norm_sees_the_tile(text: &str) -> bool {
    let scripted_running_stats = text.contains("track_running_stats : Final[bool] = True")
        && !text.contains("track_running_stats : Final[bool] = False");
    calls_of(text, "instance_norm").any(|end| {
        let per_pixel = match text[end..].strip_prefix('(') {
            Some(arguments) if text[..end].ends_with("torch.instance_norm") => {
                call_arguments(arguments, 6)
                    .get(5)
                    .is_some_and(|arg| *arg == "False")
            }
            _ => scripted_running_stats,
        };
        !per_pixel
    })
}

/// How far [`call_arguments`] reads: generated calls spell their first
/// arguments in tens of characters, and a code file of millions of
/// unclosed calls must not be read once per call.
const MAX_CALL_TEXT: usize = 512;

/// The first `wanted` top-level arguments of a call whose text follows its
/// `(`, trimmed; fewer where the call ends sooner, or runs past
/// [`MAX_CALL_TEXT`] first.
fn call_arguments(text: &str, wanted: usize) -> Vec<&str> {
    let mut arguments = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices().take_while(|&(i, _)| i < MAX_CALL_TEXT) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => {
                arguments.push(text[start..i].trim());
                break;
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                arguments.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        if arguments.len() == wanted {
            break;
        }
    }
    arguments
}

/// The SHA-256 (hex) of what an archive runs besides its weights: its
/// TorchScript code (`code/**.py`) and `constants.pkl`, each as its name
/// below the archive's root, a newline, its length, a newline and its
/// bytes, in name order (`unet_rt.export` computes the same). `None`
/// where an entry cannot be read whole.
///
/// The exporter's verified record held the geometry and the weights only:
/// the same weights scripted from edited code (a dilation, an upsampling
/// mode, a layer over the whole tile) kept the record, and skipped the
/// measurement that would have found tiles off by most of the range.
pub(crate) fn code_digest<R: Read + Seek>(archive: &mut ZipArchive<R>) -> Option<String> {
    use sha2::{Digest, Sha256};

    let mut names: Vec<(String, String)> = archive
        .file_names()
        .filter_map(|name| {
            let (_, below) = name.split_once('/')?;
            let code = below.starts_with("code/") && below.ends_with(".py");
            (code || below == "constants.pkl").then(|| (below.to_owned(), name.to_owned()))
        })
        .collect();
    names.sort();
    let mut digest = Sha256::new();
    for (below, name) in names {
        let entry = archive.by_name(&name).ok()?;
        let mut bytes = Vec::new();
        entry
            .take(MAX_CODE_BYTES + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_CODE_BYTES {
            return None;
        }
        digest.update(format!("{below}\n{}\n", bytes.len()).as_bytes());
        digest.update(&bytes);
    }
    Some(
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Refuses an archive whose tensor records are shorter than its pickles
/// declare, or whose tensors reach past their storages.
///
/// A pickle cut short or with an absurd memo key is refused here (libtorch
/// would first allocate what a damaged byte declares); pickles this reader
/// cannot follow (an opcode torch's pickler does not write, a malformed
/// stream) are left to libtorch, which refuses them itself; see
/// [`crate::pickle`].
pub(crate) fn check_records<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    origin: &Path,
) -> Result<()> {
    let pickles: Vec<(String, String)> = archive
        .file_names()
        .filter_map(|name| {
            let (root, file) = name.split_once('/')?;
            let stem = file
                .strip_suffix(".pkl")
                .filter(|stem| PICKLES.contains(stem))?;
            Some((name.to_owned(), format!("{root}/{stem}/")))
        })
        .collect();
    check_unpacked_size(archive, origin, crate::memory::available_memory())?;
    for (name, folder) in pickles {
        let bytes = read_entry(archive, &name, origin)?;
        let records = match scan(&bytes) {
            Scan::Complete(records) => records,
            Scan::Damaged(why) => {
                return Err(invalid(
                    origin,
                    format!("{name} is damaged: {why} (a truncated or damaged file)"),
                ))
            }
            Scan::Unknown { .. } | Scan::Malformed(_) => continue,
        };
        for storage in &records.storages {
            let record = format!("{folder}{}", storage.key);
            let needed = storage.numel.checked_mul(storage.element_size());
            let held = match archive.by_name(&record) {
                Ok(entry) => entry.size(),
                // libtorch does not read the record of an empty storage.
                Err(_) if storage.numel == 0 => continue,
                Err(_) => {
                    return Err(invalid(
                        origin,
                        format!("tensor record {record} is missing"),
                    ))
                }
            };
            if needed.is_none_or(|needed| held < needed) {
                return Err(invalid(
                    origin,
                    format!(
                        "tensor record {record} holds {held} bytes but its {} of {} elements needs {} \
                         (a truncated or damaged file)",
                        storage.class,
                        storage.numel,
                        needed.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
                    ),
                ));
            }
        }
        for view in &records.views {
            let fits =
                matches!(view.extent, Ok(extent) if extent.is_none_or(|e| e <= view.storage_numel));
            if !fits {
                let reach = match &view.extent {
                    Ok(extent) => format!("reaches element {}", extent.unwrap_or(0)),
                    Err(why) => format!("has {why}"),
                };
                return Err(invalid(
                    origin,
                    format!(
                        "a tensor on record {folder}{} {reach} but its storage has {} elements \
                         (a damaged file)",
                        view.key, view.storage_numel
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses an archive with an entry whose bytes do not match its CRC-32,
/// or with TorchScript code nested deeper than [`MAX_CODE_NESTING`] (see
/// there). libtorch does not check the CRC-32s, and a weight record with
/// four bytes changed loaded and changed 327 labels of the sample image
/// without a word. Every entry is read once (a stream, no allocation: about
/// a second per gigabyte; code files are held to be scanned, up to
/// [`MAX_CODE_BYTES`]); [`check_unpacked_size`] has bounded what they
/// unpack to.
pub(crate) fn check_entries<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    origin: &Path,
) -> Result<()> {
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| {
            invalid(
                origin,
                format!("entry {index} cannot be read: {e} (a damaged file)"),
            )
        })?;
        let name = entry.name().to_owned();
        let is_code = name.contains("/code/") && name.ends_with(".py");
        let mut code = Vec::new();
        let read = if is_code {
            std::io::Read::by_ref(&mut entry)
                .take(MAX_CODE_BYTES)
                .read_to_end(&mut code)
                .and_then(|_| std::io::copy(&mut entry, &mut std::io::sink()))
        } else {
            std::io::copy(&mut entry, &mut std::io::sink())
        };
        if let Err(e) = read {
            let why = if e.to_string().contains("Invalid checksum") {
                "does not match its CRC-32 (a damaged or altered file)".to_owned()
            } else {
                format!("cannot be read: {e} (a damaged file)")
            };
            return Err(invalid(origin, format!("its entry {name} {why}")));
        }
        let (depth, chain) = code_nesting(&code);
        if depth > MAX_CODE_NESTING || chain > MAX_CODE_NESTING {
            let what = if depth > MAX_CODE_NESTING {
                format!("brackets nested {depth} deep")
            } else {
                format!("a chain of {chain} operators on one line")
            };
            return Err(invalid(
                origin,
                format!(
                    "its code {name} has {what}, beyond the {MAX_CODE_NESTING} that TorchScript's compiler \
                     is given here (generated code of real networks has a few; a damaged or hostile file)"
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses an archive whose entries unpack to more than the memory
/// `available`: libtorch allocates each record it reads at its unpacked
/// size, so a compressed record of zeros (4 MiB in the file, 4 GiB unpacked)
/// filled memory until the process was killed.
fn check_unpacked_size<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    origin: &Path,
    available: Option<usize>,
) -> Result<()> {
    let (mut unpacked, mut packed) = (0u128, 0u128);
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| invalid(origin, format!("entry {index}: {e}")))?;
        unpacked += u128::from(entry.size());
        packed += u128::from(entry.compressed_size());
    }
    match available {
        Some(available) if unpacked > available as u128 => Err(invalid(
            origin,
            format!(
                "its records unpack to {}{}, {} \
                 (a damaged or hostile file, or too large a model for this machine)",
                crate::memory::format_bytes(unpacked),
                if packed < unpacked {
                    format!(" from {} in the file", crate::memory::format_bytes(packed))
                } else {
                    String::new()
                },
                crate::memory::available_now(available)
            ),
        )),
        _ => Ok(()),
    }
}

fn read_entry<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    origin: &Path,
) -> Result<Vec<u8>> {
    let mut entry = archive
        .by_name(name)
        .map_err(|e| invalid(origin, format!("{name}: {e}")))?;
    if entry.size() > MAX_PICKLE_BYTES {
        return Err(invalid(
            origin,
            format!("{name} declares {} bytes, more than the {MAX_PICKLE_BYTES} a model's pickle may have", entry.size()),
        ));
    }
    let mut bytes = Vec::new();
    entry
        .by_ref()
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(origin, format!("{name} cannot be read: {e}")))?;
    Ok(bytes)
}

fn invalid(origin: &Path, reason: String) -> Error {
    Error::InvalidModel {
        path: origin.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_nesting_counts_brackets_and_binary_operators_per_line() {
        let code = b"def forward(self, x: Tensor) -> Tensor:\n  y = torch.add(x, [-1, -2])\n  return (x + y) * 2 - y\n";
        // Brackets: forward(, add( [; operators: "->", "y =", and "+ * -".
        assert_eq!(super::code_nesting(code), (2, 3));
        assert_eq!(super::code_nesting(b"a == b <= c\n*args, -x, [-1]"), (1, 2));
        let deep = format!("x = {}1{}", "(".repeat(1500), ")".repeat(1500));
        assert_eq!(super::code_nesting(deep.as_bytes()).0, 1500);
        let chain = format!("x = {}", vec!["1"; 20_000].join("+"));
        assert_eq!(super::code_nesting(chain.as_bytes()).1, 20_000);
    }

    use super::*;
    use std::path::PathBuf;

    fn archives() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures"))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "pt"))
            .collect();
        paths.push(root.join("../../python/unet_rt/models/nuclei.pt"));
        paths
    }

    fn code_archive(files: &[(&str, &str)]) -> ZipArchive<std::io::Cursor<Vec<u8>>> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, text) in files {
            let options = zip::write::FileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            writer.start_file(*name, options).expect("entry");
            std::io::Write::write_all(&mut writer, text.as_bytes()).expect("write");
        }
        ZipArchive::new(writer.finish().expect("finish")).expect("zip")
    }

    #[test]
    fn bioimageio_packages_are_named_with_what_to_do() {
        let said = |files: &[(&str, &str)]| match check_torchscript(
            &code_archive(files),
            Path::new("p.zip"),
        ) {
            Err(Error::InvalidModel { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let top = said(&[("rdf.yaml", "{}"), ("weights.pt", "")]);
        assert!(
            top.contains("a bioimage.io package (rdf.yaml)") && top.contains("Python"),
            "{top}"
        );
        let nested = said(&[
            ("nuclei/bioimageio.yaml", "{}"),
            ("nuclei/deeper/rdf.yaml", "{}"),
        ]);
        assert!(
            nested.contains("its bioimageio.yaml in the folder nuclei/ of the zip"),
            "{nested}"
        );
        let plain = said(&[("notes/readme.txt", "")]);
        assert!(
            plain.contains("a zip file without TorchScript code"),
            "{plain}"
        );
    }

    #[test]
    fn files_that_are_not_zip_archives_are_named_with_what_to_do() {
        let said = |bytes: &[u8], name: &str| match open_zip(
            std::io::Cursor::new(bytes.to_vec()),
            Path::new(name),
        ) {
            Err(Error::InvalidModel { reason, .. }) => reason,
            other => panic!("{name}: {:?}", other.map(|_| ())),
        };
        let mut safetensors = 70u64.to_le_bytes().to_vec();
        safetensors.extend_from_slice(br#"{"conv.weight":{"dtype":"F32"}}"#);
        let mut legacy = vec![0x80, 0x02, 0x8a, 0x0a];
        legacy.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
        let cases: [(&[u8], &str, &str); 9] = [
            (b"", "m.pt", "an empty file"),
            (
                b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n",
                "m.pt",
                "git lfs pull",
            ),
            (
                b"\n  <!DOCTYPE html><html><body>Sign in",
                "m.pt",
                "an HTML page",
            ),
            (b"\x89HDF\r\n\x1a\n\0\0\0\0", "m.h5", "HDF5"),
            (b"\x1c\0\0\0TFL3\0\0", "m.tflite", "TensorFlow Lite"),
            (&safetensors, "m.safetensors", "safetensors"),
            (&legacy, "m.pth", "a pickle"),
            (&[0x1f, 0x8b, 0x08, 0x00], "m.pt.gz", "gzip"),
            (
                &[0x08, 0x07, 0x12, 0x07, b'p', b'y'],
                "m.onnx",
                "an ONNX model",
            ),
        ];
        for (bytes, name, want) in cases {
            let reason = said(bytes, name);
            assert!(reason.contains(want), "{name}: {reason}");
        }
        // Nothing recognised: the zip reader's own words.
        assert!(said(b"just some text", "m.pt").contains("a zip file is expected"));
        // The first half of a real archive.
        let whole = code_archive(&[("m/code/a.py", &"x = 1\n".repeat(500))])
            .into_inner()
            .into_inner();
        assert!(said(&whole[..whole.len() / 2], "m.pt").contains("cut short"));
        // A zip archive is read from its start whatever was sniffed.
        let zip = code_archive(&[("m/code/a.py", "x")]).into_inner();
        assert!(open_zip(zip, Path::new("m.pt")).is_ok());
    }

    #[test]
    fn whole_tile_ops_are_those_the_network_calls_not_torch_functional_bodies() {
        let interpolate = "def interpolate(input: Tensor) -> Tensor:\n  \
                           _0 = torch.adaptive_avg_pool2d(input, [1, 1])\n";
        let bilinear_net = code_archive(&[
            ("m/code/__torch__/torch/nn/functional.py", interpolate),
            (
                "m/code/__torch__/torch/nn/functional/___torch_mangle_4.py",
                interpolate,
            ),
            (
                "m/code/__torch__/net.py",
                "_0 = __torch__.torch.nn.functional.interpolate\n",
            ),
        ]);
        assert!(whole_tile_ops(&mut { bilinear_net }).is_empty());
        let pyramid_net = code_archive(&[
            ("m/code/__torch__/torch/nn/functional.py", interpolate),
            (
                "m/code/__torch__/net.py",
                "_0 = __torch__.torch.nn.functional.adaptive_avg_pool2d\n\
                 _1 = torch.instance_norm(x, None, None, None, None, True, 0.1, 1e-5, False)\n",
            ),
        ]);
        assert_eq!(
            whole_tile_ops(&mut { pyramid_net }),
            vec!["adaptive_avg_pool".to_owned(), "instance_norm".to_owned()]
        );
    }

    #[test]
    fn instance_norms_with_running_statistics_do_not_see_the_tile() {
        let traced = |use_input_stats: &str| {
            format!(
                "input = torch.instance_norm(x, None, None, running_mean, running_var, \
                 {use_input_stats}, 0.1, 1.0e-05, True)\n"
            )
        };
        assert!(!instance_norm_sees_the_tile(&traced("False")));
        assert!(instance_norm_sees_the_tile(&traced("True")));
        // A traced network with both kinds sees the tile.
        assert!(instance_norm_sees_the_tile(
            &(traced("False") + &traced("True"))
        ));
        // Nested brackets do not shift the arguments counted.
        assert!(!instance_norm_sees_the_tile(
            "y = torch.instance_norm(f(x, [1, 2]), None, None, m, v, False, 0.1, 1e-5, True)"
        ));
        let scripted = |track: &str| {
            format!(
                "class InstanceNorm2d(Module):\n  track_running_stats : Final[bool] = {track}\n  \
                 def _apply_instance_norm(self, input: Tensor) -> Tensor:\n    \
                 _12 = __torch__.torch.nn.functional.instance_norm\n"
            )
        };
        assert!(!instance_norm_sees_the_tile(&scripted("True")));
        assert!(instance_norm_sees_the_tile(&scripted("False")));
        let net = code_archive(&[
            (
                "m/code/__torch__/torch/nn/modules/instancenorm.py",
                &scripted("True"),
            ),
            ("m/code/__torch__/net.py", &traced("False")),
        ]);
        assert!(whole_tile_ops(&mut { net }).is_empty());
        assert_eq!(
            call_arguments("a, (b, c), d) + 1", 6),
            vec!["a", "(b, c)", "d"]
        );
        assert_eq!(call_arguments("a, b, c, d", 2), vec!["a", "b"]);
        // Unclosed or endless calls (a hostile code file) are read a
        // bounded length each, and count as seeing the tile.
        assert!(call_arguments(&"(".repeat(10_000), 6).is_empty());
        assert!(instance_norm_sees_the_tile(
            &"torch.instance_norm(".repeat(200_000)
        ));
        let per_pixel = "torch.instance_norm(x, None, None, m, v, False, 0.1, 1e-5, True)\n";
        assert!(!instance_norm_sees_the_tile(&per_pixel.repeat(100_000)));
    }

    #[test]
    fn only_calls_of_whole_tile_ops_count_not_names_that_contain_them() {
        let named = code_archive(&[(
            "m/code/__torch__/net.py",
            "group_norm = self.group_norm\n  _0 = (group_norm).forward(x, )\n  \
             _1 = (self)._apply_instance_norm(x, )\n  pooled_fft_ = self.adaptive_avg_pool\n",
        )]);
        assert!(whole_tile_ops(&mut { named }).is_empty());
        let called = code_archive(&[(
            "m/code/__torch__/net.py",
            "_0 = torch.group_norm(x, 2, w, b, 1e-05, True)\n  \
             _1 = __torch__.torch.nn.functional._adaptive_max_pool2d\n  \
             _2, _3 = torch._native_multi_head_attention(q, k, v)\n  _4 = torch.fft_rfft2(x)\n",
        )]);
        assert_eq!(
            whole_tile_ops(&mut { called }),
            vec![
                "adaptive_max_pool".to_owned(),
                "fft".to_owned(),
                "group_norm".to_owned(),
                "multi_head_attention".to_owned()
            ]
        );
    }

    #[test]
    fn archives_unpacking_beyond_the_memory_available_are_refused() {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let deflated =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("m/data/0", deflated).expect("entry");
        std::io::Write::write_all(&mut writer, &vec![0u8; 8 << 20]).expect("write");
        let mut zip = ZipArchive::new(writer.finish().expect("finish")).expect("zip");
        let origin = Path::new("bomb.pt");
        let err = check_unpacked_size(&mut zip, origin, Some(4 << 20)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("its records unpack to 8.0 MiB from ")
                && text.contains("in the file, more than the 4.0 MiB of memory available now"),
            "{text}"
        );
        assert!(check_unpacked_size(&mut zip, origin, Some(9 << 20)).is_ok());
        assert!(check_unpacked_size(&mut zip, origin, None).is_ok());
    }

    /// Every archive torch writes must be followed to its end: a pickle the
    /// scanner gives up on goes unchecked, so a torch release that writes
    /// something new must show up here.
    #[test]
    fn the_pickles_torch_writes_are_read_completely_and_pass() {
        for path in archives() {
            let mut zip = open_zip(open_file(&path).expect("open"), &path).expect("zip");
            let names: Vec<String> = zip
                .file_names()
                .filter(|n| n.ends_with("data.pkl"))
                .map(str::to_owned)
                .collect();
            assert!(!names.is_empty(), "{}", path.display());
            for name in names {
                let bytes = read_entry(&mut zip, &name, &path).expect("pickle");
                let Scan::Complete(records) = scan(&bytes) else {
                    panic!("{}: {name} not read to its end", path.display())
                };
                assert!(
                    !records.storages.is_empty() && !records.views.is_empty(),
                    "{}",
                    path.display()
                );
            }
            check_records(&mut zip, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
