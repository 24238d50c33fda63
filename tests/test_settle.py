"""What ``idle`` rests on, tested on the parts (no mount, no timing): ``BlockReader.drain``
and ``Prefetcher.drain`` return True only once nothing is read, fetched, handed on, written
behind or left to decide.  Each test holds one kind of work under way with a gate and checks
that a drain with no time to wait (``drain(0)``) says busy, then that it settles once the gate
opens.  The mount-level ``idle`` is these two drains (``daemon.py``)."""

from __future__ import annotations

import threading

import numpy as np
from safetensors.numpy import save

from cache import MemoryBlockStore
from netmount.core.safetensors import parse_header
from netmount.read.policy import PrefetchConfig
from netmount.read.prefetch import Prefetcher
from netmount.read.reader import BlockReader

from fakes import MemoryFetcher, make_bytes, remote

BS = 64 * 1024


def shard(sizes: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    """A safetensors file of U8 tensors of these sizes, and their byte ranges in order."""
    data = save({f"t{i:03d}": np.frombuffer(make_bytes(n, i), np.uint8) for i, n in enumerate(sizes)})
    return data, sorted((t.start, t.end) for t in parse_header(data))


def parts(blocks: int, seed: int, reader=BlockReader):
    """A file of ``blocks`` blocks, its store, the fetcher that serves it and a reader."""
    data = make_bytes(blocks * BS, seed)
    store, fetch = MemoryBlockStore(BS), MemoryFetcher({"a.bin": data})
    return data, remote("a.bin", data), store, fetch, reader(store, fetch)


class Announcing(MemoryFetcher):
    """The in-memory fetcher, telling (``started``) when a fetch has been asked for."""

    def __init__(self, contents):
        super().__init__(contents)
        self.started = threading.Event()

    def fetch(self, *args, **kw):
        fut = super().fetch(*args, **kw)
        self.started.set()
        return fut


def test_a_read_under_way_is_not_settled():
    """The FUSE face holds ``reading`` around a whole request (its prefetch bookkeeping
    after the read included): a request the kernel sent on its own (readahead) counts."""
    *_, reader = parts(4, 1)
    with reader.reading:
        assert not reader.drain(0)
    assert reader.drain(0)
    reader.close()


def test_an_extent_in_flight_is_not_settled():
    _, f, store, fetch, reader = parts(20, 2)
    fetch.hold()
    reader.prefetch_extent(f, 3 * BS + 5000, 9 * BS + 100)  # a lone tensor, exactly: returns at once
    assert not reader.drain(0)
    fetch.release()
    assert reader.drain(10)
    assert store.cached_indices(f.content_id) == [4, 5, 6, 7, 8]  # its whole blocks, stored
    reader.close()


def test_an_extent_is_settled_only_once_its_blocks_are_handed_to_the_store():
    """The extent's bytes are already served (its readers woken) while its ``on_done`` has not
    yet queued its whole blocks for the store: not settled, or stats read then would show
    fetched bytes that are not cached."""
    gate, handing = threading.Event(), threading.Event()

    class SlowHandOver(BlockReader):
        def _extent_in(self, f, start, data):
            handing.set()
            assert gate.wait(10)
            super()._extent_in(f, start, data)

    data, f, store, _, reader = parts(20, 3, SlowHandOver)
    try:
        # (its hand-over runs on the fetcher's thread, or on this one if the bytes came at once)
        threading.Thread(target=reader.prefetch_extent, args=(f, 2 * BS, 6 * BS), daemon=True).start()
        assert handing.wait(10)
        assert reader.extents.get(f, 2 * BS, 6 * BS) == data[2 * BS:6 * BS]  # readers have it
        assert not reader.drain(0)
        gate.set()
        assert reader.drain(10)
        assert store.cached_indices(f.content_id) == [2, 3, 4, 5]
    finally:
        gate.set()
        reader.close()


def test_a_head_being_fetched_is_not_settled():
    data, _ = shard([3 * BS] * 4)
    f = remote("m.safetensors", data)
    fetch = Announcing({f.path: data})
    reader = BlockReader(MemoryBlockStore(4 * BS), fetch, head_bytes=BS)
    fetch.hold()
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(reader.read(f, 0, 100)))
    t.start()
    assert fetch.started.wait(10)
    assert not reader.head.drain(0) and not reader.drain(0)
    fetch.release()
    t.join(10)
    assert out == [data[:100]]
    assert reader.head.drain(0) and reader.drain(10)
    reader.close()


def test_prefetch_decided_after_a_read_under_way_is_waited_for():
    """A drain that began while a read was under way (a kernel readahead request, say) must
    also wait for what prefetch decides from that read: the FUSE face follows the read before
    it stops counting, and the drain looks again when a read was followed meanwhile."""
    data, tensors = shard([5 * BS + 1000] * 8)
    f = remote("m.safetensors", data)
    store = MemoryBlockStore(BS)
    run_done = threading.Event()
    reader = BlockReader(store, MemoryFetcher({f.path: data}), max_request_bytes=4 * BS,
                         memory_bytes=1 << 30, on_run_done=run_done.set)
    cfg = PrefetchConfig(block_size=BS, window_max=16 * BS, lookahead=32 * BS, load_run=4)
    pre = Prefetcher(reader, run_done, budget=8 * BS, connections=4, config=cfg)
    pre.tensor_map(f)
    settled: list = []

    def drain() -> None:
        ok = pre.drain(10)
        settled.append((ok, set(store.cached_indices(f.content_id))))

    with reader.reading:  # the request the drain must wait for
        waiter = threading.Thread(target=drain)
        waiter.start()
        for _, end in tensors[:4]:  # a loader: into tensor after tensor
            pre.follow(1, f, end - 4096, 4096)
    waiter.join(20)
    ok, stored = settled[0]
    assert ok
    wanted = set(range(tensors[0][0] // BS, (len(data) - 1) // BS + 1))
    assert wanted <= stored, sorted(wanted - stored)  # all the loader's want, stored at the answer
    pre.close()
    reader.close()
