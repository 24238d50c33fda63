"""The on-disk format's version: a directory name with the version in it, and a marker file.

``<cache_dir>/store-v2`` holds format 2 (CRC32C tags, whole blocks and pieces); its
``FORMAT`` file says so.  Format 1 lived in ``<cache_dir>/blocks`` (zlib CRC-32, whole
blocks only).  A store directory is created whole (marker written in a temporary
directory, then renamed into place), so a directory without its marker was not made by
this code.  An old or mismatched store is *dropped* (renamed aside at once, deleted on a
background thread), never read: its blocks are fetched again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading

FORMAT = 2
STORE_DIR = f"store-v{FORMAT}"
MARKER = "FORMAT"
MARKER_TEXT = f"netmount block store, format {FORMAT}: diskcache 5 index, CRC32C tags, whole blocks and pieces\n"
OLD_DIRS = ("blocks",)  # format 1
_DROPPED = ".dropped-"

log = logging.getLogger("cache")


def store_dir(cache_dir) -> str:
    """Where the block store of ``cache_dir`` lives."""
    return os.path.join(os.fspath(cache_dir), STORE_DIR)


def ensure_format(directory: str, logger: logging.Logger = log) -> None:
    """Make ``directory`` a store of this format: create it (mode 0700, marker inside), or
    drop a store of another format (or without its marker) and create it anew.  Raises
    ``OSError`` for a directory holding anything else: not ours to delete."""
    for _ in range(5):
        try:
            with open(os.path.join(directory, MARKER)) as fh:
                found = fh.read(200)
        except FileNotFoundError:
            if not os.path.isdir(directory) or not os.listdir(directory):
                _create(directory)
                continue
            if not os.path.exists(os.path.join(directory, "cache.db")):
                raise OSError(f"{directory} is not a netmount block store (no {MARKER} file); not using it") from None
            found = "(no marker)"
        if found == MARKER_TEXT:
            return
        logger.warning("%s: a block store of another format %r; dropping it (its blocks will be fetched again)",
                       directory, found.strip()[:80])
        discard(directory)
    raise OSError(f"{directory}: could not set up the block store (changing under us)")


def _create(directory: str) -> None:
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".new-", dir=parent)  # mode 0700: blocks of gated repos
    try:
        with open(os.path.join(tmp, MARKER), "w") as fh:
            fh.write(MARKER_TEXT)
        os.rename(tmp, directory)  # replaces an empty directory; fails on a non-empty one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(directory):
            raise


def discard(path: str) -> threading.Thread | None:
    """Rename ``path`` aside at once and delete it on a background thread (a big old cache
    takes seconds to delete; a start-up must not wait on it).  A leftover from a process
    that exited first is deleted by the next ``drop_old_formats``."""
    parent, name = os.path.split(os.path.abspath(path))
    aside = os.path.join(parent, f"{_DROPPED}{name}-{os.urandom(4).hex()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process dropped it first
        return None
    return _remove_later([aside])


def drop_old_formats(cache_dir, logger: logging.Logger = log) -> threading.Thread | None:
    """Drop the stores of older formats under ``cache_dir`` (one log line each), and the
    leftovers of earlier drops."""
    cache_dir = os.fspath(cache_dir)
    for name in OLD_DIRS:
        path = os.path.join(cache_dir, name)
        if os.path.isdir(path):
            logger.warning("%s: a block cache of an older format; removing it (its blocks will be"
                           " fetched again)", path)
            discard(path)
    try:
        leftovers = [os.path.join(cache_dir, n) for n in os.listdir(cache_dir) if n.startswith(_DROPPED)]
    except OSError:
        return None
    return _remove_later(leftovers) if leftovers else None


def _remove_later(paths: list[str]) -> threading.Thread:
    def remove() -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    t = threading.Thread(target=remove, name="cache-remove-old", daemon=True)
    t.start()
    return t
