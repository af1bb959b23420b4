//! `--format zarr`: the input image and its segmentation as one OME-Zarr
//! (NGFF 0.5, zarr v3) that napari, ome-zarr and other NGFF readers open as
//! an image with a labels layer:
//!
//! ```text
//! <stem>.zarr/                 the image: multiscales, axes ([t,] c, [z,] y, x)
//!     0/                       the input pixels
//!     labels/                  ome.labels = [<kind>]
//!         <kind>/              image-label (a colour and name per class)
//!             0/               the result, axes as the image's but c
//! ```
//!
//! Chunks are at most 1024 pixels per spatial axis, uncompressed
//! (little-endian `bytes` codec). The store is written in a hidden folder
//! renamed into place when complete, like every other result
//! ([`atomic::write_folder_atomically`]).

use std::fs;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, IxDyn, Slice};
use serde_json::{json, Value};
use unet_rt::class_colours::class_colour;
use unet_rt::geometry::unravel_index;

use crate::atomic;
use crate::errors::FileError;
use crate::interrupt;
use crate::write::Output;

/// Largest chunk side along a spatial axis.
const CHUNK: usize = 1024;

/// An array element as zarr stores it.
pub(crate) trait ZarrElement: Copy {
    /// The zarr v3 data type name.
    const DATA_TYPE: &'static str;
    /// The fill value.
    const ZERO: Self;
    /// Appends the value's little-endian bytes.
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! zarr_element {
    ($($t:ty => $name:literal),*) => {$(
        impl ZarrElement for $t {
            const DATA_TYPE: &'static str = $name;
            const ZERO: Self = 0 as $t;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
zarr_element!(u8 => "uint8", u16 => "uint16", i16 => "int16", u32 => "uint32", f32 => "float32", f64 => "float64");

impl ZarrElement for half::f16 {
    const DATA_TYPE: &'static str = "float16";
    const ZERO: Self = half::f16::ZERO;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// What the label image says of its values.
pub(crate) struct LabelInfo<'a> {
    /// The result kind, the label image's name: `labels` or `instances`.
    pub kind: &'a str,
    /// Class names, for `labels` (colours and properties per class).
    pub classes: Option<&'a [String]>,
    /// The names of the leading page axes of stacks, in the arrays' order:
    /// `z` (space) or `t` (time), or both where a hyperstack's time points
    /// and slices were segmented as pages.
    pub pages: &'a str,
    /// Resolution levels (1: only the full resolution); level k keeps every
    /// 2^k-th pixel along the model's spatial axes, for image and labels.
    pub levels: usize,
    /// A pixel's size in micrometres along `z`, `y` and `x`, where the
    /// input says it: the scale of level 0, and the axes' unit.
    pub micrometres: [Option<f64>; 3],
    /// The input's name as results record it ([`crate::write::source_name`]).
    pub source: &'a str,
}

/// Writes `path` (a `.zarr` folder): the image `(pages..., channels,
/// spatial...)` and `labels` (`([pages...,] spatial...)`), the page axes
/// those `info.pages` names. `stacked` keeps them (otherwise the image has
/// one page axis of length 1, left out, and the labels none).
pub(crate) fn write_ome_zarr<T: ZarrElement>(
    path: &Path,
    image: &ArrayViewD<'_, T>,
    stacked: bool,
    labels: &Output,
    info: &LabelInfo<'_>,
) -> Result<(), FileError> {
    atomic::write_folder_atomically(path, |tmp| write_into(tmp, image, stacked, labels, info))
}

fn write_into<T: ZarrElement>(
    root: &Path,
    image: &ArrayViewD<'_, T>,
    stacked: bool,
    labels: &Output,
    info: &LabelInfo<'_>,
) -> Result<(), String> {
    let page_count = if stacked {
        info.pages.chars().count()
    } else {
        1
    };
    let spatial = image.ndim().saturating_sub(page_count + 1);
    let Some(space) = (2..=3).contains(&spatial).then(|| &"zyx"[3 - spatial..]) else {
        return Err(format!(
            "internal error: an image of shape {:?} for page axes {:?}",
            image.shape(),
            info.pages
        ));
    };
    // The image, in NGFF's axis order t, c, z, y, x: the page axes and the
    // channels ordered so ((t, c, spatial...) for time points, (c, z, y, x)
    // for the planes of a stack, (t, c, z, y, x) for both), (c, spatial...)
    // without pages.
    let pages: Vec<char> = if stacked {
        info.pages.chars().collect()
    } else {
        Vec::new()
    };
    let image = if stacked {
        image.view()
    } else {
        image.index_axis(ndarray::Axis(0), 0)
    };
    let leading: Vec<char> = pages.iter().copied().chain(std::iter::once('c')).collect();
    let rank = |l: char| "tcz".find(l).unwrap_or(3);
    let mut order: Vec<usize> = (0..leading.len()).collect();
    order.sort_by_key(|&i| rank(leading[i]));
    let image_axes: Vec<Value> = order
        .iter()
        .map(|&i| match leading[i] {
            'c' => json!({"name": "c", "type": "channel"}),
            l => axis(l),
        })
        .chain(space.chars().map(axis))
        .collect();
    let full_order: Vec<usize> = order
        .iter()
        .copied()
        .chain(leading.len()..image.ndim())
        .collect();
    let image_view = image.permuted_axes(IxDyn(&full_order));
    let image_axes = with_units(image_axes, info.micrometres);
    let base = base_scale(&image_axes, info.micrometres);
    let label_axes: Vec<Value> = image_axes
        .iter()
        .filter(|a| a["name"] != "c")
        .cloned()
        .collect();
    // The model's spatial axes are halved by each level; a stack's z is not.
    let halved = |axes: &[Value]| -> Vec<bool> {
        let n = axes.len();
        (0..n).map(|i| i + spatial >= n).collect()
    };
    let levels = info.levels.max(1);
    let image_halved = halved(&image_axes);
    write_group(
        root,
        json!({
            "ome": {"version": "0.5", "multiscales": [multiscales("image", &image_axes, &image_halved, levels, &base)]},
            // What makes the store a result of this tool (see `atomic::result_store`).
            crate::atomic::STORE_MARK: {"output": info.kind, "levels": levels, "source": info.source},
        }),
    )?;
    write_levels(root, &image_view, &image_axes, &image_halved, levels)?;
    let labels_root = root.join("labels");
    write_group(
        &labels_root,
        json!({"ome": {"version": "0.5", "labels": [info.kind]}}),
    )?;
    let label_root = labels_root.join(info.kind);
    let label_halved = halved(&label_axes);
    let mut image_label = json!({"version": "0.5", "source": {"image": "../../"}});
    if let Some(classes) = info.classes {
        image_label["colors"] = Value::Array(
            (0..classes.len())
                .map(|i| json!({"label-value": i, "rgba": class_colour(i as u64)}))
                .collect(),
        );
        image_label["properties"] = Value::Array(
            classes
                .iter()
                .enumerate()
                .map(|(i, name)| json!({"label-value": i, "class": name}))
                .collect(),
        );
    }
    write_group(
        &label_root,
        json!({"ome": {
            "version": "0.5",
            "multiscales": [multiscales(info.kind, &label_axes, &label_halved, levels, &base_scale(&label_axes, info.micrometres))],
            "image-label": image_label,
        }}),
    )?;
    match labels {
        Output::U8(a) => write_levels(&label_root, &a.view(), &label_axes, &label_halved, levels),
        Output::U16(a) => write_levels(&label_root, &a.view(), &label_axes, &label_halved, levels),
        Output::U32(a) => write_levels(&label_root, &a.view(), &label_axes, &label_halved, levels),
        Output::F32(_) => Err("OME-Zarr label images hold integer labels or instances".to_owned()),
    }
}

/// Refuses `levels` beyond the last distinct level of an image of spatial
/// `sides` (checked before the image is segmented): levels beyond one
/// pixel along every halved axis repeat the last, and a 100-pixel image
/// asked for 10 got three identical 1x1 levels.
pub(crate) fn check_levels(levels: u64, sides: &[usize]) -> Result<(), String> {
    let distinct = distinct_levels(sides);
    if levels <= distinct as u64 {
        return Ok(());
    }
    let shown: Vec<String> = sides.iter().map(usize::to_string).collect();
    Err(format!(
        "--levels {levels}: an image of {} pixels has {distinct} distinct resolution level(s) (the last one \
         pixel wide); ask for at most {distinct}",
        shown.join("x")
    ))
}

/// How many resolution levels of `sides` differ: level k keeps every 2^k-th
/// pixel, `ceil(n / 2^k)` of `n`, and the last is one pixel along each side.
fn distinct_levels(sides: &[usize]) -> usize {
    let widest = sides.iter().copied().max().unwrap_or(1).max(1);
    1 + (usize::BITS - (widest - 1).leading_zeros()) as usize
}

fn axis(name: char) -> Value {
    let kind = if name == 't' { "time" } else { "space" };
    json!({"name": name.to_string(), "type": kind})
}

/// Levels `0..levels` of `array` as arrays `0`, `1`, ... in `dir`: level k
/// keeps pixels 0, 2^k, 2 * 2^k, ... along the `halved` axes.
fn write_levels<T: ZarrElement>(
    dir: &Path,
    array: &ArrayViewD<'_, T>,
    axes: &[Value],
    halved: &[bool],
    levels: usize,
) -> Result<(), String> {
    for level in 0..levels {
        let step = 1isize << level;
        let view = array.slice_each_axis(|ax| {
            if halved[ax.axis.index()] {
                Slice::new(0, None, step)
            } else {
                Slice::from(..)
            }
        });
        write_array(&dir.join(level.to_string()), &view, axes)?;
    }
    Ok(())
}

/// The spatial axes among `axes` whose pixel size `micrometres` (`z`, `y`,
/// `x`) gives, with NGFF's unit; the input's own size, which viewers
/// scale image and labels by (an anisotropic volume showed squashed).
fn with_units(axes: Vec<Value>, micrometres: [Option<f64>; 3]) -> Vec<Value> {
    axes.into_iter()
        .map(|mut axis| {
            if size_of(&axis, micrometres).is_some() {
                axis["unit"] = Value::from("micrometer");
            }
            axis
        })
        .collect()
}

/// The pixel size along `axis`, where `micrometres` says it.
fn size_of(axis: &Value, micrometres: [Option<f64>; 3]) -> Option<f64> {
    let at = ["z", "y", "x"].iter().position(|&n| axis["name"] == n)?;
    micrometres[at]
}

/// Level 0's scale along each of `axes`: the pixel size where known, else 1.
fn base_scale(axes: &[Value], micrometres: [Option<f64>; 3]) -> Vec<f64> {
    axes.iter()
        .map(|a| size_of(a, micrometres).unwrap_or(1.0))
        .collect()
}

fn multiscales(name: &str, axes: &[Value], halved: &[bool], levels: usize, base: &[f64]) -> Value {
    let datasets: Vec<Value> = (0..levels)
        .map(|level| {
            let factor = f64::from(1u32 << level);
            let scale: Vec<f64> = halved
                .iter()
                .zip(base)
                .map(|(&h, &b)| if h { b * factor } else { b })
                .collect();
            json!({"path": level.to_string(), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        })
        .collect();
    json!({"name": name, "axes": axes, "datasets": datasets})
}

fn write_group(dir: &Path, attributes: Value) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let meta = json!({"zarr_format": 3, "node_type": "group", "attributes": attributes});
    write_json(&dir.join("zarr.json"), &meta)
}

fn write_json(path: &Path, value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The chunk shape of an array: 1 along leading (page, channel) axes, at
/// most [`CHUNK`] along the last (spatial) ones. Channels stay whole.
fn chunk_shape(shape: &[usize], axes: &[Value]) -> Vec<usize> {
    shape
        .iter()
        .zip(axes)
        .map(|(&n, a)| match a["type"].as_str() {
            Some("space") => n.clamp(1, CHUNK),
            Some("channel") => n.max(1),
            _ => 1,
        })
        .collect()
}

fn write_array<T: ZarrElement>(
    dir: &Path,
    array: &ArrayViewD<'_, T>,
    axes: &[Value],
) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let shape = array.shape().to_vec();
    let chunks = chunk_shape(&shape, axes);
    let names: Vec<&Value> = axes.iter().map(|a| &a["name"]).collect();
    let meta = json!({
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": T::DATA_TYPE,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "dimension_names": names,
        "attributes": {},
    });
    write_json(&dir.join("zarr.json"), &meta)?;
    let grid: Vec<usize> = shape
        .iter()
        .zip(&chunks)
        .map(|(&n, &c)| n.div_ceil(c))
        .collect();
    let count: usize = grid.iter().product();
    let chunk_len: usize = chunks.iter().product();
    let mut bytes = Vec::new();
    for flat in 0..count {
        if interrupt::requested() {
            return Err("interrupted".to_owned());
        }
        let index = unravel_index(flat, &grid);
        let start: Vec<usize> = index.iter().zip(&chunks).map(|(&i, &c)| i * c).collect();
        let part = array.slice_each_axis(|ax| {
            let a = ax.axis.index();
            Slice::from(start[a]..(start[a] + chunks[a]).min(shape[a]))
        });
        bytes.clear();
        bytes
            .try_reserve(chunk_len * std::mem::size_of::<T>())
            .map_err(|e| format!("cannot allocate a chunk: {e}"))?;
        if part.shape() == chunks.as_slice() {
            part.iter().for_each(|&v| v.put(&mut bytes));
        } else {
            // Edge chunks are stored whole, padded with the fill value.
            let mut whole = ArrayD::from_elem(IxDyn(&chunks), T::ZERO);
            whole
                .slice_each_axis_mut(|ax| Slice::from(0..part.shape()[ax.axis.index()]))
                .assign(&part);
            whole.iter().for_each(|&v| v.put(&mut bytes));
        }
        let mut file = dir.join("c");
        for i in &index {
            file.push(i.to_string());
        }
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::write(&file, &bytes).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_levels_end_at_one_pixel() {
        for (sides, levels) in [
            (&[1][..], 1),
            (&[2], 2),
            (&[3, 1], 3),
            (&[4], 3),
            (&[5], 4),
            (&[100, 60], 8),
            (&[128], 8),
            (&[129], 9),
            (&[0], 1),
        ] {
            assert_eq!(distinct_levels(sides), levels, "{sides:?}");
            let widest = sides.iter().copied().max().unwrap().max(1);
            // The last distinct level is one pixel, the one before is not.
            assert_eq!(widest.div_ceil(1 << (levels - 1)), 1, "{sides:?}");
            if levels > 1 {
                assert!(widest.div_ceil(1 << (levels - 2)) > 1, "{sides:?}");
            }
        }
    }

    #[test]
    fn chunks_cap_spatial_axes_and_keep_channels_whole() {
        let axes = vec![
            axis('t'),
            json!({"name": "c", "type": "channel"}),
            axis('y'),
            axis('x'),
        ];
        assert_eq!(chunk_shape(&[5, 3, 2000, 70], &axes), vec![1, 3, 1024, 70]);
    }
}
