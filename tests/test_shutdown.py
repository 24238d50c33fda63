"""Stopping a daemon while a read is blocked on the network (issue 10, item 9).

The hub stalls a range answer (headers and half the body, then nothing for an hour) and
the daemon's fetch timeout is ten minutes, so the read is stuck for as long as the test
could wait.  SIGTERM to the daemon, or ``netmount unmount``, must end the daemon anyway,
and the blocked reader must get EIO — not hang, not get wrong bytes.  The bounds are the
waits below, far under the fetch timeout: no timing is asserted, and nothing is polled (the
hub says when the stalled request reached it, a pidfd when a daemon exits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from netmount.core.procs import is_running, wait_exit
from netmount.mounting.mounts import find_mount

from conftest import run_cli
from faultkit import FaultMounter, daemon_pids, fault_root, fhub  # noqa: F401  (fixtures)

READER = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    data = os.pread(fd, 100_000, 0)
    print("bytes %d" % len(data))
except OSError as exc:
    print("errno %s" % errno.errorcode.get(exc.errno, exc.errno))
"""
WAIT = 30.0  # seconds: the reader and the daemon must be done well within this


@pytest.fixture
def stalled(tmp_path, fhub):  # noqa: F811
    """A mount whose first range request for weights.bin stalls; yields (mount, reader)."""
    fhub.clear_faults()
    m = FaultMounter(tmp_path, fhub, extra_env={"NETMOUNT_FETCH_TIMEOUT": "600"})
    mp = m.mount("faults/model")
    fhub.add_fault("stall", path_contains="/blobs/", delay=3600)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(mp / ".netmount/raw/weights.bin")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = daemon_pids(mp)
    try:
        assert fhub.wait_hits(0, 1, WAIT), "the stalled request never reached the hub"
        assert reader.poll() is None, "the read should be blocked on the stalled request"
        yield m, mp, reader
    finally:
        if reader.poll() is None:
            # a read the daemon has taken cannot be killed (the kernel waits for the
            # answer): kill the daemon first, which aborts the FUSE connection
            for pid in pids:
                if is_running(pid):
                    os.kill(pid, signal.SIGKILL)
            reader.kill()
        reader.wait(timeout=WAIT)
        fhub.clear_faults()
        m.cleanup()


def _exits(pid: int) -> None:
    """The daemon exits (a pidfd wakes us), having unmounted on its way out."""
    assert wait_exit(pid, WAIT), f"daemon {pid} still running {WAIT:g} s after it was told to stop"


def _reader_result(reader) -> str:
    try:
        out, err = reader.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the blocked reader still hangs {WAIT:g} s after the daemon was told to stop")
    assert reader.returncode == 0, err
    return out.strip()


def test_sigterm_ends_a_daemon_blocked_in_a_read(stalled):
    m, mp, reader = stalled
    (pid,) = daemon_pids(mp)
    os.kill(pid, signal.SIGTERM)
    assert _reader_result(reader) == "errno EIO"
    _exits(pid)
    assert find_mount(str(mp)) is None
    log = "\n".join(p.read_text() for p in (m.cache_dir / "logs").glob("*.log"))
    assert "SIGTERM" in log, log[-2000:]
    m.mounted.clear()


def test_unmount_ends_a_daemon_blocked_in_a_read(stalled):
    m, mp, reader = stalled
    (pid,) = daemon_pids(mp)
    done = run_cli("unmount", str(mp), timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert _reader_result(reader) == "errno EIO"
    _exits(pid)
    assert find_mount(str(mp)) is None
    m.mounted.clear()


def test_sigterm_ends_an_idle_daemon(tmp_path, fhub):  # noqa: F811
    """Nothing in flight: SIGTERM still unmounts and ends the daemon (the FUSE loop is
    woken, not left waiting for the next request)."""
    fhub.clear_faults()
    m = FaultMounter(tmp_path, fhub)
    try:
        mp = m.mount("faults/model")
        assert (mp / "config.json").read_bytes() == b'{"fault": true}'
        (pid,) = daemon_pids(mp)
        os.kill(pid, signal.SIGTERM)
        _exits(pid)
        assert find_mount(str(mp)) is None
        m.mounted.clear()
    finally:
        m.cleanup()


def test_unmount_of_a_busy_mount_stops_its_daemon(tmp_path, fhub):  # noqa: F811
    """A file held open (no read in flight): ``netmount unmount`` stops the daemon rather
    than failing with 'busy'; the holder's next read of uncached bytes fails, not hangs."""
    fhub.clear_faults()
    m = FaultMounter(tmp_path, fhub)
    try:
        mp = m.mount("faults/model")
        (pid,) = daemon_pids(mp)
        fd = os.open(mp / ".netmount/raw/weights.bin", os.O_RDONLY)
        try:
            assert len(os.pread(fd, 10, 0)) == 10
            done = run_cli("unmount", str(mp), timeout=WAIT)
            assert done.returncode == 0, done.stderr
            _exits(pid)
            assert find_mount(str(mp)) is None
            with pytest.raises(OSError):
                os.pread(fd, 10, 2 << 20)
        finally:
            try:
                os.close(fd)
            except OSError:  # the connection is gone: closing says so
                pass
        m.mounted.clear()
    finally:
        m.cleanup()


SEQUENTIAL = """
import sys
with open(sys.argv[1], "rb", buffering=0) as fh:
    fh.read(1 << 20)
    print("started", flush=True)
    try:
        while fh.read(1 << 20):
            pass
        print("done")
    except OSError as exc:
        print("errno %d" % exc.errno)
"""


def test_a_daemon_stopped_amid_prefetch_closes_in_order(tmp_path, fhub):  # noqa: F811
    """SIGTERM while a stream's reads and the prefetch ahead of them are in flight (the CDN
    slowed): the daemon aborts its fetches, stops the prefetcher, drains and closes, within
    the bounds of closing.py — nothing logs a failure of a part used after it closed."""
    fhub.clear_faults()
    m = FaultMounter(tmp_path, fhub)
    reader = None
    try:
        mp = m.mount("faults/big")
        (pid,) = daemon_pids(mp)
        fhub.add_fault("slow", path_contains="/blobs/", rate=256 << 10)
        reader = subprocess.Popen([sys.executable, "-c", SEQUENTIAL, str(mp / "shard-1.bin")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert reader.stdout.readline() == "started\n"
        assert fhub.wait_hits(0, 2, WAIT)
        os.kill(pid, signal.SIGTERM)
        _exits(pid)
        out, err = reader.communicate(timeout=WAIT)
        assert out.strip() in ("done", "errno 5"), (out, err)  # all of it, or EIO: never a hang
        log = "\n".join(p.read_text() for p in (m.cache_dir / "logs").glob("*.log"))
        closing = log[log.index("; closing"):]
        assert "Traceback" not in closing and "did not end" not in closing and "ERROR" not in closing, closing
        m.mounted.clear()
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        fhub.clear_faults()
        m.cleanup()
