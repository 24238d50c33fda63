"""How a daemon's parts are closed: one fixed order, a bound on every wait.

1. Stop taking new work: the caller has ended the FUSE loop, so no program's read comes in.
2. Abort fetches (``fetcher.abort``): every request in flight fails now and every later one
   at once, so nothing below waits on the network any more; an hf-cache mount's namespace
   (``hub.close``) stops asking the Hub, its lookups in wait get EIO.
3. Stop the prefetcher (``prefetcher.close(timeout) -> bool``): its pump and header threads
   end, meeting only failed fetches now.  They read through the reader, so until they have
   ended the reader is never closed.
4. Drain (``reader.drain(timeout)``): what was fetched before the abort is written behind.
5. Close pools: the reader, the fetcher's loop, the stats' meter, the store.

A step that overruns its bound is logged and what it may still use is left open (the
process exits next): a late thread meets an open reader or store, never a closed one.
Pure orchestration over duck-typed parts (any of them None: not built), tested with fakes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("netmount.daemon")


@dataclass(frozen=True)
class Waits:
    """Seconds each step may take (none of them is expected to come near its bound)."""

    prefetcher: float = 15.0
    drain: float = 30.0
    close: float = 15.0


def bounded(what: str, seconds: float, call: Callable[[], object]) -> bool:
    """Run ``call()`` on a thread of its own and wait ``seconds`` at most: True if it returned
    in time (an exception it raised is logged: the close goes on), False if it is still running."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except Exception:
            log.exception("%s failed", what)
        finally:
            done.set()

    threading.Thread(target=run, name=f"netmount-close-{what.replace(' ', '-')}", daemon=True).start()
    if done.wait(seconds):
        return True
    log.error("%s did not end within %g s: leaving what it uses open", what, seconds)
    return False


def close_parts(parts, waits: Waits = Waits()) -> bool:
    """Close ``parts`` (attributes ``fetcher``, ``prefetcher``, ``reader``, ``stats``,
    ``store``, and ``hub`` if it has one; None: not built) in the order above.  True if every
    step ended in time."""
    fetcher, prefetcher, reader = parts.fetcher, parts.prefetcher, parts.reader
    if fetcher is not None:
        fetcher.abort()  # bounded inside (RangeFetcher.abort)
    if getattr(parts, "hub", None) is not None:
        parts.hub.close()  # returns at once: its resolver threads end after the call each runs
    readers_gone = True
    if prefetcher is not None:
        readers_gone = bool(prefetcher.close(waits.prefetcher))
        if not readers_gone:
            log.error("the prefetcher's threads did not end within %g s: the reader stays open", waits.prefetcher)
    ok = readers_gone
    if reader is not None and readers_gone:
        if not reader.drain(waits.drain):
            log.warning("blocks still being stored after %g s: closing anyway", waits.drain)
        ok = bounded("closing the reader", waits.close, reader.close)
    if fetcher is not None:
        fetcher.close()  # bounded inside
    if parts.stats is not None:
        bounded("closing the stats", waits.close, parts.stats.close)
    if parts.store is not None and ok:
        ok = bounded("closing the block store", waits.close, parts.store.close)
    return ok
