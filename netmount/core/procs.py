"""Our own Python subprocesses (the mount daemon, the test hub), what /proc says of a pid,
and waiting for a pid to exit.

One way to start them, because the details are easy to get wrong twice: ``-P`` (Python
3.11+) and cwd ``/`` so that a folder named like one of our packages in the caller's working
directory (a cache dir called ``cache``, say) cannot shadow the installed package; no
inherited file descriptors; the environment passed on minus the names the caller drops
(the daemon gets its token on stdin, never in ``/proc/<pid>/environ``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from typing import Iterable


def python_command(module: str, *args: str) -> list[str]:
    """``python [-P] -m module args``: the argv of one of our modules run as a program."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe_path, "-m", module, *args]


def spawn_python(module: str, *args: str, drop_env: Iterable[str] = (), **popen) -> subprocess.Popen:
    """Start ``python -m module args`` in cwd ``/`` with ``close_fds``; ``popen`` goes to Popen
    (stdin, stdout, stderr, start_new_session, preexec_fn, ...)."""
    drop = set(drop_env)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.Popen(python_command(module, *args), cwd="/", close_fds=True, env=env, **popen)


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (``R``, ``S``, ``Z``, ...); None if no such pid.

    The command name (field 2) may hold spaces and parentheses, so split after the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has exited: it only awaits reaping)."""
    return process_state(pid) not in (None, "Z")


def wait_exit(pid: int, timeout: float | None = None) -> bool:
    """Wait until ``pid`` has exited (or is a zombie); True if it has, False after ``timeout``
    seconds (None: no limit).

    Sleeps on a pidfd (Linux 5.3+), which becomes readable when the process exits, so there
    is no polling and no wake-up sooner than the exit itself; works for any pid, not only our
    children.  A pid that is already gone counts as exited.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    finally:
        os.close(fd)
