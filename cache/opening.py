"""Opening the store of a cache directory: the one way the daemon and ``verify`` do it."""

from __future__ import annotations

import logging

from .disk import DiskBlockStore
from .memory import MemoryBlockStore
from .safe import SafeBlockStore
from .version import drop_old_formats, store_dir

FALLBACK_BYTES = 256 << 20


def open_disk_store(cache_dir, block_size: int, size_limit: int | None,
                    logger: logging.Logger | None = None, **options) -> DiskBlockStore:
    """The disk store in ``<cache_dir>/store-vN`` (older formats there are dropped first,
    one log line each).  Raises when it cannot be opened."""
    logger = logger or logging.getLogger("cache")
    drop_old_formats(cache_dir, logger)
    return DiskBlockStore(store_dir(cache_dir), block_size, size_limit, logger=logger, **options)


def open_store(cache_dir, block_size: int, size_limit: int | None, logger: logging.Logger, *,
               fallback_bytes: int | None = FALLBACK_BYTES, **options) -> SafeBlockStore:
    """``open_disk_store`` wrapped in a ``SafeBlockStore``; if the disk store cannot be
    opened (full, read-only, corrupt), a memory store of ``fallback_bytes`` with one
    warning, so reads go on from the network.  ``fallback_bytes=None``: no fallback, the
    failure is raised (``netmount verify``: nothing to check without the disk store)."""
    def disk() -> DiskBlockStore:
        return open_disk_store(cache_dir, block_size, size_limit, logger, **options)

    if fallback_bytes is None:
        return SafeBlockStore(disk(), logger)
    return SafeBlockStore.open(disk, logger, lambda: MemoryBlockStore(block_size, fallback_bytes))
