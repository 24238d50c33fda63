"""Verified range requests to the origin: exactly the bytes asked for, or a retry, or ``FetchError``.

Never wrong bytes: a range answer must be 206 with exactly the Content-Range asked for and
exactly that many body bytes (a 200 is taken only for a whole-file request).  Anything else
is retried with backoff (honouring Retry-After), and after ``max_retries`` the fetch fails
with ``FetchError`` — which the filesystem turns into EIO.  A redirect, or a 403 from a
redirect target (a signed URL that expired), makes the resolver resolve the file again.

Stall bounds: connecting, and every wait for the next bytes (headers or body), are bounded
by ``timeout``; a stalled answer is retried like a reset one.  A trickle (a few bytes now and
then, never ``timeout`` apart) is bounded too: a whole request may take ``timeout`` plus its
size at ``min_rate`` (64 KiB/s).  The defaults (30 s, 5 retries, backoff from 0.5 s doubling
to 8 s) can be changed without a flag through ``NETMOUNT_FETCH_TIMEOUT``,
``NETMOUNT_FETCH_RETRIES``, ``NETMOUNT_FETCH_BACKOFF`` and ``NETMOUNT_FETCH_MIN_RATE`` in the
daemon's environment — tests use that to make fault runs take seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from dataclasses import dataclass

from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote import client
from netmount.remote.hub import RepoRef

log = logging.getLogger("netmount.fetch")

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
REDIRECTS = {301, 302, 303, 307, 308}
DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_BACKOFF, DEFAULT_MAX_BACKOFF = 30.0, 5, 0.5, 8.0
DEFAULT_MIN_RATE = 64 << 10  # bytes/s: slower than this over a whole request is a stall


class Retry(Exception):
    def __init__(self, why: str, after: float | None = None, forget_target: bool = False):
        super().__init__(why)
        self.after = after
        self.forget_target = forget_target


class LongBody(Retry):
    """More body bytes than asked for: wrong bytes, not a broken connection."""


class Fatal(Exception):
    pass


def env_number(name: str, default, kind=float):
    """A positive number from the environment (0 allowed for retries), else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, raw)
        return default
    if value < 0 or (value == 0 and kind is float):
        log.warning("ignoring %s=%r: out of range", name, raw)
        return default
    return value


@dataclass
class FetchSettings:
    """Timeouts, retries and backoff (see the module docstring); None: from the environment."""

    timeout: float | None = None
    max_retries: int | None = None
    backoff: float | None = None
    max_backoff: float = DEFAULT_MAX_BACKOFF
    min_rate: float | None = None

    def __post_init__(self) -> None:
        if self.timeout is None:
            self.timeout = env_number("NETMOUNT_FETCH_TIMEOUT", DEFAULT_TIMEOUT)
        if self.max_retries is None:
            self.max_retries = env_number("NETMOUNT_FETCH_RETRIES", DEFAULT_RETRIES, int)
        if self.backoff is None:
            self.backoff = env_number("NETMOUNT_FETCH_BACKOFF", DEFAULT_BACKOFF)
        if self.min_rate is None:
            self.min_rate = env_number("NETMOUNT_FETCH_MIN_RATE", DEFAULT_MIN_RATE)
        self.max_backoff = max(self.max_backoff, self.backoff)

    def deadline(self, length: int, connect: float | None = None):
        """The stall bounds of one request of ``length`` bytes."""
        return client.deadline(self.timeout + length / self.min_rate, connect or self.timeout, self.timeout)

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff) * random.uniform(0.8, 1.2)


def check_status(status: int, headers) -> None:
    if status in RETRY_STATUSES:
        raise Retry(f"HTTP {status}", after=retry_after(headers.get("Retry-After")))
    if status in (401, 403, 404, 410, 416) or 400 <= status < 500:
        code = headers.get("X-Error-Code")
        raise Fatal(f"HTTP {status}" + (f" ({code})" if code else ""))


def retry_after(value: str | None) -> float | None:
    if value and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return min(float(value), 60.0)
    return None


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range a right answer to ``[start, end)`` of a ``size``-byte file carries."""
    return f"bytes {start}-{end - 1}/{size}"


async def read_body(resp, path: str, start: int, end: int, sink, counters: Counters) -> None:
    """The body of a checked answer, handed to ``sink`` (``pieces.Pieces``) segment by
    segment as it arrives: ``Retry`` if short, ``LongBody`` if longer than asked."""
    for lo, hi in sink.segments(start, end):
        try:
            data = await resp.content.readexactly(hi - lo)
        except asyncio.IncompleteReadError as exc:
            got = lo - start + len(exc.partial)
            counters.add("bytes_fetched", len(exc.partial), path=path)
            raise Retry(f"short body: {got} of {end - start} bytes") from None
        counters.add("bytes_fetched", hi - lo, path=path)
        sink.put(lo, data)
    extra = await resp.content.read(1)
    if extra:
        raise LongBody(f"long body: more than the {end - start} bytes asked for")


class RangeRequests:
    """The origin route: the resolver's URL, one checked GET per try, retries with backoff.
    ``resolver``: ``resolver.Resolver``.  Loop thread only."""

    def __init__(self, resolver, settings: FetchSettings, counters: Counters) -> None:
        self.resolver, self.settings, self.counters = resolver, settings, counters
        self.final = False  # set by the fetcher's abort: what fails from now on is not retried

    async def fetch(self, session, ref: RepoRef, path: str, start: int, end: int, size: int, sink,
                    connection) -> None:
        """``[start, end)`` of ``path`` into ``sink``, each try inside ``connection()`` (an
        async context: a connection slot); ``FetchError`` once the retries are spent."""
        attempt = 0
        while True:
            try:
                async with connection():
                    return await self._once(session, ref, path, start, end, size, sink)
            except Fatal as exc:
                self.counters.add("errors")
                raise FetchError(f"{path} [{start}, {end}): {exc}") from None
            except (Retry, *client.transport_errors()) as exc:
                why = str(exc) or type(exc).__name__
                if isinstance(exc, Retry) and exc.forget_target:
                    self.resolver.forget(ref, path)
                attempt += 1
                if attempt > self.settings.max_retries or self.final:
                    self.counters.add("errors")
                    log.log(logging.DEBUG if self.final else logging.ERROR,  # stopping: not news
                            "giving up on %s [%d, %d) after %d tries: %s", path, start, end, attempt, why)
                    raise FetchError(f"{path} [{start}, {end}): {why}") from None
                self.counters.add("retries")
                delay = getattr(exc, "after", None)
                delay = self.settings.delay(attempt) if delay is None else delay
                log.warning("retry %d/%d for %s [%d, %d) in %.2fs: %s",
                            attempt, self.settings.max_retries, path, start, end, delay, why)
                await asyncio.sleep(delay)

    async def _once(self, session, ref: RepoRef, path: str, start: int, end: int, size: int, sink) -> None:
        url = await self.resolver.target(session, ref, path)
        headers = {"Range": f"bytes={start}-{end - 1}", **self.resolver.auth_for(url)}
        self.counters.add("requests", path=path)
        async with session.get(url, headers=headers, allow_redirects=False,
                               timeout=self.settings.deadline(end - start)) as resp:
            status = resp.status
            if status in REDIRECTS or status == 403 and url != self.resolver.resolve_url(ref, path):
                raise Retry(f"data URL answered {status}; resolving again", after=0, forget_target=True)
            check_status(status, resp.headers)
            if status == 200:
                if not (start == 0 and end == size and resp.content_length == size):
                    raise Retry("server answered 200 (whole file) to a range request")
            elif status == 206:
                want, got = content_range(start, end, size), resp.headers.get("Content-Range", "")
                if got.strip() != want:
                    raise Retry(f"Content-Range {got!r}, asked for {want!r}")
            else:
                raise Fatal(f"unexpected HTTP {status}")
            await read_body(resp, path, start, end, sink, self.counters)
