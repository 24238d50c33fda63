"""FUSE replies from file descriptors (mounting/replies.py): the struct layout is proven
against the libfuse loaded, a layout that does not match is refused with one log line, and
the vectors hold what the segments say."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from cache import Segment
from netmount.mounting import replies
from netmount.mounting.lifecycle import libfuse3_path


def _vector(r: replies.Replies, segments) -> list[tuple]:
    slot = ctypes.c_void_p()
    r.fill(ctypes.byref(slot), segments)
    vec = slot.value
    count = (ctypes.c_size_t * 3).from_address(vec)[0]
    bufs = (r._buf * count).from_address(vec + replies._HEAD)
    out = []
    for b in bufs:
        if b.flags & replies.FUSE_BUF_IS_FD:
            out.append(("fd", b.fd, b.pos, b.size))
        else:
            out.append(("mem", ctypes.string_at(b.mem, b.size)))
    replies._free_vector(vec, count, r._buf)
    return out


def test_the_layout_of_this_libfuse_is_proven():
    assert replies.Replies(libfuse3_path()).layout == "3.0-3.16"  # Debian 12's libfuse 3.14


def test_a_libfuse_whose_structs_do_not_match_is_refused_with_one_log_line(monkeypatch, caplog):
    wrong = {"3.17+": replies.LAYOUTS["3.17+"]}  # only the layout of another ABI
    monkeypatch.setattr(replies, "LAYOUTS", wrong)
    with caplog.at_level(logging.WARNING, logger="netmount.fs"):
        r = replies.Replies(libfuse3_path())
    assert r.layout is None
    lines = [rec for rec in caplog.records if rec.name == "netmount.fs"]
    assert len(lines) == 1 and "fd replies off" in lines[0].getMessage()


def test_a_library_without_fuse_buf_functions_is_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="netmount.fs"):
        r = replies.Replies(ctypes.util.find_library("c"))
    assert r.layout is None and "fd replies off" in caplog.text


def test_segments_become_buffers_touching_fd_pieces_joined(tmp_path):
    r = replies.Replies(libfuse3_path())
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    try:
        segs = [Segment(fd, 0, 100), Segment(fd, 100, 50), Segment(-1, 3, 4, b"0123456789"),
                Segment(fd, 500, 10), Segment(fd, 0, 0)]
        assert _vector(r, segs) == [("fd", fd, 0, 150), ("mem", b"3456"), ("fd", fd, 500, 10)]
        assert _vector(r, []) == []
    finally:
        os.close(fd)


def test_memory_segments_of_any_bytes_like_are_copied_once_from_their_own_memory():
    """A fetched piece is the bytearray its socket filled: its bytes go into the reply
    straight from it (no ``bytes()`` first), as do views of it and plain bytes."""
    r = replies.Replies(libfuse3_path())
    src = os.urandom(5000)
    piece = bytearray(src)
    segs = [Segment(-1, 10, 90, piece), Segment(-1, 0, 5, memoryview(piece)[4000:]),
            Segment(-1, 7, 3, src), Segment(-1, 1, 2, memoryview(src))]
    assert _vector(r, segs) == [("mem", src[10:100]), ("mem", src[4000:4005]), ("mem", src[7:10]),
                                ("mem", src[1:3])]
    own = ctypes.addressof(ctypes.c_char.from_buffer(piece))
    assert replies._address(piece)[0] == own  # the bytearray's own memory, not a copy's
    assert replies._address(memoryview(piece)[100:])[0] == own + 100
