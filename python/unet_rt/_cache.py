"""The process's one model cache: ``unet_rt.segment`` given a path and
the Dask workers load models through it."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable, Optional, Tuple, TypeVar, Union

__all__ = ["cached", "clear", "file_digest", "file_fingerprint", "file_stamp"]

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


def file_stamp(path: Union[str, "os.PathLike[str]"]) -> Tuple[int, ...]:
    """What tells one version of a file from another without reading it:
    its device and inode, size, and modification and status-change times.
    The status-change time cannot be set back: a file replaced by
    ``cp -p``, ``rsync -a`` or ``tar x`` keeps its size (models of one
    architecture have the same) and is given the old modification time,
    which alone served the old model. Raises ``OSError``.

    >>> file_stamp(tiny_model_path) == file_stamp(tiny_model_path)
    True
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_fingerprint(path: Union[str, "os.PathLike[str]"]) -> Optional[Tuple[Tuple[str, int, int], ...]]:
    """What a model archive holds, from its zip central directory alone
    (milliseconds for any size): each entry's name, CRC-32 and size.
    ``None`` for what is not a regular zip file (a package folder).

    A changed :func:`file_stamp` with the same fingerprint is the same
    model: ``chmod``, ``touch`` or a copy of the same bytes change the
    status-change time only, and pickling such a model was refused.

    >>> file_fingerprint(tiny_model_path) == file_fingerprint(tiny_model_path)
    True
    """
    import stat
    import zipfile

    try:
        # Never a FIFO or a device: opening one blocks, or reads for ever.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with zipfile.ZipFile(path) as archive:
            return tuple((i.filename, i.CRC, i.file_size) for i in archive.infolist())
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


_DIGESTS: "OrderedDict[Hashable, str]" = OrderedDict()
#: Its own lock: digests are taken while a model loads under ``_LOCK``.
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: Union[str, "os.PathLike[str]"]) -> str:
    """The SHA-256 (hex) of a model file's bytes, or of a package folder's
    files (names and contents, in name order); a file's is kept while its
    :func:`file_stamp` holds. Raises ``OSError``.

    >>> len(file_digest(tiny_model_path))
    64
    """
    from pathlib import Path

    root = Path(path)
    if root.is_dir():
        key = None  # a folder's stamp does not follow its files' contents
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        key = (os.path.abspath(root), file_stamp(root))
        with _DIGESTS_LOCK:
            if key in _DIGESTS:
                return _DIGESTS[key]
        files = [root]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else "").encode())
        with open(file, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
    value = digest.hexdigest()
    if key is not None and file_stamp(root) == key[1]:  # not replaced while read
        with _DIGESTS_LOCK:
            _DIGESTS[key] = value
            while len(_DIGESTS) > 64:
                _DIGESTS.popitem(last=False)
    return value


def clear() -> None:
    """Drops every cached model (frees their device memory)."""
    with _LOCK:
        _CACHE.clear()
