"""CRC32C of any bytes-like object, without copying it.

``google_crc32c.value`` takes only ``bytes`` (its C extension parses ``y#``, which refuses a
``bytearray`` or ``memoryview``), and what is put into a store is the fetcher's ``bytearray``
as it came off the socket.  So a writable buffer's address goes to the same C library's own
``crc32c_extend`` (the ``crc32c`` library the extension links, found through it); a read-only
view that is not ``bytes`` (rare: a slice of a ``bytes``), or no C library, costs a copy.
"""

from __future__ import annotations

import ctypes

import google_crc32c
from google_crc32c import value as _value


def _c_extend():
    try:
        from google_crc32c import _crc32c

        fn = ctypes.CDLL(_crc32c.__file__).crc32c_extend
    except (ImportError, OSError, AttributeError):  # the pure-Python build: copies
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    return fn


_extend = _c_extend() if google_crc32c.implementation == "c" else None


def crc32c(data) -> int:
    """The CRC32C of ``data`` (bytes, bytearray, or a flat byte memoryview)."""
    if isinstance(data, bytes):
        return _value(data)
    view = memoryview(data)
    if view.readonly or _extend is None or not view.nbytes:
        return _value(bytes(view))
    return _extend(0, ctypes.addressof(ctypes.c_char.from_buffer(view)), view.nbytes)
