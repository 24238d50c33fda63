"""What the issue-21 scenarios share: the work dir, the 1.5 GB model, the hubs and the nginx CDN.

Processes start on first use and stop in ``close``: a run of ``--only fio`` starts no WAN
hub.  ``hubroot`` holds ``bench/llama`` (the 300 MB model of the old rows) and
``bench/llama-1p5b`` as symlinks to the built models; the hubs and nginx serve that folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import model as big_model
from . import tools
from .cdn import NginxCdn, nginx_binary
from .procs import Hub, NetMount, drop_caches
from .results import Results

BIG = "bench/llama-1p5b"


class Skip(Exception):
    """A scenario cannot run here (a missing tool): one line, and the next scenario."""


def link_repo(root: Path, repo: str, folder: Path) -> None:
    """``root/repo`` -> ``folder``: the hubs and nginx serve the model under its repo name."""
    link = root / repo
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != folder.resolve():
        link.unlink()  # an older build
    if not link.is_symlink():
        link.symlink_to(folder)


@dataclass
class Ctx:
    work: Path
    runs: int
    res: Results
    extra: list[str] = field(default_factory=list)  # netmount mount arguments
    profile: Path | None = None
    latency_ms: float = 40.0
    conn_rate: int = 25_000_000  # WAN: bytes/s per connection
    _hubs: dict = field(default_factory=dict)
    _cdn: NginxCdn | None = None
    _model: Path | None = None
    _warm: Path | None = None

    @property
    def root(self) -> Path:
        return self.work / "hubroot"

    @property
    def model(self) -> Path:
        if self._model is None:
            self._model = big_model.cached(self.work / "models")
            link_repo(self.root, BIG, self._model)
        return self._model

    @property
    def shard(self) -> Path:
        """The largest shard (~448 MB): what the `cat`, curl, aria2c and fio rows read."""
        return max(self.model.glob("*.safetensors"), key=lambda p: p.stat().st_size)

    @property
    def cdn(self) -> NginxCdn:
        if self._cdn is None:
            if nginx_binary() is None:
                raise Skip("nginx is not installed (scripts/bench_setup.sh installs it)")
            self._cdn = NginxCdn(self.root, self.work / "nginx", self.latency_ms, self.conn_rate)
        return self._cdn

    def hub(self, wan: bool) -> Hub | None:
        """The loopback hub (no delay, CDN = nginx) or the WAN one (API answers ``latency_ms``
        late, CDN = nginx's delayed, rate-capped server); None if nginx cannot do the WAN."""
        if wan not in self._hubs:
            self.model  # noqa: B018 - the repo link must exist before the hub lists it
            base = self.cdn.wan_url if wan else self.cdn.url
            if base is None:
                print("  nginx's echo module is missing (apt-get install libnginx-mod-http-echo): "
                      "WAN rows skipped", flush=True)
                self._hubs[wan] = None
            else:
                hub = Hub(self.root, self.latency_ms if wan else 0, cdn_base=base)
                hub.sha(BIG)  # the hub hashes the repo on its first request: not inside a timed one
                self._hubs[wan] = hub
        return self._hubs[wan]

    def url(self, hub: Hub, path: Path) -> str:
        """What a user passes to curl or aria2c: the Hub's resolve URL (a 302 to the CDN)."""
        return f"{hub.url}/{BIG}/resolve/main/{path.name}"

    def cache(self, name: str, fresh: bool) -> Path:
        path = self.work / f"nm-{name}"
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        return path

    def mount(self, hub: Hub, cache: Path) -> NetMount:
        return NetMount(hub, self.work, cache, *self.extra, repo=BIG)

    def warm_cache(self) -> Path:
        """A cache holding the whole shard: filled once per bench run by a cat through a mount."""
        if self._warm is None:
            cache = self.cache("warm", fresh=True)
            with self.mount(self.hub(wan=False), cache) as m:
                tools.cat(m.mp / self.shard.name)
                m.idle()
            self._warm = cache
            drop_caches()
        return self._warm

    def close(self) -> None:
        for hub in self._hubs.values():
            if hub is not None:
                hub.stop()
        if self._cdn is not None:
            self._cdn.stop()
