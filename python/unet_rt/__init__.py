"""unet_rt: fast overlap-tile U-Net segmentation on libtorch.

>>> import unet_rt
>>> sorted(unet_rt.build_info())
['cpu_threads', 'cuda_available', 'cuda_device_count', 'libtorch_version', 'version']
"""

from __future__ import annotations

# torch must be imported before the extension: it loads the libtorch that the
# extension links against, so the process holds exactly one libtorch.
import torch as _torch  # noqa: F401  (imported for its side effect)

import atexit as _atexit
from typing import Any as _Any, Dict as _Dict

from . import _unet_rt
from .errors import (
    ApproximateTilingWarning,
    CancelledError,
    DeviceError,
    InferenceError,
    InternalError,
    InvalidArgumentError,
    MetadataError,
    ModelError,
    ModelNotFoundError,
    NonFiniteError,
    PackageError,
    UnetRtError,
    UnetRtIOError,
)
from ._window import Window
from .model import DEFAULT_PRECISION, Model, bundled_model_path, plan, segment

__version__: str = _unet_rt.__version__

# At interpreter exit, calls still running in daemon threads are cancelled
# and waited for (a forward pass in progress finishes; a second Ctrl-C ends
# the wait): finalizing under them crashed the process.
_atexit.register(_unet_rt.stop_at_exit, 10.0)

__all__ = [
    "__version__",
    "build_info",
    "bundled_model_path",
    "DEFAULT_PRECISION",
    "segment",
    "plan",
    "Model",
    "Window",
    "CancelledError",
    "UnetRtError",
    "ModelError",
    "ModelNotFoundError",
    "MetadataError",
    "PackageError",
    "InvalidArgumentError",
    "DeviceError",
    "InferenceError",
    "NonFiniteError",
    "InternalError",
    "UnetRtIOError",
    "ApproximateTilingWarning",
]


def build_info() -> _Dict[str, _Any]:
    """Versions and devices of this build: the unet_rt version, the libtorch
    version loaded, whether CUDA is available, the CUDA device count and the
    CPU thread count.

    >>> build_info()["libtorch_version"].startswith("2.11")
    True
    """
    return dict(_unet_rt.build_info())
