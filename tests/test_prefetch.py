"""Prefetch: few large requests, a bounded in-flight budget, single-flight, no reads outside
the file.  Functional, never timed: unit tests drive the Prefetcher with a fake fetcher,
and one test reads through a real mount and counts the hub's requests."""

from __future__ import annotations

import json
import os
import struct
import threading
import time

from cache import MemoryBlockStore
from netmount.read.prefetch import Prefetcher
from netmount.read.reader import BlockReader
from netmount.remote.fetch import SPLIT_MAX, SPLIT_PIECE

from fakes import FakeFetch, make_bytes, remote

BS = 64 * 1024


def safetensors_bytes(sizes: list[int], seed: int = 0) -> bytes:
    """A valid safetensors file with U8 tensors t000, t001, ... of these byte sizes."""
    header, pos = {}, 0
    for i, n in enumerate(sizes):
        header[f"t{i:03d}"] = {"dtype": "U8", "shape": [n], "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + make_bytes(pos, seed)


def tensor_ranges(data: bytes) -> list[tuple[int, int]]:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    return sorted((8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
                  for k, v in header.items() if k != "__metadata__")


class CountingFetch(FakeFetch):
    """A fake fetcher that also tracks how many bytes are being fetched at once."""

    def __init__(self, contents, delay=0.02):
        super().__init__(contents, delay=delay, workers=32)
        self.now = 0
        self.peak = 0
        self._count = threading.Lock()

    def __call__(self, f, start, end, **kw):
        with self._count:
            self.now += end - start
            self.peak = max(self.peak, self.now)
        fut = super().__call__(f, start, end, **kw)

        def done(_):
            with self._count:
                self.now -= end - start

        fut.add_done_callback(done)
        return fut


def wait_idle(reader: BlockReader, prefetcher: Prefetcher, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prefetcher._worker.submit(lambda: None).result()  # decisions queued so far are made
        with reader._lock:
            busy = reader._inflight_bytes or reader._inflight
        with prefetcher._lock:
            pending = bool(prefetcher._pending)
        if not busy and not pending:
            return
        time.sleep(0.01)
    raise AssertionError("prefetch did not settle")


def make(files: dict[str, bytes], budget=8 * BS, delay=0.02, **kw):
    fetch = CountingFetch(files, delay=delay)
    reader = BlockReader(MemoryBlockStore(BS), fetch, max_request_bytes=4 * BS, memory_bytes=1 << 30)
    pre = Prefetcher(reader, budget=budget, window_max=16 * BS, lookahead=32 * BS, connections=4, **kw)
    return fetch, reader, pre


# -- in-flight budget ------------------------------------------------------------------------

def test_inflight_bytes_never_exceed_the_budget_and_everything_wanted_still_arrives():
    data = safetensors_bytes([5 * BS + 1000] * 12)
    f = remote("m.safetensors", data)
    fetch, reader, pre = make({f.path: data}, budget=6 * BS)
    ranges = tensor_ranges(data)
    pre._tensor_map(f)  # the header, before counting
    fetch.calls.clear()
    fetch.peak = 0
    # a loader: jumps into tensor after tensor (no demand reads: only prefetch is in flight)
    for start, end in ranges[:6]:
        pre.on_read(f, end - 4096, 4096)
    wait_idle(reader, pre)
    assert fetch.peak <= 6 * BS, fetch.peak
    assert reader.max_inflight_bytes <= 6 * BS
    # the budget paced the downloads but dropped nothing: the lookahead from the last
    # tensor read (32 blocks) arrived in full although it is 5x the budget
    last_start = ranges[5][0]
    wanted_end = min(len(data), ranges[5][1] + 32 * BS)
    have = reader._known_cached(f)
    missing = [i for i in range(last_start // BS, (wanted_end - 1) // BS + 1) if i not in have]
    assert not missing, missing
    assert len(fetch.calls) > 6  # many runs, each started when room was made
    pre.close()
    reader.close()


def test_budget_counts_demand_reads_already_in_flight():
    data = make_bytes(64 * BS, 1)
    f = remote("plain.bin", data)
    fetch, reader, pre = make({f.path: data}, budget=4 * BS, delay=0.2)
    futures = reader.ensure(f, range(40, 44))  # a demand read of 4 blocks, still downloading
    started, left = reader.prefetch(f, range(0, 8), 4 * BS)
    assert (started, left) == (0, 8)  # no room while the demand read fills the budget
    for fut in futures.values():
        fut.result()
    time.sleep(0.05)
    started, left = reader.prefetch(f, range(0, 8), 4 * BS)
    assert (started, left) == (4, 4)
    pre.close()
    reader.close()


# -- single-flight -----------------------------------------------------------------------

def test_concurrent_readers_and_prefetch_of_one_block_cause_one_request():
    data = safetensors_bytes([20 * BS] * 3)
    f = remote("m.safetensors", data)
    fetch, reader, pre = make({f.path: data}, delay=0.2)
    pre._tensor_map(f)
    fetch.calls.clear()
    start, end = tensor_ranges(data)[1]
    target = start + 10 * BS + 5  # well inside tensor 1: prefetch will want its block too
    barrier = threading.Barrier(8)
    results = []

    def read():
        barrier.wait()
        results.append(reader.read(f, target, 100))
        pre.on_read(f, target, 100)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_idle(reader, pre)
    assert results == [data[target : target + 100]] * 8
    block = target // BS
    covering = [(s, e) for _, s, e in fetch.calls if s <= block * BS < e]
    assert len(covering) == 1, fetch.calls
    # and no byte was fetched twice
    spans = sorted((s, e) for _, s, e in fetch.calls)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    pre.close()
    reader.close()


# -- bounds: the file, and its end ----------------------------------------------------------

def test_sequential_prefetch_stops_at_end_of_file_and_stays_in_the_file():
    a = make_bytes(40 * BS + 777, 2)
    b = make_bytes(40 * BS, 3)
    fa, fb = remote("a.bin", a), remote("b.bin", b)
    fetch, reader, pre = make({fa.path: a, fb.path: b})
    pos = 0
    while pos < len(a):  # cat a.bin, 128 KiB at a time
        got = reader.read(fa, pos, 2 * BS)
        pre.on_read(fa, pos, len(got))
        pos += len(got)
    wait_idle(reader, pre)
    assert {p for p, _, _ in fetch.calls} == {"a.bin"}
    assert all(0 <= s < e <= len(a) for _, s, e in fetch.calls)
    assert sum(e - s for _, s, e in fetch.calls) == len(a)  # every byte once
    pre.close()
    reader.close()


def test_loader_lookahead_stops_at_end_of_the_shard_being_read():
    shard1 = safetensors_bytes([3 * BS + 100] * 8, seed=4)
    shard2 = safetensors_bytes([3 * BS + 100] * 8, seed=5)
    f1 = remote("model-00001-of-00002.safetensors", shard1)
    f2 = remote("model-00002-of-00002.safetensors", shard2)
    fetch, reader, pre = make({f1.path: shard1, f2.path: shard2}, budget=64 * BS)
    for start, end in tensor_ranges(shard1)[-5:]:  # a loader at the shard's end
        reader.read(f1, end - 1000, 1000)
        pre.on_read(f1, end - 1000, 1000)
    wait_idle(reader, pre)
    assert {p for p, _, _ in fetch.calls} == {f1.path}
    assert all(0 <= s < e <= len(shard1) for _, s, e in fetch.calls)
    pre.close()
    reader.close()


def test_a_loader_gets_the_tensors_before_the_one_it_reads_too():
    """Module order is not file order (q, k, v, o vs k, o, q, v): after a loader is seen, a
    read in a tensor also wants the tensors just before it, up to half the lookahead."""
    sizes = [2 * BS] * 40
    data = safetensors_bytes(sizes, seed=8)
    f = remote("model.safetensors", data)
    fetch, reader, pre = make({f.path: data}, budget=256 * BS)
    ranges = tensor_ranges(data)
    for k in (1, 3, 5, 7):  # tails of four tensors: a loader (it wants up to ~tensor 23)
        reader.read(f, ranges[k][1] - 1000, 1000)
        pre.on_read(f, ranges[k][1] - 1000, 1000)
    wait_idle(reader, pre)
    fetch.calls.clear()
    start, end = ranges[38]
    reader.read(f, start + BS, 100)
    pre.on_read(f, start + BS, 100)
    wait_idle(reader, pre)
    fetched = {i for _, s, e in fetch.calls for i in range(s // BS, (e - 1) // BS + 1)}
    behind = set(range((start - 16 * BS) // BS, start // BS))  # lookahead 32 blocks: 16 behind
    assert behind <= fetched
    assert all(0 <= s < e <= len(data) for _, s, e in fetch.calls)
    pre.close()
    reader.close()


def test_a_loader_gets_the_next_shard_it_has_read_but_never_one_it_has_not():
    shards = {f"model-0000{k}-of-00003.safetensors": safetensors_bytes([3 * BS + 100] * 6, seed=20 + k)
              for k in (1, 2, 3)}
    files = {p: remote(p, d) for p, d in shards.items()}
    f1, f2, f3 = files.values()
    fetch, reader, pre = make(shards, budget=256 * BS)
    for f in (f1, f2):  # the program read the headers of shards 1 and 2, not 3
        reader.read(f, 0, 8)
        pre.on_read(f, 0, 8)
    wait_idle(reader, pre)
    for start, end in tensor_ranges(shards[f1.path])[:4]:  # a loader at work in shard 1
        reader.read(f1, end - 1000, 1000)
        pre.on_read(f1, end - 1000, 1000)
    wait_idle(reader, pre)
    data2 = tensor_ranges(shards[f2.path])
    assert set(range(data2[0][0] // BS, (data2[-1][1] - 1) // BS + 1)) <= reader._known_cached(f2)
    assert f3.path not in {p for p, _, _ in fetch.calls}  # never read: never fetched
    assert all(0 <= s < e <= len(shards[p]) for p, s, e in fetch.calls)
    pre.close()
    reader.close()


def test_one_tensor_read_page_by_page_fetches_that_tensor_only():
    sizes = [BS // 2, 3 * BS, 2 * BS + 5, 24 * BS + 100, 3 * BS, 40 * BS]
    data = safetensors_bytes(sizes, seed=6)
    f = remote("m.safetensors", data)
    fetch, reader, pre = make({f.path: data}, budget=64 * BS)
    pre._tensor_map(f)
    fetch.calls.clear()
    start, end = tensor_ranges(data)[3]
    pos = start - start % (2 * BS)  # the kernel reads aligned windows around the pages
    while pos < end:
        got = reader.read(f, pos, 2 * BS)
        pre.on_read(f, pos, len(got))
        pos += 2 * BS
    wait_idle(reader, pre)
    first, last = (start - start % (2 * BS)) // BS, (pos - 1) // BS
    fetched = {i for _, s, e in fetch.calls for i in range(s // BS, (e - 1) // BS + 1)}
    assert fetched <= set(range(first, last + 1)), sorted(fetched - set(range(first, last + 1)))
    pre.close()
    reader.close()


# -- through a real mount: the hub's log ----------------------------------------------------

def test_reading_a_tensor_page_by_page_causes_few_large_requests(mounter, hub, hub_root):
    src = hub_root / "tests" / "big" / "model.safetensors"
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    a, b = header["layer.6.weight"]["data_offsets"]
    begin, end = 8 + n + a, 8 + n + b  # ~10 MiB
    mp = mounter.mount("tests/big")
    with open(mp / "model.safetensors", "rb", buffering=0) as fh:
        fh.read(8 + n)
        hub.reset_log()
        pages = 0
        for pos in range(begin, end, 4096):  # page by page, as page faults would
            assert os.pread(fh.fileno(), 4096, pos) == raw[pos : pos + 4096]
            pages += 1
    gets = [r for r in hub.requests(server="cdn", method="GET")]
    sizes = [r.body_bytes for r in gets]
    assert sum(sizes) >= end - begin
    assert sum(sizes) <= end - begin + 4 * (1 << 20)  # its blocks, plus spill at most
    # about one per MiB, not per page: a lone tensor comes as one exact extent in
    # SPLIT_MAX parallel pieces, plus the pages of the first read and of the kernel's
    # read-ahead past its end (two windows), each fetched exactly
    assert len(gets) <= (end - begin) // (1 << 20) + 2 + SPLIT_MAX, sizes
    assert sum(s < SPLIT_PIECE for s in sizes) <= 3, repr([(r.range, r.body_bytes) for r in gets])
    assert pages > 50 * len(gets)


# -- headers ---------------------------------------------------------------------------------

def test_a_header_read_fetches_the_head_not_the_first_block():
    data = safetensors_bytes([700_000, 900_000, 1_500_000], seed=7)  # ~3 MiB, 1 MiB blocks
    f = remote("m.safetensors", data)
    fetch = FakeFetch({f.path: data}, delay=0.05)
    reader = BlockReader(MemoryBlockStore(1 << 20), fetch)
    n = struct.unpack("<Q", data[:8])[0]
    results = []
    threads = [threading.Thread(target=lambda: results.append(reader.read(f, 0, 128 << 10)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data[: 128 << 10]] * 4
    assert reader.read(f, 8, n) == data[8 : 8 + n]
    assert fetch.calls == [(f.path, 0, 128 << 10)]  # one request, 128 KiB, for a header of ~200 B
    # past the head, the block path as usual (and block 0 whole when a read needs it)
    assert reader.read(f, (1 << 20) + 5, 100) == data[(1 << 20) + 5 : (1 << 20) + 105]
    assert reader.read(f, 100_000, 100_000) == data[100_000:200_000]
    assert fetch.calls[1:] == [(f.path, 1 << 20, 2 << 20), (f.path, 0, 1 << 20)]
    # once block 0 is stored, header reads come from it: no more head requests
    reader._heads.clear()
    assert reader.read(f, 0, 4096) == data[:4096]
    assert len(fetch.calls) == 3
    reader.close()


def test_head_fetch_failure_fails_the_read_and_the_next_read_retries():
    import pytest

    from netmount.core.errors import FetchError

    data = safetensors_bytes([2 << 20], seed=8)
    f = remote("m.safetensors", data)
    fetch = FakeFetch({f.path: data})
    reader = BlockReader(MemoryBlockStore(1 << 20), fetch)
    fetch.fail_next = 1
    with pytest.raises(FetchError):
        reader.read(f, 0, 8)
    assert reader.read(f, 0, 8) == data[:8]
    reader.close()


def test_a_small_shard_read_first_inside_a_tensor_reads_right(caplog):
    """The exact-read policy parses the header on the reader's thread: that header read
    must not ask the policy again (it once recursed until Python gave up, quietly)."""
    data = safetensors_bytes([3000, 5000, 2000], seed=9)
    f = remote("small.safetensors", data)
    fetch, reader, pre = make({f.path: data})
    start, end = tensor_ranges(data)[1]
    with caplog.at_level("WARNING", logger="netmount.prefetch"):
        assert reader.read(f, start, end - start) == data[start:end]  # the file's first read
        pre.on_read(f, start, end - start)
        wait_idle(reader, pre)
    assert not caplog.records, [r.getMessage()[:200] for r in caplog.records]
    assert pre._maps[f.path] is not None
    pre.close()
    reader.close()
