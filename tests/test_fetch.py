"""What is RangeFetcher's own, beyond the contract (tests/test_fetch_contract.py): how it
uses connections and cuts requests, against the test hub in this process (no FUSE, no mmap:
a thread is fine), and its pure helpers (cuts, pieces, status, Retry-After, expiry)."""

from __future__ import annotations

import time as _time

import pytest

from netmount.core.blocks import PAGE
from netmount.core.errors import FetchError
from netmount.dev.testhub import TestHub
from netmount.remote.contract import fetch_bytes, pieces
from netmount.remote.fetch import RangeFetcher
from netmount.remote.hub import RemoteFile
from netmount.remote.pieces import SPLIT_MAX, SPLIT_PIECE, Abandoned, Pieces, split_cuts
from netmount.remote.ranged import Fatal, Retry, check_status, retry_after

from conftest import within, write_plain_repo

K, M = 1 << 10, 1 << 20


def data_bin(size: int) -> RemoteFile:
    return RemoteFile("data.bin", size, "cid", lfs=True)


def test_prefetch_leaves_connections_free_for_reads(tmp_path):
    """Prefetch requests hold at most ``prefetch_connections``; a read issued behind a
    queue of them starts at once instead of waiting for one to finish."""
    write_plain_repo(tmp_path)
    size = (tmp_path / "tests" / "plain" / "data.bin").stat().st_size
    with TestHub(tmp_path, conn_mbps=8) as hub:  # 1 MB/s per connection: 256 KiB take ~0.25 s
        sha = hub.commit_sha("tests/plain")
        fetcher = RangeFetcher(hub.url, "tests/plain", sha, connections=4).start()
        try:
            assert fetcher.prefetch_connections == 3
            part = 256 << 10
            f = data_bin(size)
            pre = [fetch_bytes(fetcher, f, i * part, (i + 1) * part, prefetch=True) for i in range(9)]
            read = fetch_bytes(fetcher, f, size - 1000, size)
            assert len(read.result(timeout=60)) == 1000
            assert all(len(p.result(timeout=60)) == part for p in pre)
        finally:
            fetcher.close()
        ranges = [r for r in hub.requests("cdn", "GET")]
    pre_reqs = [r for r in ranges if r.range != f"bytes={size - 1000}-{size - 1}"]
    (read_req,) = [r for r in ranges if r.range == f"bytes={size - 1000}-{size - 1}"]
    assert len(pre_reqs) == 9
    events = sorted([(r.t_start, 1) for r in pre_reqs] + [(r.t_end, -1) for r in pre_reqs])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    assert peak <= 3  # never all four connections
    assert read_req.t_start < min(r.t_end for r in pre_reqs)  # the read did not queue


def test_parts_arrive_in_order_with_the_right_bytes_and_a_reset_is_retried(tmp_path):
    """``on_part`` gets each piece of a checked 206 as it comes; a body cut midway is
    retried from the first piece not handed out, and every piece handed out is the file's
    own bytes, once."""
    from netmount.dev.testhub.faults import FaultRules

    write_plain_repo(tmp_path)
    data = (tmp_path / "tests" / "plain" / "data.bin").read_bytes()
    with TestHub(tmp_path) as hub:
        rules = FaultRules(hub)
        hub.faults.append(rules)
        rules.add("reset", times=1)  # half the body, then a TCP reset
        sha = hub.commit_sha("tests/plain")
        fetcher = RangeFetcher(hub.url, "tests/plain", sha, connections=2, backoff=0.01).start()
        try:
            seen = []
            start, end, part = 100 << 10, len(data) - 5, 1 << 20
            got = fetcher.fetch(data_bin(len(data)), start, end, lambda o, b: seen.append((o, b)),
                                part_size=part, prefetch=True).result(timeout=60)  # one request
        finally:
            fetcher.close()
        assert len(hub.requests("cdn", "GET")) == 2 and rules.rules()[0]["hits"] == 1  # reset, retry
    assert got == end - start  # streamed: the count, not the bytes again
    assert all(b == data[o : o + len(b)] for o, b in seen)  # never a wrong byte
    assert [o for o, _ in seen] == list(range(start, end, part))  # a prefix, then the rest: in order, once


def test_a_waited_for_request_goes_out_in_parallel_pieces_and_a_failed_piece_is_retried(tmp_path):
    from netmount.dev.testhub.faults import FaultRules

    write_plain_repo(tmp_path)
    data = (tmp_path / "tests" / "plain" / "data.bin").read_bytes()
    with TestHub(tmp_path) as hub:
        rules = FaultRules(hub)
        hub.faults.append(rules)
        rules.add("reset", times=1, skip=2)  # the third piece is cut, then retried
        sha = hub.commit_sha("tests/plain")
        fetcher = RangeFetcher(hub.url, "tests/plain", sha, connections=8, backoff=0.01).start()
        try:
            seen = []
            start, end = 3 << 20, len(data)  # 2 MiB + 12345: two whole 1 MiB parts and a tail
            f = data_bin(len(data))
            got = fetcher.fetch(f, start, end, lambda o, b: seen.append((o, b)), part_size=1 << 20).result(timeout=60)
            small = fetch_bytes(fetcher, f, 0, 1 << 20).result(timeout=60)  # one block
        finally:
            fetcher.close()
        gets = hub.requests("cdn", "GET")
    assert got == end - start and small == data[: 1 << 20]
    assert b"".join(b for _, b in sorted(seen)) == data[start:end]
    assert all(b == data[o : o + len(b)] for o, b in seen)
    assert {o for o, _ in seen} == {start, start + (1 << 20), start + (2 << 20)}
    pieces = [r.range for r in gets]
    assert len(pieces) == 3 + 1 + SPLIT_MAX  # 3 part-aligned pieces + the retry, 4 for the block
    assert f"bytes=0-{SPLIT_PIECE - 1}" in pieces


def test_a_block_and_a_short_last_block_go_out_split_and_come_back_as_two_pieces(tmp_path):
    """The EIO of issue 10 at the fetcher: a demand run of one full block and the short last
    block is cut on pages into SPLIT_MAX sub-requests, and still handed out as exactly two
    pieces, the block and the short block, never as one joined piece."""
    write_plain_repo(tmp_path)
    data = (tmp_path / "tests" / "plain" / "data.bin").read_bytes()  # 5 MiB + 12345
    start, end = 4 * M, len(data)
    with TestHub(tmp_path) as hub:
        fetcher = RangeFetcher(hub.url, "tests/plain", hub.commit_sha("tests/plain")).start()
        try:
            seen = []
            got = fetcher.fetch(data_bin(len(data)), start, end, lambda o, b: seen.append((o, b)),
                                part_size=M).result(timeout=60)
        finally:
            fetcher.close()
        ranges = sorted(r.range for r in hub.requests("cdn", "GET"))
    assert got == end - start
    assert sorted((o, len(b)) for o, b in seen) == [(start, M), (start + M, 12345)]
    assert all(b == data[o : o + len(b)] for o, b in seen)
    assert len(ranges) == SPLIT_MAX  # the split is still there: the pieces are put back together


def test_a_body_cut_mid_piece_resumes_at_the_first_piece_not_delivered(tmp_path):
    """The answer stalls halfway into its body (the middle of the third of five pieces): the
    retry asks only for the rest, from the third piece on, and every piece goes out once."""
    from netmount.dev.testhub.faults import FaultRules

    write_plain_repo(tmp_path)
    data = (tmp_path / "tests" / "plain" / "data.bin").read_bytes()
    start, part = 100 * K, 64 * K
    end = start + 5 * part
    with TestHub(tmp_path) as hub:
        rules = FaultRules(hub)
        hub.faults.append(rules)
        rules.add("stall", fraction=0.5, times=1)  # 2.5 pieces, then silence
        fetcher = RangeFetcher(hub.url, "tests/plain", hub.commit_sha("tests/plain"), timeout=1.0,
                               backoff=0.01).start()
        try:
            seen = []
            got = fetcher.fetch(data_bin(len(data)), start, end, lambda o, b: seen.append((o, bytes(b))),
                                part_size=part, prefetch=True).result(timeout=60)
        finally:
            fetcher.close()
        ranges = [r.range for r in hub.requests("cdn", "GET")]
    assert got == end - start
    assert ranges == [f"bytes={start}-{end - 1}", f"bytes={start + 2 * part}-{end - 1}"]
    assert sorted(o for o, _ in seen) == list(range(start, end, part))  # each once
    assert all(b == data[o : o + len(b)] for o, b in seen)


def test_abort_fails_a_fetch_blocked_in_recv_at_once(tmp_path):
    """A body that stalls for an hour, a fetch timeout of a minute: ``abort`` cuts the socket
    the fetch thread is blocked on, and the fetch fails at once, not after the timeout."""
    import threading

    from netmount.dev.testhub.faults import FaultRules

    write_plain_repo(tmp_path)
    size = (tmp_path / "tests" / "plain" / "data.bin").stat().st_size
    with TestHub(tmp_path) as hub:
        rules = FaultRules(hub)
        hub.faults.append(rules)
        rules.add("stall", fraction=0.5)
        fetcher = RangeFetcher(hub.url, "tests/plain", hub.commit_sha("tests/plain"), timeout=60.0).start()
        try:
            reading = threading.Event()  # a piece came: the thread is in the body, in recv_into
            run = fetcher.fetch(data_bin(size), 0, 2 * M, lambda o, b: reading.set(), part_size=64 * K,
                                prefetch=True)
            assert reading.wait(60)
            within(5, fetcher.abort)  # the bound only catches a hang: it waits for the fetch to end
            assert run.done()
            with pytest.raises(FetchError):
                run.result()
            with pytest.raises(FetchError, match="stopping"):  # and every later one at once
                fetcher.fetch(data_bin(size), 0, 10, lambda o, b: None)
        finally:
            fetcher.close()


def test_one_fetcher_serves_files_of_two_repos(tmp_path):
    """--hf-cache's fetcher (issue 22): no repo of its own, every file names its repo and
    commit.  Two repos with the same id and paths but different bytes (a model and a dataset
    ``tests/plain``): each file gets its own repo's bytes, each (repo, path) is resolved once."""
    import os
    import shutil

    from netmount.remote.hub import RepoRef

    model = write_plain_repo(tmp_path)
    dataset = tmp_path / "datasets" / "tests" / "plain"
    shutil.copytree(model, dataset)
    (dataset / "data.bin").write_bytes(os.urandom(3 * M + 5))
    (dataset / "config.json").write_text('{"kind": "dataset"}')
    with TestHub(tmp_path) as hub:
        refs = {"model": RepoRef("tests/plain", "model", hub.commit_sha("tests/plain")),
                "dataset": RepoRef("tests/plain", "dataset", hub.commit_sha("tests/plain", "dataset"))}
        folders = {"model": model, "dataset": dataset}
        fetcher = RangeFetcher(hub.url).start()  # no repo of its own
        try:
            for _round in range(2):
                for kind, ref in refs.items():
                    for path, lfs in (("data.bin", True), ("config.json", False)):
                        want = (folders[kind] / path).read_bytes()
                        f = RemoteFile(path, len(want), f"{kind}-{path}", lfs=lfs, repo=ref)
                        end = min(len(want), M + 17)
                        assert fetch_bytes(fetcher, f, 0, end).result(timeout=60) == want[:end], (kind, path)
            with pytest.raises(FetchError, match="names no repo"):
                fetcher.fetch(data_bin(10), 0, 10, lambda o, d: None)
        finally:
            fetcher.close()
        heads = [r.path for r in hub.requests("hub", "HEAD")]
    assert sorted(heads) == sorted(["/tests/plain/resolve/%s/data.bin" % refs["model"].sha,
                                    "/tests/plain/resolve/%s/config.json" % refs["model"].sha,
                                    "/datasets/tests/plain/resolve/%s/data.bin" % refs["dataset"].sha,
                                    "/datasets/tests/plain/resolve/%s/config.json" % refs["dataset"].sha])


class _SkewedTime:
    """A module's ``time`` whose wall clock the test moves forward (``time.time`` plus an
    offset; ``monotonic`` and the rest are the real ones): a URL's life passes at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return _time.time() + self.offset

    def __getattr__(self, name):
        return getattr(_time, name)


def test_a_signed_url_is_reused_while_valid_and_resolved_again_before_it_expires(tmp_path, monkeypatch):
    """One resolve serves every request while the URL is fresh; once its life is nearly
    over (by the fetcher's clock) the next request resolves again first, so it never meets
    the CDN's 403.  The fetcher and the hub share one fake wall clock (same process)."""
    import netmount.dev.testhub.server as hub_server
    import netmount.remote.resolver as resolver_module

    clock = _SkewedTime()
    monkeypatch.setattr(resolver_module, "time", clock)
    monkeypatch.setattr(hub_server, "time", clock)
    write_plain_repo(tmp_path)
    data = (tmp_path / "tests" / "plain" / "data.bin").read_bytes()
    f = data_bin(len(data))
    with TestHub(tmp_path, url_ttl=60) as hub:
        fetcher = RangeFetcher(hub.url, "tests/plain", hub.commit_sha("tests/plain")).start()

        def read(offset: int) -> None:
            assert fetch_bytes(fetcher, f, offset, offset + 4096).result(timeout=60) == data[offset:offset + 4096]

        def resolves() -> int:
            return len(hub.requests("hub", "HEAD", "data.bin"))

        try:
            read(0)
            clock.offset = 30  # half its life: still used
            read(M)
            assert resolves() == 1
            clock.offset = 61  # past Expires: the old URL would get a 403 now
            read(2 * M)
            assert resolves() == 2
            read(3 * M)  # the new URL, reused
            assert resolves() == 2
        finally:
            fetcher.close()
        gets = hub.requests("cdn", "GET")
    assert len(gets) == 4 and all(r.status == 206 for r in gets), [r.status for r in gets]


# -- pure helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize("start, end, part, prefetch, want", [
    (0, 2 * SPLIT_PIECE - 1, 0, False, [0, 2 * SPLIT_PIECE - 1]),  # too small to split
    (0, 4 * M, M, True, [0, 4 * M]),  # prefetch: one request
    (0, M, 0, False, [0, 256 * K, 512 * K, 768 * K, M]),  # pages: SPLIT_MAX of them
    (0, 2 * SPLIT_PIECE, 0, False, [0, SPLIT_PIECE, 2 * SPLIT_PIECE]),  # pieces of SPLIT_PIECE at least
    (0, 1_139_104, M, False, [0, 286_720, 573_440, 860_160, 1_139_104]),  # one part + a short one: pages
    (3 * M, 5 * M + 12345, M, False, [3 * M, 4 * M, 5 * M, 5 * M + 12345]),  # on part edges
    (0, 8 * M, M, False, [0, 2 * M, 4 * M, 6 * M, 8 * M]),  # SPLIT_MAX runs of whole parts
    (100, 100 + 2 * M, M, False, [100, 100 + M, 100 + 2 * M]),  # parts count from start
])
def test_split_cuts(start, end, part, prefetch, want):
    assert split_cuts(start, end, part, prefetch) == want


@pytest.mark.parametrize("start, end, part", [
    (0, M, 0), (0, 1_139_104, M), (5, 5 + 3 * M + 77, M), (0, 9 * M + 4321, 64 * K), (0, 600 * K, 4 * M),
    (4096, 4096 + 2 * SPLIT_PIECE + 1, 100_000),
])
def test_split_cuts_cover_the_range_and_respect_the_limits(start, end, part):
    for prefetch in (False, True):
        cuts = split_cuts(start, end, part, prefetch)
        assert cuts[0] == start and cuts[-1] == end and cuts == sorted(set(cuts))
        assert len(cuts) - 1 <= (1 if prefetch else SPLIT_MAX)
        assert all((c - start) % PAGE == 0 or part and (c - start) % part == 0 for c in cuts[1:-1])


@pytest.mark.parametrize("start, end, part, cuts", [
    (0, 1_139_104, M, [0, 286_720, 573_440, 860_160, 1_139_104]),
    (10, 10 + 3 * M + 5, M, [10, 1000, 2 * M, 3 * M + 15]),
    (0, 5000, 0, [0, 1, 4999, 5000]),
])
def test_pieces_are_filled_in_their_own_buffers_and_handed_out_once(start, end, part, cuts):
    """Sub-requests cut the pieces anywhere and fill their segments in any order, straight
    into the pieces' buffers; each piece goes out once, when complete, as that very buffer
    (a bytearray, not a copy); a resumed sub-request starts at its first segment not filled."""
    src = bytes(range(256)) * (-(-end // 256))
    out = []
    sink = Pieces(start, end, part, lambda o, d: out.append((o, d)))
    subs = list(zip(cuts, cuts[1:]))
    segs = [s for a, b in subs for s in sink.segments(a, b)]
    assert [a for a, _ in segs] == sorted({a for a, _ in segs})
    a0, b0 = subs[0]
    first = sink.segments(a0, b0)[0]
    for lo, hi in [first, *reversed(segs[1:])]:  # in any order
        view = sink.buffer(lo, hi)
        view[:] = src[lo:hi]
        sink.filled(lo, hi)
        if (lo, hi) == first:  # a retry of the first sub-request resumes after what it filled
            assert sink.first_missing(a0, b0) == (first[1] if first[1] < b0 else b0)
    assert sink.first_missing(a0, b0) == b0
    assert sorted((o, len(d)) for o, d in out) == [(a, b - a) for a, b in pieces(start, end, part)]
    assert all(d == src[o : o + len(d)] and type(d) is bytearray for o, d in out)
    sink.filled(*first)  # filled again (cannot happen on resume): not handed out twice
    assert len(out) == len(pieces(start, end, part))


def test_pieces_closed_hand_out_nothing_more():
    out = []
    sink = Pieces(0, 2 * M, M, lambda o, d: out.append(o))
    sink.buffer(0, M)[:] = b"a" * M
    sink.filled(0, M)
    sink.close()
    for call in (lambda: sink.buffer(M, 2 * M), lambda: sink.filled(M, 2 * M), lambda: sink.first_missing(0, 2 * M)):
        with pytest.raises(Abandoned):
            call()
    assert out == [0]


def testcheck_status():
    for status in (200, 206, 302):
        check_status(status, {})
    for status in (408, 429, 500, 502, 503, 504):
        with pytest.raises(Retry):
            check_status(status, {})
    with pytest.raises(Retry) as retry:
        check_status(503, {"Retry-After": "7"})
    assert retry.value.after == 7.0
    for status in (400, 401, 403, 404, 410, 416, 451):
        with pytest.raises(Fatal):
            check_status(status, {})
    with pytest.raises(Fatal, match=r"HTTP 401 \(GatedRepo\)"):
        check_status(401, {"X-Error-Code": "GatedRepo"})


@pytest.mark.parametrize("value, want", [
    (None, None), ("", None), ("3", 3.0), (" 1.5 ", 1.5), ("0", 0.0), ("600", 60.0),  # capped
    ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-1", None), ("soon", None),
])
def test_retry_after(value, want):
    assert retry_after(value) == want


def test_expiry():
    """A signed URL is used until a margin before its ``Expires=`` (see also test_faults)."""
    from netmount.remote.resolver import EXPIRY_MARGIN
    from netmount.remote.resolver import expiry as _expiry

    assert _expiry("http://cdn/x?expires=500&sig=1", now=0) == 500 - EXPIRY_MARGIN  # lower case too
    assert _expiry("http://cdn/x?Expires=100", now=90) == 100 - 10 / 4  # short-lived: a quarter
    assert _expiry("http://cdn/x?Expires=soon", now=7) == 7 + 3600  # not a time: an hour
    assert _expiry("http://hub/resolve/x", now=7) == 7 + 3600


def test_a_bad_range_is_refused_before_any_request():
    fetcher = RangeFetcher("http://127.0.0.1:9", "a/b", "0" * 40)  # never started: no request
    with pytest.raises(FetchError):
        fetcher.fetch(data_bin(10), 0, 11, lambda o, d: None)


def test_buffers_are_used_again_only_once_nobody_holds_them():
    from netmount.remote.buffers import Buffers

    pool = Buffers(keep_bytes=3 * K)
    held = [pool.take(K) for _ in range(3)]
    assert len({id(b) for b in held}) == 3
    extra = pool.take(K)  # all three held, the pool full: a new one, not kept
    assert all(extra is not b for b in held)
    view = memoryview(held[0])[10:20]  # a view holds its buffer too
    del held[0]
    assert all(pool.take(K) is not b for b in (*held, extra))  # still viewed: not handed out
    freed = id(view.obj)
    del view
    assert id(pool.take(K)) == freed  # let go of: used again
    assert len(pool.take(2 * K)) == 2 * K  # another size: a new buffer (the pool is full)


def test_pieces_a_consumer_keeps_are_never_written_again(tmp_path):
    """Buffers are used again, but never one a consumer still holds: pieces kept from a first
    fetch keep their bytes through many later fetches of other bytes."""
    write_plain_repo(tmp_path)
    data = (tmp_path / "tests" / "plain" / "data.bin").read_bytes()
    f = data_bin(len(data))
    with TestHub(tmp_path) as hub:
        fetcher = RangeFetcher(hub.url, "tests/plain", hub.commit_sha("tests/plain"), connections=2).start()
        try:
            kept = []
            fetcher.fetch(f, 0, 2 * M, lambda o, b: kept.append((o, b)), part_size=256 * K).result(timeout=60)
            for n in range(8):
                start = (2 + n % 3) * M
                fetcher.fetch(f, start, start + M, lambda o, b: None, part_size=256 * K,
                              prefetch=n % 2 == 0).result(timeout=60)
        finally:
            fetcher.close()
    assert len(kept) == 8 and all(b == data[o : o + len(b)] for o, b in kept)


def test_lanes_run_a_demand_job_at_once_beside_a_full_set_of_prefetch_jobs():
    """Prefetch jobs run on at most ``prefetch_threads`` threads, the others wait queued; a
    demand job queued after them runs at once on a free thread."""
    import threading

    from netmount.remote.lanes import Lanes

    lanes = Lanes(3, 2)
    lanes.start()
    gate, cond = threading.Event(), threading.Condition()
    running, peak = [], [0]

    def job(name):
        def run():
            with cond:
                running.append(name)
                peak[0] = max(peak[0], sum(n.startswith("p") for n in running))
                cond.notify_all()
            gate.wait(60)
            with cond:
                running.remove(name)
        return run

    try:
        for n in range(5):
            lanes.submit(job(f"p{n}"), prefetch=True)
        with cond:
            assert cond.wait_for(lambda: len(running) == 2, 60)
        lanes.submit(job("demand"))
        with cond:
            assert cond.wait_for(lambda: "demand" in running, 60)  # while two prefetch jobs hold theirs
            assert sorted(running) == ["demand", "p0", "p1"]
        gate.set()
        assert lanes.idle(60)
        assert peak[0] == 2
    finally:
        gate.set()
        assert lanes.close(60)
