"""The block store interface: blocks in, blocks out, nothing about HTTP or FUSE.

A block is the bytes ``[index * block_size, ...)`` of the content named by
``content_id`` (the caller's content hash); only the last block of a content may be
shorter than ``block_size``. Three calls carry the read path (``get``, ``put``,
``block_size``, as in mountpoint-s3's data cache); the ``cached_*`` calls back
``st_blocks`` and coverage maps and must stay cheap enough to run on every ``stat``.
"""

from __future__ import annotations

import abc


class BlockStore(abc.ABC):
    """Fixed-size blocks keyed by ``(content_id, index)``; implementations are thread-safe."""

    block_size: int

    @abc.abstractmethod
    def get(self, content_id: str, index: int) -> bytes | None:
        """The stored block, or ``None`` if it is not (or no longer) cached."""

    @abc.abstractmethod
    def put(self, content_id: str, index: int, data: bytes) -> None:
        """Store one complete block (1..``block_size`` bytes), replacing any previous one."""

    @abc.abstractmethod
    def cached_indices(self, content_id: str) -> list[int]:
        """Sorted indices of the blocks of ``content_id`` currently stored."""

    @abc.abstractmethod
    def cached_bytes(self, content_id: str) -> int:
        """Sum of the lengths of the stored blocks of ``content_id``."""

    @abc.abstractmethod
    def volume(self) -> int:
        """Total bytes of all stored blocks."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and connections; the store must not be used afterwards."""

    def will_need(self, content_id: str, indices) -> None:
        """A hint: these blocks will be read soon.  A store on disk starts reading them
        into the kernel's page cache, so the ``get`` that follows does not wait on the
        disk; the default does nothing."""

    def drop(self, content_id: str) -> int:
        """Delete every stored block of ``content_id`` (any block size) and its verified
        mark; returns the bytes deleted.  For a content found to be wrong (``netmount
        verify``): the next read fetches it again."""
        raise NotImplementedError

    def fingerprint(self, content_id: str):
        """An opaque value that changes whenever a block of ``content_id`` is stored,
        replaced, evicted or dropped (None: this store cannot tell)."""
        return None

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        """Record that the blocks of ``content_id`` were hashed and found right, *if*
        they are still those ``fingerprint`` describes (taken before hashing); returns
        whether the mark was stored."""
        return False

    def is_verified(self, content_id: str) -> bool:
        """A mark is there and no block of the content changed since (an eviction or a
        refetch of any block voids it: checked here, as eviction cannot tell us)."""
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_block(block_size: int, content_id: str, index: int, data) -> bytes:
    """Validate a ``put`` and return ``data`` as ``bytes``: an oversized or empty block is a bug.

    ``bytes`` exactly, because a ``bytearray``/``memoryview`` would be pickled by diskcache
    and could change under us in memory.
    """
    if not isinstance(content_id, str) or not content_id or ":" in content_id:
        raise ValueError(f"content id must be a non-empty string without ':', got {content_id!r}")
    check_index(index)
    data = bytes(data)
    if not 0 < len(data) <= block_size:
        raise ValueError(f"block {content_id}:{index} has {len(data)} bytes; expected 1..{block_size}")
    return data


def check_index(index: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 10**12:
        raise ValueError(f"block index must be an int in [0, 10**12), got {index!r}")


def check_block_size(block_size: int) -> int:
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block size must be a positive int, got {block_size!r}")
    return block_size
