//! Loading a TorchScript model and running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};
use tch::{CModule, Device, Tensor};

use crate::convert::{array_from_tensor, tensor_from_view};
use crate::error::{first_line, Error, Result};
use crate::metadata::{Metadata, Normalization, OutputKind, Padding};
use crate::precision::Precision;
use crate::probe::probe;

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
    fn from_metadata(m: &Metadata, first_layer_width: Option<usize>) -> Self {
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
        crate::geometry::is_valid_size(size, self.size_offset, self.size_multiple) && size > self.shrink()
    }

    /// Pixels an input loses along one axis (both sides together).
    pub fn shrink(&self) -> usize {
        match self.padding {
            Padding::Valid => 2 * self.halo,
            Padding::Same => 0,
        }
    }

    /// The smallest valid input size.
    pub fn smallest_valid_size(&self) -> usize {
        (self.size_offset..)
            .step_by(self.size_multiple)
            .find(|&s| self.is_valid_size(s))
            .unwrap_or(self.size_multiple)
    }
}

/// A TorchScript model loaded once onto one device, in one precision, and
/// shared: cloning a `Model` is cheap and clones may be used from any thread.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

struct Inner {
    module: CModule,
    device: Device,
    precision: Precision,
    path: PathBuf,
    metadata: Option<Metadata>,
    info: ModelInfo,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.inner.path)
            .field("device", &self.inner.device)
            .field("precision", &self.inner.precision)
            .field("name", &self.inner.metadata.as_ref().map(|m| &m.name))
            .finish()
    }
}

impl Model {
    /// Loads a TorchScript archive onto `device` in fp32 and eval mode.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`] when the file is missing, [`Error::InvalidModel`]
    /// when it is not a TorchScript archive (or, without metadata, cannot be
    /// probed), [`Error::InvalidMetadata`] when its description is malformed.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with_precision(path, device, Precision::Fp32)
    }

    /// Loads a model and converts its weights to `precision` (resolved for
    /// the device: `Auto` picks bf16 on CUDA and on CPUs with bf16 units).
    /// Convolution weights are also laid out channels-last, the layout
    /// oneDNN and cuDNN run fastest.
    pub fn load_with_precision(path: impl AsRef<Path>, device: Device, precision: Precision) -> Result<Self> {
        let path = path.as_ref();
        let precision = precision.resolve(device)?;
        // Reading the metadata first also tells a missing or non-zip file apart
        // from a broken network, with a message that says which.
        let metadata = Metadata::read_from_archive(path)?;
        let module = CModule::load_on_device(path, device).map_err(|e| invalid_model(path, &e))?;
        Self::from_module(module, path, metadata, device, precision)
    }

    /// Loads a model from the bytes of a TorchScript archive (a model
    /// embedded in a program, say); `name` stands for its path in messages
    /// and in [`Model::path`].
    pub fn load_bytes(bytes: &[u8], name: impl AsRef<Path>, device: Device, precision: Precision) -> Result<Self> {
        let name = name.as_ref();
        let precision = precision.resolve(device)?;
        let metadata = Metadata::read_from_zip(std::io::Cursor::new(bytes), name)?;
        let module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
            .map_err(|e| invalid_model(name, &e))?;
        Self::from_module(module, name, metadata, device, precision)
    }

    fn from_module(
        mut module: CModule,
        path: &Path,
        metadata: Option<Metadata>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        let invalid = |e: tch::TchError| invalid_model(path, &e);
        module.set_eval();
        let info = match &metadata {
            Some(m) => ModelInfo::from_metadata(m, first_layer_width(&module)),
            None => probe(&module, device, path)?,
        };
        let precision = convert_weights(&mut module, device, precision).map_err(invalid)?;
        Ok(Self { inner: Arc::new(Inner { module, device, precision, path: path.to_owned(), metadata, info }) })
    }

    /// The embedded description, if the archive has one.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.inner.metadata.as_ref()
    }

    /// The geometry and meaning of the network (from metadata or probing).
    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// The precision the weights were converted to (never `Auto`).
    pub fn precision(&self) -> Precision {
        self.inner.precision
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs the network on a batch tensor already on the model's device and
    /// in its precision. Forward passes on one device are serialised across
    /// all models and threads of the process: libtorch parallelises inside
    /// each pass (intra-op threads on the CPU, the whole GPU), and concurrent
    /// passes would only oversubscribe the cores, each caller spinning its
    /// own OpenMP pool.
    pub(crate) fn forward_tensor(&self, input: &Tensor) -> Result<Tensor> {
        let _turn = device_lock(self.inner.device).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inner.module.forward_ts(&[input]).map_err(Error::inference)
    }

    /// One forward pass on a batch laid out as `(N, C, spatial...)`, returning
    /// the network's raw output on the CPU as `f32`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a wrong rank, channel count or spatial
    /// size; [`Error::Inference`] when libtorch fails.
    pub fn forward_array(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.check_batch_shape(input.shape())?;
        let _guard = tch::no_grad_guard();
        let tensor = tensor_from_view(&input)?
            .f_to_device(self.inner.device)
            .and_then(|t| t.f_to_kind(self.inner.precision.kind()))
            .map_err(Error::inference)?;
        array_from_tensor(&self.forward_tensor(&tensor)?)
    }

    fn check_batch_shape(&self, shape: &[usize]) -> Result<()> {
        let info = &self.inner.info;
        let invalid = |message: String| Error::InvalidArgument { argument: "batch", message };
        if shape.len() != info.spatial_dims + 2 {
            return Err(invalid(format!(
                "expected a batch of rank {} laid out as (N, C, spatial...), got shape {shape:?}",
                info.spatial_dims + 2
            )));
        }
        if shape.iter().any(|&d| d == 0) {
            return Err(invalid(format!("empty array of shape {shape:?}")));
        }
        if let Some(&bad) = shape[2..].iter().find(|&&s| !info.is_valid_size(s)) {
            return Err(invalid(format!(
                "spatial size {bad} is not a valid input size for this model: valid sizes are \
                 {} + k * {} from {} up (shape {shape:?})",
                info.size_offset,
                info.size_multiple,
                info.smallest_valid_size()
            )));
        }
        if shape[1] != info.in_channels {
            return Err(invalid(format!(
                "the model takes {} input channel(s), the array has {} (shape {shape:?})",
                info.in_channels, shape[1]
            )));
        }
        Ok(())
    }
}

/// One lock per device: the CPU, then CUDA devices by index.
fn device_lock(device: Device) -> &'static std::sync::Mutex<()> {
    const DEVICES: usize = 65;
    static LOCKS: [std::sync::Mutex<()>; DEVICES] = [const { std::sync::Mutex::new(()) }; DEVICES];
    let slot = match device {
        Device::Cuda(i) => (i + 1).min(DEVICES - 1),
        _ => 0,
    };
    &LOCKS[slot]
}

fn invalid_model(path: &Path, err: &tch::TchError) -> Error {
    Error::InvalidModel { path: path.to_owned(), reason: first_line(&err.to_string()) }
}

fn first_layer_width(module: &CModule) -> Option<usize> {
    let params = module.named_parameters().ok()?;
    let (_, weight) = params.iter().find(|(_, p)| matches!(p.dim(), 4 | 5))?;
    usize::try_from(weight.size()[0]).ok()
}

/// Converts parameters and buffers to `precision` and lays convolution
/// weights out channels-last. A frozen module keeps its weights as graph
/// constants that cannot be converted: it stays in fp32, and the precision
/// actually used is returned.
fn convert_weights(module: &mut CModule, device: Device, precision: Precision) -> Result<Precision, tch::TchError> {
    let mut params = module.named_parameters()?;
    if params.is_empty() {
        return Ok(Precision::Fp32);
    }
    if precision != Precision::Fp32 {
        module.to(device, precision.kind(), false);
        params = module.named_parameters()?;
    }
    let _guard = tch::no_grad_guard();
    for (_, p) in params.iter_mut() {
        let to_last: &[i64] = match p.dim() {
            4 => &[0, 2, 3, 1],
            5 => &[0, 2, 3, 4, 1],
            _ => continue,
        };
        let mut back = vec![0i64; to_last.len()];
        for (i, &d) in to_last.iter().enumerate() {
            back[d as usize] = i as i64;
        }
        // A channels-last tensor is the NCHW view of a contiguous NHWC one.
        let channels_last = p.f_permute(to_last)?.f_contiguous()?.f_permute(back.as_slice())?;
        p.f_set_data(&channels_last)?;
    }
    Ok(precision)
}
