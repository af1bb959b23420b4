//! Axis order of input images: from `--axes`, the file format, or the shape
//! and the model, to the engine's `(batch, channels, spatial...)` layout.
//!
//! For a 2-D model a `z` axis (the pages of a multi-page TIFF) is a batch of
//! independent 2-D images; for a 3-D model it is the volume's depth.

use ndarray::ArrayViewD;
use unet_rt::axes::Arrangement;
use unet_rt::ModelInfo;

/// Checks an `--axes` value as typed (the core's letters, `b` `c` `z` `y`
/// `x`, each at most once, with `y` and `x`).
pub(crate) fn parse_axes(text: &str) -> Result<String, String> {
    unet_rt::axes::parse_axes(text.trim()).map_err(|e| e.to_string())
}

/// The image as the engine takes it.
#[derive(Debug)]
pub(crate) struct Arranged<'a, T> {
    /// `(batch, channels, spatial...)`; batch is 1 unless the image has one
    /// (for a 2-D model, the pages of a stack).
    pub view: ArrayViewD<'a, T>,
    /// Whether the result keeps a leading batch (page) axis.
    pub stacked: bool,
}

/// Chooses the axes of an image: `given` (`--axes`) when set, else those of
/// the file format (`natural`), else guessed from the shape and the model.
pub(crate) fn choose_axes(
    given: Option<&str>,
    natural: Option<&str>,
    pages_named: bool,
    shape: &[usize],
    info: &ModelInfo,
) -> Result<String, String> {
    let ndim = shape.len();
    if let Some(axes) = given {
        if axes.len() != ndim {
            return Err(format!(
                "--axes {axes} names {} axes, the image has {ndim} (shape {shape:?})",
                axes.len()
            ));
        }
        return Ok(axes.to_owned());
    }
    if let Some(axes) = natural {
        if info.spatial_dims == 3 && axes.contains('b') && !axes.contains('z') {
            // The core's refusal quoted letters ("byx") the user never typed.
            return Err(format!(
                "the file's description says its pages are time points of 2-D images (axes {}), not the \
                 slices of a volume, which a 3-D model reads; pass --axes {} to read them as one volume's \
                 slices",
                axes.replace('b', "t").to_ascii_uppercase(),
                axes.replace('b', "z"),
            ));
        }
        // A 2-D model with several input channels reads a stack of exactly
        // that many pages as the channels of one image, unless the file
        // says they are slices or time points.
        if info.spatial_dims == 2
            && !pages_named
            && axes == "zyx"
            && info.in_channels > 1
            && shape.first() == Some(&info.in_channels)
        {
            return Ok("cyx".to_owned());
        }
        return Ok(axes.to_owned());
    }
    // No axes in the file (NPY): the core's rule, the one Python follows.
    unet_rt::axes::infer_axes(shape, info.spatial_dims, info.in_channels).map_err(|e| e.to_string())
}

/// Lays out `view`, whose axes are `axes`, as `(batch, channels,
/// spatial...)` without copying (the core's arrangement).
pub(crate) fn arrange<'a, T>(
    view: ArrayViewD<'a, T>,
    axes: &str,
    info: &ModelInfo,
) -> Result<Arranged<'a, T>, String> {
    let arrangement = Arrangement::of(
        view.shape(),
        Some(axes),
        info.spatial_dims,
        info.in_channels,
    )
    .map_err(|e| with_channel_advice(e.to_string(), view.shape(), axes, info))?;
    let stacked = arrangement.batched();
    let view = arrangement.arrange(view).map_err(|e| e.to_string())?;
    Ok(Arranged { view, stacked })
}

/// `message` (a refusal of the image's channels), with advice where the
/// image's channels are a common picture format the model does not take:
/// one more than a grey or colour model's (grey and alpha, RGBA or CMYK),
/// colour (RGB or RGBA, palettes included) for a grey model, or grey for a
/// colour model. PIL converts each (the advice names the call).
fn with_channel_advice(message: String, shape: &[usize], axes: &str, info: &ModelInfo) -> String {
    let channels_last = axes.ends_with('c');
    let grey_for_colour = info.in_channels == 3 && !axes.contains('c');
    if !channels_last && !grey_for_colour {
        return message;
    }
    let channels = if axes.contains('c') {
        shape.last().copied().unwrap_or(0)
    } else {
        1
    };
    let (what, convert) = match (info.in_channels, channels) {
        // Four channels for a colour model are RGBA or a CMYK file's inks.
        (3, 4) => (
            "the 4th is likely alpha, or a CMYK image's black ink, which counts as a channel",
            "RGB",
        ),
        (1, 2) => ("the 2nd is likely alpha, which counts as a channel", "L"),
        (1, 3 | 4) => (
            "a colour image (RGB or RGBA; palette images are read as colour) for a grey model: convert it to \
             grey, or keep the one channel that holds the stain",
            "L",
        ),
        (3, 1) => ("a grey image for a colour model", "RGB"),
        _ => return message,
    };
    format!(
        "{message} ({what}: convert the image, e.g. with PIL: Image.open(path).convert('{convert}').save(new))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;
    use unet_rt::{Activation, Normalization, Padding};

    fn info(dims: usize, channels: usize) -> ModelInfo {
        ModelInfo {
            spatial_dims: dims,
            in_channels: channels,
            out_channels: 2,
            output: Activation::Softmax,
            padding: Padding::Valid,
            halo: 20,
            size_multiple: 4,
            size_offset: 0,
            normalization: Normalization::None,
            first_layer_width: None,
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

    #[test]
    fn parses_and_rejects_axes() {
        assert_eq!(parse_axes("YXC").unwrap(), "yxc");
        assert_eq!(parse_axes(" bYX ").unwrap(), "byx");
        assert!(parse_axes("yxt").is_err());
        assert!(parse_axes("yyx").is_err());
        assert!(parse_axes("zc").is_err());
    }

    #[test]
    fn guesses_npy_axes_from_the_model() {
        let m = info(2, 1);
        assert_eq!(choose_axes(None, None, false, &[5, 6], &m).unwrap(), "yx");
        assert_eq!(
            choose_axes(None, None, false, &[1, 5, 6], &m).unwrap(),
            "cyx"
        );
        let err = choose_axes(None, None, false, &[4, 5, 6], &m).unwrap_err();
        assert!(err.contains("2-D") && err.contains("byx (or zyx)"), "{err}");
        assert_eq!(
            choose_axes(None, None, false, &[5, 6, 3], &info(2, 3)).unwrap(),
            "yxc"
        );
        assert_eq!(
            choose_axes(None, Some("zyx"), false, &[3, 5, 6], &info(2, 3)).unwrap(),
            "cyx"
        );
        assert_eq!(
            choose_axes(None, Some("zyx"), false, &[4, 5, 6], &m).unwrap(),
            "zyx"
        );
        assert!(choose_axes(Some("yx"), None, false, &[4, 5, 6], &m).is_err());
        // A file's time series of 2-D frames is no volume: the refusal
        // speaks of the file and of --axes, not of the core's letters.
        let err = choose_axes(None, Some("byx"), true, &[4, 5, 6], &info(3, 1)).unwrap_err();
        assert!(
            err.contains("(axes TYX)") && err.contains("--axes zyx"),
            "{err}"
        );
        assert_eq!(
            choose_axes(None, Some("byx"), true, &[4, 5, 6], &m).unwrap(),
            "byx"
        );
    }

    #[test]
    fn channels_of_picture_formats_get_advice() {
        let rgba = ArrayD::<u8>::zeros(ndarray::IxDyn(&[5, 6, 4]));
        let err = arrange(rgba.view(), "yxc", &info(2, 3)).unwrap_err();
        assert!(
            err.contains("has 4") && err.contains("convert('RGB')") && err.contains("CMYK"),
            "{err}"
        );
        let grey_alpha = ArrayD::<u8>::zeros(ndarray::IxDyn(&[5, 6, 2]));
        let err = arrange(grey_alpha.view(), "yxc", &info(2, 1)).unwrap_err();
        assert!(err.contains("convert('L')"), "{err}");
        let five = ArrayD::<u8>::zeros(ndarray::IxDyn(&[5, 6, 5]));
        let err = arrange(five.view(), "yxc", &info(2, 3)).unwrap_err();
        assert!(!err.contains("alpha") && !err.contains("PIL"), "{err}");
        // Colour for a grey model (palette PNGs are read as RGB), grey
        // for a colour one.
        for channels in [3, 4] {
            let colour = ArrayD::<u8>::zeros(ndarray::IxDyn(&[5, 6, channels]));
            let err = arrange(colour.view(), "yxc", &info(2, 1)).unwrap_err();
            assert!(
                err.contains("colour image") && err.contains("convert('L')"),
                "{err}"
            );
        }
        let grey = ArrayD::<u8>::zeros(ndarray::IxDyn(&[5, 6]));
        let err = arrange(grey.view(), "yx", &info(2, 3)).unwrap_err();
        assert!(
            err.contains("has 1") && err.contains("convert('RGB')"),
            "{err}"
        );
        // A channel-first array is no picture format: no PIL advice.
        let planes = ArrayD::<u8>::zeros(ndarray::IxDyn(&[3, 5, 6]));
        let err = arrange(planes.view(), "cyx", &info(2, 1)).unwrap_err();
        assert!(!err.contains("PIL"), "{err}");
    }

    #[test]
    fn arranges_stacks_as_batches_and_volumes_as_depth() {
        let a = ArrayD::<u8>::zeros(ndarray::IxDyn(&[4, 5, 6]));
        let r = arrange(a.view(), "zyx", &info(2, 1)).unwrap();
        assert_eq!((r.view.shape(), r.stacked), (&[4, 1, 5, 6][..], true));
        let r = arrange(a.view(), "zyx", &info(3, 1)).unwrap();
        assert_eq!((r.view.shape(), r.stacked), (&[1, 1, 4, 5, 6][..], false));
        assert!(arrange(a.view(), "cyx", &info(2, 1))
            .unwrap_err()
            .contains("1 input channel"));
    }
}
