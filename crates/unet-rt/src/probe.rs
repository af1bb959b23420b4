//! Finding the geometry of a TorchScript model that carries no metadata, by
//! running it on small zero inputs.

use std::path::Path;

use std::time::{Duration, Instant};

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::error::{Error, Result};
use crate::info::ModelInfo;
use crate::metadata::{Normalization, OutputKind, Padding};

/// How far past the first working size the scan goes: enough to see the
/// period of networks with up to six poolings (64) twice.
const SCAN_PAST_FIRST: usize = 130;
/// No U-Net needs inputs this large to produce a first output pixel.
const SCAN_LIMIT_2D: usize = 640;
const SCAN_LIMIT_3D: usize = 200;

/// Probing gives up after this long: a model it cannot read in that time
/// needs metadata, and a load must not take minutes.
const PROBE_BUDGET: Duration = Duration::from_secs(30);

/// Turns the graph executor's optimisations off on this thread for a scope
/// (they are per thread, and on by default).
struct PlainExecutor;

impl PlainExecutor {
    fn enter() -> Self {
        let _ = tch::jit::f_set_graph_executor_optimize(false);
        Self
    }
}

impl Drop for PlainExecutor {
    fn drop(&mut self) {
        let _ = tch::jit::f_set_graph_executor_optimize(true);
    }
}

/// What a non-tensor output is, for messages.
fn ivalue_kind(value: &IValue) -> &'static str {
    match value {
        IValue::None => "None",
        IValue::Tuple(_) => "a tuple",
        IValue::GenericList(_)
        | IValue::TensorList(_)
        | IValue::DoubleList(_)
        | IValue::IntList(_)
        | IValue::BoolList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        IValue::Double(_) | IValue::Int(_) | IValue::Bool(_) => "a number",
        IValue::String(_) => "a string",
        _ => "an object",
    }
}

/// Probes `module` (already in eval mode on `device`).
pub(crate) fn probe(module: &CModule, device: Device, path: &Path) -> Result<ModelInfo> {
    let invalid = |reason: String| Error::InvalidModel {
        path: path.to_owned(),
        reason,
    };
    let params = module
        .named_parameters()
        .map_err(|e| invalid(e.to_string()))?;
    let Some((_, first)) = params.iter().find(|(_, p)| matches!(p.dim(), 4 | 5)) else {
        return Err(invalid(
            "it has no unet_rt metadata and no convolution weights to probe \
             (a frozen module?); export it with metadata (training/export.py)"
                .to_owned(),
        ));
    };
    let weight = first.size();
    let spatial_dims = first.dim() - 2;
    let in_channels = usize::try_from(weight[1]).unwrap_or(1);
    let limit = if spatial_dims == 2 {
        SCAN_LIMIT_2D
    } else {
        SCAN_LIMIT_3D
    };

    let _guard = tch::no_grad_guard();
    // The graph executor specialises and keeps a plan per input shape; over
    // hundreds of probe sizes that held gigabytes and took seconds a load.
    let _plain = PlainExecutor::enter();
    let started = Instant::now();
    let mut results: Vec<(usize, usize)> = Vec::new(); // (input size, size lost)
    let mut out_channels = 0;
    let mut first_ok: Option<usize> = None;
    for size in 1..=limit {
        if first_ok.is_some_and(|f| size > f + SCAN_PAST_FIRST) {
            break;
        }
        if started.elapsed() > PROBE_BUDGET {
            return Err(invalid(format!(
                "it has no unet_rt metadata and probing its geometry gave up after {} s at input size {size} \
                 (each forward pass is slow, or most sizes fail); export it with metadata (training/export.py)",
                PROBE_BUDGET.as_secs()
            )));
        }
        let mut shape = vec![1, weight[1]];
        shape.extend(std::iter::repeat_n(size as i64, spatial_dims));
        let Ok(input) = Tensor::f_zeros(shape.as_slice(), (Kind::Float, device)) else {
            continue;
        };
        // An error may be the size (too small to pool, odd where even is
        // needed): try the next. A wrong kind of output is the same at every
        // size: say so at once.
        let Ok(output) = module.forward_is(&[IValue::Tensor(input)]) else {
            continue;
        };
        let IValue::Tensor(output) = output else {
            return Err(invalid(format!(
                "it has no unet_rt metadata and its forward returns {}, not a tensor",
                ivalue_kind(&output)
            )));
        };
        let out = output.size();
        if out.len() != spatial_dims + 2 {
            return Err(invalid(format!(
                "it has no unet_rt metadata and for an input of shape {shape:?} it returns shape {out:?}: \
                 a segmentation network returns (N, classes, spatial...) of rank {}",
                spatial_dims + 2
            )));
        }
        let sides: Vec<usize> = out[2..]
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect();
        // Every axis must lose the same amount, and an even one.
        if sides
            .iter()
            .any(|&s| s != sides[0] || s > size || (size - s) % 2 == 1)
        {
            continue;
        }
        out_channels = usize::try_from(out[1]).unwrap_or(0);
        first_ok.get_or_insert(size);
        results.push((size, size - sides[0]));
        // Three evenly spaced sizes that lose the least, with none between,
        // show the period: scanning on only costs time (larger inputs).
        if size_rule(&results).is_some_and(|rule| rule.evenly_seen) {
            break;
        }
    }
    let rule = size_rule(&results).ok_or_else(|| {
        invalid(format!(
            "it has no unet_rt metadata and its output follows no size rule for inputs up to {limit} \
             pixels: is it fully convolutional, with {in_channels} input channel(s)?"
        ))
    })?;
    Ok(ModelInfo {
        spatial_dims,
        in_channels,
        out_channels,
        // Without metadata the output is taken as logits.
        output: if out_channels == 1 {
            OutputKind::Sigmoid
        } else {
            OutputKind::Softmax
        },
        padding: if rule.lost == 0 {
            Padding::Same
        } else {
            Padding::Valid
        },
        halo: rule.lost / 2,
        size_multiple: rule.multiple,
        size_offset: rule.offset,
        normalization: Normalization::None,
        first_layer_width: usize::try_from(weight[0]).ok(),
        probed: true,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct SizeRule {
    offset: usize,
    multiple: usize,
    lost: usize,
    /// The last three sizes that lose the least are one `multiple` apart,
    /// and the last of them is the newest result: the period is settled.
    evenly_seen: bool,
}

/// The rule behind observed `(input size, pixels lost)` pairs: the sizes that
/// lose the least are the aligned ones; their spacing is the pooling factor.
fn size_rule(results: &[(usize, usize)]) -> Option<SizeRule> {
    let lost = results.iter().map(|&(_, l)| l).min()?;
    let good: Vec<usize> = results
        .iter()
        .filter(|&&(_, l)| l == lost)
        .map(|&(s, _)| s)
        .collect();
    if good.len() < 3 {
        return None;
    }
    let multiple = good.windows(2).map(|w| w[1] - w[0]).fold(0, gcd);
    let first = good[0];
    let last = *good.last()?;
    // Every size on the rule within the scanned range must have worked.
    let all_on_rule = (first..=last)
        .step_by(multiple)
        .all(|s| good.binary_search(&s).is_ok());
    let newest = results.last().map(|&(s, _)| s);
    let evenly_seen = newest == Some(last)
        && good[good.len() - 3..]
            .windows(2)
            .all(|w| w[1] - w[0] == multiple);
    all_on_rule.then_some(SizeRule {
        offset: first % multiple,
        multiple,
        lost,
        evenly_seen,
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_paper_rule_among_misaligned_sizes() {
        // Aligned sizes lose 184; misaligned ones (floor pooling) lose more.
        let mut results = vec![];
        for s in 180..400 {
            let lost = if s % 16 == 12 { 184 } else { 190 };
            if s > 186 {
                results.push((s, lost));
            }
        }
        assert_eq!(
            size_rule(&results),
            Some(SizeRule {
                offset: 12,
                multiple: 16,
                lost: 184,
                evenly_seen: false
            })
        );
    }

    #[test]
    fn same_models_and_too_few_sizes() {
        let same: Vec<_> = (1..10).map(|k| (16 * k, 0)).collect();
        assert_eq!(
            size_rule(&same),
            Some(SizeRule {
                offset: 0,
                multiple: 16,
                lost: 0,
                evenly_seen: true
            })
        );
        assert_eq!(size_rule(&[(16, 0), (32, 0)]), None);
        assert_eq!(size_rule(&[]), None);
    }

    #[test]
    fn the_scan_stops_once_three_aligned_sizes_are_evenly_spaced() {
        let mut results = vec![(188, 184)];
        results.extend((189..204).map(|s| (s, 190)));
        results.push((204, 184));
        assert!(size_rule(&results).is_none(), "two sizes are not a period");
        results.extend((205..220).map(|s| (s, 190)));
        assert!(size_rule(&results).is_none(), "still two aligned sizes");
        results.push((220, 184));
        let rule = size_rule(&results).expect("rule");
        assert!(rule.evenly_seen);
        assert_eq!((rule.offset, rule.multiple, rule.lost), (12, 16, 184));
        // A misaligned size after the third aligned one leaves the rule settled
        // but is not the moment to stop (the scan stopped before it).
        results.push((221, 190));
        assert!(!size_rule(&results).expect("rule").evenly_seen);
        // Uneven spacing is no rule yet: the scan goes on.
        assert!(size_rule(&[(16, 0), (32, 0), (40, 0)]).is_none());
    }
}
