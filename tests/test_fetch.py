"""RangeFetcher against the test hub in this process (no FUSE, no mmap: a thread is fine)."""

from __future__ import annotations

from netmount.dev.testhub import TestHub
from netmount.remote.fetch import RangeFetcher

from conftest import write_plain_repo


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
            pre = [fetcher.submit("data.bin", i * part, (i + 1) * part, size, prefetch=True) for i in range(9)]
            read = fetcher.submit("data.bin", size - 1000, size, size)
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
    retried, the pieces come again, and every piece handed out is the file's own bytes."""
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
            got = fetcher.submit("data.bin", start, end, len(data), prefetch=True,  # one request
                                 on_part=lambda o, b: seen.append((o, b)), part_size=part).result(timeout=60)
        finally:
            fetcher.close()
        assert len(hub.requests("cdn", "GET")) == 2 and rules.rules()[0]["hits"] == 1  # reset, retry
    assert got == end - start  # streamed: the count, not the bytes again
    assert all(b == data[o : o + len(b)] for o, b in seen)  # never a wrong byte
    offsets = [o for o, _ in seen]
    full = list(range(start, end, part))
    assert offsets[-len(full):] == full  # the successful try: every piece, in order
    assert set(offsets) == set(full)  # the reset try handed out a prefix of them, if any


def test_a_waited_for_request_goes_out_in_parallel_pieces_and_a_failed_piece_is_retried(tmp_path):
    from netmount.dev.testhub.faults import FaultRules
    from netmount.remote.fetch import SPLIT_MAX, SPLIT_PIECE

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
            got = fetcher.submit("data.bin", start, end, len(data), on_part=lambda o, b: seen.append((o, b)),
                                 part_size=1 << 20).result(timeout=60)
            small = fetcher.submit("data.bin", 0, 1 << 20, len(data)).result(timeout=60)  # one block
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
