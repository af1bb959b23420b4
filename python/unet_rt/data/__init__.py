"""Sample data shipped with unet_rt.

>>> from unet_rt.data import nuclei
>>> image = nuclei()
>>> image.shape, image.dtype
((512, 512), dtype('uint16'))
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["nuclei"]


def nuclei() -> np.ndarray:
    """A 512x512 uint16 fluorescence image of cell nuclei: the image the
    bundled model was trained and evaluated on (rows 384-511 held out).

    Source and licence: the 2018 Data Science Bowl, BBBC038 (Caicedo et
    al., Nature Methods 16, 2019), as distributed in the ``stardist`` 0.9.2
    wheel (BSD-3-Clause)."""
    with resources.files(__name__).joinpath("nuclei.npz").open("rb") as f, np.load(f) as archive:
        return np.array(archive["image"])
