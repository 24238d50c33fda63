"""One conformance suite for the fetch contract (``netmount/remote/contract.py``), run
against both fetchers: ``MemoryFetcher`` and ``RangeFetcher`` talking to the real test hub
(in this process: no FUSE, no mmap, so a hub thread is fine).

What every fetcher must do: hand ``[start, end)`` to ``on_part`` in exactly the contract's
pieces (never joined, never split otherwise: the short last block included), only with the
source's bytes, and resolve to the int ``end - start``; a bad range raises ``FetchError`` at
once, a failure raises it from the future, and a retry midway delivers pieces again.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections import Counter

import pytest

from netmount.core.errors import FetchError
from netmount.remote.contract import fetch_bytes, pieces
from netmount.remote.hub import RemoteFile, RepoRef

K, M = 1 << 10, 1 << 20
REPO = "tests/contract"
OTHER = "tests/contract-other"  # the same paths, other bytes: files name their repo (issue 22)
SIZES = {
    "model-00002-of-00010.safetensors": 1_139_104,  # the EIO file of issue 10
    "big.bin": 9 * M + 4321,  # full blocks and a short last one at 64K, 1M and 4M
    "small.txt": 3000,  # a regular (non-LFS) file: served by the hub's /resolve/ itself
}
WAIT = 60  # seconds: only a bound for a hung test, never a timing assert


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("contractroot")
    out: dict[str, dict[str, bytes]] = {}
    for name in (REPO, OTHER):
        (root / name).mkdir(parents=True)
        out[name] = {}
        for path, size in SIZES.items():
            out[name][path] = os.urandom(size)
            (root / name / path).write_bytes(out[name][path])
    return root, out


@pytest.fixture(scope="module")
def testhub(sources):
    from netmount.dev.testhub import TestHub
    from netmount.dev.testhub.faults import FaultRules

    with TestHub(sources[0]) as hub:
        rules = FaultRules(hub)
        hub.faults.append(rules)
        hub.rules = rules
        yield hub


class MemoryBackend:
    """``MemoryFetcher`` and its faults on demand."""

    def __init__(self, sources: dict[str, dict[str, bytes]]):
        from netmount.remote.memory import MemoryFetcher

        self.other = RepoRef(OTHER, "model", "b" * 40)
        self.fetcher = MemoryFetcher({**sources[REPO], **{(self.other, p): d for p, d in sources[OTHER].items()}})

    def fail(self, how: str) -> None:
        self.fetcher.fail(1, after_pieces=0 if how == "at once" else 1)

    def retry_midway(self) -> None:
        self.fetcher.retry_midway(1)

    def retried(self) -> bool:
        return True  # MemoryFetcher.retry_midway always starts over

    redelivers = True  # its retry starts over: the pieces of the first try come again

    def close(self) -> None:
        self.fetcher.close()


class RealBackend:
    """``RangeFetcher`` against the test hub, with the hub's fault rules."""

    def __init__(self, hub):
        from netmount.remote.fetch import RangeFetcher

        self.hub = hub
        hub.rules.clear()
        self.other = RepoRef(OTHER, "model", hub.commit_sha(OTHER))
        self.fetcher = RangeFetcher(hub.url, REPO, hub.commit_sha(REPO), connections=8,
                                    max_retries=2, backoff=0.01).start()

    def fail(self, how: str) -> None:
        if how == "at once":  # a 404 is final: no retry
            self.hub.rules.add("status", status=404, server=None)
        else:  # a 500 is retried, and keeps coming: FetchError after the retries
            self.hub.rules.add("status", status=500, server=None)

    def retry_midway(self) -> None:
        # half the body, then silence until the client gives up: the pieces of that half
        # are surely delivered before the retry (a reset could lose them in the socket)
        self.fetcher.settings.timeout = 1.0
        self.hub.rules.add("stall", server=None, times=1)

    def retried(self) -> bool:
        return self.hub.rules.rules()[0]["hits"] == 1

    redelivers = False  # a retry resumes at the first piece not delivered

    def close(self) -> None:
        self.fetcher.close()
        self.hub.rules.clear()


@pytest.fixture(params=["memory", "real"])
def backend(request, sources):
    if request.param == "memory":
        b = MemoryBackend(sources[1])
    else:
        b = RealBackend(request.getfixturevalue("testhub"))
    b.src = sources[1][REPO]
    b.files = {p: RemoteFile(p, len(d), f"cid-{p}", lfs=p.endswith(".bin")) for p, d in b.src.items()}
    yield b
    b.close()


def run(backend, path: str, start: int, end: int, part_size: int = 0, prefetch: bool = False):
    """Fetch, collect every ``on_part`` call, and check the contract's invariants that hold
    whatever happened: each call is a whole piece of the contract, with the source's bytes,
    on a thread of the fetcher's, before the future resolves.  Returns (future, the calls as
    (offset, length))."""
    src = backend.src[path]
    want = pieces(start, end, part_size)
    calls, bad, fut = [], [], []
    lock = threading.Lock()

    def on_part(offset: int, data: bytes) -> None:
        with lock:
            calls.append((offset, len(data)))
            if (offset, offset + len(data)) not in want:
                bad.append(f"piece [{offset}, {offset + len(data)}) is not one of the contract's")
            elif data != src[offset : offset + len(data)]:
                bad.append(f"wrong bytes in [{offset}, {offset + len(data)})")
            if threading.current_thread() is threading.main_thread():
                bad.append("on_part ran on the caller's thread")
            if fut and fut[0].done():
                bad.append(f"piece [{offset}, {offset + len(data)}) after the future resolved")

    fut.append(backend.fetcher.fetch(backend.files[path], start, end, on_part, part_size=part_size,
                                     prefetch=prefetch))
    assert isinstance(fut[0], concurrent.futures.Future)
    try:
        fut[0].exception(timeout=WAIT)
    finally:
        assert bad == []
    return fut[0], calls


def delivered_once_each(calls, start, end, part_size) -> bool:
    return sorted(calls) == [(a, b - a) for a, b in pieces(start, end, part_size)]


EOF_CASES = [  # (path, start, end, part_size): runs that end at EOF in a short last block
    (path, start, SIZES[path], bs)
    for bs in (64 * K, M, 4 * M)
    for path in ("model-00002-of-00010.safetensors", "big.bin")
    for start in {0, max(0, (SIZES[path] - 1) // bs - 1) * bs, max(0, (SIZES[path] - 1) // bs - 4) * bs}
]


@pytest.mark.parametrize("path, start, end, part_size", [
    ("big.bin", 0, SIZES["big.bin"], 0),  # the whole file, one piece
    ("small.txt", 0, 3000, 0),
    ("small.txt", 10, 2999, 1000),
    ("big.bin", 100, 100 + 5 * 64 * K + 777, 64 * K),  # unaligned, a short last piece
    ("big.bin", 4096, 4096 + 700 * K, M),  # part_size past the range: one piece
    ("big.bin", M, 3 * M, M),  # exactly two pieces
    ("big.bin", 3 * M + 5, 3 * M + 6, 64 * K),  # one byte
    ("model-00002-of-00010.safetensors", 0, 1_139_104, M),  # issue 10: 1 MiB + 88,528 bytes
    *EOF_CASES,
], ids=lambda v: str(v))
@pytest.mark.parametrize("prefetch", [False, True], ids=["demand", "prefetch"])
def test_pieces_are_exactly_the_contracts_each_once(backend, path, start, end, part_size, prefetch):
    fut, calls = run(backend, path, start, end, part_size, prefetch)
    result = fut.result()
    assert type(result) is int and result == end - start
    assert delivered_once_each(calls, start, end, part_size)


@pytest.mark.parametrize("start, end", [(-1, 10), (5, 5), (10, 5), (0, 3001), (2999, 3001)])
def test_a_bad_range_raises_fetch_error_at_once(backend, start, end):
    with pytest.raises(FetchError):
        backend.fetcher.fetch(backend.files["small.txt"], start, end, lambda o, d: None)


@pytest.mark.parametrize("how", ["at once", "after retries or pieces"])
@pytest.mark.parametrize("path", ["big.bin", "small.txt"])
def test_a_failure_raises_fetch_error(backend, how, path):
    backend.fail(how)
    size = SIZES[path]
    part = max(1, size // 3)
    fut, _calls = run(backend, path, 0, size, part)
    with pytest.raises(FetchError):
        fut.result()
    with pytest.raises(FetchError):  # fetch_bytes too: never partial bytes
        backend.fail(how)
        fetch_bytes(backend.fetcher, backend.files[path], 0, size).result(timeout=WAIT)


@pytest.mark.parametrize("prefetch", [False, True], ids=["demand", "prefetch"])
def test_a_retry_midway_delivers_every_piece_with_the_same_bytes(backend, prefetch):
    """A piece may come twice (the contract allows it), always with the source's bytes."""
    backend.retry_midway()
    start, end, part = 64 * K, 64 * K + M, 64 * K
    fut, calls = run(backend, "big.bin", start, end, part, prefetch)  # `run` checks every byte
    assert fut.result() == end - start
    assert backend.retried()
    assert set(calls) == {(a, b - a) for a, b in pieces(start, end, part)}  # every piece came
    assert max(Counter(calls).values()) == (2 if backend.redelivers else 1)  # some twice, or resumed


@pytest.mark.parametrize("path, start, end", [
    ("big.bin", 0, SIZES["big.bin"]),
    ("big.bin", 12345, 12345 + 3 * M),
    ("model-00002-of-00010.safetensors", M - 100_000, SIZES["model-00002-of-00010.safetensors"]),
    ("small.txt", 1, 2),
])
def test_fetch_bytes_is_the_source(backend, path, start, end):
    got = fetch_bytes(backend.fetcher, backend.files[path], start, end).result(timeout=WAIT)
    assert type(got) is bytes and got == backend.src[path][start:end]


@pytest.mark.parametrize("path", sorted(SIZES))
def test_a_file_of_another_repo_is_that_repos(backend, sources, path):
    """One fetcher, files of two repos (the same paths): each gets its own repo's bytes."""
    theirs = sources[1][OTHER][path]
    other = RemoteFile(path, len(theirs), f"other-{path}", lfs=path.endswith(".bin"), repo=backend.other)
    for f, want in ((other, theirs), (backend.files[path], backend.src[path]), (other, theirs)):
        assert fetch_bytes(backend.fetcher, f, 0, f.size).result(timeout=WAIT) == want


def test_fetch_bytes_fails_when_the_fetch_is_cancelled():
    """A fetch cancelled under it (a fetcher closing) fails ``fetch_bytes`` with FetchError
    instead of leaving its caller waiting forever."""
    run = concurrent.futures.Future()

    class Cancelled:  # pure logic: only the future matters here
        def fetch(self, file, start, end, on_part, *, part_size=0, prefetch=False):
            return run

    got = fetch_bytes(Cancelled(), RemoteFile("x", 10, "cid"), 0, 10)
    run.cancel()
    with pytest.raises(FetchError, match="cancelled"):
        got.result(timeout=WAIT)
