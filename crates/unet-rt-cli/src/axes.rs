//! Axis order of input images: from `--axes`, the file format, or the shape
//! and the model, to the engine's `(batch, channels, spatial...)` layout.
//!
//! For a 2-D model a `z` axis (the pages of a multi-page TIFF) is a batch of
//! independent 2-D images; for a 3-D model it is the volume's depth.

use ndarray::{ArrayViewD, Axis};
use unet_rt::ModelInfo;

/// Letters `--axes` accepts.
const LETTERS: &str = "czyx";

/// Checks an `--axes` value as typed: letters from `czyx`, each at most
/// once, with `y` and `x`.
pub(crate) fn parse_axes(text: &str) -> Result<String, String> {
    let axes = text.trim().to_ascii_lowercase();
    if let Some(bad) = axes.chars().find(|c| !LETTERS.contains(*c)) {
        return Err(format!(
            "unknown axis {bad:?} in {text:?}: use the letters c (channels), z, y and x"
        ));
    }
    if LETTERS.chars().any(|l| axes.matches(l).count() > 1) {
        return Err(format!("an axis appears twice in {text:?}"));
    }
    if !(axes.contains('y') && axes.contains('x')) {
        return Err(format!("{text:?} has no y and x axes"));
    }
    Ok(axes)
}

/// The image as the engine takes it.
#[derive(Debug)]
pub(crate) struct Arranged<'a, T> {
    /// `(batch, channels, spatial...)`; batch is 1 unless a 2-D model reads a stack.
    pub view: ArrayViewD<'a, T>,
    /// Whether the result keeps a leading batch (page) axis.
    pub stacked: bool,
}

/// Chooses the axes of an image: `given` (`--axes`) when set, else those of
/// the file format (`natural`), else guessed from the shape and the model.
pub(crate) fn choose_axes(
    given: Option<&str>,
    natural: Option<&str>,
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
        // A 2-D model with several input channels reads a stack of exactly
        // that many pages as the channels of one image.
        if info.spatial_dims == 2
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

/// Lays out `view`, whose axes are `axes`, as `(batch, channels, spatial...)`
/// without copying.
pub(crate) fn arrange<'a, T>(
    view: ArrayViewD<'a, T>,
    axes: &str,
    info: &ModelInfo,
) -> Result<Arranged<'a, T>, String> {
    let has = |l: char| axes.contains(l);
    let shape = view.shape().to_vec();
    // `permuted_axes` panics unless the letters name each axis once.
    if axes.len() != shape.len()
        || axes
            .chars()
            .any(|l| !LETTERS.contains(l) || axes.matches(l).count() > 1)
    {
        return Err(format!(
            "the axes {axes} do not name each axis of shape {shape:?} once"
        ));
    }
    let target: &[char] = if info.spatial_dims == 2 {
        &['z', 'c', 'y', 'x']
    } else {
        &['c', 'z', 'y', 'x']
    };
    if info.spatial_dims == 3 && !has('z') {
        return Err(format!("the model is 3-D and the image has no z axis (axes {axes}, shape {shape:?}): give a volume, or --axes"));
    }
    let order: Vec<usize> = target.iter().filter_map(|&l| axes.find(l)).collect();
    let mut view = view.permuted_axes(order);
    // Insert the axes the image lacks, in target order.
    for (position, &letter) in target.iter().enumerate() {
        if !has(letter) {
            view.insert_axis_inplace(Axis(position));
        }
    }
    let stacked = info.spatial_dims == 2 && has('z');
    if info.spatial_dims == 3 {
        view.insert_axis_inplace(Axis(0));
    }
    if view.shape()[1] != info.in_channels {
        return Err(format!(
            "the model takes {} input channel(s), the image has {} (axes {axes}, shape {shape:?})",
            info.in_channels,
            view.shape()[1]
        ));
    }
    Ok(Arranged { view, stacked })
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
        }
    }

    #[test]
    fn parses_and_rejects_axes() {
        assert_eq!(parse_axes("YXC").unwrap(), "yxc");
        assert!(parse_axes("yxt").is_err());
        assert!(parse_axes("yyx").is_err());
        assert!(parse_axes("zc").is_err());
    }

    #[test]
    fn guesses_npy_axes_from_the_model() {
        let m = info(2, 1);
        assert_eq!(choose_axes(None, None, &[5, 6], &m).unwrap(), "yx");
        assert_eq!(choose_axes(None, None, &[1, 5, 6], &m).unwrap(), "cyx");
        let err = choose_axes(None, None, &[4, 5, 6], &m).unwrap_err();
        assert!(
            err.contains("2-D") && err.contains("zyx on the command line"),
            "{err}"
        );
        assert_eq!(
            choose_axes(None, None, &[5, 6, 3], &info(2, 3)).unwrap(),
            "yxc"
        );
        assert_eq!(
            choose_axes(None, Some("zyx"), &[3, 5, 6], &info(2, 3)).unwrap(),
            "cyx"
        );
        assert_eq!(
            choose_axes(None, Some("zyx"), &[4, 5, 6], &m).unwrap(),
            "zyx"
        );
        assert!(choose_axes(Some("yx"), None, &[4, 5, 6], &m).is_err());
    }

    #[test]
    fn arranges_stacks_channels_and_volumes() {
        let a = ArrayD::<u8>::zeros(ndarray::IxDyn(&[4, 5, 6]));
        let r = arrange(a.view(), "zyx", &info(2, 1)).unwrap();
        assert_eq!((r.view.shape(), r.stacked), (&[4, 1, 5, 6][..], true));
        let r = arrange(a.view(), "zyx", &info(3, 1)).unwrap();
        assert_eq!((r.view.shape(), r.stacked), (&[1, 1, 4, 5, 6][..], false));
        let r = arrange(a.view(), "yxc", &info(2, 6)).unwrap();
        assert_eq!(r.view.shape(), &[1, 6, 4, 5]);
        assert_eq!(r.view[[0, 2, 1, 3]], a[[1, 3, 2]]);
        assert!(arrange(a.view(), "cyx", &info(2, 1))
            .unwrap_err()
            .contains("1 input channel"));
        assert!(arrange(a.view(), "cyx", &info(3, 4))
            .unwrap_err()
            .contains("no z axis"));
        assert!(arrange(a.view(), "yx", &info(2, 1))
            .unwrap_err()
            .contains("do not name each axis"));
        assert!(arrange(a.view(), "yxx", &info(2, 1)).is_err());
    }
}
