"""Where a file's bytes are: ``/{repo}/resolve/{sha}/{path}``, followed to its data URL once.

Why: the Hub answers a resolve with a 302 to a signed CDN URL on another host; rate limits
are per IP, so a file is resolved once (single-flight: however many readers ask at once) and
its target reused until it expires (``Expires=`` in the query) or the CDN answers 403, then
resolved again (``forget``).  Targets are kept per (repo, commit, path): one resolver serves
files of any repo on its endpoint.  Authorization goes only to the endpoint's own host, never
to a redirect target (``auth_for``).  Any thread: HEADs on the asking thread's connection.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
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
    def __init__(self, endpoint: str, token: str | None, counters: Counters, links, settings) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token, self.counters = token, counters
        self.links, self.settings = links, settings  # ``links.Links``, ``ranged.FetchSettings``
        self._host = urlsplit(self.endpoint).netloc
        self._lock = threading.Lock()
        self._targets: dict[Key, tuple[str, float]] = {}  # -> (data URL, use it until)
        self._resolving: dict[Key, concurrent.futures.Future] = {}

    def resolve_url(self, ref: RepoRef, path: str) -> str:
        return f"{self.endpoint}/{ref.url_path}/resolve/{ref.sha}/{quote(path)}"

    def auth_for(self, url: str) -> dict[str, str]:
        """The Authorization header, for the endpoint's own host only."""
        if self._token and urlsplit(url).netloc == self._host:
            return {"authorization": f"Bearer {self._token}"}
        return {}

    def forget(self, ref: RepoRef, path: str) -> None:
        """The target answered as if expired (403, a redirect): resolve again next time."""
        with self._lock:
            self._targets.pop((ref, path), None)

    def target(self, ref: RepoRef, path: str) -> str:
        """The data URL of ``path`` in ``ref``: cached, or resolved once however many ask (the
        first asker resolves on its own thread, the others wait for its answer or error)."""
        key = (ref, path)
        with self._lock:
            hit = self._targets.get(key)
            if hit and hit[1] > time.time():
                return hit[0]
            pending = self._resolving.get(key)
            mine = pending is None
            if mine:
                pending = self._resolving[key] = concurrent.futures.Future()
        if not mine:
            try:
                return pending.result(timeout=self.settings.timeout * (MAX_HOPS + 1))
            except concurrent.futures.TimeoutError:
                raise TimeoutError(f"resolving {path}: no answer in time") from None
        try:
            url = self._resolve(ref, path)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._resolving.pop(key, None)
        pending.set_result(url)
        return url

    def _resolve(self, ref: RepoRef, path: str) -> str:
        url = self.resolve_url(ref, path)
        for _hop in range(MAX_HOPS):
            self.counters.add("requests", path=path)
            with self.links.request("HEAD", url, self.auth_for(url), **self.settings.bounds(0)) as resp:
                if resp.status in REDIRECTS:
                    url = urljoin(url, resp.getheader("Location") or "")
                    if urlsplit(url).netloc != self._host:
                        break  # a CDN: no need to HEAD it, the first range GET will tell
                    continue
                check_status(resp.status, resp.headers)
                if resp.status != 200:
                    raise Fatal(f"resolving {path}: HTTP {resp.status}")
                break
        else:
            raise Fatal(f"resolving {path}: too many redirects")
        with self._lock:
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
