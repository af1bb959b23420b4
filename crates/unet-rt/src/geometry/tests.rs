//! Exhaustive and property tests of the tile geometry (pure, tensor-free).

use super::*;

/// SplitMix64: a tiny deterministic generator, enough for test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
}

/// Image sides that stress the geometry: tiny, smaller than any halo,
/// primes, near and at powers of two.
const AWKWARD_SIZES: &[usize] = &[
    1, 2, 3, 5, 7, 13, 16, 17, 31, 32, 33, 63, 97, 127, 128, 211, 300,
];

/// A random (tile, halo, multiple) that a plan accepts: the output holds
/// at least one stride, plus a little extra that is not a multiple.
fn random_tile(rng: &mut Rng, max_halo: usize, max_strides: usize) -> (usize, usize, usize) {
    let halo = rng.range(0, max_halo);
    let multiple = rng.pick(&[1, 2, 4, 8, 16]);
    let output = multiple * rng.range(1, max_strides) + rng.range(0, multiple - 1);
    (2 * halo + output, halo, multiple)
}

fn random_blend(rng: &mut Rng) -> Blend {
    match rng.range(0, 2) {
        0 => Blend::gaussian(),
        1 => Blend::Gaussian { sigma_scale: 0.01 },
        _ => Blend::Constant,
    }
}

/// Calls `visit` with every index of a box of the given shape, row-major.
fn for_each_index(shape: &[usize], mut visit: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut index = vec![0; shape.len()];
    loop {
        visit(&index);
        let mut axis = shape.len();
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

fn flat(index: &[usize], shape: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Row-major offset of `index + shift` in `shape`.
fn flat_shifted(index: &[usize], shift: &[usize], shape: &[usize]) -> usize {
    index
        .iter()
        .zip(shift)
        .zip(shape)
        .fold(0, |acc, ((&i, &s), &n)| acc * n + i + s)
}

// -- numpy emulation --------------------------------------------------

/// `numpy.pad(arange(n), (left, right), mode="reflect")`, emulated by
/// porting numpy's algorithm literally (numpy/lib/_arraypad_impl.py:
/// `pad` and `_set_reflect_both` with `include_edge=False`): pad areas
/// wider than the signal are filled iteratively, each pass mirroring a
/// chunk of the already padded array about its current edge, with chunks
/// limited to multiples of the original period.
fn numpy_reflect_pad(n: usize, left: usize, right: usize) -> Vec<usize> {
    let total = left + n + right;
    let mut padded: Vec<Option<usize>> = vec![None; total];
    for i in 0..n {
        padded[left + i] = Some(i);
    }
    if n == 1 && (left > 0 || right > 0) {
        // numpy: "Extending singleton dimension for 'reflect' is legacy
        // behavior", done with mode "edge".
        return vec![0; total];
    }
    let (mut left_pad, mut right_pad) = (left, right);
    while left_pad > 0 || right_pad > 0 {
        let mut old_length = total - right_pad - left_pad;
        let original_period = n;
        old_length = (old_length - 1) / (original_period - 1) * (original_period - 1) + 1;
        let edge_offset = 0;
        old_length -= 1;
        if left_pad > 0 {
            let chunk_length = old_length.min(left_pad);
            // left_slice = slice(start, stop, -1) with stop = left_pad - edge_offset.
            let stop = left_pad - edge_offset;
            let start = stop + chunk_length;
            let chunk: Vec<_> = (stop + 1..=start).rev().map(|i| padded[i]).collect();
            let area_start = left_pad - chunk_length;
            for (j, value) in chunk.into_iter().enumerate() {
                padded[area_start + j] = value;
            }
            left_pad -= chunk_length;
        }
        if right_pad > 0 {
            let chunk_length = old_length.min(right_pad);
            // start = -right_pad + edge_offset - 2, a negative index.
            let start = total - right_pad + edge_offset - 2;
            let chunk: Vec<_> = (0..chunk_length).map(|j| padded[start - j]).collect();
            let area_start = total - right_pad;
            for (j, value) in chunk.into_iter().enumerate() {
                padded[area_start + j] = value;
            }
            right_pad -= chunk_length;
        }
    }
    padded
        .into_iter()
        .map(|value| value.expect("numpy emulation left a hole"))
        .collect()
}

#[test]
fn reflect_index_equals_numpy_reflect_padding() {
    for n in 1..12 {
        for left in [0, 1, 2, 5, 11, 23, 40, 97] {
            for right in [0, 1, 3, 10, 12, 37, 64] {
                let padded = numpy_reflect_pad(n, left, right);
                for (j, &expected) in padded.iter().enumerate() {
                    let i = j as isize - left as isize;
                    assert_eq!(
                        reflect_index(i, n),
                        expected,
                        "n {n} i {i} pads ({left}, {right})"
                    );
                }
            }
        }
    }
}

#[test]
fn reflect_index_known_values_and_extremes() {
    // numpy.pad(arange(4), 5, mode="reflect")
    let expected = [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2];
    let got: Vec<_> = (-5..9).map(|i| reflect_index(i, 4)).collect();
    assert_eq!(got, expected);
    assert_eq!(reflect_index(-1, 10), 1);
    assert_eq!(reflect_index(10, 10), 8);
    for n in [0, 1, 2, 3, 1000, usize::MAX] {
        for i in [isize::MIN, isize::MIN + 1, -1, 0, 1, isize::MAX] {
            let r = reflect_index(i, n);
            assert!(r < n.max(1), "n {n} i {i} -> {r}");
        }
    }
    assert_eq!(reflect_index(isize::MAX, usize::MAX), isize::MAX as usize);
}

fn expand(runs: &[Run]) -> Vec<usize> {
    let mut out = Vec::new();
    for run in runs {
        assert_eq!(run.dst, out.len(), "runs must tile the window in order");
        assert!(run.len >= 1 && (-1..=1).contains(&run.step), "{run:?}");
        for j in 0..run.len as isize {
            out.push((run.src as isize + j * run.step) as usize);
        }
    }
    out
}

#[test]
fn reflect_runs_expand_to_reflect_index_and_are_maximal() {
    let mut rng = Rng(1);
    for _ in 0..4000 {
        let n = rng.range(0, 12);
        let start = rng.range(0, 200) as isize - 100;
        let len = rng.range(0, 80);
        let runs: Vec<Run> = reflect_runs(start, len, n).collect();
        assert_eq!(reflect_runs(start, len, n).len(), runs.len());
        if n == 0 {
            assert!(runs.is_empty());
            continue;
        }
        let expected: Vec<_> = (0..len as isize)
            .map(|j| reflect_index(start + j, n))
            .collect();
        assert_eq!(expand(&runs), expected, "start {start} len {len} n {n}");
        for pair in runs.windows(2) {
            let last = pair[0].src as isize + (pair[0].len as isize - 1) * pair[0].step;
            let can_extend = pair[1].src as isize == last + pair[0].step;
            assert!(!can_extend, "runs {pair:?} could merge (n {n})");
        }
    }
}

#[test]
fn reflect_runs_are_few_for_ordinary_windows() {
    // The paper's first tile: 572 wide from -92 on a 512 image is one
    // mirrored run down to pixel 0 and one forward run.
    let runs: Vec<Run> = reflect_runs(-92, 572, 512).collect();
    assert_eq!(
        runs,
        vec![
            Run {
                dst: 0,
                src: 92,
                len: 93,
                step: -1
            },
            Run {
                dst: 93,
                src: 1,
                len: 479,
                step: 1
            }
        ]
    );
    assert!(reflect_runs(isize::MAX - 3, 10, 7).len() <= 3);
    assert!(reflect_runs(isize::MIN, 10, usize::MAX).len() == 1);
}

#[test]
fn reflect_runs_of_windows_beyond_memory_are_counted_not_built() {
    // One run per pixel of a 2^40 window on a 1-pixel axis was 35 TB (it
    // aborted), and 2^36 runs of a 2-pixel axis grew until the OOM killer.
    let mut one = reflect_runs(0, 1 << 40, 1);
    assert_eq!(one.len(), 1);
    assert_eq!(
        one.next(),
        Some(Run {
            dst: 0,
            src: 0,
            len: 1 << 40,
            step: 0
        })
    );
    assert_eq!(reflect_runs(3, usize::MAX, 1).len(), 1);
    assert_eq!(reflect_runs(isize::MIN, 1 << 36, 2).len(), 1 << 35);
    assert_eq!(reflect_runs(isize::MIN + 1, 1 << 36, 2).len(), 1 << 35);
    assert_eq!(reflect_runs(0, usize::MAX, 2).len(), usize::MAX / 2 + 1);
    // After the first run, one run per half period of n - 1 pixels.
    assert_eq!(
        reflect_runs(-92, 1 << 40, 512).len(),
        1 + ((1 << 40) - 93usize).div_ceil(511)
    );
    let mut runs = reflect_runs(isize::MIN, usize::MAX, 7);
    let before = runs.len();
    let third = runs.nth(2).expect("a case that succeeds");
    assert_eq!(runs.len(), before - 3);
    assert_eq!(third.len, 6);
}

// -- size helpers ---------------------------------------------------------

#[test]
fn size_helpers_match_the_paper() {
    assert!(is_valid_size(572, 12, 16) && is_valid_size(188, 12, 16));
    assert!(!is_valid_size(570, 12, 16) && !is_valid_size(11, 12, 16));
    assert_eq!(smallest_valid_size(12, 16, 92), 204);
    assert_eq!(round_down_to_valid(600, 12, 16, 92), Some(588));
    assert_eq!(round_down_to_valid(572, 12, 16, 92), Some(572));
    assert_eq!(round_down_to_valid(203, 12, 16, 92), None);
    assert!(check_tile_size(&[572, 572], 12, 16, 92).is_ok());
}

#[test]
fn size_helpers_match_their_definitions() {
    for offset in 0..20 {
        for multiple in 0..9 {
            for halo in 0..7 {
                let m = multiple.max(1);
                let usable = |s: usize| is_valid_size(s, offset, multiple) && s >= 2 * halo + m;
                let smallest = smallest_valid_size(offset, multiple, halo);
                assert!(usable(smallest));
                assert!((0..smallest).all(|s| !usable(s)));
                assert!(TilePlan::valid(&[50], &[smallest], halo, m).is_ok());
                for size in 0..80 {
                    assert_eq!(
                        is_valid_size(size, offset, multiple),
                        size >= offset && (size - offset) % m == 0
                    );
                    let expected = (0..=size).rev().find(|&s| usable(s));
                    assert_eq!(round_down_to_valid(size, offset, multiple, halo), expected);
                    assert_eq!(
                        check_tile_size(&[size], offset, multiple, halo).is_ok(),
                        usable(size)
                    );
                }
            }
        }
    }
    assert_eq!(
        smallest_valid_size(usize::MAX, usize::MAX, usize::MAX),
        usize::MAX
    );
    assert_eq!(round_down_to_valid(usize::MAX, 0, 0, usize::MAX), None);
}

#[test]
fn check_tile_size_names_the_nearest_sizes() {
    let message = check_tile_size(&[572, 570], 12, 16, 92)
        .expect_err("570 is invalid")
        .to_string();
    assert!(
        message.contains("axis 1") && message.contains("556 or 572"),
        "{message}"
    );
    let message = check_tile_size(&[188], 12, 16, 92)
        .expect_err("188 is too small")
        .to_string();
    assert!(message.contains("smallest usable tile is 204"), "{message}");
    let message = check_tile_size(&[100], 12, 16, 92)
        .expect_err("100 is invalid")
        .to_string();
    assert!(message.contains("nearest usable: 204"), "{message}");
}

// -- plans: paper numbers and errors --------------------------------------

#[test]
fn paper_numbers() {
    let plan = TilePlan::valid(&[512, 512], &[572, 572], 92, 16).expect("paper tile");
    assert_eq!(plan.output_tile_shape(), &[388, 388]);
    assert_eq!(plan.stride(), &[384, 384]);
    assert_eq!(plan.grid_shape(), &[2, 2]);
    assert_eq!(plan.len(), 4);
    assert!(!plan.is_empty() && !plan.blends() && plan.weights().is_none());
    let last = plan.tile(3).expect("four tiles");
    assert_eq!(last.grid_index, vec![1, 1]);
    assert_eq!(last.read_start, vec![292, 292]);
    assert_eq!(last.write_start, vec![384, 384]);
    assert_eq!(last.write_shape, vec![128, 128]);
    assert_eq!(last.src_start, vec![0, 0]);
    let first = plan.tile(0).expect("four tiles");
    assert_eq!(
        (first.read_start, first.write_shape),
        (vec![-92, -92], vec![384, 384])
    );
    // 388 x 388 fits in one tile.
    assert_eq!(
        TilePlan::valid(&[388, 300], &[572, 572], 92, 16)
            .expect("fits")
            .len(),
        1
    );
    assert_eq!(
        TilePlan::valid(&[389, 1], &[572, 572], 92, 16)
            .expect("fits")
            .grid_shape(),
        &[2, 1]
    );
}

fn message_of(result: Result<TilePlan>) -> String {
    result.expect_err("must be rejected").to_string()
}

#[test]
fn invalid_arguments_are_explained() {
    assert!(message_of(TilePlan::valid(&[], &[], 0, 1)).contains("no spatial axes"));
    assert!(message_of(TilePlan::valid(&[10, 10], &[20], 0, 1)).contains("1 axes"));
    assert!(message_of(TilePlan::valid(&[10, 0], &[20, 20], 0, 1))
        .contains("empty along spatial axis 1"));
    assert!(message_of(TilePlan::valid(&[10], &[20], 0, 0)).contains("at least 1"));
    let message = message_of(TilePlan::valid(&[512, 512], &[572, 188], 92, 16));
    assert!(
        message.contains("axis 1") && message.contains("smallest usable tile is 200"),
        "{message}"
    );
    assert!(
        message_of(TilePlan::valid(&[10], &[184], 92, 16)).contains("smallest usable tile is 200")
    );
    assert!(message_of(TilePlan::valid(&[10], &[100], 92, 16)).contains("too small"));
    assert!(message_of(TilePlan::valid(&[10], &[100], usize::MAX, 16)).contains("invalid halo"));
    assert!(message_of(TilePlan::valid(&[10], &[100], 1, usize::MAX)).contains("invalid multiple"));
    assert!(message_of(TilePlan::valid(&[usize::MAX], &[100], 1, 16)).contains("beyond"));
    assert!(message_of(TilePlan::valid(&[10], &[MAX_TILE_SIDE + 1], 1, 16)).contains("beyond"));
    for sigma_scale in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let result = TilePlan::same(&[10], &[32], 2, 4, Blend::Gaussian { sigma_scale });
        assert!(message_of(result).contains("sigma_scale"));
    }
    let message = message_of(TilePlan::valid(&[MAX_EXTENT; 3], &[1, 1, 1], 0, 1));
    assert!(message.contains("more tiles"), "{message}");
}

#[test]
fn arbitrary_arguments_never_panic() {
    let mut rng = Rng(7);
    let values = [
        0,
        1,
        2,
        3,
        16,
        92,
        572,
        MAX_TILE_SIDE,
        MAX_TILE_SIDE + 1,
        MAX_EXTENT,
        MAX_EXTENT + 1,
        usize::MAX,
    ];
    for _ in 0..3000 {
        let rank = rng.range(0, 3);
        let image: Vec<_> = (0..rank).map(|_| rng.pick(&values)).collect();
        let tile: Vec<_> = (0..rng.range(0, 3)).map(|_| rng.pick(&values)).collect();
        let (halo, multiple) = (rng.pick(&values), rng.pick(&values));
        let blend = random_blend(&mut rng);
        for plan in [
            TilePlan::valid(&image, &tile, halo, multiple),
            TilePlan::same(&image, &tile, halo, multiple, blend),
        ]
        .into_iter()
        .flatten()
        {
            // Visiting the corners of the grid exercises every formula.
            let _ = plan.tile(0);
            let _ = plan.tile(plan.len() - 1);
            let _ = plan.tile(usize::MAX);
        }
        let _ = check_tile_size(&tile, halo, multiple, rng.pick(&values));
        let _ = round_down_to_valid(rng.pick(&values), halo, multiple, rng.pick(&values));
    }
}

// -- plans: properties ----------------------------------------------------

/// Random plan arguments: rank 2 or 3, awkward or random image sides
/// (3D kept small), tiles that may be far larger than the image.
fn random_case(rng: &mut Rng) -> (Vec<usize>, Vec<usize>, usize, usize) {
    let rank = rng.range(2, 3);
    let (max_side, max_halo, max_strides) = if rank == 2 { (300, 12, 6) } else { (24, 4, 3) };
    let image: Vec<_> = (0..rank)
        .map(|_| {
            if rng.range(0, 1) == 0 {
                rng.pick(AWKWARD_SIZES).min(max_side)
            } else {
                rng.range(1, max_side)
            }
        })
        .collect();
    // Keep 2D pixel counts modest so the per-pixel checks stay fast.
    let image = if rank == 2 && image[0] * image[1] > 10_000 {
        vec![image[0], image[1].min(33)]
    } else {
        image
    };
    let (_, halo, multiple) = random_tile(rng, max_halo, max_strides);
    let tile = (0..rank)
        .map(|_| 2 * halo + multiple * rng.range(1, max_strides) + rng.range(0, multiple - 1))
        .collect();
    (image, tile, halo, multiple)
}

/// Checks shared by every plan: shapes, pooling grid, reads in range,
/// writes inside the image and inside the tile's trusted output, and the
/// mapping from tile output to image.
fn check_common(plan: &TilePlan, tile_in: &[usize], halo: usize, multiple: usize) {
    let image = plan.image_shape();
    let out = plan.output_tile_shape();
    let same = plan.mode() != TileMode::Valid;
    let src_offset = if same { halo } else { 0 };
    assert_eq!(plan.tiles().len(), plan.len());
    assert_eq!(plan.len(), plan.grid_shape().iter().product::<usize>());
    for (position, tile) in plan.tiles().enumerate() {
        assert_eq!(tile.index, position);
        assert_eq!(tile.read_shape, tile_in, "every tile has the same shape");
        for axis in 0..image.len() {
            let (n, stride) = (image[axis], plan.stride()[axis]);
            assert!(stride > 0 && stride % multiple == 0);
            let origin = tile.read_start[axis] + halo as isize;
            assert_eq!(origin, (tile.grid_index[axis] * stride) as isize);
            assert_eq!(
                origin % multiple as isize,
                0,
                "read window off the pooling grid"
            );
            for j in 0..tile_in[axis] as isize {
                assert!(reflect_index(tile.read_start[axis] + j, n) < n);
            }
            assert!(tile.write_shape[axis] >= 1);
            assert!(
                tile.write_start[axis] + tile.write_shape[axis] <= n,
                "write past the image"
            );
            // Image position p comes from tile output position p - k*S (+ halo for same).
            assert_eq!(
                tile.src_start[axis] as isize,
                tile.write_start[axis] as isize - origin + src_offset as isize
            );
            assert!(tile.src_start[axis] >= src_offset);
            assert!(
                tile.src_start[axis] + tile.write_shape[axis] <= out[axis] - src_offset,
                "write from the damaged border"
            );
        }
    }
    for axis in 0..image.len() {
        let (count, stride, kept) = (
            plan.grid_shape()[axis],
            plan.stride()[axis],
            tile_in[axis] - 2 * halo,
        );
        assert!(
            (count - 1) * stride + kept >= image[axis],
            "axis not covered"
        );
        assert!(
            count == 1 || (count - 2) * stride + kept < image[axis],
            "more tiles than needed"
        );
    }
}

/// Per-pixel write counts of a plan.
fn write_counts(plan: &TilePlan) -> Vec<u32> {
    let image = plan.image_shape();
    let mut counts = vec![0u32; image.iter().product()];
    for tile in plan.tiles() {
        for_each_index(&tile.write_shape, |offset| {
            counts[flat_shifted(offset, &tile.write_start, image)] += 1;
        });
    }
    counts
}

#[test]
fn crop_plans_write_every_pixel_exactly_once() {
    let mut rng = Rng(42);
    for case in 0..400 {
        let (image, tile_in, halo, multiple) = random_case(&mut rng);
        let plan = if case % 2 == 0 {
            TilePlan::valid(&image, &tile_in, halo, multiple)
        } else {
            TilePlan::same(&image, &tile_in, halo, multiple, Blend::Crop)
        }
        .expect("random case is valid");
        check_common(&plan, &tile_in, halo, multiple);
        assert!(
            write_counts(&plan).iter().all(|&count| count == 1),
            "{image:?} {tile_in:?} h {halo} m {multiple}"
        );
    }
}

#[test]
fn same_crop_is_the_valid_plan_shifted_by_the_halo() {
    let mut rng = Rng(3);
    for _ in 0..200 {
        let (image, tile_in, halo, multiple) = random_case(&mut rng);
        let valid = TilePlan::valid(&image, &tile_in, halo, multiple).expect("valid case");
        let same =
            TilePlan::same(&image, &tile_in, halo, multiple, Blend::Crop).expect("valid case");
        assert_eq!(same.output_tile_shape(), tile_in.as_slice());
        assert_eq!(valid.len(), same.len());
        for (a, b) in valid.tiles().zip(same.tiles()) {
            assert_eq!(
                (&a.read_start, &a.write_start, &a.write_shape),
                (&b.read_start, &b.write_start, &b.write_shape)
            );
            assert!(a
                .src_start
                .iter()
                .zip(&b.src_start)
                .all(|(x, y)| x + halo == *y));
        }
    }
}

#[test]
fn blend_plans_cover_every_pixel_with_positive_weight() {
    let mut rng = Rng(99);
    for _ in 0..250 {
        let (image, tile_in, halo, multiple) = random_case(&mut rng);
        let blend = random_blend(&mut rng);
        let plan =
            TilePlan::same(&image, &tile_in, halo, multiple, blend).expect("random case is valid");
        check_common(&plan, &tile_in, halo, multiple);
        let weights = plan.weights().expect("blend plans have weights");
        let mut sums = vec![0.0f32; image.iter().product()];
        for tile in plan.tiles() {
            for_each_index(&tile.write_shape, |offset| {
                let mut weight = 1.0f32;
                for axis in 0..offset.len() {
                    weight *= weights[axis][tile.src_start[axis] + offset[axis]];
                }
                assert!(weight > 0.0 && weight.is_normal());
                sums[flat_shifted(offset, &tile.write_start, &image)] += weight;
            });
            // A tile writes its whole trusted centre, clipped to the image.
            for axis in 0..image.len() {
                assert_eq!(tile.src_start[axis], halo);
                let kept = tile_in[axis] - 2 * halo;
                assert_eq!(
                    tile.write_shape[axis],
                    kept.min(image[axis] - tile.write_start[axis])
                );
            }
        }
        assert!(
            sums.iter().all(|&sum| sum > 0.0),
            "{image:?} {tile_in:?} h {halo} m {multiple}"
        );
        for (axis, w) in weights.iter().enumerate() {
            assert_eq!(w.len(), tile_in[axis]);
            assert!(w[..halo]
                .iter()
                .chain(&w[tile_in[axis] - halo..])
                .all(|&x| x == 0.0));
        }
    }
}

#[test]
fn blend_stride_is_half_the_window_when_possible() {
    // Centres 96 and 40: halves 48 and 20 -> strides 48 and 16.
    let plan = TilePlan::same(&[1000, 1000], &[128, 72], 16, 16, Blend::gaussian()).expect("valid");
    assert_eq!(plan.stride(), &[48, 16]);
    // Centre 8 holds no stride of 16 at all.
    assert!(message_of(TilePlan::same(
        &[10, 10],
        &[128, 40],
        16,
        16,
        Blend::Constant
    ))
    .contains("axis 1"));
    let plan = TilePlan::same(&[100], &[46], 16, 8, Blend::Constant).expect("valid");
    assert_eq!(
        plan.stride(),
        &[8],
        "centre 14: half holds no multiple of 8, whole does"
    );
    // Centre 80, stride 32: pixels at least a centre away from the image
    // edges are covered by at least two tiles per axis.
    let plan = TilePlan::same(&[200, 200], &[96, 96], 8, 16, Blend::Constant).expect("valid");
    assert_eq!(plan.stride(), &[32, 32]);
    let counts = write_counts(&plan);
    for_each_index(&[200, 200], |p| {
        if p.iter().all(|&c| (80..120).contains(&c)) {
            assert!(counts[flat(p, &[200, 200])] >= 4, "{p:?}");
        }
    });
}

#[test]
fn gaussian_weights_peak_in_the_centre() {
    let plan = TilePlan::same(&[64], &[48], 8, 4, Blend::gaussian()).expect("valid");
    let w = &plan.weights().expect("gaussian")[0];
    // Centre 32 pixels: sigma 4; edges 15.5 / 4 sigma away.
    assert!((w[8 + 15] - 1.0).abs() < 0.01 && (w[8 + 16] - 1.0).abs() < 0.01);
    let edge = (-0.5f64 * (15.5f64 / 4.0).powi(2)).exp() as f32;
    assert!((w[8] - edge).abs() < 1e-6 && (w[8 + 31] - edge).abs() < 1e-6);
    assert!(w[8..40].windows(2).take(15).all(|p| p[0] < p[1]));
}

// -- plans reproduce a whole-image computation ----------------------------

/// A toy valid "network": each output pixel is the sum of the
/// `2 * halo + 1` inputs around it. Its receptive field is exactly the
/// halo, like a real valid U-Net's.
fn valid_box_sum(input: &[i64], halo: usize) -> Vec<i64> {
    input
        .windows(2 * halo + 1)
        .map(|w| w.iter().sum())
        .collect()
}

/// The same toy as a same-padded network: zeros outside the input, so
/// the outer `halo` outputs are wrong, as in a real same network.
fn same_box_sum(input: &[i64], halo: usize) -> Vec<i64> {
    let n = input.len() as isize;
    (0..n)
        .map(|q| {
            (q - halo as isize..=q + halo as isize)
                .filter(|&j| (0..n).contains(&j))
                .map(|j| input[j as usize])
                .sum()
        })
        .collect()
}

/// Gathers a tile's input window with the plan's mirrored runs.
fn gather(signal: &[i64], start: isize, len: usize) -> Vec<i64> {
    let mut window = vec![0; len];
    for run in reflect_runs(start, len, signal.len()) {
        for j in 0..run.len {
            window[run.dst + j] = signal[(run.src as isize + j as isize * run.step) as usize];
        }
    }
    window
}

#[test]
fn tiled_toy_network_equals_whole_signal_forward() {
    let mut rng = Rng(5);
    for case in 0..1000 {
        let n = if case % 3 == 0 {
            rng.pick(AWKWARD_SIZES)
        } else {
            rng.range(1, 400)
        };
        let signal: Vec<i64> = (0..n).map(|_| rng.range(0, 1000) as i64).collect();
        let (tile, halo, multiple) = random_tile(&mut rng, 20, 8);
        // Whole-signal forward of the mirror-padded signal.
        let padded: Vec<i64> = (-(halo as isize)..(n + halo) as isize)
            .map(|i| signal[reflect_index(i, n)])
            .collect();
        let whole = valid_box_sum(&padded, halo);
        let blend = match case % 4 {
            0 => None,
            1 => Some(Blend::Crop),
            2 => Some(Blend::gaussian()),
            _ => Some(Blend::Constant),
        };
        let plan = match blend {
            None => TilePlan::valid(&[n], &[tile], halo, multiple),
            Some(blend) => TilePlan::same(&[n], &[tile], halo, multiple, blend),
        }
        .expect("random tile is valid");
        let mut sum = vec![0.0f64; n];
        let mut weight_sum = vec![0.0f64; n];
        for t in plan.tiles() {
            let input = gather(&signal, t.read_start[0], t.read_shape[0]);
            let output = if blend.is_none() {
                valid_box_sum(&input, halo)
            } else {
                same_box_sum(&input, halo)
            };
            assert_eq!(output.len(), plan.output_tile_shape()[0]);
            for j in 0..t.write_shape[0] {
                let w = plan
                    .weights()
                    .map_or(1.0, |w| f64::from(w[0][t.src_start[0] + j]));
                sum[t.write_start[0] + j] += w * output[t.src_start[0] + j] as f64;
                weight_sum[t.write_start[0] + j] += w;
            }
        }
        for p in 0..n {
            let tiled = sum[p] / weight_sum[p];
            let tolerance = if plan.blends() {
                1e-9 * whole[p].abs().max(1) as f64
            } else {
                0.0
            };
            assert!(
                (tiled - whole[p] as f64).abs() <= tolerance,
                "n {n} tile {tile} h {halo} m {multiple} p {p}"
            );
        }
    }
}

/// A 2D toy network on a row-major `shape` array: box sums of side
/// `2 * halo + 1`, valid (output smaller by the halo) or same (zeros
/// outside the input, output the input's shape).
fn box_sum_2d(
    input: &[i64],
    shape: [usize; 2],
    halo: usize,
    valid: bool,
) -> (Vec<i64>, [usize; 2]) {
    let h = halo as isize;
    let (out_shape, shift) = if valid {
        ([shape[0] - 2 * halo, shape[1] - 2 * halo], h)
    } else {
        (shape, 0)
    };
    let mut output = Vec::with_capacity(out_shape[0] * out_shape[1]);
    for y in 0..out_shape[0] as isize {
        for x in 0..out_shape[1] as isize {
            let (cy, cx) = (y + shift, x + shift);
            let mut total = 0;
            for yy in (cy - h..=cy + h).filter(|&v| (0..shape[0] as isize).contains(&v)) {
                for xx in (cx - h..=cx + h).filter(|&v| (0..shape[1] as isize).contains(&v)) {
                    total += input[yy as usize * shape[1] + xx as usize];
                }
            }
            output.push(total);
        }
    }
    (output, out_shape)
}

/// Gathers a 2D tile window with mirrored runs along both axes.
fn gather_2d(pixels: &[i64], image: [usize; 2], start: &[isize], shape: &[usize]) -> Vec<i64> {
    let expand_axis = |axis: usize| -> Vec<usize> {
        reflect_runs(start[axis], shape[axis], image[axis])
            .flat_map(|run| {
                (0..run.len as isize).map(move |j| (run.src as isize + j * run.step) as usize)
            })
            .collect()
    };
    let (rows, cols) = (expand_axis(0), expand_axis(1));
    rows.iter()
        .flat_map(|&y| cols.iter().map(move |&x| pixels[y * image[1] + x]))
        .collect()
}

#[test]
fn tiled_toy_network_equals_whole_image_forward_in_2d() {
    let mut rng = Rng(11);
    for case in 0..300 {
        let image = [rng.range(1, 30), rng.range(1, 30)];
        let pixels: Vec<i64> = (0..image[0] * image[1])
            .map(|_| rng.range(0, 100) as i64)
            .collect();
        let halo = rng.range(0, 3);
        let multiple = rng.pick(&[1, 2, 4]);
        let tile_in = [
            2 * halo + multiple * rng.range(1, 4) + 1,
            2 * halo + multiple * rng.range(1, 4),
        ];
        // Whole-image forward of the mirror-padded image.
        let padded_shape = [image[0] + 2 * halo, image[1] + 2 * halo];
        let start = [-(halo as isize), -(halo as isize)];
        let padded = gather_2d(&pixels, image, &start, &padded_shape);
        let (whole, _) = box_sum_2d(&padded, padded_shape, halo, true);
        let valid = case % 2 == 0;
        let plan = if valid {
            TilePlan::valid(&image, &tile_in, halo, multiple)
        } else {
            TilePlan::same(&image, &tile_in, halo, multiple, Blend::Crop)
        }
        .expect("valid case");
        let mut stitched = vec![None; pixels.len()];
        for t in plan.tiles() {
            let input = gather_2d(&pixels, image, &t.read_start, &t.read_shape);
            let (output, out_shape) = box_sum_2d(&input, tile_in, halo, valid);
            assert_eq!(out_shape.as_slice(), plan.output_tile_shape());
            for_each_index(&t.write_shape, |offset| {
                let src = (t.src_start[0] + offset[0]) * out_shape[1] + t.src_start[1] + offset[1];
                let dst = (t.write_start[0] + offset[0]) * image[1] + t.write_start[1] + offset[1];
                assert!(
                    stitched[dst].replace(output[src]).is_none(),
                    "pixel written twice"
                );
            });
        }
        let stitched: Vec<i64> = stitched
            .into_iter()
            .map(|v| v.expect("pixel never written"))
            .collect();
        assert_eq!(
            stitched, whole,
            "image {image:?} tile {tile_in:?} halo {halo} multiple {multiple}"
        );
    }
}
