"""netmount/core/procs.py: what /proc says of a pid, and waiting for one to exit (no FUSE)."""

from __future__ import annotations

import subprocess
import sys

from netmount.core.procs import is_running, process_state, wait_exit

# a child that lives until its stdin is closed: its end is an event the test causes
UNTIL_EOF = [sys.executable, "-c", "import sys; sys.stdin.read()"]


def test_wait_exit_returns_when_the_process_exits_and_sees_a_zombie_as_exited():
    child = subprocess.Popen(UNTIL_EOF, stdin=subprocess.PIPE)
    try:
        assert is_running(child.pid)
        assert wait_exit(child.pid, 0) is False  # alive: the zero timeout answers at once
        child.stdin.close()
        assert wait_exit(child.pid, 60)  # the bound only catches a child that never exits
        assert process_state(child.pid) == "Z"  # exited, not reaped yet: still counts as gone
        assert not is_running(child.pid)
    finally:
        child.kill()
        child.wait()
    assert wait_exit(child.pid, 0)  # reaped: no such pid any more


def test_wait_exit_of_a_pid_that_does_not_exist():
    with open("/proc/sys/kernel/pid_max") as fh:
        beyond = int(fh.read()) + 1  # no process can have it
    assert wait_exit(beyond, 0)
    assert process_state(beyond) is None
