"""A tiny valid-padding U-Net exported on the spot: the stand-in model for the
set-up's first run and for tests that need a real network quickly.

``python -m training.tiny OUT.pt`` writes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .export import build_metadata, export_torchscript
from .unet import UNet

__all__ = ["TINY_CONFIG", "tiny_unet", "export_tiny"]

TINY_CONFIG = dict(in_channels=1, classes=2, depth=3, base=4, padding="valid", batch_norm=False, dropout=0.0)


def tiny_unet(seed: int = 0, **overrides) -> UNet:
    """A randomly initialised 3-level U-Net with 4 base channels (seeded)."""
    torch.manual_seed(seed)
    return UNet(**{**TINY_CONFIG, **overrides}).eval()


def export_tiny(path: Path | str, seed: int = 0, normalization: dict | None = None, **overrides) -> Path:
    """Exports :func:`tiny_unet` with metadata to ``path`` (percentile
    normalization 1 to 99.8 unless ``normalization`` says otherwise)."""
    net = tiny_unet(seed, **overrides)
    meta = build_metadata(
        net.config,
        name="tiny-random",
        description="Untrained 3-level U-Net (random weights) for plumbing tests",
        normalization=normalization or {"kind": "percentile", "low": 1.0, "high": 99.8},
        training={"trained": False, "seed": seed},
    )
    return export_torchscript(net, path, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(export_tiny(args.output, args.seed))


if __name__ == "__main__":
    main()
