"""Block stores: one behavioural suite over the memory and disk stores, then disk specifics
(persistence, processes, crash safety, corruption) and SafeBlockStore."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import random
import sqlite3
import stat
import threading
import zlib

import diskcache
import pytest

from cache import BlockStore, DiskBlockStore, MemoryBlockStore, SafeBlockStore

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


def block(rng, size=BS):
    return rng.randbytes(size)


def test_round_trip(make):
    rng = random.Random(1)
    store = make()
    written = {}
    for cid in ["a" * 64, "b" * 64, "0123abcd"]:
        for index in rng.sample(range(1000), 20):
            data = block(rng, rng.choice([BS, BS, rng.randint(1, BS)]))
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
    assert store.get("c", 0) is None
    assert store.get("c", 2) is None
    assert store.get("d", 1) is None
    assert store.cached_indices("nothing") == []
    assert store.cached_bytes("nothing") == 0


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


def test_put_accepts_buffers_and_stores_bytes(make):
    store = make()
    buf = bytearray(b"q" * BS)
    store.put("c", 0, buf)
    buf[0:1] = b"!"  # the caller reusing its buffer must not change the stored block
    store.put("c", 1, memoryview(b"r" * 10))
    assert store.get("c", 0) == b"q" * BS and type(store.get("c", 0)) is bytes
    assert store.get("c", 1) == b"r" * 10


def test_block_size_isolation(make):
    small = make(block_size=BS)
    small.put("c", 0, b"s" * BS)
    small.close()
    big = make(block_size=2 * BS)
    assert big.get("c", 0) is None
    assert big.cached_indices("c") == []
    assert big.cached_bytes("c") == 0
    big.put("c", 0, b"b" * 2 * BS)
    assert big.get("c", 0) == b"b" * 2 * BS


def test_eviction_keeps_volume_under_cap(make, kind):
    cap = 64 * BS
    store = make(size_limit=cap)
    rng = random.Random(3)
    for i in range(400):
        store.put(rng.choice(["x", "y"]), i, b"e" * rng.choice([BS, BS, rng.randint(1, BS)]))
        assert store.volume() <= cap + BS
    # the newest block survives, the oldest are gone, and the accounting adds up
    assert store.get("x", 399) is not None or store.get("y", 399) is not None
    assert store.get("x", 0) is None and store.get("y", 0) is None
    assert store.cached_bytes("x") + store.cached_bytes("y") == store.volume()
    assert store.volume() > cap // 2  # eviction trims, it does not empty the cache


def test_memory_size_limit_zero_caches_nothing():
    store = MemoryBlockStore(BS, size_limit=0)
    store.put("c", 0, b"x" * BS)
    assert store.get("c", 0) is None and store.volume() == 0


def test_memory_eviction_is_lru():
    store = MemoryBlockStore(BS, size_limit=3 * BS)
    for i in range(3):
        store.put("c", i, b"x" * BS)
    store.get("c", 0)  # now the most recently used
    store.put("c", 3, b"x" * BS)
    assert store.cached_indices("c") == [0, 2, 3]


def test_threads_share_a_store(make):
    store = make()
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(200):
                index = rng.randint(0, 50)
                store.put("t", index, _versioned(index, seed % 2))
                got = store.get("t", rng.randint(0, 50))
                assert got is None or _valid(got)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(_valid(store.get("t", i)) for i in store.cached_indices("t"))


# -- disk specifics --------------------------------------------------------------------


def _versioned(index: int, version: int, size: int = BS) -> bytes:
    """A block whose every byte says which index and version it is: a torn mix is visible."""
    head = f"{index:08d}/{version}|".encode()
    return (head * (size // len(head) + 1))[:size]


def _valid(data: bytes) -> bool:
    index, version = int(data[:8]), int(data[9:10])
    return data == _versioned(index, version, len(data))


def test_disk_persists_across_reopen(tmp_path):
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        store.put("p", 7, b"k" * BS)
        store.put("p", 8, b"l" * 10)
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        assert store.get("p", 7) == b"k" * BS
        assert store.cached_indices("p") == [7, 8]
        assert store.cached_bytes("p") == BS + 10


def test_disk_block_sizes_that_share_a_decimal_prefix_stay_apart(tmp_path):
    """Keys of block size 8 must not fall in the key range of block size 8192 or back."""
    with DiskBlockStore(tmp_path / "c", 8, 1 << 30) as small, \
            DiskBlockStore(tmp_path / "c", 8192, 1 << 30) as big:
        big.put("c", 1, b"B" * 8192)
        small.put("c", 5, b"s" * 8)
        assert small.cached_indices("c") == [5] and small.cached_bytes("c") == 8
        assert big.cached_indices("c") == [1] and big.cached_bytes("c") == 8192
        assert small.get("c", 1) is None and big.get("c", 5) is None


def test_disk_directory_mode_0700(tmp_path):
    path = tmp_path / "deep" / "er" / "blocks"
    DiskBlockStore(path, BS, 1 << 30).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_disk_reopen_with_smaller_limit_shrinks(tmp_path):
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        for i in range(100):
            store.put("s", i, b"x" * BS)
    with DiskBlockStore(tmp_path / "c", BS, 20 * BS) as store:
        assert store.volume() <= 20 * BS
        assert store.get("s", 99) is not None


def test_disk_eviction_removes_files(tmp_path):
    """No orphans: the bytes in block files are exactly the store's volume."""
    with DiskBlockStore(tmp_path / "c", BS, 32 * BS) as store:
        for i in range(200):
            store.put("f", i, b"x" * BS)
        on_disk = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, files in os.walk(tmp_path / "c") for f in files if f.endswith(".val"))
        assert on_disk == store.volume() <= 33 * BS


def _value_path(directory, content_id, index):
    con = sqlite3.connect(os.path.join(directory, "cache.db"))
    try:
        ((name,),) = con.execute("SELECT filename FROM Cache WHERE key = ?",
                                 (f"{content_id}:{BS}:{index:012d}",)).fetchall()
    finally:
        con.close()
    return os.path.join(directory, name)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_disk_corrupted_block_is_a_miss_and_deleted(tmp_path, damage):
    directory = str(tmp_path / "c")
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put("k", 0, b"a" * BS)
    store.put("k", 1, b"b" * BS)
    path = _value_path(directory, "k", 0)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"flip": b"A" + data[1:], "truncate": data[: BS // 2], "empty": b""}[damage])
    assert store.get("k", 0) is None
    assert store.cached_indices("k") == [1]
    assert store.get("k", 1) == b"b" * BS
    store.close()


def _crash_during_put(directory, stage):
    """Child process: die (no cleanup, like SIGKILL) in the middle of a put."""
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put("crash", 0, b"o" * BS)
    if stage == "writing file":
        real_write = diskcache.Disk._write

        def torn(self, full_path, iterator, mode, encoding=None):
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            with open(full_path, mode) as f:
                f.write(next(iter(iterator))[: BS // 2])
                f.flush()
            os._exit(3)
        diskcache.Disk._write = torn
        assert real_write
    else:  # file complete, row not yet committed
        def die(*args, **kwargs):
            os._exit(3)
        diskcache.Cache._row_insert = die
        diskcache.Cache._row_update = die
    store.put("crash", 1, b"n" * BS)  # new block
    os._exit(0)  # not reached


def _crash_overwrite(directory):
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put("crash", 0, b"o" * BS)

    def die(*args, **kwargs):
        os._exit(3)
    diskcache.Cache._row_update = die
    store.put("crash", 0, b"N" * BS)  # overwrite dies before commit


@pytest.mark.parametrize("stage", ["writing file", "before commit"])
def test_disk_crash_mid_put_leaves_no_readable_partial_block(tmp_path, stage):
    directory = str(tmp_path / "c")
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_crash_during_put, args=(directory, stage))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    sizes = sorted(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(directory) for f in files if f.endswith(".val"))
    # the torn (or complete but uncommitted) file is on disk, yet no row points to it
    assert sizes == sorted([BS, BS // 2 if stage == "writing file" else BS])
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        assert store.get("crash", 1) is None
        assert store.cached_indices("crash") == [0]
        assert store.get("crash", 0) == b"o" * BS
        store.put("crash", 1, b"n" * BS)  # the store is still usable
        assert store.get("crash", 1) == b"n" * BS


def test_disk_crash_mid_overwrite_keeps_old_block(tmp_path):
    directory = str(tmp_path / "c")
    p = multiprocessing.get_context("spawn").Process(target=_crash_overwrite, args=(directory,))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        assert store.get("crash", 0) == b"o" * BS


def _share(directory, version, seed, rounds, start, out):
    rng = random.Random(seed)
    bad = 0
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        start.wait(60)  # both processes open, then race
        for _ in range(rounds):
            index = rng.randint(0, 60)  # both processes write and read the same blocks
            store.put("shared", index, _versioned(index, version, BS if index < 60 else 77))
            for j in rng.sample(range(61), 3):
                got = store.get("shared", j)
                if got is not None and not (_valid(got) and int(got[:8]) == j):
                    bad += 1
            store.cached_indices("shared")
            store.cached_bytes("shared")
    out.put((version, bad))


def test_disk_two_processes_share_a_directory(tmp_path):
    directory = str(tmp_path / "c")
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_share, args=(directory, v, 100 + v, 300, start, out)) for v in (0, 1)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(results) == [(0, 0), (1, 0)]
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        indices = store.cached_indices("shared")
        assert len(indices) > 50
        total = 0
        for i in indices:
            data = store.get("shared", i)
            assert _valid(data) and int(data[:8]) == i
            total += len(data)
        assert store.cached_bytes("shared") == total == store.volume()


def test_disk_blocks_are_raw_bytes_with_crc(tmp_path):
    directory = str(tmp_path / "c")
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        store.put("r", 0, b"raw!" * (BS // 4))
    assert open(_value_path(directory, "r", 0), "rb").read() == b"raw!" * (BS // 4)
    con = sqlite3.connect(os.path.join(directory, "cache.db"))
    ((tag, size),) = con.execute("SELECT tag, size FROM Cache").fetchall()
    con.close()
    assert tag == zlib.crc32(b"raw!" * (BS // 4)) and size == BS


def test_disk_will_need_advises_exactly_the_stored_files_asked_for(tmp_path, monkeypatch):
    directory = str(tmp_path / "c")
    advised = []

    def fadvise(fd, offset, length, advice):
        assert advice == os.POSIX_FADV_WILLNEED
        advised.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        for i in range(6):
            store.put("r", i, bytes([i]) * BS)
        store.put("other", 3, b"o" * BS)
        os.remove(_value_path(directory, "r", 4))  # evicted by someone else: skipped quietly
        store.will_need("r", [1, 3, 4, 9])
        store.will_need("r", [])
    assert sorted(advised) == sorted(_value_path(directory, "r", i) for i in (1, 3))


def test_disk_connections_are_kept_per_os_thread(tmp_path, monkeypatch):
    """FUSE callbacks arrive on libfuse's threads with a fresh Python thread state each
    call, so diskcache's ``threading.local`` would be empty every time; the store keys its
    connections by the OS thread id instead (what sqlite3's same-thread check uses)."""
    import diskcache.core

    from cache.disk import _PerOSThread

    local = _PerOSThread()
    local.con = "mine"
    seen = {}
    t = threading.Thread(target=lambda: seen.update(has=hasattr(local, "con")))
    t.start()
    t.join()
    assert local.con == "mine" and seen == {"has": False}
    del local.con
    assert not hasattr(local, "con")

    made = []
    real = diskcache.core.sqlite3.connect
    monkeypatch.setattr(diskcache.core.sqlite3, "connect", lambda *a, **k: made.append(1) or real(*a, **k))
    with DiskBlockStore(str(tmp_path / "c"), BS, 1 << 30) as store:
        assert isinstance(store._cache._local, _PerOSThread)
        store.put("r", 0, b"x" * BS)
        n = len(made)
        for _ in range(20):
            assert store.get("r", 0) == b"x" * BS
        t = threading.Thread(target=lambda: store.get("r", 0))
        t.start()
        t.join()
        assert len(made) == n + 1  # one more OS thread, one more connection


# -- SafeBlockStore --------------------------------------------------------------------


class Broken(BlockStore):
    block_size = BS

    def __init__(self, exc=OSError(errno.ENOSPC, "No space left on device")):
        self.exc = exc

    def get(self, content_id, index):
        raise self.exc

    def put(self, content_id, index, data):
        raise self.exc

    def cached_indices(self, content_id):
        raise self.exc

    def cached_bytes(self, content_id):
        raise self.exc

    def volume(self):
        raise self.exc

    def close(self):
        raise self.exc


def test_safe_turns_failures_into_misses_and_logs_once_per_kind(caplog):
    log = logging.getLogger("test.safe")
    store = SafeBlockStore(Broken(), log)
    assert store.block_size == BS
    with caplog.at_level(logging.DEBUG, logger="test.safe"):
        for _ in range(50):
            assert store.get("c", 0) is None
            assert store.put("c", 0, b"x") is None
        assert store.cached_indices("c") == []
        assert store.cached_bytes("c") == 0
        assert store.volume() == 0
        store.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(r.getMessage().split()[2] for r in warnings) == sorted(
        ["get", "put", "cached_indices", "cached_bytes", "volume", "close"])
    assert store.failures["get:OSError"] == 50 and store.failures["put:OSError"] == 50
    # a different exception type in the same call is a new kind: warned once more
    store.inner.exc = sqlite3.DatabaseError("database disk image is malformed")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="test.safe"):
        store.get("c", 0)
        store.get("c", 0)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]


def test_safe_passes_results_through():
    store = SafeBlockStore(MemoryBlockStore(BS), logging.getLogger("test.safe"))
    store.put("c", 2, b"v" * 5)
    assert store.get("c", 2) == b"v" * 5
    assert store.cached_indices("c") == [2] and store.cached_bytes("c") == 5 and store.volume() == 5
    assert not store.failures


def test_safe_open_falls_back_when_directory_cannot_be_created(tmp_path, caplog):
    parent = tmp_path / "a-file"
    parent.write_bytes(b"not a directory")  # as root chmod stops nothing; this does
    with pytest.raises(OSError):
        DiskBlockStore(parent / "blocks", BS, 1 << 30)
    with caplog.at_level(logging.WARNING, logger="test.safe"):
        store = SafeBlockStore.open(lambda: DiskBlockStore(parent / "blocks", BS, 1 << 30),
                                    logging.getLogger("test.safe"), lambda: MemoryBlockStore(BS, 1 << 20))
    assert isinstance(store.inner, MemoryBlockStore)
    assert len(caplog.records) == 1
    store.put("c", 0, b"m" * BS)
    assert store.get("c", 0) == b"m" * BS


def test_safe_open_falls_back_on_corrupted_database(tmp_path):
    directory = tmp_path / "c"
    DiskBlockStore(directory, BS, 1 << 30).close()
    for name in os.listdir(directory):
        if name.startswith("cache.db"):
            os.remove(directory / name)
    (directory / "cache.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(sqlite3.DatabaseError):
        DiskBlockStore(directory, BS, 1 << 30)
    store = SafeBlockStore.open(lambda: DiskBlockStore(directory, BS, 1 << 30),
                                logging.getLogger("test.safe"), lambda: MemoryBlockStore(BS, 0))
    assert store.get("c", 0) is None


def test_safe_disk_directory_made_unwritable_while_open(tmp_path, caplog):
    """The cache directory is replaced by a regular file under a live store (root ignores
    chmod, so this is how we make it unusable): puts are no-ops, gets are misses."""
    directory = tmp_path / "c"
    store = SafeBlockStore(DiskBlockStore(directory, BS, 1 << 30), logging.getLogger("test.safe"))
    store.put("u", 0, b"u" * BS)
    os.rename(directory, tmp_path / "moved")
    directory.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="test.safe"):
        store.put("u", 1, b"v" * BS)
        store.put("u", 2, b"v" * BS)
        assert store.get("u", 0) is None  # its file is unreachable now: a miss, not an error
        assert store.get("u", 1) is None
        store.cached_bytes("u")
    assert store.failures["put:NotADirectoryError"] == 2
    assert len([r for r in caplog.records if "put" in r.getMessage()]) == 1
    store.close()


def test_safe_disk_full(tmp_path, monkeypatch):
    store = SafeBlockStore(DiskBlockStore(tmp_path / "c", BS, 1 << 30), logging.getLogger("test.safe"))
    store.put("f", 0, b"a" * BS)

    def full(self, full_path, iterator, mode, encoding=None):
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        with open(full_path, mode) as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(diskcache.Disk, "_write", full)
    store.put("f", 1, b"b" * BS)
    assert store.failures["put:OSError"] == 1
    assert store.get("f", 1) is None
    assert store.cached_indices("f") == [0] and store.get("f", 0) == b"a" * BS
    # the partial file is removed, not left to leak space on a full disk
    values = [f for _, _, files in os.walk(tmp_path / "c") for f in files if f.endswith(".val")]
    assert len(values) == 1
    store.close()


# -- drop and verified marks (netmount verify) -----------------------------------------------

def test_drop_removes_one_content_and_nothing_else(make):
    store = make()
    for i in range(5):
        store.put("aa", i, b"a" * (BS if i < 4 else 100))
        store.put("aab", i, b"b" * BS)  # a content id that extends the first one
    assert store.drop("aa") == 4 * BS + 100
    assert store.cached_indices("aa") == [] and store.get("aa", 0) is None
    assert store.cached_indices("aab") == list(range(5)) and store.volume() == 5 * BS
    assert store.drop("aa") == 0


def test_verified_mark_holds_until_a_block_changes(make):
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


def test_disk_drop_is_seen_by_another_process_handle_and_marks_are_per_block_size(tmp_path):
    a = DiskBlockStore(tmp_path / "c", BS, 1 << 30)
    b = DiskBlockStore(tmp_path / "c", BS, None)  # keeps the stored limit
    other_bs = DiskBlockStore(tmp_path / "c", 2 * BS, None)
    try:
        a.put("k", 0, b"k" * BS)
        other_bs.put("k", 0, b"K" * 2 * BS)
        assert b.mark_verified("k", b.fingerprint("k")) and a.is_verified("k")
        assert not other_bs.is_verified("k")
        assert b._cache.size_limit == 1 << 30
        assert b.drop("k") == 3 * BS  # every block size
        assert a.get("k", 0) is None and other_bs.get("k", 0) is None and not a.is_verified("k")
        assert a.volume() == 0
    finally:
        for s in (a, b, other_bs):
            s.close()


def test_safe_store_drop_and_marks_pass_through_and_fail_soft():
    store = SafeBlockStore(MemoryBlockStore(BS), logging.getLogger("test.safe"))
    store.put("c", 0, b"x" * BS)
    assert store.mark_verified("c", store.fingerprint("c")) and store.is_verified("c")
    assert store.drop("c") == BS and not store.is_verified("c")
    broken = SafeBlockStore(Broken(), logging.getLogger("test.safe"))
    assert broken.drop("c") == 0 and broken.fingerprint("c") is None
    assert not broken.mark_verified("c", "x") and not broken.is_verified("c")
