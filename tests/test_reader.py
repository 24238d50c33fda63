"""BlockReader over an in-memory store and the in-memory fetcher: exact bytes, every fetched
byte stored, single-flight, coalescing, write-behind, streaming, budgets.  No timing: stalls
are made with ``MemoryFetcher.hold`` (or a store that waits on an event) and completion is
awaited with ``reader.drain``."""

import random
import threading

import pytest

from cache import MemoryBlockStore
from netmount.core.blocks import PAGE
from netmount.core.errors import FetchError
from netmount.core.ranges import Ranges
from netmount.read.reader import BlockReader, ExactRead, cut, join

from fakes import MemoryFetcher, make_bytes, remote, spans

BS = 64 * 1024


def setup(size=10 * BS + 123, path="a.bin", store=None, **kw):
    data = make_bytes(size, seed=size)
    f = remote(path, data)
    fetch = MemoryFetcher({path: data})
    reader = BlockReader(store or MemoryBlockStore(BS), fetch, **kw)
    return data, f, fetch, reader


def held(reader, f) -> list[tuple[int, int]]:
    return list(reader.store.held(f.content_id))


def fetched(fetch) -> Ranges:
    return Ranges((s, e) for _, s, e in spans(fetch))


def test_random_ranges_are_exact_in_blocks_and_exactly():
    data, f, fetch, reader = setup()
    rnd = random.Random(1)
    for _ in range(300):
        off = rnd.randrange(0, len(data) + 10)
        size = rnd.choice([0, 1, 4096, BS, 3 * BS + 7, rnd.randrange(1, len(data))])
        exact = rnd.choice([None, ExactRead(), ExactRead((max(0, off - 5000), min(len(data), off + 9000)))])
        assert reader.read(f, off, size, exact=exact) == data[off : off + size]
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


def test_second_read_is_answered_by_the_store_without_fetching():
    data, f, fetch, reader = setup()
    assert reader.read(f, 0, len(data)) == data
    assert reader.drain(10)
    n = len(fetch.calls)
    segs = reader.reply(f, 5, len(data))
    assert join(segs) == data[5:] and len(fetch.calls) == n
    assert reader.counters.get("cache_hits") == 1
    reader.close()


def test_adjacent_missing_blocks_are_one_request_capped_by_max_request_bytes():
    data, f, fetch, reader = setup(size=40 * BS, max_request_bytes=16 * BS)
    reader.read(f, 0, len(data))
    assert [(s, e) for _, s, e in spans(fetch)] == [(0, 16 * BS), (16 * BS, 32 * BS), (32 * BS, 40 * BS)]
    reader.close()


def test_held_bytes_are_never_fetched_again_blocks_or_pieces():
    data, f, fetch, reader = setup(size=10 * BS)
    reader.read(f, 2 * BS, BS)
    reader.read(f, 5 * BS + 100, 300, exact=ExactRead())  # one page, exactly
    assert reader.drain(10)
    fetch.calls.clear()
    assert reader.read(f, 0, len(data)) == data
    got = sorted((s, e) for _, s, e in spans(fetch))
    assert got == [(0, 2 * BS), (3 * BS, 5 * BS), (5 * BS + PAGE, 10 * BS)], got
    reader.close()


def test_every_fetched_byte_is_stored_exact_head_and_blocks_and_a_new_reader_fetches_none():
    data, f, fetch, reader = setup(size=40 * BS, path="m.safetensors", head_bytes=32 << 10)
    reader.read(f, 0, 4000)  # a header read: its pages, not block 0
    reader.read(f, 10 * BS + 5000, 100, exact=ExactRead((10 * BS, 13 * BS + 77)))  # a lone tensor
    reader.read(f, 30 * BS, 2 * BS)  # blocks
    assert reader.drain(10)
    assert held(reader, f) == [(0, PAGE), (10 * BS, 13 * BS + PAGE), (30 * BS, 32 * BS)]
    assert fetched(fetch) == Ranges(held(reader, f))
    before = len(fetch.calls)
    again = BlockReader(reader.store, fetch, head_bytes=32 << 10)  # a remount on the same cache
    for lo, n in [(0, 4000), (10 * BS, 3 * BS + 77), (30 * BS, 2 * BS)]:
        assert again.read(f, lo, n) == data[lo:lo + n]
    assert len(fetch.calls) == before
    again.close()
    reader.close()


def test_a_longer_header_fetches_the_rest_of_the_head_at_once():
    data, f, fetch, reader = setup(size=40 * BS, path="m.safetensors", head_bytes=32 << 10)
    assert reader.read(f, 0, 8) == data[:8]
    assert reader.read(f, 8, 9000) == data[8:9008]  # past the first page: the rest of the head
    assert reader.read(f, 20000, 5000) == data[20000:25000]  # within it: no fetch
    assert [(s, e) for _, s, e in spans(fetch)] == [(0, PAGE), (PAGE, 32 << 10)]
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


def test_many_threads_random_reads_fetch_each_byte_once():
    data, f, fetch, reader = setup(size=40 * BS + 99, max_request_bytes=4 * BS)
    errors = []

    def go(seed):
        rnd = random.Random(seed)
        for _ in range(100):
            a, n = rnd.randrange(len(data)), rnd.randrange(1, 5 * BS)
            exact = ExactRead() if rnd.random() < 0.3 else None
            if reader.read(f, a, n, exact=exact) != data[a:a + n]:
                errors.append((a, n))

    threads = [threading.Thread(target=go, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reader.drain(10)
    assert sum(e - s for _, s, e in spans(fetch)) == fetched(fetch).total  # no byte twice
    reader.close()


def test_failed_fetch_raises_and_stores_nothing_then_recovers():
    data, f, fetch, reader = setup()
    fetch.fail()
    with pytest.raises(FetchError):
        reader.read(f, 0, 10)
    assert reader.drain(10)
    assert held(reader, f) == []
    assert reader.read(f, 0, 10) == data[:10]
    reader.close()


def test_a_run_failing_midway_keeps_the_pieces_that_came_and_fails_the_rest():
    data, f, fetch, reader = setup(size=8 * BS, max_request_bytes=8 * BS)
    fetch.fail(after_pieces=3)
    with pytest.raises(FetchError):
        reader.read(f, 0, 8 * BS)
    assert reader.drain(10)
    assert held(reader, f) == [(0, 3 * BS)]  # their bytes were right
    assert reader.runs.inflight.net == 0 and reader.runs.inflight.landed == 0
    assert reader.read(f, 0, 8 * BS) == data
    reader.close()


def test_a_retry_midway_delivers_pieces_twice_and_the_reader_takes_them_once():
    data, f, fetch, reader = setup(size=8 * BS, max_request_bytes=8 * BS)
    fetch.retry_midway()
    assert reader.read(f, 0, 8 * BS) == data
    assert reader.drain(10)
    assert held(reader, f) == [(0, 8 * BS)]
    assert reader.runs.inflight.landed == 0
    reader.close()


def test_a_read_is_answered_when_its_piece_arrives_not_when_its_request_ends():
    data, f, fetch, reader = setup(size=8 * BS, max_request_bytes=8 * BS)
    fetch.hold(after_pieces=1)  # the first block comes, then the body stalls
    assert reader.prefetch(f, range(8), budget=100 * BS) == (8, 0)  # one request for all
    assert reader.read(f, 0, 100) == data[:100]  # answered by the first piece
    assert not reader.drain(0)
    fetch.release()
    assert reader.drain(10)
    assert spans(fetch) == [("a.bin", 0, 8 * BS)]
    reader.close()


def test_a_reader_answers_from_landed_bytes_before_they_are_stored():
    gate = threading.Event()
    store = SlowStore(BS, gate)
    data, f, fetch, reader = setup(store=store)
    assert reader.read(f, 0, 3 * BS) == data[:3 * BS]  # the store has not written a byte yet
    assert not reader.drain(0)  # not settled: the writes are pending
    assert reader.covered(f, 0, 3 * BS) and held(reader, f) == []
    gate.set()
    assert reader.drain(10)
    assert held(reader, f) == [(0, 3 * BS)]
    reader.close()


def test_news_reaches_the_listener_when_pieces_land_and_when_they_are_stored():
    news = threading.Event()
    data, f, fetch, reader = setup(on_run_done=news.set)
    reader.read(f, 0, BS)
    assert reader.drain(10) and news.is_set()
    reader.close()


def test_a_failed_run_also_sends_its_news():
    news = threading.Event()
    data, f, fetch, reader = setup(on_run_done=news.set)
    fetch.fail()
    with pytest.raises(FetchError):
        reader.read(f, 0, BS)
    assert news.is_set()
    reader.close()


def test_prefetch_takes_only_what_fits_the_budget_and_never_held_bytes():
    data, f, fetch, reader = setup(size=20 * BS)
    reader.read(f, 3 * BS, BS)
    assert reader.drain(10)
    fetch.calls.clear()
    fetch.hold()
    started, left = reader.prefetch(f, range(0, 10), budget=4 * BS)
    assert (started, left) == (4, 5)  # blocks 0-2, 4 (3 is held), then the budget is full
    fetch.release()
    assert reader.drain(10)
    assert fetched(fetch) == Ranges([(0, 3 * BS), (4 * BS, 5 * BS)])
    assert reader.prefetch(f, range(0, 10), budget=100 * BS) == (5, 0)
    assert reader.drain(10)
    assert held(reader, f) == [(0, 10 * BS)]
    reader.close()


def test_prefetch_joins_demand_and_demand_joins_prefetch():
    data, f, fetch, reader = setup(size=20 * BS)
    fetch.hold()
    reader.prefetch(f, range(0, 4), budget=100 * BS)
    out = []
    t = threading.Thread(target=lambda: out.append(reader.read(f, BS, 2 * BS)))
    t.start()
    fetch.release()
    t.join()
    assert out == [data[BS:3 * BS]]
    assert spans(fetch) == [("a.bin", 0, 4 * BS)]
    reader.close()


def test_fetch_exact_and_covered():
    data, f, fetch, reader = setup(size=20 * BS)
    fetch.hold()
    reader.fetch_exact(f, 5000, 70000)
    assert reader.covered(f, PAGE, 70000) and not reader.covered(f, 0, 70000 + PAGE)
    fetch.release()
    assert reader.drain(10)
    assert held(reader, f) == [(PAGE, 18 * PAGE)]
    reader.fetch_exact(f, 5000, 70000)  # held: nothing more
    assert len(fetch.calls) == 1
    reader.close()


def test_a_range_the_store_drops_between_lookup_and_use_is_fetched_again():
    data, f, fetch, reader = setup(size=4 * BS)
    reader.read(f, 0, 4 * BS)
    assert reader.drain(10)
    reader.store.drop(f.content_id)  # as verify does, or an eviction by another daemon
    reader.forget(f)
    assert reader.read(f, BS, BS) == data[BS:2 * BS]
    assert spans(fetch)[-1] == ("a.bin", BS, 2 * BS)
    reader.close()


def test_a_cancelled_fetch_fails_its_readers_instead_of_leaving_them_waiting():
    data, f, fetch, reader = setup()

    class Cancelling:
        def fetch(self, *a, **k):
            import concurrent.futures

            fut = concurrent.futures.Future()
            fut.cancel()
            return fut

    reader.runs.fetcher = Cancelling()
    with pytest.raises(FetchError):
        reader.read(f, 0, 10)
    assert reader.drain(10)
    reader.close()


def test_read_local_never_fetches():
    data, f, fetch, reader = setup()
    assert reader.read_local(f, 0, 10) is None and not fetch.calls
    reader.read(f, 0, 10)
    assert reader.drain(10)
    assert reader.read_local(f, 0, 10) == data[:10]
    reader.close()


def test_cut_and_join_of_segments():
    from cache import Segment

    a, b = make_bytes(100, 1), make_bytes(50, 2)
    segs = [Segment(-1, 10, 40, a), Segment(-1, 0, 50, b)]
    whole = a[10:50] + b
    for skip in range(0, 90, 7):
        for n in (0, 1, 30, 89):
            assert join(cut(segs, skip, n)) == whole[skip:skip + n]


class SlowStore(MemoryBlockStore):
    """A memory store whose writes wait for ``gate``: write-behind made visible."""

    def __init__(self, block_size, gate):
        super().__init__(block_size)
        self.gate = gate

    def put_ranges(self, items):
        self.gate.wait(30)
        super().put_ranges(items)


def test_prefetch_takes_a_long_run_up_to_the_budget_cut_at_a_block_edge():
    data, f, fetch, reader = setup(size=100 * BS)
    fetch.hold()
    assert reader.prefetch(f, range(100), budget=10 * BS + 100) == (10, 90)
    fetch.release()
    assert reader.drain(10)
    assert held(reader, f) == [(0, 10 * BS)]
    reader.close()


def test_block_runs_join_consecutive_blocks_in_the_order_given():
    from netmount.read.reader import block_runs

    assert block_runs([3, 4, 5, 1, 0, 9, 4, 50], 10, 95) == [(30, 60), (10, 20), (0, 10), (90, 95)]
