"""Training checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of a plain dict that ``torch.load(...,
weights_only=True)`` accepts: tensors (the model's and the optimizer's state
dicts, the torch RNG state), numbers, strings, lists and dicts. The run's
configuration and its progress (step, history, metrics, provenance) are
stored as JSON strings inside it, so a checkpoint is one self-describing file.

>>> import tempfile, torch
>>> from training.unet import build_model
>>> config = {"model": {"architecture": "unet", "depth": 2, "base": 2}}
>>> net = build_model(config["model"])
>>> with tempfile.TemporaryDirectory() as d:
...     p = save_checkpoint(f"{d}/last.pt", net, None, config, {"step": 3})
...     ck = load_checkpoint(p)
>>> ck.state["step"], ck.config["model"]["depth"]
(3, 2)
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .unet import build_model

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_FORMAT = "unet_rt-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        config: the run's configuration (``config["model"]`` rebuilds the net
            with :func:`training.unet.build_model`).
        state: progress: ``step``, ``history``, ``metrics``, provenance.
        model: the model's state dict.
        optimizer: the optimizer's state dict, or ``None``.
        rng: the torch CPU RNG state, or ``None``.
        path: where it was read from.
        ema: the exponential moving average of the weights (``train.ema``),
            or ``None``; when present it is the network that is evaluated
            and exported, and ``model`` holds the weights training resumes
            from.
    """

    config: Dict[str, Any]
    state: Dict[str, Any]
    model: Dict[str, torch.Tensor]
    optimizer: Optional[Dict[str, Any]]
    rng: Optional[torch.Tensor]
    path: Optional[Path] = None
    ema: Optional[Dict[str, torch.Tensor]] = None

    @property
    def weights(self) -> Dict[str, torch.Tensor]:
        """The weights to evaluate and export: the average when the run
        kept one, else the trained ones."""
        return self.ema if self.ema is not None else self.model


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: Union[str, os.PathLike],
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    config: Dict[str, Any],
    state: Dict[str, Any],
    ema: Optional[nn.Module] = None,
) -> Path:
    """Writes a checkpoint atomically (temporary file, then rename) and
    returns its path. ``config`` and ``state`` must be JSON-serialisable;
    ``ema`` is the weight average of a run that keeps one."""
    path = Path(path)
    obj = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config),
        "state": json.dumps(state),
        "model": _weights(model),
        "ema": _weights(ema) if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": torch.get_rng_state(),
    }
    _atomic_save(obj, path)
    return path


def _weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def load_checkpoint(path: Union[str, os.PathLike]) -> Checkpoint:
    """Reads a checkpoint with ``weights_only=True`` (no arbitrary code runs).
    ``path`` may be a run folder, meaning its ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, which runs whatever
        # code the file holds: never the advice for a file of unknown origin.
        raise ValueError(f"{path} is not a training checkpoint ({CHECKPOINT_FORMAT}): torch.load reads no weights from it "
                         "(a file torch.save did not write, or one holding more than tensors and numbers)") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a training checkpoint ({CHECKPOINT_FORMAT}; {first})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return Checkpoint(
        config=json.loads(obj["config"]),
        state=json.loads(obj["state"]),
        model=obj["model"],
        optimizer=obj.get("optimizer"),
        rng=obj.get("rng"),
        path=path,
        ema=obj.get("ema"),
    )


def model_from_checkpoint(checkpoint: Union[str, os.PathLike, Checkpoint]) -> Tuple[nn.Module, Checkpoint]:
    """The network rebuilt from a checkpoint's config with its weights loaded
    (:attr:`Checkpoint.weights`: the average when the run kept one; eval
    mode), and the checkpoint."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = build_model(ck.config["model"])
    model.load_state_dict(ck.weights)
    return model.eval(), ck
