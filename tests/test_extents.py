"""Extents (exact byte ranges in memory) and the reader's use of them, over the in-memory fetcher."""

from __future__ import annotations

import random
import threading

import pytest

from cache import MemoryBlockStore
from netmount.core.blocks import PAGE
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.read.extents import Extents
from netmount.read.reader import BlockReader, ExactRead

from fakes import MemoryFetcher, make_bytes, remote, spans

BS = 64 * 1024


def extents(fetch, max_bytes=32 << 20):
    return Extents(fetch, max_bytes, Counters())


def test_ranges_come_back_exact_and_widened_to_pages():
    data = make_bytes(40 * PAGE + 123, 1)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    ext = extents(fetch, max_bytes=1 << 30)
    rnd = random.Random(2)
    for _ in range(200):
        lo = rnd.randrange(0, len(data))
        hi = rnd.randrange(lo + 1, len(data) + 1)
        got = ext.get(f, lo, hi)
        if got is None:
            ext.fetch(f, lo, hi)
            got = ext.get(f, lo, hi)
        assert got == data[lo:hi]
    assert all(s % PAGE == 0 and (e % PAGE == 0 or e == len(data)) for _, s, e in spans(fetch))


def test_readers_of_a_range_in_flight_wait_for_it_and_it_is_fetched_once():
    data = make_bytes(64 * PAGE, 3)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    fetch.hold()
    ext = extents(fetch)
    ext.fetch(f, 0, 64 * PAGE)
    ext.fetch(f, 5 * PAGE, 9 * PAGE)  # inside the one in flight: nothing new
    out = []
    def get(i):
        out.append(ext.get(f, i * PAGE, (i + 3) * PAGE) == data[i * PAGE:(i + 3) * PAGE])

    threads = [threading.Thread(target=get, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    fetch.release()
    for t in threads:
        t.join()
    assert out == [True] * 8 and len(fetch.calls) == 1


def test_a_failed_extent_raises_to_its_readers_and_is_not_kept():
    data = make_bytes(8 * PAGE, 4)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    fetch.hold()
    fetch.fail()
    ext = extents(fetch)
    ext.fetch(f, 0, 8 * PAGE)
    fetch.release()
    with pytest.raises(FetchError):
        ext.get(f, 0, PAGE)
    assert ext.get(f, 0, PAGE) is None and not ext._pending  # gone once failed
    ext.fetch(f, 0, 8 * PAGE)
    assert ext.get(f, 0, PAGE) == data[:PAGE]


def test_memory_stays_under_its_cap_oldest_file_first():
    files = {f"f{i}": make_bytes(16 * PAGE, i) for i in range(4)}
    ext = extents(MemoryFetcher(files), max_bytes=40 * PAGE)
    for name, data in files.items():
        f = remote(name, data)
        ext.fetch(f, 0, len(data))
        assert ext.get(f, 0, PAGE) == data[:PAGE]
    assert ext._bytes <= 40 * PAGE
    assert ext.get(remote("f0", files["f0"]), 0, PAGE) is None  # the oldest went
    assert ext.get(remote("f3", files["f3"]), 0, PAGE) == files["f3"][:PAGE]


def test_only_anchors_count_as_near():
    data = make_bytes(100 * PAGE, 5)
    f = remote("a.bin", data)
    ext = extents(MemoryFetcher({"a.bin": data}))
    ext.fetch(f, 10 * PAGE, 11 * PAGE)  # a small extent: pulls nothing after it
    assert not ext.near(f, 11 * PAGE, 12 * PAGE, 4 * PAGE)
    ext.fetch(f, 50 * PAGE, 60 * PAGE, anchor=True)
    assert ext.near(f, 62 * PAGE, 63 * PAGE, 4 * PAGE)
    assert ext.near(f, 47 * PAGE, 48 * PAGE, 4 * PAGE)
    assert not ext.near(f, 70 * PAGE, 71 * PAGE, 4 * PAGE)


def test_reader_serves_exact_reads_and_stores_the_whole_blocks_inside_them():
    data = make_bytes(20 * BS, 6)
    f = remote("a.bin", data)
    store = MemoryBlockStore(BS)
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(store, fetch)
    lo, hi = 3 * BS + 5000, 7 * BS + 5  # pages from 3 * BS + 4096: block 3 is not whole
    assert reader.read(f, lo, hi - lo, exact=ExactRead()) == data[lo:hi]
    assert spans(fetch) == [("a.bin", lo // PAGE * PAGE, -(-hi // PAGE) * PAGE)]  # its pages only
    assert reader.drain(10)
    assert store.cached_indices(f.content_id) == [4, 5, 6]  # the blocks wholly inside
    assert reader.read(f, 0, 20 * BS) == data  # blocks for the rest
    reader.close()


def test_a_lone_tensor_extent_leaves_out_blocks_already_there():
    data = make_bytes(20 * BS, 7)
    f = remote("a.bin", data)
    store = MemoryBlockStore(BS)
    for i in (2, 3):
        store.put(f.content_id, i, data[i * BS:(i + 1) * BS])
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(store, fetch)
    reader.prefetch_extent(f, 2 * BS + 10, 9 * BS + 10)
    assert reader.extents.get(f, 4 * BS, 9 * BS + 10) == data[4 * BS:9 * BS + 10]
    assert spans(fetch) == [("a.bin", 4 * BS, 9 * BS + PAGE)]
    reader.close()


def test_an_exact_read_with_a_tensor_extent_fetches_the_tensor_once():
    data = make_bytes(40 * BS, 8)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(MemoryBlockStore(BS), fetch)
    start, end = 5 * BS + 300, 12 * BS + 7
    plan = ExactRead(extent=(start, end))
    assert reader.read(f, start, 4096, exact=plan) == data[start:start + 4096]
    for pos in range(start, end, 4096):  # the rest of the tensor, page by page: no new fetch
        assert reader.read(f, pos, 4096, exact=ExactRead()) == data[pos:min(end, pos + 4096)] + (
            data[end:pos + 4096] if pos + 4096 > end else b"")
    assert len(fetch.calls) <= 2  # the tensor; and the last page's spill past its end
    reader.close()
