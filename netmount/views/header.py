"""Synthesize a safetensors header: the 8-byte length and the JSON that ``safe_open`` reads.

Laid out as the safetensors writer lays it out (``__metadata__`` first, compact JSON, padded
with spaces to a multiple of 8 so the data that follows stays aligned), except that tensors
are in the order given: the planner keeps the source order so a loader's reads stay
sequential in the source files.  Offsets are contiguous from 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def encode_header(entries: list[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """``8-byte little-endian N + N bytes of JSON`` for tensors laid out back to back."""
    obj: dict = {}
    if metadata is not None:
        obj["__metadata__"] = metadata
    off = 0
    for e in entries:
        obj[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [off, off + e.nbytes]}
        off += e.nbytes
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text
