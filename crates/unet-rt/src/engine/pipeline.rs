//! The three stages of a call, connected by bounded queues: gather (its own
//! thread), infer (the caller's, on the device's forward thread) and stitch
//! (its own thread), so that a few batches are in flight whatever the image
//! size.

use std::mem::MaybeUninit;
use std::sync::mpsc::sync_channel;

use ndarray::{ArrayViewMutD, IxDyn, Slice};

use super::gather::Gatherer;
use super::{
    invalid, Batch, Layout, OutputElement, OutputMode, Progress, ProgressFn, Segmenter, Written,
    QUEUE_DEPTH,
};
use crate::error::{Error, Result};
use crate::geometry::Tile;
use crate::memory;
use crate::pixel::{Pixel, RawKind};

impl Segmenter {
    /// Runs the pipeline over `tiles` (of `layout`'s plan, in plan order),
    /// reducing the network output as `mode` says and handing each batch to
    /// `sink` on the stitching thread.
    pub(super) fn run<T: Pixel, U: OutputElement, S: FnMut(&Written<U>) + Send>(
        &self,
        gatherer: &Gatherer<'_, T>,
        layout: &Layout,
        tiles: &[Tile],
        mode: OutputMode,
        mut sink: S,
    ) -> Result<()> {
        let plan = &layout.plan;
        let total = tiles.len();
        let tile_len = gatherer.tile_len(plan.input_tile_shape());
        let batch_len = tile_len.checked_mul(layout.batch_size).ok_or_else(|| {
            invalid(
                "tile",
                format!(
                    "tiles of {:?} in batches of {} are too large to address",
                    plan.input_tile_shape(),
                    layout.batch_size
                ),
            )
        })?;
        let mut groups = batch_groups(tiles, layout.batch_size, plan.len());
        let raw = self.raw_upload::<T>(gatherer.affine());
        // Batch `seq` of the call: its tiles gathered.
        let gather = |seq: usize, group: Group| -> Result<Batch> {
            // group.n <= batch size, so this cannot overflow (checked above).
            let len = batch_len / layout.batch_size * group.n;
            let chunk = &tiles[group.range.clone()];
            let data = gather_batch(gatherer, chunk, &group, tile_len, len, raw)?;
            Ok(Batch {
                seq,
                tiles: chunk.to_vec(),
                slots: group.slots,
                n: group.n,
                data,
                raw: raw.map(|kind| (kind, gatherer.affine())),
            })
        };
        if groups.len() == 1 {
            // One batch (an image within one pass): its gathering and
            // stitching threads overlapped nothing, and starting them and
            // handing the batch on cost 0.6-1.4 ms a call on 64-256 px
            // images, half a small network's pass.
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            let batch = gather(0, groups.remove(0))?;
            return self.run_one(batch, tiles.len(), plan, mode, sink);
        }
        std::thread::scope(|scope| {
            let (batch_tx, batch_rx) = sync_channel::<Batch>(QUEUE_DEPTH);
            let (out_tx, out_rx) = sync_channel::<Written<U>>(QUEUE_DEPTH);
            let spawn_failed =
                |e: std::io::Error| Error::Internal(format!("cannot start a pipeline thread: {e}"));
            let gathering = std::thread::Builder::new()
                .name("unet-rt-gather".to_owned())
                .spawn_scoped(scope, move || -> Result<()> {
                    for (seq, group) in groups.into_iter().enumerate() {
                        if self.cancelled() {
                            return Ok(());
                        }
                        if batch_tx.send(gather(seq, group)?).is_err() {
                            return Ok(()); // inference stopped
                        }
                    }
                    Ok(())
                })
                .map_err(spawn_failed)?;
            let progress = self.options.progress.clone();
            // On failure, returning drops the queues: the gathering thread's
            // next send fails and it ends, and the scope joins it.
            let stitcher = std::thread::Builder::new()
                .name("unet-rt-stitch".to_owned())
                .spawn_scoped(scope, move || {
                    let mut done = 0;
                    let mut in_order = InOrder::default();
                    let mut user_panic = None;
                    for written in out_rx {
                        in_order.push(written.seq, written, |written| {
                            sink(&written);
                            done += written.tiles.len();
                            if let (Some(report), None) = (&progress, &user_panic) {
                                user_panic = call_progress(report, Progress { done, total });
                            }
                        });
                        if user_panic.is_some() {
                            break; // dropping the queue stops inference
                        }
                    }
                    (done, user_panic)
                })
                .map_err(spawn_failed)?;
            let result = self.infer_all(batch_rx, out_tx, plan, mode);
            let gathered = gathering.join().unwrap_or_else(|_| {
                Err(Error::Internal("the gathering thread panicked".to_owned()))
            });
            let written = stitcher
                .join()
                .map_err(|_| Error::Internal("the stitching thread panicked".to_owned()));
            if let Ok((_, Some(payload))) = written {
                // The caller's own panic, raised where the caller is (as a
                // scoped thread's is), not a library error that drops it.
                std::panic::resume_unwind(payload);
            }
            let written = written.map(|(done, _)| done);
            result?;
            gathered?;
            let written = written?;
            if self.cancelled() || written < total {
                return Err(Error::Cancelled);
            }
            Ok(())
        })
    }
}

impl Segmenter {
    /// [`Self::run`] of `batch`, all `total` tiles of the call, on this
    /// thread: infer, reduce and stitch in turn.
    fn run_one<U: OutputElement, S: FnMut(&Written<U>)>(
        &self,
        batch: Batch,
        total: usize,
        plan: &crate::geometry::TilePlan,
        mode: OutputMode,
        mut sink: S,
    ) -> Result<()> {
        let written = self.infer_written::<U>(&self.model, batch, plan, mode)?;
        sink(&written);
        let done = written.tiles.len();
        if let Some(report) = &self.options.progress {
            if let Some(payload) = call_progress(report, Progress { done, total }) {
                // The caller's own panic, raised where the caller is.
                std::panic::resume_unwind(payload);
            }
        }
        if self.cancelled() || done < total {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

/// Calls the caller's progress callback; its panic, if any, to be raised
/// again on the calling thread once the pipeline has stopped.
fn call_progress(
    report: &ProgressFn,
    progress: Progress,
) -> Option<Box<dyn std::any::Any + Send + 'static>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| report(progress))).err()
}

/// The tiles of `group` (`chunk` of the tile list), `len` values in all, as
/// `f32` network input or, with `raw`, as pixels of that kind.
fn gather_batch<T: Pixel>(
    gatherer: &Gatherer<'_, T>,
    chunk: &[Tile],
    group: &Group,
    tile_len: usize,
    len: usize,
    raw: Option<RawKind>,
) -> Result<tch::Tensor> {
    const WHAT: &str = "a batch of tiles";
    Ok(match raw {
        None => {
            let mut buffer = memory::HostFloats::floats(len, "tile", WHAT)?;
            let gather = |t: &Tile, d: &mut [MaybeUninit<f32>]| gatherer.gather(t, d);
            fill_batch(buffer.as_uninit_mut(), chunk, group, tile_len, gather)?;
            buffer.into_tensor()
        }
        Some(kind) => {
            let mut buffer =
                memory::HostBuffer::<T>::uninit(len, raw_tensor_kind(kind), "tile", WHAT)?;
            let gather = |t: &Tile, d: &mut [MaybeUninit<T>]| gatherer.gather_raw(t, d);
            fill_batch(buffer.as_uninit_mut(), chunk, group, tile_len, gather)?;
            buffer.into_tensor()
        }
    })
}

/// Gathers the tiles of `group` (`chunk` of the tile list) into `data`, one
/// `tile_len` slot each; slots of the forward pass that hold no tile of
/// this call repeat the first one: a sample's result does not depend on the
/// other samples, only the batch's size picks the kernels.
fn fill_batch<E: Copy>(
    data: &mut [MaybeUninit<E>],
    chunk: &[Tile],
    group: &Group,
    tile_len: usize,
    gather: impl Fn(&Tile, &mut [MaybeUninit<E>]) -> Result<()>,
) -> Result<()> {
    for (tile, &slot) in chunk.iter().zip(&group.slots) {
        gather(tile, &mut data[slot * tile_len..(slot + 1) * tile_len])?;
    }
    let first = group.slots[0] * tile_len;
    for slot in (0..group.n).filter(|s| !group.slots.contains(s)) {
        data.copy_within(first..first + tile_len, slot * tile_len);
    }
    Ok(())
}

/// The libtorch kind that carries pixels of `kind` to the device.
fn raw_tensor_kind(kind: RawKind) -> tch::Kind {
    match kind {
        RawKind::U8 => tch::Kind::Uint8,
        // The same bits; made unsigned again on the device.
        RawKind::U16 | RawKind::I16 => tch::Kind::Int16,
        RawKind::F16 => tch::Kind::Half,
    }
}

/// Batches from several devices arrive in any order: each waits here until
/// those before it are released.
struct InOrder<T> {
    waiting: std::collections::BTreeMap<usize, T>,
    next: usize,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        Self {
            waiting: std::collections::BTreeMap::new(),
            next: 0,
        }
    }
}

impl<T> InOrder<T> {
    /// Takes item `seq` (numbered from 0) and releases, in order, every item
    /// whose predecessors have all been released.
    fn push(&mut self, seq: usize, item: T, mut release: impl FnMut(T)) {
        self.waiting.insert(seq, item);
        while let Some(item) = self.waiting.remove(&self.next) {
            release(item);
            self.next += 1;
        }
    }
}

/// Tiles of one forward pass: `range` of the tile list, at `slots` of a
/// batch of `n` samples.
struct Group {
    id: usize,
    range: std::ops::Range<usize>,
    slots: Vec<usize>,
    n: usize,
}

/// Groups `tiles` (in plan order, from a plan of `total` tiles) into the
/// forward passes of the whole plan: batch `id` holds the plan's tiles
/// `id * batch ..`, so a window's tiles run in batches of the same sizes,
/// at the same positions, as in the whole image (kernels are chosen by
/// shape, batch size included). For a whole plan these are its tiles in
/// consecutive batches of `batch`.
fn batch_groups(tiles: &[Tile], batch: usize, total: usize) -> Vec<Group> {
    let batch = batch.max(1);
    let mut groups: Vec<Group> = Vec::new();
    for (i, tile) in tiles.iter().enumerate() {
        let id = tile.index / batch;
        match groups.last_mut() {
            Some(group) if group.id == id => {
                group.range.end = i + 1;
                group.slots.push(tile.index % batch);
            }
            _ => groups.push(Group {
                id,
                range: i..i + 1,
                slots: vec![tile.index % batch],
                n: batch.min(total - id * batch),
            }),
        }
    }
    groups
}

/// Copies the written part of each tile of a batch into the output.
/// `crop` pixels per side were already cut from each tile on the device.
pub(super) fn stitch<U: OutputElement>(
    out: &mut ArrayViewMutD<'_, U>,
    written: &Written<U>,
    tile_shape: &[usize],
    mode: OutputMode,
    crop: usize,
) {
    let tile_len: usize = tile_shape.iter().product();
    let channel_axes = usize::from(!mode.is_spatial());
    for (tile, data) in written
        .tiles
        .iter()
        .zip(written.data.chunks_exact(tile_len))
    {
        let Ok(src) = ndarray::ArrayViewD::from_shape(IxDyn(tile_shape), data) else {
            continue;
        };
        let mut src = src;
        let mut dst = out.view_mut();
        for a in 0..tile.write_shape.len() {
            let ax = ndarray::Axis(a + channel_axes);
            let from = tile.src_start[a] - crop;
            src.slice_axis_inplace(ax, Slice::from(from..from + tile.write_shape[a]));
            let start = tile.write_start[a];
            dst.slice_axis_inplace(ax, Slice::from(start..start + tile.write_shape[a]));
        }
        dst.assign(&src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::TilePlan;
    use crate::window::Window;

    #[test]
    fn batches_are_released_in_order_whatever_order_they_arrive_in() {
        let mut in_order = InOrder::default();
        let mut released = Vec::new();
        for seq in [2, 0, 4, 1, 3, 6, 5] {
            in_order.push(seq, seq * 10, |item| released.push(item));
            let n = released.len();
            assert_eq!(released, (0..n).map(|i| i * 10).collect::<Vec<_>>());
        }
        assert_eq!(released.len(), 7);
        assert!(in_order.waiting.is_empty());
    }

    #[test]
    fn batch_groups_reproduce_the_whole_plans_batches() {
        let plan = TilePlan::valid(&[50, 70], &[24, 24], 4, 4).unwrap(); // 4 x 5 tiles
        let all: Vec<Tile> = plan.tiles().collect();
        let whole = batch_groups(&all, 3, plan.len());
        assert_eq!(
            whole.iter().map(|g| g.n).collect::<Vec<_>>(),
            vec![3, 3, 3, 3, 3, 3, 2]
        );
        assert!(whole
            .iter()
            .all(|g| g.slots == (0..g.n).collect::<Vec<_>>() && g.range.len() == g.n));
        let window = Window {
            image: vec![50, 70],
            origin: vec![0, 0],
            start: vec![16, 16],
            shape: vec![34, 54],
        };
        let tiles = window.tiles(&plan).expect("a case that succeeds");
        let indices: Vec<usize> = tiles.iter().map(|t| t.index).collect();
        assert_eq!(indices, vec![6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19]);
        let groups = batch_groups(&tiles, 3, plan.len());
        let summary: Vec<(usize, Vec<usize>, usize)> = groups
            .iter()
            .map(|g| (g.id, g.slots.clone(), g.n))
            .collect();
        assert_eq!(
            summary,
            vec![
                (2, vec![0, 1, 2], 3),
                (3, vec![0, 2], 3),
                (4, vec![0, 1, 2], 3),
                (5, vec![1, 2], 3),
                (6, vec![0, 1], 2)
            ]
        );
    }
}
