"""Differential reads through a real mount (issue 10, item 3).

Random ranges — half of them within two pages of a block edge or of the end of a file, the
rest anywhere; 1 byte to several blocks long — read with ``os.pread``, ``mmap`` slices and
``seek`` + ``read``, by 8 threads at once, through ``<mount>/...`` and through
``<mount>/.netmount/raw/...``, at block sizes 64K, 1M and 4M, on a cold cache and then
warm (unmount, mount again on the same cache dir), and compared with the source bytes.
Any OSError (EIO above all), any wrong byte, and any ``ERROR`` line in the daemon's log
fails the test.

The seed is random on every run and printed in every failure; ``NETMOUNT_DIFF_SEED=<n>``
replays one.  The reads run in a child process (this file, run as a script): an EIO under
an mmap page fault is a SIGBUS, which must kill the child and not pytest.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netmount.core.blocks import PAGE

from conftest import Mounter
from faultkit import daemon_pids, wait_gone

pytestmark = pytest.mark.fuse  # its own hub process, real mounts
THREADS = 8
READS = 300  # per phase (cold, warm) and block size
MAX_READ = 8 << 20
RAW = ".netmount/raw"


# -- the child: run a plan of reads, report failures as JSON ------------------------------------

def _read_pread(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _read_mmap(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm[offset:offset + size]


def _read_seek(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


READERS = {"pread": _read_pread, "mmap": _read_mmap, "seek": _read_seek}


def _first_difference(got: bytes, want: bytes) -> int:
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return min(len(got), len(want))


def run_plan(plan: dict) -> list[dict]:
    """Do every read of ``plan`` on 8 threads; the failures, each with its read."""
    sources = {rel: Path(src).read_bytes() for rel, src in plan["sources"].items()}

    def one(op):
        view, rel, how, offset, size = op
        want = sources[rel][offset:offset + size]
        try:
            got = READERS[how](os.path.join(plan["mount"], view, rel), offset, size)
        except OSError as exc:
            return {"read": op, "error": f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"}
        if got != want:
            return {"read": op, "wrong": f"got {len(got)} bytes, want {len(want)}, "
                                         f"first difference at +{_first_difference(got, want)}"}
        return None

    with ThreadPoolExecutor(THREADS) as pool:
        return [r for r in pool.map(one, plan["reads"]) if r is not None]


# -- the plan -------------------------------------------------------------------------------

def pick_offset(rng: random.Random, size: int, block: int) -> int:
    """Half near a block edge or the end of the file (within two pages), half anywhere."""
    if rng.random() < 0.5:
        edge = rng.choice([*range(0, size, block), size])
        offset = edge + rng.randint(-2 * PAGE, 2 * PAGE)
    else:
        offset = rng.randrange(size + 1)
    return min(max(offset, 0), size)


def pick_size(rng: random.Random, size: int, offset: int, block: int) -> int:
    """1 byte to four blocks, log-uniform; one read in ten runs to (or past) the end."""
    if rng.random() < 0.1:
        return max(1, size - offset + rng.randint(0, 3))
    return min(MAX_READ, int(math.exp(rng.uniform(0, math.log(4 * block)))))


def plan_reads(rng: random.Random, files: dict[str, int], block: int, n: int) -> list[list]:
    reads = []
    names = sorted(files)
    for _ in range(n):
        rel = rng.choice(names)
        offset = pick_offset(rng, files[rel], block)
        reads.append([rng.choice(["", RAW]), rel, rng.choice(sorted(READERS)), offset,
                      pick_size(rng, files[rel], offset, block)])
    return reads


# -- the test -------------------------------------------------------------------------------

REPO = "diff/mixed"


@pytest.fixture(scope="module")
def diff_repo(tmp_path_factory) -> Path:
    """Sizes that are not multiples of any block size, one shorter than a block, one a
    byte past 4 MiB, a regular (non-LFS) file, and a tiny DeepSeek-V3 in two ~1.1 MB
    shards plus its MTP shard (a full 1 MiB block and a short last one)."""
    from netmount.dev.testmodels import build_tiny_deepseek_v3

    root = tmp_path_factory.mktemp("diffroot")
    repo = root / REPO
    build_tiny_deepseek_v3(repo, shards=2)
    rng = random.Random(7)
    (repo / "data.bin").write_bytes(rng.randbytes(5 * (1 << 20) + 12345))
    (repo / "edge.bin").write_bytes(rng.randbytes((4 << 20) + 1))
    (repo / "small.bin").write_bytes(rng.randbytes(40_000))
    (repo / "notes.txt").write_bytes(rng.randbytes(300_000))  # regular file: /resolve/ on the hub
    return repo

@pytest.fixture(scope="module")
def diff_hub(diff_repo):
    from hubproc import HubProcess

    with HubProcess(diff_repo.parent.parent) as server:
        yield server

def _files(repo: Path) -> dict[str, int]:
    return {p.relative_to(repo).as_posix(): p.stat().st_size
            for p in sorted(repo.rglob("*")) if p.is_file() and p.stat().st_size > 0}

def _error_lines(cache_dir: Path) -> list[str]:
    lines = []
    for log in sorted((cache_dir / "logs").glob("*.log")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    return lines

def _run_child(plan: dict, plan_file: Path) -> tuple[list[dict], str]:
    plan_file.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, "-X", "faulthandler", __file__, str(plan_file)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        why = f"the reading process ended with {done.returncode}"
        if done.returncode == -7:  # SIGBUS
            why += " (SIGBUS: an mmap page fault got EIO)"
        return [{"error": why, "stderr": done.stderr[-3000:]}], done.stderr
    return json.loads(done.stdout), done.stderr

@pytest.mark.parametrize("block, replies", [("64K", "fd"), ("1M", "fd"), ("4M", "fd"), ("1M", "copied")])
def test_random_reads_match_the_source(tmp_path, diff_repo, diff_hub, block, replies):
    """``replies``: "fd" answers reads with stored files' descriptors (libfuse's read_buf,
    the default), "copied" with bytes (``NETMOUNT_FD_REPLIES=0``: what a libfuse whose structs
    do not match gets)."""
    seed = int(os.environ.get("NETMOUNT_DIFF_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    bsize = {"64K": 64 << 10, "1M": 1 << 20, "4M": 4 << 20}[block]
    files = _files(diff_repo)
    sources = {rel: str(diff_repo / rel) for rel in files}
    cache_dir = tmp_path / "cache"
    mounter = Mounter(tmp_path, diff_hub.url)
    cold = plan_reads(rng, files, bsize, READS)
    warm = rng.sample(cold, READS // 2) + plan_reads(rng, files, bsize, READS - READS // 2)
    rng.shuffle(warm)
    try:
        for phase, reads in (("cold", cold), ("warm", warm)):
            mp = mounter.mount(REPO, "--block-size", block, "--cache-dir", str(cache_dir),
                               name=f"mnt-{block}", env={"NETMOUNT_FD_REPLIES": "1" if replies == "fd" else "0"})
            failures, _ = _run_child({"mount": str(mp), "sources": sources, "reads": reads},
                                     tmp_path / f"plan-{phase}.json")
            pids = daemon_pids(mp)
            mounter.unmount(mp)
            wait_gone(pids)  # the daemon has closed the cache before the warm mount opens it
            errors = _error_lines(cache_dir)
            where = f"seed {seed} (NETMOUNT_DIFF_SEED={seed}), block size {block}, {replies} replies, {phase} cache"
            assert not failures, (f"{len(failures)} of {len(reads)} reads failed at {where}:\n"
                                  + "\n".join(json.dumps(f) for f in failures[:12])
                                  + "\ndaemon log:\n" + "\n".join(errors[:12]))
            assert not errors, f"ERROR lines in the daemon log at {where}:\n" + "\n".join(errors[:12])
    finally:
        mounter.cleanup()
        shutil.rmtree(cache_dir, ignore_errors=True)

def test_plan_weights_edges_and_bounds():
    """The plan itself: in range, about half near an edge, sizes from 1 byte up."""
    rng = random.Random(1)
    files = {"a": 5 * (1 << 20) + 12345, "b": 40_000}
    reads = plan_reads(rng, files, 1 << 20, 2000)
    near = 0
    for view, rel, how, offset, size in reads:
        assert view in ("", RAW) and how in READERS
        assert 0 <= offset <= files[rel] and 1 <= size <= MAX_READ
        edges = [*range(0, files[rel], 1 << 20), files[rel]]
        near += min(abs(offset - e) for e in edges) <= 2 * PAGE
    assert 0.45 * len(reads) < near < 0.75 * len(reads)
    assert min(r[4] for r in reads) < 16 and max(r[4] for r in reads) > 2 << 20


if __name__ == "__main__":
    print(json.dumps(run_plan(json.loads(Path(sys.argv[1]).read_text()))))
