"""The contract every call into unet_rt must meet, as checks that return a
violation message (or ``None`` when the outcome is acceptable).

A call either returns or raises. It may raise:

* ``TypeError`` for an argument of a wrong Python type, whose message names
  the argument;
* an instance of ``unet_rt.UnetRtError``.

Anything else (``OverflowError``, ``IndexError``, ``SystemError``, plain
``RuntimeError``, pyo3's ``PanicException``...) is a violation, and so is a
message that shows C++ internals. A returned result must be right-shaped and
never silently wrong (see :class:`Expect`).

>>> classify_exception(OverflowError("int too big to convert"), ("tile",))
'wrong exception type: builtins.OverflowError'
>>> classify_exception(TypeError("argument 'tile': 'str' object cannot be interpreted as an integer"), ("tile",)) is None
True
>>> classify_exception(TypeError("an integer is required"), ("tile",))
'TypeError that does not name the argument'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "CPP_MARKERS",
    "Expect",
    "error_class",
    "is_internal_error",
    "is_nonfinite_error",
    "classify_exception",
    "check_result",
    "message_problem",
]

#: Pieces of text that only a C++ backtrace or a raw libtorch error contains.
CPP_MARKERS: Tuple[str, ...] = ("frame #", "c10::", "Exception raised from", "torch::jit::", "at::native::", "Caffe2",
                                "mutable_data()")
#: Longest acceptable error message (a TorchScript traceback or an array dump is not a message).
MAX_MESSAGE = 2000
#: Tolerance on probabilities in [0, 1].
PROB_TOLERANCE = 1e-6


def error_class(name: str) -> Optional[type]:
    """The class ``unet_rt.errors.<name>``, or ``None`` while it does not exist."""
    from unet_rt import errors

    found = getattr(errors, name, None)
    return found if isinstance(found, type) else None


def is_nonfinite_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the runtime's ``NonFiniteError`` (once it exists)."""
    cls = error_class("NonFiniteError")
    return cls is not None and isinstance(exc, cls)


def is_internal_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the runtime's ``InternalError`` (once it exists)."""
    cls = error_class("InternalError")
    return cls is not None and isinstance(exc, cls)


def _qualified(exc: BaseException) -> str:
    """The exception's class as ``module.Name``."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def message_problem(message: str) -> Optional[str]:
    """What is wrong with an error message, if anything.

    >>> message_problem("invalid tile: 45 is not a usable tile size") is None
    True
    >>> message_problem("boom\\nException raised from forward at ../torch/csrc/x.cpp:12")
    'message shows C++ internals (Exception raised from)'
    """
    for marker in CPP_MARKERS:
        if marker in message:
            return f"message shows C++ internals ({marker})"
    if not message.strip():
        return "empty message"
    longest_word = max((len(word) for word in message.split()), default=0)
    if len(message) - longest_word > MAX_MESSAGE:  # one long word may be the user's own path or value
        return f"overlong message ({len(message)} characters)"
    return None


def classify_exception(exc: BaseException, arguments: Sequence[str] = ()) -> Optional[str]:
    """``None`` when raising ``exc`` is acceptable, else why it is not.

    ``arguments`` are the names of the arguments the case made hostile: a
    ``TypeError`` must name one of them (when there are any).
    """
    from unet_rt import UnetRtError

    if isinstance(exc, UnetRtError):
        return message_problem(str(exc))
    if isinstance(exc, TypeError):
        problem = message_problem(str(exc))
        if problem:
            return problem
        if arguments and not any(_names(str(exc), name) for name in arguments):
            return "TypeError that does not name the argument"
        return None
    return f"wrong exception type: {_qualified(exc)}"


def _names(message: str, argument: str) -> bool:
    """Whether ``message`` names ``argument`` (as a word)."""
    return re.search(rf"(?<![A-Za-z_]){re.escape(argument)}(?![A-Za-z_])", message) is not None


@dataclass
class Expect:
    """What a returned result of one call must look like.

    Attributes:
        output: ``"labels"``, ``"probabilities"``, ``"raw"``,
            ``"instances"``, or ``None`` when the call returns no segmentation.
        shape: the result's shape, ``None`` when the case cannot tell.
        classes: output channels of the model (labels lie in ``[0, classes)``).
        nonfinite_ok: NaN/Inf may appear (``nonfinite="propagate"``).
        must_fail: why the call must raise, when it must (e.g. the network
            returns a tuple, the axes do not describe the array).
        out: the ``out=`` array passed, which the call must return.
        reference: a result the returned one must equal (within ``atol``).
        atol: tolerance of the comparison with ``reference``.
    """

    output: Optional[str] = None
    shape: Optional[Tuple[int, ...]] = None
    classes: int = 2
    nonfinite_ok: bool = False
    must_fail: Optional[str] = None
    out: Optional[np.ndarray] = None
    reference: Optional[np.ndarray] = None
    atol: float = 0.0
    extra: dict = field(default_factory=dict)


def check_result(result: Any, expect: Expect) -> Optional[str]:
    """``None`` when ``result`` meets ``expect``, else the problem."""
    if expect.must_fail:
        return f"returned a result although {expect.must_fail}"
    if expect.output is None:
        return None
    if not isinstance(result, np.ndarray):
        return f"returned {type(result).__name__}, not a numpy array"
    if expect.out is not None and result is not expect.out:
        return "did not return the out= array itself"
    if expect.shape is not None and tuple(result.shape) != tuple(expect.shape):
        return f"result has shape {result.shape}, expected {expect.shape}"
    check = {"labels": _check_labels, "instances": _check_instances}.get(expect.output, _check_floats)
    problem = check(result, expect)
    if problem is None and expect.reference is not None:
        problem = _compare(result, expect)
    return problem


def _check_labels(result: np.ndarray, expect: Expect) -> Optional[str]:
    """Labels: an integer dtype, values in ``[0, classes)``."""
    if result.dtype.kind not in "ui" and result.dtype != np.bool_:
        return f"labels have dtype {result.dtype}"
    if result.size and (int(result.min()) < 0 or int(result.max()) >= expect.classes):
        return f"labels outside [0, {expect.classes}): min {result.min()}, max {result.max()}"
    return None


def _check_instances(result: np.ndarray, expect: Expect) -> Optional[str]:
    """Instances: a dtype that cannot wrap, no negative ids."""
    if result.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64), np.dtype(np.int64)):
        return f"instances have dtype {result.dtype} (only uint32, uint64, int64 cannot wrap)"
    if result.size and int(result.min()) < 0:
        return f"negative instance id {result.min()}"
    return None


def _check_floats(result: np.ndarray, expect: Expect) -> Optional[str]:
    """Probabilities and raw output: float, finite (unless allowed), probabilities in [0, 1]."""
    if result.dtype.kind != "f":
        return f"{expect.output} have dtype {result.dtype}"
    values = result.astype(np.float64)
    finite = np.isfinite(values)
    if not expect.nonfinite_ok and not finite.all():
        bad = int((~finite).sum())
        return f"{expect.output} contain {bad} non-finite values (NaN {int(np.isnan(values).sum())}) and no NonFiniteError"
    if expect.output == "probabilities":
        shown = values[finite]
        if shown.size and (shown.min() < -PROB_TOLERANCE or shown.max() > 1 + PROB_TOLERANCE):
            return f"probabilities outside [0, 1]: min {shown.min()}, max {shown.max()}"
    return None


def _compare(result: np.ndarray, expect: Expect) -> Optional[str]:
    """Equality with the expected result within ``atol`` (NaN where it has NaN)."""
    want = np.asarray(expect.reference)
    if want.shape != result.shape:
        return f"result has shape {result.shape}, the reference {want.shape}"
    got64, want64 = result.astype(np.float64), want.astype(np.float64)
    same_nan = np.isnan(got64) == np.isnan(want64)
    close = np.isclose(got64, want64, atol=expect.atol, rtol=0, equal_nan=True)
    if not (same_nan.all() and close.all()):
        wrong = int((~close).sum())
        return f"result differs from the reference at {wrong} of {result.size} elements (atol {expect.atol})"
    return None
