//! The size rule of a network without metadata, from the output sizes of
//! zero inputs: which input sizes it takes, and what each loses.

use super::*;

/// Input sizes tried for a first output: powers of two up to this (2-D)...
const FIRST_LIMIT_2D: usize = 1024;

/// ... and in 3-D.
const FIRST_LIMIT_3D: usize = 256;

/// Strides tried for networks that only take sizes on their pooling grid.
const STRIDES: [usize; 20] = [
    2, 3, 4, 6, 8, 9, 12, 16, 24, 27, 32, 48, 64, 81, 96, 128, 192, 256, 384, 512,
];

/// Where no power of two is a size the network takes, the first size is
/// looked for among these times powers of two: networks that pool by 3
/// take multiples of 3, 9, 27 or 81 only.
const ODD_GRIDS: [usize; 4] = [3, 9, 27, 81];

/// How output sizes follow input sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Growth {
    /// Only sizes on a grid work (a concatenation fails elsewhere).
    Strict,
    /// Every size from some point works; the output grows in steps of the
    /// pooling factor (floor pooling in a valid U-Net).
    Steps,
    /// Every size works with the same loss (resizing back, padding):
    /// the output size says nothing of the pooling factor.
    AnySize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rule {
    pub(super) offset: usize,
    pub(super) multiple: usize,
    pub(super) lost: usize,
    pub(super) kind: Growth,
}

/// Distances 1, 2, 4 ... below `first` that leave a size of at least 1.
fn below(first: usize) -> impl Iterator<Item = usize> {
    std::iter::successors(Some(1usize), |d| d.checked_mul(2)).take_while(move |&d| d < first)
}

impl<'a> Prober<'a> {
    fn no_rule(&self, detail: &str) -> Error {
        let failure = match &self.last_failure {
            Some(message) => format!("; its last failing pass said: {message}"),
            None => String::new(),
        };
        self.invalid(format!(
            "its output follows no size rule ({detail}): is it fully convolutional, with {} input channel(s)?{failure}",
            self.channels
        ))
    }

    /// The first size of 1, 2, 4 ... that the network takes, if any, else
    /// of [`ODD_GRIDS`] times those: where the size rule starts.
    pub(super) fn first_size(&mut self) -> Result<Option<usize>> {
        for base in std::iter::once(1).chain(ODD_GRIDS) {
            let mut size = base;
            while size <= self.first_limit() {
                if self.lost(size)?.is_some() {
                    return Ok(Some(size));
                }
                size *= 2;
            }
        }
        Ok(None)
    }

    fn first_limit(&self) -> usize {
        if self.dims == 2 {
            FIRST_LIMIT_2D
        } else {
            FIRST_LIMIT_3D
        }
    }

    /// The error for a network that takes none of [`Self::first_size`]'s
    /// sizes.
    pub(super) fn no_size(&self) -> Error {
        if let Some((size, side)) = self.grown {
            // A whole multiple is an upscaling; a few pixels more are
            // convolutions padded beyond their reach (a 3x3 convolution
            // with padding 2), which were asked whether they upscale.
            if side % size.max(1) != 0 {
                return self.invalid(format!(
                    "its output is {} pixels larger than its input ({side} for {size}): a convolution \
                     pads more than its kernel reaches (padding 2 on a 3x3 kernel?); unet_rt runs networks \
                     whose output covers their input pixel for pixel, or loses a margin: pad each \
                     convolution by kernel_size // 2 (same) or 0 (valid)",
                    side - size
                ));
            }
            return self.invalid(format!(
                "its output is larger than its input ({side} pixels for {size}, a super-resolution \
                 network?): unet_rt segments at the input's resolution; resize the output back to the \
                 input's size in the network (F.interpolate), or enlarge the image first"
            ));
        }
        if let Some(error) = type_error(self) {
            return error;
        }
        if let Some((input, output)) = &self.uneven {
            return self.invalid(format!(
                "its axes lose different margins: an input of {} gives an output of {} (valid \
                 convolutions of other extents along some axes, such as 1x3x3 on a 3-D network's \
                 top level?). unet_rt's geometry has one halo and one size rule for all axes: pad \
                 the convolutions (same padding, kernel_size // 2) so that every axis keeps its size, \
                 or give every axis the same kernels",
                shape_text(input),
                shape_text(output)
            ));
        }
        self.no_rule(&format!(
            "no input size of 1, 2, 4 ... {} (nor 3, 9, 27 or 81 times those) works; a network \
             that takes sizes on another grid needs metadata with its size_multiple and size_offset, \
             and one that takes one size only, with fixed_size",
            self.first_limit()
        ))
    }

    /// The size rule from `first`, the first size that works: the next
    /// size tells how the output follows the input. Where no rule fits, an
    /// output that grows one pixel per several input pixels (a network
    /// without its upsampling) is named as such.
    pub(super) fn size_rule(&mut self, first: usize) -> Result<Rule> {
        let rule = self
            .size_rule_from(first)
            .and_then(|rule| self.rule_holds_further(first, rule));
        if matches!(rule, Err(Error::Cancelled)) {
            return rule;
        }
        if rule.is_err() {
            if let Some(stride) = self.output_stride()? {
                return Err(self.invalid(format!(
                    "its output grows one pixel per {stride} input pixels (an output stride of {stride}): \
                     unet_rt runs networks whose output covers their input pixel for pixel, or loses a \
                     fixed margin; resize the output back to the input's size in the network \
                     (F.interpolate) and export it again"
                )));
            }
        }
        rule
    }

    /// `rule`, where the network loses what it says at the third grid
    /// size after `first` too: a rule is read off two or three sizes, and
    /// a network whose output grows one pixel per two input pixels
    /// (`max_pool2d` before its head) read as valid, losing 2 pixels, and
    /// returned full-size results that were not its output.
    ///
    /// The pass runs `first` and `far` along different axes (and a size
    /// between them on a third): a network that swaps its axes is refused
    /// there ([`Self::pass`]), where square probes never showed it.
    fn rule_holds_further(&mut self, first: usize, rule: Rule) -> Result<Rule> {
        let multiple = rule.multiple.max(1);
        let on_rule = |steps: usize| {
            (first / multiple + steps)
                .checked_mul(multiple)
                .and_then(|size| size.checked_add(rule.offset % multiple))
        };
        let (Some(far), Some(between)) = (on_rule(3), on_rule(2)) else {
            return Err(self.no_rule("its size rule overflows"));
        };
        let group = [first, far, between];
        if let Some(sides) = self.pass(&group[..self.dims.min(3)])? {
            for (&size, side) in group.iter().zip(sides).skip(1) {
                self.sides.insert(size, Some(side));
            }
        }
        match self.lost(far)? {
            Some(lost) if lost == rule.lost => Ok(rule),
            Some(lost) => Err(self.no_rule(&format!(
                "inputs of {first} and {far} pixels lose {} and {lost}",
                rule.lost
            ))),
            None => Err(self.no_rule(&format!(
                "input size {far} fails where its rule says it works"
            ))),
        }
    }

    /// `k` where inputs of 256 and 512 pixels give outputs 256 / k pixels
    /// apart (`k` of 2 or more); `None` otherwise, or where either fails.
    ///
    /// # Errors
    /// [`Error::Cancelled`] where the work was cancelled.
    fn output_stride(&mut self) -> Result<Option<usize>> {
        let Some(small) = unless_cancelled(self.side(256))?.flatten() else {
            return Ok(None);
        };
        let Some(large) = unless_cancelled(self.side(512))?.flatten() else {
            return Ok(None);
        };
        let grown = large.checked_sub(small).filter(|&g| g > 0 && g < 256);
        Ok(grown.and_then(|g| (256 % g == 0).then_some(256 / g)))
    }

    /// See [`Self::size_rule`]: from as few forward passes as the network
    /// allows.
    fn size_rule_from(&mut self, first: usize) -> Result<Rule> {
        let lost_first = self.lost(first)?.unwrap_or(0);
        let side_first = first - lost_first;
        // The size below tells the class from a pass cheaper than the one
        // above (smaller, in memory already touched), with the first sizes
        // `steps_below` looks at in the same pass; where it fails (the
        // network's smallest size), the size above tells.
        let sizes: Vec<usize> = below(first).take(self.dims).map(|d| first - d).collect();
        self.sides(&sizes)?;
        let probe_above = match first.checked_sub(1).filter(|&s| s > 0) {
            Some(size) => match self.side(size)? {
                Some(side) if side == side_first => false,
                Some(side) => side + lost_first != size,
                None => true,
            },
            None => true,
        };
        let next = if probe_above { first + 1 } else { first - 1 };
        let rule = match self.lost(next)? {
            None => self.strict_rule(first, lost_first),
            Some(lost) if next - lost == side_first => self.steps_rule(first, side_first),
            Some(lost) if lost == lost_first => Ok(Rule {
                offset: 0,
                multiple: 1,
                lost,
                kind: Growth::AnySize,
            }),
            Some(_) => Err(self.no_rule(&format!(
                "inputs of {first} and {next} lose {lost_first} and a different amount"
            ))),
        }?;
        if rule.lost % 2 == 1 {
            return Err(self.no_rule(&format!(
                "it loses {} pixels per axis, which cannot be split evenly between the two sides",
                rule.lost
            )));
        }
        Ok(rule)
    }

    /// Only sizes on a grid work: the first stride that works again is the
    /// grid, confirmed one stride further.
    fn strict_rule(&mut self, first: usize, lost: usize) -> Result<Rule> {
        for multiple in STRIDES {
            if self.lost(first + multiple)?.is_some() {
                if self.lost(first + multiple)? != Some(lost)
                    || self.lost(first + 2 * multiple)? != Some(lost)
                {
                    break;
                }
                return Ok(Rule {
                    offset: first % multiple,
                    multiple,
                    lost,
                    kind: Growth::Strict,
                });
            }
        }
        Err(self.no_rule(&format!(
            "input size {first} works, and no size on a grid of up to {} pixels after it does alike; \
             a network that takes one size only needs metadata with fixed_size",
            STRIDES[STRIDES.len() - 1]
        )))
    }

    /// The step below `first`, where passes are cheaper (smaller, and in
    /// memory the larger passes already touched): sizes `first - d` for
    /// `d` = 1, 2, 4 ... until the output shrinks. The step then is what
    /// it lost (the last distance that kept it is below the step, so this
    /// one is under two steps), and the grid point, the smallest size that
    /// keeps `first`'s output, lies between the last two distances: found
    /// by a search that probes one size per axis in each pass. `None` when
    /// a size fails on the way (below the network's smallest size): the
    /// step is then looked for above.
    fn steps_below(&mut self, first: usize, side_first: usize) -> Result<Option<Rule>> {
        let distances: Vec<usize> = below(first).collect();
        let (mut same, mut shrunk) = (0, None);
        'gallop: for group in distances.chunks(self.dims) {
            let sizes: Vec<usize> = group.iter().map(|&d| first - d).collect();
            for (&d, side) in group.iter().zip(self.sides(&sizes)?) {
                match side {
                    Some(side) if side == side_first => same = d,
                    Some(side) if side < side_first => {
                        shrunk = Some(d);
                        break 'gallop;
                    }
                    _ => return Ok(None),
                }
            }
        }
        let Some(shrunk) = shrunk else {
            return Ok(None);
        };
        let multiple = side_first - self.side(first - shrunk)?.unwrap_or(side_first);
        let (same, _, complete) = self.narrow(
            same,
            shrunk,
            |d| first - d,
            |side| match side {
                Some(side) if side == side_first => Some(true),
                Some(side) if side < side_first => Some(false),
                _ => None,
            },
        )?;
        if !complete {
            return Ok(None);
        }
        let aligned = first - same;
        if multiple < 2 || aligned < side_first {
            return Ok(None);
        }
        Ok(Some(Rule {
            offset: aligned % multiple,
            multiple,
            lost: aligned - side_first,
            kind: Growth::Steps,
        }))
    }

    /// Narrows `(low, high)` to neighbours, where position `low` keeps the
    /// first output and `high` does not, probing up to one position per
    /// axis in each pass at input size `size(position)`. `keeps` reads a
    /// probed output side: `Some(true)` keeps, `Some(false)` does not,
    /// `None` (the size failed, or follows no rule) ends the search after
    /// that pass: the last value says whether it ran to its end.
    fn narrow(
        &mut self,
        mut low: usize,
        mut high: usize,
        size: impl Fn(usize) -> usize,
        keeps: impl Fn(Option<usize>) -> Option<bool>,
    ) -> Result<(usize, usize, bool)> {
        while high - low > 1 {
            let probes = self.dims.min(high - low - 1);
            let positions: Vec<usize> = (1..=probes)
                .map(|j| low + (high - low) * j / (probes + 1))
                .collect();
            let sizes: Vec<usize> = positions.iter().map(|&p| size(p)).collect();
            let (mut next_low, mut next_high, mut complete) = (low, high, true);
            for (&position, side) in positions.iter().zip(self.sides(&sizes)?) {
                match keeps(side) {
                    Some(true) => next_low = next_low.max(position),
                    Some(false) => next_high = next_high.min(position),
                    None => complete = false,
                }
            }
            (low, high) = (next_low, next_high);
            if !complete {
                return Ok((low, high, false));
            }
        }
        Ok((low, high, true))
    }

    /// The output grows in steps: the first size where it grows is on the
    /// grid, the step is the multiple. Distances from `first` double until
    /// the output grows; the first size where it does lies between the
    /// last two, found by a search that probes one size per axis in each
    /// pass. Sizes that fail in between (FCN-8s takes only the first few
    /// sizes of each step, pix2pix only the first two) leave the search
    /// blind: bisection then finds where the run of sizes with the grown
    /// output starts.
    fn steps_rule(&mut self, first: usize, side_first: usize) -> Result<Rule> {
        let limit = 4 * STRIDES[STRIDES.len() - 1];
        if let Some(rule) = self.steps_below(first, side_first)? {
            return Ok(rule);
        }
        let mut low = first + 1; // same output as `first`
        let mut blind = false;
        let mut distance = 2;
        let mut high = None;
        while high.is_none() {
            if distance > limit {
                return Err(self.no_rule("the output stops growing with the input"));
            }
            let group: Vec<usize> = (0..self.dims).map(|i| first + (distance << i)).collect();
            for (size, side) in group.iter().zip(self.sides(&group)?) {
                match side {
                    Some(side) if side == side_first => low = *size,
                    Some(_) => {
                        high = Some(*size);
                        break;
                    }
                    None => blind = true,
                }
            }
            distance <<= self.dims;
        }
        let mut high = high.unwrap_or(low + 1);
        if !blind {
            let complete;
            (low, high, complete) =
                self.narrow(low, high, |size| size, |side| side.map(|s| s == side_first))?;
            blind = !complete;
        }
        let mut side = self.side(high)?.unwrap_or(0);
        if blind {
            // The sizes that give `high`'s output are one run from the grid
            // point up; below it sizes fail or give less: bisection, a size
            // at a time (a failing pass tells nothing of its other sizes).
            while high - low > 1 {
                let mid = low + (high - low) / 2;
                if self.side(mid)? == Some(side) {
                    high = mid;
                } else {
                    low = mid;
                }
            }
            // Blind doubling may have stepped over grid points: the step is
            // then a fraction of what the output grew, and one step back
            // from `high` keeps the output one step smaller.
            'fraction: loop {
                let grown = side.saturating_sub(side_first);
                for part in [2, 3] {
                    let step = grown / part;
                    if grown % part == 0
                        && step > 0
                        && high > first + step
                        && self.side(high - step)? == Some(side - step)
                    {
                        high -= step;
                        side -= step;
                        continue 'fraction;
                    }
                }
                break;
            }
        }
        let aligned = high;
        let multiple = side.saturating_sub(side_first);
        let lost = aligned - side;
        if multiple == 0 {
            return Err(self.no_rule(&format!("the output shrinks at input size {aligned}")));
        }
        Ok(Rule {
            offset: aligned % multiple,
            multiple,
            lost,
            kind: Growth::Steps,
        })
    }

    /// The smallest size on the rule that works (small sizes fail fast),
    /// where the network must lose what the rule says: this also confirms
    /// the rule away from the sizes it was found at.
    pub(super) fn min_size(&mut self, info: &ModelInfo) -> Result<usize> {
        let mut size = info.smallest_valid_size();
        for _ in 0..64 {
            match self.lost(size)? {
                Some(lost) if lost == info.shrink() => {
                    return Ok(if size == info.smallest_valid_size() {
                        0
                    } else {
                        size
                    })
                }
                Some(lost) => {
                    return Err(self.no_rule(&format!(
                    "input size {size} loses {lost} pixels per axis where the rule found says {}",
                    info.shrink()
                )))
                }
                None => size += info.size_multiple.max(1),
            }
        }
        Err(self.no_rule(&format!("no size on its rule up to {size} works")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_increasing_and_cover_the_common_poolings() {
        assert!(STRIDES.windows(2).all(|w| w[0] < w[1]));
        assert!(STRIDES.contains(&256) && STRIDES.contains(&16));
    }
}
