"""bioimage.io model packages (format 0.5), both ways.

* :func:`export` writes a unet_rt model as a bioimage.io package: the
  TorchScript weights, the axes and valid sizes, the pre-processing (the
  model's normalization as ``scale_range``, ``fixed_zero_mean_unit_variance``
  or ``scale_linear``), the post-processing (``softmax`` / ``sigmoid``), the
  halo, test input and output arrays, a cover image, documentation, the U-Net
  citation and a licence. The package is validated with ``bioimageio.spec``
  (IO checks included, offline) before it is written, so it runs in
  ``bioimageio.core``, ilastik, deepImageJ and the other zoo consumers.
  Networks must return the tensor (one returning a dict or tuple is
  refused). What a consumer computes on a new image equals unet_rt's
  result where the model's normalization is fixed (``zscore`` with given
  values, ``scale``, none); with ``percentile`` normalization
  bioimageio.core takes the percentiles of the padded input, not of the
  image, so its probabilities differ slightly (~1e-2 on the bundled model).
  bioimageio.core's blockwise prediction refuses valid-padded packages
  (their output is smaller than their input), which its whole-sample
  prediction runs.
* ``unet_rt.Model("package.zip")`` (or a folder holding ``rdf.yaml`` /
  ``bioimageio.yaml``) loads a package with TorchScript weights:
  :func:`read_package` maps its axes, sizes, pre- and post-processing onto
  the engine's metadata; a step the engine cannot run is a
  :class:`~unet_rt.errors.PackageError` naming it.

Both need ``bioimageio.spec`` (``pip install unet_rt[bioimageio]``).

From the command line: ``python -m unet_rt.bioimageio export MODEL -o PKG.zip``
and ``python -m unet_rt.bioimageio check PKG.zip``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Union

import numpy as np

from ._package_files import check_description, check_memory, read_referenced
from .errors import InvalidArgumentError, PackageError

__all__ = ["export", "is_package", "read_package", "check", "Package", "quiet_leaks"]

PathLike = Union[str, "os.PathLike[str]"]

#: Ronneberger, Fischer and Brox, MICCAI 2015: the network every package cites.
UNET_CITATION = {
    "text": "Ronneberger, O., Fischer, P., Brox, T.: U-Net: Convolutional Networks for Biomedical Image "
            "Segmentation. MICCAI 2015, LNCS 9351, 234-241",
    "doi": "10.1007/978-3-319-24574-4_28",
}
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: How many times loading a package holds the records of its weights: the
#: archive rewritten here with the metadata, and the copies the loader
#: makes of those bytes (a 1.5 GiB record peaked at 5 times its size).
_LOAD_COPIES = 5
_INPUT_ID = "raw"
_SPACE = "zyx"


@contextlib.contextmanager
def quiet_leaks() -> Iterator[None]:
    """bioimageio.spec and bioimageio.core drop open files (a reader per
    file they hash or check) without closing them: inside this block their
    ResourceWarnings are ignored, and what is left is collected at its end
    rather than at some later garbage collection in the caller's code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


def _spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as e:  # pragma: no cover - the dev environment has it
        raise PackageError(
            "bioimage.io packages need the bioimageio.spec package: pip install 'unet_rt[bioimageio]'"
        ) from e
    return spec


def _check_license(license: Any) -> None:
    """Refuses a licence bioimage.io would refuse, before any work: the
    validator's answer was a table of all 667 identifiers (122 KB)."""
    if not isinstance(license, str):
        raise TypeError(f"license must be a str (an SPDX identifier such as 'MIT'), got {type(license).__name__}")
    try:
        import typing

        from bioimageio.spec._internal.license_id import DeprecatedLicenseIdLiteral, LicenseIdLiteral
    except ImportError:  # pragma: no cover - another bioimageio.spec layout: its validation still says no
        return
    known = typing.get_args(LicenseIdLiteral) + typing.get_args(DeprecatedLicenseIdLiteral)
    if license in known:
        return
    import difflib

    folded = {k.lower(): k for k in known}
    close = [folded[k] for k in difflib.get_close_matches(license.lower(), list(folded), n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(close)}?" if close else " (e.g. MIT, Apache-2.0, BSD-3-Clause, CC-BY-4.0)"
    raise InvalidArgumentError(f"invalid license: {license!r} is not an SPDX licence identifier{hint}")


# --- export -------------------------------------------------------------------


def export(
    model: Any = None,
    path: PathLike = "model.zip",
    *,
    test_image: Optional[np.ndarray] = None,
    name: Optional[str] = None,
    description: Optional[str] = None,
    authors: Optional[Sequence[Union[str, Dict[str, str]]]] = None,
    license: str = "MIT",
    tags: Optional[Sequence[str]] = None,
    documentation: Optional[str] = None,
) -> Path:
    """Writes ``model`` as a bioimage.io package (a zip file) at ``path``.

    Args:
        model: a :class:`unet_rt.Model`, the path of a model file, or
            ``None`` for the bundled nuclei model.
        path: the package file to write (``.zip``); written only once the
            package has passed validation, replacing any file there.
        test_image: the image (in the model's axes, as
            :meth:`unet_rt.Model.segment` reads it) the package's test input
            is cut from; default: the bundled nuclei image (models with one
            input channel). Its top-left corner, of the valid input size
            nearest 256 pixels per axis, is the test input; the test output
            is the network's output on it after the package's own
            pre-processing, so any consumer can reproduce it.
        name, description: default: the model's metadata.
        authors: names (or ``{"name": ..., "affiliation": ...}``); default
            the unet_rt contributors.
        license: an SPDX licence identifier for the weights (default MIT).
        tags: extra tags (``"unet"``, ``"segmentation"`` and the model's
            dimensionality are always there).
        documentation: Markdown text for the package's documentation;
            default: generated from the metadata (training, held-out scores,
            usage).

    Returns:
        ``path``, as a :class:`pathlib.Path`.

    Raises:
        InvalidArgumentError: an argument the package cannot take, named in
            the message: a licence that is no SPDX identifier, a target
            that does not end in ``.zip``, an empty name, a test image
            smaller than the model takes.
        TypeError: an argument of the wrong type (``authors`` as one
            string rather than a list).
        PackageError: the package did not pass ``bioimageio.spec``'s
            validation (the message carries the validator's summary).

    Example:

        >>> import unet_rt, unet_rt.bioimageio
        >>> pkg = unet_rt.bioimageio.export(None, getfixture("tmp_path") / "nuclei.zip")
        >>> unet_rt.Model(pkg, device="cpu").classes
        ['background', 'nucleus', 'boundary']
    """
    from .model import Model

    for argument, value in (("authors", authors), ("tags", tags)):
        # A string is a sequence too: "Jane Doe" made eight authors.
        if isinstance(value, (str, bytes)) or (value is not None and not isinstance(value, Sequence)):
            raise TypeError(f"{argument} must be a list, got {type(value).__name__} (e.g. [{value!r}])")
    # An empty name fell back to the model's, and an empty author was
    # written as one.
    for argument, value in (("name", name), ("description", description)):
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise InvalidArgumentError(f"invalid {argument}: {value!r}; give some text, or None for the model's own")
    for author in authors or ():
        named = author.get("name") if isinstance(author, dict) else author
        if not (isinstance(named, str) and named.strip()):
            raise InvalidArgumentError(f"invalid authors: {author!r} has no name")
    spec = _spec()
    _check_license(license)
    if not isinstance(model, Model):
        model = Model(model, device="cpu", precision="fp32")
    target = Path(os.fspath(path))
    if target.suffix.lower() != ".zip":
        raise InvalidArgumentError(f"invalid path: {target}; a bioimage.io package is a .zip file")
    meta = model.metadata or {}
    name = name or str(meta.get("name") or Path(model.path).stem or "unet_rt model")
    with quiet_leaks(), tempfile.TemporaryDirectory(prefix="unet_rt_bioimageio_") as tmp:
        try:
            _write_package(spec, model, Path(tmp), target, test_image, name, description, authors, license, tags,
                           documentation)
            return target
        except PackageError as e:
            message = str(e)
    raise PackageError(message)  # without the validator's frames (see read_package)


def _write_package(spec: Any, model: Any, folder: Path, target: Path, test_image: Optional[np.ndarray], name: str,
                   description: Optional[str], authors: Any, license: str, tags: Any,
                   documentation: Optional[str]) -> None:
    """Writes the package's files into ``folder``, validates them, zips them
    to ``target`` (a function of its own: what the validator keeps open
    dies with its frame, before :func:`quiet_leaks` collects it)."""
    from .model import Model

    info = model.info
    meta = model.metadata or {}
    if info.get("output_key") is not None:
        # bioimage.io's TorchScript weights return the tensor: a package of
        # a network returning a dict or tuple validated, then every
        # consumer's prediction failed ("'dict' object has no attribute 'shape'").
        raise InvalidArgumentError(
            f"invalid model: its network returns a dict or tuple (the segmentation under {info['output_key']!r}), "
            "and bioimage.io's TorchScript weights must return the tensor: export a module whose forward returns "
            f"net(x)[{info['output_key']!r}]"
        )
    # The TorchScript archive itself: a model loaded from a package is the
    # archive inside it (the package's zip was written as the weights).
    if isinstance(model._source, bytes):
        archive = model._source
    elif is_package(model._source):
        archive = read_package(model._source).archive
    else:
        archive = Path(model._source).read_bytes()
    (folder / "weights.pt").write_bytes(archive)
    if model.precision != "fp32":
        # The test output is the float32 network's (a bf16 model's failed
        # bioimageio.core's test on 7.5% of its elements).
        model = Model.from_bytes(archive, device="cpu", precision="fp32", name=model.path)
    raw = _test_input(model, test_image)
    normalized = _normalize_like_bioimageio(raw, meta.get("normalization") or {"kind": "none"})
    output = model.forward(normalized[None])
    output = _postprocess(output, info["output"])
    np.save(folder / "test_input.npy", raw[None].astype(np.float32))
    np.save(folder / "test_output.npy", output.astype(np.float32))
    labels = np.argmax(output[0], axis=0) if output.shape[1] > 1 else (output[0, 0] > 0.5)
    _write_png(folder / "cover.png", _cover(raw, labels))
    (folder / "README.md").write_text(documentation or _documentation(name, model, meta), encoding="utf-8")
    rdf = _rdf(model, name, description or meta.get("description") or f"{name}: a U-Net segmentation model",
               authors, license, tags)
    (folder / "rdf.yaml").write_text(json.dumps(rdf, indent=2), encoding="utf-8")  # JSON is YAML
    descr = spec.load_description(folder / "rdf.yaml", perform_io_checks=True)
    _raise_if_invalid(descr, "the exported package")
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        spec.save_bioimageio_package(descr, output_path=partial)
        os.replace(partial, target)
    except OSError as e:
        # Named as the caller named it: the error was of our temporary
        # (".partial"), in Python's "[Errno 2]" words.
        raise InvalidArgumentError(f"invalid path: cannot write {target}: {e.strerror or e}") from e
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass  # a parent that is a file: the error above says so


def _raise_if_invalid(descr: Any, what: str) -> None:
    """Raises a PackageError with the validator's report for ``what`` (the
    package's path, or a description of it)."""
    summary = getattr(descr, "validation_summary", None)
    if type(descr).__name__ == "InvalidDescr" or (summary is not None and summary.status == "failed"):
        text = summary.format() if summary is not None and hasattr(summary, "format") else str(summary)
        raise PackageError(f"{what}: not a valid bioimage.io package:\n{text}")


def _valid_size(info: Dict[str, Any], axis: int, want: int, have: int) -> int:
    fixed = info.get("fixed_size")
    if fixed is not None:
        return int(fixed[axis] if isinstance(fixed, (list, tuple)) else fixed)
    step = _per_axis(info["size_multiple"], axis)
    smallest = int(info["smallest_size"])
    if have < smallest:
        raise InvalidArgumentError(f"invalid test_image: {have} pixels along an axis, the model needs at least {smallest}")
    size = smallest + step * max(0, (min(want, have) - smallest) // step)
    return size


def _per_axis(value: Any, axis: int) -> int:
    return int(value[axis] if isinstance(value, (list, tuple)) else value)


def _test_input(model: Any, test_image: Optional[np.ndarray]) -> np.ndarray:
    """The test input ``(C, spatial...)`` as float32: the top-left corner of
    the test image, of the valid size nearest 256 pixels per axis."""
    from ._axes import arrange

    info = model.info
    dims, channels = int(info["spatial_dims"]), int(info["in_channels"])
    if test_image is None:
        if dims != 2 or channels != 1:
            raise InvalidArgumentError(
                f"invalid test_image: none given, and the bundled nuclei image fits 2-D models with one input channel; "
                f"this model is {dims}-D with {channels}: pass an image"
            )
        from .data import nuclei

        test_image = nuclei()
    kind = np.asarray(test_image).dtype.kind
    if kind not in "uif":
        # A complex image lost its imaginary part, a boolean one was taken
        # as 0 and 1, without a word.
        raise InvalidArgumentError(
            f"invalid test_image: dtype {np.asarray(test_image).dtype}; pass an image of integers or floats"
        )
    try:
        view, batched, _ = arrange(np.asarray(test_image), None, dims, channels)
    except InvalidArgumentError:
        # arrange's advice names axes=, which export does not take.
        axes = ("c" if channels > 1 else "") + "zyx"[3 - dims:]
        raise InvalidArgumentError(
            f"invalid test_image: an array of shape {list(np.shape(test_image))} is not an image for this {dims}-D "
            f"model with {channels} input channel(s): pass one with axes {axes}"
        ) from None
    image = view[0]
    sizes = [_valid_size(info, a, 256 if dims == 2 else 64, n) for a, n in enumerate(image.shape[1:])]
    crop = np.ascontiguousarray(image[(slice(None),) + tuple(slice(0, s) for s in sizes)], dtype=np.float32)
    if not np.isfinite(crop).all():
        # The network's input check said "invalid batch", an argument of no call here.
        raise InvalidArgumentError("invalid test_image: its test input holds NaN or infinity; pass a finite image")
    return crop


def _normalize_like_bioimageio(image: np.ndarray, norm: Dict[str, Any]) -> np.ndarray:
    """The package's pre-processing, computed as bioimage.io consumers do."""
    kind = norm.get("kind", "none")
    x = image.astype(np.float64)
    if kind == "percentile":
        lo, hi = np.percentile(x, [float(norm["low"]), float(norm["high"])])
        x = (x - lo) / (hi - lo + 1e-6)
    elif kind == "zscore":
        x = (x - float(norm["mean"])) / (float(norm["std"]) + 1e-6)
    elif kind == "scale":
        x = x * float(norm["factor"])
    return x.astype(np.float32)


def _postprocess(output: np.ndarray, kind: str) -> np.ndarray:
    x = output.astype(np.float64)
    if kind == "softmax":
        x = np.exp(x - x.max(axis=1, keepdims=True))
        x /= x.sum(axis=1, keepdims=True)
    elif kind == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-x))
    return x.astype(np.float32)


def _preprocessing(norm: Dict[str, Any], axes: List[str]) -> List[Dict[str, Any]]:
    kind = norm.get("kind", "none")
    steps: List[Dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if kind == "percentile":
        # unet_rt's percentiles are those of the whole image, all channels.
        steps.append({"id": "scale_range", "kwargs": {
            "axes": axes, "min_percentile": float(norm["low"]), "max_percentile": float(norm["high"]), "eps": 1e-6}})
    elif kind == "zscore":
        # Consumers divide by std + 1e-6 (unet_rt by std): a 1e-6 relative difference.
        steps.append({"id": "fixed_zero_mean_unit_variance", "kwargs": {
            "mean": float(norm["mean"]), "std": float(norm["std"])}})
    elif kind == "scale":
        steps.append({"id": "scale_linear", "kwargs": {"gain": float(norm["factor"]), "offset": 0.0}})
    return steps


def _rdf(model: Any, name: str, description: str, authors: Any, license: str, tags: Any) -> Dict[str, Any]:
    info = model.info
    meta = model.metadata or {}
    dims = int(info["spatial_dims"])
    space = list(_SPACE[-dims:])
    halo = int(info["halo"])
    valid = info["padding"] == "valid"
    fixed = info.get("fixed_size")

    def input_size(axis: int) -> Any:
        if fixed is not None:
            return _per_axis(fixed, axis)
        smallest, step = int(info["smallest_size"]), _per_axis(info["size_multiple"], axis)
        if not valid and smallest <= 2 * halo:
            # The spec wants outputs larger than their halo on both sides.
            smallest += step * ((2 * halo + 1 - smallest + step - 1) // step)
        return {"min": smallest, "step": step}

    in_axes: List[Dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": [f"channel{i}" for i in range(int(info["in_channels"]))]},
    ] + [{"type": "space", "id": a, "size": input_size(i)} for i, a in enumerate(space)]
    out_axes: List[Dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": _channel_names(model)}]
    for a in space:
        ref = {"tensor_id": _INPUT_ID, "axis_id": a, "offset": -2 * halo if valid else 0}
        axis: Dict[str, Any] = {"type": "space", "id": a, "size": ref}
        if not valid and halo:
            axis["halo"] = halo
        out_axes.append(axis)
    post = {"softmax": [{"id": "softmax", "kwargs": {"axis": "channel"}}], "sigmoid": [{"id": "sigmoid"}]}.get(
        info["output"], [])
    out_id = "probabilities" if post else "prediction"
    people = [{"name": a} if isinstance(a, str) else dict(a) for a in (authors or ["unet_rt contributors"])]
    config_meta = dict(meta)
    config_meta.pop("training", None)  # provenance stays in the weights' own metadata
    config_meta.pop("evaluation", None)
    return {
        "type": "model",
        "format_version": "0.5.4",
        "name": _package_name(name),
        "description": description[:1000],
        "authors": people,
        "cite": [UNET_CITATION],
        "license": license,
        "tags": sorted({"unet", "segmentation", f"{dims}d", "pytorch", "torchscript", "unet_rt", *(tags or [])}),
        "documentation": "README.md",
        "covers": ["cover.png"],
        "inputs": [{
            "id": _INPUT_ID,
            "description": "the image, its channels first",
            "axes": in_axes,
            "test_tensor": {"source": "test_input.npy"},
            "data": {"type": "float32"},
            "preprocessing": _preprocessing(meta.get("normalization") or {"kind": "none"}, ["channel"] + space),
            # The runtime mirrors without repeating the edge (NumPy's
            # "reflect"); bioimageio.core padded a same-padded model's halo
            # by repeating it ("symmetric"): the border band differed by up
            # to 0.4 in probability.
            **({} if valid else {"pad": {"mode": "reflect"}}),
        }],
        "outputs": [{
            "id": out_id,
            "description": f"per-class {'probabilities' if post else 'network outputs'}"
                           + (f"; {2 * halo} pixels smaller than the input per axis (valid convolutions)" if valid else ""),
            "axes": out_axes,
            "test_tensor": {"source": "test_output.npy"},
            "data": {"type": "float32"},
            "postprocessing": post,
        }],
        "weights": {"torchscript": {"source": "weights.pt", "pytorch_version": _torch_version()}},
        "config": {"unet_rt": config_meta},
    }


def _package_name(name: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    cleaned = "".join(c if c in allowed else " " for c in name).strip()
    if len(cleaned) < 5:
        # The spec wants 5 characters at least: a training run's default
        # name, "unet", failed validation.
        cleaned = f"{cleaned} model".strip() if cleaned else "unet_rt model"
    return cleaned[:128]


def _channel_names(model: Any) -> List[str]:
    names = [str(c) for c in model.classes]
    # Channel names are identifiers in the spec: no spaces.
    ids = [n.replace(" ", "_") or f"class{i}" for i, n in enumerate(names)]
    # "cell a" and "cell_a" became one name twice, which validation took.
    return [n if ids.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(ids)]


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _documentation(name: str, model: Any, meta: Dict[str, Any]) -> str:
    info = model.info
    lines = [f"# {name}", "", str(meta.get("description") or "A U-Net segmentation model."), ""]
    lines += [
        "## Inputs and outputs", "",
        f"- input `{_INPUT_ID}`: batch, {info['in_channels']} channel(s), {info['spatial_dims']}-D image; "
        f"valid sizes {info['smallest_size']} + k * {info['size_multiple']} pixels per axis",
        f"- output: {info['out_channels']} channels ({', '.join(map(str, model.classes))}), after {info['output']}",
        f"- {'valid' if info['padding'] == 'valid' else 'same'} padding, halo {info['halo']} pixels per side",
        "",
    ]
    held = (meta.get("training") or {}).get("held_out") or {}
    if held:
        lines += ["## Held-out scores", ""]
        lines += [f"- {k}: {v}" for k, v in held.items() if isinstance(v, (int, float))]
        lines.append("")
    lines += [
        "## Usage", "",
        "With unet_rt (exact overlap-tile inference on images of any size):", "",
        "```python", "import unet_rt", "model = unet_rt.Model(\"package.zip\")", "labels = model.segment(image)", "```", "",
        "## Citation", "", f"{UNET_CITATION['text']}, doi:{UNET_CITATION['doi']}", "",
    ]
    return "\n".join(lines)


def _cover(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The cover: the test input beside its segmentation's outlines over it
    (2:1, as the zoo shows covers), RGB uint8."""
    plane = image[0]
    while plane.ndim > 2:
        plane = plane[plane.shape[0] // 2]
    lab = labels
    while lab.ndim > 2:
        lab = lab[lab.shape[0] // 2]
    crop = (plane.shape[0] - lab.shape[0]) // 2, (plane.shape[1] - lab.shape[1]) // 2
    plane = plane[crop[0]: crop[0] + lab.shape[0], crop[1]: crop[1] + lab.shape[1]]
    lo, hi = np.percentile(plane, [1, 99.8])
    gray = (np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    edge = np.zeros(lab.shape, bool)
    edge[1:] |= lab[1:] != lab[:-1]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    overlay = rgb.copy()
    overlay[edge] = (255, 200, 0)
    return np.concatenate([rgb, overlay], axis=1)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
                     + chunk(b"IEND", b""))


# --- import -------------------------------------------------------------------


def is_package(path: PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a ``.zip`` holding an
    ``rdf.yaml`` (or ``bioimageio.yaml``), such a folder, or the YAML file.

    >>> is_package(tiny_model_path), is_package("x" * 5000)
    (False, False)

    Never raises: a path the file system refuses (too long, no permission)
    is not a package, nor is anything that is no ``str`` path (``None``,
    ``bytes``, a number); the model loader reports either.
    """
    try:
        return _is_package(Path(os.fspath(path)))
    except (OSError, ValueError, TypeError):
        return False


def _is_package(p: Path) -> bool:
    if p.is_dir():
        return any((p / n).is_file() for n in _RDF_NAMES)
    if p.name in _RDF_NAMES or p.name.endswith(".bioimageio.yaml"):
        return p.is_file()
    if p.suffix.lower() == ".zip" and p.is_file():
        try:
            with zipfile.ZipFile(p) as z:
                return any(n in z.namelist() for n in _RDF_NAMES)
        except zipfile.BadZipFile:
            return False
    return False


@dataclass(frozen=True)
class Package:
    """A bioimage.io package as the engine runs it: the TorchScript weights
    with ``unet_rt/1`` metadata derived from the package description, and
    the package's test tensors."""

    #: The TorchScript archive, with the derived metadata embedded.
    archive: bytes
    #: The derived ``unet_rt/1`` metadata.
    metadata: Dict[str, Any]
    #: The package's test input and output tensors (as the package stores them).
    test_input: np.ndarray
    test_output: np.ndarray


def read_package(path: PathLike) -> Package:
    """Reads a bioimage.io package (format 0.4 or 0.5, updated to 0.5 by
    ``bioimageio.spec``) with TorchScript weights, for the engine.

    Raises:
        PackageError: the description is invalid, has no TorchScript
            weights, or asks for axes, sizes or a processing step the engine
            cannot run (the message names it).
    """
    spec = _spec()
    source = Path(os.fspath(path))
    with quiet_leaks():
        try:
            return _package(spec, source)
        except PackageError as e:
            message = str(e)
        except Exception as e:  # noqa: BLE001 - the spec raises what its parsers raise
            # An empty rdf.yaml is a ValueError there, a missing file a
            # TypeError: whatever the library raises, the package is broken.
            message = f"{source}: cannot read the package: {type(e).__name__}: {e}"
    # Raised here, without the library's traceback: its frames hold the
    # files it left open, which quiet_leaks has just closed.
    raise PackageError(message)


def _package(spec: Any, source: Path) -> Package:
    check_description(source, list(_RDF_NAMES))
    descr = spec.load_description(source, perform_io_checks=False, format_version="latest")
    _raise_if_invalid(descr, str(source))
    if type(descr).__name__ != "ModelDescr":
        raise PackageError(f"{source}: a bioimage.io {getattr(descr, 'type', 'resource')} description, not a model")
    weights = getattr(descr.weights, "torchscript", None)
    if weights is None:
        available = [k for k in type(descr.weights).model_fields if getattr(descr.weights, k, None) is not None]
        raise PackageError(f"{source}: unet_rt runs TorchScript weights; this package has {', '.join(available)}")
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise PackageError(f"{source}: unet_rt runs models with one input and one output tensor; this package has "
                           f"{len(descr.inputs)} and {len(descr.outputs)}")
    meta = _metadata(descr, source)
    archive = _with_metadata(read_referenced(source, weights.source, "weights"), meta, source)
    test_in = _test_tensor(source, descr.inputs[0].test_tensor.source, "test input")
    test_out = _test_tensor(source, descr.outputs[0].test_tensor.source, "test output")
    return Package(archive, meta, test_in, test_out)


def _test_tensor(source: Path, reference: Any, what: str) -> np.ndarray:
    data = read_referenced(source, reference, what)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise PackageError(f"{source}: {what} is not a NumPy .npy file: {e}") from None


def _axis_kind(axis: Any) -> str:
    return str(getattr(axis, "type", ""))


def _metadata(descr: Any, source: Path) -> Dict[str, Any]:
    """``unet_rt/1`` metadata from a package description."""
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes, out_axes = list(inp.axes), list(out.axes)
    in_kinds = [_axis_kind(a) for a in in_axes]
    space_ids = [str(a.id) for a in in_axes if _axis_kind(a) == "space"]
    dims = len(space_ids)
    expected = ["batch", "channel"] + ["space"] * dims
    if in_kinds != expected or dims not in (2, 3) or [str(a.id) for a in in_axes[2:]] != list(_SPACE[-dims:]):
        order = ",".join(str(a.id) for a in in_axes)
        raise PackageError(f"{source}: input axes ({order}) are not supported; unet_rt runs batch, channel, "
                           f"{'z, ' if dims == 3 else ''}y, x")
    out_kinds = [_axis_kind(a) for a in out_axes]
    if out_kinds[:2] != ["batch", "channel"] or [str(a.id) for a in out_axes[2:]] != space_ids:
        order = ",".join(str(a.id) for a in out_axes)
        raise PackageError(f"{source}: output axes ({order}) are not supported; unet_rt needs batch, channel and "
                           f"the input's space axes")
    in_channels = len(in_axes[1].channel_names)
    class_names = [str(c) for c in out_axes[1].channel_names]
    # Sizes: min + n * step, or fixed.
    minimum, steps, fixed = [], [], []
    for a in in_axes[2:]:
        size = a.size
        if isinstance(size, int):
            fixed.append(int(size))
        elif hasattr(size, "step"):
            minimum.append(int(size.min))
            steps.append(int(size.step))
        else:
            raise PackageError(f"{source}: input axis {a.id}: size {size!r} is not supported (a fixed size or min + n * step)")
    meta: Dict[str, Any] = {
        "format": "unet_rt/1",
        "name": str(descr.name),
        "description": str(descr.description)[:2000],
        "architecture": "bioimage.io package",
        "spatial_dims": dims,
        "in_channels": in_channels,
        "out_channels": len(class_names),
        "class_names": class_names,
    }
    if fixed and (minimum or len(set(fixed)) > 1):
        raise PackageError(f"{source}: input sizes mix fixed and parameterized axes ({[a.size for a in in_axes[2:]]})")
    offsets, halos = [], []
    for a in out_axes[2:]:
        size = a.size
        if hasattr(size, "tensor_id"):
            if str(size.tensor_id) != str(inp.id) or str(size.axis_id) != str(a.id):
                raise PackageError(f"{source}: output axis {a.id} refers to {size.tensor_id}.{size.axis_id}; unet_rt needs "
                                   f"the input's own {a.id}")
            offsets.append(int(size.offset))
        elif isinstance(size, int) and fixed:
            offsets.append(int(size) - fixed[0])
        else:
            raise PackageError(f"{source}: output axis {a.id}: size {size!r} is not supported (a reference to the input)")
        halos.append(int(getattr(a, "halo", 0) or 0))
    if len(set(offsets)) > 1 or offsets[0] > 0 or offsets[0] % 2:
        raise PackageError(f"{source}: output sizes differ from the input by {offsets}; unet_rt needs the same even "
                           f"crop on every axis")
    crop = -offsets[0] // 2
    if crop:
        meta.update(padding="valid", halo=crop)
    else:
        meta.update(padding="same", halo=max(halos))
    if fixed:
        meta.update(fixed_size=fixed[0], size_multiple=1, size_offset=0)
    else:
        step = math.lcm(*steps)
        meta.update(size_multiple=steps if len(set(steps)) > 1 else steps[0], size_offset=minimum[0] % step,
                    min_size=max(minimum))
    meta["normalization"] = _normalization(inp.preprocessing, source, in_axes, _data_types(inp))
    meta["output"] = _output(out.postprocessing, source)
    own = ((descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config)) or {}).get("unet_rt")
    if isinstance(own, dict):
        # "verified" holds only while its geometry and weights still match.
        for key in ("instances", "object_size", "class_names", "verified"):
            if key in own:
                meta[key] = own[key]
        # A network that returns probabilities itself has no postprocessing
        # step to say so: its own description does.
        if own.get("output") in ("probabilities", "masks") and meta["output"] == "identity":
            meta["output"] = own["output"]
    return meta


def _step_id(step: Any) -> str:
    return str(getattr(step, "id", type(step).__name__))


def _data_types(tensor: Any) -> Set[str]:
    """The element types a tensor description declares (one per channel
    where the spec lists several)."""
    data = getattr(tensor, "data", None)
    return {str(getattr(d, "type", "")) for d in (data if isinstance(data, (list, tuple)) else [data])}


def _normalization(steps: Sequence[Any], source: Path, in_axes: Sequence[Any],
                   in_types: Set[str]) -> Dict[str, Any]:
    norm: Dict[str, Any] = {"kind": "none"}
    for step in steps:
        sid = _step_id(step)
        kw = step.kwargs
        if sid == "ensure_dtype":
            dtype = str(kw.dtype)
            # The engine feeds the network float32; a cast to a float type
            # keeps the values, and so does one to the input's own type.
            if dtype.startswith("float") or (norm["kind"] == "none" and in_types == {dtype}):
                continue
            # Skipped, a cast to uint8 after scale_range (values in 0..1)
            # would have fed the network what other tools binarize.
            where = f"after {norm['kind']!r} normalization" if norm["kind"] != "none" else \
                f"of {'/'.join(sorted(in_types))} input"
            raise PackageError(f"{source}: preprocessing step 'ensure_dtype' to {dtype} {where} rounds the values "
                               f"the network is given: unet_rt feeds it float32 and casts nothing between steps")
        if norm["kind"] != "none":
            raise PackageError(f"{source}: preprocessing step {sid!r} after {norm['kind']!r}: unet_rt runs one normalization")
        if sid == "scale_range":
            axes = None if kw.axes is None else {str(a) for a in kw.axes}
            whole = {str(a.id) for a in in_axes if _axis_kind(a) != "batch"}
            if axes is not None and axes != whole and not (axes == whole - {"channel"} and len(in_axes[1].channel_names) == 1):
                raise PackageError(f"{source}: preprocessing step 'scale_range' over axes {sorted(axes)}: unet_rt "
                                   f"computes percentiles over the whole image ({sorted(whole)})")
            if kw.reference_tensor is not None:
                raise PackageError(f"{source}: preprocessing step 'scale_range' with a reference tensor is not supported")
            norm = {"kind": "percentile", "low": float(kw.min_percentile), "high": float(kw.max_percentile)}
        elif sid == "fixed_zero_mean_unit_variance":
            mean, std = _one_value(getattr(kw, "mean", None)), _one_value(getattr(kw, "std", None))
            if mean is None or std is None:
                raise PackageError(f"{source}: preprocessing step {sid!r} with different values per channel is not "
                                   f"supported (unet_rt normalizes every channel alike)")
            norm = {"kind": "zscore", "mean": mean, "std": std}
        elif sid == "scale_linear":
            gain, offset = kw.gain, kw.offset
            if isinstance(gain, (list, tuple)) or isinstance(offset, (list, tuple)) or float(offset) != 0.0:
                raise PackageError(f"{source}: preprocessing step 'scale_linear' with an offset or per-channel gain is "
                                   f"not supported")
            norm = {"kind": "scale", "factor": float(gain)}
        else:
            raise PackageError(f"{source}: preprocessing step {sid!r} is not supported by unet_rt (it runs "
                               f"scale_range, fixed_zero_mean_unit_variance, scale_linear and ensure_dtype)")
    return norm


def _one_value(value: Any) -> Optional[float]:
    """A number, or a per-channel list of one repeated number (what the
    spec makes of format 0.4's per-channel fixed values); else ``None``."""
    if isinstance(value, (int, float)):
        return float(value)
    values = {float(v) for v in (value or [])}
    return values.pop() if len(values) == 1 else None


def _output(steps: Sequence[Any], source: Path) -> str:
    kinds = [s for s in (_step_id(x) for x in steps) if s != "ensure_dtype"]
    if not kinds:
        return "identity"
    if len(kinds) == 1 and kinds[0] in ("softmax", "sigmoid"):
        if kinds[0] == "softmax" and str(steps[[_step_id(x) for x in steps].index("softmax")].kwargs.axis) != "channel":
            raise PackageError(f"{source}: postprocessing step 'softmax' over an axis other than channel is not supported")
        return kinds[0]
    raise PackageError(f"{source}: postprocessing steps {kinds} are not supported by unet_rt (it runs one softmax or "
                       f"sigmoid over the channels)")


def _with_metadata(archive: bytes, meta: Dict[str, Any], source: Path) -> bytes:
    """The TorchScript archive with ``extra/unet_rt.json`` set to ``meta``
    (replacing the one a unet_rt export carries)."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            infos = z.infolist()
            check_memory(source, "the TorchScript weights", _LOAD_COPIES * sum(i.file_size for i in infos))
            names = [i.filename for i in infos]
            prefix = names[0].split("/", 1)[0] if names and "/" in names[0] else "archive"
            target = f"{prefix}/extra/unet_rt.json"
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
                for info in infos:
                    if info.filename != target:
                        _copy_record(z, info, w)
                w.writestr(target, json.dumps(meta), compress_type=zipfile.ZIP_STORED)
            # The buffer, not a copy of it: nothing else refers to it.
            return out.getvalue()
    except zipfile.BadZipFile as e:
        raise PackageError(f"{source}: the TorchScript weights are not a TorchScript archive (zip): {e}") from e
    except (OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise PackageError(f"{source}: cannot read the TorchScript weights: {type(e).__name__}: {e}") from e


def _copy_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: zipfile.ZipFile) -> None:
    """Record ``info`` of ``archive`` stored into ``out``, a megabyte at a
    time (``ZipFile.read`` held each record whole beside the archive)."""
    stored = zipfile.ZipInfo(info.filename, info.date_time)
    stored.compress_type = zipfile.ZIP_STORED
    stored.external_attr = info.external_attr
    stored.file_size = info.file_size
    with archive.open(info) as src, out.open(stored, "w") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def check(path: PathLike, device: str = "cpu") -> Dict[str, float]:
    """Runs a package's test input through the package as unet_rt loads it
    (the package's pre-processing, one forward pass of the TorchScript
    weights in unet_rt's libtorch, the post-processing) and compares the
    result with the package's test output: ``{"max_abs_difference": ...,
    "label_agreement": ...}``.

    A valid-padded network's output depends on where its pooling grid
    starts; :meth:`unet_rt.Model.segment` starts it where overlap-tiling
    with mirrored borders does (``halo`` pixels before the image), so on the
    test input it agrees with this check only where the phase matches. To
    compare with a consumer's whole-image prediction, give the consumer
    the mirror-padded image (``numpy.pad(image, halo, "reflect")``).

    >>> import unet_rt.bioimageio as bio
    >>> pkg = bio.export(None, getfixture("tmp_path") / "nuclei.zip")
    >>> result = bio.check(pkg)
    >>> result["label_agreement"], result["max_abs_difference"] < 1e-4
    (1.0, True)
    """
    from .model import Model

    package = read_package(path)
    meta = package.metadata
    # The package read once: its weights with the derived metadata.
    model = Model.from_bytes(package.archive, device=device, precision="fp32", name=os.fspath(path))
    image = np.asarray(package.test_input, dtype=np.float32)
    got = _postprocess(model.forward(_normalize_like_bioimageio(image, meta["normalization"])), meta["output"])
    want = np.asarray(package.test_output, dtype=np.float32)
    if not np.isfinite(want).all():
        # Every comparison with NaN is false: such a package "passed".
        raise PackageError(f"{path}: the package's test output holds NaN or infinite values")
    if got.shape != want.shape:
        raise PackageError(f"{path}: the test output has shape {want.shape}, unet_rt computes {got.shape}")
    return {"max_abs_difference": float(np.max(np.abs(got - want))), "label_agreement": _agreement(got, want)}


def package_output_scale(path: Any) -> float:
    """The largest magnitude of a package's test output (at least 1)."""
    return max(1.0, float(np.max(np.abs(np.asarray(read_package(path).test_output, dtype=np.float32)))))


def reproduces(result: Dict[str, float], scale: float = 1.0) -> bool:
    """Whether :func:`check`'s ``result`` reproduces the package: outputs
    within 1e-3, or labels that all agree with outputs within 5% of the
    output's ``scale`` (a package whose probabilities were halved kept every
    label and passed).

    >>> reproduces({"max_abs_difference": 0.486, "label_agreement": 1.0})
    False
    >>> reproduces({"max_abs_difference": 0.004, "label_agreement": 1.0})
    True
    """
    difference, agreement = result["max_abs_difference"], result["label_agreement"]
    return difference <= 1e-3 or (agreement == 1.0 and difference <= 0.05 * scale)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pixels whose label (argmax over channels, or > 0.5
    for one channel) agrees; channels on axis 1."""
    if a.shape[1] > 1:
        return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return float(np.mean((a > 0.5) == (b > 0.5)))


# --- command line -----------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m unet_rt.bioimageio export MODEL -o PKG.zip`` and
    ``python -m unet_rt.bioimageio check PKG``; returns the exit status
    (0 done, 1 failure, 2 usage)."""
    import argparse
    import sys

    from .errors import MetadataError, ModelError, ModelNotFoundError, UnetRtError

    parser = argparse.ArgumentParser(prog="python -m unet_rt.bioimageio",
                                     description="bioimage.io model packages: export unet_rt models, check packages.")
    commands = parser.add_subparsers(dest="command", required=True)
    exp = commands.add_parser("export", help="write a model as a validated bioimage.io package (.zip)")
    exp.add_argument("model", nargs="?", default=None, help="model file (.pt) or package; default: the bundled model")
    exp.add_argument("--output", "-o", required=True, help="the package to write (.zip)")
    exp.add_argument("--name", default=None)
    exp.add_argument("--author", action="append", default=None, help="an author's name (repeatable)")
    exp.add_argument("--license", default="MIT", help="SPDX licence identifier of the weights (default MIT)")
    exp.add_argument("--test-image", default=None, help="image (.npy, or .tif with tifffile) to cut the test input from")
    chk = commands.add_parser("check", help="run a package's test input through unet_rt and compare with its test output")
    chk.add_argument("package")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            image = None
            if args.test_image:
                image = _read_test_image(args.test_image)
            path = export(args.model, args.output, test_image=image, name=args.name, authors=args.author,
                          license=args.license)
            print(f"{path}: bioimage.io package, validated")
        else:
            result = check(args.package)
            print(f"{args.package}: max |difference| {result['max_abs_difference']:.3g}, "
                  f"label agreement {result['label_agreement']:.6f}")
            if not reproduces(result, package_output_scale(args.package)):
                return 1
    except (InvalidArgumentError, ModelNotFoundError, ModelError, MetadataError) as e:
        # What the command line must change (as unet-rt segment's usage errors),
        # named by its flag.
        message = str(e)
        for argument, flag in (("path", "--output"), ("license", "--license"), ("authors", "--author"),
                               ("name", "--name"), ("test_image", "--test-image")):
            if message.startswith(f"invalid {argument}:"):
                message = f"invalid {flag}:" + message[len(f"invalid {argument}:"):]
        print(f"unet_rt.bioimageio: error: {message}", file=sys.stderr)
        return 2
    except (UnetRtError, OSError) as e:
        print(f"unet_rt.bioimageio: error: {e}", file=sys.stderr)
        return 1
    return 0


def _read_test_image(path: str) -> np.ndarray:
    """The ``--test-image`` file: ``.npy``, else TIFF. Special files (a FIFO
    would block for ever) and files neither reader takes are
    :class:`~unet_rt.InvalidArgumentError` naming the option."""
    import stat

    import tifffile

    try:
        kind = os.stat(path).st_mode
    except OSError as e:
        raise InvalidArgumentError(f"invalid --test-image: {path}: {e.strerror}") from e
    if not stat.S_ISREG(kind):
        raise InvalidArgumentError(f"invalid --test-image: {path} is not a regular file")
    try:
        return np.load(path, allow_pickle=False) if path.endswith(".npy") else tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - the readers raise what their parsers raise
        raise InvalidArgumentError(f"invalid --test-image: {path} cannot be read ({type(e).__name__}: {e})") from e


if __name__ == "__main__":
    import sys

    sys.exit(main())
