//! What the runtime knows about a network, and every size rule that
//! follows from it: which input sizes it takes, how much a tile loses, how
//! far tiles overlap. Each rule is written once, here, in closed form.

use crate::metadata::{Metadata, Normalization, OutputKind, Padding};

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
    pub output: OutputKind,
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
    /// Output channels of the first convolution, used to estimate memory.
    pub first_layer_width: Option<usize>,
    /// True when the geometry was found by probing (no metadata).
    pub probed: bool,
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
            first_layer_width,
            probed: false,
        }
    }

    /// Whether `size` is a valid input size along one axis.
    pub fn is_valid_size(&self, size: usize) -> bool {
        crate::geometry::is_valid_size(size, self.size_offset, self.size_multiple)
            && size > self.shrink()
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
        let size = size.max(self.shrink().saturating_add(1));
        crate::geometry::round_up_to_valid(size, self.size_offset, self.size_multiple)
            .unwrap_or(usize::MAX)
    }

    /// The smallest valid input size.
    pub fn smallest_valid_size(&self) -> usize {
        self.round_up_valid(0)
    }

    /// The overlap tiles really use per side: the crop of valid models; for
    /// same-padded models the margin rounded up to the size multiple, so
    /// that every tile window starts on the pooling grid of the whole image.
    pub fn effective_halo(&self) -> usize {
        match self.padding {
            Padding::Valid => self.halo,
            Padding::Same => self
                .halo
                .div_ceil(self.size_multiple.max(1))
                .saturating_mul(self.size_multiple.max(1)),
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
}
