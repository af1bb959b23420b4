//! Choosing the tile shape and batch size from a memory budget.

use crate::model::ModelInfo;

/// Live activations per input pixel, in units of the first layer's width:
/// a U-Net level holds its skip map, two convolution outputs and, in the
/// decoder, the concatenation of two maps; deeper levels add about as much
/// again (half the pixels, twice the channels each), and libtorch's
/// convolution workspaces come on top.
const ACTIVATIONS_PER_WIDTH: usize = 12;
/// Assumed first-layer width when the model does not tell.
const DEFAULT_WIDTH: usize = 64;
/// No tile side beyond this: larger tiles gain nothing and risk
/// integer-size limits in convolution kernels.
const MAX_TILE_SIDE: usize = 4096;
/// At most this many tiles per batch.
const MAX_BATCH: usize = 16;

/// Estimated bytes per input pixel of a tile during one forward pass.
pub(crate) fn bytes_per_pixel(info: &ModelInfo, element_bytes: usize) -> usize {
    let width = info.first_layer_width.unwrap_or(DEFAULT_WIDTH).max(info.in_channels).max(1);
    width * ACTIVATIONS_PER_WIDTH * element_bytes
}

/// The input tile per axis: the largest valid one within `budget` bytes, and
/// never larger than needed to cover the image in one tile. Axes that need
/// little leave room to the others.
pub(crate) fn choose_tile(info: &ModelInfo, image: &[usize], halo: usize, budget: usize, element_bytes: usize) -> Vec<usize> {
    let max_pixels = (budget / bytes_per_pixel(info, element_bytes)).max(1) as f64;
    let smallest = info.smallest_valid_size();
    let needed: Vec<usize> = image.iter().map(|&n| round_up_valid(info, n + 2 * halo)).collect();
    let mut order: Vec<usize> = (0..image.len()).collect();
    order.sort_by_key(|&a| needed[a]);
    let mut tile = vec![smallest; image.len()];
    let mut used = 1.0f64;
    for (k, &a) in order.iter().enumerate() {
        let remaining_axes = (image.len() - k) as f64;
        let side = (max_pixels / used).powf(1.0 / remaining_axes);
        let cap = (side as usize).min(MAX_TILE_SIDE);
        let fitting = round_down_valid(info, cap).unwrap_or(smallest);
        tile[a] = needed[a].min(fitting).max(smallest);
        used *= tile[a] as f64;
    }
    tile
}

/// Tiles per batch within the budget, at most the number of tiles.
pub(crate) fn choose_batch(info: &ModelInfo, tile: &[usize], tiles: usize, budget: usize, element_bytes: usize) -> usize {
    let per_tile = tile.iter().product::<usize>().max(1) * bytes_per_pixel(info, element_bytes);
    (budget / per_tile).clamp(1, MAX_BATCH).min(tiles.max(1))
}

fn round_up_valid(info: &ModelInfo, size: usize) -> usize {
    let mut s = info.smallest_valid_size();
    while s < size {
        s += info.size_multiple;
    }
    s
}

fn round_down_valid(info: &ModelInfo, size: usize) -> Option<usize> {
    let smallest = info.smallest_valid_size();
    (size >= smallest).then(|| smallest + (size - smallest) / info.size_multiple * info.size_multiple)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Normalization, OutputKind, Padding};

    fn paper(width: usize) -> ModelInfo {
        ModelInfo {
            spatial_dims: 2,
            in_channels: 1,
            out_channels: 2,
            output: OutputKind::Softmax,
            padding: Padding::Valid,
            halo: 92,
            size_multiple: 16,
            size_offset: 12,
            normalization: Normalization::None,
            first_layer_width: Some(width),
            probed: false,
        }
    }

    #[test]
    fn paper_net_in_fp32_gets_about_the_papers_tile_in_a_gigabyte() {
        let tile = choose_tile(&paper(64), &[4096, 4096], 92, 1 << 30, 4);
        assert_eq!(tile, vec![588, 588]);
        assert!(tile.iter().all(|&t| (t - 12) % 16 == 0));
    }

    #[test]
    fn small_images_get_one_covering_tile_and_thin_axes_give_room() {
        let info = paper(64);
        let tile = choose_tile(&info, &[100, 120], 92, 1 << 30, 4);
        assert_eq!(tile, vec![284, 316]);
        let thin = choose_tile(&info, &[7, 100_000], 92, 1 << 30, 4);
        assert_eq!(thin[0], 204);
        assert!(thin[1] > 572, "{thin:?}");
    }

    #[test]
    fn tiny_budgets_still_give_a_valid_tile_and_batches_are_bounded() {
        let info = paper(64);
        assert_eq!(choose_tile(&info, &[4096, 4096], 92, 1, 4), vec![188, 188]);
        assert_eq!(choose_batch(&info, &[188, 188], 3, 1 << 40, 4), 3);
        assert_eq!(choose_batch(&info, &[572, 572], 100, 1, 4), 1);
    }
}
