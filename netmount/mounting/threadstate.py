"""A libfuse worker thread keeps its Python thread state from one callback to the next.

ctypes runs a callback that arrives on a thread Python did not start with a thread state
made for that call and deleted after it (``PyGILState_Ensure``/``Release``).  So every FUSE
request paid for a new ``PyThreadState`` — its frame stack ``mmap``'ed, then ``munmap``'ed,
which flushes the TLB of every core the process runs on (an IPI to the other core): under
4 KiB random reads, ``munmap`` and those IPIs were 11 % of the daemon's CPU (perf).  One more
``PyGILState_Ensure``, never released, keeps the state for the thread's life; the next
callbacks on that thread find it and only take the GIL.  libfuse keeps its workers for the
life of the mount (idle ones are not ended: ``max_idle_threads`` is unlimited by default in
libfuse 3.12+, and the mount sets it), so no state outlives its thread before unmount.
"""

from __future__ import annotations

import ctypes
import threading

_local = threading.local()  # per thread state: empty again on each fresh one
_kept = [0]  # thread states kept so far (stats: ``fuse_thread_states``)
_count_lock = threading.Lock()


def keep_thread_state() -> None:
    """Called with the GIL held, on a callback's thread; cheap once it has run there."""
    if getattr(_local, "kept", False):
        return
    ctypes.pythonapi.PyGILState_Ensure()
    _local.kept = True
    with _count_lock:
        _kept[0] += 1


def kept_states() -> int:
    """How many threads' states were kept: at most libfuse's worker count, however many
    requests came (a count that grows with them means states are made per request again)."""
    return _kept[0]
