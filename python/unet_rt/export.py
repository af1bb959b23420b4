"""Write any TorchScript network with the ``unet_rt/1`` metadata.

The metadata is stored as the extra file ``unet_rt.json`` inside the archive
(``extra/unet_rt.json`` in its zip), where the runtime reads it without
loading the network. A network with metadata loads without probing, tiles
at the geometry it declares, and carries its class names and normalization.

A network scripted or traced by its author (FCN, SegNet, pix2pix,
torchvision, MONAI ...)::

    python -m unet_rt.export their_model.pt -o model.pt --class-names background,cell

is probed the way the runtime probes it, the flags go on top, and the result
is verified against the network (:func:`verify_metadata`) before it is
written. A network too slow to probe (the runtime gives up after a minute)
is exported with its geometry declared, which skips probing::

    python -m unet_rt.export big.pt -o model.pt --padding same --halo 96 --size-multiple 32

From Python, :func:`export_torchscript` takes an eager module (scripted, or
traced with ``example=``) or a compiled one, and :func:`export_module_file`
a TorchScript file. The repository's ``training/export.py`` adds training
checkpoints (their provenance and held-out metrics) on top of this module.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .errors import MetadataError, ModelError, ModelNotFoundError, UnetRtError

__all__ = [
    "FORMAT",
    "METADATA_ENTRY",
    "GEOMETRY_FIELDS",
    "ExportMismatchError",
    "ExportGeometryError",
    "export_torchscript",
    "export_module_file",
    "probe_metadata",
    "declared_metadata",
    "check_overrides",
    "METADATA_FIELDS",
    "verify_metadata",
    "weights_digest",
    "code_digest",
    "read_metadata",
    "add_torchscript_flags",
    "declared_flags",
    "class_names_flag",
    "torchscript_overrides",
    "run_export",
    "main",
]

FORMAT = "unet_rt/1"
METADATA_ENTRY = "unet_rt.json"


#: Told each step of an export before it runs (a line for a person).
Progress = Callable[[str], None]


def _silent(step: str) -> None:
    """The progress of a call that was given none."""


class ExportMismatchError(UnetRtError, RuntimeError):
    """The TorchScript module disagrees with the eager model (a
    :class:`unet_rt.UnetRtError`, and a ``RuntimeError`` as it always was)."""


class ExportGeometryError(MetadataError, ValueError):
    """The metadata declares a geometry the network does not have, or is no
    valid metadata (a :class:`unet_rt.MetadataError`, and a ``ValueError``
    as it always was)."""


def _geometry_field(metadata: Dict[str, Any], field: str, least: int = 0) -> int:
    """``metadata[field]`` (0 where absent), an integer from ``least`` to
    the runtime's ``MAX_GEOMETRY``: a ``size_multiple`` of 0 looped forever
    looking for a size, and a halo of 10^30 for 10^30 steps."""
    from ._unet_rt import MAX_GEOMETRY

    value = metadata.get(field, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_GEOMETRY:
        raise ExportGeometryError(f"{field} is {value!r}: an integer from {least} to {MAX_GEOMETRY} is expected")
    return value


#: The fields of a ``unet_rt/1`` document (docs/design.md section 4): a
#: field outside them was dropped without a word (``size_mulitple``).
METADATA_FIELDS = frozenset({
    "format", "name", "description", "architecture", "spatial_dims", "in_channels", "out_channels", "output",
    "class_names", "padding", "halo", "size_multiple", "size_offset", "min_size", "fixed_size", "output_key",
    "normalization", "training", "evaluation", "instances", "object_size", "verified",
})


def check_overrides(overrides: Dict[str, Any]) -> None:
    """Refuses metadata fields an export is given that no ``unet_rt/1``
    document holds, geometry numbers out of the runtime's bounds, empty or
    repeated class names, and values JSON cannot hold (NaN, NumPy scalars),
    each naming its field. They were dropped, or written and then refused
    by the runtime's parser ("invalid value: integer -1, expected usize at
    line 8 column 32" of a file nobody sees), after probing.

    >>> check_overrides({"size_mulitple": 2})
    Traceback (most recent call last):
    ...
    unet_rt.export.ExportGeometryError: size_mulitple is not a metadata field (size_multiple?)
    """
    import difflib

    for key, value in overrides.items():
        if key not in METADATA_FIELDS:
            close = difflib.get_close_matches(key, METADATA_FIELDS, n=1)
            raise ExportGeometryError(f"{key} is not a metadata field"
                                      + (f" ({close[0]}?)" if close else f": the fields are {', '.join(sorted(METADATA_FIELDS))}"))
        try:
            # UTF-8 too: a lone surrogate (a name from undecodable bytes) was
            # written, then refused by the runtime's parser.
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise ExportGeometryError(f"{key} is {value!r}, which metadata (JSON) cannot hold: {e}") from None
    for key in ("halo", "size_offset", "min_size"):
        if key in overrides:
            _geometry_field(overrides, key)
    if "fixed_size" in overrides:
        _geometry_field(overrides, "fixed_size", least=1)
    if "size_multiple" in overrides:
        _multiple(overrides)
    for key in ("name", "description"):
        if key in overrides and not isinstance(overrides[key], str):
            raise ExportGeometryError(f"{key} is {overrides[key]!r}: a string is expected")
    names = overrides.get("class_names")
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ExportGeometryError(f"class_names is {names!r}: a list of strings is expected")
        empty = [i for i, n in enumerate(names) if not n.strip()]
        if empty:
            raise ExportGeometryError(f"class name {empty[0]} of {list(names)!r} is empty")
        repeated = sorted({n for n in names if list(names).count(n) > 1})
        if repeated:
            raise ExportGeometryError(f"class names repeat {', '.join(map(repr, repeated))}: each class needs its own")


def _check_output_path(output: os.PathLike | str) -> None:
    """Refuses an output that cannot be a file, before any work: a folder
    (``-o existing_dir``, ``-o .``, a trailing slash) or one inside a file.
    They failed after probing and checking (minutes), naming a temporary."""
    text = os.fspath(output)
    path = Path(text)
    if not text or text.endswith(os.sep) or path.is_dir():
        raise ExportGeometryError(f"the output {text!r} is a folder: name the .pt file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportGeometryError(f"the output {text} lies inside {parent}, which is a file")
            break


def _nondeterministic(info: Dict[str, Any], name: str) -> Optional[ExportGeometryError]:
    """The refusal of a network whose output changes between two passes on
    one input, as the runtime's load found (``info["warning"]``): probing
    made up a geometry for it (halo 512, sizes k * 64), written without a
    word. ``None`` for other networks."""
    warning = info.get("warning") or ""
    if "two forward passes on one input differ" not in warning:
        return None
    return ExportGeometryError(
        f"{name}: its output changes between two passes on one input (dropout or noise active in evaluation "
        f"mode?): its geometry cannot be measured and no tiling reproduces it; export it in evaluation mode "
        f"without random layers")


def _multiple(metadata: Dict[str, Any]) -> int:
    """``size_multiple``, one number or one per axis (their least common
    multiple, as the runtime takes it), each at least 1."""
    m = metadata.get("size_multiple")
    axes = list(m) if isinstance(m, (list, tuple)) else [m]
    return math.lcm(*(_geometry_field({"size_multiple": a}, "size_multiple", least=1) for a in axes))


def _check_sizes(metadata: Dict[str, Any]) -> Sequence[int]:
    """The two smallest input sizes of ``metadata``'s rule that leave an
    output (its one size for a fixed-size network), in closed form.

    >>> _check_sizes({"halo": 92, "size_multiple": 16, "size_offset": 12})
    (188, 204)
    """
    if metadata.get("fixed_size"):
        return (_geometry_field(metadata, "fixed_size", least=1),)
    m = _multiple(metadata)
    o, h = _geometry_field(metadata, "size_offset"), _geometry_field(metadata, "halo")
    # The first o + k * m beyond 2h, and beyond 0.
    smallest = o if o > 2 * h else o + ((2 * h - o) // m + 1) * m
    return (smallest, smallest + m)


def _smallest_size(metadata: Dict[str, Any]) -> int:
    """The smallest input size ``metadata``'s rule allows, as the runtime
    takes it: beyond twice the halo for a valid network, the first size on
    the grid for a same-padded one (whose output keeps the input's size),
    the one size of a fixed-size network.

    >>> _smallest_size({"padding": "same", "halo": 640, "size_multiple": 32})
    32
    """
    if metadata.get("fixed_size") or metadata.get("padding") != "same":
        return _check_sizes(metadata)[0]
    m, o = _multiple(metadata), _geometry_field(metadata, "size_offset")
    _geometry_field(metadata, "halo")  # within bounds, though it does not decide the size
    return o if o > 0 else m


def _check_pass_fits(channels: int, size: int, dims: int, what: str) -> None:
    """Refuses a check pass whose input would exceed the runtime's probe
    bound (``MAX_PROBE_VALUES``): a declared halo of 6000 ran a pass of
    12002 px and asked for 9 GB before its first word."""
    from ._unet_rt import MAX_PROBE_VALUES

    values = channels * size**dims
    if values > MAX_PROBE_VALUES:
        raise ExportGeometryError(
            f"{what} needs a pass at input size {size} ({values:,} values), beyond the {MAX_PROBE_VALUES:,} the "
            f"exporter checks: is the halo right? (a convolution network's is the pixels each output sees on one "
            f"side, 92 for the paper's U-Net)")


def _tensors(value: Any) -> List[torch.Tensor]:
    """Every tensor in a forward's result (a tensor, or dicts, tuples and
    lists of them), in order: scripted and eager results are compared
    whole, whichever entry the runtime will use."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in value for t in _tensors(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _compile(model: torch.nn.Module, example: Optional[torch.Tensor]) -> torch.jit.ScriptModule:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if example is not None:
        # strict=False: dict and list outputs (torchvision) are traced too.
        return torch.jit.trace(model, example, strict=False)
    return torch.jit.script(model)


def export_torchscript(
    model: torch.nn.Module,
    path: os.PathLike | str,
    metadata: Dict[str, Any],
    *,
    example: Optional[torch.Tensor] = None,
    atol: float = 1e-4,
    check_sizes: Optional[Sequence[int]] = None,
    seed: int = 0,
    verify: bool = True,
    explain: bool = True,
    progress: Optional[Progress] = None,
) -> Path:
    """Compiles ``model`` in eval mode, checks it, and writes it atomically
    to ``path`` (its missing folders created) with ``metadata`` embedded.
    Returns the path.

    ``model`` is an eager module (scripted, or traced on ``example`` when
    one is given: models TorchScript cannot script), or an already scripted
    or traced module, written as it is. Its forward may return a tensor or
    a dict or tuple holding it (``metadata["output_key"]`` says which entry,
    else the only tensor or ``"out"``).

    Checks before writing: an eager module against its compiled form on
    random inputs of two valid sizes (:class:`ExportMismatchError`), then
    the metadata against the module through the runtime
    (:func:`verify_metadata`, :class:`ExportGeometryError`) unless
    ``verify`` is false. A refusal says what probing the network finds
    unless ``explain`` is false (for a declared geometry: probing may be
    what was too slow). ``progress`` is told each step before it runs
    (passes of a large network take minutes).

    The module is deliberately not frozen: ``torch.jit.freeze`` folds the
    weights into graph constants, which libtorch cannot convert afterwards,
    while the runtime converts parameters to the requested precision (bf16,
    fp16) and to channels-last layout when it loads a model. Eval mode and
    the compiled graph are what inference needs.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    missing = [f for f in ("spatial_dims", "in_channels") if f not in metadata]
    if missing:
        raise ExportGeometryError(f"the metadata lacks {', '.join(missing)} (probe_metadata or "
                                  f"declared_metadata give every field)")
    _check_output_path(path)
    # The caller's module is left in the mode it came in (it was left in
    # evaluation mode, its dropout off for training that went on).
    training = model.training
    try:
        return _write_torchscript(model.eval(), Path(path), metadata, example=example, atol=atol,
                                  check_sizes=check_sizes, seed=seed, verify=verify, explain=explain,
                                  say=progress or _silent)
    finally:
        model.train(training)


def _write_torchscript(model: torch.nn.Module, path: Path, metadata: Dict[str, Any], *,
                       example: Optional[torch.Tensor], atol: float, check_sizes: Optional[Sequence[int]],
                       seed: int, verify: bool, explain: bool, say: Progress) -> Path:
    """:func:`export_torchscript` of a module in evaluation mode."""
    compiled = _compile(model, example)
    gen = torch.Generator().manual_seed(seed)
    dims = metadata["spatial_dims"]
    if compiled is not model:
        say("comparing the compiled network with the eager one")
        for size in check_sizes or _check_sizes(metadata):
            _check_pass_fits(metadata["in_channels"], size, dims, f"the metadata ({_geometry_text(metadata)})")
            x = torch.rand((1, metadata["in_channels"]) + (size,) * dims, generator=gen)
            try:
                with torch.no_grad():
                    want, got = _tensors(model(x)), _tensors(compiled(x))
            except RuntimeError as e:
                raise _refusal(
                    f"at input size {size}, which it declares valid ({_geometry_text(metadata)}), "
                    f"the network fails: {str(e).splitlines()[0]}",
                    compiled if explain else None,
                ) from None
            for w, g in zip(want, got):
                if w.shape != g.shape or not torch.allclose(w, g, atol=atol, rtol=1e-4):
                    diff = (w - g).abs().max().item() if w.shape == g.shape else float("nan")
                    raise ExportMismatchError(
                        f"TorchScript output differs from the eager model at input size {size}: "
                        f"shapes {tuple(w.shape)} vs {tuple(g.shape)}, max |diff| {diff:.3g}"
                    )
            if len(want) != len(got):
                raise ExportMismatchError(
                    f"TorchScript returns {len(got)} tensors where the eager model returns {len(want)}"
                )
    # The folders made for it go again if it fails (they were left).
    made = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.jit.save(compiled, tmp, _extra_files={METADATA_ENTRY: json.dumps(metadata, indent=1)})
        if verify:
            info = verify_metadata(tmp, compiled if explain else None, progress=say)
            if info["exact"]:
                # Loading measures tiles against the whole-image pass unless
                # this record still matches (four passes of a probe image:
                # seconds for a large network, at every load).
                verified = {"halo": info["halo"], "size_multiple": info["size_multiple"], **weights_digest(compiled),
                            "code": code_digest(tmp)}
                torch.jit.save(compiled, tmp, _extra_files={
                    METADATA_ENTRY: json.dumps({**metadata, "verified": verified}, indent=1)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise users sharing models
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return path


def probe_metadata(module: torch.jit.ScriptModule, name: str = "the network") -> Dict[str, Any]:
    """What the runtime finds when it probes ``module`` without metadata
    (size rule, overlap, channels, output entry), as a metadata document.
    Errors name the module ``name`` (its file), not the temporary copy
    probed.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.MaxPool2d(2),
    ...                           torch.nn.Upsample(scale_factor=2.0), torch.nn.Conv2d(4, 2, 1))
    >>> m = probe_metadata(torch.jit.script(net.eval()))
    >>> (m["padding"], m["size_multiple"], m["in_channels"], m["out_channels"])
    ('same', 2, 1, 2)
    """
    import unet_rt

    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "plain.pt"
        torch.jit.save(module, str(plain))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", unet_rt.ApproximateTilingWarning)
            try:
                info = unet_rt.Model(plain, device="cpu", precision="fp32").info
            except unet_rt.UnetRtError as e:
                raise type(e)(str(e).replace(str(plain), name)) from None
    refusal = _nondeterministic(info, name)
    if refusal is not None:
        raise refusal
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "spatial_dims": info["spatial_dims"],
        "in_channels": info["in_channels"],
        "out_channels": info["out_channels"],
        "output": info["output"],
        "padding": info["padding"],
        "halo": info["halo"],
        "size_multiple": info["size_multiple"],
        "size_offset": info["size_offset"],
    }
    if info["smallest_size"] != _check_sizes(meta)[0]:
        meta["min_size"] = info["smallest_size"]
    if info["output_key"] is not None:
        meta["output_key"] = info["output_key"]
    return meta


#: The fields that declare a network's geometry: with all of them given,
#: export does not probe (a network too slow to probe is what needs them).
GEOMETRY_FIELDS = ("padding", "halo", "size_multiple")


def declared_metadata(module: torch.jit.ScriptModule, declared: Dict[str, Any]) -> Dict[str, Any]:
    """The metadata document of ``module`` for a ``declared`` geometry
    (every field of :data:`GEOMETRY_FIELDS`, ``size_offset`` 0 unless
    given), without probing: the input channels are the first convolution
    weight's that run (the first weight's, then the next distinct counts),
    the output channels those of one pass at the smallest declared size
    (the ``output_key`` entry of a dict or tuple, or a dict's ``"out"``, or
    its only tensor), and the output kind logits (``softmax``, or
    ``sigmoid`` for one channel) unless declared. :func:`verify_metadata`
    then checks it all against the runtime.

    Probing a network whose passes take seconds gave up after a minute,
    and the advice ("export it with metadata") led back to the same probe.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    >>> m = declared_metadata(torch.jit.script(net.eval()), {"padding": "same", "halo": 2, "size_multiple": 1})
    >>> (m["spatial_dims"], m["in_channels"], m["out_channels"], m["output"])
    (2, 3, 2, 'softmax')
    """
    missing = [f for f in GEOMETRY_FIELDS if declared.get(f) is None]
    if missing:
        raise ExportGeometryError(f"a declared geometry needs {', '.join(missing)} as well")
    weights = [p for p in module.parameters() if p.dim() in (4, 5)]
    if not weights:
        raise ExportGeometryError("the network has no 2-D or 3-D convolution weights: its input is not an image")
    dims = weights[0].dim() - 2
    meta: Dict[str, Any] = {"format": FORMAT, "spatial_dims": dims, "size_offset": declared.get("size_offset") or 0,
                            **{f: declared[f] for f in GEOMETRY_FIELDS}}
    if declared.get("fixed_size"):
        meta["fixed_size"] = int(declared["fixed_size"])
    size = _smallest_size(meta)
    candidates = list(dict.fromkeys(int(w.shape[1]) for w in weights if w.dim() == dims + 2))[:4]
    failures = []
    for channels in candidates:
        _check_pass_fits(channels, size, dims, f"the declared geometry ({meta['padding']}, halo {meta['halo']}, "
                                               f"sizes {meta['size_offset']} + k * {_multiple(meta)})")
        try:
            with torch.no_grad():
                result = module(torch.zeros((1, channels) + (size,) * dims))
        except Exception as e:  # noqa: BLE001 - the network's own error, said below
            failures.append(f"{channels} channel(s): {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            continue
        output, key = _declared_output(result, declared.get("output_key"))
        meta.update(in_channels=channels, out_channels=int(output.shape[1]))
        meta["output"] = declared.get("output") or ("sigmoid" if output.shape[1] == 1 else "softmax")
        if key is not None:
            meta["output_key"] = key
        return meta
    raise ExportGeometryError(f"at input size {size}, the smallest the declared geometry allows, the network fails "
                              f"with every input channel count its weights suggest ({'; '.join(failures)})")


def _declared_output(result: Any, key: Any) -> tuple:
    """The segmentation in a forward's ``result`` and the key it is under,
    chosen as the runtime chooses it: ``key``, or a dict's ``"out"``, or
    the only tensor of a dict or tuple (``None`` for a plain tensor)."""
    if key is None and isinstance(result, dict):
        key = "out" if "out" in result else None
    if key is None and isinstance(result, (dict, tuple, list)):
        keys = [k for k, v in (result.items() if isinstance(result, dict) else enumerate(result))
                if isinstance(v, torch.Tensor)]
        if len(keys) != 1:
            raise ExportGeometryError(f"the network returns {len(keys)} tensors in a {type(result).__name__}: "
                                      f"name the segmentation with --output-key")
        key = keys[0]
    if key is not None:
        try:
            result = result[key]
        except (KeyError, IndexError, TypeError):
            raise ExportGeometryError(f"the network's output has no entry {key!r}") from None
    if not isinstance(result, torch.Tensor) or result.dim() < 3:
        raise ExportGeometryError(f"the network's output is not (N, classes, spatial...): {type(result).__name__}")
    return result, key


def _geometry_text(m: Dict[str, Any]) -> str:
    return (f"padding {m['padding']}, halo {m['halo']}, sizes {m.get('size_offset', 0)} + k * {_multiple(m)}, "
            f"{m['in_channels']} -> {m['out_channels']} channels")


def _refusal(what: str, module: Optional[torch.jit.ScriptModule]) -> ExportGeometryError:
    """The error for metadata that does not fit, with what probing finds."""
    import unet_rt

    found = ""
    if module is not None:
        try:
            found = f"; probing the network finds {_geometry_text(probe_metadata(module))}"
        except unet_rt.UnetRtError as e:
            # Its advice (export with metadata) is the command being run.
            found = f"; probing the network fails too: {str(e).split('; export it with metadata')[0]}"
    return ExportGeometryError(f"the metadata does not fit the network: {what}{found}")


def weights_digest(module: torch.nn.Module) -> Dict[str, Any]:
    """The count and total magnitude of ``module``'s parameters, as the
    runtime computes them at load (float32 values, float64 sums, in the
    module's order): with the geometry, the record that spares a verified
    model the load-time measurement.

    >>> weights_digest(torch.nn.Conv2d(1, 2, 3))["parameters"]
    20
    """
    count, total = 0, 0.0
    with torch.no_grad():
        for p in module.parameters():
            count += p.numel()
            total += float(p.detach().float().abs().sum(dtype=torch.float64))
    return {"parameters": count, "abs_sum": total}


def code_digest(path: os.PathLike | str) -> str:
    """The SHA-256 (hex) of what a TorchScript archive runs besides its
    weights, as the runtime computes it at load: its code (``code/**.py``)
    and ``constants.pkl``, each as its name below the archive's root, a
    newline, its length, a newline and its bytes, in name order. The
    verified record carries it: the same weights scripted from edited code
    (a dilation, an upsampling mode) are measured again at load.
    """
    import hashlib
    import zipfile

    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        entries = {}
        for name in archive.namelist():
            below = name.split("/", 1)[1] if "/" in name else None
            if below is not None and ((below.startswith("code/") and below.endswith(".py")) or below == "constants.pkl"):
                entries[below] = name
        for below in sorted(entries, key=lambda n: n.encode()):
            data = archive.read(entries[below])
            digest.update(f"{below}\n{len(data)}\n".encode())
            digest.update(data)
    return digest.hexdigest()


def verify_metadata(path: os.PathLike | str, module: Optional[torch.jit.ScriptModule] = None,
                    progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Checks the metadata embedded at ``path`` against its network, through
    the runtime itself: the network takes the two smallest sizes the
    metadata declares and returns the declared channels and output size
    there, and on a random probe image its tiles (at the declared overlap
    and size multiple) reproduce one whole-image pass to 1e-4 of the
    output's range. Networks with layers that see the whole tile cannot be
    tiled exactly at any overlap: they pass, and the runtime warns when
    they are loaded.

    Returns the runtime's ``Model.info`` for the model. Raises
    :class:`ExportGeometryError` saying what disagrees, and what probing
    the network finds instead. ``progress`` is told each step before it
    runs, with the time the last one takes, scaled from the passes before.
    """
    import numpy as np
    import unet_rt

    def refuse(what: str) -> ExportGeometryError:
        return _refusal(what, module)

    say = progress or _silent
    if path is None:
        # `Model(None)` is the bundled model: it was checked instead.
        raise TypeError("path must name the model file to check, got None")
    say("loading it with the runtime (which checks the metadata with passes of its own)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", unet_rt.ApproximateTilingWarning)
        try:
            model = unet_rt.Model(path, device="cpu", precision="fp32")
        except unet_rt.MetadataError as e:
            # The runtime's own checks at load (bounds, and the declared
            # output against one pass): said with what probing finds, as
            # the checks below are; without the temporary file's name.
            reason = str(e)
            if reason.startswith("invalid metadata in ") and ": " in reason:
                reason = reason.split(": ", 1)[1]
            raise refuse(reason) from None
    info = model.info
    refusal = _nondeterministic(info, "the network")
    if refusal is not None:
        raise refusal
    if info["warning"]:
        # The runtime says so at every load of the file; the export said
        # nothing (a declared fixed size with too small a halo, tiles 0.57
        # of the output's range off, was "wrote ... halo 0").
        say(f"warning: {info['warning']}")
    meta = model.metadata or {}
    rng = np.random.default_rng(0)
    dims, lost = info["spatial_dims"], 2 * info["halo"] if info["padding"] == "valid" else 0
    sizes = (info["fixed_size"],) if info["fixed_size"] else (info["smallest_size"], info["smallest_size"] + info["size_multiple"])
    say(f"one pass at each declared size ({', '.join(map(str, sizes))} px)")
    for size in sizes:
        batch = rng.random((1, info["in_channels"]) + (size,) * dims, dtype=np.float32)
        started = time.monotonic()
        try:
            out = model.forward(batch)
        except unet_rt.UnetRtError as e:
            raise refuse(f"at input size {size}, which it declares valid ({_geometry_text(meta)}), "
                         f"the network fails: {e}") from None
        want = (1, info["out_channels"]) + (size - lost,) * dims
        if out.shape != want:
            raise refuse(f"at input size {size} the network returns shape {out.shape}, "
                         f"the metadata ({_geometry_text(meta)}) says {want}")
        pass_took, pass_size = time.monotonic() - started, size
    def tiles_differ(difference: float) -> ExportGeometryError:
        return refuse(f"tiles at overlap {info['overlap']} and size multiple {info['size_multiple']} differ from "
                      f"one whole-image pass by {difference:.2g} of the output's range (the halo is too small, "
                      f"the size multiple is not the pooling factor, or the network computes over its whole "
                      f"input, as a mean over its spatial axes in squeeze-excitation or attention does, which no "
                      f"halo holds: loading it without metadata probes it and says so)")

    # The runtime's load measured a same-padded network's tiles already.
    if info["undeclared_geometry"] is not None:
        raise tiles_differ(info["measured"]["max_difference"])
    if not info["exact"] or info["fixed_size"]:
        # A network of one size has no whole-image pass to compare with
        # beyond one tile: the runtime's load-time measurement stands.
        return info
    def unchecked(e: Exception) -> ExportGeometryError:
        # Memory, mostly: a declared halo of 2000 needs tiles of 4000 px
        # and a whole-image pass of 8000, beyond what this machine holds.
        return ExportGeometryError(f"the tiles at overlap {info['overlap']} could not be compared with one "
                                   f"whole-image pass: {e}")

    # The smallest tile that keeps at least CHECK_STRIDE pixels, and an
    # image of what it keeps and one more size step: two tiles per axis.
    # The smallest tile alone keeps one pixel of a same-padded network of
    # size multiple 1, and its (2 * halo + 2)^2 tiles took ten minutes.
    try:
        smallest = model.layout((1,) * dims, memory_budget=1)
        short = max(0, CHECK_STRIDE - smallest["stride"][0])
        tile = smallest["tile"][0] + -(-short // info["size_multiple"]) * info["size_multiple"]
        layout = model.layout((tile,) * dims, tile=tile)
    except unet_rt.UnetRtError as e:
        raise unchecked(e) from None
    side = layout["stride"][0] + info["size_multiple"]
    # The whole-image pass takes the image mirror-padded by the overlap.
    padded = side + 2 * info["overlap"]
    _check_pass_fits(info["in_channels"], padded, dims,
                     f"comparing tiles at overlap {info['overlap']} with one whole-image pass")
    image = rng.random((info["in_channels"],) + (side,) * dims, dtype=np.float32)
    # The whole image's pass and its tiles' (about the same area again with
    # their overlaps), scaled from the last pass by area or volume where
    # that pass was long enough to be its compute, not its overhead.
    about = 2 * pass_took * (padded / pass_size) ** dims
    say(f"comparing tiles with one whole-image pass over a {side}-px image"
        + (f" (about {about:.0f} s)" if pass_took >= 0.25 else ""))
    axes = "c" + "zyx"[3 - dims:]
    try:
        whole = model.segment(image, axes=axes, output="raw", tile="whole")
        tiled = model.segment(image, axes=axes, output="raw", tile=tile)
    except unet_rt.UnetRtError as e:
        raise unchecked(e) from None
    scale = float(np.abs(whole).max()) or 1.0
    difference = float(np.abs(tiled - whole).max()) / scale
    if not difference <= 1e-4:
        raise tiles_differ(difference)
    return info


#: The least pixels each tile of the export's tile check keeps.
CHECK_STRIDE = 16


def read_metadata(path: os.PathLike | str) -> Optional[Dict[str, Any]]:
    """The metadata embedded in a TorchScript archive as stored, or ``None``
    where it has none.

    Raises:
        ModelNotFoundError: no file at ``path``.
        ModelError: the file is no TorchScript archive torch can load (torch's
            first line of why), or its metadata is no JSON.
    """
    if not Path(path).is_file():
        raise ModelNotFoundError(f"no model file at {path}")
    extra = {METADATA_ENTRY: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"cannot load model {path}: {first}") from None
    if not extra[METADATA_ENTRY]:
        return None
    try:
        return json.loads(extra[METADATA_ENTRY])
    except ValueError as e:
        raise ModelError(f"{path}: its {METADATA_ENTRY} is no JSON ({e})") from None


def _refuse_same_file(source: os.PathLike | str, output: os.PathLike | str) -> None:
    """Refuses to write the export over what it reads (a run folder means its
    ``last.pt``): ``-o`` the checkpoint itself replaced it, and the run could
    no longer be resumed or exported again."""
    read = Path(source) / "last.pt" if Path(source).is_dir() else Path(source)
    if Path(output).resolve() == read.resolve():
        raise ValueError(f"the output {output} is the file being exported; write the model to another path")


def export_module_file(
    source: os.PathLike | str,
    output: os.PathLike | str,
    overrides: Optional[Dict[str, Any]] = None,
    progress: Optional[Progress] = None,
) -> Path:
    """Writes the TorchScript archive ``source`` (any scripted or traced
    network) to ``output`` with ``unet_rt/1`` metadata: what probing finds
    (:func:`probe_metadata`), with ``overrides`` on top (a halo, a size
    rule, class names, normalization ...), verified against the network
    before writing (:func:`verify_metadata`). Where ``overrides`` declare
    the whole geometry (:data:`GEOMETRY_FIELDS`), nothing is probed
    (:func:`declared_metadata`). ``progress`` is told each step."""
    say = progress or _silent
    _refuse_same_file(source, output)
    _check_output_path(output)
    overrides = dict(overrides or {})
    check_overrides(overrides)
    module = torch.jit.load(str(source), map_location="cpu").eval()
    declared = all(overrides.get(f) is not None for f in GEOMETRY_FIELDS)
    if declared:
        say("one pass at the smallest declared size, for the network's channels")
        found = declared_metadata(module, overrides)
    else:
        import unet_rt

        say("probing the network's geometry as the runtime does (a minute at most; declare --padding, --halo "
            "and --size-multiple to skip it)")
        try:
            found = probe_metadata(module, str(source))
        except unet_rt.ModelError as e:
            if "output_key" in overrides and "output_key" in str(e):
                # Probing runs the network as the runtime would without
                # metadata, which cannot choose among its outputs.
                raise ExportGeometryError(
                    f"{e}; with --output-key, declare the geometry too (--padding, --halo, --size-multiple): "
                    f"probing cannot choose among the network's outputs") from None
            raise
    meta = {**found, "name": Path(source).stem, **overrides}
    return export_torchscript(module, output, meta, explain=not declared, progress=say)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (a zip holding ``constants.pkl`` or code) rather
    than a training checkpoint (``torch.save`` of a dict)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _output_arg(text: str) -> os.PathLike | str:
    """``-o`` as typed where it names a folder (``out/``, empty): ``Path``
    drops the trailing slash, and ``out/new/`` was written as a file named
    ``new``. :func:`_check_output_path` refuses it."""
    return text if not text or text.endswith(os.sep) else Path(text)


def add_torchscript_flags(parser: argparse.ArgumentParser, title: str, name_default: str) -> None:
    """Adds an export's flags to ``parser``: ``-o``, ``--name`` (whose
    default ``name_default`` says) and ``--description``, and in a group
    titled ``title`` a TorchScript network's declared geometry, output,
    output entry and class names (read back by :func:`torchscript_overrides`)."""
    parser.add_argument("-o", "--output", type=_output_arg, required=True, help="the .pt file to write")
    parser.add_argument("--name", help=f"model name (default: {name_default})")
    parser.add_argument("--description")
    group = parser.add_argument_group(title)
    group.add_argument("--padding", choices=["valid", "same"])
    group.add_argument("--halo", type=int)
    group.add_argument("--size-multiple", type=int)
    group.add_argument("--size-offset", type=int)
    group.add_argument("--fixed-size", type=int, help="the one input size the network takes (ViT-style)")
    group.add_argument("--output-kind", choices=["softmax", "sigmoid", "identity", "probabilities", "masks"],
                       dest="output_kind")
    group.add_argument("--output-key", help="dict key (or tuple index) of the segmentation")
    group.add_argument("--class-names", help="comma-separated, one per output channel")


#: The flags of a TorchScript network's declared geometry and output: the
#: metadata field, the flag, and its argparse destination.
_DECLARED = (("padding", "--padding", "padding"), ("halo", "--halo", "halo"),
             ("size_multiple", "--size-multiple", "size_multiple"), ("size_offset", "--size-offset", "size_offset"),
             ("fixed_size", "--fixed-size", "fixed_size"), ("output", "--output-kind", "output_kind"),
             ("output_key", "--output-key", "output_key"))


def declared_flags(args: argparse.Namespace) -> Dict[str, str]:
    """The geometry and output flags given on the command line, as their
    metadata fields mapped to the flags' names (``{"halo": "--halo"}``)."""
    return {field: flag for field, flag, dest in _DECLARED if getattr(args, dest) is not None}


def class_names_flag(args: argparse.Namespace) -> Optional[List[str]]:
    """``--class-names`` as a list, or ``None``."""
    # "" too: it was taken as no names at all.
    return [c.strip() for c in args.class_names.split(",")] if args.class_names is not None else None


def torchscript_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The metadata fields the flags of :func:`add_torchscript_flags` (and
    ``--name``/``--description``) give, for :func:`export_module_file`."""
    given = {field: getattr(args, dest) for field, _, dest in _DECLARED}
    given.update(name=args.name, description=args.description, class_names=class_names_flag(args))
    overrides: Dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if args.output_key is not None:
        overrides["output_key"] = int(args.output_key) if args.output_key.isdigit() else args.output_key
    return overrides


def run_export(export: Callable[[Progress], Path]) -> Optional[Path]:
    """Runs ``export`` for a command line: prints each step it reports to
    its progress argument on stderr with the seconds since the start,
    prints what it wrote (the geometry of its metadata) and returns the
    path, or prints ``export failed: ...`` on one line and returns
    ``None``."""
    started = time.monotonic()

    def say(step: str) -> None:
        print(f"[{time.monotonic() - started:4.0f} s] {step}", file=sys.stderr, flush=True)

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # SIGTERM (`timeout`, a job scheduler) as Ctrl-C: the temporary file is
    # removed on the way out (it was left, `.NAME.pt.XXXX.tmp`).
    import signal
    import threading

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if on_main else None
    try:
        path = export(say)
    except (ExportMismatchError, ExportGeometryError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return None
    except Exception as e:  # noqa: BLE001 - a one-line message, whatever failed
        print(f"export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return None
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    meta = read_metadata(path) or {}
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; {meta['padding']}, halo {meta['halo']}, "
          f"sizes {meta['size_offset']} + k * {meta['size_multiple']})")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m unet_rt.export``: exit status 0 when the
    model was written, 1 when the export failed (said on one line)."""
    parser = argparse.ArgumentParser(
        prog="python -m unet_rt.export",
        description="Write a TorchScript network with unet_rt/1 metadata. Its geometry is probed as the runtime "
                    "probes it, the flags below override it, and the result is verified against the network "
                    "before it is written.",
    )
    parser.add_argument("model", type=Path, help="a TorchScript archive (torch.jit.script or torch.jit.trace, saved)")
    add_torchscript_flags(parser, "declared geometry (default: probed; --padding, --halo and --size-multiple "
                                  "together skip probing, for networks too slow to probe)", "the file's stem")
    args = parser.parse_args(argv)

    def export(progress: Progress) -> Path:
        if not args.model.is_file():
            raise ExportGeometryError(f"{args.model}: no such file")
        if not _is_torchscript(args.model):
            raise ExportGeometryError(f"{args.model} is not a TorchScript archive (save the network with "
                                      f"torch.jit.script(net).save(path) or torch.jit.trace)")
        return export_module_file(args.model, args.output, torchscript_overrides(args), progress)

    return 0 if run_export(export) is not None else 1


if __name__ == "__main__":
    sys.exit(main())
