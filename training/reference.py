"""Reference results computed by PyTorch and NumPy alone, against which the
runtime is tested (the "whole-image oracle" of docs/design.md section 9).

>>> import numpy as np
>>> whole_image_padding(37, halo=20, multiple=4, offset=0)
(20, 23)
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch

from .data import normalize

__all__ = ["normalize", "whole_image_padding", "reference_whole"]


def whole_image_padding(size: int, halo: int, multiple: int, offset: int) -> Tuple[int, int]:
    """``(before, after)`` mirror padding that turns an axis of ``size`` into
    a valid input covering it: ``halo`` before, enough after to reach a valid size."""
    total = size + 2 * halo
    while (total - offset) % multiple or total <= 2 * halo or total < offset:
        total += 1
    return halo, total - size - halo


def reference_whole(net: torch.nn.Module, image: np.ndarray, metadata: Dict) -> np.ndarray:
    """Raw output ``(classes, *image.shape)`` of one forward pass over the whole
    normalised, mirror-padded 2-D or 3-D single-channel ``image``.

    Valid models are padded by their halo; same-padded ones by their context
    margin rounded up to the pooling factor (so that the border pixels see
    mirrored context, as the runtime's tiles do), and their output is cropped
    back to the image."""
    multiple = metadata["size_multiple"]
    valid = metadata["padding"] == "valid"
    halo = metadata["halo"] if valid else -(-metadata["halo"] // multiple) * multiple
    x = normalize(image, metadata.get("normalization", {"kind": "none"}))
    pads: List[Tuple[int, int]] = [
        whole_image_padding(s, halo, metadata["size_multiple"], metadata["size_offset"]) for s in image.shape
    ]
    padded = np.pad(x, pads, mode="reflect")
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(padded))[None, None])[0].float().numpy()
    start = 0 if valid else halo
    crop = (slice(None),) + tuple(slice(start, start + s) for s in image.shape)
    return np.ascontiguousarray(out[crop])
