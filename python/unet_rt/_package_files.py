"""What a bioimage.io package may make the loader read.

A package is a description (``rdf.yaml``) naming files: the weights and the
test tensors. Every one of them is checked before it is read, so that a
package cannot make ``unet_rt.Model`` hang or exhaust memory where the same
weights given as a ``.pt`` file are refused in a line:

* files are regular files (a FIFO blocked the loader for good, a link to
  ``/dev/zero`` read until memory ran out), read up to their size;
* sizes, and the copies the loader makes of them, fit in memory (a
  7.5 MB package whose weights held a 1.5 GiB record of zeros peaked at
  8 GiB);
* the description is small and its YAML aliases expand to a bounded number
  of nodes (4 KB of nested aliases ran for minutes towards every byte of
  memory);
* files are local: loading downloads nothing.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional

from . import _unet_rt
from .errors import PackageError

#: The description's largest size: the zoo's are tens of kilobytes.
MAX_DESCRIPTION_BYTES = 4 << 20
#: The most YAML nodes a description may expand to, aliases counted as
#: often as they are used.
MAX_YAML_NODES = 1_000_000
#: A file is held twice while it is read (zipfile joins its chunks).
READ_COPIES = 2


def check_memory(source: Path, what: str, nbytes: int) -> None:
    """Refuses reading ``nbytes`` for ``what`` where this machine cannot
    hold them (the core's words for its limit)."""
    beyond = _unet_rt.beyond_available_memory(nbytes)
    if beyond is not None:
        raise PackageError(f"{source}: loading {what} needs {_unet_rt.format_bytes(nbytes)} of memory, {beyond}")


def regular_file_size(source: Path, path: Path, what: str) -> int:
    """The size of the regular file at ``path`` (links followed), or a
    :class:`PackageError` naming what it is instead."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise PackageError(f"{source}: cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
        raise PackageError(f"{source}: {what} {path} is not a regular file (it is {kind})")
    return info.st_size


def read_regular_file(source: Path, path: Path, what: str, limit: Optional[int] = None) -> bytes:
    """The bytes of the regular file at ``path``, checked against memory
    and ``limit`` before they are read; read up to the size found, so a
    file that grows meanwhile cannot make the read unbounded."""
    size = regular_file_size(source, path, what)
    _check_size(source, what, size, limit)
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise PackageError(f"{source}: cannot read {what} {path}: {e.strerror or e}") from None


def read_member(source: Path, archive: zipfile.ZipFile, name: str, what: str, limit: Optional[int] = None) -> bytes:
    """The bytes of member ``name`` of the package archive, its declared
    size checked first (zipfile stops at the declared size)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise PackageError(f"{source}: {what} {name} is not in the package") from None
    if info.is_dir():
        raise PackageError(f"{source}: {what} {name} is not a regular file (it is a directory)")
    _check_size(source, what, info.file_size, limit)
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise PackageError(f"{source}: cannot read {what} {name}: {e}") from None


def _check_size(source: Path, what: str, size: int, limit: Optional[int]) -> None:
    if limit is not None and size > limit:
        raise PackageError(f"{source}: {what} is {_unet_rt.format_bytes(size)}, more than the "
                           f"{_unet_rt.format_bytes(limit)} a package's {what} may be")
    check_memory(source, what, READ_COPIES * size)


def check_description(source: Path, names: List[str]) -> None:
    """Checks the package at ``source`` (a ``.zip``, a folder, or the YAML
    file itself) before ``bioimageio.spec`` reads it: the package file and
    the description within memory and size limits, and the description's
    YAML aliases bounded."""
    if source.is_dir():
        found = [source / n for n in names if (source / n).exists()]
        path = found[0] if found else source / names[0]
        text = read_regular_file(source, path, "description", MAX_DESCRIPTION_BYTES)
    elif zipfile.is_zipfile(source):
        # The spec reads the whole archive into memory.
        check_memory(source, "the package archive", regular_file_size(source, source, "package"))
        with zipfile.ZipFile(source) as archive:
            member = next((n for n in names if n in archive.namelist()), names[0])
            text = read_member(source, archive, member, "description", MAX_DESCRIPTION_BYTES)
    else:
        text = read_regular_file(source, source, "description", MAX_DESCRIPTION_BYTES)
    nodes = yaml_node_count(text)
    if nodes > MAX_YAML_NODES:
        raise PackageError(f"{source}: the description expands to more than {MAX_YAML_NODES:,} YAML nodes through "
                           f"its aliases (&anchor / *alias); write the values out")


def yaml_node_count(text: bytes) -> int:
    """How many nodes the YAML ``text`` holds once every alias is expanded,
    counted from the parser's events without expanding any (at most
    :data:`MAX_YAML_NODES` + 1); 0 where it does not parse, which the
    spec then reports.

    >>> yaml_node_count(b"a: &x [1, 2]\\nb: [*x, *x]")
    13
    """
    from ruyaml import YAML

    cap = MAX_YAML_NODES + 1
    sizes: Dict[str, int] = {}
    # Open collections: their anchor and their size so far.
    stack: List[List[Any]] = [[None, 0]]
    try:
        for event in YAML(typ="safe", pure=True).parse(text):
            kind = type(event).__name__
            if kind in ("MappingStartEvent", "SequenceStartEvent"):
                stack.append([event.anchor, 1])
                continue
            if kind == "ScalarEvent":
                anchor, size = event.anchor, 1
            elif kind == "AliasEvent":
                anchor, size = None, sizes.get(event.anchor, 1)
            elif kind in ("MappingEndEvent", "SequenceEndEvent") and len(stack) > 1:
                anchor, size = stack.pop()
            else:
                continue
            if anchor is not None:
                sizes[anchor] = size
            stack[-1][1] = min(stack[-1][1] + size, cap)
            if stack[0][1] >= cap:
                return cap
    except Exception:  # noqa: BLE001 - the parser raises what its scanner raises; the spec reports it
        return 0
    return stack[0][1]


def local_path(source: Path, reference: Any, what: str) -> PurePosixPath:
    """The package-relative path of a file the description names, or a
    :class:`PackageError` for a URL: loading downloads nothing."""
    path = getattr(reference, "path", None)
    if isinstance(path, PurePosixPath) and type(reference).__name__ == "RelativeFilePath":
        return path
    if isinstance(reference, Path):
        return PurePosixPath(reference.as_posix())
    raise PackageError(f"{source}: {what} is at {reference}: unet_rt loads packages from local files only and "
                       f"downloads nothing; download it into the package and name it by its relative path")


def read_referenced(source: Path, reference: Any, what: str) -> bytes:
    """The bytes of the file ``reference`` (from the package's description)
    names, within the package at ``source`` (a ``.zip`` or a folder, or the
    folder of the YAML file), checked as :func:`read_regular_file` and
    :func:`read_member` check."""
    relative = local_path(source, reference, what)
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            return read_member(source, archive, relative.as_posix(), what)
    root = source if source.is_dir() else source.parent
    return read_regular_file(source, root / Path(relative), what)
