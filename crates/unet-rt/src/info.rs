//! What the runtime knows about a network, and every size rule that
//! follows from it: which input sizes it takes, how much a tile loses, how
//! far tiles overlap. Each rule is written once, here, in closed form.

use crate::instances::ReadOut;
use crate::metadata::{Activation, Metadata, Normalization, OutputKey, Padding};

/// Largest relative difference (against the output's largest magnitude)
/// between a tile and the whole-image forward that still counts as exact:
/// convolution kernels chosen by tensor shape round differently, about
/// 1e-6; a pooling window off its grid or a layer that sees the whole tile
/// differs by orders of magnitude more.
pub const EXACT_TOLERANCE: f64 = 1e-4;

/// Tiles against the whole-image forward on a random probe image, with the
/// smallest tiles the engine makes for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// Side of the probe image (a cube in 3-D).
    pub probe_size: usize,
    /// Largest difference of the output, relative to its largest magnitude.
    pub max_difference: f64,
    /// Fraction of pixels whose label (argmax, or > 0 for one channel) is
    /// the same.
    pub label_agreement: f64,
    /// How many output pixels were compared: what the tiles keep beyond
    /// their overlap (4 for a group-norm network's smallest tiles, whose
    /// "100.00% of the labels" was 99.65% on tiles of 2 pixels more).
    pub pixels: usize,
}

impl Agreement {
    /// Whether the tile reproduced the whole-image forward to rounding.
    pub fn is_exact(&self) -> bool {
        self.max_difference <= EXACT_TOLERANCE
    }

    /// The worse of this agreement and `other` (another probe image at the
    /// same probe size): the larger difference, the smaller agreement.
    pub(crate) fn or_worse(self, other: &Agreement) -> Agreement {
        Agreement {
            probe_size: self.probe_size,
            max_difference: self.max_difference.max(other.max_difference),
            label_agreement: self.label_agreement.min(other.label_agreement),
            pixels: self.pixels.min(other.pixels),
        }
    }
}

/// Whether tiled inference reproduces one whole-image forward pass: what
/// the network's code calls, and what was measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exactness {
    /// Operations in the network that see the whole tile (instance or group
    /// normalisation, adaptive pooling, attention), found in its code.
    pub whole_tile_ops: Vec<String>,
    /// Measured when probing, at load for networks with such operations,
    /// and where a same-padded model's declared geometry failed.
    pub measured: Option<Agreement>,
    /// Found at load: the output for one image depends on the other images
    /// of its batch (batch statistics: `BatchNorm` without running
    /// statistics, `x - x.mean(0)`). Tiles then run one per pass.
    pub batch_dependent: bool,
    /// Found at load: two passes on one input differ (dropout or noise left
    /// active in evaluation mode).
    pub nondeterministic: bool,
    /// Found at load: a pass of two images fails where one works (a batch
    /// size of 1 fixed in the network, as a traced `reshape(1, ...)`).
    /// Tiles then run one per pass; it does not make tiles inexact.
    pub one_image_per_pass: bool,
    /// Found at load: a pass on a channels-last input (the engine's
    /// layout) fails where a contiguous one works (a network that `view`s
    /// its input across channels). Its inputs are then made contiguous.
    pub contiguous_input: bool,
    /// Found at load for a same-padded model with metadata: tiles at the
    /// declared halo and size multiple differ from the whole-image forward
    /// (the network sees farther, or pools on a coarser grid, than its
    /// metadata says).
    pub undeclared_geometry: Option<GeometryMismatch>,
    /// The network takes one input size (`fixed_size`): there is no
    /// whole-image pass, and `measured` compares two overlapping tiles.
    pub one_input_size: bool,
}

/// A model's declared geometry that tiles showed wrong, and what probing
/// the network finds instead.
#[derive(Debug, Clone, PartialEq)]
pub struct GeometryMismatch {
    /// The metadata's halo.
    pub declared_halo: usize,
    /// The metadata's size multiple.
    pub declared_multiple: usize,
    /// `(halo, size_multiple)` probing finds; `None` where probing failed.
    pub found: Option<(usize, usize)>,
}

impl Exactness {
    /// No operation sees the whole tile, and the measurement (if any) found
    /// tiles exact. A network with such operations is never called exact: a
    /// random probe may barely reach its global path (untrained weights),
    /// a trained one does.
    pub fn is_exact(&self) -> bool {
        self.whole_tile_ops.is_empty()
            && self.measured.as_ref().is_none_or(Agreement::is_exact)
            && !self.batch_dependent
            && !self.nondeterministic
            && self.undeclared_geometry.is_none()
    }

    /// What a user should be told when tiles are not exact.
    pub fn warning(&self) -> Option<String> {
        if self.is_exact() {
            return None;
        }
        let ops = if self.nondeterministic {
            "two forward passes on one input differ (dropout or noise active in evaluation mode?)"
                .to_owned()
        } else if self.batch_dependent {
            "its output for one image depends on the other images of its batch (batch statistics, \
             as BatchNorm without running statistics uses?): tiles run one per forward pass"
                .to_owned()
        } else if let Some(mismatch) = &self.undeclared_geometry {
            let found = match mismatch.found {
                Some((halo, multiple)) => format!(
                    "; probing the network finds halo {halo} and size_multiple {multiple}: declare those \
                     (python -m unet_rt.export checks what it writes)"
                ),
                None => String::new(),
            };
            format!(
                "its metadata's geometry does not hold: tiles overlapping by its halo {} on its size \
                 multiple {} differ from one whole-image pass{found}",
                mismatch.declared_halo, mismatch.declared_multiple
            )
        } else if self.whole_tile_ops.is_empty() {
            "its output depends on more than a tile's overlap can hold".to_owned()
        } else {
            format!(
                "it has layers that see the whole tile ({})",
                self.whole_tile_ops.join(", ")
            )
        };
        let compared = if self.one_input_size {
            "two overlapping tiles of its one input size agree with each other where both keep pixels"
        } else {
            "the smallest tiles agree with the whole-image forward"
        };
        let measured = match &self.measured {
            Some(m) => format!(
                "; on a {} pixel probe image {compared} on {} (largest difference {:.1e} of the \
                 output's range there; images unlike the probe can differ more)",
                m.probe_size,
                labels_compared(m.label_agreement, m.pixels),
                m.max_difference
            ),
            None => String::new(),
        };
        let remedy = if self.one_input_size && !self.whole_tile_ops.is_empty() {
            // Attention over the whole input (UNETR) was told to declare a
            // halo, which no halo short of the input itself satisfies.
            "no halo makes layers that see the whole tile exact: tiles of its one input size stay \
             approximate (a larger halo gives them more shared context)"
        } else if self.one_input_size {
            "declare the halo the network needs (the pixels each output sees around it)"
        } else {
            "its default tiles are the largest the memory budget holds (one pass where the image fits \
             it), and tile=\"whole\" (--tile whole) is one pass over the whole mirror-padded image"
        };
        Some(format!(
            "tiled results are approximate: {ops}{measured}; {remedy}"
        ))
    }
}

/// A fraction of labels as a percentage of two decimals, rounded down: a
/// label in 100,000 differing read "100.00%" beside a difference of half
/// the output's range.
pub fn labels_percent(fraction: f64) -> String {
    format!("{:.2}%", (fraction * 10_000.0).floor() / 100.0)
}

/// Fewer pixels compared than this make a share of labels say little.
pub const MIN_LABEL_PIXELS: usize = 1024;

/// What a label agreement on `pixels` compared pixels says: "99.65% of the
/// labels", or, below `MIN_LABEL_PIXELS` (1024), "100.00% of the only 4 pixels
/// they keep beyond the overlap".
pub fn labels_compared(fraction: f64, pixels: usize) -> String {
    if pixels < MIN_LABEL_PIXELS {
        format!(
            "{} of the only {pixels} pixels they keep beyond the overlap",
            labels_percent(fraction)
        )
    } else {
        format!("{} of the labels", labels_percent(fraction))
    }
}

/// What the runtime needs to know about a network: taken from its metadata,
/// or found by probing a model without metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// 2 or 3.
    pub spatial_dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Meaning of the output channels.
    pub output: Activation,
    /// Valid (shrinking) or same convolutions.
    pub padding: Padding,
    /// Crop per side (valid) or context margin (same).
    pub halo: usize,
    /// Valid input sizes are `size_offset + k * size_multiple`.
    pub size_multiple: usize,
    /// See `size_multiple`.
    pub size_offset: usize,
    /// Raw pixels to network input.
    pub normalization: Normalization,
    /// The smallest input size the network takes (0: the rule's smallest).
    pub min_size: usize,
    /// The only input size the network takes (0: any on the rule).
    pub fixed_size: usize,
    /// Where the segmentation is in a dict or tuple output.
    pub output_key: Option<OutputKey>,
    /// Output channels of the first convolution, used to estimate memory.
    pub first_layer_width: Option<usize>,
    /// True when the geometry was found by probing (no metadata).
    pub probed: bool,
    /// Whether tiles reproduce the whole-image forward.
    pub exactness: Exactness,
    /// How labels become instances.
    pub read_out: ReadOut,
    /// The typical object diameter at training, in pixels.
    pub object_size: Option<f64>,
    /// Bytes of a forward pass's memory per input pixel squared, for one
    /// image: what grows faster than its pixels (global attention),
    /// measured by probing on the CPU (float32); 0 where none was seen.
    /// Tile planning and the memory checks add it to the estimate that
    /// grows with the pixels: without it a 2048 px tile of such a network
    /// was planned at 2 GiB, needed over 30 GiB, and the process was killed.
    pub square_memory: f64,
}

impl ModelInfo {
    pub(crate) fn from_metadata(m: &Metadata, first_layer_width: Option<usize>) -> Self {
        Self {
            spatial_dims: m.spatial_dims,
            in_channels: m.in_channels,
            out_channels: m.out_channels,
            output: m.output,
            padding: m.padding,
            halo: m.halo,
            size_multiple: m.size_multiple,
            size_offset: m.size_offset,
            normalization: m.normalization.clone(),
            min_size: m.min_size,
            fixed_size: m.fixed_size,
            output_key: m.output_key.clone(),
            first_layer_width,
            probed: false,
            exactness: Exactness::default(),
            read_out: m.instances.clone().unwrap_or_default(),
            object_size: m.object_size,
            square_memory: 0.0,
        }
    }

    /// Whether `size` is a valid input size along one axis.
    pub fn is_valid_size(&self, size: usize) -> bool {
        if self.fixed_size > 0 {
            return size == self.fixed_size;
        }
        crate::geometry::is_valid_size(size, self.size_offset, self.size_multiple)
            && size > self.shrink()
            && size >= self.min_size
    }

    /// Pixels an input loses along one axis (both sides together).
    pub fn shrink(&self) -> usize {
        match self.padding {
            Padding::Valid => self.halo.saturating_mul(2),
            Padding::Same => 0,
        }
    }

    /// The smallest valid input size `>= size`, in closed form (saturating
    /// at `usize::MAX`, which no image reaches).
    pub fn round_up_valid(&self, size: usize) -> usize {
        if self.fixed_size > 0 {
            return if size <= self.fixed_size {
                self.fixed_size
            } else {
                usize::MAX
            };
        }
        let size = size.max(self.shrink().saturating_add(1)).max(self.min_size);
        crate::geometry::round_up_to_valid(size, self.size_offset, self.size_multiple)
            .unwrap_or(usize::MAX)
    }

    /// The smallest valid input size.
    pub fn smallest_valid_size(&self) -> usize {
        self.round_up_valid(0)
    }

    /// The overlap tiles really use per side: the crop of valid models; for
    /// same-padded models the margin rounded up to the size multiple, so
    /// that every tile window starts on the pooling grid of the image (the
    /// result then also equals a plain forward of the unpadded image away
    /// from its borders). [`ModelInfo::overlap_reason`] says which.
    pub fn effective_halo(&self) -> usize {
        match self.padding {
            Padding::Valid => self.halo,
            Padding::Same => self.block_depth(),
        }
    }

    /// The halo rounded up to the size multiple: the pixels by which an
    /// array extended on every side (a Dask boundary mode) keeps the
    /// original pixels on the pooling grid, so that the extended array's
    /// result over them is that of the padded image (saturating).
    pub fn block_depth(&self) -> usize {
        let multiple = self.size_multiple.max(1);
        self.halo.div_ceil(multiple).saturating_mul(multiple)
    }

    /// Why [`ModelInfo::effective_halo`] is what it is, for `info` output.
    pub fn overlap_reason(&self) -> String {
        if self.probed && self.padding == Padding::Same && !self.exactness.whole_tile_ops.is_empty()
        {
            // The halo of a network with layers that see the whole tile is
            // what probing could measure before their changes reached
            // everywhere, or a quarter of its probe: said as measured
            // ("the 64 pixels ... see the padding"), it read as the
            // convolutions' reach (an FPN-ResNet18's is 287).
            return format!(
                "{} pixels per side, chosen by probing: its layers that see the whole tile move every \
                 pixel, so how far its convolutions reach cannot be measured, and no overlap makes its \
                 tiles exact",
                self.effective_halo()
            );
        }
        match self.padding {
            Padding::Valid => format!(
                "valid convolutions: each tile loses {} pixels per side",
                self.halo
            ),
            Padding::Same if self.effective_halo() == self.halo => format!(
                "same convolutions: the {} pixels at each tile edge see the padding beyond the tile and are discarded",
                self.halo
            ),
            Padding::Same => format!(
                "same convolutions: the {} pixels at each tile edge see the padding beyond the tile, rounded up to the \
                 size multiple {} so that tiles pool on the image's grid",
                self.halo, self.size_multiple
            ),
        }
    }

    /// The smallest input tile that leaves a stride of at least one pooling
    /// step after the overlap is removed.
    pub fn min_tile(&self) -> usize {
        let need = self
            .effective_halo()
            .saturating_mul(2)
            .saturating_add(self.size_multiple.max(1));
        self.round_up_valid(need)
    }

    /// The usable tile nearest `size` (the smaller of two as near): a tile
    /// size the engine takes for this model, at least [`ModelInfo::min_tile`].
    /// For a choice made by steps that do not follow the model's sizes (a
    /// GUI's spin box: the bundled model takes 4 + 8k from 100).
    /// Never beyond [`crate::geometry::MAX_TILE_SIDE`], the largest tile
    /// side the engine takes (10^9 gave 10^9, which segmenting refused).
    pub fn nearest_usable_tile(&self, size: usize) -> usize {
        let max = crate::geometry::MAX_TILE_SIDE;
        let size = size.min(max);
        let smallest = self.min_tile();
        let up = self.round_up_valid(size.max(smallest));
        let down = up.saturating_sub(self.size_multiple.max(1));
        if self.fixed_size == 0
            && down >= smallest
            && self.is_valid_size(down)
            && (size.saturating_sub(down) <= up.saturating_sub(size) || up > max)
        {
            down
        } else {
            up
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A same-padded 2-D two-class model with a 4-pixel halo.
    pub(crate) fn info() -> ModelInfo {
        super::tests::same(4, 1)
    }

    /// A probed same-padded 2-D two-class model of `halo` and `multiple`.
    pub(crate) fn same(halo: usize, multiple: usize) -> ModelInfo {
        super::tests::same(halo, multiple)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_percentages_never_round_up_to_all() {
        assert_eq!(labels_percent(1.0), "100.00%");
        assert_eq!(labels_percent(0.99999), "99.99%");
        assert_eq!(labels_percent(0.5), "50.00%");
        assert_eq!(labels_percent(0.0), "0.00%");
    }

    pub(super) fn same(halo: usize, multiple: usize) -> ModelInfo {
        ModelInfo {
            spatial_dims: 2,
            in_channels: 1,
            out_channels: 2,
            output: Activation::Softmax,
            padding: Padding::Same,
            halo,
            size_multiple: multiple,
            size_offset: 0,
            normalization: Normalization::None,
            min_size: 0,
            fixed_size: 0,
            output_key: None,
            first_layer_width: None,
            probed: true,
            exactness: Exactness::default(),
            read_out: ReadOut::default(),
            object_size: None,
            square_memory: 0.0,
        }
    }

    #[test]
    fn the_nearest_usable_tile_is_a_size_the_engine_takes() {
        // The bundled model's geometry: valid, halo 44, sizes 4 + 8k, from 100.
        let mut info = same(44, 8);
        info.padding = Padding::Valid;
        info.size_offset = 4;
        assert_eq!(info.min_tile(), 100);
        for (asked, usable) in [
            (0, 100),
            (104, 100),
            (105, 108),
            (108, 108),
            // The largest side the engine takes is 2^20: 4 + 8k below it.
            (1 << 20, 1_048_572),
            ((1 << 20) + 3, 1_048_572),
            (1_000_000_000, 1_048_572),
            (usize::MAX, 1_048_572),
        ] {
            assert_eq!(info.nearest_usable_tile(asked), usable, "{asked}");
        }
        for size in [0, 1, 99, 100, 101, 300, 10_000, 1 << 20, usize::MAX] {
            let tile = info.nearest_usable_tile(size);
            assert!(
                info.is_valid_size(tile)
                    && tile >= info.min_tile()
                    && tile <= crate::geometry::MAX_TILE_SIDE,
                "{size} -> {tile}"
            );
        }
        let mut fixed = same(0, 1);
        fixed.fixed_size = 256;
        assert_eq!(
            (fixed.nearest_usable_tile(8), fixed.nearest_usable_tile(256)),
            (256, 256)
        );
    }

    #[test]
    fn the_overlap_is_the_halo_on_the_pooling_grid_and_says_why() {
        let info = same(128, 256);
        assert_eq!(info.effective_halo(), 256);
        assert!(info
            .overlap_reason()
            .contains("rounded up to the size multiple 256"));
        let info = same(64, 16);
        assert_eq!(info.effective_halo(), 64);
        assert!(!info.overlap_reason().contains("rounded"));
        assert_eq!(info.min_tile(), 144);
        // Probed beside layers that see the whole tile: not a reach.
        let mut global = same(64, 16);
        global.exactness.whole_tile_ops = vec!["adaptive_avg_pool".to_owned()];
        let reason = global.overlap_reason();
        assert!(
            reason.contains("64 pixels per side, chosen by probing")
                && reason.contains("cannot be measured")
                && !reason.contains("see the padding"),
            "{reason}"
        );
        // Declared in metadata, the halo is the network's own word.
        global.probed = false;
        assert!(global.overlap_reason().contains("see the padding"));
    }

    #[test]
    fn the_block_depth_is_the_halo_on_the_pooling_grid_for_any_padding() {
        let mut info = same(92, 16);
        assert_eq!(info.block_depth(), 96);
        info.padding = Padding::Valid;
        assert_eq!((info.block_depth(), info.effective_halo()), (96, 92));
        info.halo = usize::MAX - 3;
        assert_eq!(info.block_depth(), usize::MAX); // saturates, no overflow
        info.size_multiple = 0;
        info.halo = 7;
        assert_eq!(info.block_depth(), 7);
    }

    #[test]
    fn a_fixed_size_is_the_only_valid_size() {
        let mut info = same(16, 16);
        info.fixed_size = 96;
        assert!(info.is_valid_size(96) && !info.is_valid_size(112) && !info.is_valid_size(80));
        assert_eq!(info.round_up_valid(1), 96);
        assert_eq!(info.round_up_valid(97), usize::MAX);
        assert_eq!((info.smallest_valid_size(), info.min_tile()), (96, 96));
    }

    #[test]
    fn a_min_size_raises_the_smallest_valid_size() {
        let mut info = same(0, 8);
        info.min_size = 40;
        assert!(!info.is_valid_size(32) && info.is_valid_size(40));
        assert_eq!(info.smallest_valid_size(), 40);
    }

    #[test]
    fn whole_tile_layers_are_never_exact_and_the_warning_gives_the_measurement() {
        let agreement = |d: f64| Agreement {
            probe_size: 256,
            max_difference: d,
            label_agreement: 0.9,
            pixels: 4096,
        };
        assert!(Exactness::default().is_exact());
        let measured_only = Exactness {
            whole_tile_ops: vec![],
            measured: Some(agreement(1e-7)),
            ..Exactness::default()
        };
        assert!(measured_only.is_exact() && measured_only.warning().is_none());
        let ops = Exactness {
            whole_tile_ops: vec!["instance_norm".into()],
            measured: Some(agreement(1e-7)),
            ..Exactness::default()
        };
        assert!(!ops.is_exact());
        let warning = ops.warning().expect("warning");
        assert!(
            warning.contains("instance_norm") && warning.contains("90.00% of the labels"),
            "{warning}"
        );
        // A share of 4 pixels is said to be one.
        let few = Exactness {
            measured: Some(Agreement {
                pixels: 4,
                ..agreement(0.26)
            }),
            ..ops
        };
        let warning = few.warning().expect("warning");
        assert!(
            warning.contains("90.00% of the only 4 pixels they keep beyond the overlap"),
            "{warning}"
        );
        let inexact = Exactness {
            whole_tile_ops: vec![],
            measured: Some(agreement(0.3)),
            ..Exactness::default()
        };
        assert!(inexact
            .warning()
            .expect("warning")
            .contains("more than a tile's overlap"));
        // A network of one input size has no whole-image pass to offer.
        let one_size = Exactness {
            one_input_size: true,
            ..inexact
        }
        .warning()
        .expect("warning");
        assert!(
            one_size.contains("two overlapping tiles of its one input size")
                && one_size.contains("declare the halo")
                && !one_size.contains("whole"),
            "{one_size}"
        );
        // One input size and attention over it: no halo is the remedy.
        let attention = Exactness {
            one_input_size: true,
            whole_tile_ops: vec!["scaled_dot_product_attention".to_owned()],
            measured: Some(agreement(0.3)),
            ..Exactness::default()
        }
        .warning()
        .expect("warning");
        assert!(
            attention.contains("no halo makes layers that see the whole tile exact")
                && !attention.contains("declare the halo")
                && !attention.contains("tile=\"whole\""),
            "{attention}"
        );
        let undeclared = |found| Exactness {
            measured: Some(agreement(0.06)),
            undeclared_geometry: Some(GeometryMismatch {
                declared_halo: 2,
                declared_multiple: 16,
                found,
            }),
            ..Exactness::default()
        };
        let warning = undeclared(Some((46, 8))).warning().expect("warning");
        assert!(
            warning.contains("halo 2 on its size multiple 16")
                && warning.contains("finds halo 46 and size_multiple 8")
                && warning.contains("tile=\"whole\""),
            "{warning}"
        );
        let unknown = undeclared(None).warning().expect("warning");
        assert!(!unknown.contains("finds"), "{unknown}");
        // Declared wrong even where the measurement alone looks exact (a
        // GPU's wider rounding is judged on its own scale).
        let mut quiet = undeclared(None);
        quiet.measured = Some(agreement(1e-7));
        assert!(!quiet.is_exact());
    }
}
