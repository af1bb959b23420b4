"""Export a trained network to TorchScript with the ``unet_rt/1`` metadata.

From a training checkpoint (:mod:`training.checkpoint`)::

    python -m training.export runs/nuclei/last.pt -o model.pt

rebuilds the network from the checkpoint's config, loads its weights and
writes it with metadata whose ``training`` entry records the provenance and
the held-out metrics that the training run stored in the checkpoint. Before
writing, the exported module is compared with the eager one on random
inputs of two valid sizes; a mismatch raises :class:`ExportMismatchError`.
The command exits with status 1 and says why when a check fails.

A TorchScript file (any network, scripted or traced by its author) is
exported as ``python -m unet_rt.export`` exports it, with the same flags:
the metadata writer, its checks and its command line live in the installed
package (:mod:`unet_rt.export`), which this module re-exports.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from unet_rt.export import (
    FORMAT,
    GEOMETRY_FIELDS,
    METADATA_ENTRY,
    Progress,
    ExportGeometryError,
    ExportMismatchError,
    _is_torchscript,
    _refuse_same_file,
    add_torchscript_flags,
    class_names_flag,
    code_digest,
    declared_flags,
    declared_metadata,
    export_module_file,
    export_torchscript,
    probe_metadata,
    read_metadata,
    run_export,
    torchscript_overrides,
    verify_metadata,
    weights_digest,
)

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


def export_checkpoint(
    checkpoint: os.PathLike | str,
    output: os.PathLike | str,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    progress: Optional[Progress] = None,
) -> Path:
    """Exports a training checkpoint (file or run folder) to a TorchScript
    model with metadata (see the module docstring); returns the path.
    ``class_names`` replace the run's ``export.class_names`` and must name
    every class; the run's names that do not are replaced by ``class_N``
    names, with a warning (it was without a word). ``progress`` is told
    each step of the export's checks."""
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
    return export_torchscript(model, output, meta, progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m training.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a training checkpoint, or any TorchScript network, to a TorchScript model with "
                    "unet_rt/1 metadata. For a TorchScript file the geometry is probed, the flags below "
                    "override it, and the result is verified against the network before it is written "
                    "(as python -m unet_rt.export does).",
    )
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint file (or run folder: its last.pt), or a TorchScript archive")
    add_torchscript_flags(parser, "TorchScript input: declared geometry (default: probed; --padding, --halo and "
                                  "--size-multiple together skip probing, for networks too slow to probe)",
                          "the run's export.name or name")
    args = parser.parse_args(argv)

    def export(progress: Progress) -> Path:
        if _is_torchscript(args.checkpoint):
            return export_module_file(args.checkpoint, args.output, torchscript_overrides(args), progress)
        # A checkpoint's geometry and output are its network's: the flags
        # were ignored without a word.
        given = list(declared_flags(args).values())
        if given:
            raise ExportGeometryError(f"{given[0]} is for TorchScript files: a training checkpoint's network "
                                      f"has its own geometry and output")
        return export_checkpoint(args.checkpoint, args.output, name=args.name, description=args.description,
                                 class_names=class_names_flag(args), progress=progress)

    path = run_export(export)
    if path is None:
        return 1
    held = (read_metadata(path) or {}).get("training", {}).get("held_out")
    if held:
        print(f"held-out: iou {held['iou']:.4f}  AP50 {held['ap50']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
