//! The overlap a network without metadata needs, and its pooling grid:
//! how far a change to part of a probe image moves the output, and which
//! tile shifts reproduce the whole image; probing stops in time.

use super::*;

/// The largest pooling factor looked for in networks that take any size
/// (a power of two: shifts are bisected over their exponents), in 2-D and
/// in 3-D. The first overlap probe is four times as wide: 64 in 3-D made
/// it 256 voxels a side, seconds a pass even for small networks, and a
/// 3-D network that takes any size (MONAI's BasicUNet, VNet) gave up
/// after 30 s; four poolings are what 3-D networks use.
const MAX_HIDDEN_FACTOR: [usize; 2] = [64, 16];

/// Probe images for the overlap start at this side and double up to the
/// limit while a change still reaches their far edge.
pub(super) const REACH_START: [usize; 2] = [256, 64];

const REACH_LIMIT: [usize; 2] = [2048, 128];

/// A change counts when it moves the output by more than this, relative to
/// the output's largest magnitude: float32 rounding. Both passes have the
/// same shapes, so they run the same kernels and agree bit for bit where
/// the change does not reach (Winograd tiles may add a few pixels); weak
/// deep paths of an untrained network still count ...
const REACH_TOLERANCE: f64 = 1.2e-7;

/// ... and, for networks whose every pixel depends on the whole input, the
/// overlap is where changes fall below this.
pub(super) const APPROXIMATE_TOLERANCE: f64 = 1e-3;

/// A tile shift is on the pooling grid when it differs from the whole image
/// by at most this times the baseline (a shift on every grid) plus the floor
/// (two float32 epsilons: tiles at aligned shifts run the same kernels on
/// the same shapes, and agree to the last bits).
const SHIFT_RATIO: f64 = 4.0;

const SHIFT_FLOOR: f64 = 2.4e-7;

/// How far a change reaches into the unchanged side of a probe, from
/// `hits` (whether each output position moved) ordered by distance from
/// the changed side: the distance past the farthest hit, or `None` where
/// the change reaches the far edge. Hits at the far edge no wider than the
/// near ones, across a gap at least as wide, came around the edge
/// (circular padding wraps each tile onto itself): the near reach counts.
/// Counted as reaching the edge, such a network's probes doubled to 2048
/// pixels (seconds a pass; under load it gave up) for an overlap of 512
/// where 14 held.
fn side_reach(hits: &[bool]) -> Option<usize> {
    let Some(last) = hits.iter().rposition(|&h| h) else {
        return Some(0);
    };
    if last + 1 < hits.len() {
        return Some(last + 1);
    }
    // The longest run without hits: [start, end).
    let (mut best, mut run_start) = ((0, 0), None);
    for (i, &h) in hits.iter().enumerate() {
        match (h, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(start)) => {
                if i - start > best.1 - best.0 {
                    best = (start, i);
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let (near, far) = (best.0, hits.len() - best.1);
    let wrapped = near > 0 && best.1 - best.0 >= near && far <= near + 2;
    wrapped.then_some(near)
}

/// How far a change to part of a probe moves the output
/// ([`Prober::reach`]): each `None` where it reaches the far edge.
#[derive(Debug, Clone, Copy)]
struct Reach {
    /// By [`REACH_TOLERANCE`] of the output's scale.
    strict: Option<usize>,
    /// By [`APPROXIMATE_TOLERANCE`].
    loose: Option<usize>,
    /// By any amount: past a convolution's receptive field the output is
    /// the same to the bit; a statistic of the whole tile moves it all.
    any: Option<usize>,
    /// Whether the strict reach ends in [`scattered`] single pixels.
    scattered: bool,
}

/// Named among a probed network's whole-tile operations where probing
/// finds [`scattered`] far hits.
const WHOLE_TILE_STATISTIC: &str = "a statistic of the whole tile (found by probing)";

/// Named among a probed network's whole-tile operations where changes
/// reach the far edge of a 2048 px probe (2-D).
const REACH_BEYOND_PROBES: &str = "a reach beyond its largest probe (found by probing)";

/// Named instead of [`REACH_BEYOND_PROBES`] where the larger probes would
/// not have fit in probing's time: a busy machine, or a slow network, and
/// not a reach measured (metadata, or a load on an idle machine, can
/// still call it exact).
const REACH_BEYOND_TIMELY_PROBES: &str =
    "a reach beyond its largest probe in probing's time (found by probing)";

/// Hits farther than this past the last one still extend the near reach.
const NEAR_GAP: usize = 4;

/// Far hits count as scattered over at least this many pixels.
const SCATTER_SPAN: usize = 32;

/// Whether a change reaches, beyond its dense near reach, scattered single
/// pixels over a long span: what a statistic of the whole tile does (a
/// channel gate from a global mean moves every pixel a little, above the
/// rounding floor at a few); a convolution's reach is dense up to where
/// it ends, and a dilated one's far taps come in runs, as do hits that
/// came around the edge (circular padding).
fn scattered(hits: &[bool]) -> bool {
    let mut near_end = 0;
    for (i, &h) in hits.iter().enumerate() {
        if h {
            if i > near_end + NEAR_GAP {
                break;
            }
            near_end = i + 1;
        }
    }
    let far: Vec<usize> = (near_end..hits.len()).filter(|&i| hits[i]).collect();
    let Some(&last) = far.last() else {
        return false;
    };
    let alone = |i: usize| !(i > 0 && hits[i - 1] || hits.get(i + 1).copied().unwrap_or(false));
    let isolated = far.iter().filter(|&&i| alone(i)).count();
    far.len() >= 3 && 4 * isolated >= 3 * far.len() && last - near_end >= SCATTER_SPAN
}

/// The length of the half of a probe side of `size` pixels that a reach
/// probe changes: half the side, on the pooling grid so that the change
/// does not move the grid's windows on the other side.
fn changed_half(size: usize, grid: usize) -> usize {
    let grid = grid.clamp(1, (size / 2).max(1));
    size / 2 / grid * grid
}

impl<'a> Prober<'a> {
    /// How far a change of the input moves the output, per side of every
    /// axis, at probe size `size`: the largest distance over which a change
    /// moves the output by more than `tolerance` (relative), or `None`
    /// when changes reach the far edge of the probe. Without `loose` (a
    /// larger probe follows), it stops at the first change that reaches
    /// the edge. Last, whether on some side the change reaches
    /// [`scattered`] pixels far beyond where it reaches densely.
    ///
    /// The change stops on a line of the pooling grid `grid`, as tile edges
    /// do: a pixel's reach depends on where it sits in its pooling cells,
    /// and a split inside a cell measured a U-Net pooling by 3 twice one
    /// cell short (tiles then differed by 8e-5).
    fn reach(&mut self, size: usize, grid: usize, loose_needed: bool) -> Result<Reach> {
        let image = self.noise(size, 1)?;
        let other = self.noise(size, 2)?;
        self.reach_in(
            &image,
            &other,
            0..self.dims,
            &[true, false],
            grid,
            loose_needed,
        )
    }

    /// Whether the strict reach `reach` found at probe size `size` holds on
    /// a probe twice as long on the last axis (`next` pixels), where no
    /// change moves the output by [`APPROXIMATE_TOLERANCE`] farther: dilated taps
    /// past a small probe's feature map read only padding (a dilation of 18
    /// at output stride 16 reaches 288 px; on the 256 px probe it measured
    /// 24, tiles of 32 px overlap were called exact, and a quarter of the
    /// labels differed). Two passes of twice the pixels, on one side of one
    /// axis: confirming on a square probe cost FCN-ResNet50 its time budget.
    fn reach_holds(&mut self, reach: usize, size: usize, next: usize, grid: usize) -> Result<bool> {
        let longer = self.reach_along_last(size, next, grid, 1.0)?;
        // The loose reach: a deep network's strict one creeps outwards on
        // longer probes by amounts far below what tiles would show
        // (FCN-ResNet50's 232 px), where taps that read padding before
        // move the output by a sizeable fraction.
        Ok(!longer.scattered
            && longer
                .loose
                .is_some_and(|r| r.next_multiple_of(grid) <= reach.next_multiple_of(grid) + grid))
    }

    /// The strict reach on a probe twice as long on the last axis (`next`
    /// pixels) where the scattered far reach found at `size` is a deep
    /// path's, not a statistic of the whole tile; `None` where it may be
    /// one. Through ReLUs and max-pooling a narrow network's deepest
    /// paths pass a change to a few pixels only (a U-Net pooling 6 times,
    /// 4 channels wide: single pixels out to 181 px on a 512 px probe,
    /// called a statistic of the whole tile with tiles measured exact).
    /// A statistic moves every pixel by some bits however far; a
    /// convolution leaves the pixels past its receptive field the same to
    /// the bit, and the longer probe has room for such a run at its far
    /// end.
    fn deep_path_reach(&mut self, size: usize, next: usize, grid: usize) -> Result<Option<usize>> {
        let longer = self.reach_along_last(size, next, grid, 1.0)?;
        let unchanged_side = next - changed_half(next, grid);
        Ok(match (longer.strict, longer.any) {
            (Some(strict), Some(any)) if any + SCATTER_SPAN <= unchanged_side => Some(strict),
            _ => None,
        })
    }

    /// The strict reach on noise at 255 times its values (`size` pixels,
    /// the low half of the last axis changed: two passes), where the raw
    /// values of 8-bit images open paths that [0, 1] noise leaves closed;
    /// `None` where changes reach the far edge or scatter (a statistic,
    /// which the raw-range comparison of tiles reports).
    fn raw_range_reach(&mut self, size: usize, grid: usize) -> Result<Option<usize>> {
        let reach = self.reach_along_last(size, size, grid, 255.0)?;
        Ok(reach.strict.filter(|_| !reach.scattered))
    }

    /// [`Self::reach_in`] of the low half of the last axis on noise
    /// `next` pixels long on that axis and `size` on the others, its values
    /// times `scale`: two passes of twice the pixels, where a square probe
    /// would cost four of four times (confirming on square probes cost
    /// FCN-ResNet50 its time budget).
    fn reach_along_last(
        &mut self,
        size: usize,
        next: usize,
        grid: usize,
        scale: f64,
    ) -> Result<Reach> {
        let strip = |prober: &mut Self, seed: u64| -> Result<Tensor> {
            let mut t = prober.noise(next, seed)?;
            for axis in 0..prober.dims.saturating_sub(1) {
                t = prober.torch(t.f_narrow((axis + 2) as i64, 0, size as i64))?;
            }
            if scale != 1.0 {
                t = prober.torch(t.f_mul_scalar(scale))?;
            }
            prober.torch(t.f_contiguous())
        };
        let image = strip(self, 1)?;
        let other = strip(self, 2)?;
        let last = self.dims.saturating_sub(1);
        self.reach_in(&image, &other, last..self.dims, &[true], grid, true)
    }

    /// Whether `passes` more passes as slow as the last probe's end
    /// within `share` of the probing budget. The checks that only add to
    /// what probing finds (a reach confirmed on a longer probe, tiles
    /// compared on bright input) run where they leave the budget's rest
    /// for the comparisons every network needs, with room for a machine
    /// twice as busy: FCN-ResNet50 probed in 38 s on 2 idle cores with both
    /// (25 s without), ran out of its 60 s on busy ones when it confirmed
    /// its reach regardless, and now confirms none (its reach is no
    /// dilation's artefact) and compares bright tiles where it has time.
    pub(super) fn time_for_passes(&self, passes: u32, share: f64) -> bool {
        self.time_for(f64::from(passes), share)
    }

    /// [`Self::time_for_passes`] for `passes` as slow as the last probe's
    /// (the typical pass on the largest input so far), a fraction of one
    /// included.
    fn time_for(&self, passes: f64, share: f64) -> bool {
        let needed = self.times.typical().as_secs_f64() * passes;
        self.started.elapsed().as_secs_f64() + needed <= PROBE_BUDGET.as_secs_f64() * share
    }

    /// How much slower a pass became over a doubling of the side: the
    /// typical pass `after` it against the one `before` (none known: its
    /// pixels' growth), at least the pixels' growth.
    fn growth(&self, before: Option<Duration>, after: Duration) -> f64 {
        before
            .filter(|before| !before.is_zero())
            .map_or(0.0, |before| after.as_secs_f64() / before.as_secs_f64())
            .max(f64::from(1u32 << self.dims))
    }

    /// One pass at each doubling of `size` up to `limit` while it fits in
    /// memory and time, only to measure its memory: where the reach probes
    /// ran out of time, their memory alone says nothing of a square. A busy
    /// machine stopped global attention's probes at 256 px, whose memory
    /// grows with the square only beyond 512 (a 1024 px pass took 2.2 GiB,
    /// nine times the 512 px one's), and a whole 2048 px pass, planned as
    /// linear, asked for 18 GB. A pass costs what the last doubling did
    /// (`growth` times the last pass); the reach probes wanted eleven.
    fn measure_memory_beyond(
        &mut self,
        mut size: usize,
        limit: usize,
        on_grid: &dyn Fn(usize) -> usize,
        mut growth: f64,
    ) -> Result<()> {
        loop {
            let next = on_grid(size.saturating_mul(2));
            if next > limit
                || !self.fits(next)
                || !self.affordable(next)
                || !self.time_for(growth, 0.6)
            {
                return Ok(());
            }
            let took = self.times.typical();
            let input = self.noise(next, 1)?;
            if self.forward(input)?.is_none() {
                return Ok(());
            }
            growth = self.growth(Some(took), self.times.typical());
            size = next;
        }
    }

    /// [`Self::reach`] of `image` changed to `other` on either half
    /// (`low_halves`: the low one, the high one or both) of each of `axes`.
    fn reach_in(
        &mut self,
        image: &Tensor,
        other: &Tensor,
        axes: std::ops::Range<usize>,
        low_halves: &[bool],
        grid: usize,
        loose_needed: bool,
    ) -> Result<Reach> {
        let whole = self.output(image)?;
        let scale = self.scale(&whole)?;
        let mut strict = Some(0usize);
        let mut loose = Some(0usize);
        let mut any = Some(0usize);
        let mut global = false;
        for axis in axes {
            let dim = (axis + 2) as i64;
            let size = usize::try_from(image.size()[axis + 2]).unwrap_or(0);
            let half = changed_half(size, grid);
            for &low_half in low_halves {
                let (start, len) = if low_half {
                    (0, half)
                } else {
                    (half, size - half)
                };
                let (start, len) = (start as i64, len as i64); // below MAX_PROBE_VALUES
                let changed = self.torch((|| {
                    let mut copy = image.f_zeros_like()?;
                    copy.f_copy_(image)?;
                    copy.f_narrow(dim, start, len)?
                        .f_copy_(&other.f_narrow(dim, start, len)?)?;
                    Ok(copy)
                })())?;
                let moved = self.output(&changed)?;
                let profile: Vec<f32> = self.torch((|| {
                    let moved = moved.f_sub(&whole)?.f_abs()?;
                    let others: Vec<i64> = (1..moved.dim() as i64).filter(|&d| d != dim).collect();
                    Vec::try_from(moved.f_amax(others.as_slice(), false)?.f_flatten(0, -1)?)
                })())?;
                for (tolerance, reach) in [
                    (REACH_TOLERANCE, &mut strict),
                    (APPROXIMATE_TOLERANCE, &mut loose),
                    (0.0, &mut any),
                ] {
                    let hit = |v: &f32| f64::from(*v) > tolerance * scale;
                    // The unchanged side, by distance from the changed one.
                    let hits: Vec<bool> = if low_half {
                        profile.iter().skip(half).map(hit).collect()
                    } else {
                        profile.iter().take(half).rev().map(hit).collect()
                    };
                    if tolerance == REACH_TOLERANCE {
                        global |= scattered(&hits);
                    }
                    *reach = match (*reach, side_reach(&hits)) {
                        (Some(r), Some(distance)) => Some(r.max(distance)),
                        _ => None,
                    };
                }
                if strict.is_none() && !loose_needed && !global {
                    return Ok(Reach {
                        strict,
                        loose: None,
                        any: None,
                        scattered: false,
                    });
                }
            }
        }
        Ok(Reach {
            strict,
            loose,
            any,
            scattered: global,
        })
    }

    /// For networks that keep the input size or take any size: the overlap
    /// from how far input changes reach, the pooling factor from the tile
    /// shifts that reproduce the whole image, and the measured agreement.
    pub(super) fn settle_overlap(
        &mut self,
        info: &mut ModelInfo,
        rule: Rule,
        raw_values: bool,
    ) -> Result<()> {
        let axis_kind = usize::from(self.dims == 3);
        let factor = if rule.kind == Growth::AnySize {
            MAX_HIDDEN_FACTOR[axis_kind]
        } else {
            rule.multiple
        };
        let rule_info = info.clone();
        let on_grid = |size: usize| rule_info.round_up_valid(size.next_multiple_of(factor));
        let mut size = on_grid(REACH_START[axis_kind].max(4 * factor));
        let mut halo = None;
        let mut fallback = size / 4;
        // Half the last probe whose changes reached its far edge.
        let mut edge_before = 0;
        // Whether changes still reached the far edge of the last probe when
        // the budget's rest left no time for a larger one.
        let mut out_of_time = false;
        if rule.lost == 0 {
            let limit = REACH_LIMIT[axis_kind].max(4 * factor);
            // The typical pass of the probe before the last, where that was half
            // its side: how a pass grows with the side.
            let mut half_side_took: Option<Duration> = None;
            // What the last doubling cost, at least the pixels' growth.
            let mut last_growth = f64::from(1u32 << self.dims);
            loop {
                let next = on_grid(size * 2);
                // Layers that see the whole tile reach every edge at any
                // size: larger probes would only cost time.
                // A larger probe must also fit in memory: passes are
                // measured, and a network whose memory grows with the
                // square of its pixels (global attention) stops here.
                let planned_last = next > limit
                    || !self.fits(next)
                    || !info.exactness.whole_tile_ops.is_empty()
                    || !self.affordable(next);
                let Reach {
                    strict,
                    mut loose,
                    scattered,
                    ..
                } = self.reach(size, factor, planned_last)?;
                // A convolution that reached the far edge of the last probe
                // reaches at least that far in this one; a change that
                // reached it there and falls short of it here is a
                // statistic of the whole tile, weaker the more pixels it
                // averages (a channel gate from the mean: at 2048 px it
                // moved only the pixels its convolutions reach, and tiles
                // of that overlap were called exact).
                let faded = strict.is_some_and(|r| r < edge_before);
                // Its 2 passes of twice the pixels, and the tile
                // comparisons after them, as for `reach_holds` below.
                let deep_path = match strict {
                    Some(reach)
                        if scattered
                            && !faded
                            && !planned_last
                            && self.time_for_passes(14, 0.5) =>
                    {
                        self.deep_path_reach(size, next, factor)?
                            .map(|longer| reach.max(longer))
                    }
                    _ => None,
                };
                if deep_path.is_some() {
                    halo = deep_path;
                    break;
                }
                if scattered || faded {
                    // A statistic of the whole tile that no code scan
                    // names (a mean gating the channels): larger probes
                    // only reach farther (an overlap of 1022 px at 2048,
                    // called exact on noise, for a network whose
                    // convolutions see 14 px), and no overlap makes tiles
                    // exact.
                    info.exactness
                        .whole_tile_ops
                        .push(WHOLE_TILE_STATISTIC.to_owned());
                    fallback = strict.or(loose).unwrap_or(size / 4);
                    break;
                }
                if let Some(reach) = strict {
                    // A reach short of the probe's edge holds on a longer
                    // probe, or the longer probes are measured in full.
                    if planned_last
                        // Its 2 passes of twice the pixels, and the tile
                        // comparisons after them (about 10 passes).
                        || !self.time_for_passes(14, 0.5)
                        || self.reach_holds(reach, size, next, factor)?
                    {
                        halo = strict;
                        break;
                    }
                    // Its passes were of another shape: no growth to read.
                    half_side_took = None;
                    size = next;
                    continue;
                }
                // The passes just run may show that the next size would
                // not fit after all: this size is the last one, and its
                // loose reach is wanted.
                // The larger probe's reach passes and the comparisons after
                // it, each slower by 2^dims (the pixels) or by what the last
                // doubling cost, if more (attention grows with their
                // square): Cellpose's network (a style vector from the
                // whole tile) ran out of its 60 s on the 2048 px probe and
                // was refused as too slow, and Segformer's 2048 px pass took
                // 91 s and 9 GB before it was.
                let took = self.times.typical();
                let growth = self.growth(half_side_took, took);
                last_growth = growth;
                out_of_time = !planned_last
                    && !self.time_for(f64::from(2 * self.dims as u32 + 7) * growth, 0.6);
                let last = planned_last || !self.affordable(next) || out_of_time;
                if last && !planned_last {
                    loose = self.reach(size, factor, true)?.loose;
                }
                fallback = loose.unwrap_or(size / 4);
                if last {
                    break;
                }
                edge_before = size / 2;
                half_side_took = Some(took);
                size = next;
            }
            if out_of_time {
                self.measure_memory_beyond(size, limit, &on_grid, last_growth)?;
            }
            // Changes still reach the far edge of a 2048 px probe: tiles
            // cannot be shown exact, however small the difference measured
            // on noise (a channel gate from the image's mean moved every
            // pixel of it, and tiles of 12 px overlap were called exact at
            // 3.6e-6). No 2-D convolution reaches 1024 px without metadata
            // saying so; 3-D probes stop at 128 voxels, which a 3-D U-Net's
            // weak deep paths pass (measured exact to 1e-6 all the same).
            // A 2-D network too slow for the larger probes is no better
            // known.
            if halo.is_none()
                && info.exactness.whole_tile_ops.is_empty()
                && self.dims == 2
                && (size >= REACH_LIMIT[0] || out_of_time)
            {
                let reason = if size >= REACH_LIMIT[0] {
                    REACH_BEYOND_PROBES
                } else {
                    REACH_BEYOND_TIMELY_PROBES
                };
                info.exactness.whole_tile_ops.push(reason.to_owned());
            }
        } else {
            halo = Some(rule.lost / 2);
            size = on_grid(size.max(rule.lost + 4 * factor));
        }
        if let Some(reach) =
            halo.filter(|_| raw_values && rule.lost == 0 && self.time_for_passes(4, 0.5))
        {
            // A network that sees raw values: a path that
            // uniform noise leaves closed (one opening above 5) reaches
            // farther on 8-bit images, and tiles of the reach found on
            // noise were 70% of the range off there (then called
            // approximate where the farther overlap is exact).
            if let Some(raw) = unless_cancelled(self.raw_range_reach(size, factor))?.flatten() {
                halo = Some(reach.max(raw));
            }
        }
        let overlap = halo.unwrap_or(fallback);
        info.halo = overlap;
        // The tile compared must keep pixels beyond the overlap on both sides.
        let size = size.max(on_grid(2 * overlap.next_multiple_of(factor) + 2 * factor));
        let image = self.noise(size, 1)?;
        let whole = self.output(&image)?;
        let margin = |multiple: usize| {
            if rule.lost == 0 {
                overlap.next_multiple_of(multiple.max(1))
            } else {
                0
            }
        };
        // Tiles as small as the engine makes them: the agreement reported is
        // the worst a user meets (larger tiles see more of the image).
        let inner = on_grid(2 * overlap.next_multiple_of(factor) + factor).min(size - factor);
        let place = |shift: usize, inner: usize| Placement {
            size,
            shift,
            inner,
            margin: margin(shift),
            lost: rule.lost,
        };
        let (at, uniform) = if rule.kind == Growth::AnySize {
            // A shift by the largest factor looked for is on every pooling
            // grid: its difference is the baseline (rounding, or what
            // global layers add). The smallest shift that does about as
            // well is the pooling factor; a shift off the grid moves every
            // pooling window and differs by far more.
            //
            // A shift's tile is an odd multiple of it (`inner` is a multiple
            // of the factor, so of twice the shift): tiles the engine makes
            // on that grid are, and a network that pads itself to a larger
            // multiple, centred (a symmetric `DivisiblePad(16)` around a net
            // pooling by 4), shifts its pooling grid on them. Tiles that
            // were all multiples of 64 never showed it: multiple 4, called
            // exact, and 10% of the range off at image sides off 16.
            let baseline = self.agreement(&image, &whole, &place(factor, inner))?;
            let bound = SHIFT_RATIO * baseline.max_difference + SHIFT_FLOOR;
            let mut chosen = (place(factor, inner), baseline.clone());
            // Where even the baseline is not exact (global layers), shifts
            // cannot be told apart: the largest factor is on every grid.
            // Else a power of two is on the grid when it is at least the
            // factor: bisection over the exponents.
            let (mut low, mut high) = (0, factor.trailing_zeros());
            if !baseline.is_exact() {
                low = high;
            }
            while low < high {
                let exponent = low + (high - low) / 2;
                let shift = 1usize << exponent;
                // Within the probe: `inner` leaves a factor beyond it, and
                // the shift is at most half the factor.
                let at = place(shift, inner + shift);
                let agreement = self.agreement(&image, &whole, &at)?;
                if agreement.max_difference <= bound {
                    chosen = (at, agreement);
                    high = exponent;
                } else {
                    low = exponent + 1;
                }
            }
            info.size_multiple = chosen.0.shift;
            info.size_offset = 0;
            chosen
        } else {
            let at = place(rule.multiple, inner);
            (at, self.agreement(&image, &whole, &at)?)
        };
        info.exactness.measured = Some(at.beyond_uniform(self, uniform, raw_values)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_is_the_farthest_hit_and_wrapped_hits_do_not_count() {
        let side = |text: &str| side_reach(&text.chars().map(|c| c == 'x').collect::<Vec<_>>());
        assert_eq!(side(""), Some(0));
        assert_eq!(side("...."), Some(0));
        assert_eq!(side("xx.x...."), Some(4));
        assert_eq!(side("xxxxxxxx"), None);
        assert_eq!(side("x......x"), Some(1));
        // Around the edge: as wide as the near hits, across a wider gap.
        assert_eq!(side("xxx.........xxx"), Some(3));
        assert_eq!(side("xx.x.......xxxx"), Some(4));
        // Far hits wider than the near ones, or no gap as wide: reaching.
        assert_eq!(side("xx.........xxxxxx"), None);
        assert_eq!(side("xxxx..xxxx"), None);
        assert_eq!(side("......xx"), None);
    }

    #[test]
    fn far_hits_are_scattered_when_single_pixels_over_a_long_span() {
        let side = |text: &str| scattered(&text.chars().map(|c| c == 'x').collect::<Vec<_>>());
        let gap = ".".repeat(40);
        // A mean gate: dense near, single pixels far.
        assert!(side(&format!("xxxxxxxx{gap}x{gap}x{gap}x..")));
        // Convolutions: dense, with small gaps; nothing far.
        assert!(!side(
            "xxxx.xxxx..x.x......................................"
        ));
        // A dilated tap: a run far away; hits around the edge: a run.
        assert!(!side(&format!("xxx{gap}xxxxxx{gap}")));
        assert!(!side(&format!("xxx{gap}{gap}xxx")));
        // Two far pixels, or scattered hits close by, are not enough.
        assert!(!side(&format!("xxxx{gap}x{gap}x")));
        assert!(!side("xxxx......x...x...x......................"));
        assert!(!side(""));
    }

    #[test]
    fn hidden_factors_are_powers_of_two_within_the_first_3d_probe() {
        assert!(MAX_HIDDEN_FACTOR.iter().all(|f| f.is_power_of_two()));
        // The first overlap probe in 3-D stays at its start (64 voxels).
        assert_eq!(REACH_START[1].max(4 * MAX_HIDDEN_FACTOR[1]), REACH_START[1]);
    }
}
