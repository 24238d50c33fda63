"""Many readers at once: 8 processes through one mount, and two mounts (two daemons)
sharing one cache dir.  All bytes right; one daemon fetches each block once; two daemons
on one cache dir never wait on each other's network, so a block both miss at the same
moment may be fetched by each (at most twice), and a block one stored is not fetched by
the other afterwards (counted in the hub's request log)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

from conftest import settle
from faultkit import BLOCK, check_cache_blocks, fault_root, fhub, fm  # noqa: F401 (fixtures)

READER = r"""
import os, random, sys
mp, src, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(seed)
names = sorted(os.listdir(src))
for _ in range(60):
    name = rnd.choice(names)
    size = os.path.getsize(os.path.join(src, name))
    # overlapping ranges: every process draws from the same few hot regions
    start = rnd.choice([0, size // 3, size // 2, size - 700_000]) + rnd.randrange(0, 400_000)
    length = rnd.randrange(1, 900_000)
    with open(os.path.join(mp, name), "rb") as a, open(os.path.join(src, name), "rb") as b:
        got, want = os.pread(a.fileno(), length, start), os.pread(b.fileno(), length, start)
    if got != want:
        sys.exit(f"{name} [{start}, +{length}): wrong bytes")
"""


def _blocks_fetched(fhub) -> Counter:
    """(blob, block index) -> how many answered CDN requests carried that block."""
    seen: Counter = Counter()
    for r in fhub.requests(server="cdn", method="GET"):
        if r.status != 206 or not r.range:
            continue
        a, b = (int(x) for x in r.range.split("=")[1].split("-"))
        if r.body_bytes != b - a + 1:  # cut short: the block was not delivered
            continue
        for i in range(a // BLOCK, b // BLOCK + 1):
            seen[(r.path, i)] += 1
    return seen


def test_eight_processes_overlapping_ranges_one_mount(fm, fhub, fault_root):
    src = fault_root / "faults" / "big"
    mp = fm.mount("faults/big")
    fhub.reset_log()
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(mp), str(src), str(seed)],
                              stderr=subprocess.PIPE, text=True) for seed in range(8)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    settle(mp)
    seen = _blocks_fetched(fhub)
    assert seen, "nothing was fetched"
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, twice
    fm.unmount(mp)
    assert check_cache_blocks(fm.cache_dir, [src]) > 0


def test_two_mounts_sharing_one_cache_dir_fetch_each_block_at_most_once_each(fm, fhub, fault_root):
    src = fault_root / "faults" / "big"
    a = fm.mount("faults/big", name="a")
    b = fm.mount("faults/big", name="b")
    assert fm.stats(a)["pid"] != fm.stats(b)["pid"]
    fhub.reset_log()
    fhub.set_faults([{"kind": "slow", "rate": 4 << 20, "server": "cdn"}])  # downloads overlap
    errors: list = []

    def read(mp, name):
        try:
            data = (mp / name).read_bytes()
            if data != (src / name).read_bytes():
                errors.append(f"{mp.name}/{name}: wrong bytes")
        except OSError as exc:
            errors.append(exc)

    names = sorted(p.name for p in src.iterdir())
    threads = [threading.Thread(target=read, args=(mp, n)) for n in names for mp in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    settle(a)
    settle(b)
    seen = _blocks_fetched(fhub)
    total_blocks = sum(-(-p.stat().st_size // BLOCK) for p in src.iterdir())
    assert len(seen) == total_blocks, (len(seen), total_blocks)
    thrice = {k: n for k, n in seen.items() if n > 2}
    assert not thrice, f"{len(thrice)} blocks fetched more than once per daemon: {sorted(thrice)[:5]}"
    fm.unmount(a)
    fm.unmount(b)
    assert check_cache_blocks(fm.cache_dir, [src]) == total_blocks


# -- the pieces, without a kernel: two readers over one disk store ------------------------

def test_two_readers_sharing_a_disk_store_fetch_each_block_at_most_once_each(tmp_path):
    from cache import DiskBlockStore
    from netmount.read.reader import BlockReader

    from fakes import MemoryFetcher, make_bytes, remote, spans

    bs = 64 << 10
    data = make_bytes(40 * bs + 99, seed=7)
    f = remote("x.bin", data)
    fetch = MemoryFetcher({"x.bin": data})  # one fake network, two "daemons"
    # two stores on one directory: as two processes
    readers = [BlockReader(DiskBlockStore(tmp_path / "blocks", bs, 1 << 30), fetch, max_request_bytes=4 * bs)
               for _ in range(2)]
    results = []

    def read(reader, seed):
        import random

        rnd = random.Random(seed)
        for _ in range(40):
            a = rnd.randrange(len(data))
            n = rnd.randrange(1, 5 * bs)
            results.append(reader.read(f, a, n) == data[a:a + n])

    threads = [threading.Thread(target=read, args=(readers[k % 2], k)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results and all(results)
    per_block = Counter()
    for _, s, e in spans(fetch):
        for i in range(s // bs, (e - 1) // bs + 1):
            per_block[i] += 1
    assert per_block and max(per_block.values()) <= 2, {i: n for i, n in per_block.items() if n > 2}
    for r in readers:
        r.close()
        r.store.close()
    before = len(spans(fetch))
    again = BlockReader(DiskBlockStore(tmp_path / "blocks", bs, 1 << 30), fetch, max_request_bytes=4 * bs)
    for i in sorted(per_block):  # every block one of them stored: no network for it now
        assert again.read(f, i * bs, bs) == data[i * bs:(i + 1) * bs]
    assert len(spans(fetch)) == before
    again.close()
    again.store.close()
