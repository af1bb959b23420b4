"""Shared set-up for the training tests: makes the repository root importable
(``import training``) whichever way pytest is started, and runs torch on one
thread (tests share a small machine; oversubscribed OpenMP pools stall)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    yield


def tiny_config(out: Path, **train: object) -> dict:
    """A few-second training config: a 3-level U-Net with 4 base channels on
    92-pixel crops of the bundled sample (rows 0..319 train, 320..383
    validation, 384..511 held out)."""
    from training.train import DEFAULT_CONFIG, merge_config

    return merge_config(DEFAULT_CONFIG, {
        "name": "tiny",
        "seed": 0,
        "out": str(out),
        "data": {"sample": True, "split": {"by": "rows", "train": [0, 320], "val": [320, 384], "test": [384, 512]}},
        "model": {"architecture": "unet", "depth": 3, "base": 4, "batch_norm": True, "dropout": 0.0},
        "train": {"crop": 92, "batch_size": 2, "steps": 40, "lr": 5e-3, "warmup": 3, "val_every": 20,
                  "progress": False, **train},
        "export": {"name": "tiny-nuclei", "class_names": ["background", "nucleus"]},
    })


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short training run shared by the tests that need a trained checkpoint."""
    from training.train import train

    return train(tiny_config(tmp_path_factory.mktemp("run") / "tiny"), command="pytest")
