"""The process's one model cache: ``unet_rt.segment`` given a path and
the Dask workers load models through it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

__all__ = ["cached", "clear"]

T = TypeVar("T")

_CACHE: "OrderedDict[Hashable, object]" = OrderedDict()
_LOCK = threading.Lock()
#: Models kept (least recently used first out): each holds its weights on
#: its device.
SIZE = 4


def cached(key: Hashable, load: Callable[[], T]) -> T:
    """The object cached under ``key``, made by ``load()`` on first use.

    Loads happen under the lock, so concurrent callers (a Dask worker's
    threads) wait for one load instead of each loading the weights.

    >>> cached(("doc", 1), lambda: [1]) is cached(("doc", 1), lambda: [2])
    True
    """
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]  # type: ignore[return-value]
        value = load()
        _CACHE[key] = value
        while len(_CACHE) > SIZE:
            _CACHE.popitem(last=False)
        return value


def clear() -> None:
    """Drops every cached model (frees their device memory)."""
    with _LOCK:
        _CACHE.clear()
