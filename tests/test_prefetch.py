"""Prefetch: few large requests, a bounded in-flight budget, single-flight, never past a
file's end, other shards only as a loader's speculative window until the program reads them,
no shard for partial readers.  Functional, never timed: unit tests drive the Prefetcher with a fake fetcher,
and one test reads through a real mount and counts the hub's requests."""

from __future__ import annotations

import json
import os
import random
import struct
import threading

from cache import MemoryBlockStore
from netmount.read.policy import PrefetchConfig
from netmount.read.prefetch import Prefetcher
from netmount.read.reader import BlockReader
from netmount.remote.pieces import SPLIT_MAX, SPLIT_PIECE

from fakes import MemoryFetcher, make_bytes, remote, spans

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


class CountingFetch(MemoryFetcher):
    """The in-memory fetcher, also tracking how many bytes prefetch is fetching at once (the
    budget's: a read's own bytes, and the exact pieces of a tensor a read starts, are never
    held back)."""

    def __init__(self, contents):
        super().__init__(contents, workers=32)
        self.now = 0
        self.peak = 0
        self._count = threading.Lock()
        self.asked = threading.Event()  # a fetch was asked for

    def fetch(self, f, start, end, on_part, **kw):
        """Bytes asked and not yet delivered, counted down part by part, as the budget frees
        them (a run's first parts landing make room for the next run while its last parts
        are still coming; counting the whole run until its future ends would overstate it)."""
        prefetch = kw.get("prefetch")
        with self._count:
            self.now += end - start if prefetch else 0
            self.peak = max(self.peak, self.now)
        self.asked.set()

        def part(offset, data):
            if prefetch:
                with self._count:
                    self.now -= len(data)
            on_part(offset, data)

        return super().fetch(f, start, end, part, **kw)


def make(files: dict[str, bytes], budget=8 * BS, listing=(), on_loader=None, **kw):
    fetch = CountingFetch(files)
    run_done = threading.Event()
    reader = BlockReader(MemoryBlockStore(BS), fetch, max_request_bytes=4 * BS, on_run_done=run_done.set)
    cfg = PrefetchConfig(block_size=BS, window_max=16 * BS, lookahead=32 * BS, **kw)
    pre = Prefetcher(reader, run_done, budget=budget, connections=4, config=cfg, files=listing,
                     on_loader=on_loader)
    return fetch, reader, pre


def read(pre, reader, f, offset, size, handle=1):
    """What the FUSE face does for a program's read."""
    data = reader.read(f, offset, size, exact=pre.plan(handle, f, offset, size))
    pre.follow(handle, f, offset, len(data))
    return data


def calls(fetch):
    return spans(fetch)


def held_blocks(reader, f) -> set[int]:
    """Blocks of ``f`` the store holds whole."""
    out = set()
    for s, e in reader.store.held(f.content_id):
        out.update(range(-(-s // BS), (e - 1) // BS + 1 if e == f.size else e // BS))
    return out


# -- in-flight budget ------------------------------------------------------------------------

def test_inflight_bytes_never_exceed_the_budget_and_everything_wanted_still_arrives():
    data = safetensors_bytes([5 * BS + 1000] * 12)
    f = remote("m.safetensors", data)
    fetch, reader, pre = make({f.path: data}, budget=6 * BS, load_run=6)
    ranges = tensor_ranges(data)
    pre.tensor_map(f)  # the header, before counting
    fetch.calls.clear()  # (after the header)
    fetch.peak = 0
    # a loader: jumps into tensor after tensor (no demand reads: only prefetch is in flight)
    for start, end in ranges[:6]:
        pre.follow(1, f, end - 4096, 4096)
    assert pre.drain(10)
    assert fetch.peak <= 6 * BS, fetch.peak
    assert reader.runs.inflight.max_net <= 6 * BS
    # the budget paced the downloads but dropped nothing: the rest of the file (a loader's
    # want) arrived in full although it is 10x the budget
    have = held_blocks(reader, f)
    missing = [i for i in range(ranges[0][0] // BS, (len(data) - 1) // BS + 1) if i not in have]
    assert not missing, missing
    assert len(fetch.calls) > 6  # many runs, each started when room was made
    pre.close()
    reader.close()


def test_budget_counts_demand_reads_already_in_flight():
    data = make_bytes(64 * BS, 1)
    f = remote("plain.bin", data)
    fetch, reader, pre = make({f.path: data}, budget=4 * BS)
    fetch.hold()
    demand = threading.Thread(target=reader.read, args=(f, 40 * BS, 4 * BS))  # 4 blocks, still downloading
    demand.start()
    assert fetch.asked.wait(10) and reader.covered(f, 40 * BS, 44 * BS)
    started, left = reader.prefetch(f, range(0, 8), 4 * BS)
    assert (started, left) == (0, 8)  # no room while the demand read fills the budget
    fetch.release()
    demand.join()
    assert reader.drain(10)
    started, left = reader.prefetch(f, range(0, 8), 4 * BS)
    assert (started, left) == (4, 4)
    pre.close()
    reader.close()


# -- single-flight -----------------------------------------------------------------------

def test_concurrent_readers_and_prefetch_of_one_block_cause_one_request():
    data = safetensors_bytes([20 * BS] * 3)
    f = remote("m.safetensors", data)
    fetch, reader, pre = make({f.path: data})
    pre.tensor_map(f)
    fetch.calls.clear()  # (after the header)
    start, end = tensor_ranges(data)[1]
    target = start + 10 * BS + 5  # well inside tensor 1: prefetch will want its block too
    barrier = threading.Barrier(8)
    results = []

    def one():
        barrier.wait()
        results.append(read(pre, reader, f, target, 100, handle=threading.get_ident()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pre.drain(10)
    assert results == [data[target : target + 100]] * 8
    block = target // BS
    covering = [(s, e) for _, s, e in calls(fetch) if s <= block * BS < e]
    assert len(covering) == 1, calls(fetch)
    # and no byte was fetched twice
    spans = sorted((s, e) for _, s, e in calls(fetch))
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
        got = read(pre, reader, fa, pos, 2 * BS)
        pos += len(got)
    assert pre.drain(10)
    assert {p for p, _, _ in calls(fetch)} == {"a.bin"}
    assert all(0 <= s < e <= len(a) for _, s, e in calls(fetch))
    assert sum(e - s for _, s, e in calls(fetch)) == len(a)  # every byte once
    pre.close()
    reader.close()


def test_reads_that_want_nothing_new_do_not_wake_the_pump(monkeypatch):
    data = make_bytes(64 * BS, 4)
    f = remote("c.bin", data)
    fetch, reader, pre = make({f.path: data})
    submitted = []
    real = pre.pump.submit
    monkeypatch.setattr(pre.pump, "submit", lambda item: submitted.append(item) or real(item))
    pos = 0
    while pos < len(data):  # cat, in requests of an eighth of a block: the window moves a block in eight
        pos += len(read(pre, reader, f, pos, BS // 8))
    assert pre.drain(10)
    reads = 8 * 64
    assert 0 < len(submitted) <= reads // 4, len(submitted)
    assert sum(e - s for _, s, e in calls(fetch)) == len(data)  # every byte once, as before
    assert len([c for c in calls(fetch)]) < 64  # and in blocks ahead of the reads, not read by read
    other = make_bytes(64 * BS, 5)
    g = remote("d.bin", other)
    fetch.contents[g.path] = other
    assert reader.read(g, 0, len(other)) == other  # held, read by netmount itself (not a program's read)
    submitted.clear()
    rng = random.Random(5)
    for _ in range(50):  # a program's random 4 KiB reads: jumps, each wanting no block
        off = rng.randrange(0, len(other) - 4096) // 4096 * 4096
        assert read(pre, reader, g, off, 4096) == other[off : off + 4096]
    assert len(submitted) <= 2, len(submitted)  # the file's first read (its bookkeeping starts there)
    pre.close()
    reader.close()


def test_a_loader_gets_the_whole_shard_it_reads_and_stays_inside_the_files():
    shard1 = safetensors_bytes([3 * BS + 100] * 8, seed=4)
    f1 = remote("model-00001-of-00001.safetensors", shard1)
    fetch, reader, pre = make({f1.path: shard1}, budget=64 * BS, load_run=4)
    for start, end in tensor_ranges(shard1)[-4:]:  # a loader at the shard's end
        read(pre, reader, f1, end - 1000, 1000)
    assert pre.drain(10)
    assert {p for p, _, _ in calls(fetch)} == {f1.path}
    assert all(0 <= s < e <= len(shard1) for _, s, e in calls(fetch))
    assert set(range((len(shard1) - 1) // BS + 1)) <= held_blocks(reader, f1)  # the rest, before it too
    pre.close()
    reader.close()


def test_a_loader_gets_the_tensors_before_the_one_it_reads_too():
    """Module order is not file order (q, k, v, o vs k, o, q, v): after a loader is seen, a
    read in a tensor also wants the tensors just before it, up to half the lookahead."""
    sizes = [2 * BS] * 40
    data = safetensors_bytes(sizes, seed=8)
    f = remote("model.safetensors", data)
    fetch, reader, pre = make({f.path: data}, budget=256 * BS, load_run=4)
    ranges = tensor_ranges(data)
    for k in (1, 2, 3, 4):  # tails of four tensors in a row: a loader
        read(pre, reader, f, ranges[k][1] - 1000, 1000)
    assert pre.drain(10)
    fetch.calls.clear()  # (after the header)
    start, end = ranges[38]
    read(pre, reader, f, start + BS, 100)
    assert pre.drain(10)
    behind = set(range((start - 16 * BS) // BS, start // BS))  # lookahead 32 blocks: 16 behind
    assert behind <= held_blocks(reader, f)  # (their order is tests/test_policy.py's)
    assert all(0 <= s < e <= len(data) for _, s, e in calls(fetch))
    pre.close()
    reader.close()


def test_a_loader_goes_ahead_into_the_next_shards_a_speculative_window_until_it_reads_them():
    """Issue 11: ahead into the shards the index names, in order; a shard the program read
    no tensor data from costs its header and ``speculative`` bytes (DeepSeek-V3's MTP shard,
    opened only for its header), and is wanted whole once the program reads its data."""
    shards = {f"model-0000{k}-of-00003.safetensors": safetensors_bytes([3 * BS + 100] * 6, seed=20 + k)
              for k in (1, 2, 3)}
    files = {p: remote(p, d) for p, d in shards.items()}
    f1, f2, f3 = files.values()
    seen = []
    fetch, reader, pre = make(shards, budget=256 * BS, listing=list(files.values()), on_loader=seen.append,
                              load_run=4, speculative=2 * BS)
    read(pre, reader, f1, 0, 8)
    assert pre.drain(10)
    assert {p for p, _, _ in calls(fetch)} == {f1.path}  # no loader yet: nothing else
    for start, end in tensor_ranges(shards[f1.path])[:4]:  # a loader at work in shard 1
        read(pre, reader, f1, end - 1000, 1000)
    assert pre.drain(10)
    assert seen == [""]  # the folder, once
    for f in (f2, f3):
        got = [(s, e) for p, s, e in calls(fetch) if p == f.path]
        data0 = tensor_ranges(shards[f.path])[0][0]
        assert got and max(e for _, e in got) <= (data0 // BS + 3) * BS, got  # header + 2 blocks, at most
        assert data0 // BS + 1 in held_blocks(reader, f)
    # the program reads tensor data of shard 2: now all of it comes
    start, end = tensor_ranges(shards[f2.path])[2]
    read(pre, reader, f2, end - 1000, 1000, handle=2)
    assert pre.drain(10)
    assert set(range((len(shards[f2.path]) - 1) // BS + 1)) <= held_blocks(reader, f2)
    assert max(e for p, s, e in calls(fetch) if p == f3.path) <= 8 * BS  # shard 3 still only its window
    assert all(0 <= s < e <= len(shards[p]) for p, s, e in calls(fetch))
    pre.close()
    reader.close()


def test_tensors_read_whole_in_every_shard_fetch_no_shard():
    """Issue 11: partial stays partial — two tensors read whole in each shard (two torch
    threads each: faults at its start and its middle, read around by the kernel) make no
    loader and download no shard.  (Issue 3's rule, four tensors jumped into, did.)"""
    shards = {f"model-0000{k}-of-00003.safetensors": safetensors_bytes([4 * BS] * 12, seed=30 + k)
              for k in (1, 2, 3)}
    files = {p: remote(p, d) for p, d in shards.items()}
    seen = []
    fetch, reader, pre = make(shards, budget=256 * BS, listing=list(files.values()), on_loader=seen.append)
    for n, (p, f) in enumerate(files.items()):
        read(pre, reader, f, 0, 8, handle=n)
        for k in (3, 8):
            start, end = tensor_ranges(shards[p])[k]
            for pos in (start, (start + end) // 2):  # a fault read around (128 KiB), then on
                for q in range(pos - BS, min(end, pos + 2 * BS), 2 * BS):
                    read(pre, reader, f, q, 2 * BS, handle=n)
    assert pre.drain(10)
    assert seen == []
    for p in files:
        got = sum(e - s for q, s, e in calls(fetch) if q == p)
        assert got <= 2 * 4 * BS + 8 * BS, (p, got)  # its 2 tensors and a little, never its 48 blocks
    pre.close()
    reader.close()


def test_one_tensor_read_page_by_page_fetches_that_tensor_only():
    sizes = [BS // 2, 3 * BS, 2 * BS + 5, 24 * BS + 100, 3 * BS, 40 * BS]
    data = safetensors_bytes(sizes, seed=6)
    f = remote("m.safetensors", data)
    fetch, reader, pre = make({f.path: data}, budget=64 * BS)
    pre.tensor_map(f)
    fetch.calls.clear()  # (after the header)
    start, end = tensor_ranges(data)[3]
    # the kernel reads around the fault at its first page (R either side), then on in windows
    page = start - start % 4096
    pos = page - BS
    while pos < end:
        read(pre, reader, f, pos, 2 * BS)
        pos += 2 * BS
    assert pre.drain(10)
    first, last = (page - BS) // BS, (pos - 1) // BS
    fetched = {i for _, s, e in calls(fetch) for i in range(s // BS, (e - 1) // BS + 1)}
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
    fetch = MemoryFetcher({f.path: data})
    fetch.hold()
    reader = BlockReader(MemoryBlockStore(1 << 20), fetch)
    n = struct.unpack("<Q", data[:8])[0]
    results = []
    threads = [threading.Thread(target=lambda: results.append(reader.read(f, 0, 128 << 10)))
               for _ in range(4)]
    for t in threads:
        t.start()
    fetch.release()
    for t in threads:
        t.join()
    assert results == [data[: 128 << 10]] * 4
    assert reader.read(f, 8, n) == data[8 : 8 + n]
    assert calls(fetch) == [(f.path, 0, 128 << 10)]  # one request, 128 KiB, for a header of ~200 B
    # past the head, the block path as usual (and block 0's rest when a read needs it: the
    # head is held, never fetched twice)
    assert reader.read(f, (1 << 20) + 5, 100) == data[(1 << 20) + 5 : (1 << 20) + 105]
    assert reader.read(f, 100_000, 100_000) == data[100_000:200_000]
    assert calls(fetch)[1:] == [(f.path, 1 << 20, 2 << 20), (f.path, 128 << 10, 1 << 20)]
    # block 0 is held whole now: header reads come from the store, a new reader's too
    assert reader.drain(10)
    again = BlockReader(reader.store, fetch)
    assert again.read(f, 0, 4096) == data[:4096]
    assert len(fetch.calls) == 3
    again.close()
    reader.close()


def test_the_head_grows_with_the_reads_of_the_header():
    """At a 32 KiB readahead a safe_open's fault reads [0, 32 KiB): that is fetched, not the
    whole 128 KiB head; a later read in the head (a longer header) fetches the rest of it."""
    data = safetensors_bytes([700_000, 900_000, 1_500_000], seed=7)
    f = remote("m.safetensors", data)
    fetch = MemoryFetcher({f.path: data})
    reader = BlockReader(MemoryBlockStore(1 << 20), fetch)
    assert reader.read(f, 0, 32 << 10) == data[: 32 << 10]
    assert reader.read(f, 8, 100) == data[8:108]  # held
    assert calls(fetch) == [(f.path, 0, 32 << 10)]
    assert reader.read(f, 32 << 10, 32 << 10) == data[32 << 10 : 64 << 10]
    assert reader.read(f, 5000, 1000) == data[5000:6000]
    assert reader.read(f, 96 << 10, 32 << 10) == data[96 << 10 : 128 << 10]
    assert calls(fetch) == [(f.path, 0, 32 << 10), (f.path, 32 << 10, 128 << 10)]
    reader.close()


def test_head_fetch_failure_fails_the_read_and_the_next_read_retries():
    import pytest

    from netmount.core.errors import FetchError

    data = safetensors_bytes([2 << 20], seed=8)
    f = remote("m.safetensors", data)
    fetch = MemoryFetcher({f.path: data})
    reader = BlockReader(MemoryBlockStore(1 << 20), fetch)
    fetch.fail()
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
        assert read(pre, reader, f, start, end - start) == data[start:end]  # the file's first read
        assert pre.drain(10)
    assert not caplog.records, [r.getMessage()[:200] for r in caplog.records]
    assert pre.maps.get(f.content_id).tmap is not None
    pre.close()
    reader.close()
