"""Checking stored objects past the page cache (``cache.direct``): what a read is answered
with, that a bad or vanished object is still a miss, the fallback where ``O_DIRECT`` is
refused, and who frees the memory a reply is given."""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile

import pytest

from cache import DiskBlockStore, Segment
from cache.direct import DirectReads, Owned, owner
from cache.ready import Ready
from cache.store import join_segments
from netmount.mounting import replies
from netmount.mounting.lifecycle import libfuse3_path
from tests.test_cache_disk import BS, SIZE, key, rows, src, value_path


@pytest.fixture
def where(tmp_path):
    """A directory whose file system takes ``O_DIRECT`` (tmpfs does not): tmp_path or /var/tmp."""
    for base in (tmp_path, "/var/tmp"):
        with tempfile.TemporaryDirectory(dir=base) as d:
            probe = os.path.join(d, "probe")
            with open(probe, "wb") as fh:
                fh.write(b"x" * 10)
            if isinstance(DirectReads().read(probe, 10), memoryview):
                yield os.path.join(d, "store")
                return
    pytest.skip("no file system here takes O_DIRECT")


def stored(directory, seed=3) -> bytes:
    data = src(seed)
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        store.put_range("k", 0, data, SIZE)
    return data


def test_a_read_of_a_whole_object_is_checked_past_the_page_cache_and_answered_from_memory(where):
    data = stored(where)
    with DiskBlockStore(where, BS, 1 << 30) as store:
        (seg,) = store.segments("k", BS, BS, SIZE)
        assert seg.data is not None and isinstance(owner(seg.data), Owned)
        assert join_segments([seg]) == data[BS : 2 * BS]
        assert store.counts["checked"] == 1
        (again,) = store.segments("k", BS, BS, SIZE)  # checked: its file from now on
        assert again.data is None and join_segments([again]) == data[BS : 2 * BS]


def test_a_read_of_part_of_an_object_is_checked_through_the_page_cache(where):
    data = stored(where)
    with DiskBlockStore(where, BS, 1 << 30) as store:
        (seg,) = store.segments("k", 2 * BS + 10, 100, SIZE)
        assert seg.data is None and join_segments([seg]) == data[2 * BS + 10 : 2 * BS + 110]
        assert store.counts["checked"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "longer", "gone"])
def test_a_bad_or_vanished_object_read_whole_is_a_miss(where, damage):
    data = stored(where)
    path = value_path(where, key("k", 1))
    good = open(path, "rb").read()
    if damage == "gone":
        os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write({"flip": b"A" + good[1:], "truncate": good[:100], "longer": good + b"!"}[damage])
    with DiskBlockStore(where, BS, 1 << 30) as store:
        assert store.segments("k", BS, BS, SIZE) is None
        assert store.counts["gone" if damage == "gone" else "bad"] == 1
        assert key("k", 1) not in rows(where) and not os.path.exists(path)
        assert join_segments(store.segments("k", 0, BS, SIZE)) == data[:BS]


def test_objects_checked_ahead_are_kept_in_memory_for_the_reads_they_were_checked_for(where):
    data = stored(where)
    with DiskBlockStore(where, BS, 1 << 30) as store:
        store.prepare("k", [(0, SIZE)], SIZE)
        assert store.drain(30) and store.counts["checked"] == 9
        segs = store.segments("k", 0, SIZE, SIZE)
        assert all(s.data is not None for s in segs) and join_segments(segs) == data
        assert store._ready.taken == 9 and store._ready.unused == 0
        assert all(s.data is None for s in store.segments("k", 0, SIZE, SIZE))  # taken out: the files now


def test_where_o_direct_is_refused_objects_are_checked_through_the_page_cache(where, monkeypatch):
    data = stored(where)
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    with DiskBlockStore(where, BS, 1 << 30) as store:
        store.prepare("k", [(0, 4 * BS)], SIZE)
        assert store.drain(30)
        segs = store.segments("k", 0, SIZE, SIZE)
        assert all(s.data is None for s in segs) and join_segments(segs) == data
        assert store._direct.usable is False and store.counts["checked"] == 9


def test_the_window_queues_what_finds_no_room_and_lets_it_go_as_reads_take_objects_out():
    released, now = [], [0.0]
    ready = Ready(2 * BS, on_room=released.append, age=5.0, clock=lambda: now[0])
    views = [Owned(BS).view() for _ in range(4)]
    for n in range(2):
        assert ready.reserve(BS, ("hint", n))
        ready.put(str(n), views[n])
        ready.settle(BS)
    assert not ready.reserve(BS, ("hint", 2)) and not ready.reserve(BS, ("hint", 3)) and released == []
    assert ready.get("0", 10) is views[0] and owner(views[0]).shared and released == []  # a part: kept
    assert ready.get("0", BS) is views[0] and released == [("hint", 2)]  # all of it: out, room for one
    assert ready.get("0", BS) is None
    assert not ready.reserve(BS, ("hint", 4))  # room, but hint 3 waits first: in turn
    assert released == [("hint", 2), ("hint", 3)]
    assert ready.reserve(BS, ("hint", 3), released=True)
    assert not ready.reserve(BS, ("hint", 2), released=True)  # no room now: queued again
    now[0] = 6.0  # "1" waited past its age unread: dropped, which lets the next hint go
    assert not ready.reserve(BS, ("hint", 5)) and released[2:] == [("hint", 4)]
    assert ready.get("1", BS) is None and ready.unused == 1 and ready.taken == 1


def test_a_prepare_larger_than_the_window_checks_ahead_as_the_reader_goes(where, monkeypatch):
    monkeypatch.setattr("cache.disk.READY_BYTES", 3 * BS)
    data = stored(where)
    with DiskBlockStore(where, BS, 1 << 30) as store:
        store.prepare("k", [(0, SIZE)], SIZE)
        assert store.drain(30) and store.counts["checked"] == 3  # the window's worth, the rest queued
        for i in range(9):
            (seg,) = store.segments("k", i * BS, min(BS, SIZE - i * BS), SIZE)
            assert seg.data is not None, i  # checked ahead, into memory
            assert join_segments([seg]) == data[i * BS : (i + 1) * BS]
            assert store.drain(30)
        assert store.counts["checked"] == 9 and store._ready.taken == 9 and store._ready.unused == 0


def _reply_of(r: replies.Replies, seg: Segment) -> tuple[int, bytes]:
    slot = ctypes.c_void_p()
    r.fill(ctypes.byref(slot), [seg])
    bufs = (r._buf * 1).from_address(slot.value + replies._HEAD)
    out = bufs[0].mem, ctypes.string_at(bufs[0].mem, bufs[0].size)
    replies._free_vector(slot.value, 1, r._buf)  # as libfuse does after replying
    return out


def test_a_reply_that_alone_uses_an_object_is_given_its_memory_else_a_copy():
    r = replies.Replies(libfuse3_path())
    held = Owned(BS)
    view = held.view()
    view[:] = os.urandom(BS)
    want, address = bytes(view), held.ptr
    shared = Owned(BS)
    shared.view()[:] = want
    shared.shared = True
    assert _reply_of(r, Segment(-1, 0, BS, shared.view())) != (shared.ptr, want)  # copied
    assert _reply_of(r, Segment(-1, 0, BS, shared.view()))[1] == want and shared.ptr is not None
    assert _reply_of(r, Segment(-1, 1, BS - 1, view))[1] == want[1:] and held.ptr == address  # a part: copied
    assert _reply_of(r, Segment(-1, 0, BS, view)) == (address, want) and held.ptr is None  # given
