//! Loading a TorchScript model and running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};
use tch::{CModule, Device};

use crate::convert::{array_from_tensor, tensor_from_view};
use crate::error::{first_line, Error, Result};
use crate::metadata::Metadata;

/// A TorchScript model loaded once onto one device and shared: cloning a
/// `Model` is cheap and every clone may be used from any thread.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

struct Inner {
    module: CModule,
    device: Device,
    path: PathBuf,
    metadata: Option<Metadata>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.inner.path)
            .field("device", &self.inner.device)
            .field("metadata", &self.inner.metadata.as_ref().map(|m| &m.name))
            .finish()
    }
}

impl Model {
    /// Loads a TorchScript archive onto `device` in eval mode.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`] when the file is missing, [`Error::InvalidModel`]
    /// when it is not a TorchScript archive, [`Error::InvalidMetadata`] when its
    /// embedded description is malformed.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        // Reading the metadata first also tells a missing or non-zip file apart
        // from a broken network, with a message that says which.
        let metadata = Metadata::read_from_archive(path)?;
        let mut module = CModule::load_on_device(path, device).map_err(|e| Error::InvalidModel {
            path: path.to_owned(),
            reason: first_line(&e.to_string()),
        })?;
        module.set_eval();
        Ok(Self { inner: Arc::new(Inner { module, device, path: path.to_owned(), metadata }) })
    }

    /// The embedded description, if the archive has one.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.inner.metadata.as_ref()
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// One forward pass on a batch laid out as `(N, C, spatial...)`, returning
    /// the network's raw output on the CPU as `f32`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a wrong rank or channel count (checked
    /// against the metadata when present), [`Error::Inference`] when libtorch
    /// rejects the input (for instance a size the network cannot take).
    pub fn forward_array(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.check_batch_shape(input.shape())?;
        let _guard = tch::no_grad_guard();
        let tensor = tensor_from_view(&input)?
            .f_to_device(self.inner.device)
            .map_err(Error::inference)?;
        let output = self.inner.module.forward_ts(&[tensor]).map_err(Error::inference)?;
        array_from_tensor(&output)
    }

    fn check_batch_shape(&self, shape: &[usize]) -> Result<()> {
        let invalid = |message: String| Error::InvalidArgument { argument: "image", message };
        let ranks: &[usize] = match &self.inner.metadata {
            Some(m) if m.spatial_dims == 3 => &[5],
            Some(_) => &[4],
            None => &[4, 5],
        };
        if !ranks.contains(&shape.len()) {
            return Err(invalid(format!(
                "expected a batch of rank {} laid out as (N, C, spatial...), got shape {shape:?}",
                ranks.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
            )));
        }
        if shape.iter().any(|&d| d == 0) {
            return Err(invalid(format!("empty array of shape {shape:?}")));
        }
        if let Some(m) = &self.inner.metadata {
            if let Some(&bad) = shape[2..].iter().find(|&&s| !m.is_valid_size(s) || m.output_size(s) == 0) {
                let smallest = (m.size_offset..).step_by(m.size_multiple).find(|&s| s > 2 * m.halo).unwrap_or(0);
                return Err(invalid(format!(
                    "spatial size {bad} is not a valid input size for this model: valid sizes are \
                     {} + k * {} from {smallest} up (shape {shape:?})",
                    m.size_offset, m.size_multiple
                )));
            }
            if shape[1] != m.in_channels {
                return Err(invalid(format!(
                    "the model takes {} input channel(s), the array has {} (shape {shape:?})",
                    m.in_channels, shape[1]
                )));
            }
        }
        Ok(())
    }
}
