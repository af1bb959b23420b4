//! Choosing the tiling of an image: tile and batch size from the memory
//! budget, checked against what the machine can hold.

use tch::Device;

use super::{invalid, plan, Layout, Segmenter, DEFAULT_CPU_BUDGET, DEFAULT_CUDA_BUDGET};
use crate::error::Result;
use crate::geometry::TilePlan;
use crate::memory;
use crate::metadata::Padding;
use crate::precision::Precision;

impl Segmenter {
    /// The tiling for an image of spatial shape `image`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an image the tiles cannot cover, and
    /// for tiles and batches whose buffers this machine cannot hold (checked
    /// before anything is allocated; the message gives the size needed).
    pub fn layout(&self, image: &[usize]) -> Result<Layout> {
        self.layout_on(image, self.model.device(), self.model.precision())
    }

    /// The tiling a segmenter with this model and these options would use
    /// on `device` in `precision`, without loading anything there: tiles
    /// follow the device only through its default memory budget (and the
    /// memory check, which counts activations on the CPU only), and the
    /// precision only through the bytes per value. A Dask client without
    /// the workers' GPU plans their tiles with this.
    ///
    /// # Errors
    /// As [`Self::layout`]; [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// for fp16 on the CPU.
    pub fn layout_on(
        &self,
        image: &[usize],
        device: Device,
        precision: Precision,
    ) -> Result<Layout> {
        let precision = precision.resolve(device)?;
        let info = self.model.info();
        let halo = info.effective_halo();
        let element_bytes = precision.kind().elt_size_in_bytes();
        let budget = self.options.memory_budget.unwrap_or(match device {
            Device::Cuda(_) => DEFAULT_CUDA_BUDGET,
            _ => DEFAULT_CPU_BUDGET,
        });
        let tile = match &self.options.tile {
            Some(t) => t.clone(),
            None if self.options.whole => {
                let tile: Vec<usize> = image
                    .iter()
                    .map(|&n| {
                        info.round_up_valid(n.saturating_add(2 * halo))
                            .max(info.min_tile())
                    })
                    .collect();
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
            None => plan::choose_tile(info, image, halo, budget, element_bytes)
                .into_iter()
                .map(|t| t.max(info.min_tile()))
                .collect(),
        };
        let layout = self.layout_with_tile(image, tile, budget, element_bytes)?;
        self.check_memory(&layout, device, element_bytes)?;
        Ok(layout)
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
        let info = self.model.info();
        let pixels = layout
            .plan
            .input_tile_shape()
            .iter()
            .fold(1u128, |n, &t| n.saturating_mul(t as u128));
        let batch = layout.batch_size as u128;
        // Saturating: a 3-D tile of 2^20 per axis times a huge batch exceeds
        // even u128, and "more than can be counted" is still "too much".
        let per_pixel = |bytes: usize| pixels.saturating_mul(batch).saturating_mul(bytes as u128);
        let host = per_pixel(4 * (info.in_channels + info.out_channels));
        let activations = per_pixel(plan::bytes_per_pixel(info, element));
        let need = match device {
            Device::Cuda(_) => host,
            _ => host.saturating_add(activations),
        };
        let limit = memory::total_memory().map_or(usize::MAX as u128, |m| m as u128);
        if need <= limit {
            return Ok(());
        }
        let argument = match (
            &self.options.tile,
            self.options.batch_size,
            self.options.memory_budget,
        ) {
            (None, Some(b), _) if b > 1 => "batch_size",
            (None, _, Some(_)) => "memory_budget",
            _ => "tile",
        };
        let whose = match (&self.options.tile, self.options.memory_budget) {
            (Some(_), _) => "",
            (None, Some(_)) => " (chosen for the memory budget)",
            (None, None) => " (the smallest this model takes)",
        };
        Err(invalid(
            argument,
            format!(
                "tiles of {:?}{whose} in batches of {} need about {} of memory, more than this machine's {}: \
                 use a smaller tile or batch_size",
                layout.plan.input_tile_shape(),
                layout.batch_size,
                memory::format_bytes(need),
                memory::format_bytes(limit)
            ),
        ))
    }

    pub(super) fn layout_with_tile(
        &self,
        image: &[usize],
        tile: Vec<usize>,
        budget: usize,
        element_bytes: usize,
    ) -> Result<Layout> {
        let info = self.model.info();
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
            .unwrap_or_else(|| plan::choose_batch(info, &tile, plan.len(), budget, element_bytes))
            .min(plan.len().max(1));
        Ok(Layout { plan, batch_size })
    }

    /// The layout with tiles about half as large per axis, or `None` when
    /// they cannot shrink any more.
    pub(super) fn halved(&self, layout: &Layout) -> Result<Option<Layout>> {
        let info = self.model.info();
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
        let element_bytes = self.model.precision().kind().elt_size_in_bytes();
        self.layout_with_tile(
            layout.plan.image_shape(),
            smaller,
            usize::MAX,
            element_bytes,
        )
        .map(|mut l| {
            l.batch_size = 1;
            Some(l)
        })
    }
}
