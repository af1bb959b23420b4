//! Which axis of an array is which, when the caller does not say: one rule
//! for the Python API, the CLI and Rust, so that the same array is read the
//! same way everywhere.

use crate::error::{Error, Result};

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
/// the choices that would fit.
pub fn infer_axes(shape: &[usize], spatial_dims: usize, in_channels: usize) -> Result<String> {
    let spatial = spatial_axes(spatial_dims);
    let ndim = shape.len();
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
        "; a stack of 2-D images is byx in Python, zyx on the command line"
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
            (&[50][..], 2, 1),
            (&[2, 3, 50, 60][..], 2, 3),
            (&[][..], 2, 1),
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
            .contains("byx in Python"));
    }
}
