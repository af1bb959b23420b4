//! The model description that `unet-rt info --json` prints and the Python
//! API's `Model.info` returns: one set of keys, written once, so that the
//! two cannot drift apart (they had: `smallest_input` in one was
//! `smallest_size` in the other).

use serde_json::{json, Value};

use crate::info::ModelInfo;
use crate::metadata::OutputKey;
use crate::model::Model;

/// How many valid input sizes the description lists.
const LISTED_SIZES: usize = 4;

impl ModelInfo {
    /// The geometry and meaning of the network as a JSON object: what a
    /// user (or a tool) needs to choose images, tiles and read-outs.
    pub fn describe(&self) -> Value {
        let exactness = &self.exactness;
        json!({
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "output": self.output.name(),
            "padding": serde_json::to_value(self.padding).unwrap_or(Value::Null),
            "halo": self.halo,
            "size_multiple": self.size_multiple,
            "size_offset": self.size_offset,
            "smallest_size": self.smallest_valid_size(),
            // Tiles keep at least one step beyond the overlap: a tile of the
            // smallest size was refused ("from 100 up") where the sizes
            // listed began at 92.
            "smallest_tile": self.min_tile(),
            "fixed_size": (self.fixed_size > 0).then_some(self.fixed_size),
            "valid_sizes": self.first_valid_sizes(LISTED_SIZES),
            "output_shrink": self.shrink(),
            "overlap": self.effective_halo(),
            "overlap_reason": self.overlap_reason(),
            "block_depth": self.block_depth(),
            "output_key": self.output_key.as_ref().map(|k| match k {
                OutputKey::Name(n) => json!(n),
                OutputKey::Index(i) => json!(i),
            }),
            "probed": self.probed,
            "square_memory": self.square_memory,
            "exact": exactness.is_exact(),
            "whole_tile_ops": exactness.whole_tile_ops,
            "one_image_per_pass": exactness.one_image_per_pass,
            "measured": exactness.measured.as_ref().map(|m| json!({
                "probe_size": m.probe_size,
                "max_difference": m.max_difference,
                "label_agreement": m.label_agreement,
                "pixels": m.pixels,
            })),
            "undeclared_geometry": exactness.undeclared_geometry.as_ref().map(|g| json!({
                "declared_halo": g.declared_halo,
                "declared_size_multiple": g.declared_multiple,
                "found_halo": g.found.map(|(halo, _)| halo),
                "found_size_multiple": g.found.map(|(_, multiple)| multiple),
            })),
            "warning": exactness.warning(),
            "normalization": serde_json::to_value(&self.normalization).unwrap_or(Value::Null),
            "instances": serde_json::to_value(&self.read_out).unwrap_or(Value::Null),
            "object_size": self.object_size,
        })
    }

    /// The first `count` valid input sizes from the smallest, by checked
    /// steps: a model's geometry may put the sizes near `usize::MAX`, where
    /// an open range would overflow, or admit fewer.
    pub fn first_valid_sizes(&self, count: usize) -> Vec<usize> {
        let step = self.size_multiple.max(1);
        std::iter::successors(Some(self.smallest_valid_size()), |s| s.checked_add(step))
            .take(count.saturating_mul(16))
            .filter(|&s| self.is_valid_size(s))
            .take(count)
            .collect()
    }
}

impl Model {
    /// The names of the output channels: the metadata's, or the channel
    /// indices ("0", "1", ...) for a model without them.
    pub fn class_names(&self) -> Vec<String> {
        match self.metadata() {
            Some(m) if !m.class_names.is_empty() => m.class_names.clone(),
            _ => (0..self.info().out_channels)
                .map(|i| i.to_string())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::info::tests_support;

    #[test]
    fn the_description_names_the_sizes_as_the_rules_give_them() {
        let info = tests_support::info();
        let d = info.describe();
        assert_eq!(d["smallest_size"], info.smallest_valid_size());
        assert_eq!(d["smallest_tile"], info.min_tile());
        assert_eq!(d["overlap"], info.effective_halo());
        assert_eq!(d["block_depth"], info.block_depth());
        assert_eq!(d["padding"], "same");
        let sizes: Vec<usize> = serde_json::from_value(d["valid_sizes"].clone()).unwrap();
        assert_eq!(sizes.len(), 4);
        assert!(sizes.iter().all(|&s| info.is_valid_size(s)));
        assert!(sizes.windows(2).all(|w| w[1] - w[0] == info.size_multiple));
    }

    #[test]
    fn sizes_near_the_end_of_usize_are_listed_without_overflow() {
        let mut info = tests_support::info();
        info.size_multiple = usize::MAX / 2;
        info.size_offset = usize::MAX / 2 - 1;
        let sizes = info.first_valid_sizes(4);
        assert!(sizes.len() < 4 && sizes.iter().all(|&s| info.is_valid_size(s)));
        info.fixed_size = 64;
        assert_eq!(info.first_valid_sizes(4), vec![64]);
    }
}
