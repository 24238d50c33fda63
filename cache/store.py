"""The block store interface: byte ranges of contents in, file descriptors or bytes out.

A content (named by the caller's content hash) is cut into blocks of ``block_size``; a
block is the bytes ``[index * block_size, ...)``, and only the last one may be shorter.  A
store holds *objects*: whole blocks, and *pieces* (any byte range inside one block: an
exact tensor's ends, a safetensors header, a parquet footer).  Pieces of one block that
together cover it are merged into the whole block.  Every byte that was fetched can be
stored (``put_range``), so nothing fetched is fetched twice.  What is put is any bytes-like
object, handed over and never changed by the caller afterwards: a store writes or keeps that
very buffer, never a copy of it (``as_buffer``).

Reads answer with ``Segment``s: (fd, offset) of stored files, so a FUSE reply can be
copied or spliced in C (libfuse ``read_buf``) without the bytes entering Python; ``read``
gives the same bytes copied.  Positions are absolute offsets in the content; ``size`` is
the content's total length (the store needs it to know a block's expected length).

fd lifetime (the reader and libfuse rely on it): an fd in a returned ``Segment`` stays
open and names the same file for at least ``FD_GRACE`` seconds after ``segments``
returns, even if the store stops caching it meanwhile.  libfuse reads it in C after our
callback has returned; an fd closed and reused by another open in between would hand a
program another file's bytes.  Stored files never change under a name (written once,
then only unlinked), so an fd read within the grace always gives the right bytes.  Two
exceptions: ``close()`` closes every fd at once (call it after the FUSE loop has ended),
and past the fd budget (half the process's fd limit) an fd may go after ``fds.MIN_GRACE``
(1 s) instead, with a warning (``fds.py``).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field

FD_GRACE = 10.0  # seconds an fd handed out in a Segment stays open at least


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a reply, in order: ``length`` bytes at ``pos`` of an open stored file
    (``fd``), or of ``data`` (a memory store's object; ``fd == -1``)."""

    fd: int
    pos: int
    length: int
    data: bytes | None = field(default=None, repr=False)


class BlockStore(abc.ABC):
    """Whole blocks and pieces keyed by content id; implementations are thread-safe."""

    block_size: int

    # -- writing (thread-safe; may block on disk: call off any event loop) -----------------
    @abc.abstractmethod
    def put(self, content_id: str, index: int, data) -> None:
        """Store one complete block (1..``block_size`` bytes), replacing any previous one
        and its pieces."""

    def put_range(self, content_id: str, offset: int, data, size: int) -> None:
        """Store ``data`` at ``offset`` of a content of ``size`` bytes: cut at block edges,
        whole blocks stored as blocks, the rest as pieces of their block, merged with the
        pieces they overlap or touch (into the whole block once they cover it).  Bytes
        already held are not written again."""
        self.put_ranges([(content_id, offset, data, size)])

    @abc.abstractmethod
    def put_ranges(self, items) -> None:
        """``put_range`` each of ``[(content_id, offset, data, size), ...]``, in as few
        index transactions as it takes (one, on disk)."""

    # -- reading -----------------------------------------------------------------------------
    @abc.abstractmethod
    def held(self, content_id: str, *, refresh: bool = False) -> list[tuple[int, int]]:
        """Sorted, merged ``[start, end)`` ranges of ``content_id`` this process knows to be
        stored: kept in memory, loaded from the index once per content and kept up to date
        by this process's own puts and evictions.  ``refresh=True`` reloads it (another
        process may have stored or evicted since: call it after a miss)."""

    @abc.abstractmethod
    def segments(self, content_id: str, offset: int, length: int, size: int) -> list[Segment] | None:
        """Segments covering exactly ``[offset, min(offset + length, size))`` in order, or
        None if any byte of it is not held.  Every stored object is CRC32C-checked once per
        process, on first use; a bad or vanished one is forgotten and the answer is None
        (the caller fetches again), never an exception.  See the module doc for how long
        the fds stay open."""

    def read(self, content_id: str, offset: int, length: int, size: int) -> bytes | None:
        """The bytes ``segments`` names, copied (None if any is not held)."""
        segments = self.segments(content_id, offset, length, size)
        return None if segments is None else join_segments(segments)

    @abc.abstractmethod
    def get(self, content_id: str, index: int) -> bytes | None:
        """A stored whole block, or None if it is not (or no longer) stored whole."""

    def prepare(self, content_id: str, ranges, size: int | None) -> None:
        """A hint for a sequential reader: these ``[start, end)`` ranges will be read soon.
        A disk store checks their objects and warms the page cache on its own bounded
        threads; returns at once.  The default does nothing."""

    def will_need(self, content_id: str, indices) -> None:
        """``prepare`` for whole blocks by index (the older reader's hint)."""
        bs = self.block_size
        self.prepare(content_id, [(i * bs, (i + 1) * bs) for i in indices], None)

    # -- what is held (stats, du, verify) -------------------------------------------------------
    @abc.abstractmethod
    def cached_bytes(self, content_id: str) -> int:
        """Bytes of ``content_id`` held, pieces included (``st_blocks``, ``du``)."""

    @abc.abstractmethod
    def cached_ranges(self, content_id: str) -> list[tuple[int, int]]:
        """Merged ``[start, end)`` ranges of ``content_id`` in the index (for maps and verify)."""

    @abc.abstractmethod
    def cached_indices(self, content_id: str) -> list[int]:
        """Sorted indices of the blocks of ``content_id`` stored *whole*."""

    @abc.abstractmethod
    def volume(self) -> int:
        """Total bytes of all stored objects."""

    def drop(self, content_id: str) -> int:
        """Delete every stored block and piece of ``content_id`` (any block size) and its
        verified mark; returns the bytes deleted.  For a content found to be wrong
        (``netmount verify``): the next read fetches it again."""
        raise NotImplementedError

    def fingerprint(self, content_id: str):
        """An opaque value that changes whenever a block or piece of ``content_id`` is
        stored, replaced, merged, evicted or dropped (None: this store cannot tell)."""
        return None

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        """Record that ``content_id`` was hashed and found right, *if* its objects are still
        those ``fingerprint`` describes (taken before hashing); returns whether it was."""
        return False

    def is_verified(self, content_id: str) -> bool:
        """A mark is there and nothing of the content changed since (checked here, as an
        eviction cannot tell us)."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and connections; the store must not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def join_segments(segments: list[Segment]) -> bytes | None:
    """The bytes of ``segments`` in one ``bytes``, stored files read with ``pread`` (None if a
    file came up short); a memory segment may hold any bytes-like object."""
    parts = []
    for s in segments:
        if s.data is not None:
            parts.append(memoryview(s.data)[s.pos : s.pos + s.length])
            continue
        part = os.pread(s.fd, s.length, s.pos)
        if len(part) != s.length:
            return None
        parts.append(part)
    return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


def check_content_id(content_id) -> str:
    if not isinstance(content_id, str) or not content_id or ":" in content_id or ";" in content_id:
        raise ValueError(f"content id must be a non-empty string without ':' or ';', got {content_id!r}")
    return content_id


def check_block(block_size: int, content_id: str, index: int, data):
    """Validate a ``put``; returns ``data`` as a bytes-like object (``as_buffer``): an
    oversized or empty block is a bug."""
    check_content_id(content_id)
    check_index(index)
    data = as_buffer(data)
    if not 0 < len(data) <= block_size:
        raise ValueError(f"block {content_id}:{index} has {len(data)} bytes; expected 1..{block_size}")
    return data


def check_range(content_id: str, offset: int, data, size: int):
    """Validate a ``put_range``; returns ``data`` as a bytes-like object (``as_buffer``)."""
    check_content_id(content_id)
    for name, value in (("offset", offset), ("size", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    data = as_buffer(data)
    if offset + len(data) > size:
        raise ValueError(f"range [{offset}, {offset + len(data)}) ends past the content's {size} bytes")
    return data


def as_buffer(data):
    """``data`` itself if it is ``bytes`` or a ``bytearray``, else a flat byte view of it: never
    a copy.  The caller hands the buffer over and never changes it afterwards (the fetcher's
    pieces are written once, by the socket): a store keeps it or writes it as it is."""
    if isinstance(data, (bytes, bytearray)):
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise ValueError(f"data must be bytes-like, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError("data must be a contiguous buffer")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def check_index(index: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 10**12:
        raise ValueError(f"block index must be an int in [0, 10**12), got {index!r}")


def check_block_size(block_size: int) -> int:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or not 0 < block_size < 10**12:
        raise ValueError(f"block size must be a positive int, got {block_size!r}")
    return block_size


def check_span(offset: int, length: int, size: int) -> int:
    """The end of a read ``[offset, offset + length)`` clipped to ``size``."""
    if offset < 0 or length < 0 or size < 0:
        raise ValueError(f"bad read: offset {offset}, length {length}, size {size}")
    return min(offset + length, size)
