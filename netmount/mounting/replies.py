"""FUSE read replies that Python never copies: libfuse's ``read_buf`` with fd buffers.

The reader answers a read with segments: (fd, offset) of stored files, or bytes in memory
(a fetched piece, a control file).  ``Replies.fill`` turns them into a malloc'ed
``struct fuse_bufvec`` that libfuse replies with and frees (``fuse_lib_read``:
``fuse_reply_data(req, buf, FUSE_BUF_SPLICE_MOVE)``, then ``fuse_free_buf``, which frees the
vector and every non-fd buffer's memory).  An fd buffer (``FUSE_BUF_IS_FD |
FUSE_BUF_FD_SEEK``) is read by libfuse in C — spliced into /dev/fuse when the mount asked for
``FUSE_CAP_SPLICE_WRITE`` and the reply is at least two pages, else copied with ``pread`` —
so a warm read's bytes never enter Python.  libfuse never closes those fds: the store keeps
them open long enough (``cache``'s fd-lifetime contract).

mfusepy declares ``fuse_bufvec`` wrongly (C holds ``struct fuse_buf buf[1]`` inline, not a
pointer; libfuse 3.17 appends ``size_t mem_size`` to ``fuse_buf``), so the structs are
declared here, one layout per libfuse ABI, and the one in use is proven at start-up against
the library loaded: ``fuse_buf_size`` must add up a two-buffer vector and ``fuse_buf_copy``
must copy an fd buffer and a memory buffer byte for byte.  If no layout passes, ``Replies``
is not usable and the FUSE face answers with plain ``read`` (one log line says so).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import tempfile

from cache.direct import owner

log = logging.getLogger("netmount.fs")

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_CAP_SPLICE_WRITE = 1 << 7
FUSE_CAP_SPLICE_MOVE = 1 << 8

# libc called with the GIL held (``PyDLL``): a call through ``CDLL`` (or ``ctypes.memset``)
# lets the GIL go and takes it back, and with other threads waiting each of those is a
# hand-off and a context switch — several per FUSE request, for calls of well under a µs.
_libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6")
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
_libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
LONG_COPY = 256 << 10  # copies this long let the GIL go (ctypes.memmove): others run meanwhile

_BASE = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
         ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


def _layout(extra: list) -> type:
    return type("fuse_buf", (ctypes.Structure,), {"_fields_": _BASE + extra})


LAYOUTS = {"3.0-3.16": _layout([]), "3.17+": _layout([("mem_size", ctypes.c_size_t)])}
_HEAD = 3 * ctypes.sizeof(ctypes.c_size_t)  # count, idx, off: then the buffers, inline


class Replies:
    """Segments -> a malloc'ed ``fuse_bufvec`` for ``read_buf``, in the layout proven for
    the libfuse loaded (``layout``: its name, or None when none fits)."""

    def __init__(self, libfuse_path: str) -> None:
        self.layout: str | None = None
        self._buf: type | None = None
        try:
            lib = ctypes.CDLL(libfuse_path)
            lib.fuse_buf_size.restype = ctypes.c_size_t
            lib.fuse_buf_size.argtypes = [ctypes.c_void_p]
            lib.fuse_buf_copy.restype = ctypes.c_ssize_t
            lib.fuse_buf_copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        except (OSError, AttributeError) as exc:
            log.warning("fd replies off: %s has no usable fuse_buf_* (%s); reads answered with copies",
                        libfuse_path, exc)
            return
        for name, buf in LAYOUTS.items():
            if _proves(lib, buf):
                self.layout, self._buf = name, buf
                return
        log.warning("fd replies off: no known struct fuse_buf layout matches %s; reads answered with copies",
                    libfuse_path)

    def fill(self, bufpp, segments) -> None:
        """Point ``*bufpp`` at a new vector of ``segments`` (touching fd segments of one file
        joined into one buffer); libfuse frees it after replying."""
        bufs = _merged(segments)
        vec = self._vector(len(bufs))
        try:
            array = (self._buf * max(1, len(bufs))).from_address(vec + _HEAD)
            for n, (fd, pos, length, data) in enumerate(bufs):
                b = array[n]
                b.size = length
                if data is None:
                    b.flags, b.fd, b.pos, b.mem = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, fd, pos, None
                else:
                    b.flags, b.fd, b.pos, b.mem = 0, -1, 0, _given(data, pos, length) or _copy(data, pos, length)
        except BaseException:
            _free_vector(vec, len(bufs), self._buf)
            raise
        ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = vec

    def _vector(self, count: int) -> int:
        size = _HEAD + max(1, count) * ctypes.sizeof(self._buf)
        vec = _libc.malloc(size)
        if not vec:
            raise MemoryError("malloc failed for a FUSE reply")
        _libc.memset(vec, 0, size)
        head = (ctypes.c_size_t * 3).from_address(vec)
        head[0], head[1], head[2] = count, 0, 0
        return vec


def _merged(segments) -> list[tuple[int, int, int, bytes | None]]:
    """(fd, pos, length, data) per buffer: touching fd segments of one fd joined."""
    out: list[list] = []
    for s in segments:
        if s.length <= 0:
            continue
        if s.data is None and out and out[-1][3] is None and out[-1][0] == s.fd and out[-1][1] + out[-1][2] == s.pos:
            out[-1][2] += s.length
            continue
        out.append([s.fd, s.pos, s.length, s.data])
    return [tuple(b) for b in out]


def _given(data, pos: int, length: int) -> int | None:
    """The memory of ``data``, whole, if its owner gives it to this reply (libfuse frees it):
    an object read past the page cache that no other reply uses (``cache.direct``)."""
    held = owner(data)
    if held is None or pos != 0 or length != memoryview(data).nbytes:
        return None
    return held.give()


def _copy(data, pos: int, length: int) -> int:
    """``data[pos:pos+length]`` in a malloc'ed buffer (libfuse frees it): one copy, straight
    from ``data``'s own memory (``_address``)."""
    mem = _libc.malloc(max(1, length))
    if not mem:
        raise MemoryError("malloc failed for a FUSE reply")
    src, _keep = _address(data)
    (ctypes.memmove if length >= LONG_COPY else _libc.memcpy)(mem, src + pos, length)
    return mem


def _address(data) -> tuple[int, object]:
    """Where ``data``'s bytes are, and what keeps them there.  Any bytes-like object: ``bytes``
    and writable buffers (a fetched piece is the ``bytearray`` its socket filled) as they are;
    a read-only view that is not ``bytes`` (none on the read path) is copied first."""
    if not isinstance(data, bytes):
        view = memoryview(data)
        if not view.readonly and view.nbytes:
            keep = ctypes.c_char.from_buffer(view)
            return ctypes.addressof(keep), keep
        data = bytes(view)
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value, data


def _free_vector(vec: int, count: int, buf: type) -> None:
    array = (buf * max(1, count)).from_address(vec + _HEAD)
    for n in range(count):
        if not array[n].flags & FUSE_BUF_IS_FD and array[n].mem:
            _libc.free(array[n].mem)
    _libc.free(vec)


def _proves(lib, buf: type) -> bool:
    """Does libfuse read vectors of ``buf`` as we write them?  Two buffers (an fd one, a
    memory one) must add up (``fuse_buf_size``) and copy byte for byte (``fuse_buf_copy``)."""
    stored, extra = os.urandom(5000), os.urandom(3000)
    with tempfile.TemporaryFile() as fh:
        fh.write(b"\0" * 100 + stored)
        fh.flush()
        src, dst = _vector_of(buf, 2), _vector_of(buf, 1)
        out = ctypes.create_string_buffer(len(stored) + len(extra))
        keep = ctypes.create_string_buffer(extra, len(extra))
        s = (buf * 2).from_address(src + _HEAD)
        s[0].size, s[0].flags, s[0].fd, s[0].pos = len(stored), FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, fh.fileno(), 100
        s[1].size, s[1].flags, s[1].mem = len(extra), 0, ctypes.addressof(keep)
        d = (buf * 1).from_address(dst + _HEAD)
        d[0].size, d[0].flags, d[0].mem = len(out), 0, ctypes.addressof(out)
        try:
            if lib.fuse_buf_size(src) != len(stored) + len(extra):
                return False
            copied = lib.fuse_buf_copy(dst, src, 0)
            return copied == len(out) and out.raw == stored + extra
        finally:
            _libc.free(src)
            _libc.free(dst)


def _vector_of(buf: type, count: int) -> int:
    size = _HEAD + count * ctypes.sizeof(buf)
    vec = _libc.malloc(size)
    _libc.memset(vec, 0, size)
    head = (ctypes.c_size_t * 3).from_address(vec)
    head[0] = count
    return vec
