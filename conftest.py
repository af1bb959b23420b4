"""Fixtures shared by every pytest file and by the doctests of the package."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random valid U-Net (3 levels, halo 20, sizes 44 + 4k) with metadata."""
    from training.tiny import export_tiny

    return export_tiny(tmp_path_factory.mktemp("models") / "tiny.pt", seed=0)


@pytest.fixture(scope="session")
def cli() -> Path:
    """The installed ``unet-rt`` binary (``.venv/bin/unet-rt``), or the one
    ``UNET_RT_CLI`` names: a build tested without installing it."""
    override = os.environ.get("UNET_RT_CLI")
    if override:
        if not Path(override).is_file():
            pytest.fail(f"UNET_RT_CLI={override} is not a file")
        return Path(override)
    candidate = Path(sys.executable).parent / "unet-rt"
    found = candidate if candidate.exists() else shutil.which("unet-rt")
    if not found:
        pytest.fail("unet-rt is not installed: run scripts/install.sh")
    return Path(found)


@pytest.fixture
def clean_env() -> dict:
    """The environment of a new shell: no LD_LIBRARY_PATH, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    return env


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict, request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        doctest_namespace["tiny_model_path"] = request.getfixturevalue("tiny_model_path")
