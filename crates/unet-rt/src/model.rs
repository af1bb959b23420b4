//! Loading a TorchScript model and running it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use ndarray::{ArrayD, ArrayViewD};
use tch::{CModule, Device, Kind, Tensor};

use crate::archive;
use crate::container;
use crate::convert::{array_from_tensor, tensor_from_view};
use crate::error::{first_line, Error, Result};
use crate::info::ModelInfo;
use crate::memory;
use crate::metadata::Metadata;
use crate::precision::Precision;
use crate::probe;
use crate::process;
use crate::torch_calls;

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
    /// Copies on further devices, which share the work of a call (see
    /// [`Model::load_on_devices`]); each has none of its own.
    replicas: Vec<Model>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.inner.path)
            .field("device", &self.inner.device)
            .field("replicas", &self.inner.replicas.len())
            .field("precision", &self.inner.precision)
            .field("name", &self.inner.metadata.as_ref().map(|m| &m.name))
            .finish()
    }
}

/// The stack the thread each load runs on has (see [`Model::load`]): libtorch's
/// TorchScript compiler recurses once per level of the code's nesting, and
/// Rust's default 2 MiB stack overflowed (killing the process) at a sum of
/// a few thousand terms that an 8 MiB main thread loaded. The loader
/// refuses code nested beyond [`MAX_CODE_NESTING`](crate::MAX_CODE_NESTING)
/// levels; this leaves room for what it does not count. The pages are only
/// reserved until touched.
pub const LOAD_THREAD_STACK: usize = 64 << 20;

/// The name of a thread of [`LOAD_THREAD_STACK`] bytes of stack that loads
/// models: a load on a thread of this name runs there, any other load on
/// a thread of its own.
pub const LOAD_THREAD_NAME: &str = "unet-rt-load";

impl Model {
    /// Loads a TorchScript archive onto `device` in eval mode, in
    /// [`Precision::DEFAULT`] (fp32). The load runs on a thread of its own
    /// with [`LOAD_THREAD_STACK`] bytes of stack, whatever the caller's.
    ///
    /// # Errors
    /// [`Error::ModelNotFound`] when the file is missing, [`Error::InvalidModel`]
    /// when it is not a TorchScript archive (or, without metadata, cannot be
    /// probed), [`Error::InvalidMetadata`] when its description is malformed.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::load_with_precision(path, device, Precision::DEFAULT)
    }

    /// Loads a model and converts its weights to `precision` (resolved for
    /// the device: `Auto` picks bf16 on CUDA and on CPUs with bf16 units).
    /// Convolution weights are also laid out channels-last, the layout
    /// oneDNN and cuDNN run fastest.
    pub fn load_with_precision(
        path: impl AsRef<Path>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        let path = path.as_ref();
        on_load_stack(|| Self::load_here(path, device, precision))
    }

    fn load_here(path: &Path, device: Device, precision: Precision) -> Result<Self> {
        crate::check_device_present(device)?;
        let precision = precision.resolve(device)?;
        // Reading the archive first tells a missing or non-zip file apart from
        // a broken network, with a message that says which, and refuses
        // damaged tensor records before libtorch reads past their ends.
        let mut zip = archive::open_zip(archive::open_file(path)?, path)?;
        archive::check_torchscript(&zip, path)?;
        let mut metadata = Metadata::from_zip(&mut zip, path)?;
        archive::check_records(&mut zip, path)?;
        archive::check_entries(&mut zip, path)?;
        drop_verified_for_other_code(&mut metadata, &mut zip);
        let ops = archive::whole_tile_ops(&mut zip);
        let module = match path.to_str() {
            Some(_) => {
                drop(zip);
                CModule::load_on_device(path, device)
            }
            // libtorch takes the path as a string, and this name is not
            // UTF-8 (a Latin-1 file name on Linux): the archive already open
            // is handed over as bytes.
            None => CModule::load_data_on_device(
                &mut std::io::Cursor::new(read_whole(zip.into_inner(), path)?),
                device,
            ),
        }
        .map_err(|e| invalid_model(path, &e))?;
        Self::from_module(module, path, metadata, ops, device, precision)
    }

    /// Loads the model once per device of `devices` (the first one is
    /// [`Model::device`]): a [`Segmenter`](crate::Segmenter) spreads its
    /// batches over them, each device running its own forward passes, and
    /// the result is the one each device would give alone (the tiling is
    /// planned for the first device; the same tiles run everywhere).
    ///
    /// # Errors
    /// As [`Model::load_with_precision`] on any of the devices;
    /// [`Error::InvalidArgument`] for no device or for the CPU mixed with
    /// GPUs.
    pub fn load_on_devices(
        path: impl AsRef<Path>,
        devices: &[Device],
        precision: Precision,
    ) -> Result<Self> {
        let path = path.as_ref();
        Self::replicated(devices, |device| {
            Self::load_with_precision(path, device, precision)
        })
    }

    /// [`Model::load_bytes`] once per device of `devices`, as
    /// [`Model::load_on_devices`].
    ///
    /// # Errors
    /// As [`Model::load_on_devices`].
    pub fn load_bytes_on_devices(
        bytes: &[u8],
        name: impl AsRef<Path>,
        devices: &[Device],
        precision: Precision,
    ) -> Result<Self> {
        let name = name.as_ref();
        Self::replicated(devices, |device| {
            Self::load_bytes(bytes, name, device, precision)
        })
    }

    fn replicated(devices: &[Device], load: impl Fn(Device) -> Result<Self>) -> Result<Self> {
        let (&first, rest) = devices
            .split_first()
            .ok_or_else(|| Error::InvalidArgument {
                argument: "device",
                message: "no device to load the model on".to_owned(),
            })?;
        check_devices(first, rest)?;
        let mut model = load(first)?;
        let replicas = rest.iter().map(|&d| load(d)).collect::<Result<Vec<_>>>()?;
        match Arc::get_mut(&mut model.inner) {
            Some(inner) => inner.replicas = replicas,
            None => {
                return Err(Error::Internal(
                    "a freshly loaded model is shared".to_owned(),
                ))
            }
        }
        Ok(model)
    }

    /// Every device the model runs on: [`Model::device`], then those of
    /// [`Model::load_on_devices`].
    pub fn devices(&self) -> Vec<Device> {
        self.replicas().map(Model::device).collect()
    }

    /// The model on each of its [`Model::devices`], this one first.
    pub(crate) fn replicas(&self) -> impl Iterator<Item = &Model> {
        std::iter::once(self).chain(self.inner.replicas.iter())
    }

    /// Loads a model from the bytes of a TorchScript archive (a model
    /// embedded in a program, say); `name` stands for its path in messages
    /// and in [`Model::path`].
    pub fn load_bytes(
        bytes: &[u8],
        name: impl AsRef<Path>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        let name = name.as_ref();
        on_load_stack(|| Self::load_bytes_here(bytes, name, device, precision))
    }

    fn load_bytes_here(
        bytes: &[u8],
        name: &Path,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        crate::check_device_present(device)?;
        let precision = precision.resolve(device)?;
        let mut zip = archive::open_zip(std::io::Cursor::new(bytes), name)?;
        archive::check_torchscript(&zip, name)?;
        let mut metadata = Metadata::from_zip(&mut zip, name)?;
        archive::check_records(&mut zip, name)?;
        archive::check_entries(&mut zip, name)?;
        drop_verified_for_other_code(&mut metadata, &mut zip);
        let ops = archive::whole_tile_ops(&mut zip);
        let module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
            .map_err(|e| invalid_model(name, &e))?;
        Self::from_module(module, name, metadata, ops, device, precision)
    }

    fn from_module(
        mut module: CModule,
        path: &Path,
        metadata: Option<Metadata>,
        whole_tile_ops: Vec<String>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        // Probing and the load-time checks run the network on this thread.
        let _work = process::begin()?;
        let invalid = |e: tch::TchError| invalid_model(path, &e);
        align_cpu_threads();
        module.f_set_eval().map_err(invalid)?;
        if has_non_float32_weights(&module) {
            // Saved after `.half()`, `.bfloat16()` or `.double()`: probing,
            // the load-time checks and the pipeline feed float32, and the
            // chosen precision converts from there.
            torch_calls::module_to(&mut module, device, Kind::Float)
                .map_err(|why| unconvertible(path, "float32", &why))?;
        }
        let mut info = match &metadata {
            Some(m) => {
                let mut info = ModelInfo::from_metadata(m, first_layer_width(&module));
                info.exactness.whole_tile_ops = whole_tile_ops;
                info.exactness.one_input_size = info.fixed_size > 0;
                info
            }
            // Without metadata the network sees pixel values as they are.
            None => probe::probe(&module, device, path, whole_tile_ops, true)?,
        };
        // Contradictions of the metadata are errors before anything is
        // measured with it.
        let passes = probe::check_passes(&module, device, path, &info)?;
        info.exactness.batch_dependent = passes.batch_dependent;
        info.exactness.nondeterministic = passes.nondeterministic;
        info.exactness.one_image_per_pass = passes.one_image_per_pass;
        info.exactness.contiguous_input = passes.contiguous_input;
        if metadata.is_some() {
            if !info.exactness.whole_tile_ops.is_empty() {
                // Declared geometry cannot make such layers exact: say how
                // close tiles come. A failed measurement leaves the finding
                // from the code alone.
                info.exactness.measured =
                    probe::unless_cancelled(probe::measure(&module, device, path, &info))?;
            } else if !info.exactness.nondeterministic
                && !verified_at_export(metadata.as_ref(), &info, &module)
            {
                // A same-padded network's reach and pooling grid show only
                // in what tiles compute, and so does what any network
                // computes over the whole tile beyond the code scan's
                // list (tiles differ anyway where passes do).
                if let Some((measured, mismatch)) =
                    probe::check_tiles(&module, device, path, &info)?
                {
                    info.exactness.measured = Some(measured);
                    info.exactness.undeclared_geometry = mismatch;
                }
            }
        }
        let precision = convert_weights(&mut module, device, precision, path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                module,
                device,
                precision,
                path: path.to_owned(),
                metadata,
                info,
                replicas: Vec::new(),
            }),
        })
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
    ///
    /// The pass runs on the device's forward thread (see [`process::run_forward`]),
    /// which also serialises it. While it runs, the caller looks at `cancel`
    /// every [`CANCEL_POLL`]: once set, the call returns
    /// [`Error::Cancelled`] at once, and the pass finishes in the background
    /// with its result dropped, so that cancelling never waits for a long
    /// forward pass.
    pub(crate) fn forward_tensor(
        &self,
        input: &Tensor,
        cancel: Option<&AtomicBool>,
    ) -> Result<Tensor> {
        let (reply_tx, reply_rx) = sync_channel::<Result<Tensor>>(1);
        let model = self.clone();
        let input = if self.inner.info.exactness.contiguous_input {
            input.f_contiguous().map_err(Error::inference)?
        } else {
            input.shallow_clone()
        };
        process::run_forward(
            self.inner.device,
            Box::new(move || {
                let output = model
                    .inner
                    .module
                    .forward_is(&[tch::IValue::Tensor(input)])
                    .map_err(Error::inference)
                    .and_then(|value| {
                        container::select(value, model.inner.info.output_key.as_ref())
                            .map(|(tensor, _)| tensor)
                            .map_err(Error::Inference)
                    })
                    .and_then(floating);
                // The caller may have stopped waiting (cancelled): nothing to do then.
                let _ = reply_tx.send(output);
            }),
        )?;
        let lost =
            || Error::Internal("the forward thread stopped during a forward pass".to_owned());
        let Some(cancel) = cancel else {
            return reply_rx.recv().map_err(|_| lost())?;
        };
        loop {
            match reply_rx.recv_timeout(CANCEL_POLL) {
                Ok(output) => return output,
                Err(RecvTimeoutError::Timeout)
                    if cancel.load(Ordering::Relaxed) || process::stopping() =>
                {
                    return Err(Error::Cancelled)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(lost()),
            }
        }
    }

    /// One forward pass on a batch laid out as `(N, C, spatial...)`, returning
    /// the network's raw output on the CPU as `f32`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a wrong rank, channel count or spatial
    /// size; [`Error::Inference`] when libtorch fails.
    /// NaN or infinity in the batch is [`Error::InvalidArgument`], and in
    /// the network's output [`Error::NonFinite`].
    pub fn forward_array(&self, input: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.forward_array_cancellable(input, None)
    }

    /// [`Self::forward_array`], returning [`Error::Cancelled`] within
    /// `CANCEL_POLL` (20 ms) once `cancel` is set: the pass finishes in the
    /// background on its own copy of the batch, its result dropped (Ctrl-C
    /// waited for the whole pass, seconds for a large batch).
    ///
    /// # Errors
    /// As [`Self::forward_array`], and [`Error::Cancelled`].
    pub fn forward_array_cancellable(
        &self,
        input: ArrayViewD<'_, f32>,
        cancel: Option<&AtomicBool>,
    ) -> Result<ArrayD<f32>> {
        self.check_batch_shape(input.shape())?;
        // Before the values are read: a broadcast (zero-stride) batch can
        // describe more than the machine holds, and scanning it alone would
        // take minutes.
        let pixels = input.shape()[2..]
            .iter()
            .fold(1u128, |n, &d| n.saturating_mul(d as u128));
        let element = self.inner.precision.kind().elt_size_in_bytes();
        memory::check_fits(
            crate::engine::forward_host_bytes(
                &self.inner.info,
                pixels,
                input.shape()[0] as u128,
                element,
                self.inner.device,
            ),
            "batch",
            "the forward pass of this batch",
        )?;
        if input.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument {
                argument: "batch",
                message: "holds NaN or infinite values (or values beyond the float32 range)"
                    .to_owned(),
            });
        }
        let _guard = tch::no_grad_guard();
        let tensor = tensor_from_view(&input)?
            .f_to_device(self.inner.device)
            .and_then(|t| t.f_to_kind(self.inner.precision.kind()))
            .map_err(Error::inference)?;
        let output = array_from_tensor(&self.forward_tensor(&tensor, cancel)?)?;
        if output.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(
                "the network's output holds NaN or infinite values".to_owned(),
            ));
        }
        Ok(output)
    }

    fn check_batch_shape(&self, shape: &[usize]) -> Result<()> {
        let info = &self.inner.info;
        let invalid = |message: String| Error::InvalidArgument {
            argument: "batch",
            message,
        };
        if shape.len() != info.spatial_dims + 2 {
            return Err(invalid(format!(
                "expected a batch of rank {} laid out as (N, C, spatial...), got shape {shape:?}",
                info.spatial_dims + 2
            )));
        }
        if shape.contains(&0) {
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

/// How often a waiting forward pass looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// Runs a load on a thread of [`LOAD_THREAD_STACK`] bytes of stack: on a
/// caller's small one (a service's worker threads, 256 KiB) libtorch's
/// compiler overflowed it and the process was killed (SIGABRT). A panic
/// in the load is the caller's again.
/// A thread of [`LOAD_THREAD_NAME`] (the command line's and the Python
/// binding's loads, which wait for theirs interruptibly) is taken to have
/// that stack already, and loads on itself: a panic the core catches there
/// stays within the thread whose panic hook knows it is caught.
fn on_load_stack<T: Send>(load: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if std::thread::current().name() == Some(LOAD_THREAD_NAME) {
        return load();
    }
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name(LOAD_THREAD_NAME.to_owned())
            .stack_size(LOAD_THREAD_STACK)
            .spawn_scoped(scope, load)
            .map_err(|e| {
                Error::Internal(format!("cannot start a thread to load the model: {e}"))
            })?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Devices for one model: all of one kind (the tiling is planned once, for
/// the first). A device listed twice only adds a worker that waits for the
/// same device (its passes run one at a time).
fn check_devices(first: Device, rest: &[Device]) -> Result<()> {
    match rest.iter().find(|d| d.is_cuda() != first.is_cuda()) {
        Some(_) => Err(Error::InvalidArgument {
            argument: "device",
            message: format!(
                "{:?} mixes the CPU and GPUs; a model runs on GPUs or on the CPU",
                std::iter::once(&first).chain(rest).collect::<Vec<_>>()
            ),
        }),
        None => Ok(()),
    }
}

/// The network's output if its values are real floating-point numbers in a
/// dense (strided) tensor: complex values would lose their imaginary part
/// in the conversion to float32, integers or booleans are no logits or
/// probabilities, and sparse or oneDNN tensors have no strides, which the
/// engine reads (and libtorch throws when asked for them).
fn floating(output: Tensor) -> Result<Tensor> {
    for (layout, odd) in [
        ("sparse", output.is_sparse()),
        ("mkldnn", output.is_mkldnn()),
        // Sparse CSR/CSC/BSR and nested tensors: libtorch has no strides
        // to give.
        ("non-strided", torch_calls::strides(&output).is_err()),
    ] {
        if odd {
            return Err(Error::Inference(format!(
                "the network returns a {layout} tensor; unet_rt needs a dense (strided) one (return .to_dense())"
            )));
        }
    }
    match output.kind() {
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => Ok(output),
        other => Err(Error::Inference(format!(
            "the network returns {other:?} values; unet_rt needs real floating-point logits or probabilities"
        ))),
    }
}

/// The whole of an open model file, read into memory allocated fallibly.
fn read_whole(mut file: std::fs::File, path: &Path) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source: std::io::Error| Error::Io {
        path: path.to_owned(),
        source,
    };
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut bytes = memory::try_with_capacity(len, len as u128, "path", "the model file")?;
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// A module whose tensors libtorch cannot convert to `to` (a quantized
/// buffer).
fn unconvertible(path: &Path, to: &str, why: &str) -> Error {
    Error::InvalidModel {
        path: path.to_owned(),
        reason: format!(
            "its tensors cannot be converted to {to}: {} (unet_rt runs float networks; \
             a quantized tensor among its buffers cannot be)",
            first_line(why)
        ),
    }
}

fn invalid_model(path: &Path, err: &tch::TchError) -> Error {
    let mut reason = first_line(&err.to_string());
    if reason.contains("required keyword attribute") {
        // What libtorch says of the archives torch.jit.optimize_for_inference
        // writes (torch.jit.load fails on them the same way).
        reason.push_str(
            " (libtorch cannot load what torch.jit.optimize_for_inference returns: \
             save the scripted or traced module instead)",
        );
    }
    Error::InvalidModel {
        path: path.to_owned(),
        reason,
    }
}

fn first_layer_width(module: &CModule) -> Option<usize> {
    let params = module.named_parameters().ok()?;
    let (_, weight) = params.iter().find(|(_, p)| matches!(p.dim(), 4 | 5))?;
    usize::try_from(weight.size()[0]).ok()
}

/// Drops the exporter's verified record where this archive's code is not
/// the code it was measured with ([`archive::code_digest`]).
fn drop_verified_for_other_code<R: std::io::Read + std::io::Seek>(
    metadata: &mut Option<Metadata>,
    zip: &mut zip::ZipArchive<R>,
) {
    if let Some(m) = metadata.as_mut().filter(|m| m.verified.is_some()) {
        let recorded = m.verified.as_ref().and_then(|v| v.code.clone());
        if recorded.is_none() || recorded != archive::code_digest(zip) {
            m.verified = None;
        }
    }
}

/// Whether the exporter's record ([`crate::metadata::Verified`]) holds for
/// this geometry and these weights: the same halo and size multiple, and
/// parameters of the same count and total magnitude (relative 1e-9: sums
/// in another order round differently). Metadata copied onto another
/// network, or a halo edited by hand, is measured again.
fn verified_at_export(metadata: Option<&Metadata>, info: &ModelInfo, module: &CModule) -> bool {
    let Some(record) = metadata.and_then(|m| m.verified.as_ref()) else {
        return false;
    };
    if record.halo != info.halo || record.size_multiple != info.size_multiple {
        return false;
    }
    let Ok(params) = module.named_parameters() else {
        return false;
    };
    let _guard = tch::no_grad_guard();
    let mut count = 0u64;
    let mut abs_sum = 0f64;
    for (_, p) in &params {
        count = count.saturating_add(u64::try_from(p.numel()).unwrap_or(u64::MAX));
        let Ok(sum) = p
            .f_abs()
            .and_then(|a| a.f_sum(Kind::Double))
            .map(|s| s.double_value(&[]))
        else {
            return false;
        };
        abs_sum += sum;
    }
    count > 0
        && count == record.parameters
        && (abs_sum - record.abs_sum).abs() <= 1e-9 * abs_sum.abs().max(f64::MIN_POSITIVE)
}

/// Whether a floating-point parameter of `module` is not float32. A frozen
/// module (weights as graph constants) has none to find or convert.
fn has_non_float32_weights(module: &CModule) -> bool {
    module.named_parameters().is_ok_and(|params| {
        params
            .iter()
            .any(|(_, p)| matches!(p.kind(), Kind::Half | Kind::BFloat16 | Kind::Double))
    })
}

/// Converts parameters and buffers to `precision` and lays convolution
/// weights out channels-last. A frozen module keeps its weights as graph
/// constants that cannot be converted: it stays in fp32, and the precision
/// actually used is returned.
fn convert_weights(
    module: &mut CModule,
    device: Device,
    precision: Precision,
    path: &Path,
) -> Result<Precision> {
    let invalid = |e: tch::TchError| invalid_model(path, &e);
    let mut params = module.named_parameters().map_err(invalid)?;
    if params.is_empty() {
        return Ok(Precision::Fp32);
    }
    if precision != Precision::Fp32 {
        torch_calls::module_to(module, device, precision.kind())
            .map_err(|why| unconvertible(path, &precision.to_string(), &why))?;
        params = module.named_parameters().map_err(invalid)?;
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
        let channels_last = p
            .f_permute(to_last)
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_permute(back.as_slice()))
            .map_err(invalid)?;
        p.f_set_data(&channels_last).map_err(invalid)?;
    }
    Ok(precision)
}

/// libtorch's CPU threads at most: beyond this no machine gains, and
/// OpenMP starts a team on the calling thread's stack (tens of thousands of
/// threads overflowed it and aborted the process).
pub const MAX_CPU_THREADS: i32 = 1024;

/// Gives the calling thread libtorch's CPU thread count (at most
/// [`MAX_CPU_THREADS`]) when the environment asks for more. OpenMP's count
/// is per thread, and a thread that libtorch did not start begins with the
/// environment's (`OMP_NUM_THREADS`), which oneDNN's convolutions use as
/// they find it: `OMP_NUM_THREADS=32768` overflowed the forward thread's
/// stack even with `--threads 2`. Otherwise nothing is set: setting the
/// count that is already in force made probing a ResNet-50 half again as
/// slow (20 s to past the probing limit of the time, 30 s, here).
pub(crate) fn align_cpu_threads() {
    let threads = tch::get_num_threads();
    let capped = threads.clamp(1, MAX_CPU_THREADS);
    let asked = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.split(',').next()?.trim().parse::<i64>().ok());
    if capped != threads || asked.is_some_and(|n| n > i64::from(capped)) {
        tch::set_num_threads(capped);
    }
}
