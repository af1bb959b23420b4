"""Hostile argument values, and which of them a call may accept.

Cases are logged with :func:`describe`, whose text is (nearly) the Python
that rebuilds the value.

>>> acceptable("tile", 64, dims=2), acceptable("tile", True, dims=2), acceptable("tile", 1.5, dims=2)
(True, False, False)
>>> acceptable("batch_size", np.int64(3), dims=2), acceptable("batch_size", 0, dims=2)
(True, False)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "INTS",
    "SCALARS",
    "POOL",
    "ARGUMENT_VALUES",
    "hostile",
    "acceptable",
    "is_int",
    "describe",
    "kwargs_repr",
    "draw_kwargs",
]

#: Integers at every edge: negative, zero, tiny, usable, the 32/64-bit limits, beyond them.
INTS: Tuple[int, ...] = (
    -(2**64), -(2**63), -(2**31), -1, 0, 1, 2, 3, 4, 43, 44, 45, 48, 64, 84, 100, 1 << 20, 2**31 - 1, 2**31,
    2**32, 2**32 + 44, 10**14, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 44, 10**30,
)


def _numpy_scalars() -> List[Any]:
    """Numpy scalars and small arrays that pose as numbers."""
    return [
        np.int64(-1), np.int64(0), np.int64(44), np.int64(2**63 - 1), np.uint64(2**64 - 1), np.uint64(44),
        np.int8(-5), np.uint8(44), np.int32(64), np.float32(44.0), np.float64(1.5), np.bool_(True),
        np.array(44), np.array([44, 44]), np.array([[44]]), np.array([]), np.array(44.5),
    ]


#: Non-integer scalars and containers of every kind.
SCALARS: Tuple[Any, ...] = (
    None, True, False, 1.5, 44.0, -0.0, math.nan, math.inf, -math.inf, 1e300, 44 + 0j, Fraction(88, 2),
    "", "44", "yx", "labels", "crop", "cpu", "fp32", "\x00", "é" * 3, b"44", bytearray(b"44"),
    [], [44], [44, 44], [44, 44, 44], (44, 44), (44,), ("44", "44"), (44.5, 44), (-1, 44), (2**64, 44),
    [[44]], {44}, {"tile": 44}, range(2), object(), print, len,
)

#: Every hostile value.
POOL: Tuple[Any, ...] = INTS + SCALARS + tuple(_numpy_scalars())

#: Values that are ordinary for one argument, drawn more often than the pool.
ARGUMENT_VALUES: Dict[str, Tuple[Any, ...]] = {
    "tile": (None, 44, 48, 64, 84, (48, 64), [52, 52], 1 << 20, (44, 10**30)),
    "batch_size": (None, 1, 2, 3, 64, 10**9),
    "memory_budget": (None, 1, 1 << 10, 1 << 20, 1 << 30, 2**62),
    "axes": (None, "yx", "YX", "xy", "byx", "cyx", "yxc", "zyx", "bb", "yxx", " yx", "y x", "yx\x00", 5, b"yx",
             ["y", "x"], ("y", "x"), "ｙｘ"),
    "output": ("labels", "probabilities", "raw", "instances", "Labels", "masks", "probabilities "),
    "blend": ("crop", "gaussian", "constant", "median", "CROP"),
    "progress": (None, False, True, 0, 1, "yes", (lambda done, total: None)),
    "input_range": (None, (0.0, 1.0), (0, 255), (1.0, 0.0), (5.0, 5.0), (math.nan, 1.0), (0.0, math.inf),
                    (-1e308, 1e308), (0.0,), (0.0, 1.0, 2.0), "01", np.array([0.0, 1.0])),
    "nonfinite": ("raise", "propagate", "ignore", "RAISE"),
    "min_size": (None, 0, 1, 5, 10**6, 2**63),
    "fill_holes": (None, True, False, np.bool_(True)),
    "object_size": (None, 10.0, 24, 47.5, 0.4, 3000, math.nan, np.float32(30.0)),
    "device": ("cpu", "CPU", "cuda", "cuda:0", "cuda:-1", "cuda:99999999999999999999", "mps", "auto", ""),
    "precision": ("fp32", "auto", "bf16", "fp16", "FP32", "int8", "float32", ""),
}

_OPTIONAL = {"tile", "batch_size", "memory_budget", "axes", "progress", "input_range", "window", "out", "min_size",
             "fill_holes", "object_size"}
_STRINGS = {
    "output": {"labels", "probabilities", "raw", "instances"},
    "blend": {"crop", "gaussian", "constant"},
    "nonfinite": {"raise", "propagate"},
}
_MIN_INT = {"tile": 1, "batch_size": 1, "memory_budget": 1}


def is_int(value: Any) -> bool:
    """A Python or numpy integer (or 0-d integer array) that is not a bool."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        return True
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def acceptable(argument: str, value: Any, dims: int) -> bool:
    """Whether a call may succeed with ``argument=value`` (for a model with
    ``dims`` spatial axes): the wrong types and out-of-range values of the
    contract must be refused.
    """
    if value is None:
        return argument in _OPTIONAL
    if argument in _MIN_INT:
        # A NumPy array of sizes is read as a list is (the CLI's rule).
        sizes = isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1)
        if argument == "tile" and sizes:
            return len(value) == dims and all(is_int(v) and v >= 1 for v in value)
        return is_int(value) and bool(value >= _MIN_INT[argument])
    if argument in _STRINGS:  # case and surrounding spaces do not make a known value unknown
        return isinstance(value, str) and value.strip().lower() in _STRINGS[argument]
    if argument == "axes":
        return isinstance(value, str)
    if argument == "progress":
        return isinstance(value, (bool, np.bool_)) or callable(value)
    if argument == "input_range":
        return _is_range(value)
    if argument == "out":
        return isinstance(value, np.ndarray)
    if argument == "window":
        return type(value).__name__ == "Window"
    if argument == "min_size":
        return is_int(value) and bool(value >= 0)
    if argument == "fill_holes":
        return isinstance(value, (bool, np.bool_))
    if argument == "object_size":
        return _is_number(value)
    return True


def _is_number(value: Any) -> bool:
    """A real number that is not a bool: Python or NumPy scalars and 0-d
    arrays (anything with ``__float__``); its range is the call's to check."""
    if isinstance(value, (bool, np.bool_, str, bytes, bytearray)) or (isinstance(value, np.ndarray) and value.ndim):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_range(value: Any) -> bool:
    """A pair of finite numbers (any sequence or array of two)."""
    if isinstance(value, (str, bytes)):
        return False
    try:
        pair = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return pair.shape == (2,) and bool(np.isfinite(pair).all())


def hostile(argument: str) -> st.SearchStrategy[Any]:
    """Values for ``argument``: its ordinary ones and the whole pool."""
    usual = ARGUMENT_VALUES.get(argument, ())
    # A callable progress is called, and what it raises is re-raised: only ours is safe to pass.
    pool = st.sampled_from(tuple(v for v in POOL if argument != "progress" or not callable(v)))
    return st.one_of(st.sampled_from(usual), pool) if usual else pool


def describe(value: Any) -> str:
    """A short ``repr`` of ``value`` for logs (arrays by shape and dtype)."""
    if isinstance(value, np.ndarray) and value.ndim:
        return f"np.array(shape={value.shape}, dtype={value.dtype.str})"
    if isinstance(value, np.generic):
        return f"np.{type(value).__name__}({value!r})"
    if callable(value) and getattr(value, "__name__", "") == "<lambda>":
        arity = value.__code__.co_argcount
        return "lambda done, total: None" if arity == 2 else f"lambda({arity} args)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def kwargs_repr(kwargs: Dict[str, Any]) -> str:
    """``a=1, b='x'`` for a log line."""
    return ", ".join(f"{k}={describe(v)}" for k, v in kwargs.items())


def draw_kwargs(arguments: Sequence[str], most: int = 3) -> st.SearchStrategy[Dict[str, Any]]:
    """One to ``most`` of ``arguments`` with hostile values."""

    @st.composite
    def draw(data: st.DrawFn) -> Dict[str, Any]:
        """Draws the arguments and their values."""
        names = data(st.lists(st.sampled_from(tuple(arguments)), min_size=1, max_size=most, unique=True))
        return {name: data(hostile(name)) for name in names}

    return draw()

