//! The core crate against PyTorch: fixtures in `tests/fixtures` were computed
//! by PyTorch (see `make.py` there).

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis};
use ndarray_npy::read_npy;
use unet_rt::{Device, Error, Model, Options, OutputMode, Segmenter};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn npy(name: &str) -> ArrayD<f32> {
    read_npy(fixture(name)).expect("fixture")
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn forward_equals_pytorch() {
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).unwrap();
    let out = model.forward_array(npy("batch.npy").view()).unwrap();
    assert!(max_abs_diff(&out, &npy("batch_expected.npy")) < 1e-5);
}

#[test]
fn strided_views_give_the_same_result() {
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).unwrap();
    let batch = npy("batch.npy");
    // Reversed batch order through a negative stride: not contiguous.
    let reversed = batch.slice_axis(Axis(0), ndarray::Slice::new(0, None, -1));
    let out = model.forward_array(reversed.into_dyn()).unwrap();
    let expected = npy("batch_expected.npy");
    let expected = expected
        .slice_axis(Axis(0), ndarray::Slice::new(0, None, -1))
        .to_owned();
    assert!(max_abs_diff(&out, &expected) < 1e-5);
}

#[test]
fn metadata_is_read_and_plain_torchscript_has_none() {
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).unwrap();
    let meta = model.metadata().unwrap();
    assert_eq!(
        (
            meta.halo,
            meta.size_multiple,
            meta.in_channels,
            meta.out_channels
        ),
        (20, 4, 1, 2)
    );
    let plain = Model::load(fixture("tiny_plain.pt"), Device::Cpu).unwrap();
    assert!(plain.metadata().is_none());
    // Without metadata nothing is checked up front, and the net still runs.
    let out = plain.forward_array(npy("batch.npy").view()).unwrap();
    assert!(max_abs_diff(&out, &npy("batch_expected.npy")) < 1e-5);
}

#[test]
fn whole_image_forward_equals_the_pytorch_oracle() {
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).unwrap();
    let image = npy("image.npy").insert_axis(Axis(0));
    let out = unet_rt::forward_whole(&model, image.view()).unwrap();
    assert!(max_abs_diff(&out, &npy("image_expected.npy")) < 1e-4);
}

#[test]
fn user_errors_are_typed_and_readable() {
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).unwrap();
    let err = model
        .forward_array(ndarray::ArrayD::zeros(vec![44, 44]).view())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = model
        .forward_array(ndarray::ArrayD::zeros(vec![1, 3, 44, 44]).view())
        .unwrap_err();
    assert!(err.to_string().contains("1 input channel"), "{err}");
    let err = model
        .forward_array(ndarray::ArrayD::zeros(vec![1, 1, 45, 44]).view())
        .unwrap_err();
    assert!(
        err.to_string().contains("45 is not a valid input size"),
        "{err}"
    );

    let missing = Model::load("/definitely/not/here.pt", Device::Cpu).unwrap_err();
    assert!(matches!(missing, Error::ModelNotFound(_)));
    let dir = std::env::temp_dir().join(format!("unet_rt_forward_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.pt");
    // A real archive cut in half: a zip without its central directory.
    let bytes = std::fs::read(fixture("tiny_valid.pt")).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(&corrupt, Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InvalidModel { .. }), "{err}");
    assert!(
        !err.to_string().contains("Exception raised from"),
        "no C++ backtrace: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn devices_parse_and_missing_gpus_are_reported() {
    assert_eq!(unet_rt::parse_device("CPU").unwrap(), Device::Cpu);
    assert!(matches!(
        unet_rt::parse_device("npu"),
        Err(Error::InvalidArgument { .. })
    ));
    if !tch::Cuda::is_available() {
        assert!(matches!(
            unet_rt::parse_device("cuda:0"),
            Err(Error::DeviceUnavailable(_))
        ));
    }
}

#[test]
fn models_load_from_bytes_with_their_metadata() {
    let bytes = std::fs::read(fixture("tiny_valid.pt")).unwrap();
    let model = Model::load_bytes(
        &bytes,
        "embedded:tiny",
        Device::Cpu,
        unet_rt::Precision::Fp32,
    )
    .unwrap();
    assert_eq!(model.metadata().unwrap().halo, 20);
    let out = model.forward_array(npy("batch.npy").view()).unwrap();
    assert!(max_abs_diff(&out, &npy("batch_expected.npy")) < 1e-5);
    let err = Model::load_bytes(
        b"junk",
        "embedded:junk",
        Device::Cpu,
        unet_rt::Precision::Fp32,
    )
    .unwrap_err();
    assert!(err.to_string().contains("embedded:junk"), "{err}");
}

#[test]
fn instances_are_the_components_of_the_labels_in_wide_ids_only() {
    use unet_rt::{OutputMode, Segmenter};
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).expect("model");
    let image = npy("image.npy");
    let image = image.view().insert_axis(Axis(0)).into_dyn().to_owned();
    let segmenter = |output| {
        Segmenter::new(
            model.clone(),
            unet_rt::Options {
                output,
                ..Default::default()
            },
        )
        .expect("segmenter")
    };
    let labels: ArrayD<u8> = segmenter(OutputMode::Labels)
        .segment(image.view())
        .expect("labels");
    let ids: ArrayD<u32> = segmenter(OutputMode::Instances)
        .segment(image.view())
        .expect("instances");
    let (want, count) =
        unet_rt::instances::connected_components(labels.view()).expect("components");
    assert_eq!(ids, want);
    assert_eq!(ids.iter().copied().max().unwrap_or(0) as usize, count);
    let wide: ArrayD<i64> = segmenter(OutputMode::Instances)
        .segment(image.view())
        .expect("int64 ids");
    assert_eq!(wide, want.mapv(i64::from));
    match segmenter(OutputMode::Instances).segment::<f32, u16>(image.view()) {
        Err(Error::InvalidArgument {
            argument: "out",
            message,
        }) => assert!(message.contains("wrap"), "{message}"),
        other => panic!("uint16 ids were accepted: {other:?}"),
    }
    assert_eq!(
        "instances".parse::<OutputMode>().expect("parse"),
        OutputMode::Instances
    );
    // Id types are for instances only: raw values would be truncated.
    for output in [OutputMode::Raw, OutputMode::Probabilities] {
        assert!(segmenter(output).segment::<f32, i64>(image.view()).is_err());
        assert!(segmenter(output).segment::<f32, u32>(image.view()).is_err());
    }
    assert!(segmenter(OutputMode::Labels)
        .segment::<f32, u64>(image.view())
        .is_err());
}

fn argument<T: std::fmt::Debug>(result: Result<T, Error>) -> &'static str {
    match result {
        Err(Error::InvalidArgument { argument, .. }) => argument,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn a_gaussian_blend_without_a_sigma_is_refused_for_every_network() {
    // A valid network never blends: it took a NaN sigma without a word.
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).expect("model");
    for sigma_scale in [f64::NAN, 0.0, -1.0, f64::INFINITY] {
        let options = Options {
            blend: unet_rt::Blend::Gaussian { sigma_scale },
            ..Default::default()
        };
        assert_eq!(
            argument(Segmenter::new(model.clone(), options)),
            "sigma_scale"
        );
    }
    let fine = Options {
        blend: unet_rt::Blend::gaussian(),
        ..Default::default()
    };
    assert!(Segmenter::new(model, fine).is_ok());
}

#[test]
fn windows_and_shapes_that_do_not_fit_the_model_are_refused_by_name() {
    use unet_rt::{Options, Segmenter, Window};
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).expect("model");
    let segmenter = Segmenter::new(model.clone(), Options::default()).expect("segmenter");
    let good = Window {
        image: vec![100, 100],
        origin: vec![0, 0],
        start: vec![10, 10],
        shape: vec![5, 5],
    };
    assert!(segmenter.needed_input(&good).is_ok());
    let bad = [
        // Fields of different ranks: indexing panicked.
        Window {
            start: vec![0],
            shape: vec![5],
            ..good.clone()
        },
        // Outside the image, or empty: answered as if fine.
        Window {
            start: vec![1000, 1000],
            ..good.clone()
        },
        Window {
            shape: vec![0, 0],
            ..good.clone()
        },
        Window {
            image: vec![0, 100],
            shape: vec![0, 5],
            ..good.clone()
        },
        Window {
            start: vec![usize::MAX - 1, 0],
            shape: vec![5, 5],
            ..good.clone()
        },
        // A 3-D window for a 2-D model: planned as a 3-D image.
        Window {
            image: vec![100, 100, 100],
            origin: vec![0; 3],
            start: vec![0; 3],
            shape: vec![5; 3],
        },
    ];
    for window in bad {
        assert_eq!(
            argument(segmenter.needed_input(&window)),
            "window",
            "{window:?}"
        );
        assert_eq!(
            argument(segmenter.needed_inputs(&[good.clone(), window.clone()])),
            "window",
            "{window:?}"
        );
        let with = Options {
            window: Some(window.clone()),
            ..Default::default()
        };
        assert_eq!(
            argument(Segmenter::new(model.clone(), with)),
            "window",
            "{window:?}"
        );
    }
    // A 3-D shape for a 2-D model gave a 3-D plan.
    assert_eq!(argument(segmenter.layout(&[5, 5, 5])), "image");
    assert_eq!(argument(segmenter.layout(&[])), "image");
    assert_eq!(
        segmenter.layout(&[5, 5]).expect("2-D").plan.image_shape(),
        &[5, 5]
    );
    // A window that fits the model but not the input names the window.
    let wide = Options {
        window: Some(Window {
            image: vec![1000, 1000],
            origin: vec![0, 0],
            start: vec![0, 0],
            shape: vec![1000, 1000],
        }),
        ..Default::default()
    };
    let segmenter = Segmenter::new(model, wide).expect("a fine window");
    let image = ArrayD::<u8>::zeros(vec![1, 100, 100]);
    assert_eq!(
        argument(segmenter.segment::<u8, u8>(image.view())),
        "window"
    );
    let image = ArrayD::<u8>::zeros(vec![1, 1001, 100]);
    assert_eq!(
        argument(segmenter.segment::<u8, u8>(image.view())),
        "window"
    );
}

#[test]
fn whole_image_passes_refuse_empty_and_oversized_images_first() {
    use ndarray::ShapeBuilder;
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).expect("model");
    // An empty axis panicked ("ndarray: index out of bounds").
    for shape in [
        vec![1, 0, 10],
        vec![0, 10, 10],
        vec![1, 10],
        vec![2, 10, 10],
    ] {
        let image = ArrayD::<f32>::zeros(shape.clone());
        assert_eq!(
            argument(unet_rt::forward_whole(&model, image.view())),
            "image",
            "{shape:?}"
        );
    }
    // A broadcast view of 2^40 pixels was scanned for percentiles for
    // minutes before its normalized copy was allocated in one go.
    let started = std::time::Instant::now();
    let huge = ndarray::ArrayView::from_shape(
        ndarray::IxDyn(&[1, 1 << 20, 1 << 20]).strides(ndarray::IxDyn(&[0, 0, 0])),
        &[0f32][..],
    )
    .expect("a case that succeeds");
    assert_eq!(argument(unet_rt::forward_whole(&model, huge)), "image");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_model_loads_from_a_thread_with_a_small_stack() {
    // libtorch's compiler overflowed a service worker's 256 KiB stack and
    // the process was killed (SIGABRT); loads run on a stack of their own.
    let bundled =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/unet_rt/models/nuclei.pt");
    let loaded = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || Model::load(bundled, Device::Cpu).map(|m| m.info().out_channels))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(loaded.unwrap(), 3);
}

#[test]
fn a_read_out_option_no_output_reads_is_refused() {
    // Labels and probabilities ignored min_size and fill_holes without a word.
    let model = Model::load(fixture("tiny_valid.pt"), Device::Cpu).unwrap();
    for (output, min_size, fill_holes, refused) in [
        (OutputMode::Labels, Some(5), None, Some("min_size")),
        (
            OutputMode::Probabilities,
            None,
            Some(true),
            Some("fill_holes"),
        ),
        (OutputMode::Instances, Some(5), Some(true), None),
    ] {
        let options = Options {
            output,
            min_size,
            fill_holes,
            ..Options::default()
        };
        match (Segmenter::new(model.clone(), options), refused) {
            (Err(Error::InvalidArgument { argument, .. }), Some(want)) => {
                assert_eq!(argument, want)
            }
            (Ok(_), None) => {}
            (other, _) => panic!("{output:?}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn the_layout_is_that_of_the_image_the_network_sees() {
    // With object_size the call runs on the resampled image: the layout
    // gave the tiles of the image as given (4 where the call ran 1).
    let bundled =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/unet_rt/models/nuclei.pt");
    let model = Model::load(bundled, Device::Cpu).unwrap();
    let trained = model.info().object_size.unwrap();
    let halved = Options {
        object_size: Some(2.0 * trained),
        ..Options::default()
    };
    let scaled = Segmenter::new(model.clone(), halved)
        .unwrap()
        .layout(&[2048, 2048])
        .unwrap();
    let plain = Segmenter::new(model, Options::default())
        .unwrap()
        .layout(&[1024, 1024])
        .unwrap();
    assert_eq!(
        (scaled.plan.clone(), scaled.batch_size),
        (plain.plan.clone(), plain.batch_size)
    );
}
