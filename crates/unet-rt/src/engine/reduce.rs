//! Reducing a CPU forward pass's output in one pass of our own: labels
//! (first largest channel, or the sign of a sigmoid logit) and
//! probabilities (softmax, sigmoid), with the non-finite check folded in.
//!
//! libtorch does the same work in several passes on a CPU: the channel
//! argmax is a strided reduction, the comparisons that replace it allocate
//! an `int64` index and a few masks per channel, `isfinite().all()` adds two
//! more. With a cheap network those passes cost more than the forward pass
//! itself (4.4 ms against 0.2 ms for a 2-class 512x512 tile on the 2-core
//! development machine). On a GPU the reduction stays on the device
//! ([`super::output::reduce`]), where it is cheap and shrinks the download.

use tch::{Kind, Tensor};

use super::{OutputElement, OutputMode};
use crate::error::{Error, Result};
use crate::geometry::advance_index;
use crate::memory;
use crate::metadata::Activation;

/// Whether [`reduce_on_host`] computes `mode` for `activation`: labels.
/// Probabilities come from libtorch's vectorized softmax and sigmoid (with
/// our finiteness check, [`first_non_finite`]); raw values are a copy.
pub(super) fn reduces_on_host(mode: OutputMode, activation: Activation) -> bool {
    matches!(mode, OutputMode::Labels | OutputMode::Instances) && activation != Activation::Identity
}

/// The labels of samples `slots` of a CPU output `y` of shape
/// `(N, K, spatial...)` with any strides, one sample after the other, each
/// in row-major order; and, when `check` is set, the position in `slots` of
/// the first sample holding NaN or infinity.
///
/// Labels follow `torch.argmax(y, 1)` (the first largest channel; a NaN
/// counts as largest, the first NaN wins) for softmax models and `y > t`
/// for one-channel ones ([`Activation::mask_threshold`]).
///
/// # Errors
/// [`Error::Inference`] for a tensor that is not on the CPU, not of rank 3
/// or more, or lacks a sample of `slots`; [`Error::InvalidArgument`] when
/// the result cannot be allocated.
pub(super) fn reduce_on_host<U: OutputElement>(
    y: &Tensor,
    activation: Activation,
    slots: &[usize],
    check: bool,
) -> Result<(Vec<U>, Option<usize>)> {
    let y = as_host_floats(y, slots)?;
    let view = Strided::of(&y);
    let per_sample = view.spatial_len();
    let mut out =
        memory::try_filled::<U>(per_sample * slots.len(), "tile", "the labels of a batch")?;
    let row_len = view.row_len();
    let mut best = vec![0f32; row_len];
    let mut index = vec![0u16; row_len];
    let mut scratch = Vec::new();
    let mut first_bad = None;
    for (i, &slot) in slots.iter().enumerate() {
        let dst = &mut out[i * per_sample..(i + 1) * per_sample];
        let mut finite = true;
        let mut rows = dst.chunks_exact_mut(row_len.max(1));
        view.for_each_row(slot, &mut scratch, |channels| {
            if check {
                finite &= channels.iter().all(|row| all_finite(row));
            }
            let Some(dst) = rows.next() else { return };
            match activation.mask_threshold(channels.len()) {
                Some(threshold) => {
                    for (d, &v) in dst.iter_mut().zip(channels[0]) {
                        *d = U::from_class(u16::from(v > threshold));
                    }
                }
                None => {
                    first_largest(channels, &mut best, &mut index);
                    for (d, &c) in dst.iter_mut().zip(&index) {
                        *d = U::from_class(c);
                    }
                }
            }
        });
        if !finite && first_bad.is_none() {
            first_bad = Some(i);
        }
    }
    Ok((out, first_bad))
}

/// The position in `slots` of the first sample of the CPU output `y`
/// (`(N, K, spatial...)`, any strides) that holds NaN or infinity: one
/// pass, where libtorch's `isfinite().all()` takes two and a mask.
///
/// # Errors
/// As [`reduce_on_host`].
pub(super) fn first_non_finite(y: &Tensor, slots: &[usize]) -> Result<Option<usize>> {
    let y = as_host_floats(y, slots)?;
    let view = Strided::of(&y);
    let mut scratch = Vec::new();
    for (i, &slot) in slots.iter().enumerate() {
        let mut finite = true;
        view.for_each_row(slot, &mut scratch, |channels| {
            finite &= channels.iter().all(|row| all_finite(row));
        });
        if !finite {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// `y` as a CPU `f32` tensor (bf16 and fp16 output converted exactly),
/// checked to hold every sample of `slots`.
fn as_host_floats(y: &Tensor, slots: &[usize]) -> Result<Tensor> {
    let y = match y.kind() {
        Kind::Float => y.shallow_clone(),
        _ => y.f_to_kind(Kind::Float).map_err(Error::inference)?,
    };
    if y.device() != tch::Device::Cpu || y.dim() < 3 {
        return Err(Error::Inference(format!(
            "the host reduction takes a CPU tensor of rank 3 or more, got {:?} on {:?}",
            y.size(),
            y.device()
        )));
    }
    let samples = y.size()[0];
    if let Some(&slot) = slots.iter().find(|&&s| s as i64 >= samples) {
        return Err(Error::Inference(format!(
            "sample {slot} of a batch of {samples}"
        )));
    }
    Ok(y)
}

/// The elements of a CPU `f32` tensor of shape `(N, K, spatial...)`,
/// addressed by its strides. Borrows the tensor, which keeps the memory.
struct Strided<'t> {
    tensor: &'t Tensor,
    sizes: Vec<usize>,
    strides: Vec<isize>,
}

impl<'t> Strided<'t> {
    fn of(tensor: &'t Tensor) -> Self {
        Self {
            tensor,
            sizes: tensor.size().iter().map(|&s| s as usize).collect(),
            strides: tensor.stride().iter().map(|&s| s as isize).collect(),
        }
    }

    fn spatial_len(&self) -> usize {
        self.sizes[2..].iter().product()
    }

    fn row_len(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }

    /// Calls `f` with each row (last axis) of sample `sample`, in row-major
    /// order, as one slice per channel: the tensor's own memory when a row
    /// is stored with unit stride, else a copy in `scratch`.
    fn for_each_row(&self, sample: usize, scratch: &mut Vec<f32>, mut f: impl FnMut(&[&[f32]])) {
        let channels = self.sizes[1];
        let channel_stride = self.strides[1];
        let (outer, row_len) = (&self.sizes[2..self.sizes.len() - 1], self.row_len());
        let outer_strides = &self.strides[2..self.strides.len() - 1];
        let x_stride = self.strides[self.strides.len() - 1];
        if channels == 0 || row_len == 0 || outer.contains(&0) {
            return;
        }
        let ptr = self.tensor.data_ptr() as *const f32;
        let rows: usize = outer.iter().product();
        let mut index = vec![0usize; outer.len()];
        scratch.resize(if x_stride == 1 { 0 } else { channels * row_len }, 0.0);
        for _ in 0..rows {
            let row: isize = sample as isize * self.strides[0]
                + index
                    .iter()
                    .zip(outer_strides)
                    .map(|(&i, &s)| i as isize * s)
                    .sum::<isize>();
            // A few pointers per row of hundreds of pixels.
            let mut slices: Vec<&[f32]> = Vec::with_capacity(channels);
            if x_stride == 1 {
                for c in 0..channels {
                    // SAFETY: `ptr` is the first element of the CPU float
                    // tensor `self.tensor` (borrowed for 't, so its memory
                    // lives) of these sizes and strides. `sample` is below
                    // N (checked by `as_host_floats`), `c` below K and the
                    // outer indices below their sizes, so the row starts at
                    // an element, and with unit stride its `row_len`
                    // elements follow it in memory. Nothing writes the
                    // tensor while we read.
                    slices.push(unsafe {
                        std::slice::from_raw_parts(
                            ptr.offset(row + c as isize * channel_stride),
                            row_len,
                        )
                    });
                }
                f(&slices);
            } else {
                for (c, plane) in scratch.chunks_exact_mut(row_len).enumerate() {
                    for (x, value) in plane.iter_mut().enumerate() {
                        // SAFETY: as above, for element `x` of the row (below
                        // its size) addressed by its stride.
                        *value = unsafe {
                            *ptr.offset(row + c as isize * channel_stride + x as isize * x_stride)
                        };
                    }
                }
                let slices: Vec<&[f32]> = scratch.chunks_exact(row_len).collect();
                f(&slices);
            }
            advance_index(&mut index, outer);
        }
    }
}

fn all_finite(values: &[f32]) -> bool {
    // `v * 0` is zero for finite `v` and NaN for NaN and infinities. Eight
    // independent sums vectorize (the compiler does not reassociate one
    // float sum, nor a fold of `is_finite` into wide comparisons).
    let mut sums = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (sum, &v) in sums.iter_mut().zip(chunk) {
            *sum += v * 0.0;
        }
    }
    for &v in rest {
        sums[0] += v * 0.0;
    }
    sums.iter().all(|&sum| sum == 0.0)
}

#[cfg(test)]
#[test]
fn all_finite_finds_each_kind_of_non_finite_value_anywhere() {
    for len in [0, 1, 7, 8, 9, 31] {
        let mut values: Vec<f32> = (0..len).map(|i| i as f32 * -1.5e30).collect();
        assert!(all_finite(&values), "{len}");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in 0..len {
                let keep = values[at];
                values[at] = bad;
                assert!(!all_finite(&values), "{bad} at {at} of {len}");
                values[at] = keep;
            }
        }
    }
}

/// Per pixel of a row given as one slice per channel, the channel `argmax`
/// picks as libtorch defines it: the first largest value, where a NaN is
/// larger than anything and the first NaN wins. Written into `index`;
/// `best` is scratch of the row's length.
fn first_largest(channels: &[&[f32]], best: &mut [f32], index: &mut [u16]) {
    if let [first, second] = channels {
        // Two classes (the common case): no running maximum to keep.
        for ((i, &a), &b) in index.iter_mut().zip(first.iter()).zip(second.iter()) {
            *i = u16::from(beats(b, a));
        }
        return;
    }
    best.copy_from_slice(channels[0]);
    index.fill(0);
    for (c, row) in channels.iter().enumerate().skip(1) {
        let c = c as u16; // labels of more than 65536 classes are refused
        for ((b, i), &v) in best.iter_mut().zip(index.iter_mut()).zip(row.iter()) {
            // Selections by mask rather than `if`: the compiler turns the
            // latter into a branch per lane.
            let wins = u32::from(beats(v, *b)).wrapping_neg();
            *b = f32::from_bits((v.to_bits() & wins) | (b.to_bits() & !wins));
            *i = (c & wins as u16) | (*i & !(wins as u16));
        }
    }
}

/// Whether a later channel's `value` takes the place of the `best` so far:
/// when larger, or when it is the first NaN (once `best` is NaN nothing
/// beats it). Bitwise, not short-circuit: branch-free, so loops vectorize.
#[inline]
fn beats(value: f32, best: f32) -> bool {
    (value > best) | (value.is_nan() & !best.is_nan())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::output::reduce;

    fn with_nans(t: &Tensor, every: usize) -> Tensor {
        let mut flat = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        for i in (0..flat.len()).step_by(every) {
            flat[i] = f32::NAN;
        }
        Tensor::from_slice(&flat).view(t.size().as_slice())
    }

    fn host<U: OutputElement>(y: &Tensor, act: Activation, slots: &[usize]) -> Vec<U> {
        reduce_on_host::<U>(y, act, slots, false).unwrap().0
    }

    fn libtorch<U: OutputElement>(y: &Tensor, act: Activation, slots: &[usize]) -> Vec<U> {
        let index = Tensor::from_slice(&slots.iter().map(|&s| s as i64).collect::<Vec<_>>());
        let r = reduce::<U>(&y.index_select(0, &index), OutputMode::Labels, act)
            .unwrap()
            .contiguous();
        let mut raw = vec![U::Raw::default(); r.numel()];
        r.copy_data(&mut raw, r.numel());
        raw.into_iter().map(U::from_raw).collect()
    }

    /// The layouts a forward pass returns: contiguous, channels-last, and
    /// cropped on the device (narrowed views).
    fn layouts(y: &Tensor) -> Vec<Tensor> {
        let last = y.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let cropped = y.narrow(2, 1, 5).narrow(3, 2, 6);
        let cropped_last = last.narrow(2, 1, 5).narrow(3, 2, 6);
        vec![y.shallow_clone(), last, cropped, cropped_last]
    }

    #[test]
    fn labels_are_libtorchs_argmax_for_any_strides_ties_and_nan() {
        let opts = (Kind::Float, tch::Device::Cpu);
        for channels in 1..=5i64 {
            // Few distinct values: many ties.
            let y = with_nans(&Tensor::randint(3, [3, channels, 7, 19], opts), 11);
            for t in layouts(&y) {
                for slots in [&[0usize, 1, 2][..], &[2, 0]] {
                    assert_eq!(
                        host::<u8>(&t, Activation::Softmax, slots),
                        libtorch::<u8>(&t, Activation::Softmax, slots),
                        "{channels} channels, strides {:?}",
                        t.stride()
                    );
                }
            }
            let volume = Tensor::randn([2, channels, 3, 4, 5], opts);
            assert_eq!(
                host::<u16>(&volume, Activation::Softmax, &[1, 0]),
                libtorch::<u16>(&volume, Activation::Softmax, &[1, 0]),
            );
            let bf16 = Tensor::randn([2, channels, 4, 9], opts).to_kind(Kind::BFloat16);
            assert_eq!(
                host::<u8>(&bf16, Activation::Softmax, &[0, 1]),
                libtorch::<u8>(&bf16, Activation::Softmax, &[0, 1]),
            );
        }
        let logits = with_nans(&Tensor::randn([2, 1, 7, 19], opts), 7);
        for t in layouts(&logits) {
            assert_eq!(
                host::<u8>(&t, Activation::Sigmoid, &[0, 1]),
                libtorch::<u8>(&t, Activation::Sigmoid, &[0, 1]),
            );
        }
        // A network's own probabilities: one channel is a mask at 0.5,
        // several take the largest.
        let probabilities = Tensor::rand([2, 1, 7, 19], opts);
        for t in layouts(&probabilities) {
            let labels = host::<u8>(&t, Activation::Probabilities, &[0, 1]);
            assert_eq!(
                labels,
                libtorch::<u8>(&t, Activation::Probabilities, &[0, 1])
            );
            let want: Vec<u8> = Vec::<f32>::try_from(t.contiguous().view([-1]))
                .unwrap()
                .iter()
                .map(|&p| u8::from(p > 0.5))
                .collect();
            assert_eq!(labels, want);
        }
        let several = Tensor::rand([2, 3, 7, 19], opts).softmax(1, Kind::Float);
        assert_eq!(
            host::<u8>(&several, Activation::Probabilities, &[0, 1]),
            host::<u8>(&several, Activation::Softmax, &[0, 1]),
        );
        let line = Tensor::randn([1, 3, 10], opts);
        assert_eq!(
            host::<u8>(&line, Activation::Softmax, &[0]),
            libtorch::<u8>(&line, Activation::Softmax, &[0]),
        );
    }

    #[test]
    fn non_finite_samples_are_found_and_only_the_written_ones_count() {
        let opts = (Kind::Float, tch::Device::Cpu);
        let y = Tensor::randn([3, 2, 7, 12], opts);
        let _ = y.get(1).get(1).get(2).get(3).fill_(f64::INFINITY);
        // Outside the crop: only uncropped outputs see it.
        let _ = y.get(2).get(0).get(0).get(0).fill_(f64::NAN);
        for t in layouts(&y) {
            let cropped = t.size()[2] < 7;
            let find = |slots: &[usize]| {
                let (_, labels) =
                    reduce_on_host::<u8>(&t, Activation::Softmax, slots, true).unwrap();
                let alone = first_non_finite(&t, slots).unwrap();
                assert_eq!(labels, alone);
                alone
            };
            // Cropping keeps pixel (2, 3).
            assert_eq!(find(&[0, 1, 2]), Some(1), "cropped: {cropped}");
            assert_eq!(find(&[2, 1]), Some(if cropped { 1 } else { 0 }));
            assert_eq!(find(&[0, 2]), if cropped { None } else { Some(1) });
        }
        let (_, unchecked) = reduce_on_host::<u8>(&y, Activation::Softmax, &[1], false).unwrap();
        assert_eq!(unchecked, None);
        assert!(reduce_on_host::<u8>(&y, Activation::Softmax, &[3], false).is_err());
    }
}
