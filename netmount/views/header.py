"""Synthesize a safetensors header: the 8-byte length and the JSON that ``safe_open`` reads.

Laid out as the safetensors writer lays it out (``__metadata__`` first, compact JSON, padded
with spaces to a multiple of 8 so the data that follows stays aligned), except that tensors
are in the order given: the planner keeps the source order so a loader's reads stay
sequential in the source files.  Offsets are contiguous from 0.

Formatted with strings rather than ``json.dumps`` of a dict per file: a ``--reshard expert``
view of DeepSeek-V3 writes ~15k headers at mount time (names still go through the json
module's ASCII string escaper, so any name a source header could hold comes out valid JSON).
"""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring_ascii as quote
from typing import NamedTuple


class Entry(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def encode_header(entries: list[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """``8-byte little-endian N + N bytes of JSON`` for tensors laid out back to back."""
    parts = []
    if metadata is not None:
        parts.append(_metadata(tuple(metadata.items())))
    off = 0
    for name, dtype, shape, nbytes in entries:
        end = off + nbytes
        parts.append(f'{quote(name)}:{_dtype_shape(dtype, shape)}{off},{end}]}}')
        off = end
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


@functools.lru_cache(maxsize=64)
def _metadata(items: tuple[tuple[str, str], ...]) -> str:
    """Encoded once per distinct ``__metadata__`` (every shard of a repo has the same)."""
    return '"__metadata__":' + json.dumps(dict(items), separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _dtype_shape(dtype: str, shape: tuple[int, ...]) -> str:
    """``{"dtype":..,"shape":[..],"data_offsets":[`` once per (dtype, shape): a checkpoint
    has few (DeepSeek-V3: ~40 for its 92k tensors)."""
    return f'{{"dtype":{quote(dtype)},"shape":[{",".join(map(str, shape))}],"data_offsets":['
