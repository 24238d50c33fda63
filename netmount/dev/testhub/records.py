"""One record per HTTP request the test hub served: what tests assert on.

A record is appended when the request arrives and filled in as it is answered: ``status``
is set before the headers go out and ``body_bytes`` grows as each piece is handed to the
socket, so by the time a client holds the last byte the record already says so (only
``t_end`` may lag a moment behind; ``TestHub.wait_idle`` waits for it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestRecord:
    method: str
    server: str  # "hub" or "cdn"
    path: str  # decoded path, without the query
    query: str  # raw query string ("" if none)
    range: str | None  # the Range header as sent, or None
    status: int = 0  # 0 until the answer's status is known
    body_bytes: int = 0  # body bytes actually written (a disconnect stops the count)
    has_auth: bool = False  # an Authorization header came with the request
    t_start: float = 0.0
    t_end: float | None = None  # None while in flight


def select(records, server=None, method=None, path_contains=None) -> list[RequestRecord]:
    return [
        r
        for r in list(records)
        if (server is None or r.server == server)
        and (method is None or r.method == method)
        and (path_contains is None or path_contains in r.path)
    ]
