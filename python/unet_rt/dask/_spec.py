"""What the task graph carries instead of a model: a small picklable
:class:`ModelSpec`, and the per-process cache that turns it into a loaded
:class:`unet_rt.Model` once per worker process."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple, Union

from ..errors import InvalidArgumentError, ModelError, ModelNotFoundError
from ..model import Model, bundled_model_path

__all__ = ["ModelSpec", "load_model", "clear_cache"]

_METADATA_ENTRY = "extra/unet_rt.json"
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
        stamp: ``(mtime_ns, size)`` of the file when the spec was made, so a
            model file replaced between two runs is reloaded.
        raw_input: load the model with its normalization replaced by
            ``{"kind": "none"}``: the caller has normalized the pixels already
            (with whole-image statistics, see :mod:`unet_rt.dask`).

    >>> spec = ModelSpec.of(tiny_model_path, device="cpu", precision="fp32")
    >>> spec.device, spec.raw_input, len(__import__("pickle").dumps(spec)) < 1000
    ('cpu', False, True)
    """

    source: str
    device: str = "auto"
    precision: str = "auto"
    stamp: Tuple[int, int] = (0, 0)
    raw_input: bool = False

    @classmethod
    def of(cls, path: Union[str, "os.PathLike[str]", None], device: str = "auto", precision: str = "auto") -> "ModelSpec":
        """The spec of the model file ``path`` (``None``: the bundled model)."""
        resolved = os.path.abspath(os.fspath(bundled_model_path() if path is None else path))
        try:
            stat = os.stat(resolved)
        except OSError:
            raise ModelNotFoundError(f"model file not found: {resolved}") from None
        return cls(resolved, device, precision, (stat.st_mtime_ns, stat.st_size))

    @classmethod
    def of_bytes(cls, data: bytes, device: str = "auto", precision: str = "auto") -> "ModelSpec":
        """The spec of a model given as the bytes of its archive (identified by digest)."""
        return cls(_BYTES_PREFIX + hashlib.sha256(data).hexdigest(), device, precision, (0, len(data)))

    @property
    def from_bytes(self) -> bool:
        """Whether the model travels as bytes rather than as a path."""
        return self.source.startswith(_BYTES_PREFIX)

    def with_raw_input(self, raw_input: bool = True) -> "ModelSpec":
        """The same model, loaded with (``raw_input=True``) its normalization disabled."""
        return replace(self, raw_input=raw_input)


_CACHE: "OrderedDict[ModelSpec, Model]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4
_LOADS: Dict[ModelSpec, int] = {}


def load_model(spec: ModelSpec, data: Optional[bytes] = None) -> Model:
    """The model of ``spec``, loaded on first use in this process and cached.

    ``data`` is the archive for specs made with :meth:`ModelSpec.of_bytes`
    (ignored for paths). Worker processes call this in every task; only the
    first call of a process loads anything.

    >>> spec = ModelSpec.of(tiny_model_path, "cpu", "fp32")
    >>> load_model(spec) is load_model(spec)
    True
    """
    with _CACHE_LOCK:
        model = _CACHE.get(spec)
        if model is not None:
            _CACHE.move_to_end(spec)
            return model
        # Loading under the lock: concurrent tasks of one worker wait for one
        # load instead of each loading the weights.
        model = _load(spec, data)
        _LOADS[spec] = _LOADS.get(spec, 0) + 1
        _CACHE[spec] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return model


def clear_cache() -> None:
    """Drops the models this process has cached (frees their device memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_counts() -> Dict[str, int]:
    """How many times this process loaded each spec (a diagnostic for tests)."""
    with _CACHE_LOCK:
        return {f"{s.source}|{s.device}|{s.precision}|{s.raw_input}": n for s, n in _LOADS.items()}


def _load(spec: ModelSpec, data: Optional[bytes]) -> Model:
    if spec.from_bytes:
        if data is None:
            raise InvalidArgumentError(f"the model {spec.source} was given as bytes, but its bytes did not reach this process")
        name = spec.source
    else:
        if not spec.raw_input:
            return Model(spec.source, spec.device, spec.precision)
        with open(spec.source, "rb") as f:
            data = f.read()
        name = spec.source
    if spec.raw_input:
        data = without_normalization(data, name)
    model = Model.from_bytes(data, spec.device, spec.precision, name=name)
    if spec.raw_input and (model.metadata or {}).get("normalization", {}).get("kind") != "none":
        raise ModelError(f"{name}: could not disable the model's normalization")
    return model


def without_normalization(archive: bytes, name: str = "<bytes>") -> bytes:
    """The TorchScript archive with its ``unet_rt.json`` normalization set to
    ``{"kind": "none"}``; weights and code are copied byte for byte."""
    try:
        source = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile as e:
        raise ModelError(f"{name}: not a TorchScript archive ({e})") from None
    out = io.BytesIO()
    found = False
    with source, zipfile.ZipFile(out, "w") as target:
        for entry in source.infolist():
            body = source.read(entry)
            if entry.filename.endswith("/" + _METADATA_ENTRY) and entry.filename.count("/") == 2:
                meta: Dict[str, Any] = json.loads(body)
                meta["normalization"] = {"kind": "none"}
                body = json.dumps(meta).encode()
                found = True
            target.writestr(entry, body)
    if not found:
        return archive  # no metadata: the runtime does not normalize anyway
    return out.getvalue()


@dataclass(frozen=True)
class ResolvedModel:
    """A user's ``model`` argument, resolved on the client: the spec tasks
    carry, the network's geometry, its normalization, and the archive bytes
    for models given as bytes (shipped once per worker, not per task)."""

    spec: ModelSpec
    info: Dict[str, Any]
    normalization: Dict[str, Any]
    data: Optional[bytes] = None

    @property
    def percentiles(self) -> Optional[Tuple[float, float]]:
        """``(low, high)`` when the model normalizes with image percentiles."""
        if self.normalization.get("kind") != "percentile":
            return None
        return float(self.normalization["low"]), float(self.normalization["high"])


def resolve_model(model: Union[Model, str, "os.PathLike[str]", None], device: str = "auto", precision: str = "auto") -> ResolvedModel:
    """Resolves a :class:`unet_rt.Model`, a path or ``None`` (the bundled
    model). For a :class:`~unet_rt.Model`, ``"auto"`` keeps the device and
    precision it was created with. A path is loaded once on the client, on
    the CPU, to read its geometry (metadata or probing)."""
    from ..model import _cached_model

    data: Optional[bytes] = None
    if isinstance(model, Model):
        _, (source, own_device, own_precision) = model.__reduce__()
        device = own_device if device == "auto" else device
        precision = own_precision if precision == "auto" else precision
        if isinstance(source, bytes):
            spec, data = ModelSpec.of_bytes(source, device, precision), source
        else:
            spec = ModelSpec.of(source, device, precision)
        local = model
    else:
        spec = ModelSpec.of(model, device, precision)
        local = _cached_model(spec.source, "cpu", "fp32")
    normalization = dict((local.metadata or {}).get("normalization") or {"kind": "none"})
    return ResolvedModel(spec, dict(local.info), normalization, data)
