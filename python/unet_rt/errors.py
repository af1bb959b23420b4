"""The exceptions raised by unet_rt, rooted at :class:`UnetRtError`.

Each error of the Rust core has its own class here. Bad arguments are also
``ValueError`` and a missing model file is also ``FileNotFoundError``, so
generic handlers keep working:

>>> issubclass(InvalidArgumentError, ValueError)
True
>>> issubclass(ModelNotFoundError, FileNotFoundError)
True
"""

from __future__ import annotations

__all__ = [
    "UnetRtError",
    "ModelError",
    "ModelNotFoundError",
    "MetadataError",
    "PackageError",
    "InvalidArgumentError",
    "DeviceError",
    "InferenceError",
    "NonFiniteError",
    "UnetRtIOError",
    "CancelledError",
    "InternalError",
    "ApproximateTilingWarning",
]


class UnetRtError(Exception):
    """Base class of every error raised by unet_rt."""


class ModelError(UnetRtError):
    """The model file exists but cannot be loaded (not TorchScript, corrupt)."""


class ModelNotFoundError(UnetRtError, FileNotFoundError):
    """The model file does not exist."""


class MetadataError(ModelError):
    """The model's embedded ``unet_rt.json`` metadata is malformed."""


class PackageError(ModelError):
    """A bioimage.io package is invalid, or asks for axes, sizes or a
    processing step unet_rt cannot run (the message names it)."""


class InvalidArgumentError(UnetRtError, ValueError):
    """An argument (array shape, dtype, option) is not acceptable."""


class DeviceError(UnetRtError, RuntimeError):
    """The requested device is not available on this machine."""


class InferenceError(UnetRtError, RuntimeError):
    """libtorch failed while running the model."""


class NonFiniteError(InferenceError):
    """The network produced NaN or infinite values (the message names the
    first tile); pass ``nonfinite="propagate"`` to keep them instead."""


class InternalError(UnetRtError, RuntimeError):
    """A bug in unet_rt itself; please report it with the call that caused it."""


class UnetRtIOError(UnetRtError, OSError):
    """Reading or writing a file failed."""


class CancelledError(UnetRtError):
    """The engine stopped at a cancellation with no exception of its own to
    report. An exception a progress callback raises, and Ctrl-C's
    ``KeyboardInterrupt``, come out as themselves."""


class ApproximateTilingWarning(UserWarning):
    """Tiles do not reproduce the whole-image forward exactly for this model
    (layers that see the whole tile, such as instance normalisation or
    pyramid pooling); the message gives the measured label agreement.
    Segment with ``tile="whole"`` for the whole-image result (one pass over
    the mirror-padded image, whose global layers see its mirrored border
    too), or silence it with
    :func:`warnings.filterwarnings` when the agreement is enough."""
