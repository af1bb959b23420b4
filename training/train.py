"""Train a U-Net / UNet++ with the paper's weighted loss, then evaluate and export.

    python -m training.train --config training/configs/nuclei.json
    python -m training.train --sample --steps 200 --out runs/try
    python -m training.train --image-dir imgs/ --label-dir masks/ --set data.split.by=files --set data.split.val=0.2
    python -m training.train --resume runs/try/last.pt --steps 400

Configuration: :data:`DEFAULT_CONFIG`, updated by a JSON file (``--config``),
then by flags, then by ``--set section.key=value`` (value parsed as JSON when
it parses). The resolved configuration is written to the run folder and into
every checkpoint.

Optimisation: Adam (lr 1e-3 by default) with a short linear warm-up and
cosine decay to ``min_lr``. The paper used SGD with momentum 0.99 on single
large tiles; on a CPU budget of minutes, Adam with small batches of crops
converges much faster and more reliably (``train.optimizer = "sgd"`` gives
the paper's choice, with ``train.momentum``).

Each run folder holds ``config.json``, ``last.pt`` (checkpoint, see
:mod:`training.checkpoint`), ``history.json``, ``metrics.json`` and
``curves.png`` (training loss, validation loss and scores). Validation
segments each validation region in one forward pass of its mirror-padded
image (:mod:`training.predict`) and reports the weighted loss, foreground IoU
/ Dice and AP@0.5 (:mod:`training.metrics`). At the end the test (held-out)
part, if any, is evaluated the same way, recorded in the checkpoint, and the
model is exported when ``export.path`` is set.

What is scored and exported: the weights, or their moving average with
``train.ema`` (:class:`WeightAverage`); with ``train.calibrate`` a background
logit offset chosen on the validation split (:func:`calibrate`) is applied
to both scores and export.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import inspect
import json
import math
import os
import pickle
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Sequence, Set

import numpy as np
import torch
from torch.utils.data import DataLoader

from .augment import Augmenter
from .checkpoint import load_checkpoint, save_checkpoint
from .data import (
    SAMPLE_DATA_DIR,
    CropDataset,
    Sample,
    class_targets,
    load_arrays,
    load_folder,
    load_sample_data,
    read_image,
    read_labels,
    split_files,
    split_rows,
)
from .evaluate import ANNOTATED, HELD_OUT_ROWS
from .loss import boundary_targets, instance_targets, object_diameters, segmentation_loss, weight_map
from .metrics import connected_components, evaluate, pool
from .predict import predict_logits
from .stopping import Interrupted, StopRequest
from .unet import ARCHITECTURES, build_model, model_geometry, valid_sizes

__all__ = [
    "DEFAULT_CONFIG",
    "SAMPLE_PROVENANCE",
    "merge_config",
    "resolve_config",
    "load_splits",
    "lr_at",
    "validate",
    "plot_curves",
    "train",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

SAMPLE_PROVENANCE = (
    "dsb2018-nuclei: 512x512 fluorescence image of nuclei with instance labels from the 2018 Data Science "
    "Bowl, BBBC038 (Caicedo et al., Nature Methods 16, 2019), as distributed in the stardist 0.9.2 wheel "
    "(img2d.tif, mask2d.tif; BSD-3-Clause)"
)

DEFAULT_CONFIG: Dict[str, Any] = {
    "name": "unet",
    "description": "",
    "seed": 0,
    "out": None,  # run folder; default runs/<name>
    "data": {
        "sample": False,  # the bundled nuclei sample (data/dsb2018-nuclei)
        "image": None,  # or one image file and its labels
        "labels": None,
        "image_dir": None,  # or folders of pairs matched by file name
        "label_dir": None,
        "instances": True,  # labels are instance ids (else class ids)
        # Every row of the data given (the sample keeps rows 384.. held out:
        # resolve_config); rows 384.. of everyone's images were dropped.
        "split": {"by": "rows", "train": None, "val": None, "test": None},
        "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "provenance": "",
    },
    "model": {"architecture": "unet", "in_channels": 1, "classes": 2, "depth": 4, "base": 16,
              "padding": "valid", "batch_norm": True, "dropout": 0.0},
    # boundary: a width in pixels > 0 for three classes (background, interior,
    # boundary) from instance labels; 0 for two.
    "loss": {"w0": 10.0, "sigma": 5.0, "balance": True, "separate": True, "boundary": 0, "dice": 0.0},
    "augment": {"enabled": True, "elastic_std": 10.0, "elastic_grid": 3, "flips": True, "rot90": True,
                "gamma": [0.7, 1.4], "contrast": [0.75, 1.33], "brightness": [-0.1, 0.1], "scale": None,
                "blur": None, "blur_probability": 0.5},
    "train": {
        "crop": None,  # input crop; default: smallest valid size >= 2 * halo + 96
        "batch_size": 4,
        "steps": 1000,
        "epochs": None,  # if set: steps = epochs * (training pixels / output pixels per batch)
        "optimizer": "adam",
        "lr": 1e-3,
        "min_lr": 1e-5,
        "warmup": 50,
        "momentum": 0.99,
        "weight_decay": 0.0,
        "val_every": 200,
        "bf16": False,
        "channels_last": False,
        "threads": None,
        "workers": 0,
        "progress": True,
        "ema": None,  # decay of an exponential moving average of the weights, exported instead
        "calibrate": False,  # choose a background logit offset on the validation split (see calibrate)
    },
    "export": {"path": None, "name": None, "description": None, "class_names": ["background", "object"]},
}


def merge_config(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """Deep-merges ``update`` into a copy of ``base`` (dicts merge, other values replace).

    >>> merge_config({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_path(config: Dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set expects section.key=value, got {assignment!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _path(p: Optional[str]) -> Optional[Path]:
    """A path from the config: as given if it exists, else relative to the
    repository where it exists there (the configs name the sample data so),
    else as given, so that the error names what was given (a missing
    ``--image x.tif`` was reported as the repository's ``x.tif``)."""
    if p is None:
        return None
    q = Path(p)
    if q.is_absolute() or q.exists():
        return q
    in_repo = REPO_ROOT / q
    return in_repo if in_repo.exists() else q


#: Keys a run writes into its own config (resumed configs hold them).
_DERIVED = {"train": {"steps_per_epoch"}, "export": {"instances", "object_size"}}


def _drop_foreign_defaults(model: Dict[str, Any], given: Set[str]) -> None:
    """Removes from ``model`` the defaults of :data:`DEFAULT_CONFIG` that its
    architecture does not take (U-Net++ has no ``dropout``), unless
    ``given``: a config file naming ``"architecture": "unet++"`` was refused
    for the default's ``model.dropout``, a setting it never wrote."""
    network = ARCHITECTURES.get(model.get("architecture", "unet"))
    if network is None:
        return
    takes = set(inspect.signature(network.__init__).parameters)
    for key, default in DEFAULT_CONFIG["model"].items():
        if key != "architecture" and key not in takes and key not in given and model.get(key) == default:
            model.pop(key, None)


def _check_known_keys(c: Dict[str, Any]) -> None:
    """Refuses keys :data:`DEFAULT_CONFIG` does not have, at the top and in
    the sections every option of which it lists: a misspelt ``--set
    trian.steps=5`` was stored and ignored."""
    unknown = sorted(set(c) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; the sections are {', '.join(sorted(DEFAULT_CONFIG))}")
    for section in ("data", "loss", "augment", "train", "export"):
        values = c.get(section)
        if not isinstance(values, dict):
            raise ValueError(f"{section} must be a section of settings, got {values!r}")
        extra = sorted(set(values) - set(DEFAULT_CONFIG[section]) - _DERIVED.get(section, set()))
        if extra:
            raise ValueError(f"unknown setting {section}.{extra[0]}; {section} has {', '.join(sorted(DEFAULT_CONFIG[section]))}")
    # A misspelt split part (data.split.tset) trained on the images meant
    # for the test; a misspelt model setting ended in a TypeError.
    split = c["data"].get("split")
    if split is not None:
        if not isinstance(split, dict):
            raise ValueError(f"data.split must be a section of settings or null, got {split!r}")
        parts = {"by", "train", "val", "test"} | ({"seed"} if split.get("by") == "files" else set())
        extra = sorted(set(split) - parts)
        if extra:
            raise ValueError(f"unknown setting data.split.{extra[0]}; data.split has {', '.join(sorted(parts))}")
    model = c.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"model must be a section of settings, got {model!r}")
    network = ARCHITECTURES.get(model.get("architecture", "unet"))
    if network is not None:  # an unknown architecture is named where it is built
        takes = set(inspect.signature(network.__init__).parameters) - {"self"}
        extra = sorted(set(model) - takes - {"architecture"})
        if extra:
            raise ValueError(f"unknown setting model.{extra[0]}; model has {', '.join(sorted(takes | {'architecture'}))}")


def _check_numbers(c: Dict[str, Any]) -> None:
    """Refuses counts and rates a run cannot use (they ran: 0 or -3 steps
    "succeeded", a negative ``w0`` rewarded errors), naming the setting."""

    def number(section: str, key: str, low: float, integer: bool = False, strict: bool = False,
               optional: bool = False) -> None:
        value = c[section].get(key)
        if value is None and optional:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if strict else value >= low) and (not integer or float(value).is_integer())
        if not ok:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{section}.{key} must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")

    epochs = c["train"].get("epochs")
    number("train", "epochs", 1, integer=True, optional=True)
    number("train", "steps", 1, integer=True, optional=epochs is not None)
    number("train", "batch_size", 1, integer=True)
    number("train", "lr", 0, strict=True)
    number("train", "min_lr", 0)
    number("train", "warmup", 0, integer=True)
    number("train", "val_every", 0, integer=True, optional=True)  # 0: at the end only
    number("loss", "w0", 0)
    number("loss", "sigma", 0, strict=True)
    number("loss", "boundary", 0, integer=True, optional=True)
    # Each of these ended in a traceback (IndexError, torch's RuntimeError, numpy's TypeError).
    number("model", "classes", 2, integer=True, optional=True)
    number("train", "threads", 1, integer=True, optional=True)
    # The networks take 3-D volumes, the data pipeline crops images: a 3-D
    # network failed in conv3d at the first batch, its run folder made.
    dims = c["model"].get("dims", 2)
    if dims != 2:
        raise ValueError(f"model.dims must be 2: training crops 2-D images (3-D networks are built and exported "
                         f"with training.unet and training.export, not trained here), got {dims!r}")
    seed = c.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    data = c["data"]
    for one, other, flags in (("image", "labels", "--image and --labels"),
                              ("image_dir", "label_dir", "--image-dir and --label-dir")):
        if (data.get(one) is None) != (data.get(other) is None):
            raise ValueError(f"give {flags} together (data.{one} and data.{other})")
    # One source: --sample beside --image-dir trained on the sample alone, without a word.
    sources = [flag for key, flag in (("sample", "--sample"), ("image", "--image"), ("image_dir", "--image-dir"))
               if data.get(key)]
    if len(sources) > 1:
        raise ValueError(f"give one data source, not {' and '.join(sources)} (data.sample, data.image, data.image_dir)")


def _check_normalization(norm: Any) -> None:
    """Refuses a normalization the runtime would refuse in the exported
    metadata (it trained through a whole run, and the export blamed the
    network), by the runtime's own rules."""
    import unet_rt
    from unet_rt import _unet_rt

    try:
        _unet_rt.check_normalization(json.dumps(norm))
    except (TypeError, ValueError, unet_rt.InvalidArgumentError) as e:
        message = str(e).removeprefix("invalid normalization: ")
        raise ValueError(f"data.normalization {json.dumps(norm)}: {message}") from None


def resolve_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Fills derived values: the crop size (checked against the size rule),
    the run folder, the sample's provenance. Returns a new dict."""
    c = copy.deepcopy(config)
    _check_known_keys(c)
    _check_numbers(c)
    _check_normalization(c["data"].get("normalization"))
    Augmenter.from_config(c.get("augment"))  # its ranges, before the run folder is made
    split = c["data"].get("split")
    if (c["data"].get("sample") and isinstance(split, dict) and split.get("by", "rows") == "rows"
            and all(split.get(k) is None for k in ("train", "val", "test"))):
        # The sample's rows from 384 are its held-out test: never trained on.
        split["train"] = [0, HELD_OUT_ROWS[0]]
    geo = model_geometry(c["model"])
    padding = c["model"].get("padding", "valid")
    crop = c["train"].get("crop")
    if crop is None:
        sizes = valid_sizes(c["model"]["depth"], padding, up_to=4096)
        crop = next(s for s in sizes if s >= (2 * geo.halo if padding == "valid" else 0) + 96)
    crop = int(crop)
    if padding == "valid":
        if (crop - geo.size_offset) % geo.size_multiple or crop <= 2 * geo.halo:
            raise ValueError(
                f"crop {crop} is not a valid input size: use {geo.size_offset} + k * {geo.size_multiple}"
                f" above {2 * geo.halo}, e.g. {[s for s in valid_sizes(c['model']['depth'], up_to=600)][:6]}"
            )
    elif crop % geo.size_multiple:
        raise ValueError(f"crop {crop} must be a multiple of {geo.size_multiple} for a same-padded network")
    c["train"]["crop"] = crop
    ema = c["train"].get("ema")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 < ema < 1.0):
        raise ValueError(f"train.ema must be a decay between 0 and 1 (e.g. 0.999) or null, got {ema!r}")
    dice = c["loss"].get("dice", 0.0)
    if isinstance(dice, bool) or not isinstance(dice, (int, float)) or not 0.0 <= dice < math.inf:
        raise ValueError(f"loss.dice must be a weight >= 0 (0: the paper's loss alone), got {dice!r}")
    c["loss"]["dice"] = float(dice)
    boundary = c["loss"].get("boundary") or 0
    if boundary:
        # Blamed on the labels ("contain class 2 but the network has 2 classes").
        if c["model"].get("classes", 2) != 3:
            raise ValueError(f"loss.boundary={boundary} trains three classes (background, interior, boundary): "
                             f"set model.classes=3 too (it is {c['model'].get('classes', 2)})")
        if not c["data"].get("instances", True):
            raise ValueError("loss.boundary makes its classes from instance labels: not with class masks "
                             "(--class-masks)")
        if (c.get("export") or {}).get("class_names") == DEFAULT_CONFIG["export"]["class_names"]:
            # The two default names, written as class_1, class_2 under three classes.
            c.setdefault("export", {})["class_names"] = ["background", "interior", "boundary"]
    if not isinstance(c["train"].get("calibrate", False), bool):
        raise ValueError(f"train.calibrate must be true or false, got {c['train']['calibrate']!r}")
    if c["train"].get("calibrate") and not (c["data"].get("split") or {}).get("val"):
        raise ValueError("train.calibrate chooses its offset on the validation split: set data.split.val")
    if c.get("out") is None:
        name = str(c["name"])
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            # It names the run folder under runs/: "../../x" wrote outside it.
            raise ValueError(f"name must be a plain folder name (it names runs/<name>), got {name!r}; "
                             f"use --out for another place")
        c["out"] = f"runs/{name}"
    if c["data"].get("sample") and not c["data"].get("provenance"):
        c["data"]["provenance"] = SAMPLE_PROVENANCE
    return c


def load_splits(data: Dict[str, Any]) -> Dict[str, List[Sample]]:
    """Loads the data a config describes and splits it into ``train`` and
    optional ``val``/``test`` lists of samples (not yet normalised)."""
    if data.get("sample") is True:
        # The bundled sample's labels leave their last row and column
        # unannotated (nuclei called background there, ``ANNOTATED``):
        # trained on, they teach the network to stop a pixel short of the
        # image's edge; scored, they count right answers as errors.
        rows, cols = ANNOTATED
        samples = [load_sample_data(SAMPLE_DATA_DIR).region((0, rows), (0, cols))]
    elif data.get("sample"):
        samples = [load_sample_data(_path(data["sample"]))]
    elif data.get("image_dir"):
        samples = load_folder(_path(data["image_dir"]), _path(data["label_dir"]), data.get("instances", True))
    elif data.get("image"):
        img, lab = _path(data["image"]), _path(data["labels"])
        samples = load_arrays([read_image(img)], [read_labels(lab)], data.get("instances", True), [img.name],
                              [lab.name])
    else:
        raise ValueError("no data: give --sample, --image/--labels or --image-dir/--label-dir")
    split = dict(data.get("split") or {"by": "rows", "train": None})
    by = split.pop("by", "rows")
    if by == "rows":
        ranges = {k: v for k, v in split.items() if v is not None}
        if "train" not in ranges:
            ranges["train"] = [0, max(s.labels.shape[0] for s in samples)]
        return split_rows(samples, ranges)
    if by == "files":
        return split_files(samples, split.get("val"), split.get("test"), split.get("seed", 0))
    raise ValueError(f"data.split.by must be 'rows' or 'files', got {by!r}")


def lr_at(step: int, cfg: Dict[str, Any]) -> float:
    """Learning rate at ``step``: linear warm-up over ``warmup`` steps, then
    cosine decay from ``lr`` to ``min_lr`` at ``steps``.

    >>> cfg = {"lr": 1e-3, "min_lr": 0.0, "warmup": 10, "steps": 110}
    >>> lr_at(4, cfg), lr_at(10, cfg), lr_at(110, cfg)
    (0.0005, 0.001, 0.0)
    """
    lr, low, warm, total = cfg["lr"], cfg.get("min_lr", 0.0), cfg.get("warmup", 0), cfg["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return low + 0.5 * (lr - low) * (1.0 + math.cos(math.pi * t))


class _EvalSet:
    """A normalised evaluation region with its targets and weight map."""

    def __init__(self, sample: Sample, config: Dict[str, Any], class_weight: np.ndarray):
        self.sample = sample.normalized(config["data"]["normalization"])
        loss = config["loss"]
        if sample.instances:
            self.targets = (boundary_targets(sample.labels, int(loss["boundary"])) if loss.get("boundary") else
                            instance_targets(sample.labels, loss.get("separate", True)))
            self.weights = weight_map(sample.labels, loss["w0"], loss["sigma"], class_weight, self.targets)
        else:
            self.targets = class_targets(sample, int(config["model"]["classes"]))
            self.weights = class_weight.astype(np.float32)[self.targets]
        self.dice = loss["dice"]
        self.truth = sample.labels if sample.instances else None


def _read_out(classes: np.ndarray, read_out: Optional[Dict[str, Any]]) -> Optional[np.ndarray]:
    """The instances the runtime reads out of ``classes`` by ``read_out``
    (the export's ``instances``), or ``None`` without one."""
    if not read_out:
        return None
    from unet_rt import _unet_rt

    return _unet_rt.read_out_instances(np.ascontiguousarray(classes, np.uint16), json.dumps(read_out))


def validate(model: torch.nn.Module, sets: Sequence[_EvalSet], bf16: bool = False,
             read_out: Optional[Dict[str, Any]] = None, offsets: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """Weighted loss and pooled metrics of ``model`` on evaluation regions,
    each segmented in one forward pass of its mirror-padded image; instances
    by ``read_out`` (the runtime's) when given, else the components of
    class 1. ``offsets`` (one per class) are added to the logits first, as
    :func:`training.unet.offset_logits` adds them to an exported model."""
    return _scores(_logits(model, sets, bf16), sets, read_out, offsets)


def _logits(model: torch.nn.Module, sets: Sequence[_EvalSet], bf16: bool = False) -> List[np.ndarray]:
    was_training = model.training
    model.eval()
    try:
        return [predict_logits(model, s.sample.image, bf16=bf16) for s in sets]
    finally:
        model.train(was_training)


def _scores(logits: Sequence[np.ndarray], sets: Sequence[_EvalSet], read_out: Optional[Dict[str, Any]],
            offsets: Optional[Sequence[float]] = None) -> Dict[str, float]:
    results, loss_sum, pixels = [], 0.0, 0
    for s, z in zip(sets, logits):
        if offsets is not None:
            z = z + np.asarray(offsets, z.dtype).reshape((-1,) + (1,) * (z.ndim - 1))
        t = torch.from_numpy(s.targets.astype(np.int64))[None]
        w = torch.from_numpy(s.weights)[None]
        loss_sum += float(segmentation_loss(torch.from_numpy(z)[None], t, w, s.dice)) * t.numel()
        pixels += t.numel()
        truth = s.truth if s.truth is not None else connected_components(s.targets == 1)
        classes = z.argmax(0)
        results.append(evaluate(classes, truth, instances=_read_out(classes, read_out)))
    out = pool(results)
    out["loss"] = loss_sum / max(pixels, 1)
    return out


#: Background logit offsets :func:`calibrate` tries.
CALIBRATION_OFFSETS: Sequence[float] = tuple(round(0.1 * i, 1) for i in range(21))


def calibrate(logits: Sequence[np.ndarray], sets: Sequence[_EvalSet], read_out: Optional[Dict[str, Any]] = None,
              candidates: Sequence[float] = CALIBRATION_OFFSETS) -> Dict[str, Any]:
    """Chooses an offset for the background logit from the ``logits`` of the
    validation regions ``sets`` (``train.calibrate``): the one of ``candidates`` with the best
    foreground IoU among those that keep AP@0.5 at least at its value without
    an offset (separating objects matters more than their outlines); the
    smallest such on ties.

    Why: the class-balanced loss weighs the rarer object classes up, and a
    weighted cross-entropy is minimised by probabilities proportional to
    weight times frequency, so outlines drift outwards where the image is
    ambiguous (about half a pixel on the nuclei sample). Balancing is kept for
    what it buys (the thin boundary class that separates touching objects);
    the offset takes back its bias on the background / object decision.

    Returns ``{"offsets": [b, 0, ...], "candidates": [{"offset", "iou",
    "ap50"}, ...]}`` (``offsets`` per class, for
    :func:`training.unet.offset_logits`).
    """
    classes = int(logits[0].shape[0])
    table = []
    for b in candidates:
        m = _scores(logits, sets, read_out, [float(b)] + [0.0] * (classes - 1))
        table.append({"offset": float(b), "iou": round(m["iou"], 6), "ap50": round(m["ap50"], 6)})
    floor = next((r["ap50"] for r in table if r["offset"] == 0.0), 0.0)
    best = max((r for r in table if r["ap50"] >= floor), key=lambda r: (r["iou"], -r["offset"]))
    return {"offsets": [best["offset"]] + [0.0] * (classes - 1), "candidates": table}


def plot_curves(history: Dict[str, List[Any]], path: Path) -> Path:
    """Writes a PNG of the training loss (raw and smoothed), the validation
    loss and the validation scores against the step (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = history.get("step", []), history.get("loss", [])
    if losses:
        ax1.plot(steps, losses, color="0.75", lw=0.7, label="train (per step)")
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax1.plot(steps[k - 1:], smooth, color="C0", label=f"train (mean of {k})")
    val = history.get("val", [])
    if val:
        vs = [v["step"] for v in val]
        ax1.plot(vs, [v["loss"] for v in val], "o-", color="C1", label="validation")
        for key, color in (("iou", "C2"), ("dice", "C3"), ("ap50", "C4")):
            ax2.plot(vs, [v[key] for v in val], "o-", color=color, label=key)
        ax2.set_ylim(0, 1)
        ax2.legend()
    ax1.set_xlabel("step")
    ax1.set_ylabel("weighted cross-entropy")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_title("validation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _batches(loader: DataLoader) -> Iterator[Dict[str, torch.Tensor]]:
    while True:
        yield from loader


def train(config: Dict[str, Any], resume: Optional[Path] = None, command: Optional[str] = None) -> Dict[str, Any]:
    """Runs training as ``config`` describes (resolved with
    :func:`resolve_config`), optionally resuming from a checkpoint. Returns
    the final state: step, history, validation and test metrics, run folder,
    checkpoint and export paths. A run folder another run is writing is
    refused (``ValueError``)."""
    with contextlib.ExitStack() as held:
        return _train(config, resume, command, held)


@contextlib.contextmanager
def _run_folder_claimed(out: Path) -> Iterator[None]:
    """Holds an exclusive lock on the run folder ``out`` (on the folder
    itself: no file is left behind) while a run writes it. Two runs given
    one ``--out`` both passed the "already holds a run" check before either
    had saved, then wrote each other's checkpoints and curves in turn."""
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing to lock with
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another run is writing into {out}: wait for it to finish, or choose another --out") from None
        yield
    finally:
        os.close(fd)


def _train(config: Dict[str, Any], resume: Optional[Path], command: Optional[str],
           held: contextlib.ExitStack) -> Dict[str, Any]:
    """:func:`train`, with the run folder's lock entered on ``held``."""
    ck = load_checkpoint(resume) if resume is not None else None
    config = resolve_config(config)
    tc = config["train"]
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"])
    if tc.get("threads"):
        torch.set_num_threads(int(tc["threads"]))
    out = Path(config["out"])
    resumed = None if resume is None else (Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume))
    if (out / "last.pt").exists() and (resumed is None or (out / "last.pt").resolve() != resumed.resolve()):
        # Resuming another run into this folder would replace this one.
        raise ValueError(f"{out} already holds a run: pass --resume {out / 'last.pt'} or choose another --out")

    splits = load_splits(config["data"])
    norm = config["data"]["normalization"]
    train_samples = [s.normalized(norm) for s in splits["train"]]
    # Every image, of every part: only the first was checked, and an RGB
    # image among gray ones crashed the run at its first batch.
    channels = config["model"].get("in_channels", 1)
    for sample in [s for part in splits.values() for s in part]:
        if sample.image.shape[0] != channels:
            raise ValueError(
                f"image {sample.name} has {sample.image.shape[0]} channels but model.in_channels is {channels}"
            )
    model = build_model(config["model"])
    channels_last = bool(tc.get("channels_last"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    geo = model_geometry(config["model"])
    padding = config["model"].get("padding", "valid")
    margin = geo.halo if padding == "valid" else 0
    crop, batch = tc["crop"], int(tc["batch_size"])
    out_px = (crop - 2 * margin) ** 2
    if tc.get("epochs"):
        pixels = sum(s.labels.size for s in train_samples)
        tc["steps_per_epoch"] = max(1, math.ceil(pixels / (batch * out_px)))
        tc["steps"] = int(tc["epochs"]) * tc["steps_per_epoch"]
    steps = int(tc["steps"])
    loss_cfg = config["loss"]
    dataset = CropDataset(
        train_samples, crop, margin, steps * batch, Augmenter.from_config(config.get("augment")),
        seed=config["seed"], classes=config["model"].get("classes", 2), w0=loss_cfg["w0"],
        sigma=loss_cfg["sigma"], balance=loss_cfg.get("balance", True), separate=loss_cfg.get("separate", True),
        boundary=int(loss_cfg.get("boundary") or 0),
    )
    instance_samples = [s.labels for s in train_samples if s.instances]
    if instance_samples and ck is None:
        # The training scale, which `object_size=` at inference resamples to.
        diameters = np.concatenate([object_diameters(labels) for labels in instance_samples])
        if diameters.size:
            config.setdefault("export", {})["object_size"] = round(float(np.median(diameters)), 2)
    boundary = int(loss_cfg.get("boundary") or 0)
    if boundary and instance_samples and not (config.get("export") or {}).get("instances"):
        # Without a read-out the exported model gave the runtime's default
        # (every class but 0 as one component: touching objects merged
        # across their band) while the held-out AP was scored on class 1's
        # components alone (interiors, smaller than every object: 0.0):
        # neither was what a boundary model is for. Growth twice the band
        # (the bundled model's band of 3 left fragments of it as objects
        # at growth 3, and scored alike from 5 up).
        grow = 2 * boundary
        config.setdefault("export", {})["instances"] = {"seed_classes": [1], "grow_classes": [2], "grow": grow}
        _say(None, f"instances: interiors grown over the {boundary}-pixel boundary band by up to {grow} pixels "
                   "(export.instances sets another read-out)")
    read_out = (config.get("export") or {}).get("instances")
    val_sets = [_EvalSet(s, config, dataset.class_weight) for s in splits.get("val", [])]
    test_sets = [_EvalSet(s, config, dataset.class_weight) for s in splits.get("test", [])]

    if tc["optimizer"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    elif tc["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=tc["lr"], momentum=tc["momentum"], weight_decay=tc["weight_decay"])
    else:
        raise ValueError(f"train.optimizer must be 'adam' or 'sgd', got {tc['optimizer']!r}")

    start, history, elapsed = 0, {"step": [], "loss": [], "lr": [], "val": []}, 0.0
    if ck is not None and steps < int(ck.state["step"]):
        raise ValueError(f"the run is already at step {int(ck.state['step'])}: ask for more train.steps "
                         f"(--steps) than that to continue it, not {steps}")
    if ck is not None:
        model.load_state_dict(ck.model)
        if ck.optimizer is not None:
            opt.load_state_dict(ck.optimizer)
        if ck.rng is not None:
            torch.set_rng_state(ck.rng)
        start, history = int(ck.state["step"]), ck.state.get("history", history)
        elapsed = float(ck.state.get("train_seconds", 0.0))
    average = WeightAverage(model, tc["ema"], ck.ema if ck is not None else None) if tc.get("ema") else None
    evaluated = average.model if average is not None else model

    bf16 = bool(tc.get("bf16"))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # The loader's own generator: making its iterator draws a seed, and from
    # the global generator that draw came after a resumed run restored its
    # state, so dropout masks differed from the run's uninterrupted (up to
    # 3e-3 in the weights after 2 + 2 steps at dropout 0.3).
    loader = DataLoader(
        dataset, batch_size=batch, sampler=range(start * batch, steps * batch),
        num_workers=int(tc.get("workers") or 0), drop_last=True,
        persistent_workers=bool(tc.get("workers")),
        generator=torch.Generator().manual_seed(int(config["seed"]) + start),
    )
    # Only now, with everything built: a run that cannot start leaves no
    # folder, and a failed --resume leaves its run's config as it was.
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(_run_folder_claimed(out))
    _write_json(out / "config.json", config)
    state: Dict[str, Any] = {"step": start, "history": history}
    val_every = int(tc.get("val_every") or steps)

    def checkpoint(step: int, seconds: float, **extra: Any) -> Path:
        state.update(step=step, history=history, train_seconds=seconds, **extra)
        ck_path = save_checkpoint(out / "last.pt", model, opt, config, state,
                                  ema=average.model if average is not None else None)
        _write_json(out / "history.json", history)
        plot_curves(history, out / "curves.png")
        return ck_path

    model.train()
    progress = _progress(range(start, steps), tc.get("progress", True), config["name"])
    t0 = time.perf_counter()
    batches = _batches(loader)
    with StopRequest() as stop:
        for step in progress:
            b = next(batches)
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            x = b["image"]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(x)
            loss = segmentation_loss(logits, b["target"], b["weight"], loss_cfg["dice"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update(step)
            value = loss.detach().item()
            if not math.isfinite(value):
                hint = f" or loss.dice ({loss_cfg['dice']:g})" if loss_cfg["dice"] else ""
                raise FloatingPointError(f"loss became {value} at step {step}; lower train.lr{hint}")
            history["step"].append(step + 1)
            history["loss"].append(value)
            history["lr"].append(lr)
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.1e}")
            done = step + 1
            if done % val_every == 0 or done == steps:
                if val_sets:
                    v = validate(evaluated, val_sets, read_out=read_out)
                    v["step"] = done
                    history["val"].append(v)
                    _say(progress, f"step {done}: val loss {v['loss']:.4f}  iou {v['iou']:.3f}  "
                                   f"dice {v['dice']:.3f}  AP50 {v['ap50']:.3f}")
                checkpoint(done, elapsed + time.perf_counter() - t0)
            if stop.signum is not None:
                saved = out / "last.pt" if done % val_every == 0 or done == steps else \
                    checkpoint(done, elapsed + time.perf_counter() - t0)
                raise Interrupted(stop.signum, done, steps, saved)
    train_seconds = elapsed + time.perf_counter() - t0

    metrics: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    offsets = None
    if val_sets:
        val_logits = _logits(evaluated, val_sets)
        if tc.get("calibrate"):
            extra["calibration"] = calibrate(val_logits, val_sets, read_out)
            offsets = extra["calibration"]["offsets"]
            _say(None, f"calibration: background logit offset {offsets[0]:g} (chosen on the validation split)")
        metrics["validation"] = _public(_scores(val_logits, val_sets, read_out, offsets))
    if test_sets:
        metrics["test"] = _public(validate(evaluated, test_sets, read_out=read_out, offsets=offsets))
        metrics["test"]["region"] = [s.sample.name for s in test_sets]
    metrics["instances"] = (("the runtime's read-out " + json.dumps(read_out)) if read_out else
                            "connected components (4-connectivity) of class 1") + \
        "; AP50 = TP / (TP + FP + FN), match IoU > 0.5"
    provenance = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }
    ck_path = checkpoint(steps, train_seconds, metrics=metrics, provenance=provenance, **extra)
    _write_json(out / "metrics.json", {**metrics, "train_seconds": round(train_seconds, 1), "steps": steps})
    for part in ("validation", "test"):
        if part in metrics:
            m = metrics[part]
            _say(None, f"{part}: iou {m['iou']:.4f}  dice {m['dice']:.4f}  AP50 {m['ap50']:.4f} "
                       f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']})")
    result = {"run": str(out), "checkpoint": str(ck_path), "step": steps, "metrics": metrics,
              "train_seconds": train_seconds, "history": history}
    export_path = (config.get("export") or {}).get("path")
    if export_path:
        from .export import export_checkpoint

        result["export"] = str(export_checkpoint(ck_path, export_path))
        _say(None, f"exported {result['export']}")
    return result


class WeightAverage:
    """An exponential moving average of a model's weights (``train.ema``):
    after each optimiser step ``avg += (1 - d) * (w - avg)`` with ``d =
    min(decay, (1 + step) / (10 + step))``, so the first steps do not pin
    the average to the initial weights. Floating buffers (batch-norm running
    statistics) are averaged the same way, counters copied. The average is
    what validation scores and the export ships: late in training the weights
    wander around a minimum from batch to batch, and their average places
    object outlines more steadily than any single step.

    >>> net = torch.nn.Linear(1, 1)
    >>> avg = WeightAverage(net, 0.5)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(2.0)
    >>> avg.update(100)
    >>> bool(torch.allclose(avg.model.weight, net.weight - 1.0))
    True
    """

    def __init__(self, model: torch.nn.Module, decay: float, state: Optional[Dict[str, torch.Tensor]] = None):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if state is not None:
            self.model.load_state_dict(state)
        # State-dict tensors share storage with the modules, which update
        # them in place (optimiser, batch norm, load_state_dict): pair once.
        self._pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - min(self.decay, (1.0 + step) / (10.0 + step))
        for avg, new in self._pairs:
            if avg.is_floating_point():
                avg.lerp_(new.detach(), weight)
            else:
                avg.copy_(new)


def _public(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}


def _progress(it: range, enabled: bool, name: str):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=name, initial=it.start, total=it.stop, dynamic_ncols=True, smoothing=0.05)


def _say(progress: Any, message: str) -> None:
    if progress is not None and hasattr(progress, "write"):
        progress.write(message)
    else:
        print(message, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON config file (see DEFAULT_CONFIG in training/train.py)")
    p.add_argument("--resume", type=Path, help="checkpoint (or run folder) to continue from; its config is used")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--name")
    p.add_argument("--seed", type=int)
    g = p.add_argument_group("data")
    g.add_argument("--sample", action="store_true", help="bundled nuclei sample (rows 0..319 train, 320..383 "
                                                        "validation, 384..511 held out)")
    g.add_argument("--image")
    g.add_argument("--labels")
    g.add_argument("--image-dir")
    g.add_argument("--label-dir")
    g.add_argument("--class-masks", action="store_true", help="labels are class ids, not instance ids")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["unet", "unet++"])
    g.add_argument("--depth", type=int)
    g.add_argument("--base", type=int)
    g.add_argument("--padding", choices=["valid", "same"])
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
    g = p.add_argument_group("training")
    g.add_argument("--crop", type=int, help="input crop size (a valid size)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--val-every", type=int)
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the forward pass (CPUs with AVX512-BF16/AMX)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--threads", type=int)
    g.add_argument("--workers", type=int, help="data loader worker processes")
    g.add_argument("--no-progress", action="store_true")
    p.add_argument("--export", help="write the TorchScript model here when done")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config entry, e.g. --set loss.w0=5 (repeatable)")
    return p


# The settings that say which files a run trains on.
_RUN_DATA = ("sample", "image", "labels", "image_dir", "label_dir", "instances")


def _move_export_with_the_run(config: Dict[str, Any], run_folder: Any, export_path: Any) -> None:
    """An export path inside the run folder a config file names follows the
    run to another ``--out``: the bundled model's config, run with ``--out
    runs/try``, wrote its export over ``runs/nuclei/nuclei.pt`` all the same
    (another run's). A path set with ``--export`` (or ``--set``) stays."""
    if not (run_folder and export_path) or config.get("out") == run_folder:
        return
    if (config.get("export") or {}).get("path") != export_path:
        return
    try:
        inside = Path(export_path).relative_to(Path(run_folder))
    except ValueError:
        return
    config["export"]["path"] = str(Path(config["out"]) / inside)


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """DEFAULT_CONFIG <- checkpoint config (when resuming) <- --config <- flags <- --set."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if args.resume is not None:
        try:
            checkpoint = load_checkpoint(args.resume)
        except ValueError as e:  # load_checkpoint's refusal names the file and why
            raise ValueError(f"--resume: {e}") from e
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--resume {args.resume}: not a training checkpoint ({first})") from e
        config = merge_config(config, checkpoint.config)
        _drop_foreign_defaults(config["model"], set(checkpoint.config.get("model", {})))
        # The run goes on where its checkpoint is: the folder it recorded
        # was written again after the run was moved (and the copy refused).
        config["out"] = str(checkpoint.path.parent)
    resumed_model = copy.deepcopy(config["model"]) if args.resume is not None else None
    resumed_norm = copy.deepcopy(config["data"].get("normalization")) if args.resume is not None else None
    resumed_data = {k: config["data"].get(k) for k in _RUN_DATA} if args.resume is not None else None
    file_model: Dict[str, Any] = {}
    if args.config is not None:
        try:
            given = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--config {args.config}: {e}") from e
        if not isinstance(given, dict):
            raise ValueError(f"--config {args.config}: holds a {type(given).__name__}, not a JSON object of sections")
        config = merge_config(config, given)
        if isinstance(given.get("model"), dict):
            file_model = given["model"]
    flags = {
        "out": args.out, "name": args.name, "seed": args.seed,
        "data.image": args.image, "data.labels": args.labels,
        "data.image_dir": args.image_dir, "data.label_dir": args.label_dir,
        "model.architecture": args.arch, "model.depth": args.depth, "model.base": args.base,
        "model.padding": args.padding, "model.batch_norm": args.batch_norm,
        "train.crop": args.crop, "train.batch_size": args.batch_size, "train.steps": args.steps,
        "train.epochs": args.epochs, "train.lr": args.lr, "train.val_every": args.val_every,
        "train.bf16": args.bf16, "train.channels_last": args.channels_last,
        "train.threads": args.threads, "train.workers": args.workers, "export.path": args.export,
    }
    if args.sample:
        config["data"]["sample"] = True
        config["data"]["split"] = {"by": "rows", "train": [0, 320], "val": [320, 384], "test": [384, 512]}
    if args.class_masks:
        config["data"]["instances"] = False
    if args.no_progress:
        config["train"]["progress"] = False
    run_folder, export_path = config.get("out"), (config.get("export") or {}).get("path")
    for key, value in flags.items():
        if value is not None:
            _set_path(config, f"{key}={json.dumps(value)}")
    for assignment in args.set:
        _set_path(config, assignment)
    _move_export_with_the_run(config, run_folder, export_path)
    # The model settings the user wrote (a config file's, --set's).
    written = set(file_model) | {a.partition("=")[0].split(".", 1)[1] for a in args.set if a.startswith("model.")}
    if isinstance(config.get("model"), dict):
        _drop_foreign_defaults(config["model"], written)
    if args.steps is not None:
        if args.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        # A run set by epochs recomputed its steps from them: --steps (the
        # way to extend a resumed run) was ignored, and it "succeeded".
        config["train"]["epochs"] = None
    if resumed_model is not None:
        # The checkpoint's weights fit its own network only: a change here
        # was a page of state_dict size mismatches.
        changed = sorted(k for k in set(config["model"]) | set(resumed_model)
                         if config["model"].get(k) != resumed_model.get(k))
        if changed:
            was = ", ".join(f"model.{k}={json.dumps(resumed_model.get(k))}" for k in changed)
            raise ValueError(f"--resume {args.resume} continues its own network ({was}); "
                             f"model settings cannot change on resume")
        # Its weights learned this input scaling: the export recorded the
        # new one for every step.
        if config["data"].get("normalization") != resumed_norm:
            raise ValueError(f"--resume {args.resume} was trained with data.normalization "
                             f"{json.dumps(resumed_norm)}; it cannot change on resume")
        # Other data went on training under the first data's object_size
        # (the scale the export records), without a word.
        changed = [k for k in _RUN_DATA if config["data"].get(k) != resumed_data[k]]
        if changed and resumed_data is not None:
            was = ", ".join(f"data.{k}={json.dumps(resumed_data[k])}" for k in changed)
            raise ValueError(f"--resume {args.resume} continues its run on its own data ({was}); "
                             f"start a new run for other data")
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m training.train``."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def refuse(e: ValueError) -> NoReturn:
        # Settings and data that do not fit: one line, without the usage
        # block (the flags themselves parsed), exit status 2.
        parser.exit(2, f"{parser.prog}: error: {e}\n")

    try:
        config = config_from_args(args)
        resolve_config(config)  # a bad setting is a usage error, said before anything loads
    except ValueError as e:
        refuse(e)
    command = "python -m training.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    try:
        result = train(config, resume=args.resume, command=command)
    except ValueError as e:
        refuse(e)  # data that do not fit (split rows, shapes, channels)
    except OSError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 128 + e.signum
    print(f"run {result['run']}: {result['step']} steps, {result['train_seconds']:.0f} s training, "
          f"{time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
