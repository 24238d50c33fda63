"""Where libfuse3 is: one lookup for the client that checks FUSE before it mounts
(``lifecycle.check_fuse``) and the daemon that binds it (``fs.py``).

A module of its own so that neither program imports the other for it (``fs → lifecycle →
daemon → fs`` was a cycle).  The FUSE face binds libfuse3, not libfuse2: only libfuse3
negotiates read requests over 128 KiB.
"""

from __future__ import annotations

import os

from netmount.core import errors

APT_FUSE = "apt-get install fuse3 libfuse3-3"
LIBFUSE = "fuse3"  # the library name ctypes looks up: libfuse3.so.3


def libfuse3_path() -> str:
    """Where libfuse3 is (``$FUSE_LIBRARY_PATH`` if set); ``FuseUnavailable`` if it is not installed."""
    import ctypes.util

    path = os.environ.get("FUSE_LIBRARY_PATH") or ctypes.util.find_library(LIBFUSE)
    if not path:
        raise errors.FuseUnavailable(f"libfuse3 not found: {APT_FUSE}")
    return path
