"""Checking a stored object without the page cache: ``O_DIRECT`` reads into aligned memory.

A warm read of an object this process has not checked yet reads the object whole for its
CRC32C.  Read through the page cache, that costs a page-cache population (allocation, LRU)
and a copy out of it, and then the reply copies the same pages once more into FUSE's page
cache.  Read with ``O_DIRECT``, the disk writes straight into our buffer: the check runs on
it, and the reply is answered from it (one copy, into FUSE).  The page cache of the object
file stays empty, so a file read once costs one page-cache population, FUSE's, as it would
for a local file.

``ready.Ready`` keeps the buffers that ``prepare`` threads checked ahead of a reader, a few
MiB, until the reads they were checked for take them.  Where ``O_DIRECT`` is refused (tmpfs, some
overlays: ``EINVAL`` at open), ``read`` returns None once and for all and the store reads
through the page cache as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

ALIGN = 4096

_libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6")  # GIL kept: short calls
_libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_FROM = 2 << 20  # allocations this large still get an mmap of their own
HEAP_KEPT = 2 << 20  # freed memory at the top of a malloc heap kept for the next buffers


def reuse_freed_memory(block_size: int) -> None:
    """Let an object's buffer (a block: 1 MiB and a page) come from, and go back to, malloc's
    heaps instead of a fresh ``mmap`` each (whose pages the kernel faults in and zeroes, and
    unmaps at ``free``): glibc's own threshold adapts only to the frees it sees, and libfuse
    frees our buffers.  Both bounds are small: each thread's heap keeps at most ``HEAP_KEPT``."""
    _libc.mallopt(M_MMAP_THRESHOLD, max(MMAP_FROM, block_size + 2 * ALIGN))
    _libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEPT)


class DirectReads:
    """``read(path, length)``: the file's first ``length`` bytes (and proof it holds no more),
    read with ``O_DIRECT`` into page-aligned memory; None if it cannot be read that way."""

    def __init__(self, block_size: int = 1 << 20) -> None:
        self.usable = hasattr(os, "O_DIRECT")
        if self.usable:
            reuse_freed_memory(block_size)

    def read(self, path: str, length: int) -> memoryview | bool | None:
        """A view of the file's bytes (``length`` of them, or what a longer or shorter file
        holds up to ``length + 1``); False if the file is gone; None if ``O_DIRECT`` is not
        usable here (read it the usual way)."""
        if not self.usable:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self.usable = False
            return None
        try:
            want = -(-(length + 1) // ALIGN) * ALIGN  # one more byte: a longer file is wrong too
            view = Owned(want).view()
            got = os.preadv(fd, [view], 0)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self.usable = False
            return None
        finally:
            os.close(fd)
        return view[:got]


class Owned:
    """``size`` bytes of page-aligned ``malloc``'ed memory, not zeroed: freed when the last
    view of it goes, unless given away first.  A reply that alone uses an object's bytes
    gives them to libfuse, which frees them once it has replied (no copy); ``shared`` (set
    when a second user may see them) forbids that."""

    __slots__ = ("ptr", "size", "shared")

    def __init__(self, size: int) -> None:
        ptr = ctypes.c_void_p()
        if _libc.posix_memalign(ctypes.byref(ptr), ALIGN, size) != 0 or not ptr.value:
            raise MemoryError("posix_memalign failed")
        self.ptr: int | None = ptr.value
        self.size = size
        self.shared = False

    def view(self) -> memoryview:
        """All of it, writable; the view keeps this object (and so the memory) alive."""
        array = (ctypes.c_char * self.size).from_address(self.ptr)
        array.owner = self
        return memoryview(array).cast("B")

    def give(self) -> int | None:
        """The memory's address, now the caller's to free; None if others may use it."""
        if self.shared or self.ptr is None:
            return None
        ptr, self.ptr = self.ptr, None
        return ptr

    def __del__(self, free=_libc.free) -> None:
        if self.ptr is not None:
            free(self.ptr)
            self.ptr = None


def owner(data) -> Owned | None:
    """The ``Owned`` behind a view of one (None for any other bytes-like object)."""
    return getattr(getattr(data, "obj", None), "owner", None)


def share(view) -> None:
    """A second user may see ``view``'s bytes: its memory is never given away."""
    held = owner(view)
    if held is not None:
        held.shared = True
