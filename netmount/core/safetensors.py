"""Safetensors headers -> tensor byte ranges.  Pure: bytes in, records out, no I/O.

A header is 8 bytes little-endian ``N``, then ``N`` bytes of JSON; offsets in it are
relative to byte ``8 + N``.  Callers that read headers from the network or through a mount
use ``read_header(read, size)`` with their own ``read(start, end)`` callable.

Validation is strict, following the Rust reader (which is what ``safe_open`` will do to
the file later), because these numbers decide what we fetch: a corrupt or hostile header
must not turn into a 100 GB prefetch or a huge allocation.  Anything off raises
``HeaderError``; callers skip that file with a warning.  Checked: ``N`` within 100 MB and
the file, UTF-8 JSON object, no duplicate tensor names, ``__metadata__`` str -> str, every entry
``{dtype, shape, data_offsets}`` with non-negative integer shape and offsets, byte length
= elements x dtype bits / 8, offsets contiguous from 0 with no holes or overlaps, and
(when the file size is known) ``8 + N + last end == size``.  One deliberate difference:
a dtype we do not know (a newer safetensors) is accepted if it looks like a dtype name;
its size cannot be checked, but contiguity still bounds it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Callable

from netmount.core.errors import NetmountError

MAX_HEADER = 100_000_000  # the Rust reader's limit (safetensors::tensor::MAX_HEADER_SIZE)
FIRST_READ = 256 << 10  # one speculative read covers nearly every real header

# Bits per element, as in safetensors' Dtype::bitsize.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
_DTYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")


class HeaderError(NetmountError):
    """The bytes are not a sane safetensors header."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: absolute byte range ``[start, end)`` in its file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def header_size(prefix: bytes, file_size: int | None = None) -> int:
    """Bytes ``8 + N`` the whole header takes, from at least its first 8 bytes."""
    if len(prefix) < 8:
        raise HeaderError(f"file too short for a safetensors header ({len(prefix)} bytes)")
    n = int.from_bytes(prefix[:8], "little")
    if n < 2 or n > MAX_HEADER:
        raise HeaderError(f"header length {n} is absurd (limit {MAX_HEADER})")
    if file_size is not None and 8 + n > file_size:
        raise HeaderError(f"header length {n} runs past the end of a {file_size}-byte file")
    return 8 + n


@dataclass(frozen=True)
class Header:
    """A whole parsed header: tensors in file order, ``__metadata__`` (None when absent), the
    file size (the last tensor's end when it was not given) and ``span`` = ``8 + N``."""

    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None
    size: int
    span: int


def parse_header(data: bytes, file_size: int | None = None) -> list[TensorInfo]:
    """Tensors described by the header at the start of ``data``, in file order.

    ``data`` holds at least the ``8 + N`` header bytes (more is ignored).
    """
    return list(parse_header_full(data, file_size).tensors)


def parse_header_full(data: bytes, file_size: int | None = None) -> Header:
    """``parse_header`` plus what a view needs to write a new header: metadata and sizes."""
    span = header_size(data, file_size)
    if len(data) < span:
        raise HeaderError(f"need {span} header bytes, got {len(data)}")
    try:
        text = bytes(data[8:span]).decode("utf-8")
        obj = json.loads(text)
        if isinstance(obj, dict) and text.count('"data_offsets"') > len(obj):
            # Fewer entries than offsets keys: a duplicate name may have been dropped (or a
            # name merely contains the word).  Parse again, slowly, to tell which.
            obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HeaderError(f"header is not UTF-8 JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict):
        raise HeaderError("header is not a JSON object")
    meta = obj.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise HeaderError("__metadata__ must map strings to strings")
    records = [_entry(name, value, span) for name, value in obj.items()]
    records.sort(key=lambda t: (t.start, t.end))
    pos = span
    for t in records:
        if t.start != pos:
            what = "overlaps the previous one" if t.start < pos else "leaves a hole before it"
            raise HeaderError(f"tensor {t.name!r} at offset {t.start - span} {what}")
        pos = t.end
    if file_size is not None and pos != file_size:
        raise HeaderError(f"tensors end at byte {pos} but the file has {file_size}")
    return Header(tuple(records), meta, pos if file_size is None else file_size, span)


def read_header(read: Callable[[int, int], bytes], file_size: int,
                first: int = FIRST_READ) -> list[TensorInfo]:
    """Parse the header of a file of ``file_size`` bytes using ``read(start, end) -> bytes``.

    One speculative read of ``min(size, first)`` bytes, then one more only for a header
    longer than that: never the tensor data beyond the first read.
    """
    return list(read_header_full(read, file_size, first).tensors)


def read_header_full(read: Callable[[int, int], bytes], file_size: int,
                     first: int = FIRST_READ) -> Header:
    """``read_header`` returning the whole ``Header`` (metadata, size, span)."""
    head = read(0, min(file_size, first))
    span = header_size(head, file_size)
    if span > len(head):
        head = bytes(head) + read(len(head), span)
    if len(head) < span:
        raise HeaderError(f"short read: {len(head)} of {span} header bytes")
    return parse_header_full(head, file_size)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:100]!r}")
        out[key] = value
    return out


_KEYS = frozenset(("dtype", "shape", "data_offsets"))


def _entry(name: str, value, base: int) -> TensorInfo:
    if type(value) is not dict or not value.keys() >= _KEYS:
        raise HeaderError(f"tensor {name[:100]!r}: expected {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    bits = DTYPE_BITS.get(dtype) if type(dtype) is str else None
    if bits is None and not (type(dtype) is str and _DTYPE_NAME.fullmatch(dtype)):
        raise HeaderError(f"tensor {name[:100]!r}: bad dtype {str(dtype)[:40]!r}")
    if type(shape) is not list or len(shape) > 64:
        raise HeaderError(f"tensor {name[:100]!r}: bad shape")
    for d in shape:  # type() is: a bool is not a dimension
        if type(d) is not int or d < 0:
            raise HeaderError(f"tensor {name[:100]!r}: bad shape")
    if type(offsets) is not list or len(offsets) != 2:
        raise HeaderError(f"tensor {name[:100]!r}: bad data_offsets {str(offsets)[:60]}")
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        raise HeaderError(f"tensor {name[:100]!r}: bad data_offsets {str(offsets)[:60]}")
    if bits is not None:
        nbits = math.prod(shape) * bits
        if nbits % 8 or nbits // 8 != end - begin:
            raise HeaderError(f"tensor {name[:100]!r}: {dtype}{shape} does not fill "
                              f"{end - begin} bytes")
    return TensorInfo(name, dtype, tuple(shape), base + begin, base + end)
