"""Two mounts on one cache dir, one daemon stopped (SIGSTOP) in the middle of its fetches: the
other mount reads the same file in full, the right bytes; continued, the stopped daemon
finishes its own read right (issue 20).  Daemons sharing a cache take no lock on each other
(read/runs.py): a stalled peer must never park another's reads, nor the other's close.

No sleeps: the first reader says when its first bytes are in, the hub when it is answering
the first daemon's requests (slowly: they stay in flight); the hub's log, read once at the
end, shows a request of the first daemon's was open across the stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from netmount.core.procs import is_running

from conftest import sha256_file, within
from faultkit import FaultMounter, check_cache_blocks, daemon_pids, fault_root, fhub  # noqa: F401  (fixtures)

# reads a file in 1 MiB chunks, says when the first is in, then prints the sha256 of it all
READER = """
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb", buffering=0) as fh:
    h.update(fh.read(1 << 20))
    print("started", flush=True)
    while chunk := fh.read(1 << 20):
        h.update(chunk)
print(h.hexdigest(), flush=True)
"""
FILE = "shard-0.bin"  # faults/big: 6 MiB + a little, 256 KiB blocks
RATE = 256 << 10  # bytes/s of each CDN answer while the first daemon reads: seconds of fetches
WAIT = 120.0  # a hang guard, never a timing claim


def test_a_stopped_peer_never_blocks_the_other_mounts_reads(tmp_path, fhub, fault_root):  # noqa: F811
    want = sha256_file(fault_root / "faults" / "big" / FILE)
    m = FaultMounter(tmp_path, fhub)
    fhub.clear_faults()
    first = stopped = None
    try:
        a, b = m.mount("faults/big", name="a"), m.mount("faults/big", name="b")
        (pid_a,) = daemon_pids(a)
        fhub.add_fault("slow", path_contains="/blobs/", rate=RATE)
        first = subprocess.Popen([sys.executable, "-c", READER, str(a / FILE)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert within(WAIT, first.stdout.readline) == "started\n"
        assert fhub.wait_hits(0, 1, WAIT)  # the hub is answering a's requests, slowly
        os.kill(pid_a, signal.SIGSTOP)
        stopped, stopped_at = pid_a, time.monotonic()
        fhub.clear_faults()  # b's requests go at full speed; a's stay as slow as they began
        assert within(WAIT, sha256_file, b / FILE) == want  # never waits on the stopped daemon
        os.kill(pid_a, signal.SIGCONT)
        stopped = None
        out, err = within(WAIT, first.communicate)
        assert first.returncode == 0 and out.split() == [want], err
        in_flight = [r for r in fhub.requests("cdn", "GET", "/blobs/")
                     if r.t_start < stopped_at and (r.t_end is None or r.t_end > stopped_at)]
        assert in_flight, "the first daemon had no fetch in flight when it was stopped: the test proves nothing"
        m.unmount(a)  # both daemons close and exit (faultkit waits for that)
        m.unmount(b)
        assert check_cache_blocks(m.cache_dir, [fault_root / "faults" / "big"]) > 0
    finally:
        if stopped is not None and is_running(stopped):
            os.kill(stopped, signal.SIGCONT)
        if first is not None and first.poll() is None:
            first.kill()
        fhub.clear_faults()
        m.cleanup()
