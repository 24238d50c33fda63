"""BlockReader over an in-memory store and the in-memory fetcher: exact bytes,
single-flight, coalescing, write-behind, streaming, lifting.  No timing: stalls are made
with ``MemoryFetcher.hold`` and completion is awaited with ``reader.drain``."""

import random
import threading

import pytest

from cache import MemoryBlockStore
from netmount.core.errors import FetchError
from netmount.read.reader import BlockReader

from fakes import MemoryFetcher, make_bytes, remote, spans

BS = 64 * 1024


def setup(size=10 * BS + 123, **kw):
    data = make_bytes(size, seed=size)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(MemoryBlockStore(BS), fetch, **kw)
    return data, f, fetch, reader


def test_random_ranges_are_exact():
    data, f, fetch, reader = setup()
    rnd = random.Random(1)
    for _ in range(300):
        off = rnd.randrange(0, len(data) + 10)
        size = rnd.choice([0, 1, 4096, BS, 3 * BS + 7, rnd.randrange(1, len(data))])
        assert reader.read(f, off, size) == data[off : off + size]
    reader.close()


@pytest.mark.parametrize("bs", [4096, 64 << 10, 1 << 20])
def test_every_block_edge_and_the_end_of_file_at_any_block_size(bs):
    """The EIO of issue 10: a run of a full block and the short last block must deliver both."""
    size = 3 * bs + bs // 3 + 5
    data = make_bytes(size, seed=bs)
    f = remote("a.bin", data)
    for edge in [*range(bs, size, bs), size]:
        for lo, n in [(edge - 100, 200), (edge - bs // 2, bs), (edge - 1, 1), (max(0, edge - 2 * bs), 2 * bs + 9)]:
            reader = BlockReader(MemoryBlockStore(bs), MemoryFetcher({"a.bin": data}), max_request_bytes=4 * bs)
            assert reader.read(f, lo, n) == data[lo : lo + n], (edge, lo, n)
            reader.close()


def test_second_read_hits_cache_without_fetching():
    data, f, fetch, reader = setup()
    assert reader.read(f, 0, len(data)) == data
    n = len(fetch.calls)
    assert reader.read(f, 5, len(data)) == data[5:]
    assert len(fetch.calls) == n
    reader.close()


def test_adjacent_missing_blocks_are_one_request_capped_by_max_request_bytes():
    data, f, fetch, reader = setup(size=40 * BS, max_request_bytes=16 * BS)
    reader.read(f, 0, len(data))
    assert [(s, e) for _, s, e in spans(fetch)] == [(0, 16 * BS), (16 * BS, 32 * BS), (32 * BS, 40 * BS)]
    reader.close()


def test_holes_are_fetched_as_separate_runs_only():
    data, f, fetch, reader = setup(size=10 * BS)
    reader.read(f, 2 * BS, BS)
    reader.read(f, 5 * BS, BS)
    fetch.calls.clear()
    assert reader.read(f, 0, len(data)) == data
    assert sorted((s, e) for _, s, e in spans(fetch)) == [(0, 2 * BS), (3 * BS, 5 * BS), (6 * BS, 10 * BS)]
    reader.close()


def test_concurrent_readers_of_one_block_cause_one_fetch():
    data, f, fetch, reader = setup()
    fetch.hold()  # the first reader's fetch stalls: the others join it (or find the block later)
    results = []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        results.append(reader.read(f, BS + 10, 100))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    fetch.release()
    for t in threads:
        t.join()
    assert results == [data[BS + 10 : BS + 110]] * 8
    assert spans(fetch) == [("a.bin", BS, 2 * BS)]
    reader.close()


def test_failed_fetch_raises_and_caches_nothing_then_recovers():
    data, f, fetch, reader = setup()
    fetch.fail()
    with pytest.raises(FetchError):
        reader.read(f, 0, 10)
    assert reader.drain(10)
    assert reader.store.get(f.content_id, 0) is None
    assert reader.read(f, 0, 10) == data[:10]
    reader.close()


def test_a_run_failing_midway_keeps_the_blocks_that_came_and_fails_the_rest():
    data, f, fetch, reader = setup(size=8 * BS, max_request_bytes=8 * BS)
    fetch.fail(after_pieces=3)
    with pytest.raises(FetchError):
        reader.read(f, 0, 8 * BS)
    assert reader.drain(10)
    assert reader.store.cached_indices(f.content_id) == [0, 1, 2]  # their bytes were right
    assert reader.runs.inflight.bytes() == 0
    assert reader.read(f, 0, 8 * BS) == data
    reader.close()


def test_a_retry_midway_delivers_pieces_twice_and_the_reader_takes_them_once():
    data, f, fetch, reader = setup(size=6 * BS, max_request_bytes=6 * BS)
    fetch.retry_midway()
    assert reader.read(f, 0, 6 * BS) == data
    reader.close()
    assert reader.store.cached_indices(f.content_id) == list(range(6))


def test_wrong_length_block_in_store_is_refetched_not_served():
    data, f, fetch, reader = setup()
    reader.store.put(f.content_id, 3, b"short")
    assert reader.read(f, 3 * BS, BS) == data[3 * BS : 4 * BS]
    assert spans(fetch) == [("a.bin", 3 * BS, 4 * BS)]
    reader.close()


def test_last_short_block_and_eof():
    data, f, fetch, reader = setup(size=3 * BS + 5)
    assert reader.read(f, 3 * BS, BS) == data[3 * BS :]
    assert reader.read(f, len(data), 10) == b""
    assert spans(fetch) == [("a.bin", 3 * BS, 3 * BS + 5)]
    reader.close()


class RecordingStore(MemoryBlockStore):
    """A memory store that records its gets and puts and can hold puts back."""

    def __init__(self, bs):
        super().__init__(bs)
        self.gets: list[int] = []
        self.advised: list[int] = []
        self.put_gate = threading.Event()
        self.put_gate.set()

    def get(self, content_id, index):
        self.gets.append(index)
        return super().get(content_id, index)

    def put(self, content_id, index, data):
        assert self.put_gate.wait(10)
        super().put(content_id, index, data)

    def will_need(self, content_id, indices):
        self.advised.extend(indices)


def test_waiters_of_a_run_wake_before_its_blocks_are_stored():
    data = make_bytes(8 * BS, 11)
    f = remote("a.bin", data)
    store = RecordingStore(BS)
    reader = BlockReader(store, MemoryFetcher({"a.bin": data}), max_request_bytes=8 * BS)
    store.put_gate.clear()  # the disk is slow: puts wait
    try:
        assert reader.read(f, 0, len(data)) == data  # returns although nothing is stored yet
        assert store.cached_indices(f.content_id) == []
        assert not reader.drain(0)  # still in flight until stored
    finally:
        store.put_gate.set()
    assert reader.drain(10)
    assert store.cached_indices(f.content_id) == list(range(8))
    reader.close()


def test_prefetch_of_stored_blocks_reads_them_into_memory_without_fetching():
    data = make_bytes(40 * BS, 12)
    f = remote("a.bin", data)
    store = RecordingStore(BS)
    for i in range(40):
        store.put(f.content_id, i, data[i * BS : (i + 1) * BS])
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(store, fetch, memory_bytes=32 * BS)  # lifts 32 // 4 = 8 blocks ahead
    assert reader.stored.lift_blocks == 8
    assert reader.prefetch(f, range(10, 40), budget=64 * BS) == (0, 0)  # nothing to download
    assert reader.drain(10)  # the lifts under way
    assert sorted(store.gets) == list(range(10, 18))  # the first 8 wanted, read once each
    assert sorted(store.advised) == list(range(18, 40))  # the rest: a hint to the store
    store.gets.clear()
    assert reader.read(f, 10 * BS, 8 * BS) == data[10 * BS : 18 * BS]
    assert store.gets == [] and fetch.calls == []  # served from memory
    reader.close()


def test_a_lifted_block_that_vanished_from_the_store_is_fetched():
    data = make_bytes(4 * BS, 13)
    f = remote("a.bin", data)
    store = RecordingStore(BS)
    for i in range(4):
        store.put(f.content_id, i, data[i * BS : (i + 1) * BS])
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(store, fetch)
    reader.stored.known(f)  # the reader believes all 4 are stored...
    store.get = lambda content_id, index: None  # ...but another process evicted them
    reader.prefetch(f, range(4), budget=64 * BS)
    assert reader.read(f, 0, 4 * BS) == data
    assert fetch.fetched_bytes() == 4 * BS
    reader.close()


def test_a_block_is_served_when_its_bytes_arrive_not_when_its_whole_request_ends():
    data = make_bytes(4 * BS, 14)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    fetch.hold(after_pieces=1)
    store = RecordingStore(BS)
    reader = BlockReader(store, fetch, max_request_bytes=4 * BS)
    try:
        futures = reader.runs.ensure(f, range(4))  # one request of 4 blocks
        assert len(fetch.calls) == 1
        assert futures[0].result(timeout=10) == data[:BS]  # the request is still running
        assert not futures[1].done()
        assert reader.read(f, 100, 1000) == data[100:1100]
    finally:
        fetch.release()
    assert reader.read(f, 0, 4 * BS) == data
    assert reader.drain(10)
    assert store.cached_indices(f.content_id) == [0, 1, 2, 3]
    reader.close()


def test_run_done_news_reaches_the_listener_after_the_blocks_are_stored():
    data = make_bytes(4 * BS, 15)
    f = remote("a.bin", data)
    store = MemoryBlockStore(BS)
    seen = []
    reader = BlockReader(store, MemoryFetcher({"a.bin": data}),
                         on_run_done=lambda: seen.append(store.cached_indices(f.content_id)))
    reader.read(f, 0, 4 * BS)
    assert reader.drain(10)
    assert seen[-1] == [0, 1, 2, 3]  # the run's own news: after every block is stored
    assert len(seen) == 1 + 4  # and one as each block landed (room in the budget)
    reader.close()


def test_landed_blocks_leave_the_budget_before_they_are_stored():
    """A slow store must not idle the network: a landed block's bytes no longer count against
    the prefetch budget, though it stays in flight (single-flight) until stored; more than one
    budget of landed-but-unstored bytes counts again (memory stays bounded)."""
    data = make_bytes(8 * BS, 17)
    f = remote("a.bin", data)
    gate = threading.Event()

    class SlowStore(MemoryBlockStore):
        def put(self, content_id, index, block):
            gate.wait(10)
            super().put(content_id, index, block)

    news = threading.Condition()  # the reader's news: a block landed, a run finished

    def heard() -> None:
        with news:
            news.notify_all()

    def all_landed() -> None:  # off the network: woken by the news, never by a clock
        with news:
            assert news.wait_for(lambda: inflight.bytes() == 0, 10)  # (the bound: a hang guard)

    reader = BlockReader(SlowStore(BS), MemoryFetcher({"a.bin": data}), workers=4, on_run_done=heard)
    inflight = reader.runs.inflight
    try:
        assert reader.prefetch(f, [0, 1], budget=2 * BS) == (2, 0)
        all_landed()
        assert inflight.has(f, 0) and inflight.has(f, 1)  # landed, not stored
        assert reader.prefetch(f, [2, 3], budget=2 * BS) == (2, 0)  # room again while the store waits
        all_landed()
        # 4 blocks landed and unstored: 2 over the budget of 2, so no room is left
        assert reader.prefetch(f, [4], budget=2 * BS) == (0, 1)
        gate.set()
        assert reader.drain(10)
        assert reader.prefetch(f, [4], budget=2 * BS) == (1, 0)
        assert reader.drain(10)
        assert reader.read(f, 0, 5 * BS) == data[: 5 * BS]
    finally:
        gate.set()
        reader.close()


def test_a_failed_run_also_sends_its_news():
    data = make_bytes(4 * BS, 16)
    f = remote("a.bin", data)
    fetch = MemoryFetcher({"a.bin": data})
    done = threading.Event()
    reader = BlockReader(MemoryBlockStore(BS), fetch, on_run_done=done.set)
    fetch.fail()
    with pytest.raises(FetchError):
        reader.read(f, 0, 10)
    assert done.wait(10)
    reader.close()


def test_each_tier_counts_its_own_hits():
    data = make_bytes(4 * BS, 17)
    f = remote("a.bin", data)
    store = MemoryBlockStore(BS)
    reader = BlockReader(store, MemoryFetcher({"a.bin": data}), memory_bytes=2 * BS)
    reader.read(f, 0, 4 * BS)  # cold: every block misses the store
    assert reader.counters.get("store_misses") == 4 and reader.counters.get("store_hits") == 0
    assert reader.drain(10)
    reader.read(f, 3 * BS, 10)  # the last block read is still in memory
    assert reader.counters.get("memory_hits") >= 1
    reader.read(f, 0, 10)  # block 0 left memory (2 blocks of room): from the store
    assert reader.counters.get("store_hits") == 1
    reader.close()


def test_a_cancelled_fetch_fails_its_readers_instead_of_leaving_them_waiting():
    """A fetcher shutting down may cancel its futures (the daemon's SIGTERM path)."""
    import concurrent.futures

    data = make_bytes(2 * BS, 18)
    f = remote("a.bin", data)

    class Cancelling(MemoryFetcher):
        def fetch(self, file, start, end, on_part, **kw):
            fut = concurrent.futures.Future()
            fut.cancel()
            return fut

    reader = BlockReader(MemoryBlockStore(BS), Cancelling({"a.bin": data}))
    with pytest.raises(FetchError):
        reader.read(f, 0, 10)
    assert reader.drain(10)
    reader.close()


# -- exact reads (a lone tensor's pages) join bytes already held ------------------------------
def test_an_exact_read_fetches_only_what_no_extent_or_block_holds():
    """The kernel's read around a fault straddles a tensor whose extent or blocks are already
    coming: only the rest is fetched, and the bytes are right whatever held them."""
    from netmount.read.reader import ExactRead

    data, f, fetch, reader = setup(size=12 * BS)
    tensor = (3 * BS + 5000, 7 * BS + 300)
    reader.prefetch_extent(f, *tensor)  # the lone tensor, exactly (pages)
    reader.prefetch(f, [9], budget=1 << 30)  # and a block further on, in flight or in
    assert reader.drain(10)
    before = len(fetch.calls)
    lo, hi = 3 * BS - 20000, 3 * BS + 30000  # straddles the tensor's start
    assert reader.read(f, lo, hi - lo, exact=ExactRead()) == data[lo:hi]
    new = [(a, b) for _, a, b, _ in fetch.calls[before:]]
    assert new == [(lo // 4096 * 4096, (3 * BS + 5000) // 4096 * 4096)], new  # the pages before it only
    lo, hi = 7 * BS - 1000, 9 * BS + 777  # the tensor's end, a gap nothing holds, into block 9
    before = len(fetch.calls)
    assert reader.read(f, lo, hi - lo, exact=ExactRead()) == data[lo:hi]
    new = [(a, b) for _, a, b, _ in fetch.calls[before:]]
    assert new == [(-(-(7 * BS + 300) // 4096) * 4096, 9 * BS)], new
    lo, hi = 9 * BS + 10, 9 * BS + 5000  # held wholly by a block: nothing fetched
    before = len(fetch.calls)
    assert reader.read(f, lo, hi - lo, exact=ExactRead()) == data[lo:hi]
    assert len(fetch.calls) == before
    reader.close()


def test_random_exact_reads_over_mixed_extents_and_blocks_are_exact():
    from netmount.read.reader import ExactRead

    data, f, fetch, reader = setup(size=16 * BS + 999)
    rnd = random.Random(7)
    for _ in range(40):
        a = rnd.randrange(0, len(data) - 1)
        reader.prefetch_extent(f, a, min(len(data), a + rnd.randrange(1, 3 * BS)))
        reader.prefetch(f, [rnd.randrange(0, 17)], budget=1 << 30)
        off = rnd.randrange(0, len(data))
        size = rnd.randrange(1, 4 * BS)
        assert reader.read(f, off, size, exact=ExactRead()) == data[off : off + size]
    reader.close()


def test_a_reader_takes_over_a_lift_no_disk_thread_has_started():
    """A warm read does not queue behind the disk pool: a block whose lift is still waiting
    for a disk thread is read on the reader's own thread (and the lift is dropped)."""
    data = make_bytes(4 * BS, 15)
    f = remote("a.bin", data)
    store = RecordingStore(BS)
    for i in range(4):
        store.put(f.content_id, i, data[i * BS : (i + 1) * BS])
    stuck, reached = threading.Event(), threading.Event()
    plain_get = store.get

    def get(content_id, index):  # the one disk thread hangs on block 0
        if index == 0 and threading.current_thread().name.startswith("netmount-disk"):
            reached.set()
            assert stuck.wait(30)
        return plain_get(content_id, index)

    store.get = get
    reader = BlockReader(store, MemoryFetcher({"a.bin": data}), disk_workers=1)
    reader.prefetch(f, [0, 1, 2], budget=64 * BS)  # block 0 on the disk thread, 1 and 2 queued
    assert reached.wait(30)
    done = []
    t = threading.Thread(target=lambda: done.append(reader.read(f, BS, 2 * BS)), daemon=True)
    t.start()
    t.join(30)  # a deadline, not a timing: without the take-over it waits for block 0 forever
    stuck.set()
    assert done == [data[BS : 3 * BS]]
    assert reader.drain(10)
    assert reader.read(f, 0, 4 * BS) == data
    assert reader.counters.get("lift_waits") == 0
    reader.close()
