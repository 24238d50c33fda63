"""What ``idle`` rests on, tested on the parts (no mount, no timing): ``BlockReader.drain``
and ``Prefetcher.drain`` return True only once nothing is read, fetched, written behind or
left to decide.  Each test holds one kind of work under way with a gate and checks that a
drain with no time to wait (``drain(0)``) says busy, then that it settles once the gate
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
    after the read included): a request the kernel sent on its own (readahead) counts,
    from before it has claimed anything to fetch."""
    data = make_bytes(4 * BS, 1)
    reader = BlockReader(MemoryBlockStore(BS), MemoryFetcher({"a.bin": data}))
    with reader.reading:
        assert not reader.drain(0)
    assert reader.drain(0)
    reader.close()


def test_a_range_fetched_exactly_is_settled_once_stored():
    data = make_bytes(20 * BS, 2)
    f = remote("a.bin", data)
    store = MemoryBlockStore(BS)
    fetch = MemoryFetcher({"a.bin": data})
    reader = BlockReader(store, fetch)
    fetch.hold()
    reader.fetch_exact(f, 3 * BS + 5000, 9 * BS + 100)  # a lone tensor: returns at once
    assert not reader.drain(0)
    fetch.release()
    assert reader.drain(10)
    assert reader.read_local(f, 3 * BS + 5000, 6 * BS - 4900) == data[3 * BS + 5000:9 * BS + 100]
    reader.close()


def test_a_header_read_waiting_on_the_network_is_not_settled():
    data, _ = shard([3 * BS] * 4)
    f = remote("m.safetensors", data)
    fetch = Announcing({f.path: data})
    reader = BlockReader(MemoryBlockStore(4 * BS), fetch, head_bytes=BS)
    fetch.hold()
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(reader.read(f, 0, 100)))
    t.start()
    assert fetch.started.wait(10)
    assert not reader.drain(0)
    fetch.release()
    t.join(10)
    assert out == [data[:100]]
    assert reader.drain(10)
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
                         on_run_done=run_done.set)
    cfg = PrefetchConfig(block_size=BS, window_max=16 * BS, lookahead=32 * BS, load_run=4)
    pre = Prefetcher(reader, run_done, budget=8 * BS, connections=4, config=cfg)
    pre.tensor_map(f)
    settled: list = []

    def drain() -> None:
        ok = pre.drain(10)
        settled.append((ok, set(store.cached_indices(f.content_id))))

    waiting = threading.Event()  # the drain has looked at prefetch (nothing to do) and waits on the read
    wait_none = reader.reading.wait_none
    reader.reading.wait_none = lambda timeout=None: waiting.set() or wait_none(timeout)
    with reader.reading:  # the request the drain must wait for
        waiter = threading.Thread(target=drain)
        waiter.start()
        assert waiting.wait(10)
        for _, end in tensors[:4]:  # a loader: into tensor after tensor
            pre.follow(1, f, end - 4096, 4096)
    waiter.join(20)
    ok, stored = settled[0]
    assert ok
    wanted = set(range(tensors[0][0] // BS + 1, (len(data) - 1) // BS + 1))
    assert wanted <= stored, sorted(wanted - stored)  # all the loader's want, stored at the answer
    pre.close()
    reader.close()
