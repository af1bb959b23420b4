use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use numpy::PyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use unet_rt::{OutputMode, Precision};

use crate::args;
use crate::errors::{catching, run_released, run_released_detached, to_py_err};
use crate::percentiles::percentile_range;
use crate::segment::{new_natural_result, progress_callback, segment};

/// A TorchScript model loaded once onto a device, in one precision; safe to
/// share between Python threads.
#[pyclass(frozen, module = "unet_rt._unet_rt")]
pub(crate) struct Model {
    inner: unet_rt::Model,
}

fn parse<T: std::str::FromStr<Err = unet_rt::Error>>(value: &str) -> PyResult<T> {
    value.parse::<T>().map_err(to_py_err)
}

/// A string option parsed by the core.
fn parse_arg<T: std::str::FromStr<Err = unet_rt::Error>>(
    value: &Bound<'_, PyAny>,
    argument: &'static str,
) -> PyResult<T> {
    parse(&args::text(value, argument)?)
}

/// Tile, batch size and budget options, converted with errors that name them.
fn sizing(
    model: &unet_rt::Model,
    tile: Option<&Bound<'_, PyAny>>,
    batch_size: Option<&Bound<'_, PyAny>>,
    memory_budget: Option<&Bound<'_, PyAny>>,
) -> PyResult<unet_rt::Options> {
    // "whole": one tile for the whole image (see Options::whole).
    let whole = match tile {
        Some(t) if t.is_instance_of::<pyo3::types::PyString>() => {
            let text = args::text(t, "tile")?;
            if !unet_rt::Options::names_whole(&text) {
                return Err(args::invalid(
                    "tile",
                    format!("{text:?} is not a tile: give sizes, or \"whole\" for one tile covering the image"),
                ));
            }
            true
        }
        _ => false,
    };
    let tile = tile.filter(|_| !whole);
    Ok(unet_rt::Options {
        tile: args::optional_sizes(tile, "tile", model.info().spatial_dims)?,
        whole,
        batch_size: args::optional_size(batch_size, "batch_size", 1)?,
        memory_budget: args::optional_size(memory_budget, "memory_budget", 0)?,
        ..unet_rt::Options::default()
    })
}

#[pymethods]
impl Model {
    /// Loads `path` onto `device` (`"cpu"`, `"cuda"`, `"cuda:N"`, `"cuda:all"`,
    /// `"auto"`) in `precision` (`"fp32"`, `"bf16"`, `"fp16"`, `"auto"`).
    #[new]
    #[pyo3(signature = (path, device = "auto", precision = unet_rt::Precision::DEFAULT_NAME))]
    fn new(py: Python<'_>, path: PathBuf, device: &str, precision: &str) -> PyResult<Self> {
        let devices = unet_rt::parse_devices(device).map_err(to_py_err)?;
        let precision: Precision = parse(precision)?;
        let inner = run_released_detached(py, move || {
            unet_rt::Model::load_on_devices(&path, &devices, precision)
        })?;
        Ok(Self { inner })
    }

    /// Loads a model from the bytes of a TorchScript archive.
    #[staticmethod]
    #[pyo3(signature = (data, name, device = "auto", precision = unet_rt::Precision::DEFAULT_NAME))]
    fn from_bytes(
        py: Python<'_>,
        data: Vec<u8>,
        name: String,
        device: &str,
        precision: &str,
    ) -> PyResult<Self> {
        let devices = unet_rt::parse_devices(device).map_err(to_py_err)?;
        let precision: Precision = parse(precision)?;
        let inner = run_released_detached(py, move || {
            unet_rt::Model::load_bytes_on_devices(&data, &name, &devices, precision)
        })?;
        Ok(Self { inner })
    }

    /// The embedded metadata as a JSON string, or `None`.
    #[getter]
    fn metadata_json(&self) -> Option<String> {
        self.inner.metadata().and_then(|m| m.to_json().ok())
    }

    /// Geometry and meaning of the network (from metadata or probing): the
    /// core's description, the keys `unet-rt info --json` prints too.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let text = self.inner.info().describe().to_string();
        let value = py.import("json")?.call_method1("loads", (text,))?;
        Ok(value.cast_into::<PyDict>()?)
    }

    /// The names of the output channels: the metadata's, else the indices.
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }

    /// The file the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_owned()
    }

    /// The device as a string, e.g. `"cpu"` or `"cuda:0"`; `"cuda:all"`
    /// for a model on several GPUs.
    #[getter]
    fn device(&self) -> String {
        match self.inner.devices().len() {
            1 => unet_rt::device_name(self.inner.device()),
            _ => unet_rt::ALL_GPUS.to_owned(),
        }
    }

    /// Every device the model runs on, e.g. `["cuda:0", "cuda:1"]`.
    #[getter]
    fn devices(&self) -> Vec<String> {
        self.inner
            .devices()
            .into_iter()
            .map(unet_rt::device_name)
            .collect()
    }

    /// The precision the weights run in: `"fp32"`, `"bf16"` or `"fp16"`.
    #[getter]
    fn precision(&self) -> String {
        self.inner.precision().to_string()
    }

    /// One forward pass on a float32 batch `(N, C, spatial...)`; returns the
    /// raw network output as float32.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyArrayDyn<f32>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let batch = crate::args::readable(batch, "batch")?;
        let view = batch.as_array();
        let model = &self.inner;
        let cancel = Arc::new(AtomicBool::new(false));
        let output = run_released(py, &cancel, || {
            model.forward_array_cancellable(view, Some(&cancel))
        })?;
        // Moves the Vec into NumPy: no copy of the result.
        Ok(PyArrayDyn::from_owned_array(py, output))
    }

    /// Segments a batch of images laid out `(N, C, spatial...)` into a result
    /// `(N, ...)` in one engine call: see `unet_rt.Model.segment`. `window`
    /// is `(image, origin, start, shape)`, see `unet_rt.Window`;
    /// `input_range` is one `(low, high)` per image.
    /// `nonfinite` is `"raise"` (NaN or infinity in the network's input or
    /// output is an error) or `"propagate"`; `tta` `"none"`, `"flips"` or
    /// `"d4"` (test-time augmentation); `object_size` the typical object
    /// diameter in pixels (resampled to the model's training scale);
    /// `min_size` and `fill_holes` override the model's instance read-out.
    #[pyo3(signature = (image, output = None, tile = None, batch_size = None, memory_budget = None, out = None, progress = None, blend = None, window = None, input_range = None, nonfinite = None, tta = None, object_size = None, min_size = None, fill_holes = None))]
    #[allow(clippy::too_many_arguments)]
    fn segment<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        output: Option<&Bound<'py, PyAny>>,
        tile: Option<&Bound<'py, PyAny>>,
        batch_size: Option<&Bound<'py, PyAny>>,
        memory_budget: Option<&Bound<'py, PyAny>>,
        out: Option<&Bound<'py, PyAny>>,
        progress: Option<Py<PyAny>>,
        blend: Option<&Bound<'py, PyAny>>,
        window: Option<&Bound<'py, PyAny>>,
        input_range: Option<Vec<(f64, f64)>>,
        nonfinite: Option<&Bound<'py, PyAny>>,
        tta: Option<&Bound<'py, PyAny>>,
        object_size: Option<&Bound<'py, PyAny>>,
        min_size: Option<&Bound<'py, PyAny>>,
        fill_holes: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cancel = Arc::new(AtomicBool::new(false));
        if let Some(p) = &progress {
            if !p.bind(py).is_callable() {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "progress must be callable as progress(done, total)",
                ));
            }
        }
        let blend = blend
            .filter(|b| !b.is_none())
            .map(|b| args::text(b, "blend"))
            .transpose()?;
        let blend = match blend
            .as_deref()
            .map_or("crop".to_owned(), |b| b.trim().to_ascii_lowercase())
            .as_str()
        {
            "crop" => unet_rt::Blend::Crop,
            "gaussian" => unet_rt::Blend::gaussian(),
            "constant" => unet_rt::Blend::Constant,
            other => {
                return Err(to_py_err(unet_rt::Error::InvalidArgument {
                    argument: "blend",
                    message: format!(
                        "unknown blend {other:?}; expected \"crop\", \"gaussian\" or \"constant\""
                    ),
                }))
            }
        };
        let failure = Arc::new(Mutex::new(None));
        let output = match output.filter(|o| !o.is_none()) {
            Some(o) => parse_arg::<OutputMode>(o, "output")?,
            None => OutputMode::Labels,
        };
        let nonfinite = match nonfinite.filter(|n| !n.is_none()) {
            Some(n) => parse_arg::<unet_rt::NonFinite>(n, "nonfinite")?,
            None => unet_rt::NonFinite::Raise,
        };
        let tta = match tta.filter(|t| !t.is_none()) {
            Some(t) => parse_arg::<unet_rt::Tta>(t, "tta")?,
            None => unet_rt::Tta::None,
        };
        let options = unet_rt::Options {
            output,
            progress: progress.map(|p| progress_callback(p, cancel.clone(), failure.clone())),
            cancel: Some(cancel.clone()),
            blend,
            window: window
                .filter(|w| !w.is_none())
                .map(args::window)
                .transpose()?,
            nonfinite,
            tta,
            object_size: args::optional_number(object_size, "object_size")?,
            min_size: args::optional_size(min_size, "min_size", 0)?.map(|m| m as u64),
            fill_holes: args::optional_flag(fill_holes, "fill_holes")?,
            ..sizing(&self.inner, tile, batch_size, memory_budget)?
        };
        // Segmenter::new refuses min_size and fill_holes for other outputs.
        let segmenter = unet_rt::Segmenter::new(self.inner.clone(), options).map_err(to_py_err)?;
        let result = segment(py, &segmenter, image, out, input_range.as_deref(), &cancel);
        // An exception from the progress callback is the real cause of a cancel.
        if let Some(err) = failure.lock().ok().and_then(|mut slot| slot.take()) {
            return Err(err);
        }
        result
    }

    /// The instance read-out `segment` applies (JSON text, see
    /// `unet_rt._unet_rt.instance_block`): the model's, with `min_size` and
    /// `fill_holes` when given. With `output`, those two are refused where
    /// it is not `"instances"` (they would be ignored).
    #[pyo3(signature = (min_size = None, fill_holes = None, output = None))]
    fn read_out(
        &self,
        min_size: Option<&Bound<'_, PyAny>>,
        fill_holes: Option<&Bound<'_, PyAny>>,
        output: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let output = match output.filter(|o| !o.is_none()) {
            Some(o) => parse_arg::<OutputMode>(o, "output")?,
            None => OutputMode::Instances,
        };
        let options = unet_rt::Options {
            output,
            min_size: args::optional_size(min_size, "min_size", 0)?.map(|m| m as u64),
            fill_holes: args::optional_flag(fill_holes, "fill_holes")?,
            ..unet_rt::Options::default()
        };
        let segmenter = unet_rt::Segmenter::new(self.inner.clone(), options).map_err(to_py_err)?;
        Ok(segmenter.read_out().map_err(to_py_err)?.to_json())
    }

    /// A zeroed array of `shape` in the dtype `segment` gives `output` when
    /// no `out=` is passed; its size is checked against memory first, so
    /// that a batch whose results cannot all be held fails before any work.
    fn result_array<'py>(
        &self,
        py: Python<'py>,
        shape: &Bound<'py, PyAny>,
        output: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shape = args::sizes(shape, "shape", None)?;
        let output = parse_arg::<OutputMode>(output, "output")?;
        new_natural_result(
            py,
            shape,
            output.natural_element(self.inner.info().out_channels),
        )
    }

    /// The NumPy dtype name of `output` results when no `out=` is passed.
    fn result_dtype(&self, output: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let output = parse_arg::<OutputMode>(output, "output")?;
        Ok(output
            .natural_element(self.inner.info().out_channels)
            .name())
    }

    /// The tile size the engine takes nearest `tile`.
    fn usable_tile(&self, tile: &Bound<'_, PyAny>) -> PyResult<usize> {
        let tile = args::size(tile, "tile")?;
        Ok(self.inner.info().nearest_usable_tile(tile))
    }

    /// The shape of one image's `output` result for `spatial` pixels.
    fn result_shape(
        &self,
        spatial: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<usize>> {
        let spatial = args::sizes(spatial, "shape", Some(self.inner.info().spatial_dims))?;
        let output = parse_arg::<OutputMode>(output, "output")?;
        Ok(output.result_shape(self.inner.info().out_channels, &spatial))
    }

    /// The pixel values percentile normalization maps to 0 and 1 in `image`
    /// (`(C, spatial...)`), or `None` when the model normalizes otherwise.
    fn percentile_range(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(f64, f64)>> {
        percentile_range(py, &self.inner, image)
    }

    /// The input, `(first, end)` per spatial axis of the whole image, that
    /// segmenting each window of `windows` (a sequence of `(image, origin,
    /// start, shape)`, origin unused) needs with these options; the tiling
    /// planned once per image shape.
    #[pyo3(signature = (windows, tile = None, batch_size = None, memory_budget = None))]
    fn needed_inputs(
        &self,
        windows: &Bound<'_, PyAny>,
        tile: Option<&Bound<'_, PyAny>>,
        batch_size: Option<&Bound<'_, PyAny>>,
        memory_budget: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(Vec<usize>, Vec<usize>)>> {
        // The core checks each window (its rank against the model's too).
        let windows = windows
            .try_iter()?
            .map(|window| args::window(&window?))
            .collect::<PyResult<Vec<_>>>()?;
        let options = sizing(&self.inner, tile, batch_size, memory_budget)?;
        let segmenter = unet_rt::Segmenter::new(self.inner.clone(), options).map_err(to_py_err)?;
        catching(|| segmenter.needed_inputs(&windows)).map_err(to_py_err)
    }

    /// The tiling the engine would use for an image of spatial `shape`:
    /// `{"tile": [...], "tiles": n, "batch_size": b, "stride": [...],
    /// "output_tile": [...]}`; on `device` in `precision` (names as for
    /// loading; the device need not exist here) when given, else where the
    /// model is loaded.
    #[pyo3(signature = (shape, tile = None, batch_size = None, memory_budget = None, device = None, precision = None))]
    #[allow(clippy::too_many_arguments)]
    fn layout<'py>(
        &self,
        py: Python<'py>,
        shape: &Bound<'py, PyAny>,
        tile: Option<&Bound<'py, PyAny>>,
        batch_size: Option<&Bound<'py, PyAny>>,
        memory_budget: Option<&Bound<'py, PyAny>>,
        device: Option<&str>,
        precision: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let device = match device {
            Some(name) => unet_rt::parse_device_name(name).map_err(to_py_err)?,
            None => self.inner.device(),
        };
        let precision: Precision = match precision {
            Some(name) => parse(name)?,
            None => self.inner.precision(),
        };
        let dims = self.inner.info().spatial_dims;
        let shape = args::sizes(shape, "shape", None)?;
        if shape.len() != dims {
            return Err(args::invalid(
                "shape",
                format!("{shape:?} has {} axes; the model is {dims}-D", shape.len()),
            ));
        }
        let options = sizing(&self.inner, tile, batch_size, memory_budget)?;
        let segmenter = unet_rt::Segmenter::new(self.inner.clone(), options).map_err(to_py_err)?;
        let layout =
            catching(|| segmenter.layout_on(&shape, device, precision)).map_err(to_py_err)?;
        let d = PyDict::new(py);
        d.set_item("tile", layout.plan.input_tile_shape().to_vec())?;
        d.set_item("tiles", layout.plan.len())?;
        d.set_item("batch_size", layout.batch_size)?;
        d.set_item("stride", layout.plan.stride().to_vec())?;
        d.set_item("output_tile", layout.plan.output_tile_shape().to_vec())?;
        d.set_item("grid", layout.plan.grid_shape().to_vec())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Model(path={:?}, device={:?}, precision={:?})",
            self.inner.path(),
            self.device(),
            self.precision()
        )
    }
}
