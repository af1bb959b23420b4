"""What the task graph carries instead of a model: a small picklable
:class:`ModelSpec`, and the per-process cache that turns it into a loaded
:class:`unet_rt.Model` once per worker process."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ..errors import InvalidArgumentError, ModelError, ModelNotFoundError
from .. import _cache
from ..model import DEFAULT_PRECISION, Model, bundled_model_path, cached_model, check_model_arg
from ._tiling import Tiling, plan_tiling

__all__ = ["ModelSpec", "load_model", "clear_cache"]

_BYTES_PREFIX = "sha256:"


@dataclass(frozen=True)
class ModelSpec:
    """A model as the task graph carries it: a few hundred bytes, never weights.

    Attributes:
        source: the absolute path of the model file, or ``"sha256:<hex>"`` for
            a model given as bytes (the bytes then travel once per worker as a
            separate piece of data, see :func:`load_model`).
        device: the device each worker loads the model on (``"auto"`` picks the
            worker's GPU when it has one: run one worker process per GPU).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        digest: the SHA-256 of the model file when the spec was made (when
            the model was loaded, for a :class:`~unet_rt.Model`): a file
            replaced between two runs is loaded again, and a worker whose
            file differs (replaced after the graph was built, or another
            copy on another machine) refuses it rather than computing with
            other weights.

    Made by :meth:`of` (a path) or :meth:`of_bytes` (an archive's bytes),
    which compute the digest: one constructed directly without it is
    refused when loaded.

    >>> spec = ModelSpec.of(tiny_model_path, device="cpu", precision="fp32")
    >>> spec.device, len(__import__("pickle").dumps(spec)) < 1000
    ('cpu', True)
    """

    source: str
    device: str = "auto"
    precision: str = DEFAULT_PRECISION
    digest: str = ""

    @classmethod
    def of(cls, path: Union[str, "os.PathLike[str]", None], device: str = "auto", precision: str = DEFAULT_PRECISION) -> "ModelSpec":
        """The spec of the model file ``path`` (``None``: the bundled model)."""
        resolved = os.path.abspath(os.fspath(bundled_model_path() if path is None else path))
        try:
            digest = _cache.file_digest(resolved)
        except OSError:
            raise ModelNotFoundError(f"model file not found: {resolved}") from None
        return cls(resolved, device, precision, digest)

    @classmethod
    def of_bytes(cls, data: bytes, device: str = "auto", precision: str = DEFAULT_PRECISION) -> "ModelSpec":
        """The spec of a model given as the bytes of its archive (identified by digest)."""
        digest = hashlib.sha256(data).hexdigest()
        return cls(_BYTES_PREFIX + digest, device, precision, digest)

    @property
    def from_bytes(self) -> bool:
        """Whether the model travels as bytes rather than as a path."""
        return self.source.startswith(_BYTES_PREFIX)


_LOADS: Dict[ModelSpec, int] = {}


def load_model(spec: ModelSpec, data: Optional[bytes] = None) -> Model:
    """The model of ``spec``, loaded on first use in this process and cached
    (in the cache ``unet_rt.segment`` uses).

    ``data`` is the archive for specs made with :meth:`ModelSpec.of_bytes`
    (ignored for paths). Worker processes call this in every task; only the
    first call of a process loads anything.

    >>> spec = ModelSpec.of(tiny_model_path, "cpu", "fp32")
    >>> load_model(spec) is load_model(spec)
    True
    """

    def load() -> Model:
        _LOADS[spec] = _LOADS.get(spec, 0) + 1
        return _load(spec, data)

    return _cache.cached(("dask", spec), load)


def clear_cache() -> None:
    """Drops the models this process has cached (frees their device memory)."""
    _cache.clear()


def load_counts() -> Dict[str, int]:
    """How many times this process loaded each spec (a diagnostic for tests)."""
    return {f"{s.source}|{s.device}|{s.precision}": n for s, n in list(_LOADS.items())}


def _load(spec: ModelSpec, data: Optional[bytes]) -> Model:
    if not spec.digest:
        raise InvalidArgumentError(
            f"invalid spec: {spec!r} has no digest, so no worker can tell its file from another: make it with "
            "ModelSpec.of(path) or ModelSpec.of_bytes(data)"
        )
    if not spec.from_bytes:
        try:
            stamp, digest = _cache.file_stamp(spec.source), _cache.file_digest(spec.source)
        except OSError:
            stamp, digest = (), ""  # loading says what is wrong with the path
        model = Model(spec.source, spec.device, spec.precision)
        # The digest is of the file loaded only if it was not replaced meanwhile.
        if digest != spec.digest or model._stamp != stamp:
            raise ModelError(
                f"{spec.source} on this worker is not the model file the task graph was built with (it was replaced "
                f"since, or this machine has another copy): its SHA-256 is {digest[:12] or 'unknown'}..., the "
                f"graph's {spec.digest[:12]}...; rebuild the graph, or make every worker read the same file"
            )
        return model
    if data is None:
        raise InvalidArgumentError(f"the model {spec.source} was given as bytes, but its bytes did not reach this process")
    return Model.from_bytes(data, spec.device, spec.precision, name=spec.source)


@dataclass(frozen=True)
class ResolvedModel:
    """A user's ``model`` argument, resolved on the client: the spec tasks
    carry, the network's geometry, its normalization, a model on this
    machine to plan with, and the archive bytes for models given as bytes
    (shipped once per worker, not per task)."""

    spec: ModelSpec
    info: Dict[str, Any]
    normalization: Dict[str, Any]
    local: Model
    data: Optional[bytes] = None

    @property
    def percentiles(self) -> Optional[Tuple[float, float]]:
        """``(low, high)`` when the model normalizes with image percentiles."""
        if self.normalization.get("kind") != "percentile":
            return None
        return float(self.normalization["low"]), float(self.normalization["high"])

    def plan(self, spatial: Sequence[int], pad: int, tile: Any, batch_size: Optional[int],
             memory_budget: Optional[int]) -> Tuple[Model, Tiling]:
        """The whole array's tiling as the workers' device and precision
        would choose it, and the model on this machine that planned it (for
        the blocks' context)."""
        tiling = plan_tiling(self.local, spatial, pad, tile, batch_size, memory_budget, self.spec.device,
                             self.spec.precision)
        return self.local, tiling


def resolve_model(model: Union[Model, str, "os.PathLike[str]", None], device: str = "auto",
                  precision: Optional[str] = None) -> ResolvedModel:
    """Resolves a :class:`unet_rt.Model`, a path or ``None`` (the bundled
    model). For a :class:`~unet_rt.Model`, device ``"auto"`` and precision
    ``None`` keep those it was created with; for a path, precision ``None``
    is :data:`unet_rt.DEFAULT_PRECISION`. A path is loaded once on the
    client, on the CPU, to read its geometry (metadata or probing)."""
    check_model_arg(model)
    data: Optional[bytes] = None
    if isinstance(model, Model):
        source, own_device, own_precision = model._origin()
        device = own_device if device == "auto" else device
        precision = own_precision if precision is None else precision
        if isinstance(source, bytes):
            spec, data = ModelSpec.of_bytes(source, device, precision), source
        else:
            model._loaded_stamp()  # the file is still what the model loaded
            spec = ModelSpec.of(source, device, precision)
        # Geometry and plans do not depend on where the model runs.
        local = model
    else:
        spec = ModelSpec.of(model, device, DEFAULT_PRECISION if precision is None else precision)
        local = cached_model(spec.source, "cpu", "fp32")
    normalization = dict((local.metadata or {}).get("normalization") or {"kind": "none"})
    return ResolvedModel(spec, dict(local.info), normalization, local, data)
