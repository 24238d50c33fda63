"""The disk store alone: persistence, pieces on disk, eviction, CRC32C checks once per
process, files vanishing under an open store, the fd grace, several processes on one
directory, crash safety, the format version, and opening it from a cache dir."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import random
import resource
import sqlite3
import stat
import threading

import pytest
from google_crc32c import value as crc32c

import cache.index
from cache import STORE_DIR, DiskBlockStore, MemoryBlockStore, SafeBlockStore, open_disk_store, open_store
from cache.fds import FdCache, raise_nofile
from cache.store import join_segments
from cache.version import MARKER, MARKER_TEXT

BS = 4096
SIZE = 8 * BS + 100


def src(seed: int = 0, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def rows(directory) -> dict[str, tuple[str, int, int]]:
    """key -> (file name, size, tag) of every object row."""
    con = sqlite3.connect(os.path.join(directory, "cache.db"))
    try:
        return {k: (f, s, t) for k, f, s, t in
                con.execute("SELECT key, filename, size, tag FROM Cache WHERE filename IS NOT NULL")}
    finally:
        con.close()


def value_path(directory, key: str) -> str:
    return os.path.join(directory, rows(directory)[key][0])


def value_files(directory) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(directory) for f in files if f.endswith(".val")]


def key(cid: str, index: int, offset: int | None = None) -> str:
    base = f"{cid}:{BS}:{index:012d}"
    return base if offset is None else f"{base}:{offset:012d}"


def test_persists_across_reopen(tmp_path):
    data = src(1)
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        store.put("p", 7, b"k" * BS)
        store.put_range("q", 100, data[100 : 3 * BS + 5], SIZE)
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        assert store.get("p", 7) == b"k" * BS
        assert store.held("q") == [(100, 3 * BS + 5)] and store.cached_indices("q") == [1, 2]
        assert store.read("q", 100, 3 * BS, SIZE) is None  # 95 bytes past what is held
        assert store.read("q", 100, 3 * BS - 95, SIZE) == data[100 : 3 * BS + 5]
        assert store.counts["checked"] == 4 + 1  # each object checked on first use: 2 pieces, 2 blocks, p:7


def test_block_sizes_that_share_a_decimal_prefix_stay_apart(tmp_path):
    """Keys of block size 8 must not fall in the key range of block size 8192 or back."""
    with DiskBlockStore(tmp_path / "c", 8, 1 << 30) as small, \
            DiskBlockStore(tmp_path / "c", 8192, 1 << 30) as big:
        big.put("c", 1, b"B" * 8192)
        small.put("c", 5, b"s" * 8)
        small.put_range("c", 51, b"p", 100)
        assert small.cached_indices("c") == [5] and small.cached_bytes("c") == 9
        assert big.cached_indices("c") == [1] and big.cached_bytes("c") == 8192
        assert small.get("c", 1) is None and big.get("c", 5) is None
        assert big.held("c", refresh=True) == [(8192, 16384)]


def test_directory_is_created_whole_and_private(tmp_path):
    path = tmp_path / "deep" / "er" / "store"
    DiskBlockStore(path, BS, 1 << 30).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert (path / MARKER).read_text() == MARKER_TEXT
    assert not [n for n in os.listdir(path.parent) if n.startswith(".")]  # no temporary left


def test_reopen_with_smaller_limit_shrinks(tmp_path):
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        for i in range(100):
            store.put("s", i, b"x" * BS)
    with DiskBlockStore(tmp_path / "c", BS, 20 * BS) as store:
        assert store.volume() <= 20 * BS
        assert store.get("s", 99) is not None and store.get("s", 0) is None
        assert store.held("s") == store.cached_ranges("s")


def test_eviction_removes_files_and_keeps_the_map_true(tmp_path):
    """No orphans: the bytes in object files are exactly the store's volume, and what this
    process believes held (no refresh) is what the index holds."""
    data = src(2, 400 * BS)
    with DiskBlockStore(tmp_path / "c", BS, 32 * BS) as store:
        assert store.held("f") == []  # loaded now: kept up to date by puts and evictions
        for i in range(200):
            store.put_range("f", 2 * i * BS + 7, data[2 * i * BS + 7 : 2 * i * BS + BS + 9], len(data))
        on_disk = sum(os.path.getsize(p) for p in value_files(tmp_path / "c"))
        assert on_disk == store.volume() <= 33 * BS
        assert store.held("f") == store.cached_ranges("f") != []
        for a, b in store.held("f"):
            assert store.read("f", a, b - a, len(data)) == data[a:b]


@pytest.mark.parametrize("what", ["block", "piece"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "longer"])
def test_a_corrupted_object_is_a_miss_and_deleted(tmp_path, damage, what):
    directory = str(tmp_path / "c")
    data = src(3)
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put_range("k", 0, data[: 2 * BS], SIZE)
    store.put_range("k", 2 * BS + 10, data[2 * BS + 10 : 2 * BS + 99], SIZE)
    store.close()
    damaged = key("k", 0) if what == "block" else key("k", 2, 10)
    path = value_path(directory, damaged)
    good = open(path, "rb").read()
    bad = {"flip": b"A" + good[1:], "truncate": good[: len(good) // 2], "empty": b"",
           "longer": good + b"!"}[damage]
    with open(path, "wb") as f:
        f.write(bad)
    store = DiskBlockStore(directory, BS, 1 << 30)
    offset = 0 if what == "block" else 2 * BS + 10
    assert store.segments("k", offset, 20, SIZE) is None
    assert damaged not in rows(directory) and not os.path.exists(path)
    assert store.counts["bad"] == 1
    assert store.read("k", BS, BS, SIZE) == data[BS : 2 * BS]  # the rest is still served
    assert store.held("k") == store.cached_ranges("k")
    store.put_range("k", offset, data[offset : offset + 20], SIZE)  # a refetch stores it again
    assert store.read("k", offset, 20, SIZE) == data[offset : offset + 20]
    store.close()


def test_each_object_is_checked_once_per_process(tmp_path, monkeypatch):
    data = src(4)
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        store.put_range("c", 0, data, SIZE)
        assert store.read("c", 0, SIZE, SIZE) == data
        assert store.counts["checked"] == 0  # what it wrote itself counts as checked
    crcs = []
    monkeypatch.setattr("cache.disk.crc32c", lambda b: crcs.append(len(b)) or crc32c(bytes(b)))
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30) as store:
        for _ in range(3):
            assert join_segments(store.segments("c", 0, SIZE, SIZE)) == data
            assert store.read("c", 5, 2 * BS, SIZE) == data[5 : 2 * BS + 5]
            assert store.get("c", 3) == data[3 * BS : 4 * BS]
        assert sorted(crcs) == sorted([BS] * 8 + [100])
        assert store.counts["checked"] == 9 and store.counts["checked_bytes"] == SIZE


def test_a_file_deleted_under_an_open_store_is_a_miss_then_stored_again(tmp_path):
    directory = str(tmp_path / "c")
    data = src(5)
    store = DiskBlockStore(directory, BS, 1 << 30, max_fds=2)
    store.put_range("d", 0, data, SIZE)
    os.remove(value_path(directory, key("d", 1)))  # a user's rm, or another process's eviction
    os.remove(value_path(directory, key("d", 8)))
    assert store.segments("d", BS, 10, SIZE) is None
    assert store.read("d", SIZE - 5, 5, SIZE) is None
    assert store.get("d", 1) is None
    assert store.counts["gone"] == 2 and key("d", 1) not in rows(directory)
    assert store.held("d") == [(0, BS), (2 * BS, 8 * BS)]
    store.put_range("d", 0, data, SIZE)
    assert store.read("d", 0, SIZE, SIZE) == data
    # deleted after its fd was cached: the fd still reads the file's (right) bytes
    segs = store.segments("d", 3 * BS, 1, SIZE)
    os.remove(value_path(directory, key("d", 3)))
    assert store.read("d", 3 * BS, BS, SIZE) == data[3 * BS : 4 * BS] == os.pread(segs[0].fd, BS, 0)
    for i in (4, 5, 6):  # pushes its fd out of the LRU (2 fds): now it is gone
        store.read("d", i * BS, 1, SIZE)
    assert store.read("d", 3 * BS, BS, SIZE) is None
    store.close()


def test_a_put_of_a_block_whose_file_vanished_unseen_stores_it_again(tmp_path):
    """The map still names the block (nobody read it since its file went): a put of it must
    not be skipped as held, or the refetched block is lost the next time the gap is seen."""
    directory = str(tmp_path / "c")
    data = src(6)
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put_range("d", 0, data, SIZE)
    os.remove(value_path(directory, key("d", 2)))
    store.put_range("d", 2 * BS, data[2 * BS : 3 * BS], SIZE)  # refetched by a reader
    assert store.read("d", 0, SIZE, SIZE) == data
    assert store.cached_bytes("d") == SIZE and store.counts["gone"] == 0
    store.close()


def test_puts_committed_while_the_map_loads_are_in_the_map_it_installs(tmp_path, monkeypatch):
    """A map loaded (a refresh) while this process's writers commit: every commit is in the
    map installed, however many overlap the load — a stale map made the reader fetch the
    put's bytes again (test_concurrency's two-readers test, about 1 full run in 10)."""
    directory = str(tmp_path / "c")
    data = src(8)
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put_range("d", 0, data[:BS], SIZE)
    known = store._known
    load = known._load
    puts = iter(range(1, 8))

    def load_while_writers_commit(content_id):
        i = next(puts, None)
        if i is None:
            return load(content_id)
        store.put_range("d", i * BS, data[i * BS:(i + 1) * BS], SIZE)  # seen by the SQL read
        fresh = load(content_id)
        store.put("d", i, data[i * BS:(i + 1) * BS])  # replaces it: after the read
        j = next(puts, i)
        store.put_range("d", j * BS, data[j * BS:(j + 1) * BS], SIZE)  # after the read
        return fresh

    monkeypatch.setattr(known, "_load", load_while_writers_commit)
    seen = store.held("d", refresh=True)
    monkeypatch.setattr(known, "_load", load)
    other = DiskBlockStore(directory, BS, 1 << 30)  # what the index holds
    assert seen == store.held("d") == other.held("d") and seen[0][0] == 0
    assert store.read("d", 0, seen[0][1], SIZE) == data[:seen[0][1]] and store.counts["gone"] == 0
    other.close()
    store.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_fd_handed_out_stays_open_for_the_grace(tmp_path):
    clock = Clock()
    data = src(6)
    with DiskBlockStore(tmp_path / "c", BS, 1 << 30, max_fds=2, fd_grace=10.0, clock=clock) as store:
        store.put_range("g", 0, data, SIZE)
        (first,) = store.segments("g", 0, BS, SIZE)
        for i in (1, 2, 3):  # the LRU holds 2: the first fd leaves it
            store.segments("g", i * BS, 1, SIZE)
        clock.now += 9.0
        store.segments("g", 4 * BS, 1, SIZE)  # a sweep: still within the grace
        assert store._fds.is_open(first.fd)
        assert os.pread(first.fd, BS, first.pos) == data[:BS]
        clock.now += 1.5
        store.segments("g", 5 * BS, 1, SIZE)  # past the grace: closed now
        assert not store._fds.is_open(first.fd)
        counts = store.fd_counts()
        assert counts["open"] == 2 and counts["closed_early"] == 0


def test_the_graveyard_closes_early_only_past_its_bound_and_after_a_second(tmp_path):
    clock = Clock()
    directory = tmp_path / "f"
    directory.mkdir()
    for i in range(20):
        (directory / str(i)).write_bytes(b"x")
    fds = FdCache(str(directory), 2, grace=10.0, clock=clock)
    fds.max_total = 6
    got = [fds.get(str(i)) for i in range(10)]  # 8 in the graveyard, all younger than a second
    assert all(fds.is_open(fd) for fd in got)
    clock.now += 1.0
    fds.get("10")
    assert fds.counts()["open"] + fds.counts()["grave"] == 6 and fds.closed_early == 5
    assert fds.get("nope") is None
    fds.close()
    assert not any(fds.is_open(fd) for fd in got)


def test_a_low_fd_limit_is_raised():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_nofile(4096) == min(4096, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raise_nofile(100) == min(4096, hard)  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_two_stores_on_one_directory_see_each_others_puts_after_refresh(tmp_path):
    data = src(7)
    a = DiskBlockStore(tmp_path / "c", BS, 1 << 30)
    b = DiskBlockStore(tmp_path / "c", BS, None)
    try:
        assert a.held("x") == b.held("x") == []
        a.put_range("x", 0, data[: 2 * BS + 5], SIZE)
        assert b.held("x") == [] and b.segments("x", 0, 10, SIZE) is None  # not without a refresh
        assert b.held("x", refresh=True) == [(0, 2 * BS + 5)]
        assert b.read("x", 0, 2 * BS + 5, SIZE) == data[: 2 * BS + 5]
        assert b.get("y", 0) is None
        a.put("y", 0, b"y" * BS)
        assert b.get("y", 0) == b"y" * BS  # get asks the index on a miss
        # b stores a piece of a block a holds whole: never over the block
        b.put_range("x", BS + 1, data[BS + 1 : BS + 9], SIZE)
        assert [k for k in rows(tmp_path / "c") if k.startswith("x:")] == [key("x", 0), key("x", 1), key("x", 2, 0)]
        # a's map is stale after b drops it: a miss, not an error
        assert b.drop("x") == 2 * BS + 5
        assert a.segments("x", 0, 10, SIZE) is None and a.read("x", BS, 10, SIZE) is None
        assert a.held("x", refresh=True) == []
        a.put_range("x", 0, data[:10], SIZE)
        assert b.read("x", 0, 10, SIZE) == data[:10]  # b's map went with its drop: loaded anew
    finally:
        a.close()
        b.close()


def test_two_stores_merging_pieces_of_one_block_stay_right(tmp_path):
    data = src(8)
    a = DiskBlockStore(tmp_path / "c", BS, 1 << 30)
    b = DiskBlockStore(tmp_path / "c", BS, 1 << 30)
    try:
        a.put_range("m", 10, data[10:20], SIZE)
        b.put_range("m", 30, data[30:40], SIZE)
        a.put_range("m", 20, data[20:30], SIZE)  # joins a's piece and b's (read from the index)
        assert b.held("m", refresh=True) == [(10, 40)] and b.read("m", 10, 30, SIZE) == data[10:40]
        b.put_range("m", 0, data[:BS], SIZE)
        assert a.held("m", refresh=True) == [(0, BS)] and a.cached_indices("m") == [0]
        assert a.volume() == BS and len(value_files(tmp_path / "c")) == 1
    finally:
        a.close()
        b.close()


def _crash_during_put(directory, stage):
    """Child process: die (no cleanup, like SIGKILL) in the middle of a put."""
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put("crash", 0, b"o" * BS)
    if stage == "writing file":
        def torn(fd, data):
            os.write(fd, data[: BS // 2])
            os._exit(3)
        cache.index._write_all = torn
    else:  # file complete, row not yet committed
        def die(*args, **kwargs):
            os._exit(3)
        cache.index.Index._put_row = die
    store.put_range("crash", BS, b"n" * BS, 4 * BS)  # a new block
    os._exit(0)  # not reached


def _crash_overwrite(directory):
    store = DiskBlockStore(directory, BS, 1 << 30)
    store.put("crash", 0, b"o" * BS)

    def die(*args, **kwargs):
        os._exit(3)
    cache.index.Index._put_row = die
    store.put("crash", 0, b"N" * BS)  # the overwrite dies before its commit


def _run_child(target, *args) -> None:
    p = multiprocessing.get_context("spawn").Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 3


@pytest.mark.parametrize("stage", ["writing file", "before commit"])
def test_a_crash_mid_put_leaves_nothing_readable(tmp_path, stage):
    directory = str(tmp_path / "c")
    _run_child(_crash_during_put, directory, stage)
    sizes = sorted(os.path.getsize(p) for p in value_files(directory))
    # the torn (or complete but uncommitted) file is on disk, yet no row points to it
    assert sizes == sorted([BS, BS // 2 if stage == "writing file" else BS])
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        assert store.get("crash", 1) is None and store.read("crash", BS, 1, 4 * BS) is None
        assert store.cached_indices("crash") == [0] and store.held("crash") == [(0, BS)]
        assert store.get("crash", 0) == b"o" * BS
        store.put("crash", 1, b"n" * BS)  # the store is still usable
        assert store.get("crash", 1) == b"n" * BS


def test_a_crash_mid_overwrite_keeps_the_old_block(tmp_path):
    directory = str(tmp_path / "c")
    _run_child(_crash_overwrite, directory)
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        assert store.get("crash", 0) == b"o" * BS


def _share(directory, version, seed, rounds, start, out):
    rng = random.Random(seed)
    data = src(9, 61 * BS)
    bad = 0
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        start.wait(60)  # both processes open, then race
        for _ in range(rounds):
            a = rng.randrange(len(data))
            b = min(len(data), a + rng.randint(1, 3 * BS))
            store.put_range("shared", a, data[a:b], len(data))  # both write the same content
            store.held("shared", refresh=rng.random() < 0.3)
            for _ in range(3):
                a = rng.randrange(len(data))
                got = store.read("shared", a, rng.randint(1, 2 * BS), len(data))
                if got is not None and got != data[a : a + len(got)]:
                    bad += 1
            store.cached_indices("shared")
            store.cached_bytes("shared")
    out.put((version, bad))


def test_two_processes_share_a_directory(tmp_path):
    directory = str(tmp_path / "c")
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_share, args=(directory, v, 100 + v, 200, start, out)) for v in (0, 1)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(results) == [(0, 0), (1, 0)]
    data = src(9, 61 * BS)
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        held = store.held("shared")
        assert len(held) >= 1 and held == store.cached_ranges("shared")
        for a, b in held:
            assert store.read("shared", a, b - a, len(data)) == data[a:b]
        assert store.counts["bad"] == 0
        assert sum(os.path.getsize(p) for p in value_files(directory)) == store.volume()


def test_objects_are_raw_bytes_with_their_crc32c(tmp_path):
    directory = str(tmp_path / "c")
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        store.put("r", 0, b"raw!" * (BS // 4))
        store.put_range("r", BS + 3, b"piece", 3 * BS)
    found = rows(directory)
    assert set(found) == {key("r", 0), key("r", 1, 3)}
    for k, data in ((key("r", 0), b"raw!" * (BS // 4)), (key("r", 1, 3), b"piece")):
        name, size, tag = found[k]
        assert open(os.path.join(directory, name), "rb").read() == data
        assert (size, tag) == (len(data), crc32c(data))
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) & 0o077 == 0


def test_prepare_checks_new_objects_and_advises_checked_ones(tmp_path, monkeypatch):
    directory = str(tmp_path / "c")
    data = src(10)
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        store.put_range("w", 0, data, SIZE)
    advised = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, a, b, how: advised.append(os.readlink(f"/proc/self/fd/{fd}")))
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        store.read("w", 0, 1, SIZE)  # block 0 checked
        os.remove(value_path(directory, key("w", 4)))
        store.prepare("w", [(0, 2 * BS), (4 * BS, 5 * BS + 1)], SIZE)
        store.will_need("w", [7])
        assert store.drain(30)
        assert store.counts["checked"] == 1 + 3 and store.counts["gone"] == 1  # 1, 5 and 7; 4 is gone
        assert advised == [value_path(directory, key("w", 0))]
        store.prepare("nothing", [(0, 10)], 10)
        assert store.drain(30)
        advised.clear()
        store.put_range("fresh", 0, data, SIZE)  # written by this process: nothing to prepare
        store.prepare("fresh", [(0, SIZE)], SIZE)
        assert store.drain(30)
        assert advised == [] and store.counts["checked"] == 4


def test_connections_are_kept_per_os_thread(tmp_path, monkeypatch):
    """FUSE callbacks arrive on libfuse's threads with a fresh Python thread state each
    call, so diskcache's ``threading.local`` would be empty every time; the store keys its
    connections by the OS thread id instead (what sqlite3's same-thread check uses)."""
    import diskcache.core

    from cache.index import _PerOSThread

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
        store.put("r", 0, b"x" * BS)
        n = len(made)
        for _ in range(20):
            assert store.get("r", 0) == b"x" * BS
            assert store.cached_bytes("r") == BS
        t = threading.Thread(target=lambda: store.cached_bytes("r"))
        t.start()
        t.join()
        assert len(made) == n + 1  # one more OS thread, one more connection


# -- the format version and opening from a cache dir ---------------------------------------------

def test_an_old_format_cache_is_dropped_with_one_log_line(tmp_path, caplog):
    old = tmp_path / "blocks"
    old.mkdir()
    (old / "cache.db").write_bytes(b"v1 index")
    (old / "ab").mkdir()
    (old / "ab" / "x.val").write_bytes(b"old block")
    with caplog.at_level(logging.INFO, logger="test.open"):
        store = open_store(tmp_path, BS, 1 << 30, logging.getLogger("test.open"))
    assert isinstance(store.inner, DiskBlockStore) and store.inner.directory == str(tmp_path / STORE_DIR)
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "blocks" in caplog.text
    assert not old.exists()
    store.put_range("c", 0, b"new", 10)
    assert store.read("c", 0, 3, 10) == b"new"
    store.close()
    for t in threading.enumerate():
        if t.name == "cache-remove-old":
            t.join(30)
    assert sorted(os.listdir(tmp_path)) == [STORE_DIR]


@pytest.mark.parametrize("marker", ["netmount block store, format 3: from the future\n", "", None])
def test_a_store_of_another_format_is_dropped_never_read(tmp_path, marker, caplog):
    directory = tmp_path / STORE_DIR
    with DiskBlockStore(directory, BS, 1 << 30) as store:
        store.put("c", 0, b"x" * BS)
    if marker is None:
        (directory / MARKER).unlink()
    else:
        (directory / MARKER).write_text(marker)
    with caplog.at_level(logging.WARNING):
        store = open_disk_store(tmp_path, BS, 1 << 30, logging.getLogger("test.open"))
    with store:
        assert store.get("c", 0) is None and store.volume() == 0 and store.held("c") == []
        assert (directory / MARKER).read_text() == MARKER_TEXT
    assert "another format" in caplog.text


def test_a_directory_that_is_not_a_store_is_left_alone(tmp_path):
    directory = tmp_path / "precious"
    directory.mkdir()
    (directory / "thesis.tex").write_text("years of work")
    with pytest.raises(OSError, match="not a netmount block store"):
        DiskBlockStore(directory, BS, 1 << 30)
    assert (directory / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    DiskBlockStore(empty, BS, 1 << 30).close()  # an empty directory is fine
    assert (empty / MARKER).exists()


def test_open_store_falls_back_to_memory_when_the_directory_cannot_be_made(tmp_path, caplog):
    parent = tmp_path / "a-file"
    parent.write_bytes(b"not a directory")  # as root chmod stops nothing; this does
    with pytest.raises(OSError):
        open_disk_store(parent, BS, 1 << 30)
    with caplog.at_level(logging.WARNING, logger="test.safe"):
        store = open_store(parent, BS, 1 << 30, logging.getLogger("test.safe"), fallback_bytes=1 << 20)
    assert isinstance(store.inner, MemoryBlockStore) and store.inner.size_limit == 1 << 20
    assert len(caplog.records) == 1
    store.put("c", 0, b"m" * BS)
    assert store.get("c", 0) == b"m" * BS
    with pytest.raises(OSError):  # no fallback asked for: the failure is the answer
        open_store(parent, BS, 1 << 30, logging.getLogger("test.safe"), fallback_bytes=None)


def test_open_store_falls_back_on_a_corrupted_database(tmp_path):
    directory = tmp_path / STORE_DIR
    DiskBlockStore(directory, BS, 1 << 30).close()
    for name in os.listdir(directory):
        if name.startswith("cache.db"):
            os.remove(directory / name)
    (directory / "cache.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(sqlite3.DatabaseError):
        DiskBlockStore(directory, BS, 1 << 30)
    store = open_store(tmp_path, BS, 1 << 30, logging.getLogger("test.safe"), fallback_bytes=0)
    assert isinstance(store.inner, MemoryBlockStore) and store.get("c", 0) is None


def test_safe_disk_directory_made_unusable_while_open(tmp_path, caplog):
    """The store directory is replaced by a regular file under a live store (root ignores
    chmod, so this is how we make it unusable): puts are no-ops, reads are misses."""
    directory = tmp_path / "c"
    store = SafeBlockStore(DiskBlockStore(directory, BS, 1 << 30), logging.getLogger("test.safe"))
    store.put("u", 0, b"u" * BS)
    os.rename(directory, tmp_path / "moved")
    directory.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="test.safe"):
        store.put("u", 1, b"v" * BS)
        store.put_range("u", 2 * BS, b"v" * BS, 3 * BS)
        assert store.get("u", 0) is None  # its file is unreachable now: a miss, not an error
        assert store.segments("u", BS, 1, 3 * BS) is None
        store.cached_bytes("u")
    assert store.failures["put:NotADirectoryError"] == 1
    assert len([r for r in caplog.records if "put " in r.getMessage()]) == 1
    store.close()


def test_safe_disk_full(tmp_path, monkeypatch):
    store = SafeBlockStore(DiskBlockStore(tmp_path / "c", BS, 1 << 30), logging.getLogger("test.safe"))
    store.put("f", 0, b"a" * BS)
    def full(fd, data):
        os.write(fd, data[:7])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache.index, "_write_all", full)
    store.put("f", 1, b"b" * BS)
    store.put_ranges([("f", 2 * BS, b"c" * BS, 4 * BS), ("f", 3 * BS + 1, b"d", 4 * BS)])
    assert store.failures["put:OSError"] == 1 and store.failures["put_ranges:OSError"] == 1
    assert store.get("f", 1) is None and store.read("f", 2 * BS, 1, 4 * BS) is None
    assert store.cached_indices("f") == [0] and store.get("f", 0) == b"a" * BS
    # the partial files are removed, not left to leak space on a full disk
    assert len(value_files(tmp_path / "c")) == 1
    store.close()
