"""``/.netmount/drop/<path>``: forget every cached byte of one file, in this daemon.

``netmount verify`` opens it when a file's cached blocks do not hash to the listing's
digest.  The mount is read-only, so opening a hidden control path is the way in.  The
open waits for downloads under way to land (so none stores stale bytes after the drop),
deletes the file's blocks from the block store (every block size, and its verified mark)
and forgets it in every in-memory tier (blocks, head, extents, which blocks are stored)
and in the stats' header cache.  The kernel's page cache is the caller's part: it is
dropped with ``POSIX_FADV_DONTNEED`` on the mounted file (this daemon opening its own
mount from a FUSE thread could deadlock).  What the open reads is one JSON line.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.drop")


def make_drop(store, reader, drain: Callable[[], bool], forget_stats: Callable[[RemoteFile], None]):
    """The callable behind ``/.netmount/drop/<path>``: ``RemoteFile -> bytes``."""

    def drop(f: RemoteFile) -> bytes:
        settled = drain()
        dropped = store.drop(f.content_id)
        reader.forget(f)
        forget_stats(f)
        log.warning("%s: dropped %d cached bytes (netmount verify found them wrong)", f.path, dropped)
        return (json.dumps({"path": f.path, "dropped_bytes": dropped, "settled": settled}) + "\n").encode()

    return drop
