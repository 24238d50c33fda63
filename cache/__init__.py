"""The block store: every byte fetched, kept by content id, served as file descriptors.

A library of its own: it imports nothing from ``netmount`` and knows nothing of HTTP or
FUSE.  A content (the caller's content hash) is cut into fixed-size blocks; the store
holds whole blocks and *pieces* (any byte range inside a block: an exact tensor's ends, a
header, a footer), merged into the whole block once they cover it.  Reads answer with
(fd, offset) ``Segment``s that libfuse can copy or splice in C; each stored object is
CRC32C-checked once per process, on first use.

- ``store.py``: the interface (``BlockStore``, ``Segment``, the fd lifetime contract).
- ``disk.py``: ``DiskBlockStore`` (``index.py``: the SQLite index on diskcache and
  eviction; ``fds.py``: the fd LRU and its graveyard; ``known.py`` and ``held.py``: the
  in-memory map of what is held; ``pieces.py``: cutting and merging; ``spans.py``: range
  arithmetic; ``prepare.py``: read-ahead hints; ``version.py``: the versioned directory).
- ``memory.py``: ``MemoryBlockStore``, its in-memory twin (tests, and the fallback).
- ``safe.py``: ``SafeBlockStore``, which turns every failure into a miss or a no-op.
- ``opening.py``: ``open_store(cache_dir, ...)``, how the daemon and ``verify`` open it.
"""

from .disk import DiskBlockStore
from .memory import MemoryBlockStore
from .opening import open_disk_store, open_store
from .safe import SafeBlockStore
from .store import FD_GRACE, BlockStore, Segment
from .version import FORMAT, STORE_DIR, store_dir

__all__ = ["FD_GRACE", "FORMAT", "STORE_DIR", "BlockStore", "DiskBlockStore", "MemoryBlockStore",
           "SafeBlockStore", "Segment", "open_disk_store", "open_store", "store_dir"]
