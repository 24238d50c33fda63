"""Pure block arithmetic for the read path: byte ranges <-> fixed-size block indices.

No I/O, so every edge (EOF, short last block, empty file) is tested against a
byte-by-byte model in ``tests/test_blocks.py`` (the rclone ``lib/ranges`` habit).
Block ``i`` of a file holds bytes ``[i * block_size, min((i + 1) * block_size, file_size))``.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, Union

Blocks = Union[Mapping[int, bytes], Sequence[bytes]]
PAGE = 4096  # the kernel reads whole pages of a FUSE file (clipped at its end)

PAGE = 4096  # the kernel's page: FUSE reads, mmap faults and statfs all count in these


def _check_block_size(block_size: int) -> None:
    if block_size <= 0:
        raise ValueError(f"block size must be positive, got {block_size}")


def block_count(file_size: int, block_size: int) -> int:
    """Number of blocks of a file (0 for an empty file)."""
    _check_block_size(block_size)
    return -(-max(file_size, 0) // block_size)


def block_range(offset: int, size: int, file_size: int, block_size: int) -> range:
    """Indices of the blocks holding bytes ``[offset, min(offset + size, file_size))``.

    Empty when nothing is readable there (``size <= 0`` or ``offset >= file_size``), so a
    read at or past EOF needs no block and returns b"" — as read(2) does.
    """
    _check_block_size(block_size)
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    end = min(offset + size, file_size)
    if size <= 0 or offset >= end:
        return range(0)
    return range(offset // block_size, (end - 1) // block_size + 1)


def block_span(index: int, block_size: int, file_size: int) -> tuple[int, int]:
    """Byte offsets ``(start, end)`` of block ``index``, end exclusive; the last block is short."""
    _check_block_size(block_size)
    if not 0 <= index < block_count(file_size, block_size):
        raise IndexError(f"block {index} outside a {file_size}-byte file of {block_size}-byte blocks")
    start = index * block_size
    return start, min(start + block_size, file_size)


def coalesce(indices: Iterable[int], max_blocks: int | None = None) -> list[tuple[int, int]]:
    """Runs of consecutive indices as ``(first, last_inclusive)``, sorted, duplicates ignored.

    Each run is at most ``max_blocks`` long, so one run is one bounded HTTP range request.
    """
    if max_blocks is not None and max_blocks < 1:
        raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs:
            first, last = runs[-1]
            if i == last + 1 and (max_blocks is None or i - first < max_blocks):
                runs[-1] = (first, i)
                continue
        runs.append((i, i))
    return runs


def slice_blocks(blocks: Blocks, offset: int, size: int, file_size: int, block_size: int) -> bytes:
    """The bytes ``[offset, min(offset + size, file_size))`` cut from the blocks covering them.

    ``blocks`` maps block index -> block bytes (a dict, or a sequence indexed by block
    number). A missing block or one of the wrong length raises ``ValueError``: wrong bytes
    must never be served.
    """
    indices = block_range(offset, size, file_size, block_size)
    if not indices:
        return b""
    parts = []
    for i in indices:
        try:
            data = blocks[i]
        except (KeyError, IndexError):
            raise ValueError(f"block {i} missing") from None
        start, end = block_span(i, block_size, file_size)
        if data is None or len(data) != end - start:
            got = "None" if data is None else f"{len(data)} bytes"
            raise ValueError(f"block {i} has {got}, expected {end - start}")
        parts.append(data)
    head = offset - indices[0] * block_size
    tail = min(offset + size, file_size) - indices[-1] * block_size
    if len(parts) == 1:
        return bytes(parts[0][head:tail])
    parts = [memoryview(p) for p in parts]  # join only the parts asked for, no copies before
    parts[0] = parts[0][head:]
    parts[-1] = parts[-1][:tail]
    return b"".join(parts)
