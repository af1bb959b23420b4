//! Finding the geometry of a TorchScript model that carries no metadata, by
//! running it on small zero inputs.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::info::ModelInfo;
use crate::metadata::{Normalization, OutputKind, Padding};

/// How far past the first working size the scan goes: enough to see the
/// period of networks with up to six poolings (64) twice.
const SCAN_PAST_FIRST: usize = 130;
/// No U-Net needs inputs this large to produce a first output pixel.
const SCAN_LIMIT_2D: usize = 640;
const SCAN_LIMIT_3D: usize = 200;

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
    let mut results: Vec<(usize, usize)> = Vec::new(); // (input size, size lost)
    let mut out_channels = 0;
    let mut first_ok: Option<usize> = None;
    for size in 1..=limit {
        if first_ok.is_some_and(|f| size > f + SCAN_PAST_FIRST) {
            break;
        }
        let mut shape = vec![1, weight[1]];
        shape.extend(std::iter::repeat_n(size as i64, spatial_dims));
        let Ok(input) = Tensor::f_zeros(shape.as_slice(), (Kind::Float, device)) else {
            continue;
        };
        let Ok(output) = module.forward_ts(&[input]) else {
            continue;
        };
        let out = output.size();
        if out.len() != spatial_dims + 2 {
            continue;
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
    all_on_rule.then_some(SizeRule {
        offset: first % multiple,
        multiple,
        lost,
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
                lost: 184
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
                lost: 0
            })
        );
        assert_eq!(size_rule(&[(16, 0), (32, 0)]), None);
        assert_eq!(size_rule(&[]), None);
    }
}
