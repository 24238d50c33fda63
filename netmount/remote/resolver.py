"""Where a file's bytes are: ``/{repo}/resolve/{sha}/{path}``, followed to its data URL once.

Why: the Hub answers a resolve with a 302 to a signed CDN URL on another host; rate limits
are per IP, so a file is resolved once (single-flight: however many readers ask at once) and
its target reused until it expires (``Expires=`` in the query) or the CDN answers 403, then
resolved again (``forget``).  Targets are kept per (repo, commit, path): one resolver serves
files of any repo on its endpoint.  Authorization goes only to the endpoint's own host, never
to a redirect target (``auth_for``).  Loop thread only (``auth_for`` and ``resolve_url``: any).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qs, quote, urljoin, urlsplit

from netmount.core.counters import Counters
from netmount.remote.hub import RepoRef
from netmount.remote.ranged import REDIRECTS, Fatal, check_status

log = logging.getLogger("netmount.fetch")

EXPIRY_MARGIN = 30.0  # re-resolve a signed URL this long before it says it expires
MAX_HOPS = 5  # redirects followed on the endpoint's own host

Key = tuple[RepoRef, str]  # (repo at a commit, path in it)


class Resolver:
    def __init__(self, endpoint: str, token: str | None, counters: Counters) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token, self.counters = token, counters
        self._host = urlsplit(self.endpoint).netloc
        self._targets: dict[Key, tuple[str, float]] = {}  # -> (data URL, use it until)
        self._resolving: dict[Key, asyncio.Future] = {}

    def resolve_url(self, ref: RepoRef, path: str) -> str:
        return f"{self.endpoint}/{ref.url_path}/resolve/{ref.sha}/{quote(path)}"

    def auth_for(self, url: str) -> dict[str, str]:
        """The Authorization header, for the endpoint's own host only."""
        if self._token and urlsplit(url).netloc == self._host:
            return {"authorization": f"Bearer {self._token}"}
        return {}

    def forget(self, ref: RepoRef, path: str) -> None:
        """The target answered as if expired (403, a redirect): resolve again next time."""
        self._targets.pop((ref, path), None)

    async def target(self, session, ref: RepoRef, path: str) -> str:
        """The data URL of ``path`` in ``ref``: cached, or resolved once however many ask."""
        key = (ref, path)
        hit = self._targets.get(key)
        if hit and hit[1] > time.time():
            return hit[0]
        pending = self._resolving.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(session, ref, path))
            self._resolving[key] = pending
            pending.add_done_callback(lambda _f: self._resolving.pop(key, None))
        return await asyncio.shield(pending)

    async def _resolve(self, session, ref: RepoRef, path: str) -> str:
        url = self.resolve_url(ref, path)
        for _hop in range(MAX_HOPS):
            self.counters.add("requests", path=path)
            async with session.head(url, headers=self.auth_for(url), allow_redirects=False) as resp:
                if resp.status in REDIRECTS:
                    url = urljoin(url, resp.headers.get("Location", ""))
                    if urlsplit(url).netloc != self._host:
                        break  # a CDN: no need to HEAD it, the first range GET will tell
                    continue
                check_status(resp.status, resp.headers)
                if resp.status != 200:
                    raise Fatal(f"resolving {path}: HTTP {resp.status}")
                break
        else:
            raise Fatal(f"resolving {path}: too many redirects")
        self._targets[(ref, path)] = (url, expiry(url))
        return url


def expiry(url: str, now: float | None = None) -> float:
    """When to stop using a signed URL: ``EXPIRY_MARGIN`` before its ``Expires=`` says, or
    a quarter of its remaining life before for short-lived URLs (a margin longer than the
    life would re-resolve on every request); without ``Expires=``, in an hour."""
    now = time.time() if now is None else now
    query = parse_qs(urlsplit(url).query)
    for key in ("Expires", "expires"):
        if key in query:
            try:
                expires = float(query[key][0])
            except ValueError:
                break
            return expires - min(EXPIRY_MARGIN, max(0.0, expires - now) / 4)
    return now + 3600.0
