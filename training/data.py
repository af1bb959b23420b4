"""Training data: image/label pairs, splits, and random valid-size crops.

Pairs come from two folders (TIFF or PNG, matched by file name without its
extension), from arrays, or from the bundled sample (``data/dsb2018-nuclei``).
Labels are either instance labels (0 background, one id per object: class
targets are "object" with the paper's separation borders between touching
objects, and the ids feed the weight map) or class masks (0..K-1).

A split is by file (some files for validation or testing) or by region
(row ranges of each image; for the bundled sample rows 0..383 are for
training and validation and rows 384..511 are held out).

:class:`CropDataset` serves random crops: an input crop of ``crop`` pixels
per side and the targets and weights of its centre, ``crop - 2 * margin``
(``margin`` = the halo for valid-padded networks, 0 for same-padded ones).
Crops may extend past the image, which is mirrored (as the runtime does), so
the output part of a crop covers the image uniformly, edges included.

>>> s = load_sample_data()
>>> s.image.shape, s.labels.shape, s.instances
((1, 512, 512), (512, 512), True)
>>> split = split_rows([s], {"train": [0, 320], "val": [320, 384], "test": [384, 512]})
>>> split["test"][0].labels.shape
(128, 512)
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import Augmenter, sample_patch
from .files import IMAGE_SUFFIXES, read_image, read_labels
from .instance_labels import as_instances
from .loss import boundary_targets, class_weights, instance_targets, weight_map

__all__ = [
    "percentile_affine",
    "SAMPLE_DATA_DIR",
    "IMAGE_SUFFIXES",
    "Sample",
    "read_image",
    "read_labels",
    "as_channels_first",
    "normalize",
    "find_pairs",
    "load_folder",
    "load_arrays",
    "load_sample_data",
    "split_rows",
    "split_files",
    "CropDataset",
]

SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "dsb2018-nuclei"

PathLike = Union[str, os.PathLike]
# Image files find_pairs does not read, said when it leaves them out.
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jp2", ".npy", ".czi", ".nd2", ".lif")


def as_channels_first(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(H, W, C)`` with C <= 4 < H (RGB(A)
    PNGs) -> ``(C, H, W)``; ``(C, H, W)`` unchanged. Returns float32.

    >>> as_channels_first(np.zeros((5, 6, 3))).shape
    (3, 5, 6)
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] <= 4 < a.shape[0]:
        a = np.moveaxis(a, -1, 0)
    elif a.ndim != 3:
        raise ValueError(f"expected a 2D image with optional channels, got shape {a.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused by Sample
        return np.ascontiguousarray(a, dtype=np.float32)


_F32_MAX = float(np.finfo(np.float32).max)


def percentile_affine(lo: float, hi: float) -> Tuple[float, float]:
    """``(scale, shift)`` of the map sending ``lo`` to 0 and ``hi`` to 1, the
    runtime's rule (``affine_from_range`` in ``crates/unet-rt/src/normalize.rs``):
    a range it cannot map (empty, or so narrow that the scale or shift is
    beyond float64) is flat, ``(1, -lo)``; a map beyond float32 is applied in
    float64, as :func:`normalize` does. Relative, never an absolute size:

    >>> percentile_affine(0.0, 0.25e-20)
    (4e+20, -0.0)
    >>> percentile_affine(0.0, 0.25e-40)
    (4e+40, -0.0)
    >>> percentile_affine(3.0, 3.0)
    (1.0, -3.0)
    """
    rng = hi - lo
    if rng > 0 and math.isfinite(1.0 / rng) and math.isfinite(lo / rng):
        return 1.0 / rng, -lo / rng
    return 1.0, -lo


def normalize(image: np.ndarray, spec: Optional[Dict[str, Any]]) -> np.ndarray:
    """Applies a ``unet_rt/1`` normalisation (docs/design.md section 4) exactly as the
    runtime does, to the whole array at once: ``percentile`` maps the image's
    ``low``/``high`` percentiles (numpy's linear interpolation, over all
    pixels and channels) to 0 and 1; ``zscore``, ``scale``, ``none``.

    >>> normalize(np.array([0.0, 5.0, 10.0]), {"kind": "percentile", "low": 0, "high": 100}).tolist()
    [0.0, 0.5, 1.0]
    """
    x = np.asarray(image, dtype=np.float64)
    kind = (spec or {"kind": "none"}).get("kind", "none")
    if kind == "percentile":
        lo, hi = np.percentile(x, [spec["low"], spec["high"]])
        scale, shift = percentile_affine(lo, hi)
    elif kind == "zscore":
        std = spec["std"] if spec["std"] > 0 else 1.0
        scale, shift = 1.0 / std, -spec["mean"] / std
    elif kind == "scale":
        scale, shift = spec["factor"], 0.0
    elif kind == "none":
        scale, shift = 1.0, 0.0
    else:
        raise ValueError(f"unknown normalization kind {kind!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        y = x * scale + shift
        # Finite pixels saturate at float32's extremes, as the runtime's do.
        return np.where(np.isfinite(x), np.clip(y, -_F32_MAX, _F32_MAX), y).astype(np.float32)


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        image: ``(C, H, W)`` float32 (raw values until :meth:`normalized`).
        labels: ``(H, W)`` int32, instance ids or class ids.
        instances: whether ``labels`` are instance ids.
        name: file name (with the region, for regions).
    """

    image: np.ndarray
    labels: np.ndarray
    instances: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        name = self.name or "sample"
        if self.image.shape[-2:] != self.labels.shape:
            raise ValueError(f"{name}: image {self.image.shape[-2:]} and labels {self.labels.shape} differ in size")
        if self.image.size == 0:
            raise ValueError(f"{name}: the image is empty (shape {self.image.shape})")
        # A NaN pixel made the first loss NaN, reported as a learning rate to lower.
        bad = int(self.image.size - np.count_nonzero(np.isfinite(self.image)))
        if bad:
            raise ValueError(f"{name}: the image holds {bad} pixel value(s) that are NaN or infinite (as float32)")

    def region(self, rows: Optional[Sequence[int]] = None, cols: Optional[Sequence[int]] = None) -> "Sample":
        """The rows ``[r0, r1)`` and columns ``[c0, c1)`` of this sample (views)."""
        r = slice(*rows) if rows is not None else slice(None)
        c = slice(*cols) if cols is not None else slice(None)
        tag = f"[{rows[0]}:{rows[1]}" if rows is not None else "[:"
        tag += f", {cols[0]}:{cols[1]}]" if cols is not None else ", :]"
        return replace(self, image=self.image[:, r, c], labels=self.labels[r, c], name=self.name + tag)

    def normalized(self, spec: Optional[Dict[str, Any]]) -> "Sample":
        """This sample with its image normalised by :func:`normalize` (on this
        sample's own pixels: normalise a region after cutting it)."""
        return replace(self, image=normalize(self.image, spec))


def find_pairs(image_dir: PathLike, label_dir: PathLike) -> List[Tuple[Path, Path]]:
    """Image and label files with the same name (extension ignored) in two
    folders, sorted by name. Raises ``ValueError`` for images without labels."""
    image_dir, label_dir = Path(image_dir), Path(label_dir)

    def files(d: Path) -> Dict[str, Path]:
        if not d.is_dir():
            raise ValueError(f"{d} is not a folder")
        found: Dict[str, Path] = {}
        for p in sorted(d.iterdir()):
            # "._name.png": the resource forks macOS leaves on other disks.
            if p.name.startswith("._"):
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                if p.suffix.lower() in OTHER_IMAGE_SUFFIXES:
                    skipped.append(p.name)
                continue
            if p.stem in found:
                # One of the two was dropped without a word.
                raise ValueError(f"{d}: {found[p.stem].name} and {p.name} share the name {p.stem!r}; keep one")
            found[p.stem] = p
        return found

    skipped: List[str] = []
    images, labels = files(image_dir), files(label_dir)
    if skipped:
        # A folder of JPEGs beside TIFFs trained on the TIFFs alone, without a word.
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        print(f"note: {len(skipped)} image file(s) of other types than {', '.join(IMAGE_SUFFIXES)} are left out "
              f"({shown})", file=sys.stderr)
    missing = sorted(set(images) - set(labels))
    if missing:
        raise ValueError(f"no labels in {label_dir} for {len(missing)} image(s): {', '.join(missing[:5])}")
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    return [(images[k], labels[k]) for k in sorted(images)]


def load_folder(image_dir: PathLike, label_dir: PathLike, instances: bool = True) -> List[Sample]:
    """Samples from :func:`find_pairs` (images raw, not normalised; instance
    labels checked by :func:`training.instance_labels.as_instances`)."""
    pairs = find_pairs(image_dir, label_dir)
    return load_arrays([read_image(i) for i, _ in pairs], [read_labels(l) for _, l in pairs], instances,
                       [i.name for i, _ in pairs], [l.name for _, l in pairs])


def load_arrays(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    instances: bool = True,
    names: Optional[Sequence[str]] = None,
    label_names: Optional[Sequence[str]] = None,
) -> List[Sample]:
    """Samples from arrays (``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` images).
    Instance labels that are binary masks become their connected objects,
    said in a note on stderr; labels that are no instance labels are
    refused (:func:`training.instance_labels.as_instances`)."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays")
    names = list(names) if names is not None else [f"array{i}" for i in range(len(images))]
    label_names = list(label_names) if label_names is not None else names
    samples, binary = [], []
    for image, raw, name, label_name in zip(images, labels, names, label_names):
        ids = label_array(raw, label_name)
        if instances:
            ids, was_binary = as_instances(ids, label_name)
            if was_binary:
                binary.append(label_name)
        samples.append(Sample(as_channels_first(image), ids, instances, name))
    if binary:
        shown = ", ".join(binary[:3]) + (f" and {len(binary) - 3} more" if len(binary) > 3 else "")
        print(f"note: {len(binary)} label file(s) hold one value over several objects (binary masks: {shown}): "
              "each connected object is taken as an object of its own; touching objects merge into one (give "
              "them ids of their own to keep them apart)", file=sys.stderr)
    return samples


def load_sample_data(folder: PathLike = SAMPLE_DATA_DIR) -> Sample:
    """The bundled nuclei sample: 512x512 fluorescence image and instance labels
    (see ``data/dsb2018-nuclei/README.md``)."""
    folder = Path(folder)
    return Sample(
        as_channels_first(read_image(folder / "image.tif")),
        np.asarray(read_labels(folder / "labels.tif"), np.int32),
        True,
        folder.name,
    )


def label_array(labels: Any, name: str) -> np.ndarray:
    """``labels`` as int32 ids, or a ``ValueError`` naming them: fractions
    (a mask saved as float), negative ids and ids beyond int32 were
    truncated or wrapped into other objects (or background) without a word.

    >>> label_array(np.array([[0, 2.0]]), "a").tolist()
    [[0, 2]]
    >>> label_array(np.array([[0, 0.5]]), "a")
    Traceback (most recent call last):
    ...
    ValueError: labels a: holds values that are not whole numbers (ids must be integers)

    A grey label image saved with colour channels (RGB or RGBA PNGs with
    equal channels) is read as its one channel; a colour one is refused
    (it was called "differs in size" from its image):

    >>> label_array(np.stack([np.array([[0, 7]])] * 3, axis=-1), "a").tolist()
    [[0, 7]]
    >>> label_array(np.array([[[0, 0, 0], [255, 0, 0]]]), "a.png")
    Traceback (most recent call last):
    ...
    ValueError: labels a.png: a colour image (shape (1, 2, 3), 2 colours); labels are one channel of ids, 0 for background: save them as a grey (or indexed) PNG or TIFF
    """
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"labels {name}: dtype {array.dtype} is not a label image")
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4) and array.shape[0] > 0:
        # Grey plus alpha (2), RGB (3), RGBA (4): the alpha channel is not a label.
        colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if (colour == colour[..., :1]).all():
            array = colour[..., 0]
        else:
            colours = len(np.unique(colour.reshape(-1, colour.shape[-1]), axis=0))
            raise ValueError(f"labels {name}: a colour image (shape {array.shape}, {colours} colours); labels are "
                             "one channel of ids, 0 for background: save them as a grey (or indexed) PNG or TIFF")
    if array.ndim != 2:
        raise ValueError(f"labels {name}: shape {array.shape}; labels are one 2-D image of ids (height, width)")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ValueError(f"labels {name}: holds values that are not whole numbers (ids must be integers)")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"labels {name}: ids must be 0 (background) .. {np.iinfo(np.int32).max}, "
                         f"got {array.min()} .. {array.max()}")
    return array.astype(np.int32)


def split_rows(samples: Sequence[Sample], ranges: Dict[str, Sequence[int]]) -> Dict[str, List[Sample]]:
    """Splits every sample by row ranges, ``{"train": [0, 320], "val": [320,
    384], "test": [384, 512]}`` (half-open; missing parts are omitted).
    Overlapping ranges are an error: held-out rows must never be trained on.
    So are ranges that are empty, negative (Python would count them from the
    end, and ``[-200, -1]`` overlapped training rows unseen) or that start
    past a sample's last row (an empty region); an end past it is cut to
    the sample (the sample's ``[0, 384]`` takes all of a smaller image)."""
    spans = []
    for k, r in ranges.items():
        if r is None:
            continue
        if isinstance(r, (str, bytes)) or len(r) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in r):
            raise ValueError(f"data.split.{k} must be [first, end) rows, two integers, got {r!r}")
        r0, r1 = int(r[0]), int(r[1])
        rows = min((s.image.shape[1] for s in samples), default=0)
        if not 0 <= r0 < min(r1, rows):
            raise ValueError(f"data.split.{k} [{r0}, {r1}) is not a range of rows starting within 0..{rows - 1}")
        spans.append((r0, r1, k))
    spans.sort()
    for (a0, a1, ka), (b0, b1, kb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError(f"row ranges {ka} [{a0}, {a1}) and {kb} [{b0}, {b1}) overlap")
    return {k: [s.region(rows=(r0, r1)) for s in samples] for r0, r1, k in spans}


def split_files(
    samples: Sequence[Sample],
    val: Union[Sequence[str], float, None] = None,
    test: Union[Sequence[str], float, None] = None,
    seed: int = 0,
) -> Dict[str, List[Sample]]:
    """Splits by file: ``val``/``test`` are file names (with or without
    extension) or fractions of the files (chosen at random with ``seed``);
    the rest is ``train``."""
    names = [s.name for s in samples]
    order = np.random.default_rng(seed).permutation(len(samples))
    taken: Dict[str, List[int]] = {}
    used: set = set()
    for part, spec in (("test", test), ("val", val)):
        if spec is None:
            continue
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            # -0.2 took all but two of ten files ([:-2]); 0.04 of ten took
            # none, with no word.
            count = int(round(float(spec) * len(samples))) if math.isfinite(spec) else 0
            if not (0.0 < spec < 1.0 and count >= 1):
                raise ValueError(f"data.split.{part} {spec!r} must be a fraction in (0, 1) that picks at least one "
                                 f"of the {len(samples)} files (or a list of file names)")
            picked = [int(i) for i in order if int(i) not in used][:count]
        else:
            wanted = set(spec)
            picked = [i for i, n in enumerate(names) if n in wanted or Path(n).stem in wanted]
            found = {names[i] for i in picked} | {Path(names[i]).stem for i in picked}
            unknown = wanted - found
            if unknown:
                raise ValueError(f"{part} files not found: {', '.join(sorted(unknown))}")
            twice = sorted(names[i] for i in set(picked) & used)
            if twice:
                # A file scored as the test and chosen on as validation is
                # not held out.
                raise ValueError(f"data.split.val and data.split.test both name {twice[0]}")
        used.update(picked)
        taken[part] = picked
    out = {"train": [s for i, s in enumerate(samples) if i not in used]}
    for part, idx in taken.items():
        out[part] = [samples[i] for i in sorted(idx)]
    return out


def class_targets(sample: Sample, classes: int) -> np.ndarray:
    """A class-mask sample's labels as targets, after checking that the
    network has each class: ids of 256 and above wrapped to ``id - 256``
    (a 0/257 mask trained as class 1), and a class found only in the
    validation images was an ``IndexError``.

    >>> s = load_arrays([np.zeros((2, 2))], [np.array([[0, 257], [0, 0]])], False, ["m.tif"])[0]
    >>> class_targets(s, 2)
    Traceback (most recent call last):
    ...
    ValueError: labels m.tif contain class 257 but the network has 2 classes
    """
    top = int(sample.labels.max()) if sample.labels.size else 0
    if top >= classes or int(sample.labels.min(initial=0)) < 0:
        raise ValueError(f"labels {sample.name} contain class {top} but the network has {classes} classes")
    return sample.labels.astype(np.uint8 if classes <= 256 else np.uint16)


class CropDataset(Dataset):
    """Random training crops with targets and the paper's weight map.

    Item ``i`` is drawn with ``numpy.random.default_rng([seed, i])``, so a
    run is reproducible and a resumed run continues with the same crops.

    Args:
        samples: normalised samples.
        crop: input crop size (a valid input size of the network).
        margin: pixels per side between input crop and target crop (the
            halo for valid-padded networks, 0 for same-padded ones).
        length: number of items (e.g. steps * batch size).
        augmenter: :class:`training.augment.Augmenter` or ``None``.
        seed: base seed.
        classes: number of classes (2 for instance labels: background, object).
        w0, sigma: the border term of :func:`training.loss.weight_map`
            (``w0 = 0`` disables it).
        balance: class-balancing weights ``w_c`` from the class frequencies
            of all samples (else 1).
        separate: separation borders between touching objects in the targets.
        boundary: a width > 0: three-class targets
            (:func:`training.loss.boundary_targets` of that width:
            background, interior, boundary) instead of two.

    For instance labels, the targets and the weight map are made from each
    augmented patch's instance labels (warped by nearest neighbour), so
    zooming and warping never thin a boundary class or close a separation
    border, and every pixel's weight is that of its own target: a weight map
    made on the whole image and warped beside targets made on the patch gave
    9% of the interior the boundary's class weight. The border term sees the
    objects of the input patch: exact on the output where the margin (a
    valid-padded network's halo: 44 px for the bundled model, 92 for the
    paper's) is wider than the term's reach, about ``5.3 * sigma`` (26 px at
    sigma 5); within that reach of the patch's edge an approximation
    otherwise (shallow or same-padded networks), as are, for same-padded
    ones, separation borders and boundary bands at the edge.

    Items are dicts: ``image`` (C, crop, crop) float32, ``target``
    (out, out) int64, ``weight`` (out, out) float32, ``out = crop - 2 * margin``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        crop: int,
        margin: int,
        length: int,
        augmenter: Optional[Augmenter] = None,
        seed: int = 0,
        classes: int = 2,
        w0: float = 10.0,
        sigma: float = 5.0,
        balance: bool = True,
        separate: bool = True,
        boundary: int = 0,
    ):
        if crop - 2 * margin <= 0:
            raise ValueError(f"crop {crop} leaves no output for margin {margin}")
        if not samples:
            raise ValueError("no training samples")
        self.samples = list(samples)
        self.crop, self.margin, self.length = int(crop), int(margin), int(length)
        self.augmenter, self.seed = augmenter, int(seed)
        self.boundary = int(boundary)
        self.separate, self.w0, self.sigma = bool(separate), float(w0), float(sigma)
        self.targets = [
            (boundary_targets(s.labels, boundary) if boundary else instance_targets(s.labels, separate)) if s.instances
            else class_targets(s, classes) for s in self.samples
        ]
        top = max(int(t.max()) for t in self.targets)
        if top == 0:
            # Nothing to learn but background: the run went ahead, and its model found nothing.
            raise ValueError("the training labels hold no objects (every pixel is background, 0)")
        if top >= classes:
            raise ValueError(f"labels contain class {top} but the network has {classes} classes")
        self.class_weight = class_weights(self.targets, classes) if balance else np.ones(classes)
        area = np.array([t.size for t in self.targets], np.float64)
        self.p = area / area.sum()

    def __len__(self) -> int:
        return self.length

    def patch(self, index: int) -> Tuple[np.ndarray, np.ndarray, bool]:
        """Item ``index``'s augmented input patch (C, crop, crop), the same
        patch of its labels (crop, crop), and whether those are instance ids
        (else class targets)."""
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.choice(len(self.samples), p=self.p))
        sample, target = self.samples[k], self.targets[k]
        m, size = self.margin, (self.crop, self.crop)
        # Every crop position is equally likely (the output's own
        # coverage then falls off within a crop of the image's edges).
        origin = tuple(int(rng.integers(-m, max(n - self.crop + m, -m) + 1)) for n in target.shape)
        source = sample.labels if sample.instances else target
        if self.augmenter is not None:
            img, (labels,) = self.augmenter.patch(sample.image, [source], origin, size, rng)
        else:
            img, labels = sample_patch(sample.image, origin, size), sample_patch(source, origin, size)
        return img, labels, sample.instances

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        img, labels, instances = self.patch(index)
        m = self.margin
        if instances:
            tgt = boundary_targets(labels, self.boundary) if self.boundary else instance_targets(labels, self.separate)
            w = weight_map(labels, self.w0, self.sigma, self.class_weight, tgt)
        else:
            tgt, w = labels, self.class_weight.astype(np.float32)[labels]
        if m:
            tgt, w = tgt[m:-m, m:-m], w[m:-m, m:-m]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, np.float32)),
            "target": torch.from_numpy(np.ascontiguousarray(tgt, np.int64)),
            "weight": torch.from_numpy(np.ascontiguousarray(w, np.float32)),
        }
