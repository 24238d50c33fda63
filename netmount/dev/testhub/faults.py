"""Fault injection for the test hub: a rule list consulted before every request.

    rules = FaultRules(hub)          # hub: a HubServer / TestHub
    hub.faults.append(rules)         # phase 0 hook (see server.py)
    rules.add("status", status=503, times=2)
    rules.add("reset", path_contains="/blobs/")
    rules.clear()

A rule is a plain dict (JSON-able, so ``tests/hubproc.py`` can set rules over its control
port in a hub that runs in another process).  The first rule that matches a request acts
on it; ``times`` bounds how often a rule fires (``None``: forever) and ``skip`` lets that
many matching requests through first.  ``hits`` counts how often each rule fired.

Matching: ``server`` ("cdn", "hub" or None for both), ``method`` (default GET: a HEAD that
resolves a redirect is left alone unless asked), ``path_contains``, and ``ranged``
(True: only requests with a Range header, False: only without, None: either).

Kinds — each is what a real CDN or proxy has been seen to do:

- ``status``: answer ``status`` (500, 502, 503, 429…) with an S3-style body, plus
  ``Retry-After: retry_after`` when given.
- ``expired``: 403 AccessDenied "Request has expired" (a signed URL that expired).
- ``reset``: headers and half of the body, then a TCP reset (SO_LINGER 0).
- ``short``: headers announcing the full Content-Length, ``fraction`` of the body, then
  a clean close (FIN): fewer bytes than promised.  With ``declare_short`` the headers
  agree with the short body (Content-Length of the part sent, Content-Range as asked):
  a well-formed answer that is simply too short.
- ``full``: 200 and the whole file in answer to a Range request.
- ``wrong_range``: 206 whose Content-Range (and bytes) are a shifted range — what a
  client that trusts the status code alone would take for the bytes it asked for.
- ``lie``: the right status, Content-Range and length, but the bytes are not the file's:
  one byte in the middle of the body is flipped (a proxy or a bit flip on the way; no
  per-request check can see it, only the file's digest: ``netmount verify``).
- ``stall``: headers and ``fraction`` of the body, then nothing for ``delay`` seconds
  (or until the client gives up), then a close.
- ``delay``: wait ``delay`` seconds before answering, then answer normally (a slow link;
  with a long delay, a server that never sends its headers).  With ``server="hub",
  ranged=None, path_contains="/tree/"`` it is a Hub API that stalls on the file listing.
- ``slow``: the right answer, its body sent at ``rate`` bytes per second (a slow link:
  keeps downloads in flight long enough to kill a daemon in the middle of them).
- ``listing``: answer a tree API request with ``entries`` (a Hub tree listing), e.g. to
  list an unsafe path no folder on disk can hold.
- ``bad_token``: 401 "Invalid credentials in Authorization header" when the request
  carries a bearer token the hub does not know — as the real Hub does on every route.

Body faults (reset, short, full, wrong_range, lie, stall) need a file to serve: a CDN blob or a
``/resolve/`` of a regular file; other requests pass through them untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from typing import Any

from aiohttp import web

from . import ranges

KINDS = {"status", "expired", "reset", "short", "full", "wrong_range", "lie", "stall", "delay",
         "slow", "listing", "bad_token"}
BODY_KINDS = {"reset", "short", "full", "wrong_range", "lie", "stall", "slow"}

DEFAULTS: dict[str, Any] = {
    "server": "cdn",
    "method": "GET",
    "path_contains": None,
    "ranged": True,
    "times": None,
    "skip": 0,
    "status": 503,
    "retry_after": None,
    "delay": 3600.0,
    "fraction": 0.5,
    "rate": 1 << 20,
    "declare_short": False,
    "entries": None,
}


class FaultRules:
    """An ordered list of fault rules, callable as a ``HubServer.faults`` hook."""

    def __init__(self, server) -> None:
        self.server = server
        self._lock = threading.Lock()  # rules are set from a control thread, read on the loop
        self._fired = threading.Condition(self._lock)  # a rule fired (``wait_hits``)
        self._rules: list[dict] = []

    # ---- the rule list (any thread) -----------------------------------------------------

    def add(self, kind: str, **options) -> dict:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(KINDS)}")
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown fault options {sorted(unknown)}")
        if kind in ("listing", "bad_token"):
            options.setdefault("server", "hub")
            options.setdefault("ranged", None)
        rule = {"kind": kind, **DEFAULTS, **options, "hits": 0, "seen": 0}
        with self._lock:
            self._rules.append(rule)
        return rule

    def set(self, rules: list[dict]) -> None:
        """Replace every rule (each a dict with ``kind`` and options)."""
        with self._lock:
            self._rules = []
        for r in rules:
            r = dict(r)
            self.add(r.pop("kind"), **r)

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._rules]

    def wait_hits(self, index: int, hits: int, timeout: float) -> bool:
        """Wait until rule ``index`` has fired ``hits`` times: the event a test waits for (a
        request it stalls or slows has reached the hub); False after ``timeout`` seconds."""
        with self._fired:
            return self._fired.wait_for(
                lambda: index < len(self._rules) and self._rules[index]["hits"] >= hits, timeout)

    # ---- the hook (the server's loop) ---------------------------------------------------

    async def __call__(self, request: web.Request, rec) -> web.StreamResponse | None:
        rule = self._match(request, rec)
        if rule is None:
            return None
        return await _ACTIONS[rule["kind"]](self, rule, request, rec)

    def _match(self, request: web.Request, rec) -> dict | None:
        has_range = "Range" in request.headers
        with self._lock:
            for rule in self._rules:
                if rule["server"] not in (None, rec.server):
                    continue
                if rule["method"] is not None and rule["method"] != request.method:
                    continue
                if rule["path_contains"] is not None and rule["path_contains"] not in request.path:
                    continue
                if rule["ranged"] is not None and rule["ranged"] != has_range:
                    continue
                if rule["kind"] in BODY_KINDS and self._locate(request) is None:
                    continue
                if rule["kind"] == "listing" and "/tree/" not in request.path:
                    continue
                if rule["kind"] == "bad_token" and not self._unknown_token(request):
                    continue
                if rule["times"] is not None and rule["hits"] >= rule["times"]:
                    continue
                rule["seen"] += 1
                if rule["seen"] <= rule["skip"]:
                    continue
                rule["hits"] += 1
                self._fired.notify_all()
                return dict(rule)
        return None

    def _unknown_token(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip()) and token.strip() not in self.server.tokens

    def _locate(self, request: web.Request):
        """(repo, entry) of the file a CDN blob or a /resolve/ GET would serve, or None."""
        parts = request.path.split("/")
        if len(parts) == 3 and parts[1] == "blobs":
            return self.server._blobs.get(parts[2])  # registered by /resolve/ (server.py)
        if len(parts) >= 6 and parts[3] == "resolve":
            repo = self.server.repo(f"{parts[1]}/{parts[2]}")
            if repo is None or repo.gated:
                return None
            entry = repo.snapshot().by_path.get("/".join(parts[5:]))
            return None if entry is None or entry.lfs else (repo, entry)
        return None


# ---- actions ------------------------------------------------------------------------------

def _s3(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml", headers=headers or {})


async def _status(rules, rule, request, rec):
    headers = {}
    if rule["retry_after"] is not None:
        headers["Retry-After"] = str(rule["retry_after"])
    return _s3(rule["status"], "InjectedFault", f"injected HTTP {rule['status']}", headers)


async def _expired(rules, rule, request, rec):
    return _s3(403, "AccessDenied", "Request has expired")


async def _delay(rules, rule, request, rec):
    await _sleep_while_connected(request, rule["delay"])
    return None  # then the handler answers normally


async def _listing(rules, rule, request, rec):
    return web.json_response(rule["entries"] or [])


async def _bad_token(rules, rule, request, rec):
    msg = "Invalid credentials in Authorization header"
    return web.json_response({"error": msg}, status=401, headers={"X-Error-Message": msg})


def _plan(request, size):
    return ranges.plan(request.headers.get("Range"), size)


def _read(repo, entry, start, end) -> bytes:
    with contextlib.closing(repo.read(entry.path, start, end)) as chunks:
        return b"".join(chunks)


async def _start(request, rec, status, headers, length) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers={"Accept-Ranges": "bytes", **headers})
    resp.content_length = length
    rec.status = status
    await resp.prepare(request)
    return resp


async def _send(request, rec, resp, data: bytes) -> None:
    rec.body_bytes += len(data)
    await resp.write(data)


async def _full(rules, rule, request, rec):
    repo, entry = rules._locate(request)
    resp = await _start(request, rec, 200, {}, entry.size)
    await _send(request, rec, resp, _read(repo, entry, 0, entry.size))
    await resp.write_eof()
    return resp


async def _wrong_range(rules, rule, request, rec):
    repo, entry = rules._locate(request)
    p = _plan(request, entry.size)
    if p.status != 206:
        return None
    length = p.end - p.start
    shift = max(1, length // 2)
    if p.end + shift <= entry.size:
        start, end, total = p.start + shift, p.end + shift, entry.size
    elif p.start - shift >= 0:
        start, end, total = p.start - shift, p.end - shift, entry.size
    else:  # the request covers the file: right bytes, a wrong total
        start, end, total = p.start, p.end, entry.size + 1
    headers = {"Content-Range": f"bytes {start}-{end - 1}/{total}"}
    resp = await _start(request, rec, 206, headers, end - start)
    await _send(request, rec, resp, _read(repo, entry, start, end))
    await resp.write_eof()
    return resp


def _honest_plan(rules, request):
    """What a correct answer to ``request`` would be: (repo, entry, plan, headers), or None
    for a range past the end (left to the normal 416)."""
    repo, entry = rules._locate(request)
    p = _plan(request, entry.size)
    if p.status == 416:
        return None
    headers = {"Content-Range": p.content_range(entry.size)} if p.status == 206 else {}
    return repo, entry, p, headers


async def _lie(rules, rule, request, rec):
    planned = _honest_plan(rules, request)
    if planned is None:
        return None
    repo, entry, p, headers = planned
    data = bytearray(_read(repo, entry, p.start, p.end))
    if data:
        data[len(data) // 2] ^= 0xFF
    resp = await _start(request, rec, p.status, headers, len(data))
    await _send(request, rec, resp, bytes(data))
    await resp.write_eof()
    return resp


async def _slow(rules, rule, request, rec):
    planned = _honest_plan(rules, request)
    if planned is None:
        return None
    repo, entry, p, headers = planned
    resp = await _start(request, rec, p.status, headers, p.end - p.start)
    piece = max(1, int(rule["rate"]) // 20)
    for pos in range(p.start, p.end, piece):
        if request.transport is None or request.transport.is_closing():
            return resp
        await _send(request, rec, resp, _read(repo, entry, pos, min(p.end, pos + piece)))
        await asyncio.sleep(0.05)
    await resp.write_eof()
    return resp


async def _partial(rules, rule, request, rec):
    """reset / short / stall: the right headers, part of the body, then the fault."""
    planned = _honest_plan(rules, request)
    if planned is None:
        return None
    repo, entry, p, headers = planned
    cut = p.start + int((p.end - p.start) * rule["fraction"])
    if rule["kind"] == "short" and rule["declare_short"]:
        resp = await _start(request, rec, p.status, headers, cut - p.start)
        await _send(request, rec, resp, _read(repo, entry, p.start, cut))
        await resp.write_eof()
        return resp
    resp = await _start(request, rec, p.status, headers, p.end - p.start)
    if cut > p.start:
        await _send(request, rec, resp, _read(repo, entry, p.start, cut))
    transport = request.transport
    if rule["kind"] == "stall":
        await _sleep_while_connected(request, rule["delay"])
    if transport is not None:
        if rule["kind"] == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:  # RST instead of FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return resp


async def _sleep_while_connected(request, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early once the client has hung up (so a stalled
    answer does not keep the hub busy long after the client gave up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


_ACTIONS = {
    "status": _status,
    "expired": _expired,
    "delay": _delay,
    "listing": _listing,
    "bad_token": _bad_token,
    "full": _full,
    "wrong_range": _wrong_range,
    "reset": _partial,
    "short": _partial,
    "stall": _partial,
    "slow": _slow,
    "lie": _lie,
}
