"""Block stores, the contract: one behavioural suite run against the memory and the disk
store (whole blocks, pieces, segments, eviction, drop and marks), then SafeBlockStore.
Disk specifics are in test_cache_disk.py, the randomized model test in test_cache_model.py."""

from __future__ import annotations

import errno
import logging
import random
import sqlite3
import threading

import pytest

from cache import BlockStore, DiskBlockStore, MemoryBlockStore, SafeBlockStore, Segment
from cache.store import join_segments

BS = 4096


@pytest.fixture(params=["memory", "disk"])
def kind(request):
    return request.param


@pytest.fixture
def make(kind, tmp_path):
    """make(block_size=BS, size_limit=None) -> a store; disk stores share one directory."""
    opened = []

    def factory(block_size=BS, size_limit=None):
        if kind == "memory":
            store = MemoryBlockStore(block_size, size_limit)
        else:
            store = DiskBlockStore(tmp_path / "cache", block_size, size_limit or 1 << 30)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_round_trip(make):
    rng = random.Random(1)
    store = make()
    written = {}
    for cid in ["a" * 64, "b" * 64, "0123abcd"]:
        for index in rng.sample(range(1000), 20):
            data = rng.randbytes(rng.choice([BS, BS, rng.randint(1, BS)]))
            store.put(cid, index, data)
            written[cid, index] = data
    for (cid, index), data in written.items():
        got = store.get(cid, index)
        assert type(got) is bytes and got == data


def test_overwrite(make):
    store = make()
    store.put("c", 3, b"x" * BS)
    store.put("c", 3, b"y" * 100)
    assert store.get("c", 3) == b"y" * 100
    assert store.cached_indices("c") == [3]
    assert store.cached_bytes("c") == 100
    assert store.volume() == 100


def test_miss(make):
    store = make()
    assert store.get("nothing", 0) is None
    store.put("c", 1, b"z" * BS)
    assert store.get("c", 0) is None and store.get("c", 2) is None and store.get("d", 1) is None
    assert store.cached_indices("nothing") == [] and store.cached_bytes("nothing") == 0
    assert store.held("nothing") == [] and store.cached_ranges("nothing") == []
    assert store.segments("nothing", 0, 10, 100) is None and store.read("nothing", 0, 10, 100) is None


def test_cached_indices_and_bytes_against_model(make):
    rng = random.Random(2)
    store = make()
    # ids that are prefixes of each other must not see each other's blocks
    cids = ["ab", "abc", "a", "ab0", "b"]
    model: dict[str, dict[int, int]] = {cid: {} for cid in cids}
    for _ in range(400):
        cid = rng.choice(cids)
        index = rng.choice([0, 1, 9, 10, 11, 99, 100, 12345, rng.randint(0, 5000)])
        size = rng.choice([BS, rng.randint(1, BS)])
        store.put(cid, index, b"\x01" * size)
        model[cid][index] = size
    for cid in cids:
        assert store.cached_indices(cid) == sorted(model[cid])
        assert store.cached_bytes(cid) == sum(model[cid].values())
    assert store.volume() == sum(sum(m.values()) for m in model.values())


@pytest.mark.parametrize("args", [
    ("c", 0, b""),                 # empty block
    ("c", 0, b"x" * (BS + 1)),     # larger than a block
    ("c:1", 0, b"x"),              # ':' would break the key ranges
    ("c;1", 0, b"x"),
    ("", 0, b"x"),
    ("c", -1, b"x"),
    ("c", 10**12, b"x"),
    ("c", 1.0, b"x"),
])
def test_put_rejects_bad_blocks(make, args):
    store = make()
    with pytest.raises(ValueError):
        store.put(*args)
    assert store.volume() == 0


@pytest.mark.parametrize("args", [
    ("c", 10, b"x" * 91, 100),     # ends past the content
    ("c", -1, b"x", 100),
    ("c", 0, b"x", -5),
    ("c:1", 0, b"x", 100),
    ("c", True, b"x", 100),
])
def test_put_range_rejects_bad_ranges(make, args):
    store = make()
    with pytest.raises(ValueError):
        store.put_range(*args)
    with pytest.raises(ValueError):
        store.put_ranges([("d", 0, b"ok", 10), args])  # a batch is checked before anything is stored
    assert store.volume() == 0


def test_put_takes_any_bytes_like_as_handed_over(make, kind):
    """What is put is bytes-like (a fetched piece is the bytearray its socket filled; views of
    it) and handed over: the caller never changes it afterwards, so a store keeps or writes
    that very buffer, never a copy of it."""
    store = make()
    buf = bytearray(b"q" * BS)
    store.put("c", 0, buf)
    store.put_range("c", BS, memoryview(buf)[:10], 3 * BS)
    store.put("c", 2, memoryview(b"r" * 10))
    store.put_range("c", BS + 10, memoryview(bytearray(b"s" * 8)).cast("I"), 3 * BS)  # 2 four-byte items
    assert bytes(store.get("c", 0)) == b"q" * BS
    assert store.read("c", BS, 18, 3 * BS) == b"q" * 10 + b"s" * 8
    assert type(store.read("c", 0, 5, 3 * BS)) is bytes
    assert bytes(store.get("c", 2)) == b"r" * 10
    if kind == "memory":
        assert store.get("c", 0) is buf  # kept, not copied
    for bad in ("text", 7, memoryview(bytearray(16))[::2]):
        with pytest.raises(ValueError):
            store.put("c", 1, bad)


def test_block_size_isolation(make):
    small = make(block_size=BS)
    small.put("c", 0, b"s" * BS)
    small.put_range("c", BS + 5, b"p" * 5, 4 * BS)
    small.close()
    big = make(block_size=2 * BS)
    assert big.get("c", 0) is None and big.held("c") == []
    assert big.cached_indices("c") == [] and big.cached_bytes("c") == 0 and big.cached_ranges("c") == []
    big.put("c", 0, b"b" * 2 * BS)
    assert big.get("c", 0) == b"b" * 2 * BS


# -- ranges and pieces ---------------------------------------------------------------------------

SIZE = 5 * BS + 300  # five whole blocks and a short last one


def test_put_range_stores_whole_blocks_and_pieces(make):
    store = make()
    src = content(3, SIZE)
    store.put_range("c", 100, src[100 : 2 * BS + 50], SIZE)  # a piece, a whole block, a piece
    assert store.held("c") == [(100, 2 * BS + 50)]
    assert store.cached_ranges("c") == [(100, 2 * BS + 50)]
    assert store.cached_indices("c") == [1]  # whole blocks only
    assert store.cached_bytes("c") == 2 * BS - 50
    assert store.read("c", 100, 2 * BS - 50, SIZE) == src[100 : 2 * BS + 50]
    assert store.get("c", 0) is None and store.get("c", 1) == src[BS : 2 * BS]
    assert store.read("c", 99, 10, SIZE) is None  # one byte before is not held
    assert store.segments("c", 2 * BS + 40, 11, SIZE) is None  # one byte after
    assert store.read("c", 2 * BS + 40, 10, SIZE) == src[2 * BS + 40 : 2 * BS + 50]


def test_segments_cover_exactly_and_in_order(make):
    store = make()
    src = content(4, SIZE)
    store.put_range("c", 0, src, SIZE)
    for offset, length in [(0, SIZE), (5, 1), (BS - 1, 2), (BS, BS), (SIZE - 1, 100), (3 * BS + 7, 10**9)]:
        segs = store.segments("c", offset, length, SIZE)
        want = src[offset : offset + length]
        assert sum(s.length for s in segs) == len(want)
        assert all(isinstance(s, Segment) and s.length > 0 for s in segs)
        assert join_segments(segs) == want == store.read("c", offset, length, SIZE)
    assert store.segments("c", SIZE, 10, SIZE) == [] and store.read("c", SIZE, 10, SIZE) == b""
    assert store.segments("c", 10, 0, SIZE) == []
    with pytest.raises(ValueError):
        store.segments("c", -1, 10, SIZE)


def test_pieces_that_cover_a_block_become_the_block(make):
    store = make()
    src = content(5, SIZE)
    store.put_range("c", BS + 100, src[BS + 100 : BS + 200], SIZE)
    store.put_range("c", BS + 1000, src[BS + 1000 : 2 * BS], SIZE)
    store.put_range("c", BS, src[BS : BS + 100], SIZE)  # touches the first piece
    assert store.held("c") == [(BS, BS + 200), (BS + 1000, 2 * BS)]
    assert store.cached_indices("c") == [] and store.volume() == 200 + BS - 1000
    assert len(store.segments("c", BS, 200, SIZE)) == 1  # the two joined into one piece
    store.put_range("c", BS + 150, src[BS + 150 : BS + 1100], SIZE)  # fills the gap
    assert store.cached_indices("c") == [1] and store.held("c") == [(BS, 2 * BS)]
    assert store.volume() == BS == store.cached_bytes("c")  # the pieces are gone
    assert store.get("c", 1) == src[BS : 2 * BS]
    assert len(store.segments("c", BS, BS, SIZE)) == 1


def test_the_short_last_block(make):
    store = make()
    src = content(6, SIZE)
    store.put_range("c", SIZE - 200, src[SIZE - 200 :], SIZE)
    assert store.cached_indices("c") == [] and store.held("c") == [(SIZE - 200, SIZE)]
    store.put_range("c", 5 * BS, src[5 * BS : SIZE - 150], SIZE)
    assert store.cached_indices("c") == [5] and store.get("c", 5) == src[5 * BS :]
    assert store.read("c", 5 * BS, BS, SIZE) == src[5 * BS :]
    # a whole block of the wrong length for this size is never served as the block
    store.put("d", 5, src[5 * BS : SIZE - 1])
    assert store.read("d", 5 * BS, 10, SIZE) is None


def test_bytes_already_held_are_not_written_again(make):
    store = make()
    src = content(7, SIZE)
    store.put_range("c", 100, src[100:1000], SIZE)
    store.put_range("c", BS, src[BS : 2 * BS], SIZE)
    before = store.fingerprint("c")
    store.put_range("c", 200, src[200:900], SIZE)      # inside a piece
    store.put_range("c", BS + 10, src[BS + 10 : BS + 20], SIZE)  # inside a whole block
    store.put_range("c", BS, src[BS : 2 * BS], SIZE)   # the whole block again
    assert store.fingerprint("c") == before and store.volume() == 900 + BS


def test_put_ranges_stores_a_batch(make):
    store = make()
    src = content(8, SIZE)
    items = [("c", 0, src[: 2 * BS], SIZE), ("c", 3 * BS + 5, src[3 * BS + 5 : 3 * BS + 9], SIZE),
             ("d", 0, b"dd", 2), ("c", 3 * BS + 9, src[3 * BS + 9 : 3 * BS + 30], SIZE)]
    store.put_ranges(items)
    assert store.held("c") == [(0, 2 * BS), (3 * BS + 5, 3 * BS + 30)]
    assert len(store.segments("c", 3 * BS + 5, 25, SIZE)) == 1  # joined within the batch
    assert store.read("d", 0, 2, 2) == b"dd" and store.cached_indices("d") == [0]
    store.put_ranges([])


def test_put_replaces_a_blocks_pieces(make):
    store = make()
    src = content(9, SIZE)
    store.put_range("c", 10, src[10:20], SIZE)
    store.put("c", 0, src[:BS])
    assert store.volume() == BS and store.held("c") == [(0, BS)] and store.cached_indices("c") == [0]


def test_eviction_keeps_volume_under_cap(make, kind):
    cap = 64 * BS
    store = make(size_limit=cap)
    rng = random.Random(3)
    size = 1000 * BS
    for i in range(400):
        cid = rng.choice(["x", "y"])
        if rng.random() < 0.5:
            store.put(cid, i, b"e" * BS)
        else:
            store.put_range(cid, i * BS + rng.randint(1, 100), b"p" * rng.randint(1, 2000), size)
        assert store.volume() <= cap + BS
    # the newest survive, the oldest are gone, and the accounting adds up
    assert store.held("x")[-1][0] >= 300 * BS or store.held("y")[-1][0] >= 300 * BS
    assert store.get("x", 0) is None and store.get("y", 0) is None
    assert store.cached_bytes("x") + store.cached_bytes("y") == store.volume()
    assert store.volume() > cap // 2  # eviction trims, it does not empty the cache
    for cid in ("x", "y"):  # what this process knows held is what the index holds
        assert store.held(cid) == store.cached_ranges(cid)
        for a, b in store.held(cid):
            assert store.read(cid, a, b - a, size) is not None


def test_memory_size_limit_zero_caches_nothing():
    store = MemoryBlockStore(BS, size_limit=0)
    store.put("c", 0, b"x" * BS)
    store.put_range("c", 10, b"x", 100)
    assert store.get("c", 0) is None and store.volume() == 0 and store.held("c") == []


def test_memory_eviction_is_lru():
    store = MemoryBlockStore(BS, size_limit=3 * BS)
    for i in range(3):
        store.put("c", i, b"x" * BS)
    store.get("c", 0)  # now the most recently used
    store.put("c", 3, b"x" * BS)
    assert store.cached_indices("c") == [0, 2, 3]
    store.segments("c", 0, 1, 10 * BS)  # a read counts as a use too
    store.put("c", 4, b"x" * BS)
    assert store.cached_indices("c") == [0, 3, 4]


def test_memory_segments_carry_the_bytes():
    store = MemoryBlockStore(BS)
    store.put_range("c", 5, b"abcdef", 100)
    (seg,) = store.segments("c", 6, 3, 100)
    assert seg.fd == -1 and seg.data[seg.pos : seg.pos + seg.length] == b"bcd"


def _versioned(index: int, version: int, size: int = BS) -> bytes:
    """A block whose every byte says which index and version it is: a torn mix is visible."""
    head = f"{index:08d}/{version}|".encode()
    return (head * (size // len(head) + 1))[:size]


def _valid(data: bytes) -> bool:
    index, version = int(data[:8]), int(data[9:10])
    return data == _versioned(index, version, len(data))


def test_threads_share_a_store(make):
    store = make()
    src = content(10, 60 * BS)
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(150):
                index = rng.randint(0, 50)
                store.put("t", index, _versioned(index, seed % 2))
                got = store.get("t", rng.randint(0, 50))
                assert got is None or _valid(got)
                a = rng.randrange(len(src))
                b = min(len(src), a + rng.randint(1, 3 * BS))
                store.put_range("r", a, src[a:b], len(src))
                a = rng.randrange(len(src))
                got = store.read("r", a, rng.randint(1, 2 * BS), len(src))
                assert got is None or got == src[a : a + len(got)]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(_valid(store.get("t", i)) for i in store.cached_indices("t"))
    for a, b in store.held("r"):
        assert store.read("r", a, b - a, len(src)) == src[a:b]


# -- drop and verified marks (netmount verify) -----------------------------------------------

def test_drop_removes_one_content_and_nothing_else(make):
    store = make()
    for i in range(5):
        store.put("aa", i, b"a" * (BS if i < 4 else 100))
        store.put("aab", i, b"b" * BS)  # a content id that extends the first one
    store.put_range("aa", 6 * BS + 1, b"p" * 10, 7 * BS)
    assert store.drop("aa") == 4 * BS + 110
    assert store.cached_indices("aa") == [] and store.get("aa", 0) is None and store.held("aa") == []
    assert store.read("aa", 6 * BS + 1, 10, 7 * BS) is None
    assert store.cached_indices("aab") == list(range(5)) and store.volume() == 5 * BS
    assert store.drop("aa") == 0


def test_verified_mark_holds_until_something_changes(make):
    store = make()
    for i in range(3):
        store.put("c", i, b"c" * BS)
    assert not store.is_verified("c")
    fp = store.fingerprint("c")
    assert store.mark_verified("c", fp) and store.is_verified("c")
    assert store.cached_indices("c") == [0, 1, 2] and store.cached_bytes("c") == 3 * BS  # the mark is no block
    assert store.volume() == 3 * BS
    store.put("c", 1, b"d" * BS)  # stored again (a refetch after an eviction)
    assert not store.is_verified("c")
    assert not store.mark_verified("c", fp)  # hashed before the change: refused
    assert store.mark_verified("c", store.fingerprint("c")) and store.is_verified("c")
    store.put_range("c", 3 * BS + 1, b"p", 4 * BS)  # a piece counts too
    assert not store.is_verified("c")
    store.drop("c")
    assert not store.is_verified("c")


def test_verified_mark_goes_when_a_block_is_evicted(make):
    store = make(size_limit=8 * BS)
    for i in range(4):
        store.put("v", i, b"v" * BS)
    assert store.mark_verified("v", store.fingerprint("v"))
    for i in range(8):
        store.put("other", i, b"o" * BS)  # pushes the oldest blocks of "v" out
    assert store.cached_indices("v") != [0, 1, 2, 3]
    assert not store.is_verified("v")


# -- SafeBlockStore --------------------------------------------------------------------


class Broken(BlockStore):
    """Every call raises ``exc``."""

    block_size = BS

    def __init__(self, exc=OSError(errno.ENOSPC, "No space left on device")):
        self.exc = exc

    def _raise(self, *args, **kwargs):
        raise self.exc

    put = put_range = put_ranges = held = segments = read = get = prepare = will_need = _raise
    cached_bytes = cached_ranges = cached_indices = volume = drop = close = _raise
    fingerprint = mark_verified = is_verified = _raise


CALLS = {  # operation -> (arguments, what the safe store answers instead of the failure)
    "put": (("c", 0, b"x"), None), "put_range": (("c", 0, b"x", 10), None),
    "put_ranges": (([("c", 0, b"x", 10)],), None), "prepare": (("c", [(0, 10)], 10), None),
    "will_need": (("c", [0]), None), "held": (("c",), []), "segments": (("c", 0, 10, 10), None),
    "read": (("c", 0, 10, 10), None), "get": (("c", 0), None), "cached_bytes": (("c",), 0),
    "cached_ranges": (("c",), []), "cached_indices": (("c",), []), "volume": ((), 0),
    "drop": (("c",), 0), "fingerprint": (("c",), None), "mark_verified": (("c", "x"), False),
    "is_verified": (("c",), False), "close": ((), None),
}


def test_safe_turns_every_failure_into_a_miss_or_no_op_and_logs_once_per_kind(caplog):
    log = logging.getLogger("test.safe")
    store = SafeBlockStore(Broken(), log)
    assert store.block_size == BS
    with caplog.at_level(logging.DEBUG, logger="test.safe"):
        for _ in range(3):
            for op, (args, default) in CALLS.items():
                assert getattr(store, op)(*args) == default, op
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(r.getMessage().split()[2] for r in warnings) == sorted(CALLS)
    assert all(store.failures[f"{op}:OSError"] == 3 for op in CALLS)
    # a different exception type in the same call is a new kind: warned once more
    store.inner.exc = sqlite3.DatabaseError("database disk image is malformed")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="test.safe"):
        store.segments("c", 0, 1, 1)
        store.segments("c", 0, 1, 1)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]


def test_safe_passes_results_through():
    store = SafeBlockStore(MemoryBlockStore(BS), logging.getLogger("test.safe"))
    store.put("c", 2, b"v" * 5)
    store.put_range("c", 10, b"w" * 5, 3 * BS)
    store.put_ranges([("c", 20, b"z", 3 * BS)])
    assert store.get("c", 2) == b"v" * 5 and store.read("c", 10, 5, 3 * BS) == b"w" * 5
    assert store.segments("c", 20, 1, 3 * BS)[0].data == b"z"
    assert store.held("c") == store.cached_ranges("c") == [(10, 15), (20, 21), (2 * BS, 2 * BS + 5)]
    assert store.cached_indices("c") == [2] and store.cached_bytes("c") == 11 and store.volume() == 11
    assert store.mark_verified("c", store.fingerprint("c")) and store.is_verified("c")
    assert store.drop("c") == 11 and not store.is_verified("c")
    store.prepare("c", [(0, 1)], 3 * BS)
    store.will_need("c", [0])
    assert not store.failures
