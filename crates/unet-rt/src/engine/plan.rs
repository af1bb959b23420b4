//! Choosing the tile shape and batch size: on a GPU the largest within the
//! memory budget, on the CPU the fastest by a closed-form throughput model
//! (see [`choose_cpu_tile`]).

use crate::geometry::valid_tiles_along;
use crate::info::ModelInfo;

/// Where a forward pass runs, as far as its memory estimate is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Processor {
    Cpu,
    Gpu,
}

impl Processor {
    /// Live activations per input pixel, in units of the first layer's
    /// width: a U-Net level holds its skip map, two convolution outputs
    /// and, in the decoder, the concatenation of two maps; deeper levels add
    /// about as much again (half the pixels, twice the channels each).
    /// Measured peaks of a forward pass on the CPU (fp32, libtorch's
    /// oneDNN kernels): 4.0-4.5 widths for the paper's U-Net (base 64,
    /// tiles 444-700), 5.8-6.7 for the bundled model (base 16, tiles
    /// 348-1116); 8 keeps a margin over both. On a GPU cuDNN's workspaces
    /// and the caching allocator's rounding come on top.
    fn activations_per_width(self) -> usize {
        match self {
            Processor::Cpu => 8,
            Processor::Gpu => 12,
        }
    }
}

/// Assumed first-layer width when the model does not tell.
const DEFAULT_WIDTH: usize = 64;
/// The planner chooses no tile side beyond this (users may ask for more, up
/// to [`crate::geometry::MAX_TILE_SIDE`]): larger tiles gain nothing and
/// risk integer-size limits in convolution kernels.
const MAX_AUTO_TILE_SIDE: usize = 4096;
/// At most this many tiles per batch.
const MAX_BATCH: usize = 16;

/// Estimated bytes per input pixel of a tile during one forward pass on
/// `processor`.
pub(crate) fn bytes_per_pixel(
    info: &ModelInfo,
    element_bytes: usize,
    processor: Processor,
) -> usize {
    info.first_layer_width
        .unwrap_or(DEFAULT_WIDTH)
        .max(info.in_channels)
        .max(1)
        .saturating_mul(processor.activations_per_width())
        .saturating_mul(element_bytes)
        .max(1)
}

/// Estimated activation bytes of one forward pass over one tile of
/// `pixels` input pixels: [`bytes_per_pixel`] each, and the measured memory
/// that grows with their square ([`ModelInfo::square_memory`], scaled to
/// the precision as the rest).
pub(crate) fn activation_bytes(
    info: &ModelInfo,
    pixels: f64,
    element_bytes: usize,
    processor: Processor,
) -> f64 {
    pixels * bytes_per_pixel(info, element_bytes, processor) as f64
        + square_bytes(info, element_bytes) * pixels * pixels
}

/// [`ModelInfo::square_memory`] (measured in float32) at `element_bytes`.
fn square_bytes(info: &ModelInfo, element_bytes: usize) -> f64 {
    info.square_memory.max(0.0) * element_bytes as f64 / 4.0
}

/// The most pixels a tile may have for its [`activation_bytes`] to stay
/// within `budget`: the root of `a p + b p^2 = budget`.
fn pixels_within(
    info: &ModelInfo,
    budget: usize,
    element_bytes: usize,
    processor: Processor,
) -> f64 {
    let a = bytes_per_pixel(info, element_bytes, processor) as f64;
    let b = square_bytes(info, element_bytes);
    let budget = budget as f64;
    let pixels = if b > 0.0 {
        // The stable form of (-a + sqrt(a^2 + 4 b B)) / 2b.
        2.0 * budget / (a + (a * a + 4.0 * b * budget).sqrt())
    } else {
        budget / a
    };
    pixels.floor().max(1.0)
}

/// Estimated host memory of one forward pass over `batch` tiles of
/// `pixels` input pixels each, in `element`-byte precision on `device`: its
/// input and output as `f32` and, on the CPU, the activations
/// ([`activation_bytes`]); a device holds its own activations.
pub(crate) fn forward_host_bytes(
    info: &ModelInfo,
    pixels: u128,
    batch: u128,
    element: usize,
    device: tch::Device,
) -> u128 {
    let all = pixels.saturating_mul(batch);
    // In u128: channel counts of a hand-built ModelInfo can be anything.
    let host = all.saturating_mul(4 * (info.in_channels as u128 + info.out_channels as u128));
    match device {
        tch::Device::Cuda(_) => host,
        _ => {
            // `as` saturates: beyond u128 is still "too much".
            let per_tile = activation_bytes(info, pixels as f64, element, Processor::Cpu) as u128;
            host.saturating_add(per_tile.saturating_mul(batch))
        }
    }
}

/// The input tile per axis: the largest one within `budget` bytes whose
/// stride is on the ladder (see [`ladder_tile`]), and never larger than
/// needed to cover the image in one tile. Axes that need little leave room
/// to the others.
pub(crate) fn choose_tile(
    info: &ModelInfo,
    image: &[usize],
    halo: usize,
    budget: usize,
    element_bytes: usize,
    processor: Processor,
) -> Vec<usize> {
    if info.fixed_size > 0 {
        return vec![info.fixed_size; image.len()];
    }
    let max_pixels = pixels_within(info, budget, element_bytes, processor);
    let smallest = info.smallest_valid_size();
    let needed: Vec<usize> = image
        .iter()
        .map(|&n| info.round_up_valid(n.saturating_add(2 * halo)))
        .collect();
    let mut order: Vec<usize> = (0..image.len()).collect();
    order.sort_by_key(|&a| needed[a]);
    let mut tile = vec![smallest; image.len()];
    let mut used = 1.0f64;
    for (k, &a) in order.iter().enumerate() {
        let remaining_axes = (image.len() - k) as f64;
        let side = (max_pixels / used).powf(1.0 / remaining_axes);
        let cap = (side as usize).min(MAX_AUTO_TILE_SIDE);
        let ladder = ladder_tiles(info, cap, halo);
        tile[a] = match ladder.last() {
            Some(&largest) if largest < needed[a] => {
                // The fewest tiles the budget allows, and of those the
                // smallest: a 4096 axis takes two tiles of stride 2048
                // rather than one of 3072 and a second mostly mirrored.
                let count =
                    |t: usize| valid_tiles_along(image[a], t, halo, info.size_multiple.max(1));
                let fewest = count(largest);
                ladder
                    .into_iter()
                    .find(|&t| count(t) == fewest)
                    .unwrap_or(largest)
            }
            Some(_) => needed[a],
            None => needed[a].min(smallest),
        }
        .max(smallest);
        used *= tile[a] as f64;
    }
    tile
}

/// Estimated activation bytes (as [`bytes_per_pixel`] counts them on the
/// CPU) of a forward pass of a network [`CPU_REFERENCE_WIDTH`] wide at which
/// its cost per pixel has doubled: see [`choose_cpu_tile`].
const CPU_CACHE_SCALE: f64 = 32.0 * 1024.0 * 1024.0;
/// The first-layer width the cache term was measured at (the bundled
/// model's). Wider networks spend more arithmetic per byte of activations
/// (a convolution's work grows with the square of the width, its maps only
/// with the width), so their cost per pixel grows less with the tile.
const CPU_REFERENCE_WIDTH: f64 = 16.0;
/// What one forward pass costs on top of its pixels, in pixels: the
/// passes' fixed costs (dispatch, thread hand-offs, the host stages' per
/// tile work), which keep a model with little halo from choosing tiny tiles.
const CPU_PASS_PIXELS: f64 = 4096.0;
/// CPU tiles are at least this many pixels per side where the image and
/// the budget allow: below it fixed costs dominate for any network, which
/// the model above only estimates.
const MIN_CPU_TILE_SIDE: usize = 256;

/// The CPU tile: of the ladder tiles within `budget` (and the tile that
/// covers a short axis whole), the one that computes the image fastest by
/// the model below; on ties the smaller.
///
/// Cost of an image = tiles x (pixels per tile + [`CPU_PASS_PIXELS`]) x cost
/// per pixel, with the cost per pixel `1 + r * sqrt(A * e / 4 /
/// CPU_CACHE_SCALE)` for `A` the tile's estimated activation bytes, `e` the
/// bytes per element and `r` = [`CPU_REFERENCE_WIDTH`] / the first layer's
/// width (at most 1); sides from [`MIN_CPU_TILE_SIDE`] up unless the budget
/// allows none of those.
///
/// Larger tiles waste less on their halo but their activations leave the
/// caches: measured on the 2-core development machine (32 MiB L3) with the
/// bundled model (width 16, halo 44, fp32), throughput rose from 1.1 MP/s
/// at the largest tile that fits 1 GiB (1116) to 1.7-1.8 MP/s at 348-476,
/// and fell again below (1.3-1.5 at 220-284); the cost per input pixel grew
/// about linearly with the tile side, which the square root expresses in
/// bytes. bf16 grew less than half the bytes predicts: its cost per tile
/// pixel stayed flat from 348 to 604 (the fastest, 1.4x 348's throughput
/// at 4096^2; 860 and 1116 slower again) while fp32's grew 41%, so its
/// bytes count at half weight once more (`e / 4`). The paper's U-Net (width 64, halo 92) computes 16
/// times as much per pixel from 4 times the bytes: its cost per tile pixel
/// grew only 10-15% from tile 444 to 828, and it runs fastest at 700
/// (fp32, 2048-pixel images), which `r` expresses. The scale is a
/// constant, not this machine's cache size: a plan must be the same on
/// every machine (a Dask client plans the workers' blocks).
pub(crate) fn choose_cpu_tile(
    info: &ModelInfo,
    image: &[usize],
    halo: usize,
    budget: usize,
    element_bytes: usize,
) -> Vec<usize> {
    if info.fixed_size > 0 {
        return vec![info.fixed_size; image.len()];
    }
    if info.first_layer_width.is_none() {
        // No convolution weights to size the activations by (a network of
        // elementwise operations): nothing for the model to price, and the
        // fixed costs of each pass dominate, so the largest tiles win.
        return choose_tile(info, image, halo, budget, element_bytes, Processor::Cpu);
    }
    let precision_weight = (element_bytes as f64 / 4.0).min(1.0);
    let cache_weight = info
        .first_layer_width
        .map_or(1.0, |w| (CPU_REFERENCE_WIDTH / w.max(1) as f64).min(1.0));
    let multiple = info.size_multiple.max(1);
    let smallest = info.smallest_valid_size();
    // The one tile that covers each axis whole.
    let whole: Vec<usize> = image
        .iter()
        .map(|&n| {
            info.round_up_valid(n.saturating_add(2 * halo))
                .max(smallest)
        })
        .collect();
    // One ladder side for every axis, except that an axis the side would
    // cover is covered by its own whole tile: square (cubic) tiles unless
    // the image is thin. Last, one tile for the whole image.
    let sides: Vec<usize> = ladder_tiles(info, MAX_AUTO_TILE_SIDE, halo)
        .into_iter()
        .filter(|&t| t >= smallest)
        .chain(std::iter::once(usize::MAX))
        .collect();
    let mut best: Option<(f64, Vec<usize>)> = None;
    // Sides below the floor only when none at or above it fits the budget.
    for floor in [MIN_CPU_TILE_SIDE, 0] {
        for &side in sides.iter().filter(|&&t| t >= floor) {
            let tile: Vec<usize> = whole.iter().map(|&w| w.min(side)).collect();
            if tile.iter().any(|&t| t > MAX_AUTO_TILE_SIDE) {
                continue;
            }
            let Some(tiles) = tile
                .iter()
                .zip(image)
                .zip(&whole)
                .map(|((&t, &n), &w)| match t == w {
                    true => Some(1.0),
                    false => valid_tiles_along(n, t, halo, multiple).map(|c| c as f64),
                })
                .product::<Option<f64>>()
            else {
                continue;
            };
            let pixels: f64 = tile.iter().map(|&t| t as f64).product();
            let activations = activation_bytes(info, pixels, element_bytes, Processor::Cpu);
            if activations > budget as f64 {
                continue;
            }
            let per_pixel =
                1.0 + cache_weight * (activations * precision_weight / CPU_CACHE_SCALE).sqrt();
            let cost = tiles * (pixels + CPU_PASS_PIXELS) * per_pixel;
            // Sides come smallest first: a larger one must be strictly faster.
            if best.as_ref().is_none_or(|(c, _)| cost < *c * (1.0 - 1e-9)) {
                best = Some((cost, tile));
            }
        }
        if best.is_some() {
            break;
        }
    }
    // Nothing within the budget: the smallest tiles (the memory check
    // speaks up if even they do not fit).
    best.map_or_else(
        || {
            whole
                .iter()
                .map(|&w| w.min(smallest.max(info.min_tile())))
                .collect()
        },
        |(_, tile)| tile,
    )
}

/// Tiles per CPU batch: as many as keep the batch's estimated activations
/// within [`CPU_CACHE_SCALE`] (one, for tiles of the size
/// [`choose_cpu_tile`] picks; more only for small fixed-size inputs, where
/// a batch saves per-pass overhead), within the budget and the tile count.
pub(crate) fn choose_cpu_batch(
    info: &ModelInfo,
    tile: &[usize],
    tiles: usize,
    budget: usize,
    element_bytes: usize,
) -> usize {
    let batch = |budget| choose_batch(info, tile, tiles, budget, element_bytes, Processor::Cpu);
    if info.first_layer_width.is_none() {
        return batch(budget);
    }
    batch(CPU_CACHE_SCALE as usize).min(batch(budget))
}

/// Tiles per batch within the budget, at most the number of tiles.
pub(crate) fn choose_batch(
    info: &ModelInfo,
    tile: &[usize],
    tiles: usize,
    budget: usize,
    element_bytes: usize,
    processor: Processor,
) -> usize {
    // In u128: a user's tile of 2^20 per axis in 3-D overflows usize.
    let pixels = tile
        .iter()
        .fold(1u128, |n, &t| n.saturating_mul(t as u128))
        .max(1);
    let per_tile = (activation_bytes(info, pixels as f64, element_bytes, processor) as u128).max(1);
    let fits = usize::try_from(budget as u128 / per_tile).unwrap_or(usize::MAX);
    fits.clamp(1, MAX_BATCH).min(tiles.max(1))
}

/// The tiles of at most `cap` input pixels whose stride is `multiple * 2^k`
/// or `multiple * 3 * 2^k`, smallest first.
///
/// Pieces of a larger image cut at multiples of the stride (Dask blocks and
/// zarr chunks are mostly powers of two, or three times one) then line up
/// with the whole image's tiles, so each piece can be segmented with exactly
/// the whole image's tiles (see [`crate::Window`]). The ladder's steps are at
/// most 1.5x apart, so the tile loses little against the largest that fits.
fn ladder_tiles(info: &ModelInfo, cap: usize, halo: usize) -> Vec<usize> {
    let multiple = info.size_multiple.max(1);
    let mut tiles = Vec::new();
    let mut power = multiple;
    while power <= cap {
        for stride in [power / 2 * 3, power * 2] {
            // The stride of a tile is its trusted output rounded down to the
            // multiple; rounding `stride + 2 * halo` up to a valid size adds
            // less than one multiple, which keeps that stride.
            let tile = info.round_up_valid(stride + 2 * halo);
            if stride % multiple == 0 && stride >= multiple && tile <= cap {
                tiles.push(tile);
            }
        }
        power *= 2;
    }
    if let Some(tile) = Some(info.round_up_valid(multiple + 2 * halo)).filter(|&t| t <= cap) {
        tiles.insert(0, tile);
    }
    tiles.sort_unstable();
    tiles.dedup();
    tiles
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Activation, Normalization, Padding};

    fn paper(width: usize) -> ModelInfo {
        ModelInfo {
            spatial_dims: 2,
            in_channels: 1,
            out_channels: 2,
            output: Activation::Softmax,
            padding: Padding::Valid,
            halo: 92,
            size_multiple: 16,
            size_offset: 12,
            normalization: Normalization::None,
            first_layer_width: Some(width),
            probed: false,
            min_size: 0,
            fixed_size: 0,
            output_key: None,
            exactness: Default::default(),
            read_out: Default::default(),
            object_size: None,
            square_memory: 0.0,
        }
    }

    #[test]
    fn paper_net_in_fp32_gets_about_the_papers_tile_in_a_gigabyte() {
        let tile = choose_tile(&paper(64), &[4096, 4096], 92, 1 << 30, 4, Processor::Gpu);
        assert_eq!(tile, vec![572, 572]);
        assert!(tile.iter().all(|&t| (t - 12) % 16 == 0));
    }

    #[test]
    fn small_images_get_one_covering_tile_and_thin_axes_give_room() {
        let info = paper(64);
        let tile = choose_tile(&info, &[100, 120], 92, 1 << 30, 4, Processor::Gpu);
        assert_eq!(tile, vec![284, 316]);
        let thin = choose_tile(&info, &[7, 100_000], 92, 1 << 30, 4, Processor::Gpu);
        assert_eq!(thin[0], 204);
        assert!(thin[1] > 572, "{thin:?}");
    }

    #[test]
    fn tiny_budgets_still_give_a_valid_tile_and_batches_are_bounded() {
        let info = paper(64);
        assert_eq!(
            choose_tile(&info, &[4096, 4096], 92, 1, 4, Processor::Gpu),
            vec![188, 188]
        );
        assert_eq!(
            choose_batch(&info, &[188, 188], 3, 1 << 40, 4, Processor::Gpu),
            3
        );
        assert_eq!(
            choose_batch(&info, &[572, 572], 100, 1, 4, Processor::Gpu),
            1
        );
        // 2^60 pixels times the bytes per pixel overflows usize: still one tile, no division by zero.
        assert_eq!(
            choose_batch(&info, &[1 << 20; 3], 100, usize::MAX, 4, Processor::Gpu),
            1
        );
    }

    /// Every axis that takes several tiles has a stride of `multiple` times
    /// `2^k` or `3 * 2^k` (see [`ladder_tiles`]).
    fn assert_ladder_strides(tile: &[usize], image: &[usize], halo: usize, multiple: usize) {
        for (&t, &n) in tile.iter().zip(image) {
            let plan = crate::TilePlan::valid(&[n], &[t], halo, multiple.max(1)).unwrap();
            if plan.len() == 1 {
                continue; // one tile covers the axis
            }
            let unit = plan.stride()[0] / multiple;
            let odd = unit >> unit.trailing_zeros();
            assert!(
                odd == 1 || odd == 3,
                "stride {} for multiple {multiple}: tile {tile:?} image {image:?}",
                plan.stride()[0]
            );
        }
    }

    #[test]
    fn auto_strides_are_on_the_ladder_and_lose_little() {
        for multiple in [1usize, 4, 8, 16] {
            let mut info = paper(32);
            info.size_multiple = multiple;
            info.size_offset = 4 % multiple.max(1);
            let halo = 3 * multiple + 2;
            info.halo = halo;
            for budget in [1usize << 22, 1 << 24, 3 << 25, 1 << 28, 1 << 30, 5 << 30] {
                for image in [[100_000usize, 100_000], [90, 100_000]] {
                    let tile = choose_tile(&info, &image, halo, budget, 4, Processor::Gpu);
                    assert_ladder_strides(&tile, &image, halo, multiple);
                    let smallest = info.smallest_valid_size().max(2 * halo + multiple);
                    let pixels: usize = tile.iter().product();
                    let within = pixels * bytes_per_pixel(&info, 4, Processor::Gpu) <= budget;
                    assert!(
                        within || tile.contains(&smallest) || tile[0] <= smallest + multiple,
                        "{tile:?} over {budget}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_fewest_tiles_are_made_as_small_as_they_can_be() {
        // The bundled model's geometry in bf16 on a 4 GiB GPU budget: the
        // largest ladder tile (stride 3072) needs two per 4096 axis, and so
        // does stride 2048, which computes a third of the pixels.
        let info = bundled();
        assert_eq!(
            choose_tile(&info, &[4096, 4096], 44, 4 << 30, 2, Processor::Gpu),
            vec![2140, 2140]
        );
        assert_eq!(
            choose_tile(&info, &[5000, 5000], 44, 4 << 30, 2, Processor::Gpu),
            vec![3164, 3164]
        );
    }

    /// The bundled model's geometry: valid sizes 4 + 8k, 44 pixels lost
    /// per side, 16 channels in the first layer.
    fn bundled() -> ModelInfo {
        let mut info = paper(16);
        info.halo = 44;
        info.size_multiple = 8;
        info.size_offset = 4;
        info
    }

    #[test]
    fn cpu_tiles_are_the_fastest_by_the_model_not_the_largest() {
        // Measured on the development machine: 1.7-1.8 MP/s at 348-476
        // against 1.1 at 1116, the largest within 1 GiB (fp32).
        assert_eq!(
            choose_cpu_tile(&bundled(), &[4096, 4096], 44, 1 << 30, 4),
            vec![348, 348]
        );
        assert_eq!(
            choose_tile(&bundled(), &[4096, 4096], 44, 1 << 30, 4, Processor::Gpu),
            vec![1116, 1116]
        );
        // bf16: larger tiles (measured fastest at 604 on 4096^2; on 16384^2
        // 476 covers the image with less mirrored margin).
        for (side, tile) in [(4096, 604), (16384, 476)] {
            assert_eq!(
                choose_cpu_tile(&bundled(), &[side, side], 44, 1 << 30, 2),
                vec![tile, tile]
            );
        }
        // The paper's U-Net: a larger halo and more arithmetic per byte ask
        // for larger tiles (measured at 2048^2: 700 fastest in fp32 and bf16).
        for (side, bytes) in [(4096, 4), (4096, 2), (2048, 4), (2048, 2)] {
            assert_eq!(
                choose_cpu_tile(&paper(64), &[side, side], 92, 1 << 30, bytes),
                vec![700, 700],
                "{side} {bytes}"
            );
        }
        // Batches of one such tile; many small fixed-size tiles per batch.
        assert_eq!(
            choose_cpu_batch(&bundled(), &[348, 348], 100, 1 << 30, 4),
            1
        );
        let mut fixed = bundled();
        fixed.fixed_size = 64;
        let tile = choose_cpu_tile(&fixed, &[4096, 4096], 44, 1 << 30, 4);
        assert_eq!(tile, vec![64, 64]);
        assert_eq!(choose_cpu_batch(&fixed, &tile, 100, 1 << 30, 4), 16);
        assert_eq!(choose_cpu_batch(&fixed, &tile, 3, 1 << 30, 4), 3);
    }

    #[test]
    fn cpu_tiles_cover_small_and_thin_images_whole_and_keep_ladder_strides() {
        let info = bundled();
        assert_eq!(
            choose_cpu_tile(&info, &[200, 150], 44, 1 << 30, 4),
            vec![292, 244]
        );
        let thin = choose_cpu_tile(&info, &[30, 100_000], 44, 1 << 30, 4);
        assert_eq!(thin[0], 124);
        assert!(thin[1] >= 348, "{thin:?}");
        for image in [[5000usize, 3000], [300, 5000], [1000, 1000], [100_000, 777]] {
            for budget in [1usize << 24, 1 << 27, 1 << 30] {
                for bytes in [2, 4] {
                    let tile = choose_cpu_tile(&info, &image, 44, budget, bytes);
                    assert_ladder_strides(&tile, &image, 44, 8);
                    let pixels: usize = tile.iter().product();
                    let smallest = info.min_tile();
                    assert!(
                        pixels * bytes_per_pixel(&info, bytes, Processor::Cpu) <= budget
                            || tile.contains(&smallest),
                        "{tile:?} over {budget} for {image:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn cpu_tiles_of_models_without_halo_are_not_tiny() {
        // Nothing to lose on overlap, so only the floor and the per-pass
        // cost keep the tiles from shrinking to a pixel.
        let mut elementwise = paper(64);
        elementwise.halo = 0;
        elementwise.size_multiple = 1;
        elementwise.size_offset = 0;
        assert_eq!(
            choose_cpu_tile(&elementwise, &[4096, 4096], 0, 1 << 30, 4),
            vec![256, 256]
        );
        // Without convolution weights there is nothing to price: the
        // largest tiles in the budget, as on a GPU.
        let mut unknown = elementwise.clone();
        unknown.first_layer_width = None;
        let largest = choose_tile(&unknown, &[4096, 4096], 0, 1 << 30, 4, Processor::Cpu);
        assert_eq!(
            choose_cpu_tile(&unknown, &[4096, 4096], 0, 1 << 30, 4),
            largest
        );
        assert_eq!(largest, vec![512, 1024]);
        // Below the floor only when the budget leaves nothing else.
        let tight = choose_cpu_tile(&elementwise, &[4096, 4096], 0, 100 << 10, 4);
        assert!(
            tight[0] < 256
                && tight[0] * tight[1] * bytes_per_pixel(&elementwise, 4, Processor::Cpu)
                    <= 100 << 10,
            "{tight:?}"
        );
    }

    #[test]
    fn cpu_tiles_within_tiny_budgets_and_in_3d() {
        let info = bundled();
        let tiny = choose_cpu_tile(&info, &[4096, 4096], 44, 1, 4);
        assert_eq!(tiny, vec![info.min_tile(); 2]);
        let mut volume = bundled();
        volume.spatial_dims = 3;
        let tile = choose_cpu_tile(&volume, &[512, 2048, 2048], 44, 1 << 30, 4);
        assert!(
            tile.iter().all(|&t| (t - 4) % 8 == 0 && t >= 100),
            "{tile:?}"
        );
        let voxels: usize = tile.iter().product();
        assert!(voxels * bytes_per_pixel(&volume, 4, Processor::Cpu) <= 1 << 30);
    }

    #[test]
    fn memory_that_grows_with_the_square_keeps_tiles_within_the_budget() {
        // The attention network of the probe tests: 16 wide, and 2.2 GiB
        // at a 1024 px pass, about 2 GB of it the square.
        let mut attention = bundled();
        attention.square_memory = 2.0e9 / (1024.0f64 * 1024.0).powi(2);
        let budget = 1usize << 30;
        for processor in [Processor::Cpu, Processor::Gpu] {
            let tile = choose_tile(&attention, &[4096, 4096], 44, budget, 4, processor);
            let pixels = (tile[0] * tile[1]) as f64;
            assert!(
                activation_bytes(&attention, pixels, 4, processor) <= budget as f64,
                "{tile:?}"
            );
            // Without the square, the same budget took tiles of over 1000.
            let linear = choose_tile(&bundled(), &[4096, 4096], 44, budget, 4, processor);
            assert!(tile[0] < linear[0] && tile[0] >= 8, "{tile:?} {linear:?}");
        }
        let tile = choose_cpu_tile(&attention, &[4096, 4096], 44, budget, 4);
        let pixels = (tile[0] * tile[1]) as f64;
        assert!(activation_bytes(&attention, pixels, 4, Processor::Cpu) <= budget as f64);
        assert_eq!(
            choose_batch(&attention, &tile, 100, budget, 4, Processor::Gpu).max(1),
            {
                let per_tile = activation_bytes(&attention, pixels, 4, Processor::Gpu);
                ((budget as f64 / per_tile) as usize).clamp(1, MAX_BATCH)
            }
        );
        // A whole 2048 px pass: the square's 32 GiB are counted, per image
        // of a batch (not the batch's pixels squared).
        let one = forward_host_bytes(&attention, 2048 * 2048, 1, 4, tch::Device::Cpu);
        assert!(one > 30 << 30, "{one}");
        let two = forward_host_bytes(&attention, 2048 * 2048, 2, 4, tch::Device::Cpu);
        assert_eq!(two, 2 * one);
        // bf16 halves it, as it halves the rest.
        let half = forward_host_bytes(&attention, 2048 * 2048, 1, 2, tch::Device::Cpu);
        assert!(half < one / 10 * 6, "{half} {one}");
        // The root is the largest tile area within the budget.
        let most = pixels_within(&attention, budget, 4, Processor::Cpu);
        assert!(activation_bytes(&attention, most, 4, Processor::Cpu) <= budget as f64);
        assert!(activation_bytes(&attention, most + 1.0, 4, Processor::Cpu) > budget as f64);
    }
}
