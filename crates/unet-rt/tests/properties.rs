//! Property tests over hostile input: the metadata parser and the geometry
//! never panic, never overflow and never loop in proportion to the sizes
//! they are given, for any values at all; where they accept, the result
//! obeys its rule. (The exhaustive small-size checks of the geometry live
//! beside it in `src/geometry.rs`.)

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};
use unet_rt::geometry::{
    is_valid_size, reflect_index, reflect_runs, round_up_to_valid, Blend, TilePlan,
};
use unet_rt::{
    Activation, Metadata, ModelInfo, Normalization, Padding, Window, MAX_CHANNELS, MAX_GEOMETRY,
};

/// Every planning call answers within this, whatever the sizes.
const QUICK: Duration = Duration::from_millis(200);

/// Sizes from tiny to `usize::MAX`, weighted towards the edges.
fn any_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..300,
        0usize..100_000,
        any::<usize>(),
        Just(usize::MAX),
        (0u32..64).prop_map(|k| 1usize << k)
    ]
}

/// A JSON value of any type, for metadata fields.
fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..200).prop_map(Value::from),
        "[a-z/0-9]{0,12}".prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1, 2])),
        Just(json!({"kind": "none"})),
        Just(json!({"kind": "zscore", "mean": 0.0, "std": 0.0})),
        Just(json!({"kind": "percentile", "low": 50.0, "high": 50.0})),
        Just(json!({"kind": "scale", "factor": 1e300})),
    ]
}

fn paper() -> Value {
    json!({
        "format": "unet_rt/1", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
        "output": "softmax", "padding": "valid", "halo": 92, "size_multiple": 16, "size_offset": 12,
        "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8}
    })
}

const FIELDS: [&str; 10] = [
    "format",
    "spatial_dims",
    "in_channels",
    "out_channels",
    "output",
    "padding",
    "halo",
    "size_multiple",
    "size_offset",
    "normalization",
];

fn info(halo: usize, multiple: usize, offset: usize, same: bool) -> ModelInfo {
    ModelInfo {
        spatial_dims: 2,
        in_channels: 1,
        out_channels: 2,
        output: Activation::Softmax,
        padding: if same { Padding::Same } else { Padding::Valid },
        halo,
        size_multiple: multiple,
        size_offset: offset,
        normalization: Normalization::None,
        first_layer_width: Some(16),
        probed: false,
        min_size: 0,
        fixed_size: 0,
        output_key: None,
        exactness: Default::default(),
        read_out: Default::default(),
        object_size: None,
        square_memory: 0.0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_metadata_parser_takes_any_text(text in ".{0,200}") {
        let _ = Metadata::from_json(&text, Path::new("m.pt"));
    }

    #[test]
    fn accepted_metadata_is_within_bounds(changes in proptest::collection::vec((0usize..FIELDS.len(), any_json()), 0..4)) {
        let mut doc = paper();
        for (field, value) in changes {
            doc[FIELDS[field]] = value;
        }
        if let Ok(meta) = Metadata::from_json(&doc.to_string(), Path::new("m.pt")) {
            prop_assert!((2..=3).contains(&meta.spatial_dims));
            prop_assert!((1..=MAX_CHANNELS).contains(&meta.in_channels) && (1..=MAX_CHANNELS).contains(&meta.out_channels));
            prop_assert!(meta.halo <= MAX_GEOMETRY && meta.size_offset <= MAX_GEOMETRY);
            prop_assert!((1..=MAX_GEOMETRY).contains(&meta.size_multiple));
            prop_assert!(meta.normalization.check().is_ok());
        }
    }

    #[test]
    fn rounding_up_is_closed_form_minimal_and_on_the_rule(size in any_size(), offset in any_size(), multiple in any_size()) {
        match round_up_to_valid(size, offset, multiple) {
            Some(r) => {
                prop_assert!(r >= size && is_valid_size(r, offset, multiple));
                prop_assert!(r == offset || r - multiple.max(1) < size);
            }
            None => prop_assert!(size > offset),
        }
    }

    #[test]
    fn model_size_rules_answer_for_any_accepted_geometry(
        halo in 0..=MAX_GEOMETRY, multiple in 1..=MAX_GEOMETRY, offset in 0..=MAX_GEOMETRY, same: bool, size in any_size(),
    ) {
        let info = info(halo, multiple, offset, same);
        let smallest = info.smallest_valid_size();
        prop_assert!(info.is_valid_size(smallest));
        let tile = info.min_tile();
        prop_assert!(info.is_valid_size(tile) && tile >= 2 * info.effective_halo() + multiple);
        prop_assert!(tile - multiple < 2 * info.effective_halo() + multiple || tile == smallest);
        let up = info.round_up_valid(size);
        prop_assert!(up == usize::MAX || (up >= size && info.is_valid_size(up)));
    }

    #[test]
    fn plans_of_any_size_answer_at_once(
        image in proptest::collection::vec(any_size(), 1..4),
        tile in prop_oneof![0usize..2000, any_size()],
        halo in prop_oneof![0usize..100, any_size()],
        multiple in prop_oneof![0usize..64, any_size()],
        blend in 0u8..3,
    ) {
        let tiles = vec![tile; image.len()];
        let start = Instant::now();
        let plan = match blend {
            0 => TilePlan::valid(&image, &tiles, halo, multiple),
            1 => TilePlan::same(&image, &tiles, halo, multiple, Blend::Crop),
            _ => TilePlan::same(&image, &tiles, halo, multiple, Blend::Constant),
        };
        if let Ok(plan) = plan {
            for axis in 0..image.len() {
                let (stride, grid) = (plan.stride()[axis], plan.grid_shape()[axis]);
                let kept = tile - 2 * halo;
                prop_assert!(stride > 0 && stride % multiple == 0 && stride <= kept);
                // The grid covers the axis, with no tile to spare.
                prop_assert!((grid as u128 - 1) * stride as u128 + kept as u128 >= image[axis] as u128);
                prop_assert!(grid < 2 || ((grid as u128 - 2) * stride as u128 + kept as u128) < image[axis] as u128);
            }
            let last = plan.tile(plan.len() - 1).unwrap();
            prop_assert!(last.write_start.iter().zip(&last.write_shape).zip(&image).all(|((&s, &n), &size)| s + n == size));
        }
        prop_assert!(start.elapsed() < QUICK);
    }

    #[test]
    fn windows_of_any_shape_are_checked_without_panicking(
        image in proptest::collection::vec(1usize..1_000_000_000_000, 2),
        origin in proptest::collection::vec(any_size(), 2),
        start in proptest::collection::vec(any_size(), 2),
        shape in proptest::collection::vec(any_size(), 2),
        input in proptest::collection::vec(1usize..10_000, 2),
    ) {
        let window = Window { image: image.clone(), origin, start, shape };
        let began = Instant::now();
        if window.check(&input).is_ok() {
            if let Ok(plan) = TilePlan::valid(&image, &[252, 252], 20, 4) {
                let (first, end) = window.needed_input(&plan).expect("a case that succeeds");
                prop_assert!(first.iter().zip(&end).zip(&image).all(|((&f, &e), &n)| f < e && e <= n));
                let _ = window.check_context(&plan, &input);
            }
        } else if let Ok(plan) = TilePlan::valid(&image, &[252, 252], 20, 4) {
            prop_assert!(window.needed_input(&plan).is_err() == window.check_region().is_err());
        }
        prop_assert!(began.elapsed() < QUICK);
    }

    #[test]
    fn mirroring_stays_inside_the_axis(i: isize, n in 1usize..usize::MAX, start: i32, len in 0usize..300, small in 1usize..50) {
        prop_assert!(reflect_index(i, n) < n);
        let covered: usize = reflect_runs(start as isize, len, small).map(|r| r.len).sum();
        prop_assert_eq!(covered, len);
    }
}
