//! Choosing the tiling of an image: tile and batch size from the memory
//! budget, checked against what the machine can hold. The [`Planner`]
//! needs the model's geometry and the options only, not a loaded model.

use tch::Device;

use super::{cuda_budget, invalid, plan, Layout, Options, Segmenter, DEFAULT_CPU_BUDGET};

/// How many times the pixels of one tile over the whole image the default
/// plan may compute before larger budgets are tried: overlap-tiling with
/// ordinary halos computes 1.5-2.5 times them.
const MAX_RECOMPUTATION: f64 = 8.0;
use crate::error::Result;
use crate::geometry::TilePlan;
use crate::info::ModelInfo;
use crate::memory;
use crate::metadata::Padding;
use crate::precision::Precision;

impl Segmenter {
    /// The tiling for an image of spatial shape `image`: of the image as
    /// the network sees it, resampled where `object_size` asks for that
    /// (it gave the tiles of the image as given: 4 where the call ran 1).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an image the tiles cannot cover, and
    /// for tiles and batches whose buffers this machine cannot hold (checked
    /// before anything is allocated; the message gives the size needed).
    pub fn layout(&self, image: &[usize]) -> Result<Layout> {
        self.layout_on(image, self.model.device(), self.model.precision())
    }

    /// The tiling for the network's input of spatial shape `image` (after
    /// any resampling).
    pub(super) fn layout_of_input(&self, image: &[usize]) -> Result<Layout> {
        self.planner()
            .layout(image, self.model.device(), self.model.precision())
    }

    /// The tiling this segmenter would use on `device` in `precision`
    /// ([`Planner::layout`] of the image as the network sees it, as
    /// [`Segmenter::layout`]).
    ///
    /// # Errors
    /// As [`Planner::layout`].
    pub fn layout_on(
        &self,
        image: &[usize],
        device: Device,
        precision: Precision,
    ) -> Result<Layout> {
        let seen = match super::rescale::factor(self.model.info(), self.options.object_size)? {
            Some(factor) => super::rescale::scaled_shape(image, factor)?,
            None => image.to_vec(),
        };
        self.planner().layout(&seen, device, precision)
    }

    /// The planner of this segmenter's model and options.
    pub(super) fn planner(&self) -> Planner<'_> {
        Planner {
            info: self.model.info(),
            options: &self.options,
        }
    }
}

/// Plans tilings in closed form from a model's geometry ([`ModelInfo`]) and
/// the options, for any device and precision: nothing is loaded or run. The
/// [`Segmenter`] plans with it; so can a client planning for workers.
///
/// ```
/// use unet_rt::{Activation, Device, ModelInfo, Normalization, Options, Padding, Planner, Precision};
/// // The paper's U-Net: valid sizes 12 + 16k, 92 pixels lost per side.
/// let info = ModelInfo {
///     spatial_dims: 2, in_channels: 1, out_channels: 2, output: Activation::Softmax,
///     padding: Padding::Valid, halo: 92, size_multiple: 16, size_offset: 12,
///     normalization: Normalization::None, min_size: 0, fixed_size: 0, output_key: None,
///     first_layer_width: Some(64), probed: false, exactness: Default::default(),
///     read_out: Default::default(), object_size: None, square_memory: 0.0,
/// };
/// let options = Options::default();
/// let planner = Planner::new(&info, &options)?;
/// let layout = planner.layout(&[2048, 2048], Device::Cuda(0), Precision::Fp16)?;
/// assert!(layout.plan.len() >= 1 && layout.batch_size >= 1);
/// # Ok::<(), unet_rt::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Planner<'a> {
    info: &'a ModelInfo,
    options: &'a Options,
}

impl<'a> Planner<'a> {
    /// Checks the options that shape the tiling against the model.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument): `tile` of
    /// the wrong rank, not a valid input size of the model, above
    /// [`MAX_TILE_SIDE`](crate::geometry::MAX_TILE_SIDE) or together with
    /// `whole`; a zero `batch_size` or `memory_budget`.
    pub fn new(info: &'a ModelInfo, options: &'a Options) -> Result<Self> {
        if options.whole && options.tile.is_some() {
            return Err(invalid(
                "tile",
                "give either tile sizes or \"whole\" (one tile for the whole image), not both"
                    .to_owned(),
            ));
        }
        if let Some(tile) = &options.tile {
            if tile.len() != info.spatial_dims {
                return Err(invalid(
                    "tile",
                    format!("{} sizes for a {}-D model", tile.len(), info.spatial_dims),
                ));
            }
            if let Some(&bad) = tile
                .iter()
                .find(|&&t| !info.is_valid_size(t) || t < info.min_tile())
            {
                return Err(invalid(
                    "tile",
                    format!(
                        "{bad} is not a usable tile size for this model: sizes are {} + k * {} from {} up",
                        info.size_offset,
                        info.size_multiple,
                        info.min_tile()
                    ),
                ));
            }
            if let Some(&bad) = tile.iter().find(|&&t| t > crate::geometry::MAX_TILE_SIDE) {
                return Err(invalid(
                    "tile",
                    format!(
                        "{bad} is larger than the largest supported tile side, {}",
                        crate::geometry::MAX_TILE_SIDE
                    ),
                ));
            }
        }
        if options.batch_size == Some(0) {
            return Err(invalid("batch_size", "must be at least 1".to_owned()));
        }
        if options.memory_budget == Some(0) {
            return Err(invalid(
                "memory_budget",
                "must be at least 1 byte (it is the activation memory one batch may use)"
                    .to_owned(),
            ));
        }
        Ok(Self { info, options })
    }

    /// The tiling for an image of spatial shape `image` on `device` in
    /// `precision`. On a GPU: the largest tiles within the memory budget
    /// (the default budget is the device's), batches filling it. On the
    /// CPU: the tile a closed-form throughput model finds fastest within
    /// the budget (large tiles waste less on their halo, but their
    /// activations leave the caches: see `docs/design.md`), and batches
    /// of one such tile. The precision counts through the bytes per value.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an
    /// image of another rank than the model's or that the tiles cannot
    /// cover, for tiles and batches whose buffers
    /// this machine cannot hold (checked before anything is allocated; the
    /// message gives the size needed), and for fp16 on the CPU.
    pub fn layout(&self, image: &[usize], device: Device, precision: Precision) -> Result<Layout> {
        self.check_rank(image, "image")?;
        let precision = precision.resolve(device)?;
        let info = self.info;
        let halo = info.effective_halo();
        let element_bytes = precision.kind().elt_size_in_bytes();
        let budget = self.options.memory_budget.unwrap_or(match device {
            Device::Cuda(index) => cuda_budget(crate::cuda_memory::device_memory(index)),
            _ => DEFAULT_CPU_BUDGET,
        });
        // Per axis, the smallest tile that covers the image at once.
        let whole: Vec<usize> = image
            .iter()
            .map(|&n| {
                info.round_up_valid(n.saturating_add(2 * halo))
                    .max(info.min_tile())
            })
            .collect();
        let tile = match &self.options.tile {
            // Larger than that only adds mirrored border to compute (a tile
            // of 100004 on a 64-pixel axis took minutes), for one tile per
            // axis all the same. Fixed-size models take their size only.
            Some(t) if info.fixed_size == 0 => {
                t.iter().zip(&whole).map(|(&t, &w)| t.min(w)).collect()
            }
            Some(t) => t.clone(),
            None if self.options.whole => {
                let tile = whole;
                if info.fixed_size > 0 && tile.iter().any(|&t| t != info.fixed_size) {
                    return Err(invalid(
                        "tile",
                        format!(
                            "\"whole\" cannot cover an image of {image:?}: the model takes only tiles of {} \
                             pixels, which hold {} pixels of image per axis",
                            info.fixed_size,
                            info.fixed_size.saturating_sub(2 * halo)
                        ),
                    ));
                }
                tile
            }
            None => {
                // Tiles of a network that tiles approximately are the
                // largest the budget holds, and one tile over the whole
                // image where it fits (off the tile ladder, which keeps
                // only exact networks' tiles in line across Dask blocks;
                // 1344 px took two ladder tiles of 896 within a budget that
                // held one): the fastest CPU tiles put smp's FPN 34% of the
                // range off the whole-image result.
                let exact = info.exactness.is_exact();
                let processor = match device {
                    Device::Cpu => plan::Processor::Cpu,
                    _ => plan::Processor::Gpu,
                };
                let whole_pixels: f64 = whole.iter().map(|&w| w as f64).product();
                let choose = |budget: usize| -> Vec<usize> {
                    let one_pass = || {
                        plan::activation_bytes(info, whole_pixels, element_bytes, processor)
                            <= budget as f64
                    };
                    let tile = if exact && device == Device::Cpu {
                        plan::choose_cpu_tile(info, image, halo, budget, element_bytes)
                    } else if !exact && info.fixed_size == 0 && one_pass() {
                        whole.clone()
                    } else {
                        plan::choose_tile(info, image, halo, budget, element_bytes, processor)
                    };
                    tile.into_iter().map(|t| t.max(info.min_tile())).collect()
                };
                let tile = choose(budget);
                if self.options.memory_budget.is_some() {
                    tile
                } else {
                    return self.beyond_the_default_budget(
                        image,
                        (tile, whole_pixels),
                        budget,
                        choose,
                        element_bytes,
                        device,
                    );
                }
            }
        };
        let layout = self.layout_with_tile(image, tile, budget, element_bytes, device)?;
        self.check_memory(&layout, device, element_bytes)?;
        Ok(layout)
    }

    /// The layout of `tile`, chosen within the default `budget`, unless
    /// its tiles compute more than [`MAX_RECOMPUTATION`] times the pixels of
    /// one tile over the whole image (`whole`): then the tile chosen within 4 and 16
    /// times the budget, the first that does not (or computes the least),
    /// where this machine holds it. A network whose overlap is most of its
    /// largest tile within the default budget (a gate over the whole image
    /// read by probing as an overlap of 1022 px) was planned as 39,375
    /// tiles of 2052 px for a 700x900 image, where one pass of 2748x2948
    /// does it all: a load that looked like a hang. Fixed steps, not the
    /// free memory, so that the plan is the same on every machine that can
    /// hold it.
    fn beyond_the_default_budget(
        &self,
        image: &[usize],
        (tile, whole): (Vec<usize>, f64),
        budget: usize,
        choose: impl Fn(usize) -> Vec<usize>,
        element_bytes: usize,
        device: Device,
    ) -> Result<Layout> {
        let computed = |layout: &Layout| -> f64 {
            layout.plan.len() as f64
                * layout
                    .plan
                    .input_tile_shape()
                    .iter()
                    .map(|&t| t as f64)
                    .product::<f64>()
        };
        let mut layout = self.layout_with_tile(image, tile, budget, element_bytes, device)?;
        let mut best = computed(&layout);
        // A network that tiles approximately also takes 4 times the CPU
        // budget for fewer tiles, where this machine holds them: smp's FPN
        // needs 1.7 GB for one pass over 704x896 pixels, and its 4 tiles
        // within 1 GiB were 34% of the range off the whole-image result. (A
        // GPU's budget is already a share of its free memory.)
        let exact = self.info.exactness.is_exact();
        let scales: &[usize] = match (exact, device) {
            (true, _) => &[4, 16],
            (false, Device::Cpu) => &[4],
            (false, _) => &[],
        };
        for &scale in scales {
            let enough = if exact {
                best <= MAX_RECOMPUTATION * whole
            } else {
                layout.plan.len() == 1
            };
            if enough {
                break;
            }
            let larger = budget.saturating_mul(scale);
            let candidate =
                self.layout_with_tile(image, choose(larger), larger, element_bytes, device)?;
            let cost = computed(&candidate);
            let better = if exact {
                cost < best
            } else {
                candidate.plan.len() < layout.plan.len()
            };
            if better && self.check_memory(&candidate, device, element_bytes).is_ok() {
                (layout, best) = (candidate, cost);
            }
        }
        self.check_memory(&layout, device, element_bytes)?;
        Ok(layout)
    }

    /// Refuses a spatial shape (of an image, or a window's image) that does
    /// not give one size per spatial axis of the model: planned as it is, it
    /// gave a tiling of another rank than the model's.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming
    /// `argument`.
    pub(crate) fn check_rank(&self, shape: &[usize], argument: &'static str) -> Result<()> {
        let dims = self.info.spatial_dims;
        if shape.len() == dims {
            return Ok(());
        }
        Err(invalid(
            argument,
            format!(
                "the spatial shape {shape:?} has {} axes; the model is {dims}-D",
                shape.len()
            ),
        ))
    }

    /// Refuses a layout whose buffers cannot fit this machine: the gathered
    /// input and reduced output of a batch on the host, and (on the CPU) the
    /// estimated activations of its forward pass. Above physical memory a
    /// pass would fail to allocate or, with overcommit, get the process
    /// killed; refusing it first gives an error that says what to change.
    pub(super) fn check_memory(
        &self,
        layout: &Layout,
        device: Device,
        element: usize,
    ) -> Result<()> {
        let info = self.info;
        let pixels = layout
            .plan
            .input_tile_shape()
            .iter()
            .fold(1u128, |n, &t| n.saturating_mul(t as u128));
        // Saturating: a 3-D tile of 2^20 per axis times a huge batch exceeds
        // even u128, and "more than can be counted" is still "too much".
        let need =
            plan::forward_host_bytes(info, pixels, layout.batch_size as u128, element, device);
        let Some(beyond) = memory::beyond_limit(need) else {
            return Ok(());
        };
        // The batch is to blame when one tile alone fits (a tile of 1004
        // in batches of 12100 named the tile); the planner's own tile is
        // the smallest only when it is.
        let one_fits =
            memory::beyond_limit(plan::forward_host_bytes(info, pixels, 1, element, device))
                .is_none();
        let asked_tile = self.options.tile.is_some() || self.options.whole;
        let argument = match (
            asked_tile,
            self.options.batch_size,
            self.options.memory_budget,
        ) {
            (_, Some(b), _) if b > 1 && one_fits => "batch_size",
            (true, _, _) => "tile",
            (false, Some(b), _) if b > 1 => "batch_size",
            (false, _, Some(_)) => "memory_budget",
            _ => "tile",
        };
        let smallest = layout
            .plan
            .input_tile_shape()
            .iter()
            .all(|&t| t == info.min_tile());
        let whose = match (&self.options.tile, self.options.memory_budget) {
            _ if self.options.whole => " (one tile for the whole image: tile=\"whole\")",
            (Some(_), _) => "",
            (None, Some(_)) => " (chosen for the memory budget)",
            (None, None) if smallest => " (the smallest this model takes)",
            (None, None) => " (the planner's choice)",
        };
        Err(invalid(
            argument,
            format!(
                "tiles of {:?}{whose} in batches of {} need about {} of memory, {beyond}: \
                 use a smaller tile or batch_size",
                layout.plan.input_tile_shape(),
                layout.batch_size,
                memory::format_bytes(need),
            ),
        ))
    }

    pub(super) fn layout_with_tile(
        &self,
        image: &[usize],
        tile: Vec<usize>,
        budget: usize,
        element_bytes: usize,
        device: Device,
    ) -> Result<Layout> {
        let info = self.info;
        let halo = info.effective_halo();
        let plan = match info.padding {
            Padding::Valid => TilePlan::valid(image, &tile, info.halo, info.size_multiple)?,
            Padding::Same => {
                TilePlan::same(image, &tile, halo, info.size_multiple, self.options.blend)?
            }
        };
        let batch_size = self
            .options
            .batch_size
            .unwrap_or_else(|| match device {
                Device::Cpu => {
                    plan::choose_cpu_batch(info, &tile, plan.len(), budget, element_bytes)
                }
                _ => plan::choose_batch(
                    info,
                    &tile,
                    plan.len(),
                    budget,
                    element_bytes,
                    plan::Processor::Gpu,
                ),
            })
            .min(plan.len().max(1));
        // Such a network's output moves with the other tiles of a batch, or
        // it fails on a batch of several.
        let batch_size = if info.exactness.batch_dependent || info.exactness.one_image_per_pass {
            1
        } else {
            batch_size
        };
        Ok(Layout { plan, batch_size })
    }

    /// The layout with tiles about half as large per axis, or `None` when
    /// they cannot shrink any more.
    pub(super) fn halved(&self, layout: &Layout, precision: Precision) -> Result<Option<Layout>> {
        let info = self.info;
        let tile = layout.plan.input_tile_shape();
        if info.fixed_size > 0 {
            return Ok(None);
        }
        let smaller: Vec<usize> = tile
            .iter()
            .map(|&t| {
                let target = (t / 2).max(info.min_tile());
                let steps = (target.saturating_sub(info.min_tile())) / info.size_multiple;
                info.min_tile() + steps * info.size_multiple
            })
            .collect();
        if smaller == tile {
            return Ok(None);
        }
        let element_bytes = precision.kind().elt_size_in_bytes();
        self.layout_with_tile(
            layout.plan.image_shape(),
            smaller,
            usize::MAX,
            element_bytes,
            // Batches are set to one below.
            Device::Cpu,
        )
        .map(|mut l| {
            l.batch_size = 1;
            Some(l)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A same-padded network whose overlap (1022 px) is most of the
    /// largest tile within the default budget.
    fn wide_overlap() -> ModelInfo {
        ModelInfo {
            first_layer_width: Some(16),
            ..crate::info::tests_support::same(1022, 4)
        }
    }

    fn tiles(options: &Options) -> usize {
        let info = wide_overlap();
        let planner = Planner::new(&info, options).unwrap();
        planner
            .layout(&[700, 900], Device::Cpu, Precision::Fp32)
            .unwrap()
            .plan
            .len()
    }

    #[test]
    fn a_plan_recomputing_the_image_thousands_of_times_takes_a_larger_budget() {
        // Within 1 GiB: tiles of 2052 px keeping 8 px each, 39,375 of them.
        let one_gib = Options {
            memory_budget: Some(DEFAULT_CPU_BUDGET),
            ..Options::default()
        };
        assert!(tiles(&one_gib) > 10_000, "{}", tiles(&one_gib));
        // By default: one pass over the whole image (2748 x 2948).
        assert_eq!(tiles(&Options::default()), 1);
    }

    #[test]
    fn networks_that_tile_approximately_take_the_largest_tiles_the_budget_holds() {
        let exact = ModelInfo {
            first_layer_width: Some(16),
            ..crate::info::tests_support::same(64, 32)
        };
        let mut approximate = exact.clone();
        approximate.exactness.whole_tile_ops = vec!["adaptive_avg_pool".to_owned()];
        let options = Options::default();
        let plan = |info: &ModelInfo, image: &[usize]| {
            Planner::new(info, &options)
                .unwrap()
                .layout(image, Device::Cpu, Precision::Fp32)
                .unwrap()
        };
        // The fastest tiles for the exact network; one pass, the
        // whole-image result, for the other.
        assert!(plan(&exact, &[900, 1000]).plan.len() > 1);
        assert_eq!(plan(&approximate, &[900, 1000]).plan.len(), 1);
        // One pass within 4 times the budget, where the machine holds it
        // (one pass over 1200 x 1200 pixels of the width-64 network takes about 4 GB).
        let wide = |info: &ModelInfo| ModelInfo {
            first_layer_width: Some(64),
            ..info.clone()
        };
        assert!(plan(&wide(&exact), &[1200, 1200]).plan.len() > 1);
        let within = Options {
            memory_budget: Some(DEFAULT_CPU_BUDGET),
            ..Options::default()
        };
        let fixed = Planner::new(&wide(&approximate), &within)
            .unwrap()
            .layout(&[1200, 1200], Device::Cpu, Precision::Fp32)
            .unwrap();
        assert!(fixed.plan.len() > 1);
        if crate::memory::available_memory().is_some_and(|free| free > 8 << 30) {
            assert_eq!(plan(&wide(&approximate), &[1200, 1200]).plan.len(), 1);
        }
        // Beyond that, the fewest tiles the budget holds.
        let large = plan(&approximate, &[20_000, 20_000]);
        let fast = plan(&exact, &[20_000, 20_000]);
        assert!(
            large.plan.len() < fast.plan.len() / 4,
            "{} {}",
            large.plan.len(),
            fast.plan.len()
        );
    }
}
