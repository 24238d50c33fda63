"""Parquet layout: the footer -> the byte ranges of every column chunk (pure, no I/O).

Readers of parquet (pyarrow, DuckDB, polars) read the footer at the file's end, then only
the column chunks a query needs.  The prefetcher uses these ranges as it uses a
safetensors file's tensors (``policy.TensorMap(columnar=True)``): a jump to a chunk's start
fetches that chunk exactly, and a sequential run stops at the chunk's end unless it is a
stream (a full scan).

Why our own reader of the footer: it is thrift's compact protocol, ~80 lines to decode
generically, while pyarrow in the daemon costs a 100+ MB import for what is a few offsets
(and is not a dependency of netmount).  ``tests/test_datasets_parquet.py`` checks the
ranges against pyarrow's own metadata.

Layout (parquet-format): ``PAR1`` | column chunks, row group by row group | FileMetaData
(thrift compact) | 4-byte little-endian length of FileMetaData | ``PAR1``.  An encrypted
footer (``PARE``) has no readable offsets: no map.  Field ids used:
FileMetaData 3 num_rows, 4 row_groups; RowGroup 1 columns; ColumnChunk 3 meta_data;
ColumnMetaData 3 path_in_schema, 7 total_compressed_size, 9 data_page_offset,
11 dictionary_page_offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"PAR1"
TAIL = 8  # footer length (4 bytes) + magic
FOOTER_READ = 64 << 10  # what pyarrow reads first from the end: one read usually has it all


class ParquetError(ValueError):
    """Not a parquet file we can map (bad magic, encrypted footer, truncated metadata)."""


@dataclass(frozen=True)
class ColumnChunk:
    row_group: int
    column: str  # dotted path in the schema
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    chunks: list[ColumnChunk]  # file order
    footer_start: int  # where FileMetaData begins; [footer_start, size) is the footer
    num_rows: int


def footer_span(tail: bytes, size: int) -> int:
    """Where the footer starts, from the file's last ``TAIL`` (or more) bytes."""
    if size < 12 or len(tail) < TAIL:
        raise ParquetError("too short for parquet")
    if tail[-4:] == b"PARE":
        raise ParquetError("encrypted footer")
    if tail[-4:] != MAGIC:
        raise ParquetError("no PAR1 magic at the end")
    (n,) = struct.unpack("<I", tail[-8:-4])
    start = size - TAIL - n
    if n == 0 or start < 4:
        raise ParquetError(f"footer length {n} does not fit a file of {size} bytes")
    return start


def read_layout(read: Callable[[int, int], bytes], size: int, first: int = FOOTER_READ) -> Layout:
    """The layout of a parquet file of ``size`` bytes; ``read(start, end)`` gives its bytes.
    Reads the last ``first`` bytes, and the rest of the footer if it is longer."""
    lo = max(0, size - first)
    tail = read(lo, size)
    start = footer_span(tail, size)
    if start < lo:
        tail = read(start, lo) + tail
        lo = start
    return parse_footer(tail[start - lo: size - lo - TAIL], size, start)


def parse_footer(meta: bytes, size: int, footer_start: int) -> Layout:
    """FileMetaData bytes -> Layout; chunk ranges are clipped to the data region."""
    try:
        fmd, _ = _Compact(meta).struct()
    except (IndexError, struct.error, RecursionError) as exc:
        raise ParquetError(f"truncated or corrupt footer ({type(exc).__name__})") from None
    chunks = []
    for g, rg in enumerate(fmd.get(4) or []):
        for cc in rg.get(1) or []:
            md = cc.get(3)
            if not isinstance(md, dict) or 9 not in md or 7 not in md:
                continue  # encrypted column metadata, or a chunk in another file
            start = md[9]
            dictionary = md.get(11)
            if dictionary is not None and 0 < dictionary < start:
                start = dictionary
            end = min(start + md[7], footer_start)
            start = max(start, 4)
            if end > start:
                path = ".".join(p.decode("utf-8", "replace") for p in md.get(3) or [])
                chunks.append(ColumnChunk(g, path, start, end))
    chunks.sort(key=lambda c: c.start)
    return Layout(chunks, footer_start, int(fmd.get(3) or 0))


class _Compact:
    """A generic reader of thrift's compact protocol: structs become {field id: value},
    lists and sets lists, maps dicts, binaries bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int, depth: int):
        if kind in (1, 2):  # a bool inside a list (in a struct field it is the type itself)
            return self.byte() == 1
        if kind == 3:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.pos += 8
            return struct.unpack("<d", self.data[self.pos - 8: self.pos])[0]
        if kind == 8:
            n = self.varint()
            self.pos += n
            if self.pos > len(self.data):
                raise IndexError("binary past the end")
            return self.data[self.pos - n: self.pos]
        if kind in (9, 10):
            head = self.byte()
            n = head >> 4
            if n == 15:
                n = self.varint()
            return [self.value(head & 0x0F, depth + 1) for _ in range(n)]
        if kind == 11:
            n = self.varint()
            if n == 0:
                return {}
            types = self.byte()
            return {self.value(types >> 4, depth + 1): self.value(types & 0x0F, depth + 1) for _ in range(n)}
        if kind == 12:
            return self.struct(depth + 1)[0]
        raise IndexError(f"unknown thrift compact type {kind}")

    def struct(self, depth: int = 0) -> tuple[dict, int]:
        if depth > 64:
            raise RecursionError("nesting too deep")
        out: dict = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return out, self.pos
            delta, kind = head >> 4, head & 0x0F
            fid = last + delta if delta else self.zigzag()
            last = fid
            out[fid] = (kind == 1) if kind in (1, 2) else self.value(kind, depth)
