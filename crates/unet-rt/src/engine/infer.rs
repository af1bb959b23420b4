//! The inference stage: batches to the device, forward passes (split in
//! halves on GPU out-of-memory), the non-finite check and the reduction to
//! the requested output, back on the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Mutex, PoisonError};

use tch::{Device, Kind, Tensor};

use super::{output, reduce, tta, Batch, NonFinite, OutputElement, OutputMode, Segmenter, Written};
use crate::error::{Error, Result};
use crate::geometry::{Blend, Tile, TilePlan};
use crate::metadata::Padding;
use crate::model::Model;
use crate::normalize::Affine;
use crate::pixel::RawKind;

impl Segmenter {
    /// Shape of one reduced tile output: `([classes,] spatial...)`.
    pub(super) fn reduced_tile_shape(&self, plan: &TilePlan) -> Vec<usize> {
        let spatial = plan
            .output_tile_shape()
            .iter()
            .map(|&o| o - 2 * self.device_crop());
        match self.options.output {
            OutputMode::Labels | OutputMode::Instances => spatial.collect(),
            _ => std::iter::once(self.model.info().out_channels)
                .chain(spatial)
                .collect(),
        }
    }

    /// Pixels cropped per side on the device: the damaged border of
    /// same-padded models (valid models' outputs are already cropped).
    pub(super) fn device_crop(&self) -> usize {
        let info = self.model.info();
        match (info.padding, self.options.blend) {
            (Padding::Same, Blend::Crop) => info.effective_halo(),
            // Blending weighs whole tiles (zero weight on the damaged border).
            _ => 0,
        }
    }

    /// Runs the batches of `batches` through the model on each of its
    /// devices (one worker per device, this thread the first) and sends
    /// the reduced results to `out`. The first failure stops every worker.
    pub(super) fn infer_all<U: OutputElement>(
        &self,
        batches: Receiver<Batch>,
        out: SyncSender<Written<U>>,
        plan: &TilePlan,
        mode: OutputMode,
    ) -> Result<()> {
        let batches = Mutex::new(batches);
        let failed = AtomicBool::new(false);
        let work = |model: &Model| -> Result<()> {
            let result = self.infer_on(model, &batches, &out, &failed, plan, mode);
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        };
        let mut replicas = self.model.replicas();
        let first = replicas.next();
        std::thread::scope(|scope| {
            let workers = replicas
                .map(|model| {
                    std::thread::Builder::new()
                        .name("unet-rt-infer".to_owned())
                        .spawn_scoped(scope, move || work(model))
                        .map_err(|e| {
                            Error::Internal(format!("cannot start an inference thread: {e}"))
                        })
                })
                .collect::<Vec<_>>();
            let mut result = first.map_or(Ok(()), work);
            for worker in workers {
                let joined = worker.and_then(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        Err(Error::Internal("an inference thread panicked".to_owned()))
                    })
                });
                // The first error is the cause; the others only followed it.
                if result.is_ok() {
                    result = joined;
                }
            }
            result
        })
    }

    /// One worker of [`Self::infer_all`]: batches taken in turn from the
    /// shared queue, on `model`'s device.
    fn infer_on<U: OutputElement>(
        &self,
        model: &Model,
        batches: &Mutex<Receiver<Batch>>,
        out: &SyncSender<Written<U>>,
        failed: &AtomicBool,
        plan: &TilePlan,
        mode: OutputMode,
    ) -> Result<()> {
        loop {
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            if failed.load(Ordering::Relaxed) {
                return Ok(()); // another worker failed; it reports why
            }
            let next = batches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            let Ok(batch) = next else {
                return Ok(()); // every batch is taken
            };
            let written = self.infer_written::<U>(model, batch, plan, mode)?;
            if out.send(written).is_err() {
                return Ok(()); // the stitching stopped
            }
        }
    }

    /// `batch` through `model`, reduced as `mode` says, with its tiles.
    pub(super) fn infer_written<U: OutputElement>(
        &self,
        model: &Model,
        batch: Batch,
        plan: &TilePlan,
        mode: OutputMode,
    ) -> Result<Written<U>> {
        let _guard = tch::no_grad_guard();
        let data = self.infer_batch::<U>(model, &batch, plan, mode)?;
        Ok(Written {
            seq: batch.seq,
            tiles: batch.tiles,
            data,
        })
    }

    pub(super) fn infer_batch<U: OutputElement>(
        &self,
        model: &Model,
        batch: &Batch,
        plan: &TilePlan,
        mode: OutputMode,
    ) -> Result<Vec<U>> {
        let info = self.model.info();
        let tile = plan.input_tile_shape();
        let n = batch.n;
        let input = batch_tensor(
            &batch.data,
            batch.raw,
            n,
            tile,
            info.in_channels,
            model.device(),
            model.precision().kind(),
        )?;
        let y = tta::augmented(self.options.tta, info.spatial_dims, &input, |x| {
            self.forward_splitting(model, x)
        })?;
        let expect_spatial = plan.output_tile_shape();
        let got = y.size();
        let ok = got.len() == tile.len() + 2
            && got[0] == n as i64
            && got[1] == info.out_channels as i64
            && got[2..]
                .iter()
                .zip(expect_spatial)
                .all(|(&g, &e)| g == e as i64);
        if !ok {
            return Err(Error::Inference(format!(
                "the model returned shape {got:?} for input {:?}; expected ({n}, {}, {expect_spatial:?})",
                input.size(),
                info.out_channels
            )));
        }
        let crop = self.device_crop() as i64;
        let mut y = y;
        if crop > 0 {
            for (d, &e) in expect_spatial.iter().enumerate() {
                y = y
                    .f_narrow(d as i64 + 2, crop, e as i64 - 2 * crop)
                    .map_err(Error::inference)?;
            }
        }
        let check = self.options.nonfinite == NonFinite::Raise;
        let on_cpu = y.device() == Device::Cpu;
        if on_cpu && reduce::reduces_on_host(mode, info.output) {
            let (data, bad) = reduce::reduce_on_host::<U>(&y, info.output, &batch.slots, check)?;
            return match bad {
                Some(i) => Err(non_finite(&batch.tiles[i])),
                None => Ok(data),
            };
        }
        if check && on_cpu {
            if let Some(i) = reduce::first_non_finite(&y, &batch.slots)? {
                return Err(non_finite(&batch.tiles[i]));
            }
        } else if check {
            check_finite(&y, batch)?;
        }
        let mut reduced = output::reduce::<U>(&y, mode, info.output)?;
        if batch.slots.len() < n {
            let slots: Vec<i64> = batch.slots.iter().map(|&s| s as i64).collect();
            reduced = Tensor::f_from_slice(&slots)
                .and_then(|index| index.f_to_device(reduced.device()))
                .and_then(|index| reduced.f_index_select(0, &index))
                .map_err(Error::inference)?;
        }
        let host = reduced
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(Error::inference)?;
        let numel = host.numel();
        let mut raw = vec![U::Raw::default(); numel];
        host.f_copy_data(&mut raw, numel)
            .map_err(Error::inference)?;
        Ok(raw.into_iter().map(U::from_raw).collect())
    }

    /// One forward pass; on GPU out-of-memory the batch is split in halves and
    /// retried, which gives the same result with less memory.
    pub(super) fn forward_splitting(&self, model: &Model, input: &Tensor) -> Result<Tensor> {
        match model.forward_tensor(input, self.options.cancel.as_deref()) {
            Err(Error::Inference(msg)) if msg.contains("out of memory") && input.size()[0] > 1 => {
                let n = input.size()[0];
                let halves = [(0, n / 2), (n / 2, n - n / 2)];
                let mut parts = Vec::with_capacity(2);
                for (start, len) in halves {
                    let part = input.f_narrow(0, start, len).map_err(Error::inference)?;
                    parts.push(self.forward_splitting(model, &part)?);
                }
                Tensor::f_cat(&parts, 0).map_err(Error::inference)
            }
            other => other,
        }
    }
}

/// A batch tensor `(N, C, spatial...)` in channels-last memory layout from
/// channels-last data, on `device` in `kind`; `raw` pixels are made network
/// input there.
fn batch_tensor(
    data: &Tensor,
    raw: Option<(RawKind, Affine)>,
    n: usize,
    tile: &[usize],
    channels: usize,
    device: Device,
    kind: Kind,
) -> Result<Tensor> {
    let mut last: Vec<i64> = vec![n as i64];
    last.extend(tile.iter().map(|&t| t as i64));
    last.push(channels as i64);
    // (N, spatial..., C) -> (N, C, spatial...): a view, channels-last strides.
    let order = crate::axes::channels_first_order(last.len());
    let host = data.f_view(last.as_slice()).map_err(Error::inference)?;
    // A plain (pageable) copy: libtorch 2.11 warns on every pin_memory(device)
    // call, the only form tch exposes, and the copy is small beside the
    // forward pass (measured on an H100, see the README).
    let moved = match (raw, device) {
        (Some((pixels, affine)), _) => host
            .f_to_device(device)
            .and_then(|t| normalize_on_device(&t, pixels, affine))
            .and_then(|t| t.f_to_kind(kind)),
        (None, Device::Cuda(_)) => host.f_to_device_(device, kind, false, false),
        (None, _) => host.f_to_kind(kind),
    };
    moved
        .and_then(|t| t.f_permute(order.as_slice()))
        .map_err(Error::inference)
}

/// Network input (`f32`) from raw pixels of `pixels`' type, by the same
/// operations, in the same order and precision, as the host's
/// [`Affine::apply`]: two subtractions then a multiplication, each rounded
/// (three kernels, so nothing fuses them), which makes the result the
/// host's bit for bit.
fn normalize_on_device(
    x: &Tensor,
    pixels: RawKind,
    affine: Affine,
) -> std::result::Result<Tensor, tch::TchError> {
    let x = match pixels {
        // `u16` travelled as the `i16` of the same bits.
        RawKind::U16 => x
            .f_to_kind(Kind::Int)?
            .f_bitwise_and(0xFFFF)?
            .f_to_kind(Kind::Float)?,
        _ => x.f_to_kind(Kind::Float)?,
    };
    // The scalars are exactly the host's `f32`s (widened losslessly).
    let (first, second, scale) = affine.f32_parts();
    x.f_sub_scalar(f64::from(first))?
        .f_sub_scalar(f64::from(second))?
        .f_mul_scalar(f64::from(scale))
}

/// libtorch's words for a failed allocation: CUDA's, and the CPU
/// allocator's.
pub(super) fn is_out_of_memory(err: &Error) -> bool {
    matches!(err, Error::Inference(msg) if crate::error::says_out_of_memory(msg))
}

/// Fails with [`Error::NonFinite`] naming the first tile of `batch` whose
/// network output `y` (one sample per slot) holds NaN or infinity.
fn check_finite(y: &Tensor, batch: &Batch) -> Result<()> {
    let finite = y.f_isfinite().map_err(Error::inference)?;
    if finite
        .f_all()
        .and_then(|t| t.f_int64_value(&[]))
        .map_err(Error::inference)?
        != 0
    {
        return Ok(());
    }
    let per_sample = finite
        .f_reshape([batch.n as i64, -1])
        .and_then(|t| t.f_all_dim(1, false))
        .and_then(|t| t.f_to_device(Device::Cpu))
        .map_err(Error::inference)?;
    for (tile, &slot) in batch.tiles.iter().zip(&batch.slots) {
        if per_sample
            .f_int64_value(&[slot as i64])
            .map_err(Error::inference)?
            == 0
        {
            return Err(non_finite(tile));
        }
    }
    // Only slots that repeat a tile to fill the batch went wrong: nothing
    // of theirs is written.
    Ok(())
}

/// The error for a tile whose network output is not finite.
fn non_finite(tile: &Tile) -> Error {
    Error::NonFinite(format!(
        "the network's output holds NaN or infinite values in tile {} (its input window starts at {:?} \
         and spans {:?}); check the model's weights and the input's value range, or pass \
         nonfinite=\"propagate\" to keep such values",
        tile.index, tile.read_start, tile.read_shape
    ))
}
