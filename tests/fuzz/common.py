"""What the campaigns share: the :class:`Context` (recorder, models, scratch
folder, time limits) and the checked calls every campaign makes (segment a
small image, inspect a freshly loaded model)."""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from .arrays import ModelShape, expected_shape
from .contract import Expect, is_nonfinite_error
from .recorder import Recorder
from .values import acceptable, describe, kwargs_repr

__all__ = ["OUTPUTS", "Limits", "Context", "model_shape", "segment_expect", "segment", "inspect_model", "load",
           "layout_problem"]

OUTPUTS: Tuple[str, ...] = ("labels", "probabilities", "raw", "instances")


@dataclass(frozen=True)
class Limits:
    """Soft time limits, in seconds, per kind of call (a call over its limit
    is a ``slow`` violation; three times over it, and at least 20 s, a hang)."""

    plan: float = 3.0
    segment: float = 10.0
    load: float = 10.0

    def scaled(self, factor: float) -> "Limits":
        """These limits times ``factor`` (for slow or busy machines)."""
        return Limits(self.plan * factor, self.segment * factor, self.load * factor)


@dataclass
class Context:
    """One campaign's state: the recorder, a scratch folder, the time
    limits, whether ``nonfinite=`` exists, and models loaded once."""

    rec: Recorder
    tmp: str
    limits: Limits = field(default_factory=Limits)
    models: Dict[str, Any] = field(default_factory=dict)
    _done: Set[str] = field(default_factory=set)

    def once(self, key: str) -> bool:
        """True the first time it is asked about ``key`` (for the fixed cases
        a campaign runs once, whatever its example count)."""
        first = key not in self._done
        self._done.add(key)
        return first

    @property
    def has_nonfinite(self) -> bool:
        """Whether ``Model.segment`` takes ``nonfinite=`` (being added)."""
        import unet_rt

        return "nonfinite" in inspect.signature(unet_rt.Model.segment).parameters

    def model(self, name: str) -> Any:
        """A shared model: ``tiny`` (2-D, 1 channel in, 2 classes),
        ``rgb`` (3 in, 3 classes), ``volume`` (3-D), ``same`` (same-padded),
        or a tiny variant with another normalization/output (``zscore``,
        ``scale``, ``scale_max``, ``none``, ``sigmoid``, ``identity``)."""
        if name not in self.models:
            self.models[name] = _shared_model(name)
        return self.models[name]

    def path(self, name: str) -> str:
        """The file ``name`` in the scratch folder."""
        return os.path.join(self.tmp, name)


_VARIANTS: Dict[str, Dict[str, Any]] = {
    "tiny": {},
    "rgb": dict(seed=4, in_channels=3, classes=3),
    "volume": dict(seed=3, depth=2, base=2, dims=3),
    "same": dict(seed=2, padding="same"),
    "zscore": dict(normalization={"kind": "zscore", "mean": 100.0, "std": 50.0}),
    "scale": dict(normalization={"kind": "scale", "factor": 1 / 255}),
    "scale_max": dict(normalization={"kind": "scale", "factor": 1e30}),
    "none": dict(normalization={"kind": "none"}),
}


def _shared_model(name: str) -> Any:
    """Loads the shared model ``name`` (see :meth:`Context.model`)."""
    import unet_rt

    from .models import resave, tiny_bytes, tiny_metadata

    if name in ("sigmoid", "identity"):
        meta = {**tiny_metadata(), "output": name, "class_names": []}
        data = resave(tiny_bytes(), json.dumps(meta))
    else:
        overrides = dict(_VARIANTS[name])
        data = tiny_bytes(overrides.pop("seed", 0), **overrides)
    return unet_rt.Model.from_bytes(data, device="cpu", precision="fp32", name=f"<{name}>")


def model_shape(model: Any) -> ModelShape:
    """The shape-relevant facts of a loaded model."""
    info = model.info
    return ModelShape(int(info["spatial_dims"]), int(info["in_channels"]), int(info["out_channels"]))


def segment_expect(model: Any, shape: Tuple[int, ...], kwargs: Dict[str, Any], nonfinite_ok: bool = False,
                   must_fail: Optional[str] = None) -> Expect:
    """What ``model.segment(<array of shape>, **kwargs)`` must give."""
    output = kwargs.get("output", "labels")
    output = output.strip().lower() if isinstance(output, str) and output.strip().lower() in OUTPUTS else None
    dims = int(model.info["spatial_dims"])
    for name, value in kwargs.items():
        if not acceptable(name, value, dims) and must_fail is None:
            must_fail = f"{name}={describe(value)} is not acceptable"
    if must_fail is None and output is None:
        must_fail = f"output={describe(kwargs['output'])} is not an output"
    result_shape, why = (None, None)
    if output is not None:
        result_shape, why = expected_shape(shape, kwargs.get("axes"), output, model_shape(model))
    window = kwargs.get("window")
    if result_shape is not None and window is not None and hasattr(window, "shape"):
        per_image = tuple(window.shape) if output in ("labels", "instances") else (result_shape[-dims - 1],) + tuple(window.shape)
        result_shape = result_shape[: len(result_shape) - len(per_image)] + per_image
    # A one-channel model's labels are a mask: 0 and 1.
    classes = max(2, int(model.info["out_channels"]))
    return Expect(output=output, shape=result_shape, classes=classes,
                  nonfinite_ok=nonfinite_ok, must_fail=must_fail or why, out=kwargs.get("out"))


def segment(ctx: Context, model: Any, model_name: str, array: np.ndarray, array_desc: str,
            kwargs: Dict[str, Any], expect: Optional[Expect] = None, check_consistency: bool = False,
            arguments: Sequence[str] = ()) -> Any:
    """``model.segment(array, **kwargs)`` as one checked case; with
    ``check_consistency``, a labels result is followed by a raw call on
    the same input that must not find the network output non-finite."""
    expect = expect or segment_expect(model, array.shape, kwargs)
    case = f"{model_name}.segment({array_desc}, {kwargs_repr(kwargs)})"
    result = ctx.rec.run(case, lambda: model.segment(array, **kwargs), expect, arguments or tuple(kwargs),
                         ctx.limits.segment)
    propagate = isinstance(kwargs.get("nonfinite"), str) and kwargs["nonfinite"].lower() == "propagate"
    if check_consistency and not propagate and result is not None and expect.output in ("labels", "instances"):
        _consistency(ctx, model, model_name, array, array_desc, kwargs)
    return result


def _consistency(ctx: Context, model: Any, model_name: str, array: np.ndarray, array_desc: str,
                 kwargs: Dict[str, Any]) -> None:
    """Segments the same input as ``raw``: if the network output is
    non-finite there, the labels just returned were made up."""
    raw_kwargs = {k: v for k, v in kwargs.items() if k != "out"}
    raw_kwargs["output"] = "raw"
    case = f"(consistency) {model_name}.segment({array_desc}, {kwargs_repr(raw_kwargs)})"
    outcome: Dict[str, Any] = {}

    def call() -> Any:
        """The raw call, remembering what it raised."""
        try:
            return model.segment(array, **raw_kwargs)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc
            raise

    raw = ctx.rec.run(case, call, Expect(), tuple(raw_kwargs), ctx.limits.segment)
    nonfinite = is_nonfinite_error(outcome.get("error", None)) or (
        isinstance(raw, np.ndarray) and raw.dtype.kind == "f" and not np.isfinite(raw).all())
    if nonfinite:
        ctx.rec.check(case, f"silent: {kwargs.get('output', 'labels')} returned although the network output "
                            "on the same input is non-finite")


def load(ctx: Context, data: bytes, desc: str, via_path: bool) -> Any:
    """Loads an archive's bytes (from a file when ``via_path``) as one
    checked case; the model, or ``None`` when loading raised."""
    import unet_rt

    if via_path:
        path = ctx.path("model.pt")
        with open(path, "wb") as f:
            f.write(data)
        return ctx.rec.run(f"unet_rt.Model(<file: {desc}>, device='cpu', precision='fp32')",
                           lambda: unet_rt.Model(path, device="cpu", precision="fp32"), None, (), ctx.limits.load)
    return ctx.rec.run(f"unet_rt.Model.from_bytes(<{desc}>, device='cpu', precision='fp32')",
                       lambda: unet_rt.Model.from_bytes(data, device="cpu", precision="fp32"), None, (),
                       ctx.limits.load)


def inspect_model(ctx: Context, model: Any, desc: str) -> bool:
    """Reads a loaded model's properties and two layouts as checked cases;
    whether they all worked."""
    before = len(ctx.rec.violations)
    worked = True
    for prop in ("info", "metadata", "classes", "halo"):
        worked &= _ran(ctx, f"{desc}.{prop}", lambda p=prop: getattr(model, p))
    case = f"{desc}.layout((100, 100))"
    layout: Dict[str, Any] = {}
    worked &= _ran(ctx, case, lambda: layout.update(model.layout((100, 100))))
    if layout:
        problem = layout_problem(layout, (100, 100))
        ctx.rec.check(case, problem and f"silent: {problem}")
    _ran(ctx, f"{desc}.layout((10**14, 10**14))", lambda: model.layout((10**14, 10**14)))
    return worked and len(ctx.rec.violations) == before


def _ran(ctx: Context, case: str, call: Callable[[], Any]) -> bool:
    """Runs ``call`` as a planning case; whether it returned."""
    done: List[bool] = []
    ctx.rec.run(case, lambda: done.append(call() is not None or True), None, (), ctx.limits.plan)
    return bool(done)


def layout_problem(layout: Any, shape: Optional[Sequence[int]]) -> Optional[str]:
    """What is wrong with a layout returned for an image of ``shape``.

    >>> layout_problem({'tile': [84, 84], 'tiles': 84, 'batch_size': 16, 'stride': [44, 44],
    ...                 'output_tile': [44, 44], 'grid': [12, 7]}, (500, 300)) is None
    True
    """
    if not isinstance(layout, dict):
        return f"layout is a {type(layout).__name__}"
    keys = ("tile", "tiles", "batch_size", "stride", "output_tile", "grid")
    if any(k not in layout for k in keys):
        return f"layout lacks {[k for k in keys if k not in layout]}"
    grid, stride, out_tile = layout["grid"], layout["stride"], layout["output_tile"]
    if int(np.prod(grid, dtype=object)) != layout["tiles"]:
        return f"tiles {layout['tiles']} != product of grid {grid}"
    if layout["batch_size"] < 1 or min(stride, default=1) < 1 or min(out_tile, default=1) < 1:
        return "non-positive batch_size, stride or output tile"
    if shape is not None:
        covered = [(g - 1) * s + o for g, s, o in zip(grid, stride, out_tile)]
        if len(grid) != len(shape) or any(c < n for c, n in zip(covered, shape)):
            return f"tiles cover {covered}, the image is {list(shape)}"
    return None
