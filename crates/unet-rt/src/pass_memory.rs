//! The memory of probe passes, measured, and what a larger pass would take.
//!
//! Probing doubles its images (up to 2048 pixels a side) while a change
//! still reaches their far edge. A convolutional network's memory grows
//! with its pixels, four times per doubling; one with global attention
//! (every position against every other, written by hand, so no code scan
//! finds it) grows with their square, sixteen times: such a network
//! (attention at its 1/8 level) took 2.2 GiB at 1024 pixels and wanted some
//! 31 GiB at 2048, and loading it got the process killed by the kernel.
//! Each CPU pass is therefore measured (the
//! process's resident memory, sampled while it runs; on a GPU the device
//! memory libtorch's caching allocator holds after it, which keeps what the
//! pass reserved) and a larger pass is run only where its memory,
//! extrapolated from the passes before it, fits in what the machine (or the
//! device) has free. A GPU that runs out is not a killed process, but its
//! error read as a network that fails at that size, and the load failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::memory::{available_memory, format_bytes};

/// Passes that took less than this beyond what every pass holds say
/// little about how memory grows (allocator caches and one-time kernel
/// set-up are of this order; in a process that ran other models first a
/// 1x1 pass took nothing and a 64 px one 45 MiB): growth between them is
/// taken as linear.
const NOISE_FLOOR: u128 = 16 << 20;
/// Memory is taken to grow with the square of the values only where it
/// grew at least this much faster than them between the two passes
/// compared: a few MiB of noise on passes of tens of MiB, extrapolated as
/// a square over two doublings, made a convolutional network look like it
/// needed gigabytes, and a sampled peak of a short pass is low (the
/// sampler misses what lives under its interval): at 1.5 a busy test
/// process read pix2pix as a square. The attention network grew 2.4 times
/// faster than its pixels from 512 to 1024 px.
const SQUARE_EVIDENCE: f64 = 2.0;
/// Passes over this many times fewer values than the largest show what
/// every pass holds whatever its size.
const FAR_SMALLER: u128 = 64;
/// A pass is predicted only from a measured one at least this many times
/// fewer values smaller (two doublings of a 2-D probe's side). The first
/// passes are a few pixels, and what they take is the one-time set-up of
/// kernels and allocator caches (10-30 MiB), not growth: read as linear
/// over 12 values, it predicted 288-421 GiB for a 256 px pass of
/// FCN-ResNet50 or LR-ASPP, and a fresh process refused to load them.
/// Beyond this, the larger pass runs and is measured; the attention
/// network's 31 GiB pass is predicted from one four times smaller.
const MAX_EXTRAPOLATION: u128 = 16;
/// How often the resident memory is read while a pass runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);
/// The share of the free memory a pass may be predicted to take: the
/// prediction comes from sampled peaks, and other processes allocate too.
const SHARE_OF_FREE: (u128, u128) = (9, 10);

/// One measured pass: its input values and its peak resident memory above
/// the process's at the start of probing.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pass {
    values: u128,
    peak: u128,
}

/// A prediction for a pass larger than every measured one.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Prediction {
    /// Bytes above the start of probing.
    peak: u128,
    /// The measured pass it extrapolates from.
    from: Pass,
    /// Whether the passes show memory growing faster than the image.
    quadratic: bool,
}

/// Where passes run, and so what their memory is measured by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gauge {
    /// The process's resident memory, against the machine's free memory.
    Host,
    /// The memory used on CUDA device `n`, against its free memory.
    Cuda(usize),
}

impl Gauge {
    /// Bytes in use now.
    fn used(self) -> Option<u128> {
        match self {
            Gauge::Host => resident_bytes(),
            Gauge::Cuda(index) => crate::cuda_memory::device_memory_now(index)
                .map(|(free, total)| (total - free) as u128),
        }
    }

    /// Bytes in use and bytes free for a larger pass now (on a GPU, one
    /// query of the device for both).
    fn now(self) -> Option<(u128, u128)> {
        match self {
            Gauge::Host => Some((resident_bytes()?, available_memory()? as u128)),
            Gauge::Cuda(index) => crate::cuda_memory::device_memory_now(index)
                .map(|(free, total)| ((total - free) as u128, free as u128)),
        }
    }

    /// Runs `work` and returns the most memory in use while it ran: sampled
    /// on the host; on a GPU what is in use after it (the caching
    /// allocator keeps what the pass reserved, and a pass's allocations are
    /// all made by the time its launches return).
    fn peak_of<T>(self, work: impl FnOnce() -> T) -> (T, Option<u128>) {
        match self {
            Gauge::Host => peak_resident(work),
            Gauge::Cuda(_) => {
                let out = work();
                (out, self.used())
            }
        }
    }
}

/// The passes of one prober and what they took.
#[derive(Debug)]
pub(crate) struct PassMemory {
    gauge: Gauge,
    /// Bytes in use when probing started; `None` where they cannot be read
    /// (not Linux, no CUDA runtime, another device kind).
    base: Option<u128>,
    passes: Vec<Pass>,
}

impl PassMemory {
    /// Measures the passes on `device` from now on, where its memory can be
    /// read.
    pub(crate) fn start(device: tch::Device) -> Self {
        let gauge = match device {
            tch::Device::Cuda(index) => Some(Gauge::Cuda(index)),
            tch::Device::Cpu => Some(Gauge::Host),
            _ => None,
        };
        Self {
            gauge: gauge.unwrap_or(Gauge::Host),
            base: gauge.and_then(Gauge::used),
            passes: Vec::new(),
        }
    }

    /// Runs `work`, a pass over `values` input values, and records its peak.
    pub(crate) fn measure<T>(&mut self, values: u128, work: impl FnOnce() -> T) -> T {
        let Some(base) = self.base else {
            return work();
        };
        let (out, peak) = self.gauge.peak_of(work);
        // What a GPU's allocator holds only grows: after a larger pass, a
        // smaller one's reading is the larger one's, and would hide how
        // memory grows.
        let attributable = match self.gauge {
            Gauge::Host => true,
            Gauge::Cuda(_) => self.passes.iter().all(|p| p.values < values),
        };
        if let (Some(peak), true) = (peak, attributable) {
            self.passes.push(Pass {
                values,
                peak: peak.saturating_sub(base),
            });
        }
        out
    }

    /// The bytes a pass holds per input value squared, beyond what grows
    /// with the values: global attention's, as the passes so far show it
    /// (0 where they show none, or nothing was measured).
    pub(crate) fn square_bytes(&self) -> f64 {
        fit(&self.passes).map_or(0.0, |f| f.square)
    }

    /// Where a pass over `values` input values is predicted to need more
    /// than the memory free now, the words that say so ("would need about
    /// 21.3 GiB (...), more than the 17.9 GiB free"); `None` where it fits,
    /// is no larger than a measured pass, or nothing can be told.
    pub(crate) fn refusal(&self, values: u128) -> Option<String> {
        let base = self.base?;
        let prediction = extrapolate(&self.passes, values)?;
        let (used, free) = self.gauge.now()?;
        let held = used.saturating_sub(base);
        let extra = prediction.peak.saturating_sub(held);
        (extra.saturating_mul(SHARE_OF_FREE.1) > free.saturating_mul(SHARE_OF_FREE.0)).then(|| {
            let growth = if prediction.quadratic {
                "memory that grows faster than the image, as global attention's does"
            } else {
                "memory that grows with the image"
            };
            format!(
                "would need about {} of memory (its pass over {} values took {}, {growth}), more \
                 than the {} free",
                format_bytes(prediction.peak),
                prediction.from.values,
                format_bytes(prediction.from.peak),
                format_bytes(free)
            )
        })
    }
}

/// The peak of a pass over `values` input values, from the measured
/// `passes`, where it is larger than all of them: memory as `a n + b n^2`
/// of the input values `n` (convolutions and global attention), through
/// the largest pass and the largest one at most half its size, neither
/// term negative, over what every pass holds; linear through the largest
/// pass where no such pair is measured, either is below [`NOISE_FLOOR`],
/// or memory grew too little faster than the values to tell
/// ([`SQUARE_EVIDENCE`]); nothing for a pass over more than
/// [`MAX_EXTRAPOLATION`] times the largest measured one's values. A power law through the two
/// passes predicted 20 GiB where over 30 GiB were needed: at small sizes the
/// convolutions' linear memory hides the attention's square.
fn extrapolate(passes: &[Pass], values: u128) -> Option<Prediction> {
    let fit = fit(passes)?;
    if values <= fit.from.values || values > fit.from.values.saturating_mul(MAX_EXTRAPOLATION) {
        return None;
    }
    let n = values as f64;
    Some(Prediction {
        // `as` saturates: a prediction beyond u128 is still "too much".
        peak: fit
            .fixed
            .saturating_add((fit.linear * n + fit.square * n * n) as u128),
        from: fit.from,
        quadratic: fit.square > 0.0,
    })
}

/// Memory as `fixed + linear n + square n^2` bytes of `n` input values.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Fit {
    fixed: u128,
    linear: f64,
    square: f64,
    /// The largest pass, which the fit goes through.
    from: Pass,
}

/// The fit [`extrapolate`] extends, through the largest of `passes`.
fn fit(passes: &[Pass]) -> Option<Fit> {
    let by_size = |a: &Pass, b: &Pass| a.values.cmp(&b.values).then(a.peak.cmp(&b.peak));
    let largest = passes.iter().copied().max_by(by_size)?;
    if largest.values == 0 {
        return None;
    }
    let smaller = passes
        .iter()
        .copied()
        .filter(|p| p.values.saturating_mul(2) <= largest.values && p.values > 0)
        .max_by(by_size);
    // What every pass holds whatever its size (thread stacks, allocator
    // and kernel caches): counted as neither term, it would pass for
    // linear memory at small sizes and hide the square. It is read from
    // passes far smaller than the largest, and is at most what the two
    // compared took.
    let fixed = passes
        .iter()
        .filter(|p| p.values.saturating_mul(FAR_SMALLER) <= largest.values)
        .map(|p| p.peak)
        .min()
        .unwrap_or(0)
        .min(smaller.map_or(largest.peak, |s| s.peak.min(largest.peak)));
    let (n2, p2) = (largest.values as f64, (largest.peak - fixed) as f64);
    // p1 = a n1 + b n1^2 and p2 = a n2 + b n2^2, so with r = n2 / n1:
    // p2 - r p1 = b n2 (n2 - n1).
    let square = match smaller {
        Some(s) if s.peak - fixed >= NOISE_FLOOR && largest.peak - fixed >= NOISE_FLOOR => {
            let (n1, p1) = (s.values as f64, (s.peak - fixed) as f64);
            if p2 / p1 >= SQUARE_EVIDENCE * (n2 / n1) {
                ((p2 - n2 / n1 * p1) / (n2 * (n2 - n1))).max(0.0)
            } else {
                0.0
            }
        }
        _ => 0.0,
    };
    Some(Fit {
        fixed,
        linear: ((p2 - square * n2 * n2) / n2).max(0.0),
        square,
        from: largest,
    })
}

/// This process's resident memory (`VmRSS`) in bytes; `None` off Linux.
fn resident_bytes() -> Option<u128> {
    crate::memory::status_field("VmRSS:").map(|bytes| bytes as u128)
}

/// This process's resident high-water mark (`VmHWM`) in bytes.
fn resident_high_water() -> Option<u128> {
    crate::memory::status_field("VmHWM:").map(|bytes| bytes as u128)
}

/// Runs `work` while a thread samples the resident memory: its result and
/// the highest reading (`None` where no thread could be started or nothing
/// could be read). The kernel's high-water mark is read too, not reset
/// (resetting it through `/proc/self/clear_refs` would change the peak the
/// caller's own tools report): where it rose while `work` ran, that rise
/// is the pass's peak exactly. A sampler starved of the CPU by other
/// processes missed the peak of a 1024 px attention pass, and probing took
/// memory that grows with the square for linear.
fn peak_resident<T>(work: impl FnOnce() -> T) -> (T, Option<u128>) {
    let before = resident_high_water();
    let (out, sampled) = sample_peak(work);
    (out, pass_peak(sampled, before, resident_high_water()))
}

/// The peak of a pass: the sampled one, or the high-water mark where it
/// rose from `before` to `after` while the pass ran (then no reading in
/// the pass was higher).
fn pass_peak(sampled: Option<u128>, before: Option<u128>, after: Option<u128>) -> Option<u128> {
    let rose = match (before, after) {
        (Some(before), Some(after)) if after > before => Some(after),
        _ => None,
    };
    sampled.max(rose)
}

/// Runs `work` while a thread samples the resident memory every
/// [`SAMPLE_EVERY`].
fn sample_peak<T>(work: impl FnOnce() -> T) -> (T, Option<u128>) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = std::thread::Builder::new()
            .name("unet-rt-probe-memory".to_owned())
            .spawn_scoped(scope, || {
                let mut peak = resident_bytes();
                while !done.load(Ordering::Acquire) {
                    peak = peak.max(resident_bytes());
                    std::thread::park_timeout(SAMPLE_EVERY);
                }
                peak
            });
        // Stops the sampler however `work` ends: the scope waits for its
        // threads, and one never told to stop (a panic in `work`) would
        // hold it, and the caller, forever.
        let stop = StopSampler(&done, sampler.as_ref().ok().map(|h| h.thread().clone()));
        let out = work();
        let after = resident_bytes();
        drop(stop);
        let peak = sampler
            .ok()
            .and_then(|handle| handle.join().ok().flatten().max(after));
        (out, peak)
    })
}

/// Tells the sampler of [`sample_peak`] to stop, when dropped.
struct StopSampler<'a>(&'a AtomicBool, Option<std::thread::Thread>);

impl Drop for StopSampler<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        if let Some(thread) = &self.1 {
            thread.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u128 = 1 << 20;

    fn pass(values: u128, peak_mib: u128) -> Pass {
        Pass {
            values,
            peak: peak_mib * MIB,
        }
    }

    #[test]
    fn nothing_is_predicted_without_passes_or_within_the_measured_sizes() {
        assert_eq!(extrapolate(&[], 100), None);
        let passes = [pass(1000, 50), pass(4000, 200)];
        assert_eq!(extrapolate(&passes, 4000), None);
        assert_eq!(extrapolate(&passes, 10), None);
    }

    #[test]
    fn convolutions_grow_linearly() {
        let passes = [pass(1 << 16, 30), pass(1 << 18, 120)];
        let p = extrapolate(&passes, 1 << 20).unwrap();
        assert!(!p.quadratic);
        assert_eq!(p.peak, 480 * MIB);
        assert_eq!(p.from, passes[1]);
    }

    #[test]
    fn attention_grows_with_the_square_under_the_convolutions() {
        // 32 MiB of convolutions per 2^16 values, 32 MiB of attention per
        // 2^32 values squared.
        let at = |n: u128| pass(n, 32 * n / (1 << 16) + 32 * n * n / (1 << 32));
        let passes = [at(1 << 16), at(1 << 18)];
        let p = extrapolate(&passes, 1 << 22).unwrap();
        assert!(p.quadratic);
        assert_eq!(p.peak, at(1 << 22).peak);
        // The measured case: 251 MiB at 512 px, 2235 MiB at 1024 px.
        let measured = [pass(1 << 18, 251), pass(1 << 20, 2235)];
        let p = extrapolate(&measured, 1 << 22).unwrap();
        assert!(p.peak > 27 << 30 && p.peak < 29 << 30, "{p:?}");
    }

    #[test]
    fn small_or_shrinking_passes_are_taken_as_linear() {
        // Below the noise floor, a ratio of 1 MiB to 8 MiB is the allocator's.
        let small = [pass(1 << 10, 1), pass(1 << 12, 8)];
        assert!(!extrapolate(&small, 1 << 14).unwrap().quadratic);
        // A larger pass that took less (memory reused) says nothing either.
        let shrinking = [pass(1 << 16, 100), pass(1 << 18, 90)];
        let p = extrapolate(&shrinking, 1 << 20).unwrap();
        assert!(!p.quadratic);
        assert_eq!(p.peak, 360 * MIB);
        // Passes closer than twice apart are not compared.
        let close = [pass(3000, 100), pass(4000, 400)];
        assert!(!extrapolate(&close, 8000).unwrap().quadratic);
    }

    #[test]
    fn the_largest_pass_and_the_largest_one_half_its_size_are_compared() {
        let passes = [
            pass(1 << 13, 100),
            pass(1 << 14, 20),
            pass(1 << 16, 20),
            pass(1 << 18, 320),
            pass((1 << 17) + 1, 999),
        ];
        let p = extrapolate(&passes, 1 << 20).unwrap();
        // (1<<17)+1 is within twice of 1<<18: 1<<16 is the one compared.
        assert!(p.quadratic);
        assert_eq!(p.from, pass(1 << 18, 320));
        // Through (1, 20) and (4, 320) in units of 2^16 values:
        // b = (320 - 4 * 20) / (4 * 3) = 20, a = 0; at 16 units 20 * 256.
        assert_eq!(p.peak, 20 * 256 * MIB);
    }

    #[test]
    fn what_every_pass_holds_is_neither_linear_nor_square() {
        // 14 MiB whatever the size, 20 MiB of attention at 2048 values,
        // growing with their square: the 1-value pass shows the fixed part,
        // and 34 -> 94 MiB for twice the values is then 20 -> 80, a square.
        let at = |n: u128| pass(n, 14 + 20 * n * n / (2048 * 2048));
        let passes = [at(1), at(2048), at(4096)];
        let p = extrapolate(&passes, 16384).unwrap();
        assert!(p.quadratic);
        assert_eq!(p.peak, at(16384).peak);
        // Without the small pass, 34 -> 94 MiB is too little to tell.
        let unseen = extrapolate(&passes[1..], 16384).unwrap();
        assert!(
            !unseen.quadratic && unseen.peak == 4 * 94 * MIB,
            "{unseen:?}"
        );
    }

    #[test]
    fn a_first_pass_that_takes_nothing_is_no_evidence_of_a_square() {
        // A warm process: the 1x1 passes took nothing, the 64 px pass 45
        // MiB (kernel workspaces): read as a square, it predicted 180 GiB
        // for a 512 px pass of a convolutional network.
        let passes = [pass(3, 0), pass(12, 0), pass(1728, 0), pass(12288, 45)];
        let p = extrapolate(&passes, 196_608).unwrap();
        assert!(!p.quadratic);
        assert_eq!(p.peak, 45 * 16 * MIB);
        // Noise on passes of tens of MiB is not a square either.
        let noisy = [pass(1 << 16, 16), pass(1 << 18, 80)];
        assert!(!extrapolate(&noisy, 1 << 22).unwrap().quadratic);
    }

    #[test]
    fn the_set_up_of_a_fresh_process_is_not_extrapolated_far() {
        // A fresh process: the first passes (3 and 12 values, 1x1 and 2x2
        // RGB) took the kernels' one-time set-up; read as linear, a 256 px
        // pass of LR-ASPP "would need 421 GiB" and the load was refused.
        for passes in [
            vec![pass(12, 26)],
            vec![pass(3, 0), pass(12, 26)],
            vec![pass(3, 26), pass(12, 27)],
        ] {
            assert_eq!(extrapolate(&passes, 3 * 256 * 256), None, "{passes:?}");
            assert!(extrapolate(&passes, 12 * 16).is_some(), "{passes:?}");
        }
        // Beyond 16 times the values nothing is told; within, it is.
        let passes = [pass(1 << 16, 30), pass(1 << 18, 120)];
        assert_eq!(extrapolate(&passes, (1 << 22) + 1), None);
        assert_eq!(extrapolate(&passes, 1 << 22).unwrap().peak, 1920 * MIB);
    }

    #[test]
    fn huge_sizes_saturate_rather_than_overflow() {
        let huge = |values: u128, peak: u128| Pass { values, peak };
        let passes = [
            huge(1 << 100, u128::MAX >> 12),
            huge(1 << 102, u128::MAX >> 2),
        ];
        let p = extrapolate(&passes, 1 << 106).unwrap();
        assert!(p.quadratic);
        assert_eq!(p.peak, u128::MAX);
        let linear = [
            huge(1 << 100, u128::MAX >> 3),
            huge(1 << 102, u128::MAX >> 1),
        ];
        let p = extrapolate(&linear, 1 << 106).unwrap();
        assert!(!p.quadratic);
        assert_eq!(p.peak, u128::MAX);
    }

    #[test]
    fn a_rise_of_the_high_water_mark_is_the_pass_peak() {
        // The sampler saw 300 MiB; the mark rose to 2 GiB meanwhile.
        let (mib, gib) = (1u128 << 20, 1u128 << 30);
        assert_eq!(
            pass_peak(Some(300 * mib), Some(gib), Some(2 * gib)),
            Some(2 * gib)
        );
        // A mark that did not rise was set before the pass.
        assert_eq!(
            pass_peak(Some(300 * mib), Some(2 * gib), Some(2 * gib)),
            Some(300 * mib)
        );
        // Reset meanwhile (clear_refs), or unreadable: the sampled peak.
        assert_eq!(
            pass_peak(Some(300 * mib), Some(2 * gib), Some(gib)),
            Some(300 * mib)
        );
        assert_eq!(pass_peak(Some(300 * mib), None, Some(gib)), Some(300 * mib));
        assert_eq!(pass_peak(None, Some(gib), Some(2 * gib)), Some(2 * gib));
        assert_eq!(pass_peak(None, None, None), None);
    }

    #[test]
    fn a_pass_that_panics_stops_its_sampler() {
        // Without the stop on unwind, the scope waited for the sampler forever.
        let caught = std::panic::catch_unwind(|| peak_resident(|| panic!("in the pass")));
        assert!(caught.is_err());
    }

    #[test]
    fn a_pass_that_allocates_is_seen() {
        if resident_bytes().is_none() {
            return; // not Linux: nothing is measured
        }
        let len = 256 << 20;
        // Resident memory is the process's: the other tests, threads of this
        // process, free memory while a pass runs (one run saw 99 of 256 MiB
        // with a 300 ms hold), so a pass is measured up to three times.
        let mut seen = Vec::new();
        let mut memory = PassMemory::start(tch::Device::Cpu);
        for _ in 0..3 {
            memory = PassMemory::start(tch::Device::Cpu);
            let touched = memory.measure(1, || {
                let v = vec![1u8; len];
                std::hint::black_box(&v);
                // Held long enough for a sampler starved by a busy machine (the
                // test suite's own threads on 2 cores: 20 ms saw 121 of 256 MiB).
                std::thread::sleep(Duration::from_millis(300));
                v.iter().map(|&b| u64::from(b)).sum::<u64>()
            });
            assert_eq!(touched, len as u64);
            seen.push(memory.passes[0]);
            if memory.passes[0].peak >= 128 * MIB {
                break;
            }
        }
        assert!(memory.passes[0].peak >= 128 * MIB, "{seen:?}");
        // Too far beyond the measured pass to tell.
        assert_eq!(memory.refusal(1 << 40), None);
        // A pass twice the size of one that took a pebibyte fits nowhere.
        memory.passes.push(Pass {
            values: 1 << 30,
            peak: 1 << 50,
        });
        let refusal = memory.refusal(1 << 31).unwrap();
        assert!(refusal.contains("would need about 2.0 PiB"), "{refusal}");
        assert!(PassMemory::start(tch::Device::Mps)
            .refusal(1 << 40)
            .is_none());
    }
}
