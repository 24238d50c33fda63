"""Verified range requests to the origin: exactly the bytes asked for, or a retry, or ``FetchError``.

Never wrong bytes: a range answer must be 206 with exactly the Content-Range asked for, a
Content-Length (if any) of exactly that many bytes, no Content-Encoding, and exactly that many
body bytes (a 200 is taken only for a whole-file request, with the file's length).  Anything
else is retried with backoff (honouring Retry-After), and after ``max_retries`` the fetch fails
with ``FetchError`` — which the filesystem turns into EIO.  A redirect, or a 403 from a
redirect target (a signed URL that expired), makes the resolver resolve the file again.

A body is read with ``readinto`` straight into its pieces' buffers (``pieces.py``), each piece
handed on as soon as it is complete; a try that fails resumes at the first piece not handed
on, so a retry never asks for, nor hands out, bytes twice.

Stall bounds (``links.py``): connecting, and every wait for the next bytes (headers or body),
are bounded by ``timeout``; a stalled answer is retried like a reset one.  A trickle (a few
bytes now and then, never ``timeout`` apart) is bounded too: a whole request may take
``timeout`` plus its size at ``min_rate`` (64 KiB/s).  The defaults (30 s, 5 retries, backoff
from 0.5 s doubling to 8 s) can be changed without a flag through ``NETMOUNT_FETCH_TIMEOUT``,
``NETMOUNT_FETCH_RETRIES``, ``NETMOUNT_FETCH_BACKOFF`` and ``NETMOUNT_FETCH_MIN_RATE`` in the
daemon's environment — tests use that to make fault runs take seconds.
"""

from __future__ import annotations

import logging
import os
import random
import re
import ssl
from dataclasses import dataclass

from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote.hub import RepoRef
from netmount.remote.links import TRANSPORT_ERRORS

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


class ShortBody(Retry):
    """The body ended early: a broken connection (every other ``Retry`` of an answer's
    shape means the server answered wrongly)."""


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

    def bounds(self, length: int, connect: float | None = None) -> dict:
        """The stall bounds of one request of ``length`` bytes (``Links.request``'s)."""
        return {"limit": self.timeout + length / self.min_rate, "read_timeout": self.timeout,
                "connect_timeout": connect or self.timeout}

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


def check_length(resp, start: int, end: int) -> None:
    """The announced body is exactly ``[start, end)``'s bytes, unencoded: ``LongBody`` if it
    is longer, ``Retry`` if shorter or encoded — before any byte of it is read."""
    declared = resp.length  # Content-Length (None: chunked or none given)
    if declared is not None and declared != end - start:
        kind = LongBody if declared > end - start else Retry
        raise kind(f"Content-Length {declared}, asked for {end - start}")
    encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise Retry(f"Content-Encoding {encoding!r} in answer to a range request")


def read_body(resp, path: str, start: int, end: int, sink, counters: Counters) -> None:
    """The body of a checked answer into ``sink``'s buffers (``pieces.Pieces``), segment by
    segment, each handed on as it is complete: ``Retry`` if short, ``LongBody`` if longer
    than asked (checked before the last segment goes out when no length was announced)."""
    for lo, hi in sink.segments(start, end):
        view = sink.buffer(lo, hi)
        try:
            got = resp.readinto(view)  # in C until full or EOF, the GIL released in recv_into
        finally:
            view.release()
        counters.add("bytes_fetched", got, path=path)
        if got < hi - lo:
            raise ShortBody(f"short body: {lo - start + got} of {end - start} bytes")
        if hi == end and resp.length is None and resp.read(1):
            raise LongBody(f"long body: more than the {end - start} bytes asked for")
        sink.filled(lo, hi)


class RangeRequests:
    """The origin route: the resolver's URL, one checked GET per try, retries with backoff.
    ``resolver``: ``resolver.Resolver``; ``links``: ``links.Links``.  Any thread."""

    def __init__(self, resolver, links, settings: FetchSettings, counters: Counters) -> None:
        self.resolver, self.links, self.settings, self.counters = resolver, links, settings, counters

    def fetch(self, ref: RepoRef, path: str, start: int, end: int, size: int, sink) -> None:
        """``[start, end)`` of ``path`` into ``sink``, each try from the first piece it does
        not hold yet; ``FetchError`` once the retries are spent, or at once when stopping."""
        attempt = 0
        while True:
            lo = sink.first_missing(start, end)
            if lo >= end:
                return
            try:
                return self._once(ref, path, lo, end, size, sink)
            except (Fatal, ssl.SSLCertVerificationError) as exc:  # retrying cannot change them
                self.counters.add("errors")
                raise FetchError(f"{path} [{start}, {end}): {exc}") from None
            except (Retry, *TRANSPORT_ERRORS) as exc:
                if isinstance(exc, Retry) and exc.forget_target:
                    self.resolver.forget(ref, path)
                attempt += 1
                self._wait(path, start, end, attempt, exc)

    def _wait(self, path: str, start: int, end: int, attempt: int, exc: BaseException) -> None:
        """Back off before try ``attempt + 1``, or ``FetchError`` if there is none."""
        why = str(exc) or type(exc).__name__
        stopping = self.links.stopping.is_set()
        if attempt > self.settings.max_retries or stopping:
            self.counters.add("errors")
            log.log(logging.DEBUG if stopping else logging.ERROR,  # stopping: not news
                    "giving up on %s [%d, %d) after %d tries: %s", path, start, end, attempt, why)
            raise FetchError(f"{path} [{start}, {end}): {why}") from None
        self.counters.add("retries")
        delay = getattr(exc, "after", None)
        delay = self.settings.delay(attempt) if delay is None else delay
        log.warning("retry %d/%d for %s [%d, %d) in %.2fs: %s",
                    attempt, self.settings.max_retries, path, start, end, delay, why)
        self.links.stopping.wait(delay)  # an abort ends the wait: the next try fails at once

    def _once(self, ref: RepoRef, path: str, start: int, end: int, size: int, sink) -> None:
        url = self.resolver.target(ref, path)
        headers = {"Range": f"bytes={start}-{end - 1}", **self.resolver.auth_for(url)}
        self.counters.add("requests", path=path)
        with self.links.request("GET", url, headers, **self.settings.bounds(end - start)) as resp:
            status = resp.status
            if status in REDIRECTS or status == 403 and url != self.resolver.resolve_url(ref, path):
                raise Retry(f"data URL answered {status}; resolving again", after=0, forget_target=True)
            check_status(status, resp.headers)
            if status == 200:
                if not (start == 0 and end == size and resp.length == size):
                    raise Retry("server answered 200 (whole file) to a range request")
            elif status == 206:
                want, got = content_range(start, end, size), resp.getheader("Content-Range") or ""
                if got.strip() != want:
                    raise Retry(f"Content-Range {got!r}, asked for {want!r}")
            else:
                raise Fatal(f"unexpected HTTP {status}")
            check_length(resp, start, end)
            read_body(resp, path, start, end, sink, self.counters)
