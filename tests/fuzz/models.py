"""Model files for the campaigns: the tiny valid U-Net, corruptions of its
bytes, copies with hostile metadata, and small scripted networks that
misbehave (return a tuple, NaN, the wrong shape...).

Every model is built in memory as the bytes of a TorchScript archive; a
case describes its model by the recipe (:class:`Corruption`, a metadata
edit, a :data:`NETWORKS` name), so that its log line rebuilds it.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from hypothesis import strategies as st

__all__ = [
    "RAW",
    "tiny_bytes",
    "tiny_metadata",
    "resave",
    "metadata_text",
    "Corruption",
    "corrupt",
    "corruptions",
    "MetadataEdit",
    "metadata_edits",
    "Network",
    "NETWORKS",
    "network_bytes",
    "poisoned_tiny",
    "edited_text",
    "SAME_METADATA",
    "FIELDS",
    "LIES",
    "NORMALIZATIONS",
]

#: Marks a string in a metadata document to be written as a raw JSON
#: literal: ``RAW + "1e999"`` becomes ``1e999`` (which JSON parsers read as inf).
RAW = "\x00raw:"


# --- the tiny U-Net ------------------------------------------------------------


def tiny_bytes(seed: int = 0, **overrides: Any) -> bytes:
    """The archive of ``training.tiny.export_tiny(path, seed, **overrides)``."""
    return _tiny_bytes(seed, json.dumps(overrides, sort_keys=True))


@lru_cache(maxsize=None)
def _tiny_bytes(seed: int, overrides: str) -> bytes:
    """:func:`tiny_bytes` with its overrides as JSON (so that it can be cached)."""
    from training.tiny import export_tiny

    with tempfile.TemporaryDirectory() as tmp:
        return export_tiny(Path(tmp) / "tiny.pt", seed=seed, **json.loads(overrides)).read_bytes()


def tiny_metadata(seed: int = 0, **overrides: Any) -> Dict[str, Any]:
    """The metadata embedded in :func:`tiny_bytes`."""
    with zipfile.ZipFile(io.BytesIO(tiny_bytes(seed, **overrides))) as z:
        name = next(n for n in z.namelist() if n.endswith("/extra/unet_rt.json"))
        return json.loads(z.read(name))


@lru_cache(maxsize=16)
def _scripted(data: bytes) -> torch.jit.ScriptModule:
    """The module of an archive, loaded once."""
    return torch.jit.load(io.BytesIO(data), map_location="cpu")


def resave(data: bytes, metadata: Union[str, bytes, None]) -> bytes:
    """The archive ``data`` with its metadata replaced by ``metadata`` (the
    entry's text; ``None`` leaves no metadata)."""
    extra = {} if metadata is None else {"unet_rt.json": metadata}
    buffer = io.BytesIO()
    torch.jit.save(_scripted(data), buffer, _extra_files=extra)
    return buffer.getvalue()


def metadata_text(document: Any) -> str:
    """``document`` as JSON, with :data:`RAW` strings written as raw literals.

    >>> metadata_text({"halo": RAW + "1e999", "x": [1]})
    '{"halo": 1e999, "x": [1]}'
    """
    text = json.dumps(document, ensure_ascii=False)
    marker = '"' + json.dumps(RAW)[1:-1]  # how json.dumps starts a marked string
    out, i = [], 0
    while (j := text.find(marker, i)) >= 0:
        value, end = json.decoder.scanstring(text, j + 1)
        out.append(text[i:j] + value[len(RAW):])
        i = end
    return "".join(out) + text[i:]


# --- corruptions of the bytes --------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One way to damage an archive: ``kind`` with its ``params``.

    Kinds: ``truncate`` (keep ``offset`` bytes), ``flip`` (xor bits at
    offsets), ``overwrite`` (write ``value`` bytes at ``offset``), ``drop``
    (remove the zip entries whose names end with ``entry``), ``replace``
    (give those entries ``content``), ``prepend``/``append`` (``content``
    around the archive), ``duplicate`` (write the entries twice); and,
    inside a rebuilt zip whose checksums match, ``flip_entry`` (xor bits of
    the entries' own bytes) and ``resize_entry`` (cut or zero-extend them
    to a length).
    """

    kind: str
    params: Tuple[Any, ...]


ENTRY_SUFFIXES: Tuple[str, ...] = (
    "data.pkl", "constants.pkl", "version", "byteorder", "extra/unet_rt.json", "data/0", "data/1", "data/10",
    "data/25", "code/__torch__/training/unet.py", "code/__torch__/torch/nn/modules/conv.py", ".data/serialization_id",
    ".debug_pkl", "/",
)
CONTENTS: Tuple[bytes, ...] = (
    b"", b"\x00", b"99", b"-1", b"big", b"\xff" * 7, b"def forward(self, x):\n  return x\n", b"\x80\x02}q\x00.",
    b"\x00" * 4096, b"{}", b"1" * 100000,
)


def corrupt(data: bytes, c: Corruption) -> bytes:
    """``data`` damaged as ``c`` says."""
    kind, p = c.kind, c.params
    if not data and kind in ("flip", "overwrite"):
        return data
    if kind == "truncate":
        return data[: p[0] % (len(data) + 1)]
    if kind == "flip":
        buf = bytearray(data)
        for offset, bit in p:
            buf[offset % len(buf)] ^= 1 << bit
        return bytes(buf)
    if kind == "overwrite":
        offset, value = p
        offset %= len(data)
        return data[:offset] + value + data[offset + len(value):]
    if kind in ("drop", "replace", "duplicate", "flip_entry", "resize_entry"):
        return _rezip(data, kind, *p)
    if kind == "prepend":
        return p[0] + data
    if kind == "append":
        return data + p[0]
    raise ValueError(f"unknown corruption {kind}")


def _rezip(data: bytes, kind: str, suffix: str = "", content: Any = b"") -> bytes:
    """The archive rewritten entry by entry with one entry dropped, replaced
    or duplicated (unchanged when it is no longer a readable zip)."""
    try:
        return _rezip_entries(data, kind, suffix, content)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, NotImplementedError,
            zlib.error):
        return data


def _edit_entry(body: bytes, kind: str, content: Any) -> bytes:
    """An entry's bytes after ``replace``, ``flip_entry`` or ``resize_entry``."""
    if kind == "replace":
        return content
    if kind == "flip_entry" and body:
        buf = bytearray(body)
        for offset, bit in content:
            buf[offset % len(buf)] ^= 1 << bit
        return bytes(buf)
    if kind == "resize_entry":
        return body[:content] + b"\x00" * max(0, content - len(body))
    return body


def _rezip_entries(data: bytes, kind: str, suffix: str, content: Any) -> bytes:
    """:func:`_rezip` on a readable zip."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            hit = suffix != "" and info.filename.endswith(suffix)
            if kind == "drop" and hit:
                continue
            body = src.read(info.filename)
            body = _edit_entry(body, kind, content) if hit else body
            dst.writestr(info.filename, body)
            if kind == "duplicate" and hit:
                dst.writestr(info.filename, body[::-1])
    return out.getvalue()


def corruptions(size: int) -> st.SearchStrategy[Corruption]:
    """Damage to an archive of ``size`` bytes."""
    offsets = st.integers(0, max(0, size - 1))
    return st.one_of(
        st.builds(lambda o: Corruption("truncate", (o,)), st.integers(0, size)),
        st.builds(lambda fl: Corruption("flip", tuple(fl)),
                  st.lists(st.tuples(offsets, st.integers(0, 7)), min_size=1, max_size=8)),
        st.builds(lambda o, v: Corruption("overwrite", (o, v)), offsets,
                  st.one_of(st.binary(min_size=1, max_size=64), st.sampled_from(CONTENTS[1:]))),
        st.builds(lambda e: Corruption("drop", (e,)), st.sampled_from(ENTRY_SUFFIXES)),
        st.builds(lambda e, c: Corruption("replace", (e, c)), st.sampled_from(ENTRY_SUFFIXES), st.sampled_from(CONTENTS)),
        st.builds(lambda e: Corruption("duplicate", (e,)), st.sampled_from(ENTRY_SUFFIXES)),
        st.builds(lambda e, fl: Corruption("flip_entry", (e, tuple(fl))), st.sampled_from(ENTRY_SUFFIXES),
                  st.lists(st.tuples(st.integers(0, 10000), st.integers(0, 7)), min_size=1, max_size=4)),
        st.builds(lambda e, fl: Corruption("flip_entry", (e, tuple(fl))), st.sampled_from(("data.pkl", "constants.pkl")),
                  st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 7)), min_size=1, max_size=2)),
        st.builds(lambda e, n: Corruption("resize_entry", (e, n)), st.sampled_from(ENTRY_SUFFIXES),
                  st.one_of(st.integers(0, 64), st.integers(0, 20000))),
        st.builds(lambda c: Corruption("prepend", (c,)), st.sampled_from(CONTENTS)),
        st.builds(lambda c: Corruption("append", (c,)), st.sampled_from(CONTENTS)),
    )


# --- hostile metadata ------------------------------------------------------------


@dataclass(frozen=True)
class MetadataEdit:
    """``path`` (keys into the document) set to ``value``, or removed when
    ``remove``; an empty path replaces the whole document."""

    path: Tuple[str, ...]
    value: Any = None
    remove: bool = False

    def __repr__(self) -> str:
        value = repr(self.value)
        value = value if len(value) <= 120 else f"{value[:100]}...<{len(value)} chars>"
        return f"MetadataEdit({self.path!r}, {value}{', remove=True' if self.remove else ''})"

    def apply(self, document: Any) -> Any:
        """``document`` with this edit (a copy)."""
        if not self.path:
            return self.value
        doc = json.loads(json.dumps(document))
        parent = doc
        for key in self.path[:-1]:
            if not isinstance(parent, dict):
                return doc
            parent = parent.setdefault(key, {})
        if isinstance(parent, dict):
            if self.remove:
                parent.pop(self.path[-1], None)
            else:
                parent[self.path[-1]] = self.value
        return doc


FIELDS: Tuple[str, ...] = (
    "format", "spatial_dims", "in_channels", "out_channels", "output", "padding", "halo", "size_multiple",
    "size_offset", "normalization", "class_names", "name", "architecture", "training",
)
#: Values that are wrong for (nearly) every field.
BAD_VALUES: Tuple[Any, ...] = (
    None, "", "2", "92", -1, -(2**63), 0, 1, 1.5, 2.0, True, [], [2], {}, {"kind": "none"}, 2**40, 2**63, 2**64,
    10**18, 10**30, 1 << 16, (1 << 16) + 1, 10**9, RAW + "1e999", RAW + "-1e999", RAW + "1e-999", RAW + "NaN",
    RAW + "Infinity", RAW + "18446744073709551616", RAW + "-0", RAW + "1E2", "unet_rt/1", "unet_rt/2",
    "softmax", "sigmoid", "identity", "same", "valid", "\u00e9", "x" * 10000,
)
#: Values that are plausible but lie about the network.
LIES: Dict[str, Tuple[Any, ...]] = {
    "spatial_dims": (1, 3, 4, 100),
    "in_channels": (2, 3, 4, 1 << 16),
    "out_channels": (1, 3, 5, 257, 300, 1 << 16),
    "output": ("sigmoid", "identity"),
    "padding": ("same",),
    "halo": (0, 1, 10, 19, 21, 30, 1 << 16),
    "size_multiple": (1, 2, 3, 8, 16, 1 << 16),
    "size_offset": (1, 2, 3, 43, 44, 45, 1 << 16),
    "class_names": ([], ["a"], ["a", "b", "c"], [1, 2], [None, None], ["", ""]),
}
NORMALIZATIONS: Tuple[Any, ...] = (
    {"kind": "none"}, {"kind": "scale", "factor": 1e300}, {"kind": "scale", "factor": 1e30}, {"kind": "scale", "factor": -1.0},
    {"kind": "scale", "factor": 0.0}, {"kind": "scale", "factor": 5e-324}, {"kind": "scale", "factor": RAW + "1e999"},
    {"kind": "scale"}, {"kind": "zscore", "mean": 0.0, "std": -1.0}, {"kind": "zscore", "mean": 0.0, "std": 0.0},
    {"kind": "zscore", "mean": 0.0, "std": RAW + "1e999"}, {"kind": "zscore", "mean": RAW + "1e999", "std": 1.0},
    {"kind": "zscore", "mean": 1e300, "std": 1e-300}, {"kind": "zscore", "mean": 1e29, "std": 1.0},
    {"kind": "zscore", "mean": 0.0, "std": 1e-30}, {"kind": "zscore", "mean": 0.0, "std": 1e300},
    {"kind": "percentile", "low": 99.0, "high": 1.0}, {"kind": "percentile", "low": 1.0, "high": 101.0},
    {"kind": "percentile", "low": -1.0, "high": 50.0}, {"kind": "percentile", "low": 50.0, "high": 50.0},
    {"kind": "percentile", "low": 0.0, "high": 100.0}, {"kind": "percentile", "low": 49.999999, "high": 50.0},
    {"kind": "percentile", "low": RAW + "NaN", "high": 50.0}, {"kind": "percentile"}, {"kind": "minmax"},
    {"kind": None}, {}, [], "percentile", {"kind": "none", "extra": 1},
)
#: Whole documents that are not a metadata object.
DOCUMENTS: Tuple[Any, ...] = (
    RAW + "", RAW + "{", RAW + "[]", RAW + "null", RAW + "42", RAW + '"unet_rt/1"', RAW + "\ufeff{}", RAW + "{" * 100000,
    RAW + "[" * 200 + "]" * 200, RAW + '{"format": "unet_rt/1"}', RAW + '{"format": "unet_rt/1", "format": "x"}',
)


def metadata_edits() -> st.SearchStrategy[MetadataEdit]:
    """One edit of a metadata document: a bad value, a lie, a removed field,
    a hostile normalization, an unknown field or a whole other document."""
    field = st.sampled_from(FIELDS)
    lie = st.sampled_from(sorted(LIES)).flatmap(lambda f: st.builds(MetadataEdit, st.just((f,)), st.sampled_from(LIES[f])))
    return st.one_of(
        st.builds(MetadataEdit, field.map(lambda f: (f,)), st.sampled_from(BAD_VALUES)),
        lie,
        lie,
        st.builds(lambda f: MetadataEdit((f,), remove=True), field),
        st.builds(MetadataEdit, st.just(("normalization",)), st.sampled_from(NORMALIZATIONS)),
        st.builds(MetadataEdit, st.sampled_from((("normalization", "low"), ("normalization", "factor"), ("unknown",))),
                  st.sampled_from(BAD_VALUES)),
        st.builds(MetadataEdit, st.just(()), st.sampled_from(DOCUMENTS)),
    )


def edited_text(base: Dict[str, Any], edits: List[MetadataEdit]) -> str:
    """The metadata text of ``base`` after ``edits``."""
    document: Any = base
    for edit in edits:
        document = edit.apply(document)
    if isinstance(document, str) and document.startswith(RAW):
        return document[len(RAW):]
    return metadata_text(document)


# --- misbehaving networks ------------------------------------------------------------


#: Metadata of the scripted networks: same padding, 2-D, 1 channel in, 2 out, any size.
SAME_METADATA: Dict[str, Any] = {
    "format": "unet_rt/1", "name": "scripted", "architecture": "test", "spatial_dims": 2, "in_channels": 1,
    "out_channels": 2, "output": "softmax", "class_names": [], "padding": "same", "halo": 4, "size_multiple": 1,
    "size_offset": 0, "normalization": {"kind": "none"},
}


class _Base(nn.Module):
    """A 1x1 convolution from 1 to 2 channels (so the network has weights to probe)."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)


class Good(_Base):
    """Returns the convolution's output: a valid same-padded 1 to 2 channel network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ReturnsTuple(_Base):
    """Returns a tuple of two tensors."""

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y


class ReturnsDict(_Base):
    """Returns a dict holding the tensor."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


class ReturnsList(_Base):
    """Returns a list holding the tensor."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [self.conv(x)]


class ReturnsNone(_Base):
    """Returns None."""

    def forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return None


class ReturnsInt(_Base):
    """Returns the int 5."""

    def forward(self, x: torch.Tensor) -> int:
        return 5


class ReturnsString(_Base):
    """Returns a string."""

    def forward(self, x: torch.Tensor) -> str:
        return "labels"


class Rank3(_Base):
    """Returns a 3-D tensor (the batch axis dropped)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[0]


class Rank5(_Base):
    """Returns a 5-D tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).unsqueeze(2)


class Rank1(_Base):
    """Returns the output flattened."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten()


class Rank0(_Base):
    """Returns a 0-d tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sum()


class FiveChannels(_Base):
    """Returns 5 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y, y, y[:, :1]], 1)


class OneChannel(_Base):
    """Returns 1 channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :1]


class SoftmaxOutput(_Base):
    """Ends in its own softmax: probabilities already."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x), 1)


class SigmoidOutput(_Base):
    """Ends in its own sigmoid of one channel: probabilities already."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)[:, :1])


class MasksOutput(_Base):
    """Ends in its own sigmoid per channel (multi-label masks): probabilities
    already, not summing to 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class ManyChannels(_Base):
    """Returns 400 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).repeat(1, 200, 1, 1)


class CropOne(_Base):
    """Returns one pixel less per side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, 1:-1, 1:-1]


class PadThree(_Base):
    """Returns three pixels more per side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(self.conv(x), [3, 3, 3, 3])


class Transposed(_Base):
    """Returns the output with its spatial axes swapped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).transpose(2, 3)


class Empty(_Base):
    """Returns zero rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, :0, :]


class DoubleBatch(_Base):
    """Returns twice the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).repeat(2, 1, 1, 1)


class HugeExpand(_Base):
    """Returns a 100000 x 100000 view (of no memory)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[:, :, :1, :1].expand(y.size(0), 2, 100000, 100000)


class IntOutput(_Base):
    """Returns int64 logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) * 10).long()


class BoolOutput(_Base):
    """Returns a bool tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) > 0


class DoubleOutput(_Base):
    """Returns float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).double()


class HalfOutput(_Base):
    """Returns float16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).half()


class ComplexOutput(_Base):
    """Returns complex64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.complex(y, y)


class NanEverywhere(_Base):
    """Returns NaN everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float("nan")


class NanSomewhere(_Base):
    """Returns NaN where the input exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.where(x > 0.5, torch.full_like(y, float("nan")), y)


class NanOnePixel(_Base):
    """Returns NaN at the first pixel of channel 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).clone()
        y[0, 1, 0, 0] = float("nan")
        return y


class InfSomewhere(_Base):
    """Returns +Inf where the input exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.where(x > 0.5, torch.full_like(y, float("inf")), y)


class NegInfEverywhere(_Base):
    """Returns -Inf everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 0 - float("inf")


class HugeFinite(_Base):
    """Returns +-3.4e38 (finite, near float32's limit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(self.conv(x)) * 3.4e38


class Raises(_Base):
    """Raises a RuntimeError."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) > -1:
            raise RuntimeError("the network refuses to run")
        return self.conv(x)


class FailsAssert(_Base):
    """Fails a torch._assert."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.size(2) == 12345, "input must be 12345 pixels")
        return self.conv(x)


class OutOfRange(_Base):
    """Indexes past the end of its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).select(2, 100000).unsqueeze(2)


class TwoInputs(_Base):
    """Needs two inputs."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + y


class ThreeChannelsIn(nn.Module):
    """Takes 3 input channels."""

    def __init__(self) -> None:
        """Builds the layers."""
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NoWeights(nn.Module):
    """Has no parameters (nothing to probe) and returns 2 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, -x], 1)


@dataclass(frozen=True)
class Network:
    """A scripted network and what must happen when it runs.

    Attributes:
        build: makes the module.
        wrong: why its output can never be used when the metadata describes
            a 2-D, 1 to 2 channel, same-padded network (``None`` when it can).
        nonfinite: its output holds NaN or Inf.
        weights: ``"nan"``/``"inf"`` to poison its weights after building.
        probed_wrong: why its output can never be used when the runtime
            finds its geometry by probing (no metadata).
    """

    build: Callable[[], nn.Module]
    wrong: Optional[str] = None
    nonfinite: bool = False
    weights: Optional[str] = None
    probed_wrong: Optional[str] = None


_SHAPE = "the network's output has the wrong shape"
NETWORKS: Dict[str, Network] = {
    "good": Network(Good),
    # A runtime may unwrap a tuple, list or dict holding the output: then it must be the first tensor's result.
    "tuple": Network(ReturnsTuple),
    "dict": Network(ReturnsDict),
    "list": Network(ReturnsList),
    "none": Network(ReturnsNone, "the network returns None"),
    "int": Network(ReturnsInt, "the network returns an int"),
    "string": Network(ReturnsString, "the network returns a string"),
    "rank3": Network(Rank3, _SHAPE),
    "rank5": Network(Rank5, _SHAPE),
    "rank1": Network(Rank1, _SHAPE),
    "rank0": Network(Rank0, _SHAPE),
    # Wrong only under metadata that says 2 channels (the worker's "same" choice).
    "five_channels": Network(FiveChannels),
    "one_channel": Network(OneChannel),
    "many_channels": Network(ManyChannels),
    # Probed as "probabilities": no second softmax, one channel a mask at 0.5.
    "softmax_output": Network(SoftmaxOutput),
    "sigmoid_output": Network(SigmoidOutput),
    # Probed as "masks": probabilities as they are, labels refused.
    "masks_output": Network(MasksOutput),
    "crop_one": Network(CropOne, _SHAPE),
    "pad_three": Network(PadThree, _SHAPE),
    "transposed": Network(Transposed),  # right only on square tiles: checked by shape
    "empty": Network(Empty, _SHAPE, probed_wrong="the network returns an empty output"),
    "double_batch": Network(DoubleBatch, "the network returns twice the batch",
                            probed_wrong="the network returns twice the batch"),
    "huge_expand": Network(HugeExpand, _SHAPE, probed_wrong="the network returns 100000 x 100000 pixels"),
    "int_output": Network(IntOutput),
    "bool_output": Network(BoolOutput),
    "double_output": Network(DoubleOutput),
    "half_output": Network(HalfOutput),
    "complex_output": Network(ComplexOutput, "the network returns complex numbers",
                              probed_wrong="the network returns complex numbers"),
    "nan_everywhere": Network(NanEverywhere, nonfinite=True),
    "nan_somewhere": Network(NanSomewhere, nonfinite=True),
    "nan_one_pixel": Network(NanOnePixel),  # its NaN may fall in a tile margin that is cropped away
    "inf_somewhere": Network(InfSomewhere, nonfinite=True),
    "neg_inf_everywhere": Network(NegInfEverywhere, nonfinite=True),
    "huge_finite": Network(HugeFinite),
    "raises": Network(Raises, "the network raises", probed_wrong="the network raises"),
    "fails_assert": Network(FailsAssert, "the network raises", probed_wrong="the network raises"),
    "out_of_range": Network(OutOfRange, "the network raises", probed_wrong="the network raises"),
    "two_inputs": Network(TwoInputs, "the network takes two inputs", probed_wrong="the network takes two inputs"),
    "three_channels_in": Network(ThreeChannelsIn, "the network takes 3 channels, the metadata says 1"),
    "no_weights": Network(NoWeights),
    "nan_weights": Network(Good, nonfinite=True, weights="nan"),
    "inf_weights": Network(Good, nonfinite=True, weights="inf"),
}
# "nan_somewhere"/"inf_somewhere" only poison pixels whose input exceeds 0.5:
# the worker feeds them images that have such pixels.


@lru_cache(maxsize=None)
def network_bytes(name: str) -> bytes:
    """The archive of :data:`NETWORKS` ``[name]``, without metadata."""
    spec = NETWORKS[name]
    torch.manual_seed(0)
    module = spec.build().eval()
    if spec.weights:
        value = math.nan if spec.weights == "nan" else math.inf
        with torch.no_grad():
            next(module.parameters()).view(-1)[0] = value
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def poisoned_tiny(parameter: int, value: float, fraction: float) -> bytes:
    """The tiny U-Net with a ``fraction`` of the entries of its
    ``parameter``-th weight tensor set to ``value`` (its metadata kept)."""
    module = torch.jit.load(io.BytesIO(tiny_bytes()), map_location="cpu")
    params = list(module.parameters())
    target = params[parameter % len(params)]
    with torch.no_grad():
        flat = target.view(-1)
        count = max(1, int(flat.numel() * fraction))
        flat[:count] = value
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={"unet_rt.json": json.dumps(tiny_metadata())})
    return buffer.getvalue()
