"""The :class:`Model` class: a TorchScript model loaded once by the Rust core."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import numpy as np

from . import _unet_rt
from .errors import InvalidArgumentError

__all__ = ["Model"]


class Model:
    """A TorchScript model loaded once onto a device and shared by threads.

    Args:
        path: the TorchScript file (``.pt``), ideally exported with unet_rt
            metadata (see ``training.export``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Example::

        >>> import numpy as np, unet_rt
        >>> model = unet_rt.Model(tiny_model_path)
        >>> model.metadata["halo"]
        20
        >>> model.forward(np.zeros((1, 1, 44, 44), np.float32)).shape
        (1, 2, 4, 4)
    """

    __slots__ = ("_inner",)

    def __init__(self, path: "os.PathLike[str] | str", device: str = "cpu") -> None:
        self._inner = _unet_rt.Model(os.fspath(path), device)

    @property
    def path(self) -> str:
        """The file the model was loaded from."""
        return os.fspath(self._inner.path)

    @property
    def device(self) -> str:
        """The device the weights live on, e.g. ``"cpu"``."""
        return self._inner.device

    @property
    def metadata(self) -> Optional[Dict[str, Any]]:
        """The embedded ``unet_rt/1`` metadata, or ``None`` for plain TorchScript."""
        text = self._inner.metadata_json
        return None if text is None else json.loads(text)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass of the network on a batch ``(N, C, spatial...)``.

        The batch is converted to float32 if needed; the raw network output is
        returned as a float32 array. The GIL is released while the network runs.
        """
        array = np.asarray(batch)
        if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.number)):
            raise InvalidArgumentError(f"invalid batch: dtype {array.dtype} is not numeric")
        return self._inner.forward(np.asarray(array, dtype=np.float32))

    def __repr__(self) -> str:
        return f"Model(path={self.path!r}, device={self.device!r})"
