"""OME-Zarr (NGFF): images in, label images out.

An OME-Zarr image is a zarr group whose metadata (``multiscales``) names its
resolution levels and axes (``t``, ``c``, ``z``, ``y``, ``x``). Segmentation
reads level 0 and writes a *label image* (NGFF ``image-label``) under the
``labels`` group of the destination, which viewers and readers (napari,
``ome-zarr``, ``ome-zarr-models``) open as labels::

    DESTINATION.zarr/
        labels/                 ome.labels lists the label images
            labels/ | instances/
                0, 1, ...       resolution levels (nearest-neighbour halves)
                _done_...       unet_rt's resume markers

Zarr v3 groups get NGFF 0.5 metadata (under ``ome``), zarr v2 groups NGFF
0.4 (top-level ``multiscales``), so labels can go into an existing image of
either version. Length-1 axes the engine cannot read (a 2-D model on a
``tczyx`` image with one time point and one plane) are hidden by
:class:`Squeezed` views; the label image keeps every axis of the image but
``c``, as NGFF asks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _unet_rt
from ..errors import InvalidArgumentError

__all__ = ["Squeezed", "OmeSource", "LabelImage", "open_source", "label_image", "colors", "write_metadata"]

# NGFF axis names onto the engine's letters; time points are a batch.
_LETTERS = {"t": "b", "c": "c", "z": "z", "y": "y", "x": "x"}
_ORDER = "tczyx"


@dataclass(frozen=True)
class Squeezed:
    """A view of a zarr array without some of its length-1 axes: reads and
    writes index the view's axes, the array gets index 0 on the hidden ones.

    >>> import numpy as np
    >>> a = np.arange(6).reshape(1, 2, 1, 3)
    >>> v = Squeezed(a, (0, 2))
    >>> v.shape, v[0:2, 1:3].tolist()
    ((2, 3), [[1, 2], [4, 5]])
    >>> v[1:2, 0:1] = -1; int(a[0, 1, 0, 0])
    -1
    """

    array: Any
    dropped: Tuple[int, ...]

    def _full(self, index: Any) -> Tuple[Any, ...]:
        parts = iter(index if isinstance(index, tuple) else (index,))
        return tuple(0 if i in self.dropped else next(parts, slice(None)) for i in range(len(self.array.shape)))

    def _kept(self, values: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
        return None if values is None else tuple(int(v) for i, v in enumerate(values) if i not in self.dropped)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._kept(self.array.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> Any:
        return self.array.dtype

    @property
    def chunks(self) -> Tuple[int, ...]:
        return self._kept(self.array.chunks)

    @property
    def shards(self) -> Optional[Tuple[int, ...]]:
        return self._kept(getattr(self.array, "shards", None))

    def __getitem__(self, index: Any) -> Any:
        return self.array[self._full(index)]

    def __setitem__(self, index: Any, value: Any) -> None:
        self.array[self._full(index)] = value


def _view(array: Any, dropped: Tuple[int, ...]) -> Any:
    return Squeezed(array, dropped) if dropped else array


def _multiscales(attrs: Dict[str, Any]) -> Tuple[Optional[str], Optional[List[Dict[str, Any]]]]:
    """NGFF version and ``multiscales`` of a group's attributes (0.5 keeps
    them under ``ome``, 0.4 and before at the top)."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return str(ome.get("version", "0.5")), ome["multiscales"]
    if "multiscales" in attrs:
        entries = attrs["multiscales"]
        version = entries[0].get("version", "0.4") if entries and isinstance(entries[0], dict) else "0.4"
        return str(version), entries
    return None, None


@dataclass(frozen=True)
class OmeSource:
    """Level 0 of an OME-Zarr image, as the engine reads it."""

    #: The image's group (labels written "into" the image go under it).
    group: Any
    #: The engine's axes letters of level 0 without the hidden axes.
    axes: str
    #: The image's NGFF axes, all of them.
    ngff_axes: Tuple[Dict[str, Any], ...]
    #: Positions (among the image's axes) that :attr:`array` hides.
    dropped: Tuple[int, ...]
    #: Level 0's coordinate transformations.
    transforms: Tuple[Dict[str, Any], ...]
    #: The image's ``multiscales`` datasets (its resolution levels).
    datasets: Tuple[Dict[str, Any], ...] = ()


def open_source(source: Any, spatial_dims: int) -> Tuple[Any, Optional[OmeSource]]:
    """The zarr array to read, and its OME-Zarr description when ``source``
    (a zarr array or group, or the path/URL of one) is an OME-Zarr image."""
    import zarr

    node = source
    if not isinstance(source, (zarr.Array, zarr.Group)):
        try:
            node = zarr.open(source, mode="r")
        except (FileNotFoundError, KeyError) as e:
            raise InvalidArgumentError(f"invalid source: no zarr array or group at {source}") from e
    if isinstance(node, zarr.Array):
        return node, None
    version, entries = _multiscales(dict(node.attrs))
    if not entries:
        raise InvalidArgumentError(
            f"invalid source: {source} is a zarr group without OME-Zarr multiscales metadata; pass an array "
            f"(a path to it) or an OME-Zarr image"
        )
    first = entries[0]
    datasets = first.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise InvalidArgumentError(f"invalid source: {source}: OME-Zarr multiscales without datasets")
    try:
        level0 = node[datasets[0]["path"]]
    except KeyError as e:
        raise InvalidArgumentError(f"invalid source: {source}: level 0 ({datasets[0]['path']}) is missing") from e
    axes = tuple(_axis(a) for a in first.get("axes") or _default_axes(len(level0.shape)))
    if len(axes) != len(level0.shape):
        raise InvalidArgumentError(
            f"invalid source: {source}: {len(axes)} OME-Zarr axes for an array of {len(level0.shape)} dimensions"
        )
    names = [a["name"].lower() for a in axes]
    unknown = [n for n in names if n not in _LETTERS]
    if unknown:
        raise InvalidArgumentError(f"invalid source: {source}: OME-Zarr axes {unknown} are not supported (use t, c, z, y, x)")
    # A 2-D model reads z (or t) as a batch, but not both: hide the length-1 ones.
    batch_like = [i for i, n in enumerate(names) if n == "t" or (n == "z" and spatial_dims == 2)]
    dropped = tuple(i for i in batch_like if level0.shape[i] == 1) if len(batch_like) > 1 else ()
    if len(batch_like) - len(dropped) > 1:
        raise InvalidArgumentError(
            f"invalid source: {source} has axes {''.join(names)} of shape {tuple(level0.shape)}; a {spatial_dims}-D model "
            f"reads one of t and z as a batch, not both: write one time point or one plane per image"
        )
    letters = "".join(_LETTERS[n] for i, n in enumerate(names) if i not in dropped)
    transforms = tuple(datasets[0].get("coordinateTransformations") or ())
    return _view(level0, dropped), OmeSource(node, letters, axes, dropped, transforms, tuple(datasets))


def _axis(entry: Any) -> Dict[str, Any]:
    # NGFF 0.3 listed axes as bare names.
    return {"name": entry} if isinstance(entry, str) else dict(entry)


def _default_axes(ndim: int) -> List[Dict[str, Any]]:
    return [{"name": n} for n in _ORDER[-ndim:]]


_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class LabelImage:
    """Where and how a label image is written: its NGFF axes (the source's
    but ``c``), the positions among them that the engine's result lacks,
    level 0's coordinate transformations, and per resolution level the
    subsampling factor of each axis and, when the labels belong to an
    OME-Zarr image, that image's level shape (labels match their image
    level for level, as NGFF readers expect)."""

    axes: Tuple[Dict[str, Any], ...]
    dropped: Tuple[int, ...]
    transforms: Tuple[Dict[str, Any], ...]
    factors: Tuple[Tuple[int, ...], ...]
    shapes: Tuple[Optional[Tuple[int, ...]], ...]
    #: ``image-label.source.image``, when the labels go into their image.
    source_image: Optional[str]

    @property
    def levels(self) -> int:
        return len(self.factors)

    def full(self, values: Sequence[int]) -> Tuple[int, ...]:
        """``values`` (per engine result axis) with 1 on the hidden axes."""
        it = iter(values)
        return tuple(1 if i in self.dropped else int(next(it)) for i in range(len(self.axes)))

    def view(self, array: Any) -> Any:
        """The engine's view of a level array."""
        return _view(array, self.dropped)

    def level_shape(self, previous: Sequence[int], level: int) -> Tuple[int, ...]:
        """The shape of resolution ``level``, from that of the level before."""
        most = tuple(math.ceil(int(n) / f) for n, f in zip(previous, self.step(level)))
        image = self.shapes[level]
        return most if image is None else tuple(min(a, b) for a, b in zip(image, most))

    def step(self, level: int) -> Tuple[int, ...]:
        """Per axis, the pixels of level ``level - 1`` per pixel of ``level``."""
        return tuple(b // a for a, b in zip(self.factors[level - 1], self.factors[level]))

    def multiscales(self, name: str) -> Dict[str, Any]:
        """The ``multiscales`` entry of the label image (without version)."""
        scale0 = [1.0] * len(self.axes)
        rest: List[Dict[str, Any]] = []
        for t in self.transforms:
            if t.get("type") == "scale" and "scale" in t:
                scale0 = [float(v) for v in t["scale"]]
            elif t.get("type") == "translation" and "translation" in t:
                rest.append({"type": "translation", "translation": [float(v) for v in t["translation"]]})
        datasets = []
        for level, factors in enumerate(self.factors):
            # Level k keeps level 0's pixels 0, f, 2f, ...: the same origin
            # as level 0, f times the spacing.
            scale = [s * f for s, f in zip(scale0, factors)]
            datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}] + rest})
        return {"name": name, "axes": [dict(a) for a in self.axes], "datasets": datasets}


def label_image(letters: str, spatial_dims: int, ome: Optional[OmeSource], into_source: bool,
                levels: Optional[int]) -> LabelImage:
    """The label image of a result with the engine's axes ``letters`` (minus
    ``c``): an OME-Zarr source's axes and resolution levels when there is
    one (``levels=None``: as many as the image has), else ``levels``
    (default 1) halving the model's spatial axes each time."""
    image_factors: List[Tuple[int, ...]] = []
    image_shapes: List[Tuple[int, ...]] = []
    if ome is not None:
        channel = [i for i, a in enumerate(ome.ngff_axes) if a["name"].lower() == "c"]
        keep = [i for i in range(len(ome.ngff_axes)) if i not in channel]
        axes = tuple(_typed(ome.ngff_axes[i]) for i in keep)
        dropped = tuple(keep.index(i) for i in ome.dropped)
        transforms = tuple(_without(t, channel) for t in ome.transforms)
        source_image = "../../" if into_source else None
        scale0 = _scale(ome.transforms, len(ome.ngff_axes))
        for dataset in ome.datasets:
            scale = _scale(dataset.get("coordinateTransformations") or (), len(ome.ngff_axes))
            image_factors.append(tuple(_factor(scale[i] / scale0[i], ome.group) for i in keep))
            image_shapes.append(tuple(int(ome.group[dataset["path"]].shape[i]) for i in keep))
    else:
        names = [{"b": "t"}.get(c, c) for c in letters if c != "c"]
        axes = tuple({"name": n, "type": _AXIS_TYPES[n]} for n in names)
        dropped, transforms, source_image = (), (), None
    names = [a["name"].lower() for a in axes]
    halved = [i for i, n in enumerate(names) if n in "zyx"][-spatial_dims:]
    count = levels if levels is not None else max(1, len(image_factors))
    factors: List[Tuple[int, ...]] = []
    shapes: List[Optional[Tuple[int, ...]]] = []
    for level in range(count):
        if level < len(image_factors):
            factors.append(image_factors[level])
            shapes.append(image_shapes[level])
        else:
            last = factors[-1] if factors else (1,) * len(axes)
            factors.append(tuple(f * 2 if i in halved and level else f for i, f in enumerate(last)))
            shapes.append(None)
    for level in range(1, count):
        if any(b % a for a, b in zip(factors[level - 1], factors[level])):
            raise InvalidArgumentError(
                f"invalid source: {ome.group if ome else ''}: resolution level {level} is not a whole multiple of level "
                f"{level - 1} ({factors[level]} against {factors[level - 1]}); pass levels=1"
            )
    return LabelImage(axes, dropped, transforms, tuple(factors), tuple(shapes), source_image)


def _scale(transforms: Sequence[Dict[str, Any]], ndim: int) -> List[float]:
    for t in transforms:
        if t.get("type") == "scale" and "scale" in t and len(t["scale"]) == ndim:
            return [float(v) for v in t["scale"]]
    return [1.0] * ndim


def _factor(ratio: float, group: Any) -> int:
    # Writers scale odd sizes by their true ratio (501 / 250 = 2.004).
    factor = int(round(ratio))
    if factor < 1 or abs(ratio - factor) > 0.25:
        raise InvalidArgumentError(
            f"invalid source: {group}: a resolution level is scaled by {ratio:g} against level 0; label images are "
            f"written for whole-number factors only (pass levels=1)"
        )
    return factor


def _from_letter(letter: str) -> str:
    return {"b": "t"}.get(letter, letter)


def _typed(axis: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(axis)
    out["name"] = out["name"].lower()
    out.setdefault("type", _AXIS_TYPES.get(out["name"], "space"))
    return out


def _without(transform: Dict[str, Any], positions: List[int]) -> Dict[str, Any]:
    out = dict(transform)
    for key in ("scale", "translation"):
        if key in out:
            out[key] = [v for i, v in enumerate(out[key]) if i not in positions]
    return out


def colors(classes: Sequence[str]) -> Dict[str, Any]:
    """``image-label`` colours and properties of a class map: one colour per
    class (the background, 0, transparent; the core's rule, which the
    command line's OME-Zarr results follow too), and each value's class name.

    >>> colors(["background", "nucleus"])["colors"]
    [{'label-value': 0, 'rgba': [0, 0, 0, 0]}, {'label-value': 1, 'rgba': [230, 25, 75, 255]}]
    """
    return {
        "colors": [{"label-value": i, "rgba": list(_unet_rt.class_colour(i))} for i in range(len(classes))],
        "properties": [{"label-value": i, "class": str(name)} for i, name in enumerate(classes)],
    }


def write_metadata(root: Any, labels: Any, image: Any, name: str, layout: LabelImage,
                   image_label: Dict[str, Any]) -> None:
    """Writes the NGFF metadata, last (after the data): the label image's
    ``multiscales`` and ``image-label``, and its name in ``labels``."""
    version = "0.5" if _zarr_format(root) == 3 else "0.4"
    multiscales = layout.multiscales(name)
    label = dict(image_label)
    if layout.source_image is not None:
        label["source"] = {"image": layout.source_image}
    if version == "0.5":
        image.attrs["ome"] = {"version": version, "multiscales": [multiscales], "image-label": {"version": version, **label}}
        listed = list((dict(labels.attrs).get("ome") or {}).get("labels") or [])
        labels.attrs["ome"] = {"version": version, "labels": listed + ([name] if name not in listed else [])}
    else:
        image.attrs["multiscales"] = [{"version": version, **multiscales}]
        image.attrs["image-label"] = {"version": version, **label}
        listed = list(dict(labels.attrs).get("labels") or [])
        labels.attrs["labels"] = listed + ([name] if name not in listed else [])


def _zarr_format(group: Any) -> int:
    return int(group.metadata.zarr_format)
