"""WAN emulation for the test hub: latency to first byte and a per-connection bandwidth cap.

What a loader meets on the real Hub, reduced to the two numbers that decide how a lazy
mount must fetch:

- ``latency_ms``: every request (hub API, ``/resolve/``, CDN range) waits this long before
  it is handled — the round trip plus the server's time to first byte.  It applies to
  redirects and error answers too, as on a real link.
- ``conn_mbps``: each TCP connection's body bytes are paced to at most this many megabits
  per second (10^6 bit/s), like a CDN edge that caps one stream far below the link.  The
  cap is per connection, not per request: a keep-alive connection that carries several
  requests shares one budget, and N parallel connections get N times the rate.  There is
  no cap on the sum (the emulated link is wider than any one connection).

Pacing is a token bucket per connection, refilled at the cap, with a burst of one
``SLICE`` (64 KiB): body bytes go out in slices and the writer sleeps until the bucket
holds the next slice.  Both numbers may be 0 (off).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

SLICE = 64 * 1024


@dataclass
class Wan:
    latency_ms: float = 0.0
    conn_mbps: float = 0.0
    # connection -> when the bytes already scheduled on it have gone out at the cap
    _busy_until: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.conn_mbps < 0:
            raise ValueError("latency_ms and conn_mbps must be >= 0")

    @property
    def active(self) -> bool:
        return self.latency_ms > 0 or self.conn_mbps > 0

    @property
    def bytes_per_second(self) -> float:
        return self.conn_mbps * 1e6 / 8

    async def first_byte(self) -> None:
        """Wait out the latency before a request is handled."""
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)

    def slices(self, chunk: bytes):
        """The chunk cut into pieces that the pacer can space out."""
        if self.conn_mbps <= 0 or len(chunk) <= SLICE:
            yield chunk
            return
        view = memoryview(chunk)
        for pos in range(0, len(chunk), SLICE):
            yield view[pos : pos + SLICE]

    async def pace(self, connection, nbytes: int) -> None:
        """Call before sending ``nbytes`` on ``connection`` (a hashable object that identifies
        it, e.g. the transport): sleeps so that the connection's rate stays within the cap."""
        if self.conn_mbps <= 0 or nbytes <= 0:
            return
        now = time.monotonic()
        key = connection
        if len(self._busy_until) > 4096:  # forget idle connections (their bucket is full again)
            self._busy_until = {k: t for k, t in self._busy_until.items() if t > now}
        start = max(self._busy_until.get(key, now), now)
        done = start + nbytes / self.bytes_per_second
        self._busy_until[key] = done
        wait = done - now - SLICE / self.bytes_per_second  # burst: one slice goes out at once
        if wait > 0:
            await asyncio.sleep(wait)
