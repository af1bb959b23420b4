"""The Rust crate's complete program (``crates/unet-rt/examples/segment.rs``,
the README's "Rust" section) gives the Python API's labels and says what is
wrong with a file. ``cargo test`` (the test command's first step) builds it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import unet_rt

TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "unet_rt" / "target")
EXAMPLE = TARGET / "release" / "examples" / "segment"


@pytest.fixture(scope="module")
def example() -> Path:
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} is not built (cargo test --release builds it)")
    return EXAMPLE


def test_the_example_gives_the_python_apis_labels(example, tiny_model_path, tmp_path, clean_env):
    image = np.random.default_rng(3).random((150, 170), dtype=np.float32)
    np.save(tmp_path / "image.npy", image)
    run = subprocess.run([str(example), str(tiny_model_path), str(tmp_path / "image.npy"), str(tmp_path / "labels.npy"),
                          "cpu"], capture_output=True, text=True, env=clean_env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.load(tmp_path / "labels.npy"), unet_rt.segment(image, model=tiny_model_path,
                                                                            device="cpu"))


def test_the_example_names_the_file_and_checks_the_output_first(example, tiny_model_path, tmp_path, clean_env):
    np.save(tmp_path / "u16.npy", np.zeros((64, 64), np.uint16))
    wrong = subprocess.run([str(example), str(tiny_model_path), str(tmp_path / "u16.npy"), str(tmp_path / "o.npy"),
                            "cpu"], capture_output=True, text=True, env=clean_env, timeout=300)
    assert wrong.returncode == 1 and "u16.npy: cannot be read as a float32 .npy array" in wrong.stderr, wrong.stderr
    gone = subprocess.run([str(example), str(tiny_model_path), str(tmp_path / "u16.npy"),
                           str(tmp_path / "none" / "o.npy"), "cpu"], capture_output=True, text=True, env=clean_env,
                          timeout=300)
    assert gone.returncode == 1 and "o.npy: its folder" in gone.stderr and "does not exist" in gone.stderr
    assert not (tmp_path / "o.npy").exists()
