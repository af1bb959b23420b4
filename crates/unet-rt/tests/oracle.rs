//! The tiling oracle: for valid-padded models the stitched result equals one
//! forward pass over the whole mirror-padded image, for any image size, tile
//! size and batch size (docs/design.md section 5).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn};
use unet_rt::{
    Conversion, Device, Error, Model, Options, OutputMode, Precision, Progress, Segmenter, Tta,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Model {
    Model::load(fixture(name), Device::Cpu).expect("fixture model")
}

/// A small deterministic generator so that failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn image(&mut self, shape: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || (self.next() % 4096) as f32)
    }
}

/// Asserts that `result` is an `InvalidArgument` naming `argument`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, argument: &str) {
    match result {
        Err(Error::InvalidArgument {
            argument: named, ..
        }) if named == argument => {}
        other => panic!("expected an invalid {argument}, got {other:?}"),
    }
}

fn softmax(raw: &ArrayD<f32>) -> ArrayD<f32> {
    let max = raw.fold_axis(Axis(0), f32::NEG_INFINITY, |&a, &b| a.max(b));
    let exp = raw - &max.insert_axis(Axis(0));
    let exp = exp.mapv(f32::exp);
    let sum = exp.sum_axis(Axis(0)).insert_axis(Axis(0));
    exp / sum
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn probabilities(
    model: &Model,
    image: &ArrayD<f32>,
    tile: Option<Vec<usize>>,
    batch: Option<usize>,
) -> ArrayD<f32> {
    let options = Options {
        output: OutputMode::Probabilities,
        tile,
        batch_size: batch,
        ..Options::default()
    };
    Segmenter::new(model.clone(), options)
        .unwrap()
        .segment(image.view())
        .unwrap()
}

fn oracle(model: &Model, image: &ArrayD<f32>) -> ArrayD<f32> {
    softmax(&unet_rt::forward_whole(model, image.view()).unwrap())
}

#[test]
fn valid_tiling_equals_the_whole_image_forward_for_any_size_tile_and_batch() {
    let mut rng = Lcg(7);
    for (name, tiles) in [
        ("tiny_valid.pt", [48usize, 52, 60, 72, 100]),
        ("tiny_valid_d4.pt", [100, 108, 116, 132, 172]),
    ] {
        let model = load(name);
        let mut sizes = vec![
            [1, 1],
            [7, 300],
            [300, 7],
            [2, 2],
            [97, 61],
            [64, 64],
            [13, 131],
        ];
        for _ in 0..6 {
            sizes.push([1 + rng.below(180), 1 + rng.below(180)]);
        }
        for size in sizes {
            let image = rng.image(&[1, size[0], size[1]]);
            let want = oracle(&model, &image);
            let tile = vec![tiles[rng.below(tiles.len())], tiles[rng.below(tiles.len())]];
            let batch = 1 + rng.below(4);
            let got = probabilities(&model, &image, Some(tile.clone()), Some(batch));
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff <= 1e-5,
                "{name} image {size:?} tile {tile:?} batch {batch}: max |diff| {diff}"
            );
        }
    }
}

#[test]
fn automatic_tiles_and_labels_agree_with_the_oracle() {
    let model = load("tiny_valid_d4.pt");
    let image = Lcg(3).image(&[1, 150, 211]);
    let options = Options {
        memory_budget: Some(1 << 20),
        ..Options::default()
    };
    let segmenter = Segmenter::new(model.clone(), options).unwrap();
    let layout = segmenter.layout(&[150, 211]).unwrap();
    assert!(
        layout.plan.len() > 1,
        "a small budget must give several tiles"
    );
    let labels: ArrayD<u8> = segmenter.segment(image.view()).unwrap();
    let want = oracle(&model, &image);
    let mut disagree = 0;
    for ((idx, &l), p) in labels.indexed_iter().zip(want.lanes(Axis(0))) {
        let best = if p[1] > p[0] { 1 } else { 0 };
        if l != best && (p[1] - p[0]).abs() > 1e-5 {
            disagree += 1;
            eprintln!("label differs at {idx:?}");
        }
    }
    assert_eq!(disagree, 0);
}

#[test]
fn volumes_tile_exactly_too() {
    let model = load("tiny_valid_3d.pt");
    let mut rng = Lcg(11);
    for size in [[1, 1, 1], [5, 23, 9], [31, 17, 40]] {
        let image = rng.image(&[1, size[0], size[1], size[2]]);
        let got = probabilities(&model, &image, Some(vec![20, 24, 28]), Some(2));
        let diff = max_abs_diff(&got, &oracle(&model, &image));
        assert!(diff <= 1e-5, "volume {size:?}: max |diff| {diff}");
    }
}

#[test]
fn every_input_type_and_layout_gives_the_same_result() {
    let model = load("tiny_rgb.pt");
    let image = Lcg(5).image(&[3, 40, 57]).mapv(|v| (v / 16.0).floor());
    let want = probabilities(&model, &image, Some(vec![48, 48]), Some(2));
    let seg = Segmenter::new(
        model,
        Options {
            output: OutputMode::Probabilities,
            tile: Some(vec![48, 48]),
            ..Options::default()
        },
    )
    .unwrap();
    let check = |got: ArrayD<f32>, what: &str| assert!(max_abs_diff(&got, &want) <= 1e-5, "{what}");
    check(seg.segment(image.mapv(|v| v as u8).view()).unwrap(), "u8");
    check(seg.segment(image.mapv(|v| v as u16).view()).unwrap(), "u16");
    check(seg.segment(image.mapv(|v| v as i16).view()).unwrap(), "i16");
    check(seg.segment(image.mapv(f64::from).view()).unwrap(), "f64");
    check(
        seg.segment(image.mapv(half::f16::from_f32).view()).unwrap(),
        "f16",
    );
    // Channels last in memory, seen through a permuted (non-contiguous) view.
    let hwc = image
        .view()
        .permuted_axes(IxDyn(&[1, 2, 0]))
        .as_standard_layout()
        .into_owned();
    check(
        seg.segment(hwc.view().permuted_axes(IxDyn(&[2, 0, 1])))
            .unwrap(),
        "strided view",
    );
}

#[test]
fn models_without_metadata_are_probed_and_run() {
    let plain = load("tiny_plain.pt");
    let info = plain.info();
    assert!(info.probed);
    assert_eq!(
        (
            info.halo,
            info.size_multiple,
            info.size_offset,
            info.in_channels,
            info.out_channels
        ),
        (20, 4, 0, 1, 2)
    );
    let image = Lcg(9).image(&[1, 70, 33]);
    let options = Options {
        output: OutputMode::Raw,
        tile: Some(vec![56, 64]),
        ..Options::default()
    };
    let got: ArrayD<f32> = Segmenter::new(plain.clone(), options)
        .unwrap()
        .segment(image.view())
        .unwrap();
    let want = unet_rt::forward_whole(&plain, image.view()).unwrap();
    // Unnormalised pixels up to 4096 give logits in the thousands.
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&got, &want) / scale <= 1e-5);
}

#[test]
fn same_padded_models_with_the_default_margin_tile_like_the_whole_image() {
    // training/unet.py gives same-padded nets a margin one pooling step past
    // the valid crop (24 here); with it, crop-mode tiles match the whole image.
    let model = load("tiny_same.pt");
    assert_eq!(model.info().halo, 24);
    let image = Lcg(13).image(&[1, 90, 130]);
    let got = probabilities(&model, &image, Some(vec![64, 72]), Some(3));
    let diff = max_abs_diff(&got, &oracle(&model, &image));
    assert!(
        diff <= 1e-5,
        "same-padded model, crop mode: max |diff| {diff}"
    );
}

#[test]
fn bf16_keeps_the_labels() {
    let fp32 = load("tiny_valid_d4.pt");
    let bf16 =
        Model::load_with_precision(fixture("tiny_valid_d4.pt"), Device::Cpu, Precision::Bf16)
            .unwrap();
    assert_eq!(bf16.precision(), Precision::Bf16);
    let image = Lcg(17).image(&[1, 120, 140]);
    let a: ArrayD<u8> = Segmenter::new(fp32, Options::default())
        .unwrap()
        .segment(image.view())
        .unwrap();
    let b: ArrayD<u8> = Segmenter::new(bf16, Options::default())
        .unwrap()
        .segment(image.view())
        .unwrap();
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    assert!(agree > 0.97, "bf16 agreement {agree}");
}

/// A panic in the caller's progress callback is the caller's: raised again
/// on the calling thread with its own message (it was an internal error
/// that "the stitching thread panicked", the message lost), and the model
/// serves the next call.
#[test]
fn a_panicking_progress_callback_panics_the_caller() {
    let model = load("tiny_valid.pt");
    let image = Lcg(23).image(&[1, 200, 200]);
    let options = Options {
        tile: Some(vec![60, 60]),
        progress: Some(Arc::new(|p: Progress| {
            if p.done >= 2 {
                panic!("the caller's own bug at {}", p.done);
            }
        })),
        ..Options::default()
    };
    let seg = Segmenter::new(model.clone(), options).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: ArrayD<u8> = seg.segment(image.view()).unwrap();
    }))
    .expect_err("the callback's panic reaches the caller");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.starts_with("the caller's own bug at "),
        "{message:?}"
    );
    let again: ArrayD<u8> = Segmenter::new(model, Options::default())
        .unwrap()
        .segment(image.view())
        .unwrap();
    assert_eq!(again.shape(), &[200, 200]);
}

#[test]
fn progress_is_reported_and_cancellation_stops_the_call() {
    let model = load("tiny_valid.pt");
    let image = Lcg(19).image(&[1, 200, 200]);
    let calls = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(AtomicUsize::new(0));
    let (c, l) = (calls.clone(), last.clone());
    let options = Options {
        tile: Some(vec![60, 60]),
        batch_size: Some(2),
        progress: Some(Arc::new(move |p: Progress| {
            c.fetch_add(1, Ordering::SeqCst);
            l.store(p.done * 1000 + p.total, Ordering::SeqCst);
        })),
        ..Options::default()
    };
    let seg = Segmenter::new(model.clone(), options).unwrap();
    let total = seg.layout(&[200, 200]).unwrap().plan.len();
    let _: ArrayD<u8> = seg.segment(image.view()).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), total.div_ceil(2));
    assert_eq!(last.load(Ordering::SeqCst), total * 1000 + total);

    let cancel = Arc::new(AtomicBool::new(true));
    let options = Options {
        tile: Some(vec![60, 60]),
        cancel: Some(cancel),
        ..Options::default()
    };
    let err = Segmenter::new(model, options)
        .unwrap()
        .segment::<f32, u8>(image.view())
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
}

#[test]
fn bad_requests_are_refused_with_reasons() {
    let model = load("tiny_valid.pt");
    let bad_tile = Segmenter::new(
        model.clone(),
        Options {
            tile: Some(vec![45, 48]),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(
        bad_tile
            .to_string()
            .contains("45 is not a usable tile size"),
        "{bad_tile}"
    );
    let rank = Segmenter::new(
        model.clone(),
        Options {
            tile: Some(vec![48]),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        rank,
        Error::InvalidArgument {
            argument: "tile",
            ..
        }
    ));
    let seg = Segmenter::new(model.clone(), Options::default()).unwrap();
    let image = ArrayD::<f32>::zeros(IxDyn(&[2, 30, 30]));
    let err = seg.segment::<f32, u8>(image.view()).unwrap_err();
    assert!(
        err.to_string().contains("1 channel(s), the image has 2"),
        "{err}"
    );
    let err = seg
        .segment::<f32, f32>(ArrayD::zeros(IxDyn(&[1, 30, 30])).view())
        .unwrap_err();
    assert!(err.to_string().contains("uint8 or uint16"), "{err}");
    let mut out = ArrayD::<u8>::zeros(IxDyn(&[30, 31]));
    assert_refused(
        seg.segment_into(
            ArrayD::<f32>::zeros(IxDyn(&[1, 30, 30])).view(),
            out.view_mut(),
        ),
        "out",
    );
    let err = seg
        .segment::<f32, u8>(ArrayD::zeros(IxDyn(&[1, 0, 30])).view())
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn out_of_memory_halves_the_batch_then_the_tile_with_identical_results() {
    // tiny_oom.pt is tiny_valid.pt failing with "CUDA out of memory" on
    // inputs above 60x60 elements.
    let oom = load("tiny_oom.pt");
    let plain = load("tiny_valid.pt");
    let image = Lcg(23).image(&[1, 150, 170]);
    let options = Options {
        output: OutputMode::Probabilities,
        tile: Some(vec![100, 100]),
        batch_size: Some(4),
        ..Options::default()
    };
    let got: ArrayD<f32> = Segmenter::new(oom, options)
        .unwrap()
        .segment(image.view())
        .unwrap();
    let want = probabilities(&plain, &image, Some(vec![100, 100]), Some(4));
    assert!(max_abs_diff(&got, &want) <= 1e-5);
}

#[test]
fn blended_same_padded_tiles_match_the_whole_image_too() {
    // With the default margin every tile's centre is exact, so any weighted
    // average of overlapping centres is exact as well.
    let model = load("tiny_same.pt");
    let image = Lcg(29).image(&[1, 90, 130]);
    let want = oracle(&model, &image);
    for blend in [unet_rt::Blend::gaussian(), unet_rt::Blend::Constant] {
        let options = Options {
            output: OutputMode::Probabilities,
            tile: Some(vec![96, 104]),
            blend,
            ..Options::default()
        };
        let seg = Segmenter::new(model.clone(), options).unwrap();
        assert!(seg.layout(&[90, 130]).unwrap().plan.blends());
        let got: ArrayD<f32> = seg.segment(image.view()).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-5, "{blend:?}: max |diff| {diff}");
        let options = Options {
            tile: Some(vec![96, 104]),
            blend,
            ..Options::default()
        };
        let labels: ArrayD<u8> = Segmenter::new(model.clone(), options)
            .unwrap()
            .segment(image.view())
            .unwrap();
        for (&l, p) in labels.iter().zip(want.lanes(Axis(0))) {
            if (p[1] - p[0]).abs() > 1e-5 {
                assert_eq!(l, u8::from(p[1] > p[0]));
            }
        }
    }
}

/// Pieces cut at arbitrary places, each with just the input its tiles read,
/// give the whole image's result bit for bit: the same tiles, in batches of
/// the same sizes, on the same input windows. These models have 2 to 4
/// channels, whose convolution kernels do round differently for other
/// tensor shapes, so piece-wise tiles of their own would not be identical.
#[test]
fn windows_give_the_whole_images_result_bit_for_bit() {
    let mut rng = Lcg(11);
    for (name, tiles) in [
        ("tiny_valid.pt", [48usize, 52, 60, 84]),
        ("tiny_valid_d4.pt", [100, 108, 132, 172]),
        ("tiny_same.pt", [64, 72, 96, 120]),
    ] {
        let model = load(name);
        for round in 0..6 {
            let size = [20 + rng.below(220), 20 + rng.below(220)];
            let image = rng.image(&[1, size[0], size[1]]);
            let tile = (round > 0).then(|| vec![tiles[rng.below(4)], tiles[rng.below(4)]]);
            let batch = (round > 1).then(|| 1 + rng.below(5));
            let range = (round % 2 == 1).then(|| {
                (
                    100.0 + rng.below(500) as f64,
                    3000.0 + rng.below(900) as f64,
                )
            });
            let options = Options {
                output: OutputMode::Raw,
                tile,
                batch_size: batch,
                input_range: range,
                ..Options::default()
            };
            let whole: ArrayD<f32> = Segmenter::new(model.clone(), options.clone())
                .unwrap()
                .segment(image.view())
                .unwrap();
            for _ in 0..4 {
                let start = [rng.below(size[0]), rng.below(size[1])];
                let shape = [
                    1 + rng.below(size[0] - start[0]),
                    1 + rng.below(size[1] - start[1]),
                ];
                let region = unet_rt::Window {
                    image: size.to_vec(),
                    origin: vec![0, 0],
                    start: start.to_vec(),
                    shape: shape.to_vec(),
                };
                let probe = Segmenter::new(model.clone(), options.clone()).unwrap();
                let (first, end) = probe.needed_input(&region).unwrap();
                let piece = image
                    .slice(ndarray::s![.., first[0]..end[0], first[1]..end[1]])
                    .into_dyn();
                let window = unet_rt::Window {
                    origin: first.clone(),
                    ..region
                };
                // A piece cannot know the whole image's percentiles: pass them.
                let whole_range = range.or_else(|| {
                    unet_rt::normalize::percentile_range(
                        &model.info().normalization,
                        &image.view(),
                        None,
                    )
                    .expect("finite image")
                });
                let piece_options = Options {
                    window: Some(window),
                    input_range: whole_range,
                    ..options.clone()
                };
                let segmenter = Segmenter::new(model.clone(), piece_options).unwrap();
                let got: ArrayD<f32> = segmenter.segment(piece.view()).unwrap();
                let want = whole
                    .slice(ndarray::s![
                        ..,
                        start[0]..start[0] + shape[0],
                        start[1]..start[1] + shape[1]
                    ])
                    .into_dyn();
                if got != want {
                    let bad: Vec<_> = got
                        .indexed_iter()
                        .zip(want.iter())
                        .filter(|((_, a), b)| a != b)
                        .map(|((i, a), b)| (i, a - b))
                        .take(8)
                        .collect();
                    panic!("{name} size {size:?} region {start:?}+{shape:?} needed {first:?}..{end:?} options {options:?}: {bad:?}");
                }
            }
        }
    }
}

#[test]
fn windows_refuse_missing_context_and_bad_ranges() {
    let model = load("tiny_valid.pt");
    let image = Lcg(5).image(&[1, 90, 90]);
    let window = unet_rt::Window {
        image: vec![200, 200],
        origin: vec![50, 50],
        start: vec![60, 60],
        shape: vec![70, 70],
    };
    let options = Options {
        window: Some(window),
        ..Options::default()
    };
    let err = Segmenter::new(model.clone(), options)
        .unwrap()
        .segment::<f32, u8>(image.view())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                argument: "window",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("holds only"), "{err}");
    let bad = Options {
        input_range: Some((0.0, f64::NAN)),
        ..Options::default()
    };
    assert!(Segmenter::new(model.clone(), bad)
        .unwrap_err()
        .to_string()
        .contains("finite"));
    let plain = load("tiny_plain.pt"); // no metadata: no normalization to override
    let err = Segmenter::new(
        plain,
        Options {
            input_range: Some((0.0, 1.0)),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("takes no range"), "{err}");
}

#[test]
fn a_batch_is_one_call_with_a_range_per_image_and_progress_over_the_batch() {
    let model = load("tiny_valid.pt");
    let mut rng = Lcg(23);
    let images: Vec<ArrayD<f32>> = (0..3).map(|_| rng.image(&[1, 90, 70])).collect();
    let views: Vec<_> = images.iter().map(|i| i.view()).collect();
    let batch = ndarray::stack(Axis(0), &views).unwrap();
    let ranges = [(0.0, 4095.0), (100.0, 3000.0), (0.0, 1000.0)];
    let last = Arc::new(AtomicUsize::new(0));
    let seen = last.clone();
    let options = Options {
        output: OutputMode::Raw,
        tile: Some(vec![60, 60]),
        progress: Some(Arc::new(move |p: Progress| {
            seen.store(p.done * 1000 + p.total, Ordering::SeqCst);
        })),
        ..Options::default()
    };
    let seg = Segmenter::new(model.clone(), options.clone()).unwrap();
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[3, 2, 90, 70]));
    seg.segment_batch_into(batch.view(), out.view_mut(), Some(&ranges))
        .unwrap();
    for (i, image) in images.iter().enumerate() {
        let single = Segmenter::new(
            model.clone(),
            Options {
                input_range: Some(ranges[i]),
                progress: None,
                ..options.clone()
            },
        )
        .unwrap();
        let want: ArrayD<f32> = single.segment(image.view()).unwrap();
        assert_eq!(out.index_axis(Axis(0), i), want.view(), "image {i}");
    }
    let per_image = seg.layout(&[90, 70]).unwrap().plan.len();
    assert_eq!(
        last.load(Ordering::SeqCst),
        3 * per_image * 1000 + 3 * per_image
    );
    // Without ranges each image is normalized by its own statistics.
    seg.segment_batch_into(batch.view(), out.view_mut(), None)
        .unwrap();
    let own: ArrayD<f32> = seg.segment(images[2].view()).unwrap();
    assert_eq!(out.index_axis(Axis(0), 2), own.view());

    let mut two = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 90, 70]));
    assert_refused(
        seg.segment_batch_into(batch.view(), two.view_mut(), None),
        "out",
    );
    assert_refused(
        seg.segment_batch_into(batch.view(), out.view_mut(), Some(&ranges[..2])),
        "input_range",
    );
    assert_refused(
        seg.segment_batch_into(images[0].view(), out.view_mut(), None),
        "image",
    );
}

/// `image` `(C, y, x)` under one of the square's symmetries: flips, then
/// (with `transpose`) y and x exchanged.
fn symmetry(image: &ArrayD<f32>, flip_y: bool, flip_x: bool, transpose: bool) -> ArrayD<f32> {
    let mut view = image.view();
    if flip_y {
        view.invert_axis(Axis(1));
    }
    if flip_x {
        view.invert_axis(Axis(2));
    }
    if transpose {
        view.swap_axes(1, 2);
    }
    view.to_owned()
}

/// The whole-image augmented oracle: `mean_g g⁻¹ f(g(X))` over the padded
/// input `X` of [`unet_rt::forward_whole`], cropped to the image, softmaxed.
fn augmented_oracle(model: &Model, image: &ArrayD<f32>, rotations: bool) -> ArrayD<f32> {
    let info = model.info();
    let affine =
        unet_rt::normalize::resolve_view(&info.normalization, &image.view(), None).unwrap();
    let normalized = image.mapv(|v| affine.apply(v));
    let pads: Vec<(usize, usize)> = image.shape()[1..]
        .iter()
        .map(|&s| unet_rt::whole_image_padding(s, info))
        .collect();
    let padded = unet_rt::pad_reflect(&normalized.view(), &pads).expect("a case that succeeds");
    let mut sum: Option<ArrayD<f32>> = None;
    let mut count = 0.0f32;
    for transpose in [false, true]
        .into_iter()
        .take(if rotations { 2 } else { 1 })
    {
        for (flip_y, flip_x) in [(false, false), (true, false), (false, true), (true, true)] {
            let input = symmetry(&padded, flip_y, flip_x, transpose).insert_axis(Axis(0));
            let output = model
                .forward_array(input.view())
                .unwrap()
                .index_axis_move(Axis(0), 0);
            // The inverse: exchange back, then flip back.
            let back = symmetry(
                &symmetry(&output, false, false, transpose),
                flip_y,
                flip_x,
                false,
            );
            sum = Some(match sum {
                None => back,
                Some(s) => s + back,
            });
            count += 1.0;
        }
    }
    let mean = sum.unwrap() / count;
    let mut cropped = mean.view();
    for (d, (&size, &(before, _))) in image.shape()[1..].iter().zip(&pads).enumerate() {
        let start = before - info.shrink() / 2;
        cropped.slice_axis_inplace(Axis(d + 1), ndarray::Slice::from(start..start + size));
    }
    softmax(&cropped.to_owned())
}

#[test]
fn augmented_tiles_equal_the_augmented_whole_image_forward() {
    // Flipped and turned tiles stay on the transformed input's pooling grid
    // (valid sizes share one offset), so the tiled average is the whole one.
    let model = load("tiny_valid.pt");
    let mut rng = Lcg(29);
    for (size, tile, batch) in [
        ([97, 61], [48, 60], 3),
        ([64, 130], [72, 52], 2),
        ([33, 33], [60, 60], 1),
    ] {
        let image = rng.image(&[1, size[0], size[1]]);
        let plain = probabilities(&model, &image, Some(tile.to_vec()), Some(batch));
        for (tta, rotations) in [(Tta::Flips, false), (Tta::D4, true)] {
            let options = Options {
                output: OutputMode::Probabilities,
                tile: Some(tile.to_vec()),
                batch_size: Some(batch),
                tta,
                ..Options::default()
            };
            let got = Segmenter::new(model.clone(), options)
                .unwrap()
                .segment(image.view())
                .unwrap();
            let want = augmented_oracle(&model, &image, rotations);
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff <= 1e-5,
                "{tta:?} image {size:?} tile {tile:?}: max |diff| {diff}"
            );
            assert!(max_abs_diff(&got, &plain) > 1e-4, "{tta:?} changed nothing");
        }
    }
}

/// Raw logits of `image` with pixels converted where `conversion` says.
fn raw_with<T: unet_rt::Pixel>(
    model: &Model,
    image: &ArrayD<T>,
    conversion: Conversion,
    input_range: Option<(f64, f64)>,
) -> Result<ArrayD<f32>, Error> {
    let options = Options {
        output: OutputMode::Raw,
        tile: Some(vec![48, 48]),
        batch_size: Some(3),
        input_range,
        conversion,
        ..Options::default()
    };
    Segmenter::new(model.clone(), options)?.segment(image.view())
}

#[test]
fn pixels_normalised_on_the_device_give_the_hosts_result_bit_for_bit() {
    // The CPU's libtorch stands in for a GPU: the same kernels run there.
    let model = load("tiny_rgb.pt");
    let base = Lcg(23).image(&[3, 70, 57]); // 0..4096
    let same = |a: ArrayD<f32>, b: ArrayD<f32>, what: &str| {
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: device conversion differs by {}",
            max_abs_diff(&a, &b)
        );
    };
    // The last range lies far from 0, its center split in two f32 parts.
    for range in [None, Some((17.0, 3001.5)), Some((30000.3, 30100.7))] {
        let u8s = base.mapv(|v| (v / 16.0) as u8);
        // Values above 32767 travel as negative i16 and must come back.
        let u16s = base.mapv(|v| (v * 16.0) as u16);
        let i16s = base.mapv(|v| (v * 8.0 - 16000.0) as i16);
        let f16s = base.mapv(|v| half::f16::from_f32(v / 7.0 - 100.0));
        for conversion in [Conversion::Device, Conversion::Auto] {
            let host = Conversion::Host;
            same(
                raw_with(&model, &u8s, conversion, range).unwrap(),
                raw_with(&model, &u8s, host, range).unwrap(),
                "u8",
            );
            same(
                raw_with(&model, &u16s, conversion, range).unwrap(),
                raw_with(&model, &u16s, host, range).unwrap(),
                "u16",
            );
            same(
                raw_with(&model, &i16s, conversion, range).unwrap(),
                raw_with(&model, &i16s, host, range).unwrap(),
                "i16",
            );
            same(
                raw_with(&model, &f16s, conversion, range).unwrap(),
                raw_with(&model, &f16s, host, range).unwrap(),
                "f16",
            );
        }
    }
    // NaN in half-float pixels is refused the same way on both paths (a
    // given range: no percentiles, the gathering itself finds it).
    let mut bad = base.mapv(half::f16::from_f32);
    bad[[1, 30, 40]] = half::f16::NAN;
    for conversion in [Conversion::Host, Conversion::Device] {
        let refused = raw_with(&model, &bad, conversion, Some((0.0, 100.0)));
        assert_refused(refused, "image");
    }
}

/// `name` loaded once per device of `devices`.
fn load_on(name: &str, devices: &[Device]) -> Model {
    Model::load_on_devices(fixture(name), devices, Precision::Fp32).expect("fixture model")
}

#[test]
fn several_devices_share_a_call_and_give_one_devices_result_bit_for_bit() {
    // Three CPU "devices" stand in for GPUs: three workers take batches in
    // turn from one queue and finish them in any order.
    let cpus = [Device::Cpu, Device::Cpu, Device::Cpu];
    let bits = |a: &ArrayD<f32>, b: &ArrayD<f32>| {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    let mut rng = Lcg(31);
    for name in ["tiny_valid.pt", "tiny_same.pt"] {
        let one = load(name);
        let many = load_on(name, &cpus);
        assert_eq!(many.devices(), cpus.to_vec());
        for round in 0..4 {
            let shape = [1, 80 + rng.below(120), 80 + rng.below(120)];
            let image = rng.image(&shape);
            let options = Options {
                output: OutputMode::Raw,
                tile: Some(vec![64, 64]),
                batch_size: Some(1 + round % 3),
                // Same-padded tiles blend: sums of the batches, in order.
                blend: if round % 2 == 0 {
                    unet_rt::Blend::gaussian()
                } else {
                    unet_rt::Blend::Crop
                },
                ..Options::default()
            };
            let run = |model: &Model| -> ArrayD<f32> {
                Segmenter::new(model.clone(), options.clone())
                    .unwrap()
                    .segment(image.view())
                    .unwrap()
            };
            assert!(bits(&run(&many), &run(&one)), "{name}, round {round}");
        }
    }

    // Progress still counts every tile once, in order, and ends at the total.
    let many = load_on("tiny_valid.pt", &cpus);
    let image = Lcg(37).image(&[1, 200, 230]);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let options = Options {
        tile: Some(vec![60, 60]),
        progress: Some(Arc::new(move |p: Progress| {
            log.lock().unwrap().push((p.done, p.total))
        })),
        ..Options::default()
    };
    let seg = Segmenter::new(many.clone(), options).unwrap();
    let total = seg.layout(&[200, 230]).unwrap().plan.len();
    let labels: ArrayD<u8> = seg.segment(image.view()).unwrap();
    let want: ArrayD<u8> = Segmenter::new(
        load("tiny_valid.pt"),
        Options {
            tile: Some(vec![60, 60]),
            ..Options::default()
        },
    )
    .unwrap()
    .segment(image.view())
    .unwrap();
    assert_eq!(labels, want);
    let seen = seen.lock().unwrap();
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(seen.last(), Some(&(total, total)));

    // A failure on one device stops the call with its error, and the
    // model works again afterwards: pixels at the edge of f32 make the
    // network's output overflow, which the workers find.
    let huge = Lcg(41)
        .image(&[1, 150, 170])
        .mapv(|v| 1e300 * f64::from(v + 1.0));
    let options = Options {
        tile: Some(vec![64, 64]),
        batch_size: Some(1),
        input_range: Some((0.0, 1.0)),
        ..Options::default()
    };
    let err = Segmenter::new(many.clone(), options)
        .unwrap()
        .segment::<f64, u8>(huge.view())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err}");
    let again: ArrayD<u8> = Segmenter::new(many, Options::default())
        .unwrap()
        .segment(image.view())
        .unwrap();
    assert_eq!(again.shape(), &[200, 230]);

    // Cancelled before the start: every worker stops.
    let cancel = Arc::new(AtomicBool::new(true));
    let options = Options {
        cancel: Some(cancel),
        ..Options::default()
    };
    let err = Segmenter::new(load_on("tiny_valid.pt", &cpus), options)
        .unwrap()
        .segment::<f32, u8>(image.view())
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
}

#[test]
fn devices_of_one_model_are_of_one_kind() {
    assert_refused(
        Model::load_on_devices(fixture("tiny_valid.pt"), &[], Precision::Fp32),
        "device",
    );
    assert_refused(
        Model::load_on_devices(
            fixture("tiny_valid.pt"),
            &[Device::Cpu, Device::Cuda(0)],
            Precision::Fp32,
        ),
        "device",
    );
}

#[test]
fn a_gpu_this_machine_lacks_is_refused_at_load() {
    // Cuda(2^32 - 1) reached libtorch as the C int -1, the CPU: the model
    // ran there while its device said CUDA.
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    for index in [count, u32::MAX as usize, usize::MAX] {
        let err = Model::load_with_precision(
            fixture("tiny_valid.pt"),
            Device::Cuda(index),
            Precision::Fp32,
        )
        .err()
        .expect("a missing GPU loads");
        assert!(matches!(err, Error::DeviceUnavailable(_)), "{err}");
        let bytes = std::fs::read(fixture("tiny_valid.pt")).unwrap();
        let err = Model::load_bytes(&bytes, "tiny", Device::Cuda(index), Precision::Fp32)
            .err()
            .expect("a missing GPU loads");
        assert!(matches!(err, Error::DeviceUnavailable(_)), "{err}");
    }
}
