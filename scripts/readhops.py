"""Micro-benchmark: hot and warm reads through the BlockReader, and how many of them wait on
another thread (a *hop*: the reading thread blocks on a future another thread completes).

    PYTHONPATH=. python scripts/readhops.py [--mib 64] [--repeat 3]

- hot: every block in the reader's memory; 128 KiB reads (the kernel's size) front to back.
- warm: every block in the disk store, none in memory, the page cache holding the store's
  files; a pump thread lifts the next blocks into memory after each read, as the prefetch
  pump does (``reader.prefetch``).

No network: the fetcher is the in-memory twin, and no block is missing.  Prints µs per read
and hops per 1,000 reads (medians over ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cache import DiskBlockStore
from netmount.read.reader import BlockReader
from netmount.remote.hub import RemoteFile
from netmount.remote.memory import MemoryFetcher

BS = 1 << 20
READ = 128 << 10
_hops = [0]
_reader_thread: list[threading.Thread] = []
_result = concurrent.futures.Future.result


def _counting_result(self, timeout=None):
    if _reader_thread and threading.current_thread() is _reader_thread[0] and not self.done():
        _hops[0] += 1
    return _result(self, timeout)


concurrent.futures.Future.result = _counting_result  # counts waits of the reading thread


def one_pass(reader: BlockReader, f: RemoteFile, pump: bool) -> tuple[float, int, int]:
    """Read ``f`` front to back in 128 KiB reads: (µs per read, hops, reads)."""
    wake, stop = threading.Event(), threading.Event()
    pos = [0]

    def pumping() -> None:
        while not stop.is_set():
            wake.wait()
            wake.clear()
            first = pos[0] // BS
            reader.prefetch(f, range(first, min(first + 16, -(-f.size // BS))), budget=64 << 20)

    t = threading.Thread(target=pumping, daemon=True)
    if pump:
        t.start()
    _reader_thread[:] = [threading.current_thread()]
    _hops[0] = 0
    n = 0
    t0 = time.perf_counter()
    for off in range(0, f.size, READ):
        data = reader.read(f, off, READ)
        assert len(data) == min(READ, f.size - off)
        pos[0] = off + READ
        if pump:
            wake.set()
        n += 1
    seconds = time.perf_counter() - t0
    _reader_thread[:] = []
    stop.set()
    wake.set()
    return seconds / n * 1e6, _hops[0], n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data = os.urandom(args.mib << 20)
    f = RemoteFile("a.bin", len(data), "f" * 64, True)
    fetcher = MemoryFetcher({"a.bin": data})
    with tempfile.TemporaryDirectory() as tmp:
        store = DiskBlockStore(Path(tmp) / "blocks", BS, 4 * len(data))
        for i in range(-(-len(data) // BS)):
            store.put(f.content_id, i, data[i * BS : (i + 1) * BS])
        rows = {"hot": [], "warm": []}
        for _ in range(args.repeat):
            reader = BlockReader(store, fetcher, memory_bytes=2 * len(data))
            reader.read(f, 0, len(data))  # everything into memory
            rows["hot"].append(one_pass(reader, f, pump=False))
            reader.close()
            reader = BlockReader(store, fetcher, memory_bytes=64 << 20)
            rows["warm"].append(one_pass(reader, f, pump=True))
            reader.drain(30)
            reader.close()
        store.close()
    fetcher.close()
    for name, runs in rows.items():
        us = statistics.median(r[0] for r in runs)
        hops = statistics.median(r[1] * 1000 / r[2] for r in runs)
        print(f"{name}: {us:.1f} µs per 128 KiB read, {hops:.0f} hops per 1,000 reads "
              f"(runs: {[(round(r[0], 1), r[1]) for r in runs]})")


if __name__ == "__main__":
    main()
