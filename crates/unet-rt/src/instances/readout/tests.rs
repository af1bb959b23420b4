use super::*;
use crate::instances::components::c_strides;
use crate::instances::connected_components;
use ndarray::{array, Array2, Array3, Dimension};

/// A small deterministic generator (no dependency for tests).
fn random_classes(shape: &[usize], seed: u64, classes: u64) -> ArrayD<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % classes) as u8
    })
}

fn boundary_read_out(grow: u32) -> ReadOut {
    ReadOut {
        seed_classes: vec![1],
        grow_classes: vec![2],
        grow,
        ..ReadOut::default()
    }
}

/// The read-out written the plain way, pixel by pixel over multi-indices:
/// the definition the fast one must reproduce.
fn reference(read_out: &ReadOut, classes: &ArrayD<u8>) -> ArrayD<u32> {
    let shape = classes.shape().to_vec();
    let index: Vec<Vec<usize>> = classes
        .indexed_iter()
        .map(|(i, _)| i.slice().to_vec())
        .collect();
    let neighbours = |p: &[usize]| {
        let mut out = Vec::new();
        for axis in 0..p.len() {
            for delta in [-1i64, 1] {
                let v = p[axis] as i64 + delta;
                if v >= 0 && v < shape[axis] as i64 {
                    let mut q = p.to_vec();
                    q[axis] = v as usize;
                    out.push(q);
                }
            }
        }
        out
    };
    let kind = |c: u8| read_out.kind(u32::from(c));
    let flood = |labels: &mut ArrayD<u32>,
                 member: &dyn Fn(&[usize], &ArrayD<u32>) -> bool,
                 next: &mut u32| {
        for p in &index {
            if labels[p.as_slice()] != 0 || !member(p, labels) {
                continue;
            }
            *next += 1;
            let mut stack: Vec<Vec<usize>> = vec![p.clone()];
            let snapshot = labels.clone();
            labels[p.as_slice()] = *next;
            while let Some(q) = stack.pop() {
                for r in neighbours(&q) {
                    if labels[r.as_slice()] == 0 && member(&r, &snapshot) {
                        labels[r.as_slice()] = *next;
                        stack.push(r);
                    }
                }
            }
        }
    };
    let mut labels = ArrayD::<u32>::zeros(IxDyn(&shape));
    let mut next = 0;
    flood(&mut labels, &|p, _| kind(classes[p]) == SEED, &mut next);
    for _ in 0..read_out.grow {
        let before = labels.clone();
        for p in &index {
            if before[p.as_slice()] != 0 || kind(classes[p.as_slice()]) != GROW {
                continue;
            }
            // The first neighbour, in the fixed order, labelled before.
            let best = neighbours(p)
                .iter()
                .map(|q| before[q.as_slice()])
                .find(|&l| l != 0);
            if let Some(l) = best {
                labels[p.as_slice()] = l;
            }
        }
    }
    flood(
        &mut labels,
        &|p, l| kind(classes[p]) == GROW && l[p] == 0,
        &mut next,
    );
    if read_out.min_size > 1 {
        let mut sizes = vec![0u64; next as usize + 1];
        labels.iter().for_each(|&l| sizes[l as usize] += 1);
        labels.mapv_inplace(|l| {
            if sizes[l as usize] < read_out.min_size {
                0
            } else {
                l
            }
        });
    }
    if read_out.fill_holes {
        // Background reachable from the faces stays; every other region is
        // filled when exactly one object borders it.
        let mut regions = ArrayD::<u32>::zeros(IxDyn(&shape));
        let mut count = 0;
        flood(&mut regions, &|p, _| labels[p] == 0, &mut count);
        for r in 1..=count {
            let members: Vec<&Vec<usize>> = index
                .iter()
                .filter(|p| regions[p.as_slice()] == r)
                .collect();
            let open = members
                .iter()
                .any(|p| p.iter().zip(&shape).any(|(&c, &n)| c == 0 || c + 1 == n));
            let mut owners: Vec<u32> = members
                .iter()
                .flat_map(|p| neighbours(p))
                .map(|q| labels[q.as_slice()])
                .filter(|&l| l != 0)
                .collect();
            owners.sort_unstable();
            owners.dedup();
            if !open && owners.len() == 1 {
                for p in members {
                    labels[p.as_slice()] = owners[0];
                }
            }
        }
    }
    let mut number = std::collections::HashMap::new();
    labels.mapv(|l| {
        if l == 0 {
            0
        } else {
            let n = number.len() as u32 + 1;
            *number.entry(l).or_insert(n)
        }
    })
}

#[test]
fn default_is_the_components_of_the_non_background() {
    for (seed, shape) in [(1u64, vec![31usize, 27]), (2, vec![7, 9, 11])] {
        let classes = random_classes(&shape, seed, 4);
        let (got, n) = ReadOut::default().apply(classes.view()).unwrap();
        let (want, m) = connected_components(classes.view()).unwrap();
        assert_eq!((got, n), (want, m));
    }
}

#[test]
fn touching_interiors_stay_apart_and_claim_their_boundary() {
    let classes = array![
        [0u8, 2, 2, 2, 2, 2, 2, 0],
        [0, 2, 1, 1, 2, 1, 2, 0],
        [0, 2, 1, 1, 2, 1, 2, 0],
        [0, 2, 2, 2, 2, 2, 2, 0]
    ];
    let (ids, n) = boundary_read_out(2)
        .apply(classes.view().into_dyn())
        .unwrap();
    assert_eq!(n, 2);
    // The boundary column between the seeds is one step from both: its
    // pixels join their first neighbour in the order -y, +y, -x, +x, the
    // seed on the left.
    let want = array![
        [0u32, 1, 1, 1, 1, 2, 2, 0],
        [0, 1, 1, 1, 1, 2, 2, 0],
        [0, 1, 1, 1, 1, 2, 2, 0],
        [0, 1, 1, 1, 1, 2, 2, 0]
    ];
    assert_eq!(ids, want.into_dyn());
    // Without a boundary class the two nuclei would be one component.
    let merged = ReadOut::default()
        .apply(classes.view().into_dyn())
        .unwrap()
        .1;
    assert_eq!(merged, 1);
}

#[test]
fn growth_stops_after_its_steps_and_the_rest_is_its_own_object() {
    let classes = array![[1u8, 2, 2, 2, 2, 0, 2]];
    let (ids, n) = boundary_read_out(2)
        .apply(classes.view().into_dyn())
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(ids, array![[1u32, 1, 1, 2, 2, 0, 3]].into_dyn());
    // A min_size removes those slivers and renumbers.
    let read_out = ReadOut {
        min_size: 3,
        ..boundary_read_out(2)
    };
    let (ids, n) = read_out.apply(classes.view().into_dyn()).unwrap();
    assert_eq!(n, 1);
    assert_eq!(ids, array![[1u32, 1, 1, 0, 0, 0, 0]].into_dyn());
}

#[test]
fn holes_enclosed_by_one_object_are_filled_and_others_are_not() {
    let ring = array![
        [0u8, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 1, 0],
        [0, 1, 0, 1, 0, 1, 0],
        [0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0]
    ];
    let read_out = ReadOut {
        fill_holes: true,
        ..ReadOut::default()
    };
    let (ids, n) = read_out.apply(ring.view().into_dyn()).unwrap();
    assert_eq!(n, 2);
    assert_eq!(ids[[2, 2]], 1);
    // A hole that reaches the image's edge is not a hole.
    let open = array![[1u8, 0, 1], [1, 0, 1], [1, 1, 1]];
    let (ids, _) = read_out.apply(open.view().into_dyn()).unwrap();
    assert_eq!(ids[[1, 1]], 0);
    // A gap between two objects is not a hole of either.
    let between = array![
        [0u8, 0, 0, 0, 0],
        [0, 1, 2, 2, 0],
        [0, 1, 0, 2, 0],
        [0, 1, 1, 2, 0],
        [0, 0, 0, 0, 0]
    ];
    let read_out = ReadOut {
        seed_classes: vec![1, 2],
        fill_holes: true,
        ..ReadOut::default()
    };
    let (ids, n) = read_out.apply(between.view().into_dyn()).unwrap();
    assert_eq!(
        n, 1,
        "classes 1 and 2 touch: one object, and its hole is filled"
    );
    assert_eq!(ids[[2, 2]], 1);
    let two = ReadOut {
        seed_classes: vec![1],
        grow_classes: vec![2],
        fill_holes: true,
        ..ReadOut::default()
    };
    let (ids, n) = two.apply(between.view().into_dyn()).unwrap();
    assert_eq!(n, 2);
    assert_eq!(ids[[2, 2]], 0);
}

#[test]
fn equals_the_plain_definition_on_random_maps() {
    let read_outs = [
        boundary_read_out(1),
        boundary_read_out(3),
        ReadOut {
            fill_holes: true,
            min_size: 3,
            ..boundary_read_out(2)
        },
        ReadOut {
            fill_holes: true,
            ..ReadOut::default()
        },
        ReadOut {
            seed_classes: vec![2],
            grow_classes: vec![1, 3],
            grow: 2,
            fill_holes: true,
            min_size: 2,
        },
    ];
    for (seed, shape) in [
        (3u64, vec![23usize, 19]),
        (4, vec![1, 40]),
        (5, vec![6, 7, 8]),
    ] {
        for classes_count in [3u64, 4] {
            let classes = random_classes(&shape, seed * 10 + classes_count, classes_count);
            for read_out in &read_outs {
                let (got, n) = read_out.apply(classes.view()).unwrap();
                let want = reference(read_out, &classes);
                assert_eq!(got, want, "{read_out:?} on {shape:?}");
                assert_eq!(n as u32, want.iter().copied().max().unwrap_or(0));
            }
        }
    }
}

#[test]
fn any_memory_layout() {
    let classes: Array2<u8> = random_classes(&[17, 29], 9, 3)
        .into_dimensionality()
        .unwrap();
    let read_out = ReadOut {
        fill_holes: true,
        min_size: 2,
        ..boundary_read_out(2)
    };
    let want = read_out.apply(classes.view().into_dyn()).unwrap();
    let fortran = classes.t().as_standard_layout().to_owned();
    let got = read_out.apply(fortran.t().into_dyn()).unwrap();
    assert_eq!(got, want);
    let empty = Array3::<u16>::zeros((0, 3, 3));
    assert_eq!(read_out.apply(empty.view().into_dyn()).unwrap().1, 0);
}

#[test]
fn checks_name_the_field() {
    assert!(boundary_read_out(2).check(3).is_ok());
    let err = boundary_read_out(2).check(2).unwrap_err();
    assert!(err.contains("grow_classes") && err.contains('2'), "{err}");
    let both = ReadOut {
        grow_classes: vec![1],
        ..boundary_read_out(2)
    };
    assert!(both.check(3).unwrap_err().contains("both"));
    let implicit = ReadOut {
        grow_classes: vec![2],
        grow: 1,
        ..ReadOut::default()
    };
    // Every class but 0 is a seed where none is named: said so, not
    // "both a seed class and a grow class" of a class never named a seed.
    assert!(implicit
        .check(3)
        .unwrap_err()
        .contains("seed_classes is empty"));
    let background = ReadOut {
        seed_classes: vec![0],
        ..ReadOut::default()
    };
    assert!(background
        .check(3)
        .unwrap_err()
        .contains("class 0, the background"));
    let far = boundary_read_out(MAX_GROW + 1);
    assert!(far.check(3).unwrap_err().contains("instances.grow"));
    // A read-out built by hand is checked where it is applied, too, less
    // its growth (see the next test).
    let classes = random_classes(&[8, 8], 1, 3);
    for bad in [both] {
        match bad.apply(classes.view()) {
            Err(Error::InvalidArgument { argument, .. }) => assert_eq!(argument, "read_out"),
            other => panic!("{other:?}"),
        }
    }
}

/// Growth beyond what a block-wise read-out takes is applied whole: it is
/// what `object_size` makes of a model's growth for large objects (it was
/// refused as "instances.grow is 85", naming a read_out nobody passed).
#[test]
fn growth_beyond_the_block_bound_applies_whole() {
    let steps = MAX_GROW as usize * 3;
    // A seed at the left of a boundary band 3 * MAX_GROW + 10 wide.
    let mut classes = Array2::<u8>::from_elem((3, steps + 11), 2);
    classes.column_mut(0).fill(1);
    let far = boundary_read_out(steps as u32);
    let (ids, count) = far.apply(classes.view().into_dyn()).unwrap();
    // The seed claims `steps` pixels of the band; the rest is one object.
    assert_eq!(count, 2);
    assert!(ids.iter().take(steps + 1).all(|&id| id == 1), "{ids:?}");
    assert!(
        ids.iter().skip(steps + 1).take(10).all(|&id| id == 2),
        "{ids:?}"
    );
}

/// Joins the objects of blocks across their faces the way a block-wise
/// front end does: ids unique in the whole map (one plus the raster index
/// of each block object's first pixel), joined where either side's face
/// says so, each object named by its smallest id, numbered in that order.
fn join_blocks(read_out: &ReadOut, classes: &ArrayD<u8>, cuts: &[Vec<usize>]) -> ArrayD<u32> {
    let shape = classes.shape().to_vec();
    let strides = c_strides(&shape);
    let mut ids = ArrayD::<u64>::zeros(IxDyn(&shape));
    // (pixel, axis, last face?, flag)
    let mut flags: Vec<(Vec<usize>, usize, bool, bool)> = Vec::new();
    let block_grid: Vec<usize> = cuts.iter().map(Vec::len).collect();
    let margin = read_out.context();
    for block in ndarray::indices(IxDyn(&block_grid)) {
        let lo: Vec<usize> = (0..shape.len()).map(|a| cuts[a][block[a]]).collect();
        let hi: Vec<usize> = (0..shape.len())
            .map(|a| cuts[a].get(block[a] + 1).copied().unwrap_or(shape[a]))
            .collect();
        let context: Vec<(usize, usize)> = (0..shape.len())
            .map(|a| (lo[a].min(margin), (shape[a] - hi[a]).min(margin)))
            .collect();
        let view = classes.slice_each_axis(|ax| {
            let a = ax.axis.index();
            ndarray::Slice::from(lo[a] - context[a].0..hi[a] + context[a].1)
        });
        let found = read_out.block_objects(view, &context).unwrap();
        let mut first = vec![0u64; found.count as usize + 1];
        for (index, &l) in found.labels.indexed_iter() {
            if l == 0 {
                continue;
            }
            let global: Vec<usize> = index.slice().iter().zip(&lo).map(|(i, o)| i + o).collect();
            if first[l as usize] == 0 {
                let flat: usize = global.iter().zip(&strides).map(|(c, s)| c * s).sum();
                first[l as usize] = flat as u64 + 1;
            }
            ids[global.as_slice()] = first[l as usize];
        }
        for (axis, (low, high)) in found.faces.iter().enumerate() {
            for (last, face) in [(false, low), (true, high)] {
                for (index, &flag) in face.indexed_iter() {
                    let mut pixel: Vec<usize> = index.slice().to_vec();
                    pixel.insert(axis, if last { hi[axis] - 1 - lo[axis] } else { 0 });
                    let global: Vec<usize> = pixel.iter().zip(&lo).map(|(i, o)| i + o).collect();
                    flags.push((global, axis, last, flag));
                }
            }
        }
    }
    // Union-find over the ids, the smallest id as the root.
    let mut parent: std::collections::HashMap<u64, u64> =
        ids.iter().filter(|&&i| i > 0).map(|&i| (i, i)).collect();
    fn root(parent: &std::collections::HashMap<u64, u64>, mut i: u64) -> u64 {
        while parent[&i] != i {
            i = parent[&i];
        }
        i
    }
    for (pixel, axis, last, flag) in flags {
        if !flag {
            continue;
        }
        let mut other = pixel.clone();
        if last {
            other[axis] += 1;
        } else {
            other[axis] -= 1;
        }
        let (a, b) = (ids[pixel.as_slice()], ids[other.as_slice()]);
        assert!(a > 0 && b > 0, "a face flag between objects");
        let (ra, rb) = (root(&parent, a), root(&parent, b));
        parent.insert(ra.max(rb), ra.min(rb));
    }
    let mut roots: Vec<u64> = ids
        .iter()
        .filter(|&&i| i > 0)
        .map(|&i| root(&parent, i))
        .collect();
    roots.sort_unstable();
    roots.dedup();
    ids.mapv(|i| {
        if i == 0 {
            0
        } else {
            roots.binary_search(&root(&parent, i)).unwrap() as u32 + 1
        }
    })
}

#[test]
fn blocks_joined_across_faces_equal_the_whole_map() {
    let read_outs = [
        ReadOut::default(),
        boundary_read_out(1),
        boundary_read_out(3),
        ReadOut {
            seed_classes: vec![2],
            grow_classes: vec![1, 3],
            grow: 2,
            ..ReadOut::default()
        },
        ReadOut {
            seed_classes: vec![1],
            ..ReadOut::default()
        },
    ];
    let cases: [(u64, Vec<usize>, Vec<Vec<usize>>); 3] = [
        (11, vec![29, 31], vec![vec![0, 7, 8, 20], vec![0, 13, 14]]),
        (12, vec![40, 9], vec![vec![0, 1, 2, 3, 30], vec![0, 4]]),
        (
            13,
            vec![9, 10, 11],
            vec![vec![0, 4], vec![0, 5, 6], vec![0, 3, 7]],
        ),
    ];
    for (seed, shape, cuts) in cases {
        for classes_count in [3u64, 4] {
            let classes = random_classes(&shape, seed * 7 + classes_count, classes_count);
            for read_out in &read_outs {
                let (want, _) = read_out.apply(classes.view()).unwrap();
                let got = join_blocks(read_out, &classes, &cuts);
                assert_eq!(got, want, "{read_out:?} on {shape:?} cut at {cuts:?}");
            }
        }
    }
}

#[test]
fn block_context_is_checked() {
    let classes = random_classes(&[5, 5], 1, 3);
    let err = boundary_read_out(1)
        .block_objects(classes.view(), &[(3, 3), (0, 0)])
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    let err = boundary_read_out(1)
        .block_objects(classes.view(), &[(0, 0)])
        .unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}

#[test]
fn a_read_out_that_does_not_parse_names_its_field() {
    let message = |text: &str| ReadOut::from_json(text).unwrap_err().to_string();
    let m = message(r#"{"grow": 5, "min_size": -3}"#);
    assert!(
        m.contains("instances.min_size = -3: invalid value: integer `-3`"),
        "{m}"
    );
    assert!(!m.contains("line 1"), "{m}");
    let m = message(r#"{"seed_classes": [1], "fill_hole": true}"#);
    assert!(
        m.contains("instances.fill_hole = true: unknown field `fill_hole`"),
        "{m}"
    );
    let m = message("[1, 2]");
    assert!(m.contains("is not a read-out (a JSON object of"), "{m}");
    let read_out =
        ReadOut::from_json(r#"{"seed_classes": [1], "grow_classes": [2], "grow": 5}"#).unwrap();
    assert_eq!(read_out.grow, 5);
}

#[test]
fn a_set_cancel_flag_stops_every_labelling_and_a_clear_one_changes_nothing() {
    use std::sync::atomic::AtomicBool;
    let classes = random_classes(&[40, 70], 3, 3);
    let view = classes.view();
    let holes = ReadOut {
        min_size: 2,
        fill_holes: true,
        ..boundary_read_out(3)
    };
    let set = AtomicBool::new(true);
    let clear = AtomicBool::new(false);
    for read_out in [&holes, &ReadOut::default()] {
        assert!(matches!(
            read_out.apply_cancellable(view.clone(), Some(&set)),
            Err(Error::Cancelled)
        ));
        assert_eq!(
            read_out
                .apply_cancellable(view.clone(), Some(&clear))
                .unwrap(),
            read_out.apply(view.clone()).unwrap()
        );
        assert!(matches!(
            read_out.block_objects_cancellable(view.clone(), &[(0, 0), (0, 0)], Some(&set)),
            Err(Error::Cancelled)
        ));
    }
    assert!(matches!(
        crate::instances::connected_components_cancellable(view.clone(), Some(&set)),
        Err(Error::Cancelled)
    ));
    // Stopped within the labelling, not only between its steps: the flag set
    // by the growth of a read-out whose kinds step has passed.
    let late = AtomicBool::new(false);
    let stop = Stop(Some(&late));
    let kinds = holes.kinds(&view, stop).unwrap();
    let grid = Grid::new(view.shape());
    let links = Links::new(&holes, &grid, &kinds, stop).unwrap();
    late.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        ReadOut::graph(&links, &[(0, 0), (0, 0)], stop),
        Err(Error::Cancelled)
    ));
}
