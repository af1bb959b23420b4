//! What a model's metadata declares, checked against a few passes at
//! load: sizes, channels, output kind, and how the network treats a batch.

use super::*;

/// Runs `module` on two images at once and on the first alone (twice,
/// where they differ): the [`Passes`] found. A network
/// whose output for one image moves with the other images of its batch
/// gave results that changed with the planner's batch size; one that
/// differs between passes on one input cannot be tiled reproducibly. Three
/// passes on small images at most; a failure here (a network that fails
/// on this size) finds nothing, and the network's own checks stand.
///
/// For a model with metadata, passes first check what the metadata
/// declares (the network runs at two sizes its rule allows, and returns
/// the channels and the size its padding and halo give there, values that
/// can be probabilities where it declares them: [`check_declared_sizes`]):
/// a contradiction is an error at load, not at the first image.
///
/// # Errors
/// [`Error::InvalidMetadata`] for such a contradiction.
pub(crate) fn check_passes(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
) -> Result<Passes> {
    let _guard = tch::no_grad_guard();
    let _plain = PlainExecutor::enter();
    let mut prober = Prober::of_info(module, device, path, info);
    let size = info.round_up_valid(REACH_START[usize::from(info.spatial_dims == 3)] / 4);
    let declared = match info.output {
        Activation::Probabilities => Some("probabilities"),
        Activation::Masks => Some("masks"),
        _ => None,
    };
    if let Some(declared) = declared.filter(|_| !info.probed) {
        // Taken at its word, logits would be written as probabilities.
        let reading = prober
            .noise(size, 1)
            .and_then(|x| prober.any_output(&x))
            .and_then(|y| prober.reading(&y));
        let unlike = match reading {
            Ok(Reading::Unbounded(values)) => Some(values),
            Ok(Reading::ClassNumbers(high)) => Some(format!("values from 0 to {high}")),
            Ok(Reading::Masks(sums)) if info.output == Activation::Probabilities => {
                Some(format!("{sums} (declare \"masks\" for independent masks)"))
            }
            _ => None,
        };
        if let Some(unlike) = unlike {
            return Err(Error::InvalidMetadata {
                path: path.to_owned(),
                reason: format!(
                    "it declares output \"{declared}\", but for a random input the network returns \
                     {unlike}: declare \"softmax\" or \"sigmoid\" for logits"
                ),
            });
        }
    }
    let logits = matches!(info.output, Activation::Softmax | Activation::Sigmoid);
    if logits && !info.probed {
        // Taken at its word, probabilities would get a second softmax (off
        // by up to 0.5) or, with one channel, labels at logit 0 (every
        // pixel). One pass for logits networks, whose output leaves [0, 1].
        if let Some(kind) = unless_cancelled(prober.returns_probabilities(size))?.flatten() {
            return Err(Error::InvalidMetadata {
                path: path.to_owned(),
                reason: format!(
                    "it declares output \"{}\" (logits), but the network returns values within [0, 1] \
                     even for inputs a thousand times as strong{}: declare \"{}\"",
                    info.output.name(),
                    if kind == Activation::Probabilities && info.out_channels > 1 {
                        ", summing to 1 over its channels"
                    } else {
                        ""
                    },
                    kind.name()
                ),
            });
        }
    }
    if !info.probed {
        check_declared_sizes(&mut prober, info, size)?;
    }
    let Some((mut passes, _)) = unless_cancelled(prober.batch_and_repeat(size))? else {
        return Ok(Passes::default());
    };
    passes.contiguous_input = unless_cancelled(prober.fails_channels_last(size))?.unwrap_or(false);
    Ok(passes)
}

/// For a model with metadata: the network runs at `size` and at the next
/// size its rule declares valid (one image each), and returns the
/// channels and output size declared there. Metadata naming other
/// input channels, another rank, or a size rule off the network's pooling
/// grid loaded as exact, and every call then failed with libtorch's words
/// ("Given groups=1 ...", "Sizes of tensors must match") naming no field.
///
/// # Errors
/// [`Error::InvalidMetadata`] quoting the network's message;
/// [`Error::Cancelled`]. A pass that cannot run for other reasons (too
/// large to probe, a container the engine refuses with its own message)
/// finds nothing.
fn check_declared_sizes(prober: &mut Prober<'_>, info: &ModelInfo, size: usize) -> Result<()> {
    let next = if info.fixed_size > 0 {
        size
    } else {
        info.round_up_valid(size.saturating_add(1))
    };
    // The second pass is `size` along the first axis and `next` along the
    // others: a network that swaps its axes returns them the other way.
    let mut passes = vec![vec![size; info.spatial_dims]];
    if next != size {
        let mut axes = vec![next; info.spatial_dims];
        axes[0] = size;
        passes.push(axes);
    }
    for axes in passes {
        let largest = axes.iter().copied().max().unwrap_or(size);
        if !prober.fits(largest) {
            return Ok(());
        }
        let input = prober
            .noise(largest, 1)
            // Contiguous, as the engine's tiles are: a network viewing its
            // input (`x.view(...)`) fails on a strided one.
            .and_then(|cube| {
                prober.torch(
                    cube.f_narrow(2, 0, i64::try_from(axes[0]).unwrap_or(i64::MAX))
                        .and_then(|t| t.f_contiguous()),
                )
            })?;
        let size = shape_text(&input.size()[2..]);
        prober.last_failure = None;
        match prober.forward(input) {
            Ok(Some(output)) => {
                let mut expected = vec![1, info.out_channels];
                expected.extend(axes.iter().map(|side| side.saturating_sub(info.shrink())));
                let got: Vec<usize> = output
                    .size()
                    .iter()
                    .map(|&d| usize::try_from(d).unwrap_or(0))
                    .collect();
                if got != expected {
                    // No metadata fixes a network that swaps its axes (and
                    // probing refuses it, so it would say nothing).
                    let found = if swaps_axes(&axes, got.get(2..).unwrap_or_default()) {
                        format!(": its spatial axes in another order {SWAPPED_AXES}")
                    } else {
                        what_probing_finds(prober, info)?
                    };
                    return Err(Error::InvalidMetadata {
                        path: prober.path.to_owned(),
                        reason: format!(
                            "it declares {} output channel(s) and, with {:?} padding, halo {} and input sizes \
                             {} + k * {}, an output of {expected:?} for an input of {size} pixels; \
                             the network returns {got:?}{found}",
                            info.out_channels,
                            info.padding,
                            info.halo,
                            info.size_offset,
                            info.size_multiple,
                        ),
                    });
                }
            }
            // A device short of memory says nothing of the metadata.
            Ok(None)
                if prober
                    .last_failure
                    .as_deref()
                    .is_some_and(crate::error::says_out_of_memory) =>
            {
                return Ok(())
            }
            Ok(None) => {
                if let Some(error) = type_error(prober) {
                    return Err(error);
                }
                return Err(Error::InvalidMetadata {
                    path: prober.path.to_owned(),
                    reason: format!(
                        "it declares {} input channel(s), {} spatial dimensions and input sizes {} + k * {} \
                         ({:?} padding, halo {}), but at {size} pixels the network fails: {}{}",
                        info.in_channels,
                        info.spatial_dims,
                        info.size_offset,
                        info.size_multiple,
                        info.padding,
                        info.halo,
                        prober.last_failure.clone().unwrap_or_else(|| "(no message)".to_owned()),
                        what_probing_finds(prober, info)?
                    ),
                });
            }
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// The error for a network whose last pass failed on two floating types
/// meeting (`None` for other failures): a cast inside it (x.double())
/// fails at every size once its weights run in float32, and was reported
/// as a size rule the network does not follow, or metadata it contradicts,
/// with the type error at the message's tail.
pub(super) fn type_error(prober: &Prober<'_>) -> Option<Error> {
    let failure = prober
        .last_failure
        .as_deref()
        .filter(|m| crate::error::says_dtype_mismatch(m))?;
    Some(Error::InvalidModel {
        path: prober.path.to_owned(),
        reason: format!(
            "its forward pass fails with a type error ({failure}): the network casts its input to a \
             floating type its weights are not in. unet_rt feeds float32 and runs the weights in the chosen \
             precision (fp32, bf16 or fp16); remove the cast (x.double(), x.to(...)) from forward, or cast to \
             the weights' dtype (x.to(self.conv.weight.dtype))"
        ),
    })
}

/// "; probing the network finds ...": the geometry and channels probing
/// finds, said with metadata the network contradicts (empty where probing
/// fails too, or finds what is declared).
///
/// # Errors
/// [`Error::Cancelled`] where the work was cancelled meanwhile.
fn what_probing_finds(prober: &Prober<'_>, info: &ModelInfo) -> Result<String> {
    let found = probe(
        prober.module,
        prober.device,
        prober.path,
        Vec::new(),
        sees_raw_values(info),
    );
    Ok(match unless_cancelled(found)? {
        Some(found) => format!(
            "; probing the network finds {} spatial dimensions, {} input channel(s), {} output channel(s), \
             {:?} padding, halo {} and input sizes {} + k * {}: declare those",
            found.spatial_dims,
            found.in_channels,
            found.out_channels,
            found.padding,
            found.halo,
            found.size_offset,
            found.size_multiple
        ),
        None => String::new(),
    })
}

/// Whether a pass with `inputs` pixels per axis that returned `outputs`
/// swaps its axes: a convolutional network's output side grows with the
/// input's along the same axis, and here a longer axis gave the shorter
/// side (a transpose or permute inside). On square tiles such a network
/// ran, and returned every tile mirrored about its diagonal.
pub(super) fn swaps_axes(inputs: &[usize], outputs: &[usize]) -> bool {
    let pairs: Vec<(usize, usize)> = inputs
        .iter()
        .copied()
        .zip(outputs.iter().copied())
        .collect();
    pairs.iter().enumerate().any(|(i, a)| {
        pairs[..i]
            .iter()
            .any(|b| (b.0 < a.0 && b.1 > a.1) || (b.0 > a.0 && b.1 < a.1))
    })
}

/// What to do about a network [`swaps_axes`] finds.
pub(super) const SWAPPED_AXES: &str =
    "(a transpose or permute of the image axes inside the network?): \
                            unet_rt needs the output's axes in the input's order";

/// What [`check_passes`] finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Passes {
    /// The output for one image moves with the other images of its batch.
    pub batch_dependent: bool,
    /// Two passes on one input differ.
    pub nondeterministic: bool,
    /// A pass of two images fails (or does not return two) where one works:
    /// a batch size fixed in the network (a traced `reshape(1, ...)`),
    /// which loaded as exact and failed at the first batch the planner
    /// chose (on a GPU, for any large image).
    pub one_image_per_pass: bool,
    /// A pass on a channels-last input, the layout the engine's batches
    /// have, fails where the contiguous one worked: a network that `view`s
    /// its input across channels loaded, then failed at every call
    /// ("view size is not compatible with input tensor's size and stride").
    pub contiguous_input: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_swapped_where_a_longer_axis_gives_the_shorter_side() {
        assert!(swaps_axes(&[64, 80], &[80, 64]));
        assert!(swaps_axes(&[64, 80, 72], &[64, 72, 80]));
        // Same-padded, valid (a margin lost), and equal sides: not swapped.
        assert!(!swaps_axes(&[64, 80], &[64, 80]));
        assert!(!swaps_axes(&[64, 80], &[60, 76]));
        assert!(!swaps_axes(&[64, 64], &[60, 60]));
        // Floor pooling steps keep the order (or tie it).
        assert!(!swaps_axes(&[65, 66], &[64, 64]));
    }
}
