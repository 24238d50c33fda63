"""Micro-benchmark of the disk block store (cache/): the costs the read path pays per call.

    PYTHONPATH=. python scripts/storebench.py [--blocks 64] [--block-size 1M] [--repeat 5] [--dir DIR]

- put: ms per block, one ``put`` per block; put_ranges: ms per block, 8 blocks per call
  (half the blocks each, interleaved, so both see the same page-cache writeback).
- first use: µs per MiB for the first ``segments`` of each block in a fresh store object
  (read whole + CRC32C), with the blocks' pages in the page cache ("warm") and evicted
  from it first with ``fsync`` + ``POSIX_FADV_DONTNEED`` on the block files ("disk"; no
  global cache drop).
- segments: µs per call on a held, checked block (128 KiB inside one block), then on a
  range spanning two blocks; read: the same 128 KiB copied with ``pread``; get: a whole block.
Prints medians over ``--repeat`` runs (each on a fresh directory), and every run.  The
machine is shared and noisy: compare medians, and alternate runs when comparing trees
(``PYTHONPATH=<tree>``; a tree whose store has no ``segments`` reports put and get only).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

from cache import DiskBlockStore

CID = "f" * 64
READ = 128 << 10


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def timed(fn, n: int) -> float:
    """Seconds per call of ``fn(i)`` for i in range(n)."""
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n


def evict_pages(directory: str) -> None:
    for d, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".val"):
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
                os.fsync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)


def open_store(directory: str, bs: int, n: int):
    return DiskBlockStore(directory, bs, 4 * n * bs)


def one_run(root: str, bs: int, n: int, blocks: list[bytes]) -> dict[str, float]:
    directory = tempfile.mkdtemp(dir=root)
    size = n * bs
    out: dict[str, float] = {}
    try:
        store = open_store(directory, bs, n)
        new = hasattr(store, "segments")
        puts = batches = 0.0
        for k in range(0, n, 16):  # 8 puts, then a batch of 8: both see the same writeback
            if not new:  # a store without put_ranges stores all n blocks with put
                puts += timed(lambda j: store.put(CID, k + 8 + j, blocks[k + 8 + j]), 8) * 8
            puts += timed(lambda j: store.put(CID, k + j, blocks[k + j]), 8) * 8
            if new:
                batch = [(CID, (k + 8 + j) * bs, blocks[k + 8 + j], size) for j in range(8)]
                batches += timed(lambda _: store.put_ranges(batch), 1)
        out["put ms/block"] = puts / (n if not new else n // 2) * 1e3
        if new:
            out["put_ranges(8) ms/block"] = batches / (n // 2) * 1e3
        store.close()
        if new:
            for where in ("warm", "disk"):
                if where == "disk":
                    evict_pages(directory)
                store = open_store(directory, bs, n)
                store.held(CID)  # the map loaded (once per content), outside the timing
                per = timed(lambda i: store.segments(CID, i * bs, bs, size), n)
                out[f"first use ({where}) µs/MiB"] = per * 1e6 / (bs / (1 << 20))
                store.close()
        store = open_store(directory, bs, n)
        rng = random.Random(0)
        picks = [rng.randrange(n) for _ in range(20000)]
        for i in range(n):  # every block checked and its fd open (or, before: in the page cache)
            store.get(CID, i)
        if new:
            out["segments µs/call"] = timed(lambda k: store.segments(CID, picks[k] * bs + 4096, READ, size),
                                            len(picks)) * 1e6
            out["segments 2 blocks µs/call"] = timed(
                lambda k: store.segments(CID, picks[k] * bs + bs - 4096, READ, size), len(picks) - 1) * 1e6
            out["read 128 KiB µs/call"] = timed(lambda k: store.read(CID, picks[k] * bs + 4096, READ, size),
                                                len(picks)) * 1e6
        out["get µs/block"] = timed(lambda k: store.get(CID, picks[k]), 2000) * 1e6
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--block-size", default="1M")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to make the stores (default: the temp dir)")
    args = ap.parse_args()
    bs = parse_size(args.block_size)
    n = max(16, args.blocks // 16 * 16)
    blocks = [os.urandom(bs) for _ in range(n)]  # made once: the timings are the store's
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        runs = [one_run(root, bs, n, blocks) for _ in range(args.repeat)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{n} blocks of {bs >> 10} KiB, {args.repeat} runs (medians; every run in brackets)")
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"  {name:28s} {statistics.median(values):10.2f}   {[round(v, 2) for v in values]}")


if __name__ == "__main__":
    main()
