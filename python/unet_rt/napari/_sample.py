"""The plugin's sample data."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["nuclei_sample"]


def nuclei_sample() -> List[Tuple[np.ndarray, Dict[str, Any], str]]:
    """The nuclei image the bundled model was trained on, as napari layer
    data.

    >>> [(data.shape, meta["name"], kind) for data, meta, kind in nuclei_sample()]
    [((512, 512), 'nuclei', 'image')]
    """
    from ..data import nuclei

    return [(nuclei(), {"name": "nuclei", "colormap": "gray"}, "image")]
