//! `unet_rt`: run U-Net style segmentation networks (TorchScript) on images of
//! any size with libtorch.
//!
//! ```no_run
//! use unet_rt::{Device, Model};
//! let model = Model::load("model.pt", Device::Cpu)?;
//! let image = ndarray::Array4::<f32>::zeros((1, 1, 204, 204));
//! let output = model.forward_array(image.view().into_dyn())?;
//! assert_eq!(output.shape()[0], 1);
//! # Ok::<(), unet_rt::Error>(())
//! ```

#![warn(missing_docs)]

mod archive;
pub mod axes;
mod build_info;
mod cgroup;
pub mod class_colours;
mod code_classes;
mod container;
mod convert;
pub mod cuda_memory;
mod description;
mod engine;
mod error;
pub mod files;
pub mod geometry;
mod info;
pub mod instances;
pub mod memory;
mod metadata;
mod model;
pub mod normalize;
mod pass_memory;
mod pickle;
pub mod pixel;
mod precision;
mod probe;
pub mod process;
mod stop;
mod torch_calls;
mod whole;
mod window;

pub use archive::MAX_CODE_NESTING;
pub use build_info::{build_info, BuildInfo};
pub use engine::{
    cuda_budget, Conversion, Layout, NaturalElement, NonFinite, Options, OutputElement, OutputMode,
    Planner, Progress, ProgressFn, Segmenter, Tta, DEFAULT_CPU_BUDGET, DEFAULT_CUDA_BUDGET,
};
pub use error::{Error, Result};
pub use geometry::{Blend, TilePlan};
pub use info::{
    labels_compared, labels_percent, Agreement, Exactness, GeometryMismatch, ModelInfo,
    EXACT_TOLERANCE,
};
pub use metadata::{
    Activation, Metadata, Normalization, OutputKey, Padding, MAX_CHANNELS, MAX_GEOMETRY, MAX_SCALE,
    METADATA_ENTRY,
};
pub use model::{Model, LOAD_THREAD_NAME, LOAD_THREAD_STACK};
pub use pixel::{Pixel, RawKind};
pub use precision::Precision;
pub use probe::MAX_PROBE_VALUES;
pub use tch::Device;
pub use whole::{forward_whole, pad_reflect, whole_image_padding};
pub use window::{mirrored_bounds, Window};

/// Parses a device name as users write it: `cpu`, `cuda`, `cuda:N`, or `auto`
/// (the first GPU when one is available, else the CPU); `cuda:all` is the
/// first GPU here (see [`parse_devices`] for all of them).
///
/// ```
/// assert_eq!(unet_rt::parse_device("cpu").unwrap(), unet_rt::Device::Cpu);
/// assert!(unet_rt::parse_device("tpu").is_err());
/// ```
pub fn parse_device(name: &str) -> Result<Device> {
    match parse_device_name(name)? {
        Device::Cuda(index) => cuda_device(index, name),
        device => Ok(device),
    }
}

/// Parses a device name as [`parse_device`] does, without requiring the
/// device on this machine: the device a plan is made for
/// ([`Segmenter::layout_on`]), such as a Dask worker's GPU seen from a
/// client without one.
///
/// ```
/// assert_eq!(unet_rt::parse_device_name("cuda:3").unwrap(), unet_rt::Device::Cuda(3));
/// assert!(unet_rt::parse_device_name("cuda:x").is_err());
/// ```
pub fn parse_device_name(name: &str) -> Result<Device> {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        // Every GPU runs the first one's plan.
        "cuda" | "gpu" | ALL_GPUS => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Ok(Device::Cuda(index)),
            _ => Err(Error::InvalidArgument {
                argument: "device",
                message: format!(
                    "unknown device {name:?}; expected \"cpu\", \"cuda\", \"cuda:N\", \"cuda:all\" or \"auto\""
                ),
            }),
        },
    }
}

/// A device as users write it, which [`parse_device`] reads back: `cpu`,
/// `cuda:N`.
///
/// ```
/// assert_eq!(unet_rt::device_name(unet_rt::Device::Cuda(2)), "cuda:2");
/// assert_eq!(unet_rt::device_name(unet_rt::Device::Cpu), "cpu");
/// ```
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The device name for every visible GPU at once ([`parse_devices`]).
pub const ALL_GPUS: &str = "cuda:all";

/// Parses a device name as [`parse_device`] does, into the devices a model
/// is loaded on ([`Model::load_on_devices`]): one, or for `cuda:all` every
/// CUDA device visible to libtorch (at least one).
///
/// ```
/// assert_eq!(unet_rt::parse_devices("cpu").unwrap(), vec![unet_rt::Device::Cpu]);
/// # if !tch::Cuda::is_available() {
/// assert!(unet_rt::parse_devices("cuda:all").is_err()); // no GPU here
/// # }
/// ```
pub fn parse_devices(name: &str) -> Result<Vec<Device>> {
    if name.trim().eq_ignore_ascii_case(ALL_GPUS) {
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        cuda_device(0, name)?;
        return Ok((0..count).map(Device::Cuda).collect());
    }
    Ok(vec![parse_device(name)?])
}

/// Refuses a CUDA device this machine does not have, before anything is
/// loaded on it: libtorch takes the index as a C `int`, where `Cuda(2^32 -
/// 1)` reads as -1, the CPU, and the model ran there while claiming a GPU;
/// without a driver, `Cuda(0)` failed as an invalid model.
///
/// Every load asks it first, so a GPU in a process forked after its parent
/// used CUDA is refused here with advice ([`process::claim_cuda`]).
pub(crate) fn check_device_present(device: Device) -> Result<()> {
    match device {
        Device::Cuda(index) => {
            process::claim_cuda(device)?;
            cuda_device(index, &device_name(device)).map(|_| ())
        }
        Device::Cpu => Ok(()),
        // MPS, Vulkan: a libtorch built without one failed the load as an
        // invalid model file ("PyTorch is not linked with support for mps
        // devices"); a one-element tensor there asks the build.
        other => tch::Tensor::f_zeros([1], (tch::Kind::Float, other))
            .map(|_| ())
            .map_err(|e| {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or("").trim().to_owned();
                Error::DeviceUnavailable(format!(
                    "device {:?} was requested but this libtorch cannot use it ({first})",
                    device_name(other)
                ))
            }),
    }
}

fn cuda_device(index: usize, name: &str) -> Result<Device> {
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if index < count {
        Ok(Device::Cuda(index))
    } else {
        Err(Error::DeviceUnavailable(format!(
            "device {name:?} was requested but this machine has {count} CUDA device(s) visible to libtorch"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(target_os = "macos"))]
    fn a_device_this_libtorch_was_built_without_is_unavailable_not_an_invalid_model() {
        match check_device_present(Device::Mps) {
            Err(Error::DeviceUnavailable(message)) => {
                assert!(
                    message.contains("device \"mps\" was requested"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(check_device_present(Device::Cpu).is_ok());
    }
}
