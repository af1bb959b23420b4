"""Export a trained network to TorchScript with the ``unet_rt/1`` metadata.

The metadata is stored as the extra file ``unet_rt.json`` inside the archive
(``extra/unet_rt.json`` in its zip), where the runtime reads it without
loading the network.

Before writing, the exported module is compared with the eager one on random
inputs of two valid sizes; a mismatch raises :class:`ExportMismatchError`.

From a training checkpoint (:mod:`training.checkpoint`)::

    python -m training.export runs/nuclei/last.pt -o model.pt

rebuilds the network from the checkpoint's config, loads its weights and
writes it with metadata whose ``training`` entry records the provenance and
the held-out metrics that the training run stored in the checkpoint. The
command exits with status 1 and says why when the check fails.

Any other network (FCN, SegNet, pix2pix, torchvision, MONAI ...), scripted or
traced by its author::

    python -m training.export their_model.pt -o model.pt --class-names background,cell

probes its geometry the way the runtime would, takes the flags on top,
verifies the result against the network (:func:`verify_metadata`) and
writes it. A network too slow to probe (the runtime gives up after a
minute) is exported with its geometry declared, which skips probing::

    python -m training.export big.pt -o model.pt --padding same --halo 96 --size-multiple 32

From Python, :func:`export_torchscript` takes an eager module
(scripted, or traced with ``example=``) or a compiled one.
"""

from __future__ import annotations

import argparse
import math
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .unet import ARCHITECTURES, geometry, model_geometry, offset_logits

__all__ = [
    "FORMAT",
    "METADATA_ENTRY",
    "ExportMismatchError",
    "ExportGeometryError",
    "build_metadata",
    "export_torchscript",
    "probe_metadata",
    "declared_metadata",
    "GEOMETRY_FIELDS",
    "verify_metadata",
    "weights_digest",
    "code_digest",
    "export_module_file",
    "read_metadata",
    "training_provenance",
    "export_checkpoint",
    "main",
]

FORMAT = "unet_rt/1"
METADATA_ENTRY = "unet_rt.json"


class ExportMismatchError(RuntimeError):
    """The TorchScript module disagrees with the eager model."""


class ExportGeometryError(ValueError):
    """The metadata declares a geometry the network does not have."""


def build_metadata(
    config: Dict[str, Any],
    *,
    name: str,
    description: str = "",
    architecture: Optional[str] = None,
    output: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    normalization: Optional[Dict[str, Any]] = None,
    training: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The metadata document for a network built with ``config`` (the
    keyword arguments of :class:`training.unet.UNet` or
    :class:`training.unet.UNetPlusPlus`, optionally with ``"architecture"``).
    ``architecture`` defaults to ``config["architecture"]``, else ``"unet"``;
    for names other than ``"unet"``/``"unet++"`` the U-Net size rule of
    ``depth``/``padding`` is assumed. ``output`` defaults to the kind of
    logits: ``"softmax"``, or ``"sigmoid"`` for one class (a softmax over
    one channel is 1 everywhere, which the runtime refuses).

    >>> m = build_metadata({"in_channels": 1, "classes": 2, "depth": 5, "padding": "valid"}, name="paper")
    >>> (m["size_offset"], m["size_multiple"], m["halo"])
    (12, 16, 92)
    """
    architecture = architecture or str(config.get("architecture", "unet"))
    if architecture in ARCHITECTURES:
        geo = model_geometry(config, architecture)
    else:
        geo = geometry(config.get("depth", 5), config.get("padding", "valid"))
    classes = int(config.get("classes", 2))
    if output is None:
        output = "sigmoid" if classes == 1 else "softmax"
    if class_names is None:
        class_names = ["background"] + [f"class_{i}" for i in range(1, classes)] if output in ("softmax", "probabilities") and classes > 1 else []
    return {
        "format": FORMAT,
        "name": name,
        "description": description,
        "architecture": architecture,
        "spatial_dims": int(config.get("dims", 2)),
        "in_channels": int(config.get("in_channels", 1)),
        "out_channels": classes,
        "output": output,
        "class_names": list(class_names),
        "padding": config.get("padding", "valid"),
        "halo": geo.halo,
        "size_multiple": geo.size_multiple,
        "size_offset": geo.size_offset,
        "normalization": normalization or {"kind": "none"},
        "training": training or {},
    }


def _multiple(metadata: Dict[str, Any]) -> int:
    """``size_multiple``, one number or one per axis (their least common
    multiple, as the runtime takes it)."""
    m = metadata["size_multiple"]
    return math.lcm(*m) if isinstance(m, (list, tuple)) else int(m)


def _check_sizes(metadata: Dict[str, Any]) -> Sequence[int]:
    if metadata.get("fixed_size"):
        return (int(metadata["fixed_size"]),)
    m, o, h = _multiple(metadata), metadata.get("size_offset", 0), metadata["halo"]
    smallest = o
    while smallest <= 2 * h or smallest == 0:
        smallest += m
    return (smallest, smallest + m)


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
) -> Path:
    """Compiles ``model`` in eval mode, checks it, and writes it atomically
    to ``path`` with ``metadata`` embedded. Returns the path.

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
    what was too slow).

    The module is deliberately not frozen: ``torch.jit.freeze`` folds the
    weights into graph constants, which libtorch cannot convert afterwards,
    while the runtime converts parameters to the requested precision (bf16,
    fp16) and to channels-last layout when it loads a model. Eval mode and
    the compiled graph are what inference needs.
    """
    path = Path(path)
    model = model.eval()
    compiled = _compile(model, example)
    gen = torch.Generator().manual_seed(seed)
    dims = metadata["spatial_dims"]
    if compiled is not model:
        for size in check_sizes or _check_sizes(metadata):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.jit.save(compiled, tmp, _extra_files={METADATA_ENTRY: json.dumps(metadata, indent=1)})
        if verify:
            info = verify_metadata(tmp, compiled if explain else None)
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
        raise
    return path


def probe_metadata(module: torch.jit.ScriptModule, name: str = "the network") -> Dict[str, Any]:
    """What the runtime finds when it probes ``module`` without metadata
    (size rule, overlap, channels, output entry), as a metadata document.
    Errors name the module ``name`` (its file), not the temporary copy
    probed.

    >>> from training.zoo import build
    >>> m = probe_metadata(torch.jit.script(build("segnet").eval()))
    >>> (m["padding"], m["size_multiple"], m["in_channels"], m["out_channels"])
    ('same', 16, 1, 2)
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

    >>> from training.zoo import build
    >>> m = declared_metadata(torch.jit.script(build("segnet").eval()),
    ...                       {"padding": "same", "halo": 64, "size_multiple": 16})
    >>> (m["spatial_dims"], m["in_channels"], m["out_channels"], m["output"])
    (2, 1, 2, 'softmax')
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
    size = meta.get("fixed_size") or _check_sizes(meta)[0]
    candidates = list(dict.fromkeys(int(w.shape[1]) for w in weights if w.dim() == dims + 2))[:4]
    failures = []
    for channels in candidates:
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


def verify_metadata(path: os.PathLike | str, module: Optional[torch.jit.ScriptModule] = None) -> Dict[str, Any]:
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
    the network finds instead.
    """
    import numpy as np
    import unet_rt

    def refuse(what: str) -> ExportGeometryError:
        return _refusal(what, module)

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
    meta = model.metadata or {}
    rng = np.random.default_rng(0)
    dims, lost = info["spatial_dims"], 2 * info["halo"] if info["padding"] == "valid" else 0
    sizes = (info["fixed_size"],) if info["fixed_size"] else (info["smallest_size"], info["smallest_size"] + info["size_multiple"])
    for size in sizes:
        batch = rng.random((1, info["in_channels"]) + (size,) * dims, dtype=np.float32)
        try:
            out = model.forward(batch)
        except unet_rt.UnetRtError as e:
            raise refuse(f"at input size {size}, which it declares valid ({_geometry_text(meta)}), "
                         f"the network fails: {e}") from None
        want = (1, info["out_channels"]) + (size - lost,) * dims
        if out.shape != want:
            raise refuse(f"at input size {size} the network returns shape {out.shape}, "
                         f"the metadata ({_geometry_text(meta)}) says {want}")
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
    # A tiny budget gives the smallest tiles: an image of one tile's output
    # and one more pooling step takes two tiles per axis.
    layout = model.layout((1,) * dims, memory_budget=1)
    side = layout["output_tile"][0] + info["size_multiple"]
    image = rng.random((info["in_channels"],) + (side,) * dims, dtype=np.float32)
    axes = "c" + "zyx"[3 - dims:]
    whole = model.segment(image, axes=axes, output="raw", tile="whole")
    tiled = model.segment(image, axes=axes, output="raw", memory_budget=1)
    scale = float(np.abs(whole).max()) or 1.0
    difference = float(np.abs(tiled - whole).max()) / scale
    if not difference <= 1e-4:
        raise tiles_differ(difference)
    return info


def read_metadata(path: os.PathLike | str) -> Optional[Dict[str, Any]]:
    """The metadata embedded in a TorchScript archive, or ``None``."""
    extra = {METADATA_ENTRY: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_ENTRY]) if extra[METADATA_ENTRY] else None


def training_provenance(checkpoint: Any) -> Dict[str, Any]:
    """The metadata's ``training`` entry for a :class:`training.checkpoint.Checkpoint`:
    data and split, schedule, loss and augmentation, seed, time, and the
    validation and held-out (``test``) metrics recorded by the run."""
    c, st = checkpoint.config, checkpoint.state
    tc, metrics = c.get("train", {}), st.get("metrics", {})
    data = c.get("data", {})
    out: Dict[str, Any] = {
        "trained": True,
        "data": data.get("provenance") or {k: data.get(k) for k in ("image", "labels", "image_dir", "label_dir")},
        "split": data.get("split"),
        "labels": "instances" if data.get("instances", True) else "classes",
        "steps": st.get("step"),
        "batch_size": tc.get("batch_size"),
        "crop": tc.get("crop"),
        "optimizer": {k: tc.get(k) for k in ("optimizer", "lr", "min_lr", "warmup", "weight_decay")},
        "bf16": tc.get("bf16", False),
        "loss": c.get("loss"),
        "augment": c.get("augment"),
        "seed": c.get("seed"),
        "train_seconds": round(float(st.get("train_seconds", 0.0)), 1),
    }
    if tc.get("ema"):
        out["ema"] = tc["ema"]
    if st.get("calibration"):
        # Added to the output layer's bias (training.unet.offset_logits).
        out["calibration"] = st["calibration"]
    if "test" in metrics:
        out["held_out"] = metrics["test"]
    if "validation" in metrics:
        out["validation"] = metrics["validation"]
    if "instances" in metrics:
        out["instances"] = metrics["instances"]
    out.update(st.get("provenance", {}))
    return out


def _refuse_same_file(source: os.PathLike | str, output: os.PathLike | str) -> None:
    """Refuses to write the export over what it reads (a run folder means its
    ``last.pt``): ``-o`` the checkpoint itself replaced it, and the run could
    no longer be resumed or exported again."""
    read = Path(source) / "last.pt" if Path(source).is_dir() else Path(source)
    if Path(output).resolve() == read.resolve():
        raise ValueError(f"the output {output} is the file being exported; write the model to another path")


def export_checkpoint(
    checkpoint: os.PathLike | str,
    output: os.PathLike | str,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
) -> Path:
    """Exports a training checkpoint (file or run folder) to a TorchScript
    model with metadata (see the module docstring); returns the path.
    ``class_names`` replace the run's ``export.class_names`` and must name
    every class; the run's names that do not are replaced by ``class_N``
    names, with a warning (it was without a word)."""
    from .checkpoint import model_from_checkpoint

    _refuse_same_file(checkpoint, output)
    model, ck = model_from_checkpoint(checkpoint)
    calibration = ck.state.get("calibration")
    if calibration:
        offset_logits(model, calibration["offsets"])
    cfg = ck.config
    ex = cfg.get("export") or {}
    model_cfg = dict(cfg["model"])
    classes = int(model_cfg.get("classes", 2))
    if class_names is not None:
        class_names = list(class_names)
        if len(class_names) != classes:
            raise ExportGeometryError(f"--class-names name {len(class_names)} classes; the network has {classes}")
    else:
        class_names = ex.get("class_names")
        if class_names and len(class_names) != classes:
            # The default names (two) under a three-class boundary run.
            warnings.warn(f"the run's export.class_names {class_names} name {len(class_names)} classes, the "
                          f"network has {classes}: written as class_1 ... (give --class-names)", stacklevel=2)
            class_names = None
    meta = build_metadata(
        {**model.config, "architecture": model_cfg.get("architecture", "unet")},
        name=name or ex.get("name") or cfg.get("name", "unet"),
        description=description or ex.get("description") or cfg.get("description", ""),
        class_names=class_names,
        normalization=cfg.get("data", {}).get("normalization"),
        training=training_provenance(ck),
    )
    # The instance read-out and the training scale (see docs/design.md).
    for key in ("instances", "object_size"):
        if ex.get(key) is not None:
            meta[key] = ex[key]
    return export_torchscript(model, output, meta)


def export_module_file(
    source: os.PathLike | str,
    output: os.PathLike | str,
    overrides: Optional[Dict[str, Any]] = None,
) -> Path:
    """Writes the TorchScript archive ``source`` (any scripted or traced
    network) to ``output`` with ``unet_rt/1`` metadata: what probing finds
    (:func:`probe_metadata`), with ``overrides`` on top (a halo, a size
    rule, class names, normalization ...), verified against the network
    before writing (:func:`verify_metadata`). Where ``overrides`` declare
    the whole geometry (:data:`GEOMETRY_FIELDS`), nothing is probed
    (:func:`declared_metadata`)."""
    _refuse_same_file(source, output)
    module = torch.jit.load(str(source), map_location="cpu").eval()
    overrides = dict(overrides or {})
    declared = all(overrides.get(f) is not None for f in GEOMETRY_FIELDS)
    if declared:
        found = declared_metadata(module, overrides)
    else:
        import unet_rt

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
    return export_torchscript(module, output, meta, explain=not declared)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (a zip holding ``constants.pkl`` or code) rather
    than a training checkpoint (``torch.save`` of a dict)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m training.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a training checkpoint, or any TorchScript network, to a TorchScript model with "
                    "unet_rt/1 metadata. For a TorchScript file the geometry is probed, the flags below "
                    "override it, and the result is verified against the network before it is written.",
    )
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint file (or run folder: its last.pt), or a TorchScript archive")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .pt file to write")
    parser.add_argument("--name", help="model name (default: the run's export.name or name)")
    parser.add_argument("--description")
    geometry_flags = parser.add_argument_group(
        "TorchScript input: declared geometry (default: probed; --padding, --halo and --size-multiple "
        "together skip probing, for networks too slow to probe)")
    geometry_flags.add_argument("--padding", choices=["valid", "same"])
    geometry_flags.add_argument("--halo", type=int)
    geometry_flags.add_argument("--size-multiple", type=int)
    geometry_flags.add_argument("--size-offset", type=int)
    geometry_flags.add_argument("--fixed-size", type=int, help="the one input size the network takes (ViT-style)")
    geometry_flags.add_argument("--output-kind", choices=["softmax", "sigmoid", "identity", "probabilities", "masks"], dest="output_kind")
    geometry_flags.add_argument("--output-key", help="dict key (or tuple index) of the segmentation")
    geometry_flags.add_argument("--class-names", help="comma-separated, one per output channel")
    args = parser.parse_args(argv)
    try:
        # The TorchScript-only flags (metadata field -> given value).
        declared = {"padding": args.padding, "halo": args.halo, "size_multiple": args.size_multiple,
                    "size_offset": args.size_offset, "fixed_size": args.fixed_size, "output": args.output_kind,
                    "output_key": args.output_key}
        names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
        if _is_torchscript(args.checkpoint):
            overrides: Dict[str, Any] = {key: value for key, value in {
                **declared, "name": args.name, "description": args.description, "class_names": names,
            }.items() if value is not None}
            if args.output_key is not None:
                overrides["output_key"] = int(args.output_key) if args.output_key.isdigit() else args.output_key
            path = export_module_file(args.checkpoint, args.output, overrides)
        else:
            # A checkpoint's geometry and output are its network's: the
            # flags were ignored without a word.
            given = [key for key, value in declared.items() if value is not None]
            if given:
                flag = "--output-kind" if given[0] == "output" else "--" + given[0].replace("_", "-")
                raise ExportGeometryError(f"{flag} is for TorchScript files: a training checkpoint's network "
                                          f"has its own geometry and output")
            path = export_checkpoint(args.checkpoint, args.output, name=args.name, description=args.description,
                                     class_names=names)
    except (ExportMismatchError, ExportGeometryError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a one-line message, whatever failed
        print(f"export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1
    meta = read_metadata(path)
    held = (meta or {}).get("training", {}).get("held_out")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; {meta['padding']}, halo {meta['halo']}, "
          f"sizes {meta['size_offset']} + k * {meta['size_multiple']})")
    if held:
        print(f"held-out: iou {held['iou']:.4f}  AP50 {held['ap50']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
