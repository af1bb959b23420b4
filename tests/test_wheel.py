"""The built wheel installs into a fresh virtual environment beside torch
2.11 and works there (issue 5's "done when"). Slow: it builds a wheel.

The new venv gets torch and the rest of the test venv's packages as links,
not copies: a second CUDA build of torch is about 6 GB on disk, and one such
copy per run filled the CI machine's disk. pip still has to find the wheel's
requirements (torch==2.11.0, numpy) satisfied in the new venv, and it installs
from the wheel alone (`--no-index`): nothing is fetched."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_segments_in_a_fresh_venv(tmp_path, clean_env):
    env = dict(clean_env, PATH=f"{Path(sys.executable).parent}:{clean_env.get('PATH', '')}")
    dist = tmp_path / "dist"
    # As scripts/env.sh sets them: the venv's value keeps torch-sys's build
    # (in a target folder shared with the install) from running again.
    venv = str(Path(sys.executable).parents[1])
    build = subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--out", str(dist)],
        cwd=ROOT, env=dict(env, VIRTUAL_ENV=venv, LIBTORCH_USE_PYTORCH=venv),
        capture_output=True, text=True, timeout=1800,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(dist.glob("unet_rt-*.whl"))
    assert len(wheels) == 1 and "abi3" in wheels[0].name
    assert wheels[0].stat().st_size < 20 * 2**20, "the wheel should be a few MB"

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    _link_installed_packages(into=venv)
    fresh_env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", str(wheels[0])],
        env=fresh_env, capture_output=True, text=True, timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = "import unet_rt, numpy as np; print(unet_rt.segment(np.random.rand(300, 400)).shape)"
    run = subprocess.run([str(python), "-c", code], env=fresh_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "(300, 400)"
    # The metadata writer comes with the package (the runtime's advice
    # for a network without metadata names it).
    import torch

    torch.jit.script(torch.nn.Conv2d(1, 2, 3, padding=1).eval()).save(str(tmp_path / "plain.pt"))
    export = subprocess.run([str(python), "-m", "unet_rt.export", "plain.pt", "-o", "with.pt"], env=fresh_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0 and "wrote" in export.stdout, export.stderr[-3000:]
    assert "site-packages" in subprocess.run(
        [str(python), "-c", "import unet_rt; print(unet_rt.__file__)"], env=fresh_env, cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    ).stdout


def _link_installed_packages(into: Path) -> None:
    """Links every package of this venv except unet_rt itself into the venv
    `into` (pip among them), so that torch's libraries sit at the usual
    ``site-packages/torch/lib`` beside the installed extension, which finds
    them through its rpath."""
    source = Path(sysconfig.get_paths()["purelib"])
    (target,) = (into / "lib").glob("python3*/site-packages")
    for entry in source.iterdir():
        if entry.name.startswith(("unet_rt", "_unet_rt", "__editable__")) or entry.suffix == ".pth":
            continue
        link = target / entry.name
        if not link.exists():
            link.symlink_to(entry, target_is_directory=entry.is_dir())
