"""Crashes and resource limits: a daemon killed with -9 mid-download, a small cache, a
cache dir that is read-only or full.  Every case ends with every file's sha256 right and
every block left in the cache equal to the source."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from cache import STORE_DIR
from netmount.core.procs import is_running
from netmount.mounting import mounts
from netmount.mounting.stats import wait_idle

from conftest import run_cli
from faultkit import BLOCK, assert_tree_matches, check_cache_blocks, daemon_pids, fault_root, fhub, fm, wait_gone  # noqa: F401


def _big(fault_root):
    return fault_root / "faults" / "big"


def _read_all(mp, names, errors: list, progressed: threading.Event) -> list[threading.Thread]:
    def read(name, offset):
        try:
            with open(mp / name, "rb") as fh:
                fh.seek(offset)
                while fh.read(1 << 20):
                    progressed.set()  # a reader got data: downloads are under way
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n, off), daemon=True)
               for n in names for off in (0, 3 << 20)]  # 8 readers, overlapping halves
    for t in threads:
        t.start()
    return threads


def test_kill_9_mid_download_then_mount_again(fm, fhub, fault_root):
    src = _big(fault_root)
    names = sorted(p.name for p in src.iterdir())
    mp = fm.mount("faults/big")
    pid = fm.stats(mp)["pid"]
    # one block stored for certain before the kill (the last block of the last shard: the
    # readers below reach it last): read through raw/ (no prefetch), then wait until idle
    last = mp / ".netmount" / "raw" / names[-1]
    with open(last, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        assert os.pread(fh.fileno(), 1000, size - 1000) == (src / names[-1]).read_bytes()[-1000:]
    assert wait_idle(mp)
    fhub.set_faults([{"kind": "slow", "rate": 256 << 10, "server": "cdn"}])  # keep runs in flight
    errors: list = []
    progressed = threading.Event()
    threads = _read_all(mp, names, errors, progressed)
    assert progressed.wait(60), "no reader got any data"  # the bound only catches a hang
    # 24 MB at 256 KB/s per response: after the first MB many runs are still in flight
    assert any(t.is_alive() for t in threads), "downloads finished before the kill"
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    wait_gone([pid])
    assert errors, "readers should have seen the daemon die"
    # ENOTCONN: the kernel mount outlived its daemon (seen at once, although for attr_timeout
    # the kernel still answers stat() of the root from its cache: mounts.is_dead asks statfs)
    assert mounts.is_dead(str(mp))
    fhub.clear_faults()
    stored = check_cache_blocks(fm.cache_dir, [src])  # what the dead daemon stored is right
    assert stored > 0

    # the same command again, same mountpoint, same cache: it clears the dead mount itself
    done = run_cli("mount", "faults/big", str(mp), "--block-size", str(BLOCK),
                   "--cache-size", str(1 << 30), env=fm.env)
    assert done.returncode == 0, done.stderr
    assert_tree_matches(mp, src)
    fm.unmount(mp)
    assert check_cache_blocks(fm.cache_dir, [src]) >= stored


def _disk_usage(folder) -> tuple[int, int]:
    """(bytes of block files, bytes of the SQLite files) under ``folder``."""
    blocks = db = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                size = os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue  # evicted while we looked
            if name.startswith("cache.db"):
                db += size
            elif name.endswith(".val"):
                blocks += size
    return blocks, db


def test_small_cache_stays_under_its_cap_and_evicted_blocks_come_back(tmp_path, fhub, fault_root):
    from faultkit import FaultMounter

    src = _big(fault_root)  # 24 MB through a 4 MB cache, twice
    cap = 4 << 20
    m = FaultMounter(tmp_path, fhub)
    try:
        peak = [0, 0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                blocks, db = _disk_usage(m.cache_dir / STORE_DIR)
                peak[0], peak[1] = max(peak[0], blocks), max(peak[1], db)
                stop.wait(0.01)  # a sampling period, not a wait for anything

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        fetched = []
        for name in ("pass1", "pass2"):  # a fresh mount each pass: no kernel page cache
            fhub.reset_log()
            mp = tmp_path / name
            mp.mkdir()
            done = run_cli("mount", "faults/big", str(mp), "--block-size", str(BLOCK),
                           "--cache-size", str(cap), env=m.env)
            assert done.returncode == 0, done.stderr
            m.mounted.append(mp)
            assert_tree_matches(mp, src)
            fetched.append(fhub.bytes_sent(server="cdn"))
            m.unmount(mp)
        stop.set()
        sampler.join()
    finally:
        m.cleanup()
    total = sum(p.stat().st_size for p in src.iterdir())
    assert fetched[0] >= total and fetched[1] >= total - cap, fetched  # evicted: fetched again
    # block files: the cap, plus for a moment the blocks being written by the reader's 4
    # store threads (eviction runs in the transaction that stores: cache/index.py)
    assert peak[0] <= cap + 4 * BLOCK, peak
    assert check_cache_blocks(m.cache_dir, [src], cache_size=cap) > 0


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def make(name: str, options: str):
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"cannot mount a tmpfs (needed to fill a disk): {done.stderr}"
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("options, why", [
    ("ro,size=1m", "read-only"),  # root ignores permissions: a read-only filesystem it is
    ("size=600k", "full"),  # room for the index, not for the blocks
])
def test_unusable_cache_dir_still_reads_from_the_network(fm, fhub, fault_root, tmpfs, options, why):
    src = fault_root / "faults" / "model"
    cache = tmpfs("cachefs", options)
    fm.env["NETMOUNT_CACHE_DIR"] = str(cache / "netmount")
    mp = fm.mount("faults/model")
    assert_tree_matches(mp, src)
    stats = fm.stats(mp)
    assert stats["errors"] == 0
    pid = stats["pid"]
    fm.unmount(mp)
    assert not is_running(pid)  # exited cleanly at unmount
    # logged, not fatal: in the cache dir if a log fits there, else in a private temp dir
    slug = str(mp).strip("/").replace("/", "_") + ".log"
    logs = [p for p in (cache / "netmount" / "logs" / slug,
                        Path(tempfile.gettempdir()) / f"netmount-logs-{os.getuid()}" / slug) if p.exists()]
    assert logs and "block cache" in "".join(p.read_text(errors="replace") for p in logs)

