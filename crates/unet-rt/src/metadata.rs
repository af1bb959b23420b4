//! The model description embedded in a TorchScript archive.
//!
//! It is stored as an extra file, `extra/unet_rt.json`, inside the archive's
//! zip (what `torch.jit.save(module, f, _extra_files={"unet_rt.json": ...})`
//! writes), so it can be read without loading the network and added to any
//! TorchScript model without re-scripting it.

use std::io::{Read, Seek};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::instances::ReadOut;

/// The name of the extra file that holds the metadata.
pub const METADATA_ENTRY: &str = "unet_rt.json";

/// The format tag this version understands.
pub const FORMAT: &str = "unet_rt/1";

/// The largest metadata document read (the bundled model's is a few KB;
/// the evaluation tables and training record are the bulk).
pub const MAX_METADATA_BYTES: u64 = 16 << 20;

/// Largest channel count accepted on either side of a network. Labels are
/// written as `uint16`, so more classes than this could not be told apart.
pub const MAX_CHANNELS: usize = 1 << 16;
/// Largest `halo`, `size_multiple` and `size_offset` accepted. Real U-Nets
/// stay far below (the paper's: 92, 16 and 12; eight poolings: 256); the
/// bound keeps every size derived from them small enough that planning is
/// plain checked arithmetic, and the smallest tile below the tile limit.
pub const MAX_GEOMETRY: usize = 1 << 16;
/// Largest magnitude of a normalization multiplier: beyond it, 16-bit
/// pixels would overflow `f32` network input.
pub const MAX_SCALE: f64 = 1e30;
/// Bounds of an object diameter in pixels (`object_size`): resampling by
/// their ratio at most (a factor of 4096) keeps every resampled size in
/// checked arithmetic.
pub const MIN_OBJECT_SIZE: f64 = 0.5;
/// See [`MIN_OBJECT_SIZE`].
pub const MAX_OBJECT_SIZE: f64 = 2048.0;

/// What the network's output channels mean, and how to reduce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Class logits: softmax for probabilities, argmax for labels.
    Softmax,
    /// Independent mask logits: sigmoid per channel.
    Sigmoid,
    /// Raw values (regression, image-to-image).
    Identity,
    /// Probabilities already: the network ends in a softmax over its
    /// channels, or a sigmoid of its one channel. Labels are the largest
    /// channel, or probability above 0.5 for one channel.
    Probabilities,
    /// Independent mask probabilities already: the network ends in a
    /// sigmoid per channel (multi-label; masks may overlap, and need not
    /// sum to 1). Probabilities are the output as it is; labels exist for
    /// one channel only (above 0.5).
    Masks,
}

impl Activation {
    /// The kind as metadata spells it (`"softmax"`, `"masks"` ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::Sigmoid => "sigmoid",
            Self::Identity => "identity",
            Self::Probabilities => "probabilities",
            Self::Masks => "masks",
        }
    }

    /// The value above which a mask channel of an output of `channels` is
    /// foreground: logit 0 for sigmoid models, 0.5 for masks and for a
    /// one-channel network that returns probabilities; `None` where labels
    /// are the largest channel.
    pub fn mask_threshold(self, channels: usize) -> Option<f32> {
        match self {
            Self::Sigmoid => Some(0.0),
            Self::Probabilities if channels == 1 => Some(0.5),
            Self::Masks => Some(0.5),
            _ => None,
        }
    }

    /// Why an output of `channels` channels of this kind has no labels,
    /// and the output kind to ask for instead; `None` where it has them.
    /// The one statement of the rule: the engine and the CLI word it for
    /// their own arguments.
    pub fn no_labels(self, channels: usize) -> Option<(String, &'static str)> {
        match self {
            Self::Identity => Some((
                "the model's output is \"identity\" (regression)".to_owned(),
                "raw",
            )),
            Self::Sigmoid | Self::Masks if channels > 1 => Some((
                format!(
                    "labels and instances of a {channels}-channel {} model are ambiguous (masks may overlap)",
                    if self == Self::Sigmoid {
                        "sigmoid"
                    } else {
                        "\"masks\""
                    }
                ),
                "probabilities",
            )),
            _ => None,
        }
    }
}

/// Whether the network's convolutions shrink the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Unpadded convolutions: the output is smaller by `halo` on each side.
    Valid,
    /// Zero-padded convolutions: output and input have the same size.
    Same,
}

/// Which part of a network's output holds the segmentation, for networks
/// whose forward returns a dict (torchvision's `{"out": ..., "aux": ...}`)
/// or a tuple: written as a string (dict key) or an integer (tuple index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputKey {
    /// Position in a tuple or list.
    Index(usize),
    /// Key in a dict.
    Name(String),
}

impl std::fmt::Display for OutputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{i}"),
            Self::Name(k) => write!(f, "{k:?}"),
        }
    }
}

/// How raw pixel values become network input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Normalization {
    /// Per-image percentiles mapped to 0 and 1.
    Percentile {
        /// Lower percentile (0..100).
        low: f64,
        /// Upper percentile (0..100).
        high: f64,
    },
    /// `(x - mean) / std` with fixed statistics.
    Zscore {
        /// Mean subtracted.
        mean: f64,
        /// Standard deviation divided by.
        std: f64,
    },
    /// `x * factor`.
    Scale {
        /// Multiplier.
        factor: f64,
    },
    /// Pixels are used as they are.
    None,
}

/// Model description, schema `unet_rt/1` (see docs/design.md section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Always `"unet_rt/1"`.
    pub format: String,
    /// Short name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `"unet"`, `"unet++"` or anything else.
    #[serde(default)]
    pub architecture: String,
    /// 2 (images) or 3 (volumes).
    pub spatial_dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Meaning of the output.
    pub output: Activation,
    /// One name per output channel (softmax models).
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Valid or same convolutions.
    pub padding: Padding,
    /// Pixels per side: the exact crop of valid models, the context margin of
    /// same models.
    pub halo: usize,
    /// Valid input sizes are `size_offset + k * size_multiple`. Written as
    /// one number, or one per spatial axis (`[16, 32]`): tiles then use
    /// their least common multiple on every axis, which is on each axis's
    /// grid (a little more rounding, the same exact result).
    #[serde(deserialize_with = "one_or_per_axis")]
    pub size_multiple: usize,
    /// See `size_multiple`.
    #[serde(default)]
    pub size_offset: usize,
    /// The smallest input size the network takes, when larger than the
    /// smallest size on its rule (0: the rule's).
    #[serde(default)]
    pub min_size: usize,
    /// The only input size the network takes (models traced or built for
    /// one size, such as windowed-attention networks); 0: any size on the
    /// rule. Every tile then has this size.
    #[serde(default)]
    pub fixed_size: usize,
    /// Where the segmentation is in a dict or tuple output (absent: the
    /// forward returns a tensor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<OutputKey>,
    /// Raw pixels to network input.
    #[serde(default = "default_normalization")]
    pub normalization: Normalization,
    /// Provenance: data set, split, epochs, held-out metrics.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Held-out scores measured through the runtime (`python -m
    /// training.evaluate --write`), kept as written.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub evaluation: serde_json::Value,
    /// How labels become instances (absent: the connected components of
    /// the non-background classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<ReadOut>,
    /// The typical object diameter in the training images, in pixels: the
    /// scale that `object_size` at inference resamples images to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_size: Option<f64>,
    /// Written by `unet_rt.export` once tiles at the declared geometry
    /// reproduced the whole-image pass: the geometry and the weights it was
    /// measured with. Where both still match, loading does not measure a
    /// same-padded model again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

/// See [`Metadata::verified`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verified {
    /// The halo the runtime used.
    pub halo: usize,
    /// The size multiple the runtime used.
    pub size_multiple: usize,
    /// Number of parameter values.
    pub parameters: u64,
    /// Sum of the parameters' magnitudes (float64, in float32 weights).
    pub abs_sum: f64,
    /// The digest of the archive's code and constants
    /// ([`crate::archive::code_digest`]); a record without it (written
    /// before it was) does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `size_multiple` as one number or one per axis, the latter reduced to
/// their least common multiple (saturating: an absurd product is refused
/// by the geometry bound afterwards).
fn one_or_per_axis<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Multiple {
        One(usize),
        PerAxis(Vec<usize>),
    }
    match Multiple::deserialize(deserializer)? {
        Multiple::One(m) => Ok(m),
        Multiple::PerAxis(axes) if (1..=3).contains(&axes.len()) && !axes.contains(&0) => {
            Ok(axes.iter().fold(1usize, |l, &m| {
                let gcd = |mut a: usize, mut b: usize| {
                    while b != 0 {
                        (a, b) = (b, a % b);
                    }
                    a
                };
                (l / gcd(l, m)).saturating_mul(m)
            }))
        }
        Multiple::PerAxis(axes) => Err(serde::de::Error::custom(format!(
            "size_multiple {axes:?}: give one positive number, or one per spatial axis"
        ))),
    }
}

fn default_normalization() -> Normalization {
    Normalization::None
}

impl Normalization {
    /// Parses a normalization document (`{"kind": "percentile", "low": 1,
    /// "high": 99.8}`) and checks it ([`Self::check`]): the rules metadata
    /// is held to at load, for the tools that write it (training checked
    /// them only when its finished run was exported).
    ///
    /// # Errors
    /// A message naming the unknown field, kind or out-of-bounds parameter.
    pub fn parse_checked(text: &str) -> std::result::Result<Self, String> {
        let norm: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        norm.check()?;
        Ok(norm)
    }

    /// Checks that the parameters give finite network input for any pixel
    /// value: percentiles `0 <= low < high <= 100`, a finite positive
    /// standard deviation, a finite non-zero factor of at most
    /// [`MAX_SCALE`].
    ///
    /// # Errors
    /// A message saying which parameter is out of bounds.
    pub fn check(&self) -> std::result::Result<(), String> {
        match *self {
            Self::Percentile { low, high } => {
                if !(low.is_finite()
                    && high.is_finite()
                    && 0.0 <= low
                    && low < high
                    && high <= 100.0)
                {
                    return Err(format!(
                        "percentile normalization needs 0 <= low < high <= 100, got low {low:?} and high {high:?}"
                    ));
                }
            }
            Self::Zscore { mean, std } => {
                let finite = mean.is_finite() && std.is_finite() && std > 0.0;
                if !finite || 1.0 / std > MAX_SCALE || (mean / std).abs() > MAX_SCALE {
                    return Err(format!(
                        "zscore normalization needs a finite mean and a finite std > 0 \
                         (with mean/std and 1/std at most {MAX_SCALE:e}), got mean {mean:?} and std {std:?}"
                    ));
                }
            }
            Self::Scale { factor } => {
                if !(factor.is_finite() && factor != 0.0 && factor.abs() <= MAX_SCALE) {
                    return Err(format!(
                        "scale normalization needs a finite non-zero factor of magnitude at most {MAX_SCALE:e}, got {factor:?}"
                    ));
                }
            }
            Self::None => {}
        }
        Ok(())
    }
}

impl Metadata {
    /// Parses and checks the JSON document; `path` is only used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidMetadata {
            path: path.to_owned(),
            reason,
        };
        let meta: Self = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if meta.format != FORMAT {
            return Err(invalid(format!(
                "format is {:?}, this version reads {FORMAT:?}",
                meta.format
            )));
        }
        if !(2..=3).contains(&meta.spatial_dims) {
            return Err(invalid(format!(
                "spatial_dims is {}, expected 2 or 3",
                meta.spatial_dims
            )));
        }
        if meta.in_channels == 0 || meta.out_channels == 0 {
            return Err(invalid(
                "in_channels and out_channels must be at least 1".to_owned(),
            ));
        }
        for (name, value) in [
            ("in_channels", meta.in_channels),
            ("out_channels", meta.out_channels),
        ] {
            if value > MAX_CHANNELS {
                return Err(invalid(format!(
                    "{name} is {value}, more than the {MAX_CHANNELS} supported"
                )));
            }
        }
        if meta.size_multiple == 0 {
            return Err(invalid("size_multiple must be at least 1".to_owned()));
        }
        for (name, value) in [
            ("halo", meta.halo),
            ("size_multiple", meta.size_multiple),
            ("size_offset", meta.size_offset),
            ("min_size", meta.min_size),
            ("fixed_size", meta.fixed_size),
        ] {
            if value > MAX_GEOMETRY {
                return Err(invalid(format!(
                    "{name} is {value}; at most {MAX_GEOMETRY} is supported (is the metadata corrupt?)"
                )));
            }
        }
        if meta.fixed_size > 0 {
            // Off the rule, planning failed later with "sizes are 0 + k * 4
            // from 18446744073709551615 up".
            let shrink = match meta.padding {
                Padding::Valid => 2 * meta.halo,
                Padding::Same => 0,
            };
            let on_rule = crate::geometry::is_valid_size(
                meta.fixed_size,
                meta.size_offset,
                meta.size_multiple,
            );
            if !on_rule || meta.fixed_size <= shrink || meta.fixed_size < meta.min_size {
                return Err(invalid(format!(
                    "fixed_size is {}, which is not an input size of its own rule ({} + k * {}, \
                     above {shrink}, at least min_size {})",
                    meta.fixed_size, meta.size_offset, meta.size_multiple, meta.min_size
                )));
            }
            // A tile keeps what lies inside its overlap, and strides by
            // whole pooling steps: a tile of the fixed size without one
            // step's output inside it loaded, and every call then failed
            // with a tile size of 2^64 - 1 (a same-padded halo of 3 is an
            // overlap of 8 at a multiple of 8). The rule is the planner's
            // own (`ModelInfo::min_tile`).
            let info = crate::info::ModelInfo::from_metadata(&meta, None);
            if info.min_tile() > meta.fixed_size {
                return Err(invalid(format!(
                    "fixed_size {} leaves no output: a tile needs its overlap of {} per side \
                     (the halo {}{}) and one size_multiple ({}) of output inside it",
                    meta.fixed_size,
                    info.effective_halo(),
                    meta.halo,
                    if meta.padding == Padding::Same {
                        ", rounded up to the size multiple"
                    } else {
                        ""
                    },
                    meta.size_multiple
                )));
            }
        }
        if meta.output == Activation::Softmax && meta.out_channels == 1 {
            // A softmax over one channel is 1 everywhere: every pixel
            // background, every probability 1, whatever the image.
            return Err(invalid(
                "output is \"softmax\" with one output channel, which is 1 everywhere: \
                 one-channel logits are \"sigmoid\""
                    .to_owned(),
            ));
        }
        if let Some(read_out) = &meta.instances {
            read_out.check(meta.out_channels.max(2)).map_err(&invalid)?;
        }
        if let Some(size) = meta.object_size {
            if !(size.is_finite() && (MIN_OBJECT_SIZE..=MAX_OBJECT_SIZE).contains(&size)) {
                return Err(invalid(format!(
                    "object_size is {size}; expected a diameter in pixels between {MIN_OBJECT_SIZE} and {MAX_OBJECT_SIZE}"
                )));
            }
        }
        if !meta.class_names.is_empty() && meta.class_names.len() != meta.out_channels {
            return Err(invalid(format!(
                "{} class names for {} output channels",
                meta.class_names.len(),
                meta.out_channels
            )));
        }
        meta.normalization.check().map_err(invalid)?;
        Ok(meta)
    }

    /// Reads the metadata entry from a TorchScript archive without loading the
    /// network. `Ok(None)` for archives without one (third-party models).
    pub fn read_from_archive(path: &Path) -> Result<Option<Self>> {
        Self::read_from_zip(crate::archive::open_file(path)?, path)
    }

    /// Like [`Metadata::read_from_archive`] for an archive in any reader;
    /// `origin` names it in messages.
    pub fn read_from_zip<R: Read + Seek>(reader: R, origin: &Path) -> Result<Option<Self>> {
        Self::from_zip(&mut crate::archive::open_zip(reader, origin)?, origin)
    }

    pub(crate) fn from_zip<R: Read + Seek>(
        archive: &mut zip::ZipArchive<R>,
        origin: &Path,
    ) -> Result<Option<Self>> {
        let suffix = format!("/extra/{METADATA_ENTRY}");
        let Some(name) = archive
            .file_names()
            .find(|n| n.ends_with(&suffix))
            .map(str::to_owned)
        else {
            return Ok(None);
        };
        let entry = archive.by_name(&name).map_err(|e| Error::InvalidModel {
            path: origin.to_owned(),
            reason: e.to_string(),
        })?;
        let too_large = |bytes: u64| {
            Error::InvalidMetadata {
            path: origin.to_owned(),
            reason: format!(
                "{name} holds {bytes} bytes or more, beyond the {MAX_METADATA_BYTES} metadata may have"
            ),
        }
        };
        // Read without a bound, a megabyte that unpacks to gigabytes was
        // held in memory whole (the pickles are bounded alike).
        if entry.size() > MAX_METADATA_BYTES {
            return Err(too_large(entry.size()));
        }
        let mut text = String::new();
        entry
            .take(MAX_METADATA_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::InvalidMetadata {
                path: origin.to_owned(),
                reason: e.to_string(),
            })?;
        if text.len() as u64 > MAX_METADATA_BYTES {
            return Err(too_large(text.len() as u64));
        }
        Self::from_json(&text, origin).map(Some)
    }

    /// The document as JSON text.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::InvalidMetadata {
            path: std::path::PathBuf::new(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper() -> String {
        serde_json::json!({
            "format": "unet_rt/1", "name": "paper", "architecture": "unet",
            "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "output": "softmax",
            "class_names": ["background", "nucleus"], "padding": "valid", "halo": 92,
            "size_multiple": 16, "size_offset": 12,
            "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8}
        })
        .to_string()
    }

    #[test]
    fn each_output_kind_says_how_its_labels_are_read() {
        use Activation::*;
        let kinds = [Softmax, Sigmoid, Identity, Probabilities, Masks];
        let thresholds: Vec<_> = kinds.iter().map(|k| k.mask_threshold(1)).collect();
        assert_eq!(thresholds, [None, Some(0.0), None, Some(0.5), Some(0.5)]);
        let thresholds: Vec<_> = kinds.iter().map(|k| k.mask_threshold(3)).collect();
        assert_eq!(thresholds, [None, Some(0.0), None, None, Some(0.5)]);
        let one: Vec<_> = kinds
            .iter()
            .map(|k| k.no_labels(1).map(|(_, i)| i))
            .collect();
        assert_eq!(one, [None, None, Some("raw"), None, None]);
        let three: Vec<_> = kinds
            .iter()
            .map(|k| k.no_labels(3).map(|(_, i)| i))
            .collect();
        let refused = Some("probabilities");
        assert_eq!(three, [None, refused, Some("raw"), None, refused]);
        for kind in kinds {
            let name = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<Activation>(&name).unwrap(), kind);
            // Activation::name is the metadata's spelling.
            assert_eq!(name, format!("\"{}\"", kind.name()));
        }
        assert_eq!(serde_json::to_string(&Masks).unwrap(), "\"masks\"");
    }

    #[test]
    fn parses_the_paper_configuration() {
        let m = Metadata::from_json(&paper(), Path::new("m.pt")).unwrap();
        assert_eq!(m.output, Activation::Softmax);
        assert_eq!(
            m.normalization,
            Normalization::Percentile {
                low: 1.0,
                high: 99.8
            }
        );
        assert_eq!((m.halo, m.size_multiple, m.size_offset), (92, 16, 12));
    }

    #[test]
    fn a_size_multiple_per_axis_becomes_their_least_common_multiple() {
        let mut doc: serde_json::Value = serde_json::from_str(&paper()).unwrap();
        doc["size_multiple"] = serde_json::json!([16, 24]);
        let m = Metadata::from_json(&doc.to_string(), Path::new("m.pt")).unwrap();
        assert_eq!(m.size_multiple, 48);
        for bad in [
            serde_json::json!([]),
            serde_json::json!([16, 0]),
            serde_json::json!([1, 2, 3, 4]),
        ] {
            doc["size_multiple"] = bad;
            assert!(Metadata::from_json(&doc.to_string(), Path::new("m.pt")).is_err());
        }
        doc["size_multiple"] = serde_json::json!([1u64 << 40, (1u64 << 40) + 1]);
        let err = Metadata::from_json(&doc.to_string(), Path::new("m.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("size_multiple is"), "{err}");
    }

    #[test]
    fn rejects_wrong_format_and_inconsistent_classes() {
        let bad = paper().replace("unet_rt/1", "other/9");
        let err = Metadata::from_json(&bad, Path::new("m.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unet_rt/1"), "{err}");
        let mut bad: serde_json::Value = serde_json::from_str(&paper()).unwrap();
        bad["class_names"] = serde_json::json!(["a"]);
        let err = Metadata::from_json(&bad.to_string(), Path::new("m.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 class names for 2 output channels"), "{err}");
        assert!(Metadata::from_json("{", Path::new("m.pt")).is_err());
    }

    #[test]
    fn rejects_absurd_geometry_channels_and_normalization() {
        let base: serde_json::Value = serde_json::from_str(&paper()).unwrap();
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("halo", serde_json::json!(1u64 << 40), "halo is"),
            (
                "size_multiple",
                serde_json::json!(1u64 << 63),
                "size_multiple is",
            ),
            (
                "size_offset",
                serde_json::json!(1_000_000_000_000_000_000u64),
                "size_offset is",
            ),
            ("size_multiple", serde_json::json!(0), "at least 1"),
            (
                "in_channels",
                serde_json::json!(1_000_000_000),
                "in_channels is",
            ),
            ("out_channels", serde_json::json!(0), "at least 1"),
            ("halo", serde_json::json!(-1), "invalid value"),
            ("halo", serde_json::json!(1.5), "invalid type"),
            ("halo", serde_json::json!("92"), "invalid type"),
            ("spatial_dims", serde_json::json!(4), "spatial_dims"),
            (
                "normalization",
                serde_json::json!({"kind": "scale", "factor": 1e300}),
                "scale normalization",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "scale", "factor": 0.0}),
                "scale normalization",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "zscore", "mean": 0.0, "std": -1.0}),
                "std > 0",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "zscore", "mean": 0.0, "std": 0.0}),
                "std > 0",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "zscore", "mean": 1e300, "std": 1e-300}),
                // Display wrote 1e-300 as 302 digits.
                "got mean 1e300 and std 1e-300",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "percentile", "low": 99.0, "high": 1.0}),
                "low < high",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "percentile", "low": 1.0, "high": 101.0}),
                "low < high",
            ),
            (
                "normalization",
                serde_json::json!({"kind": "percentile", "low": -1.0, "high": 50.0}),
                "low < high",
            ),
        ];
        for (field, value, message) in cases {
            let mut doc = base.clone();
            doc[field] = value.clone();
            let err = Metadata::from_json(&doc.to_string(), Path::new("m.pt"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{field} = {value}: {err}");
        }
        // JSON's 1e999 parses as infinity in some writers; serde rejects it as a number out of range.
        let inf = paper().replace("99.8", "1e999");
        assert!(Metadata::from_json(&inf, Path::new("m.pt")).is_err());
    }

    #[test]
    fn missing_and_non_zip_files_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("unet_rt_meta_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pt");
        assert!(matches!(
            Metadata::read_from_archive(&missing),
            Err(Error::ModelNotFound(_))
        ));
        let junk = dir.join("junk.pt");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert!(matches!(
            Metadata::read_from_archive(&junk),
            Err(Error::InvalidModel { .. })
        ));
        let err = Metadata::read_from_archive(&dir).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
        let err = Metadata::read_from_archive(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a character device"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
