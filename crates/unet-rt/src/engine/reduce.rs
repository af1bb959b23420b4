//! Reducing a CPU forward pass's output in one pass of our own: labels
//! (first largest channel, or the sign of a sigmoid logit) and
//! probabilities (softmax, sigmoid), with the non-finite check folded in.
//!
//! libtorch does the same work in several passes on a CPU: the channel
//! argmax is a strided reduction, the comparisons that replace it allocate
//! an `int64` index and a few masks per channel, `isfinite().all()` adds two
//! more. With a cheap network those passes cost more than the forward pass
//! itself (4.4 ms against 0.2 ms for a 2-class 512x512 tile on the 2-core
//! development machine). Probabilities took a finiteness pass, libtorch's
//! softmax (a parallel region whose idle OpenMP workers spin on the cores the
//! gathering and stitching threads need), a copy out and a conversion; here
//! they are one pass. On a GPU the reduction stays on the device
//! ([`super::output::reduce`]), where it is cheap and shrinks the download.

use tch::{Kind, Tensor};

use super::{OutputElement, OutputMode};
use crate::error::{Error, Result};
use crate::geometry::advance_index;
use crate::memory;
use crate::metadata::Activation;

/// Whether [`reduce_on_host`] computes `mode` for `activation`: labels and
/// probabilities of softmax and sigmoid models (raw values are a copy).
pub(super) fn reduces_on_host(mode: OutputMode, activation: Activation) -> bool {
    matches!(
        mode,
        OutputMode::Labels | OutputMode::Instances | OutputMode::Probabilities
    ) && activation != Activation::Identity
}

/// What `mode` asks of samples `slots` of a CPU output `y` of shape
/// `(N, K, spatial...)` with any strides, one sample after the other, each
/// in row-major order (probabilities: `K` planes per sample); and, when
/// `check` is set, the position in `slots` of the first sample holding NaN
/// or infinity.
///
/// Labels follow `torch.argmax(y, 1)` (the first largest channel; a NaN
/// counts as largest, the first NaN wins) for softmax models and `y > 0`
/// for one-channel sigmoid models. Probabilities are `torch.softmax(y, 1)`
/// or `torch.sigmoid(y)` to within a few units in the last place (NaN where
/// libtorch gives NaN, exact zeros and ones for infinite logits).
///
/// # Errors
/// [`Error::Inference`] for a tensor that is not on the CPU, not of rank 3
/// or more, or lacks a sample of `slots`; [`Error::InvalidArgument`] when
/// the result cannot be allocated.
pub(super) fn reduce_on_host<U: OutputElement>(
    y: &Tensor,
    mode: OutputMode,
    activation: Activation,
    slots: &[usize],
    check: bool,
) -> Result<(Vec<U>, Option<usize>)> {
    let y = as_host_floats(y, slots)?;
    let view = Strided::of(&y);
    let per_sample = view.spatial_len();
    let planes = if mode == OutputMode::Probabilities {
        view.channels()
    } else {
        1
    };
    let sample_len = per_sample.checked_mul(planes);
    let len = sample_len.and_then(|n| n.checked_mul(slots.len()));
    let (Some(sample_len), Some(len)) = (sample_len, len) else {
        return Err(Error::Inference(format!(
            "an output of {:?} is too large to address",
            y.size()
        )));
    };
    let what = if planes > 1 {
        "the probabilities of a batch"
    } else {
        "the labels of a batch"
    };
    let mut out = memory::try_filled::<U>(len, "tile", what)?;
    let row_len = view.row_len();
    let mut work = RowWork::default();
    let mut scratch = Vec::new();
    let mut first_bad = None;
    for (i, dst) in out.chunks_exact_mut(sample_len.max(1)).enumerate() {
        let Some(&slot) = slots.get(i) else { break };
        let mut finite = true;
        let mut rows: Vec<_> = dst
            .chunks_exact_mut(per_sample.max(1))
            .map(|plane| plane.chunks_exact_mut(row_len.max(1)))
            .collect();
        view.for_each_row(slot, &mut scratch, |channels| {
            if check {
                finite &= channels.iter().all(|row| all_finite(row));
            }
            let mut next: Vec<&mut [U]> = rows.iter_mut().filter_map(Iterator::next).collect();
            if next.len() != planes {
                return;
            }
            match (mode, activation) {
                (OutputMode::Probabilities, Activation::Sigmoid) => {
                    for (dst, row) in next.iter_mut().zip(channels) {
                        for (d, &v) in dst.iter_mut().zip(row.iter()) {
                            *d = U::from_f32(sigmoid(v));
                        }
                    }
                }
                (OutputMode::Probabilities, _) => {
                    work.softmax(channels);
                    for (dst, p) in next.iter_mut().zip(work.exps.chunks_exact(row_len.max(1))) {
                        for (d, &v) in dst.iter_mut().zip(p) {
                            *d = U::from_f32(v);
                        }
                    }
                }
                (_, Activation::Sigmoid) => {
                    for (d, &v) in next[0].iter_mut().zip(channels[0]) {
                        *d = U::from_class(u16::from(v > 0.0));
                    }
                }
                _ => {
                    work.first_largest(channels);
                    for (d, &c) in next[0].iter_mut().zip(&work.index) {
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

    fn channels(&self) -> usize {
        self.sizes[1]
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

/// Scratch rows reused from row to row: the running maximum and the
/// winning channel (labels), the exponentials and their sums (softmax).
#[derive(Default)]
struct RowWork {
    best: Vec<f32>,
    index: Vec<u16>,
    exps: Vec<f32>,
    sums: Vec<f32>,
}

impl RowWork {
    /// Per pixel of a row given as one slice per channel, the channel
    /// `argmax` picks as libtorch defines it: the first largest value, where
    /// a NaN is larger than anything and the first NaN wins. Into `index`.
    fn first_largest(&mut self, channels: &[&[f32]]) {
        self.index.resize(channels[0].len(), 0);
        if let [first, second] = channels {
            // Two classes (the common case): no running maximum to keep.
            for ((i, &a), &b) in self.index.iter_mut().zip(first.iter()).zip(second.iter()) {
                *i = u16::from(beats(b, a));
            }
            return;
        }
        self.largest(channels, true);
    }

    /// The running maximum of the channels into `best` (NaN wins, as in
    /// [`beats`]), with the winning channel into `index` when `track`.
    fn largest(&mut self, channels: &[&[f32]], track: bool) {
        self.best.clear();
        self.best.extend_from_slice(channels[0]);
        if track {
            self.index.clear();
            self.index.resize(self.best.len(), 0);
        }
        for (c, row) in channels.iter().enumerate().skip(1) {
            // Selections by mask rather than `if`: the compiler turns the
            // latter into a branch per lane.
            if track {
                let c = c as u16; // labels of more than 65536 classes are refused
                for ((b, i), &v) in self
                    .best
                    .iter_mut()
                    .zip(self.index.iter_mut())
                    .zip(row.iter())
                {
                    let wins = u32::from(beats(v, *b)).wrapping_neg();
                    *b = f32::from_bits((v.to_bits() & wins) | (b.to_bits() & !wins));
                    *i = (c & wins as u16) | (*i & !(wins as u16));
                }
            } else {
                for (b, &v) in self.best.iter_mut().zip(row.iter()) {
                    let wins = u32::from(beats(v, *b)).wrapping_neg();
                    *b = f32::from_bits((v.to_bits() & wins) | (b.to_bits() & !wins));
                }
            }
        }
    }

    /// The softmax over the channels of a row, into `exps` (one row per
    /// channel): `exp(v - max) / sum`, as libtorch computes it. A NaN or a
    /// `+inf` logit makes the pixel NaN, as there; `-inf` gives exactly 0.
    fn softmax(&mut self, channels: &[&[f32]]) {
        self.largest(channels, false);
        let len = self.best.len();
        self.sums.clear();
        self.sums.resize(len, 0.0);
        self.exps.resize(len * channels.len(), 0.0);
        for (row, exps) in channels.iter().zip(self.exps.chunks_exact_mut(len.max(1))) {
            for (((e, &v), &m), s) in exps
                .iter_mut()
                .zip(row.iter())
                .zip(&self.best)
                .zip(self.sums.iter_mut())
            {
                *e = exp_nonpositive(v - m);
                *s += *e;
            }
        }
        for exps in self.exps.chunks_exact_mut(len.max(1)) {
            for (e, &s) in exps.iter_mut().zip(&self.sums) {
                *e /= s;
            }
        }
    }
}

/// `e^x` for `x <= 0` (and NaN), in plain arithmetic that vectorizes:
/// Cody-Waite reduction `x = n ln 2 + r` with `|r| <= ln 2 / 2`, Cephes'
/// degree-6 polynomial for `e^r` (about 1 ulp), and `2^n` built from its
/// bits. Below `ln(f32::MIN_POSITIVE)` the result is 0 (libtorch gives a
/// subnormal there, under 1.2e-38 away); a NaN stays NaN.
#[inline]
fn exp_nonpositive(x: f32) -> f32 {
    const LOW: f32 = -87.336_54; // ln(f32::MIN_POSITIVE)
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and taking it away rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let under = x < LOW;
    let x = if under { LOW } else { x };
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // n lies in -126..=0 here (a NaN casts to 0), so the exponent is normal.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under {
        0.0
    } else {
        e * scale
    }
}

/// `1 / (1 + e^-v)`, from `e^-|v|` so that nothing overflows: 0 and 1
/// for infinite logits, NaN for NaN.
#[inline]
fn sigmoid(v: f32) -> f32 {
    let e = exp_nonpositive(-v.abs());
    if v >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
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
        reduce_on_host::<U>(y, OutputMode::Labels, act, slots, false)
            .unwrap()
            .0
    }

    fn libtorch<U: OutputElement>(y: &Tensor, act: Activation, slots: &[usize]) -> Vec<U> {
        libtorch_mode(y, OutputMode::Labels, act, slots)
    }

    fn libtorch_mode<U: OutputElement>(
        y: &Tensor,
        mode: OutputMode,
        act: Activation,
        slots: &[usize],
    ) -> Vec<U> {
        let index = Tensor::from_slice(&slots.iter().map(|&s| s as i64).collect::<Vec<_>>());
        let r = reduce::<U>(&y.index_select(0, &index), mode, act)
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
                    reduce_on_host::<u8>(&t, OutputMode::Labels, Activation::Softmax, slots, true)
                        .unwrap();
                let alone = first_non_finite(&t, slots).unwrap();
                assert_eq!(labels, alone);
                alone
            };
            // Cropping keeps pixel (2, 3).
            assert_eq!(find(&[0, 1, 2]), Some(1), "cropped: {cropped}");
            assert_eq!(find(&[2, 1]), Some(if cropped { 1 } else { 0 }));
            assert_eq!(find(&[0, 2]), if cropped { None } else { Some(1) });
        }
        let (_, unchecked) =
            reduce_on_host::<u8>(&y, OutputMode::Labels, Activation::Softmax, &[1], false).unwrap();
        assert_eq!(unchecked, None);
        assert!(
            reduce_on_host::<u8>(&y, OutputMode::Labels, Activation::Softmax, &[3], false).is_err()
        );
    }

    /// Host probabilities against libtorch's: equal to within `tol`, NaN
    /// exactly where libtorch has NaN.
    fn assert_probabilities_match(y: &Tensor, act: Activation, slots: &[usize], tol: f32) {
        let mode = OutputMode::Probabilities;
        let (ours, _) = reduce_on_host::<f32>(y, mode, act, slots, false).unwrap();
        let want = libtorch_mode::<f32>(y, mode, act, slots);
        assert_eq!(ours.len(), want.len());
        for (i, (&a, &b)) in ours.iter().zip(&want).enumerate() {
            assert!(
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol,
                "element {i}: {a} against libtorch's {b} ({act:?}, strides {:?})",
                y.stride()
            );
        }
    }

    #[test]
    fn probabilities_are_libtorchs_softmax_and_sigmoid_for_any_strides() {
        let opts = (Kind::Float, tch::Device::Cpu);
        for channels in 1..=5i64 {
            let y = Tensor::randn([3, channels, 7, 19], opts) * 8.0;
            for t in layouts(&y) {
                for slots in [&[0usize, 1, 2][..], &[2, 0]] {
                    assert_probabilities_match(&t, Activation::Softmax, slots, 1e-6);
                    assert_probabilities_match(&t, Activation::Sigmoid, slots, 1e-6);
                }
            }
            let volume = Tensor::randn([2, channels, 3, 4, 5], opts) * 30.0;
            assert_probabilities_match(&volume, Activation::Softmax, &[1, 0], 1e-6);
            let bf16 = (Tensor::randn([2, channels, 4, 9], opts) * 4.0).to_kind(Kind::BFloat16);
            assert_probabilities_match(&bf16, Activation::Softmax, &[0, 1], 1e-6);
        }
        // float16 output rounds the same probabilities.
        let y = Tensor::randn([2, 3, 5, 6], opts);
        let (half, _) = reduce_on_host::<half::f16>(
            &y,
            OutputMode::Probabilities,
            Activation::Softmax,
            &[1],
            false,
        )
        .unwrap();
        let want =
            libtorch_mode::<half::f16>(&y, OutputMode::Probabilities, Activation::Softmax, &[1]);
        for (a, b) in half.iter().zip(&want) {
            assert!((a.to_f32() - b.to_f32()).abs() <= 1e-3, "{a} {b}");
        }
    }

    #[test]
    fn probabilities_of_extreme_and_non_finite_logits_are_libtorchs() {
        let opts = (Kind::Float, tch::Device::Cpu);
        let values = [
            0.0,
            -0.0,
            1e-30,
            87.0,
            -87.0,
            88.5,
            -88.5,
            104.0,
            -104.0,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let n = values.len();
        // Every pair of values as the two logits of a pixel, and as sigmoid logits.
        let mut pairs = Vec::with_capacity(2 * n * n);
        for &a in &values {
            for &b in &values {
                pairs.push(a);
                pairs.push(b);
            }
        }
        let y = Tensor::from_slice(&pairs)
            .view([1, (n * n) as i64, 2])
            .permute([0, 2, 1]);
        assert_probabilities_match(&y, Activation::Softmax, &[0], 1e-6);
        assert_probabilities_match(&y, Activation::Sigmoid, &[0], 1e-6);
        let three = Tensor::from_slice(&values)
            .view([1, 1, n as i64])
            .repeat([1, 3, 1]);
        assert_probabilities_match(&three, Activation::Softmax, &[0], 1e-6);
        // The finiteness check sees what the probabilities see.
        let (_, bad) = reduce_on_host::<f32>(
            &y,
            OutputMode::Probabilities,
            Activation::Softmax,
            &[0],
            true,
        )
        .unwrap();
        assert_eq!(bad, Some(0));
    }

    #[test]
    fn exp_of_non_positive_values_is_within_two_ulps() {
        let mut x = 0.0f32;
        while x > -87.3 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            assert!(
                ((got - want) / want).abs() <= 2.0 * f64::from(f32::EPSILON),
                "exp({x}) = {got}, want {want}"
            );
            x -= 0.001_37;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-88.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(f32::NAN).is_nan());
    }
}
