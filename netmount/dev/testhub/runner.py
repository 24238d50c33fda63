"""``TestHub``: the two apps on one private event loop in a background thread.

Tests and ``netmount demo`` call it from synchronous code, and the code under test runs
its own event loop; a thread of our own keeps the two apart.  The log is a plain list
appended to from that thread and read from the caller's (list operations are atomic).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from .records import RequestRecord, select
from .server import HubServer
from .wan import Wan


class TestHub(HubServer):
    """A Hub-compatible endpoint (``url``) plus its CDN (``cdn_url``) on 127.0.0.1."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        root: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        page_size: int = 1000,
        url_ttl: float = 3600.0,
        tokens: Iterable[str] = (),
        synthetic_deepseek: bool = False,
        synthetic_repos: bool = False,
        gate_api: bool = False,
        latency_ms: float = 0.0,
        conn_mbps: float = 0.0,
        cdn_base: str = "",
    ) -> None:
        super().__init__(root, page_size=page_size, url_ttl=url_ttl, tokens=tokens,
                         synthetic_deepseek=synthetic_deepseek, synthetic_repos=synthetic_repos, gate_api=gate_api,
                         wan=Wan(latency_ms, conn_mbps), cdn_base=cdn_base)
        self.host, self.port, self.cdn_port = host, port, cdn_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> "TestHub":
        """Listen on both ports; returns once requests can be served."""
        if self._thread is not None:
            raise RuntimeError("TestHub already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                loop.run_until_complete(self._close())
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._thread = threading.Thread(target=run, name="testhub", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _listen(self) -> None:
        url_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        ports = []
        for app, port in ((self.hub_app(), self.port), (self.cdn_app(), self.cdn_port)):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, self.host, port).start()
            ports.append(runner.addresses[0][1])
        self.port, self.cdn_port = ports
        self.url = f"http://{url_host}:{self.port}"
        self.cdn_url = f"http://{url_host}:{self.cdn_port}"

    async def _close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> "TestHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- what happened -----------------------------------------------------------------

    def reset_log(self) -> None:
        self.log.clear()

    def requests(self, server: str | None = None, method: str | None = None,
                 path_contains: str | None = None) -> list[RequestRecord]:
        return select(self.log, server, method, path_contains)

    def bytes_sent(self, server: str = "cdn", path_contains: str | None = None) -> int:
        """Body bytes written by ``server`` ("hub", "cdn", or None for both)."""
        return sum(r.body_bytes for r in select(self.log, server, None, path_contains))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is in flight (e.g. before asserting on ``t_end``)."""
        deadline = time.monotonic() + timeout
        while self._inflight:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True
