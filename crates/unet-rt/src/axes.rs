//! Which axis of an array is which: the letters callers name axes with, the
//! rule when they do not, and the arrangement into the engine's
//! `(batch, channels, spatial...)` layout. One rule for the Python API, the
//! Dask layer, the CLI and Rust, so that the same array is read the same
//! way everywhere.
//!
//! Letters: `b` (batch), `c` (channels), `z`, `y`, `x`. For a 2-D model a
//! `z` axis is a batch too: the pages of a stack are independent images.

use ndarray::{ArrayViewD, Axis, IxDyn};

use crate::error::{Error, Result};

/// The permutation of a tensor of `rank` axes laid out `(N, spatial...,
/// C)` that reads it as `(N, C, spatial...)`: the engine's channels-last
/// batches are such views.
pub(crate) fn channels_first_order(rank: usize) -> Vec<i64> {
    let last = i64::try_from(rank)
        .unwrap_or(i64::MAX)
        .saturating_sub(1)
        .max(1);
    std::iter::once(0)
        .chain(std::iter::once(last))
        .chain(1..last)
        .collect()
}

/// The inverse of [`channels_first_order`]: `(N, C, spatial...)` read as
/// `(N, spatial..., C)`.
pub(crate) fn channels_last_order(rank: usize) -> Vec<i64> {
    let first = channels_first_order(rank);
    (0..first.len())
        .map(|axis| {
            first
                .iter()
                .position(|&a| usize::try_from(a) == Ok(axis))
                .map_or(0, |at| at as i64)
        })
        .collect()
}

/// Every letter an axis can be named with.
pub const LETTERS: &str = "bczyx";

/// `text` as axes: lower case, letters from [`LETTERS`] each at most once,
/// with `y` and `x`.
///
/// # Errors
/// [`Error::InvalidArgument`] (`axes`) naming the offending letter.
pub fn parse_axes(text: &str) -> Result<String> {
    let axes = text.to_ascii_lowercase();
    let invalid = |message: String| Error::InvalidArgument {
        argument: "axes",
        message,
    };
    if let Some(bad) = axes.chars().find(|c| !LETTERS.contains(*c)) {
        return Err(invalid(format!(
            "unknown axis {bad:?} in {text:?}: use the letters b (batch), c (channels), z, y and x"
        )));
    }
    if let Some(twice) = LETTERS.chars().find(|&l| axes.matches(l).count() > 1) {
        return Err(invalid(format!(
            "the axis {twice:?} appears twice in {text:?}"
        )));
    }
    if !(axes.contains('y') && axes.contains('x')) {
        return Err(invalid(format!("{text:?} has no y and x axes")));
    }
    Ok(axes)
}

/// How an array with named axes maps onto the engine's layout `(batch,
/// channels, spatial...)`: a permutation plus length-1 axes for those the
/// array lacks. No pixel moves: [`Arrangement::arrange`] is a view.
///
/// ```
/// use unet_rt::axes::Arrangement;
/// let a = Arrangement::of(&[300, 400, 3], None, 2, 3).unwrap();
/// assert_eq!((a.axes(), a.sources(), a.batched()), ("yxc", &[None, Some(2), Some(0), Some(1)][..], false));
/// // A 2-D model reads the pages of a z stack as a batch.
/// assert!(Arrangement::of(&[7, 300, 400], Some("ZYX"), 2, 1).unwrap().batched());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrangement {
    axes: String,
    sources: Vec<Option<usize>>,
}

impl Arrangement {
    /// The arrangement of an array of `shape` whose axes are `axes` (any
    /// order; inferred by [`infer_axes`] when `None`) for a model of
    /// `spatial_dims` dimensions and `in_channels` input channels.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`]: `axes` when they do not name each axis of
    /// the array once with the model's spatial axes; `image` when the
    /// array's channel count is not the model's.
    pub fn of(
        shape: &[usize],
        axes: Option<&str>,
        spatial_dims: usize,
        in_channels: usize,
    ) -> Result<Self> {
        if !(2..=3).contains(&spatial_dims) {
            return Err(Error::InvalidArgument {
                argument: "spatial_dims",
                message: format!("{spatial_dims}: models are 2-D or 3-D"),
            });
        }
        let axes = match axes {
            Some(text) => parse_axes(text)?,
            None => infer_axes(shape, spatial_dims, in_channels)?,
        };
        let spatial = spatial_axes(spatial_dims);
        let batch = match (axes.find('b'), spatial_dims == 2) {
            (Some(_), true) if axes.contains('z') => None,
            (Some(b), _) => Some(b),
            (None, true) => axes.find('z'),
            (None, false) => None,
        };
        let mut sources = vec![batch, axes.find('c')];
        sources.extend(spatial.chars().map(|l| axes.find(l)));
        let named = sources.iter().flatten().count();
        if axes.len() != shape.len() || named != axes.len() || sources[2..].contains(&None) {
            let stack = if spatial_dims == 2 {
                " (or z, the pages of a stack)"
            } else {
                ""
            };
            return Err(Error::InvalidArgument {
                argument: "axes",
                message: format!(
                    "{axes:?} does not describe an array of shape {shape:?} for a {spatial_dims}-D model; use the \
                     letters b (batch){stack}, c (channels) and {spatial:?}, each once"
                ),
            });
        }
        let channels = sources[1].map_or(1, |c| shape[c]);
        if channels != in_channels {
            return Err(Error::InvalidArgument {
                argument: "image",
                message: format!(
                    "the model takes {in_channels} input channel(s), the array of shape {shape:?} with axes {axes:?} \
                     has {channels}"
                ),
            });
        }
        Ok(Self { axes, sources })
    }

    /// The array's axes, lower case.
    pub fn axes(&self) -> &str {
        &self.axes
    }

    /// For each axis of the engine's layout (batch, channels, spatial...),
    /// the array's axis it is, or `None` where the array lacks it (length 1).
    pub fn sources(&self) -> &[Option<usize>] {
        &self.sources
    }

    /// Whether the array has a batch axis (the result keeps it).
    pub fn batched(&self) -> bool {
        self.sources[0].is_some()
    }

    /// `view` (of the shape this arrangement was made for) laid out
    /// `(batch, channels, spatial...)`, without copying.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`image`) for a view of another rank.
    pub fn arrange<'a, T>(&self, view: ArrayViewD<'a, T>) -> Result<ArrayViewD<'a, T>> {
        if view.ndim() != self.axes.len() {
            return Err(Error::InvalidArgument {
                argument: "image",
                message: format!(
                    "an array of shape {:?} does not have the {} axes {:?}",
                    view.shape(),
                    self.axes.len(),
                    self.axes
                ),
            });
        }
        // A permutation: `of` checked that the sources name each axis once.
        let order: Vec<usize> = self.sources.iter().flatten().copied().collect();
        let mut view = view.permuted_axes(IxDyn(&order));
        for (position, source) in self.sources.iter().enumerate() {
            if source.is_none() {
                view.insert_axis_inplace(Axis(position));
            }
        }
        Ok(view)
    }
}

/// The spatial axes of a model of `spatial_dims` dimensions.
pub fn spatial_axes(spatial_dims: usize) -> &'static str {
    if spatial_dims == 3 {
        "zyx"
    } else {
        "yx"
    }
}

/// The axes of an array of `shape` for a model of `spatial_dims` dimensions
/// and `in_channels` input channels, when they are unambiguous: the spatial
/// axes alone, or with a channel axis first or last whose length is the
/// model's channel count (and the other end's is not). Anything else needs
/// the caller to name the axes.
///
/// ```
/// use unet_rt::axes::infer_axes;
/// assert_eq!(infer_axes(&[300, 400], 2, 1).unwrap(), "yx");
/// assert_eq!(infer_axes(&[300, 400, 3], 2, 3).unwrap(), "yxc");
/// assert_eq!(infer_axes(&[1, 300, 400], 2, 1).unwrap(), "cyx");
/// assert!(infer_axes(&[3, 300, 3], 2, 3).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] (`axes`) when the shape does not say, with
/// the choices that would fit; (`image`) for fewer than two axes.
pub fn infer_axes(shape: &[usize], spatial_dims: usize, in_channels: usize) -> Result<String> {
    let spatial = spatial_axes(spatial_dims);
    let ndim = shape.len();
    if ndim < 2 {
        // No naming of axes makes a value or a row an image: `axes` was
        // blamed, with examples that could not fit.
        let what = if ndim == 0 {
            "a single value"
        } else {
            "one axis"
        };
        return Err(Error::InvalidArgument {
            argument: "image",
            message: format!(
                "holds {what} (shape {shape:?}), not an image: an image has at least two axes (y, x)"
            ),
        });
    }
    if ndim == spatial_dims {
        return Ok(spatial.to_owned());
    }
    if ndim == spatial_dims + 1 {
        let first = shape[0] == in_channels;
        let last = shape[ndim - 1] == in_channels;
        if first && !last {
            return Ok(format!("c{spatial}"));
        }
        if last && !first {
            return Ok(format!("{spatial}c"));
        }
    }
    let channels = if in_channels == 1 {
        "1 input channel".to_owned()
    } else {
        format!("{in_channels} input channels")
    };
    let stack = if spatial_dims == 2 {
        "; a stack of 2-D images is byx (or zyx)"
    } else if shape.len() < spatial_dims {
        // "zyx" alone does not fit a plane's two axes.
        "; a single plane is a volume of one plane: add a leading axis of length 1 (image[None] in Python; \
         --axes zyx on the command line reads a plane so)"
    } else {
        ""
    };
    Err(Error::InvalidArgument {
        argument: "axes",
        message: format!(
            "cannot tell the axes of an array of shape {shape:?} for a {spatial_dims}-D model with {channels}: \
             name them (axes= in Python, --axes on the command line), e.g. {spatial}, c{spatial} or {spatial}c{stack}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_or_a_row_is_no_image_whatever_its_axes() {
        for shape in [&[][..], &[5][..]] {
            let err = infer_axes(shape, 2, 1).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { argument: "image", message } if message.contains("not an image")),
                "{err:?}"
            );
        }
        assert_eq!(infer_axes(&[5, 6], 2, 1).unwrap(), "yx");
    }

    #[test]
    fn channels_last_orders_are_inverse_permutations() {
        assert_eq!(channels_first_order(4), vec![0, 3, 1, 2]);
        assert_eq!(channels_last_order(4), vec![0, 2, 3, 1]);
        assert_eq!(channels_first_order(5), vec![0, 4, 1, 2, 3]);
        assert_eq!(channels_last_order(5), vec![0, 2, 3, 4, 1]);
        for rank in 3..=5 {
            let (first, last) = (channels_first_order(rank), channels_last_order(rank));
            let composed: Vec<i64> = first.iter().map(|&i| last[i as usize]).collect();
            assert_eq!(composed, (0..rank as i64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn spatial_channels_first_or_last_and_ambiguity() {
        assert_eq!(infer_axes(&[5, 6, 7], 3, 1).unwrap(), "zyx");
        assert_eq!(infer_axes(&[2, 5, 6, 7], 3, 2).unwrap(), "czyx");
        assert_eq!(infer_axes(&[5, 6, 7, 2], 3, 2).unwrap(), "zyxc");
        assert_eq!(infer_axes(&[3, 50, 60], 2, 3).unwrap(), "cyx");
        assert_eq!(infer_axes(&[50, 60, 1], 2, 1).unwrap(), "yxc");
        for (shape, dims, channels) in [
            (&[3, 50, 3][..], 2, 3),
            (&[1, 50, 1][..], 2, 1),
            (&[4, 50, 60][..], 2, 3),
            (&[2, 3, 50, 60][..], 2, 3),
        ] {
            let err = infer_axes(shape, dims, channels).unwrap_err().to_string();
            assert!(
                err.contains("invalid axes") && err.contains("name them"),
                "{err}"
            );
        }
        assert!(infer_axes(&[4, 50, 60], 2, 1)
            .unwrap_err()
            .to_string()
            .contains("byx (or zyx)"));
    }

    #[test]
    fn parses_letters_once_with_y_and_x() {
        assert_eq!(parse_axes("YXC").unwrap(), "yxc");
        for (text, message) in [
            ("yxt", "unknown axis 't'"),
            (" yx", "unknown axis ' '"),
            ("yyx", "'y' appears twice"),
            ("zc", "no y and x"),
        ] {
            let err = parse_axes(text).unwrap_err().to_string();
            assert!(
                err.contains("invalid axes") && err.contains(message),
                "{err}"
            );
        }
    }

    fn arranged(
        shape: &[usize],
        axes: &str,
        dims: usize,
        channels: usize,
    ) -> Result<(Vec<usize>, bool)> {
        let a = Arrangement::of(shape, Some(axes), dims, channels)?;
        let data = ndarray::ArrayD::<u8>::zeros(IxDyn(shape));
        Ok((a.arrange(data.view())?.shape().to_vec(), a.batched()))
    }

    #[test]
    fn arranges_batches_channels_stacks_and_volumes() {
        assert_eq!(
            arranged(&[4, 5, 6], "zyx", 2, 1).unwrap(),
            (vec![4, 1, 5, 6], true)
        );
        assert_eq!(
            arranged(&[4, 5, 6], "zyx", 3, 1).unwrap(),
            (vec![1, 1, 4, 5, 6], false)
        );
        assert_eq!(
            arranged(&[4, 5, 6], "yxc", 2, 6).unwrap(),
            (vec![1, 6, 4, 5], false)
        );
        assert_eq!(
            arranged(&[5, 6, 2], "yxb", 2, 1).unwrap(),
            (vec![2, 1, 5, 6], true)
        );
        assert_eq!(
            arranged(&[2, 3, 4, 5, 6], "bczyx", 3, 3).unwrap(),
            (vec![2, 3, 4, 5, 6], true)
        );
        assert_eq!(
            arranged(&[3, 2, 4, 5], "cbyx", 2, 3).unwrap(),
            (vec![2, 3, 4, 5], true)
        );
        // The view reads the same pixel.
        let data = ndarray::ArrayD::from_shape_fn(IxDyn(&[4, 5, 6]), |i| {
            (i[0] * 30 + i[1] * 6 + i[2]) as u16
        });
        let a = Arrangement::of(&[4, 5, 6], Some("yxc"), 2, 6).unwrap();
        assert_eq!(
            a.arrange(data.view()).unwrap()[[0, 2, 1, 3]],
            data[[1, 3, 2]]
        );
        for (shape, axes, dims, channels, message) in [
            (
                &[4, 5, 6][..],
                "cyx",
                2,
                1,
                "invalid image: the model takes 1 input channel(s)",
            ),
            (&[4, 5, 6][..], "cyx", 3, 4, "does not describe"),
            (&[4, 5, 6][..], "yx", 2, 1, "does not describe"),
            (&[2, 4, 5, 6][..], "bzyx", 2, 1, "does not describe"),
            (&[4, 5, 6][..], "byx", 3, 1, "does not describe"),
            (&[5, 6][..], "yxc", 2, 1, "does not describe"),
        ] {
            let err = arranged(shape, axes, dims, channels)
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{axes} {shape:?}: {err}");
        }
        assert!(Arrangement::of(&[4, 5], Some("yx"), 7, 1).is_err());
        let a = Arrangement::of(&[4, 5, 6], Some("zyx"), 2, 1).unwrap();
        let other = ndarray::ArrayD::<u8>::zeros(IxDyn(&[4, 5]));
        assert!(a.arrange(other.view()).is_err());
    }
}
