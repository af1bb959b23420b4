//! Copies between ndarray views and libtorch tensors.

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::memory::HostFloats;

/// Copies an `f32` view (any strides) into a new CPU tensor of the same shape.
pub(crate) fn tensor_from_view(view: &ArrayViewD<'_, f32>) -> Result<Tensor> {
    let shape: Vec<i64> = view
        .shape()
        .iter()
        .map(|&d| to_i64(d))
        .collect::<Result<_>>()?;
    let tensor = match view.as_slice() {
        Some(slice) => Tensor::f_from_slice(slice).map_err(Error::inference)?,
        None => {
            // Copied in logical order straight into libtorch's memory, which
            // is allocated fallibly (a standard-layout copy would abort the
            // process when it cannot be allocated).
            let mut buffer =
                HostFloats::floats(view.len(), "batch", "a contiguous copy of the batch")?;
            for (slot, &value) in buffer.as_uninit_mut().iter_mut().zip(view.iter()) {
                slot.write(value);
            }
            buffer.into_tensor()
        }
    };
    tensor.f_reshape(shape.as_slice()).map_err(Error::inference)
}

/// Copies a tensor (any device, any float kind) into a new `f32` array.
pub(crate) fn array_from_tensor(tensor: &Tensor) -> Result<ArrayD<f32>> {
    let shape: Vec<usize> = tensor
        .size()
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect();
    let host = tensor
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_to_device(tch::Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .map_err(Error::inference)?;
    let numel = shape.iter().product::<usize>();
    let mut data = crate::memory::try_filled::<f32>(numel, "batch", "the network's output")?;
    host.f_copy_data(&mut data, numel)
        .map_err(Error::inference)?;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::Inference(e.to_string()))
}

fn to_i64(d: usize) -> Result<i64> {
    i64::try_from(d).map_err(|_| Error::InvalidArgument {
        argument: "image",
        message: format!("dimension {d} is too large"),
    })
}
