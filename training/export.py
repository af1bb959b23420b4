"""Export a trained network to TorchScript with the ``unet_rt/1`` metadata.

The metadata is stored as the extra file ``unet_rt.json`` inside the archive
(``extra/unet_rt.json`` in its zip), where the runtime reads it without
loading the network.

Before writing, the exported module is compared with the eager one on random
inputs of two valid sizes; a mismatch raises :class:`ExportMismatchError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from .unet import geometry

__all__ = ["FORMAT", "METADATA_ENTRY", "ExportMismatchError", "build_metadata", "export_torchscript", "read_metadata"]

FORMAT = "unet_rt/1"
METADATA_ENTRY = "unet_rt.json"


class ExportMismatchError(RuntimeError):
    """The TorchScript module disagrees with the eager model."""


def build_metadata(
    config: Dict[str, Any],
    *,
    name: str,
    description: str = "",
    architecture: str = "unet",
    output: str = "softmax",
    class_names: Optional[Sequence[str]] = None,
    normalization: Optional[Dict[str, Any]] = None,
    training: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The metadata document for a network built with ``config`` (the
    keyword arguments of :class:`training.unet.UNet`).

    >>> m = build_metadata({"in_channels": 1, "classes": 2, "depth": 5, "padding": "valid"}, name="paper")
    >>> (m["size_offset"], m["size_multiple"], m["halo"])
    (12, 16, 92)
    """
    geo = geometry(config.get("depth", 5), config.get("padding", "valid"))
    classes = int(config.get("classes", 2))
    if class_names is None:
        class_names = ["background"] + [f"class_{i}" for i in range(1, classes)] if output == "softmax" else []
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


def _check_sizes(metadata: Dict[str, Any]) -> Sequence[int]:
    m, o, h = metadata["size_multiple"], metadata["size_offset"], metadata["halo"]
    smallest = o
    while smallest <= 2 * h or smallest == 0:
        smallest += m
    return (smallest, smallest + m)


def export_torchscript(
    model: torch.nn.Module,
    path: os.PathLike | str,
    metadata: Dict[str, Any],
    *,
    atol: float = 1e-4,
    check_sizes: Optional[Sequence[int]] = None,
    seed: int = 0,
) -> Path:
    """Scripts ``model`` (eval mode, frozen), checks it against the eager model
    on random inputs of two valid sizes, and writes it atomically to ``path``
    with ``metadata`` embedded. Returns the path.
    """
    path = Path(path)
    model = model.eval()
    scripted = torch.jit.freeze(torch.jit.script(model))
    gen = torch.Generator().manual_seed(seed)
    dims = metadata["spatial_dims"]
    for size in check_sizes or _check_sizes(metadata):
        x = torch.rand((1, metadata["in_channels"]) + (size,) * dims, generator=gen)
        with torch.no_grad():
            want, got = model(x), scripted(x)
        if want.shape != got.shape or not torch.allclose(want, got, atol=atol, rtol=1e-4):
            diff = (want - got).abs().max().item() if want.shape == got.shape else float("nan")
            raise ExportMismatchError(
                f"TorchScript output differs from the eager model at input size {size}: "
                f"shapes {tuple(want.shape)} vs {tuple(got.shape)}, max |diff| {diff:.3g}"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.jit.save(scripted, tmp, _extra_files={METADATA_ENTRY: json.dumps(metadata, indent=1)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise users sharing models
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: os.PathLike | str) -> Optional[Dict[str, Any]]:
    """The metadata embedded in a TorchScript archive, or ``None``."""
    extra = {METADATA_ENTRY: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_ENTRY]) if extra[METADATA_ENTRY] else None
