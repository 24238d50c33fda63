"""A block cache: fixed-size blocks keyed by (content id, block index), on disk or in memory.

A library of its own: it imports nothing from ``netmount`` and knows nothing of HTTP or
FUSE.
"""

from .disk import DiskBlockStore
from .memory import MemoryBlockStore
from .safe import SafeBlockStore
from .store import BlockStore

__all__ = ["BlockStore", "DiskBlockStore", "MemoryBlockStore", "SafeBlockStore"]
