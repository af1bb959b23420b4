//! Tiles against the whole-image forward: the probe images (uniform,
//! structured, negative, raw range, flat, smooth) on which a network's
//! tiles are measured at load and when probing.

use super::*;

/// Measures, for a model with metadata, how well tiles agree with the
/// whole-image forward (for networks whose code has whole-tile layers), on
/// uniform noise and the probes beyond it ([`Placement::beyond_uniform`]).
pub(crate) fn measure(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
) -> Result<Agreement> {
    with_placement(module, device, path, info, |prober, at| {
        let uniform = at.uniform(prober)?;
        at.beyond_uniform(prober, uniform, sees_raw_values(info))
    })
}

/// The largest value of an 8-bit and of a 16-bit pixel: the scales of
/// the raw-range probes ([`Prober::with_raw_range`]).
const EIGHT_BIT_MAX: f64 = 255.0;
const SIXTEEN_BIT_MAX: f64 = 65535.0;

/// Differences (of the output's range) the 16-bit probe leaves to the
/// others: a statistic that switches on moved tiles by 13 times the range.
const SIXTEEN_BIT_TOLERANCE: f64 = 1e-2;

/// Whether the network of `info` sees pixel values as they are, 0 to 255
/// for 8-bit images and beyond (no normalization, or a scale that leaves
/// them above 1): metadata declaring halo 1 for a network whose wide path
/// opens only above 5 loaded as exact, and 8-bit images tiled 7.8% of the
/// range off.
pub(super) fn sees_raw_values(info: &ModelInfo) -> bool {
    match info.normalization {
        Normalization::None => true,
        Normalization::Scale { factor } => factor.abs() * 255.0 > 1.0 + 1e-6,
        _ => false,
    }
}

/// Runs `measure` with a prober for the model of `info` and the
/// [`Placement`] of its tile, gradients and graph optimisations off.
fn with_placement<T>(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
    measure: impl FnOnce(&mut Prober<'_>, &Placement) -> T,
) -> T {
    let _guard = tch::no_grad_guard();
    let _plain = PlainExecutor::enter();
    let mut prober = Prober::of_info(module, device, path, info);
    measure(&mut prober, &Placement::of(info))
}

/// Where [`measure`] cuts its tile: a probe image wide enough for tiles
/// beyond the overlap, and the smallest tile the engine makes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placement {
    pub(super) size: usize,
    pub(super) shift: usize,
    pub(super) inner: usize,
    pub(super) margin: usize,
    pub(super) lost: usize,
}

impl Placement {
    fn of(info: &ModelInfo) -> Self {
        let dims = usize::from(info.spatial_dims == 3);
        let shift = info.size_multiple.max(1);
        let size = info.round_up_valid(
            REACH_START[dims]
                .max(2 * info.effective_halo() + 2 * shift)
                .max(info.min_size + shift),
        );
        Self {
            size,
            shift,
            inner: info.min_tile().min(size.saturating_sub(shift)),
            margin: match info.padding {
                Padding::Valid => 0,
                Padding::Same => info.effective_halo(),
            },
            lost: info.shrink(),
        }
    }

    /// The agreement on uniform noise.
    fn uniform(&self, prober: &mut Prober<'_>) -> Result<Agreement> {
        let image = prober.noise(self.size, 1)?;
        let whole = prober.output(&image)?;
        prober.agreement(&image, &whole, self)
    }

    /// The worse of `uniform` and the agreements on the probes that find
    /// what uniform noise does not: the structured probe, the raw 8-bit
    /// range where the network sees it (`raw_values`), a flat tile, a
    /// smooth field, the structured probe negated, and the raw 16-bit
    /// range (last: the probes a slow network on a busy machine can most
    /// easily do without). Models with metadata were checked on the first
    /// alone, and those the others find loaded as exact.
    pub(super) fn beyond_uniform(
        &self,
        prober: &mut Prober<'_>,
        uniform: Agreement,
        raw_values: bool,
    ) -> Result<Agreement> {
        let measured = prober.with_structured(uniform, self)?;
        let measured = if raw_values {
            prober.with_raw_range(measured, self, EIGHT_BIT_MAX)?
        } else {
            measured
        };
        let measured = prober.with_flat_tile(measured, self)?;
        let measured = prober.with_smooth_field(measured, self)?;
        let measured = prober.with_negative(measured, self)?;
        if raw_values {
            prober.with_raw_range(measured, self, SIXTEEN_BIT_MAX)
        } else {
            Ok(measured)
        }
    }
}

/// For a model with metadata, or a valid network probed without it, whose
/// code shows no whole-tile layer: tiles against the whole-image forward
/// ([`measure`]). `None` where they agree to the device's rounding, or
/// where the measurement cannot run (the network's own checks stand).
/// Otherwise the agreement and, for a same-padded model whose tiles differ
/// on uniform noise already (a reach or a pooling grid beyond the declared
/// ones), its declared geometry and what probing the network finds (the
/// probe runs only then).
///
/// A valid network's output size proves how far its convolutions reach,
/// not that nothing else sees the whole tile: a division by the input's
/// maximum, a layer norm over the image, attention or a squeeze-excitation
/// written by hand (none of them in the code scan's list), bilinear
/// upsampling reaching past what the network crops. Such networks loaded
/// as exact, and their tiles were off by up to half the output's range.
pub(crate) fn check_tiles(
    module: &CModule,
    device: Device,
    path: &Path,
    info: &ModelInfo,
) -> Result<Option<(Agreement, Option<GeometryMismatch>)>> {
    // A GPU's convolutions round in TF32 by default (about 1e-3 of the
    // range over a deep network); an undeclared reach or pooling grid, or
    // a layer that sees the whole tile, moves outputs by percents.
    let tolerance = match device {
        Device::Cpu => EXACT_TOLERANCE,
        _ => 10.0 * APPROXIMATE_TOLERANCE,
    };
    if info.fixed_size > 0 {
        // No whole-image forward to compare with: tiles the engine cuts
        // overlap, and must agree where they do. Metadata of a fixed size
        // was never checked: declared halo 0 for a network that sees 20
        // pixels around each, it loaded as exact and outputs at a tile seam
        // were half the range off.
        let measured = with_placement(module, device, path, info, |prober, _| {
            unless_cancelled(prober.overlapping_fixed_tiles(info)).map(Option::flatten)
        })?;
        return Ok(measured
            .filter(|measured| measured.max_difference > tolerance)
            .map(|measured| (measured, None)));
    }
    // Uniform noise shows a reach or a grid; the probes beyond it find
    // networks that scale by their input, which no overlap fixes, and
    // paths that uniform noise leaves closed.
    let measured = with_placement(module, device, path, info, |prober, at| {
        let Some(uniform) = unless_cancelled(at.uniform(prober))? else {
            return Ok(None);
        };
        if uniform.max_difference > tolerance {
            return Ok(Some((uniform, true)));
        }
        let measured = at.beyond_uniform(prober, uniform, sees_raw_values(info));
        Ok(unless_cancelled(measured)?.map(|measured| (measured, false)))
    })?;
    let Some((measured, on_uniform)) = measured.filter(|(m, _)| m.max_difference > tolerance)
    else {
        return Ok(None);
    };
    // Only a same-padded model whose tiles differ on uniform noise may
    // reach, or pool, beyond what it declares.
    if !(on_uniform && info.padding == Padding::Same) {
        return Ok(Some((measured, None)));
    }
    let probed = unless_cancelled(probe(
        module,
        device,
        path,
        Vec::new(),
        sees_raw_values(info),
    ))?
    .filter(|probed| probed.padding == Padding::Same);
    let declared = (info.halo, info.size_multiple);
    // Probing finds the declared geometry: the network itself is what
    // tiles cannot reproduce (it told users to declare what they had).
    if probed.as_ref().map(|p| (p.halo, p.size_multiple)) == Some(declared) {
        return Ok(Some((measured, None)));
    }
    let mismatch = GeometryMismatch {
        declared_halo: info.halo,
        declared_multiple: info.size_multiple,
        // Advice only where the geometry found holds: a network whose
        // tiles probing finds approximate too was told to declare a halo
        // that tiled 8% of its labels off.
        found: probed
            .filter(|p| p.exactness.is_exact())
            .map(|p| (p.halo, p.size_multiple)),
    };
    Ok(Some((measured, Some(mismatch))))
}

/// `result`'s value, `None` where its pass failed (a measurement that
/// could not be made finds nothing), and the error where the work was
/// cancelled: a load that ran on after an exit-time cancellation reached
/// libtorch while the interpreter was tearing down.
pub(crate) fn unless_cancelled<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Cancelled) => Err(Error::Cancelled),
        Err(_) => Ok(None),
    }
}

/// How far apart [`Prober::overlapping_fixed_tiles`] cuts its two tiles
/// of a fixed-size network whose tiles give `out` pixels and keep all but
/// `margin` on each side: half a tile on the grid of `multiple`, or less
/// where that leaves no pixel both keep. Half a tile only, a declared halo
/// of 16 on a 64-pixel tile left none, and the metadata's overlap was never
/// measured: a network that sees 24 pixels loaded as exact, tiles 4% off.
/// 0 where no shift on the grid leaves one.
fn fixed_tile_shift(out: usize, margin: usize, multiple: usize) -> usize {
    let multiple = multiple.max(1);
    let kept = out.saturating_sub(2 * margin);
    let half = (out / 2 / multiple * multiple).max(multiple);
    let widest = kept.saturating_sub(1) / multiple * multiple;
    half.min(widest)
}

impl<'a> Prober<'a> {
    /// The tile of `image` placed `at` (`at.inner` pixels from `at.shift`
    /// on every axis), a view. Every size here is below
    /// [`MAX_PROBE_VALUES`]: the casts cannot wrap.
    fn tile_of(&self, image: &Tensor, at: &Placement) -> Result<Tensor> {
        self.cube(image, at.shift, at.inner)
    }

    /// The tile of `image` placed `at` against the whole image's output
    /// `whole`, on the pixels the engine would keep: `at.margin` discarded
    /// at each tile edge (same-padded), `at.lost` the network's own crop
    /// (valid).
    pub(super) fn agreement(
        &mut self,
        image: &Tensor,
        whole: &Tensor,
        at: &Placement,
    ) -> Result<Agreement> {
        let Placement {
            shift,
            inner,
            margin,
            lost,
            ..
        } = *at;
        let size = image
            .size()
            .get(2)
            .and_then(|&s| usize::try_from(s).ok())
            .unwrap_or(0);
        let part = self.output(&self.tile_of(image, at)?)?;
        let kept = inner.saturating_sub(lost).saturating_sub(2 * margin);
        if kept == 0 {
            return Err(self.invalid(format!(
                "a probe of {size} pixels leaves no pixel beyond an overlap of {margin}"
            )));
        }
        let a = self.cube(&part, margin, kept)?;
        let b = self.cube(whole, shift + margin, kept)?;
        self.compared(&a, &b, whole, size)
    }

    /// `kept` pixels of `t` from `start` on every spatial axis, a view.
    fn cube(&self, t: &Tensor, start: usize, kept: usize) -> Result<Tensor> {
        let mut t = t.shallow_clone();
        for axis in 0..self.dims {
            // Below MAX_PROBE_VALUES: the casts cannot wrap.
            t = self.torch(t.f_narrow((axis + 2) as i64, start as i64, kept as i64))?;
        }
        Ok(t)
    }

    /// For a network of one input size (`info.fixed_size`): two passes on
    /// tiles of one noise image (uniform, then structured) shifted by half
    /// a tile on every axis (less where that leaves no pixel both keep:
    /// the largest shift on the size grid that does), against each other
    /// on the pixels both keep beyond the declared overlap, the worse of
    /// the two probes. `None` where the tile keeps no more than one step of
    /// the size grid.
    fn overlapping_fixed_tiles(&mut self, info: &ModelInfo) -> Result<Option<Agreement>> {
        let size = info.fixed_size;
        let out = size.saturating_sub(info.shrink());
        let margin = match info.padding {
            Padding::Valid => 0,
            Padding::Same => info.effective_halo(),
        };
        let shift = fixed_tile_shift(out, margin, info.size_multiple);
        if shift == 0 {
            return Ok(None);
        }
        let kept = out - 2 * margin - shift;
        let mut worst: Option<Agreement> = None;
        for structured in [false, true] {
            let image = self.noise_with(size + shift, 1, structured)?;
            let first = self.output(&self.torch(self.cube(&image, 0, size)?.f_contiguous())?)?;
            let second =
                self.output(&self.torch(self.cube(&image, shift, size)?.f_contiguous())?)?;
            let a = self.cube(&second, margin, kept)?;
            let b = self.cube(&first, shift + margin, kept)?;
            let agreement = self.compared(&a, &b, &first, size)?;
            worst = Some(match worst {
                Some(so_far) => so_far.or_worse(&agreement),
                None => agreement,
            });
        }
        Ok(worst)
    }

    /// The agreement of a tile's output `a` with `b`, the same pixels of
    /// the reference output `whole` (its largest magnitude the scale), on a
    /// probe of `size` pixels.
    fn compared(&self, a: &Tensor, b: &Tensor, whole: &Tensor, size: usize) -> Result<Agreement> {
        let scale = self.scale(whole)?;
        let max_difference = self.largest(&self.beyond_rounding(a, b)?)? / scale;
        let several = self.out_channels > 1;
        let mask_at = self.mask_at;
        let label_agreement = self
            .torch((|| {
                let labels = |t: &Tensor| {
                    if several {
                        t.f_argmax(1, false)
                    } else {
                        t.f_gt(mask_at)?.f_squeeze_dim(1)
                    }
                };
                labels(a)?
                    .f_eq_tensor(&labels(b)?)?
                    .f_to_kind(Kind::Double)?
                    .f_mean(Kind::Double)
            })())?
            .double_value(&[]);
        let pixels = a
            .size()
            .iter()
            .skip(2)
            .map(|&s| usize::try_from(s).unwrap_or(0))
            .product();
        Ok(Agreement {
            probe_size: size,
            pixels,
            max_difference: if max_difference.is_finite() {
                max_difference
            } else {
                f64::INFINITY
            },
            label_agreement,
        })
    }

    /// The worse of `uniform` (measured on uniform noise) and the same
    /// measurement on the structured probe of [`Self::noise_with`]: each
    /// misses what the other finds (a network scaling by its input's
    /// maximum is exact on uniform noise; an untrained network's global
    /// path may barely move labels on the structured one).
    fn with_structured(&mut self, uniform: Agreement, at: &Placement) -> Result<Agreement> {
        let image = self.noise_with(at.size, 1, true)?;
        let whole = self.output(&image)?;
        let structured = self.agreement(&image, &whole, at)?;
        Ok(uniform.or_worse(&structured))
    }

    /// `so_far` and the agreement on the structured probe negated (0 to
    /// -4), as the dark side of a z-scored image or a float image with
    /// negative values is: every other probe is non-negative, so a path
    /// that opens only on negative input (a gate on `relu(-x)`'s maximum
    /// or on a negative mean) never opened, and such networks were called
    /// exact with tiles 2.5% to 93% of the range off on a standard-normal
    /// image. (Uniform noise in [-1, 1) found the sum alone: its maximum is
    /// the same in every tile, its mean near 0 in all.) Skipped as
    /// [`Self::with_raw_range`] is, with a larger share of the budget left
    /// to the passes that follow: FCN-ResNet50 ran out of its 60 s with it
    /// on two busy cores.
    fn with_negative(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(3, 0.5) {
            return Ok(so_far);
        }
        let structured = self.noise_with(at.size, 5, true)?;
        let image = self.torch(structured.f_neg())?;
        self.or_worse_on(so_far, &image, at)
    }

    /// `so_far` and the agreement on the structured probe at `scale` times
    /// its values: without metadata, or with none that normalizes, a
    /// network sees an image's raw values (0 to 255 for 8-bit pixels, to
    /// 65535 for 16-bit ones). One that scales its input itself can be
    /// quiet on probes below 4 (a deep level whose biases silence it on
    /// dark input was measured exact, and real 8-bit images tiled 8% of
    /// the range off), and one whose statistic of the tile switches on
    /// only in the 16-bit range was called exact on every other probe
    /// (`x / clamp(x.std(), min=100)`: a uint16 image tiled 13 times the
    /// range off, 15% of its labels wrong). A network that fails or
    /// overflows there, or too slow for the budget's rest
    /// ([`Self::time_for_passes`]), is left to the probes it ran; the
    /// 16-bit probe runs last, with the smaller share.
    ///
    /// The 16-bit probe counts only differences beyond
    /// [`SIXTEEN_BIT_TOLERANCE`]: it is there for statistics that switch
    /// on, not for reaches that grow with the input's size (the overlap
    /// is measured on the 8-bit range): pix2pix's generator, exact on
    /// 8-bit images, differs by 1.9e-3 of its range on 65535 times noise
    /// and was called approximate for it.
    fn with_raw_range(
        &mut self,
        so_far: Agreement,
        at: &Placement,
        scale: f64,
    ) -> Result<Agreement> {
        let sixteen_bit = scale > EIGHT_BIT_MAX;
        if !self.time_for_passes(3, if sixteen_bit { 0.5 } else { 0.6 }) {
            return Ok(so_far);
        }
        let noise = self.noise_with(at.size, 3, true)?;
        let image = self.torch(noise.f_mul_scalar(scale))?;
        let measured = self.or_worse_on(so_far.clone(), &image, at)?;
        Ok(
            if sixteen_bit && measured.max_difference <= SIXTEEN_BIT_TOLERANCE {
                so_far
            } else {
                measured
            },
        )
    }

    /// `so_far` and the agreement where the compared tile is flat (zeros)
    /// inside a noisy probe, as a tile in a mosaic's border or a masked
    /// well is: a network that returns zeros for a flat input ("nothing to
    /// segment", from `x.std()` over its tile) never met one on noise, was
    /// called exact, and half the labels of an image with a black part
    /// differed. Skipped as [`Self::with_raw_range`] is.
    fn with_flat_tile(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(2, 0.7) {
            return Ok(so_far);
        }
        let image = self.noise(at.size, 4)?;
        let mut region = self.tile_of(&image, at)?;
        let _ = self.torch(region.f_zero_())?;
        self.or_worse_on(so_far, &image, at)
    }

    /// `so_far` and the agreement on a smooth field spanning [0, 1] (a
    /// sine along each axis, over about half the probe, averaged): every
    /// brightness in it sits in a region of little contrast, as in an
    /// image's background. A network whose deep path opens only on a flat
    /// background of one brightness (a gate on the local variance and the
    /// level) was silent on every noise probe: called exact with an
    /// overlap of 16, and tiles were 20% of the range off on a bright-field
    /// image. Skipped as [`Self::with_raw_range`] is.
    fn with_smooth_field(&mut self, so_far: Agreement, at: &Placement) -> Result<Agreement> {
        if !self.time_for_passes(2, 0.6) {
            return Ok(so_far);
        }
        let image = self.smooth_field(at.size)?;
        self.or_worse_on(so_far, &image, at)
    }

    /// The probe of [`Self::with_smooth_field`], `self.channels` alike.
    fn smooth_field(&self, size: usize) -> Result<Tensor> {
        if !self.fits(size) {
            return Err(self.too_large(size));
        }
        let side = i64::try_from(size).unwrap_or(i64::MAX);
        let period = (size as f64 / 2.0).max(2.0);
        let mut field = self.torch(Tensor::f_zeros(
            self.shape(size).as_slice(),
            (Kind::Float, self.device),
        ))?;
        for axis in 0..self.dims {
            let mut view = vec![1i64; self.dims + 2];
            view[axis + 2] = side;
            // A phase per axis, so that the axes' waves do not cancel.
            let phase = 0.7 * (axis as f64 + 1.0);
            let wave = self.torch((|| {
                Tensor::f_arange(side, (Kind::Float, self.device))?
                    .f_mul_scalar(std::f64::consts::TAU / period)?
                    .f_add_scalar(phase)?
                    .f_sin()?
                    .f_mul_scalar(0.5 / self.dims as f64)?
                    .f_add_scalar(0.5 / self.dims as f64)?
                    .f_reshape(view.as_slice())
            })())?;
            field = self.torch(field.f_add(&wave))?;
        }
        Ok(field)
    }

    /// `so_far` and the agreement of tiles of `image` placed `at`; `so_far`
    /// alone where the network fails on `image` or returns NaN or infinite
    /// values there ([`Self::output`]): the extra probes only add to what
    /// the others found.
    fn or_worse_on(
        &mut self,
        so_far: Agreement,
        image: &Tensor,
        at: &Placement,
    ) -> Result<Agreement> {
        let measured = self
            .output(image)
            .and_then(|whole| self.agreement(image, &whole, at));
        Ok(match unless_cancelled(measured)? {
            Some(measured) => so_far.or_worse(&measured),
            None => so_far,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_tiles_are_shifted_to_share_kept_pixels_wherever_the_grid_allows() {
        // Half a tile where that leaves pixels both keep.
        assert_eq!(fixed_tile_shift(256, 16, 16), 128);
        assert_eq!(fixed_tile_shift(64, 0, 16), 32);
        // A halo of 16 on 64 pixels keeps 32: half a tile shared none.
        assert_eq!(fixed_tile_shift(64, 16, 16), 16);
        assert_eq!(fixed_tile_shift(64, 16, 1), 31);
        // One grid step kept (or nothing): no shift on the grid shares a pixel.
        assert_eq!(fixed_tile_shift(64, 24, 16), 0);
        assert_eq!(fixed_tile_shift(64, 40, 16), 0);
        assert_eq!(fixed_tile_shift(0, 0, 0), 0);
        for (out, margin, multiple) in [(64, 16, 16), (100, 7, 4), (572, 0, 16), (33, 16, 1)] {
            let shift = fixed_tile_shift(out, margin, multiple);
            assert!(shift == 0 || (shift % multiple == 0 && shift < out - 2 * margin));
        }
    }
}
