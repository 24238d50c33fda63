"""The rows earlier sessions compared (issue 3, 10, 11): the 300 MB Llama over the test hub's
own WAN emulation (Python: ``--latency-ms``, ``--conn-mbps``), unchanged so they stay comparable.

- ``local``/``snapshot``/``netmount``: cold (mount + load), hot (same mount), warm (fresh
  mount over the disk cache) loads vs a local load and ``snapshot_download`` + load;
- ``partial``/``deepseek``: lone-tensor patterns on an empty cache, scored as bytes fetched ÷
  bytes wanted (each touched shard's header plus the tensors read): ``middle`` the middle
  tensor by name of every shard; ``median`` the median-size tensor of every shard;
  ``bigsmall`` the largest tensor of one shard, then the smallest of every other;
  ``random10`` 10 random tensors (seeded); ``deepseek`` one routed expert — 3 FP8 weights and
  3 scales — from each of 10 shards of the hub's synthetic DeepSeek-V3 (4.2 GB shards);
- ``cat``: cold ``cat`` of the largest shard vs a 16-connection range downloader in Python;
- ``peers``: rclone and httpdirfs cold loads through the hub's HTML folder index.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import tools
from .loaders import LOAD, PARTIAL, SNAPSHOT, file_layout, wanted_bytes
from .procs import Hub, NetMount, PeerMount, cpu_seconds, drop_caches, run_json
from .results import Results

REPO = "bench/llama"
PATTERNS = ["middle", "median", "bigsmall", "random10"]
DS_REPO = "deepseek-ai/DeepSeek-V3"
DS_SHARDS = [f"model-{k:05d}-of-000163.safetensors" for k in range(10, 20)]  # layers 5-10: MoE


@dataclass
class Legacy:
    hub: Hub
    work: Path
    model: Path
    runs: int
    res: Results
    extra: list[str] = field(default_factory=list)
    load_env: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(p.stat().st_size for p in self.model.iterdir())

    def mount(self, fresh: bool, repo: str = REPO) -> NetMount:
        cache = self.work / "nm-cache"
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        return NetMount(self.hub, self.work, cache, *self.extra, repo=repo)

    def load(self, folder) -> float:
        return run_json(LOAD, str(folder), env=self.load_env)["seconds"]


def loads(lg: Legacy, only: set[str]) -> None:
    res = lg.res
    for _ in range(lg.runs if "local" in only else 0):
        drop_caches()
        res.add("local", lg.load(lg.model))
    for _ in range(lg.runs if "snapshot" in only else 0):
        hf = lg.work / "hf-cache"
        shutil.rmtree(hf, ignore_errors=True)
        d = run_json(SNAPSHOT, REPO, str(hf), env={"HF_ENDPOINT": lg.hub.url, "HF_TOKEN": "",
                                                    "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        res.add("snapshot_download", d["seconds"])
        res.add("snapshot+load", d["seconds"] + lg.load(d["path"]))
    for _ in range(lg.runs if "netmount" in only else 0):  # cold, hot (same mount), warm (fresh mount)
        with lg.mount(fresh=True) as m:
            res.add("netmount cold", m.mount_seconds + lg.load(m.mp))
            res.add("netmount hot", lg.load(m.mp))
            res.add("cold fetched/total", m.stats()["bytes_fetched"] / lg.total)
            res.add("daemon peak RSS MiB", m.peak_rss() / 2**20)
        drop_caches()
        with lg.mount(fresh=False) as m:
            res.add("netmount mount", m.mount_seconds)
            res.add("netmount warm", lg.load(m.mp))


def fetched_safetensors(st: dict) -> int:
    return sum(f["fetched_bytes"] for f in st["files"] if f["path"].endswith(".safetensors"))


def partial(lg: Legacy, patterns: list[str], deepseek: bool) -> None:
    shards = sorted(lg.model.glob("*.safetensors"))
    layouts = {p.name: file_layout(p) for p in shards}
    for _ in range(lg.runs):  # alternating, each on an empty cache
        for pattern in patterns:
            with lg.mount(fresh=True) as m:
                picks = run_json(PARTIAL, str(m.mp), pattern)
                m.idle()
                st = m.stats()
            lg.res.add(f"partial {pattern}", fetched_safetensors(st) / wanted_bytes(picks, layouts))
        if deepseek:
            deepseek_expert(lg)


def deepseek_expert(lg: Legacy) -> None:
    """One routed expert from each of 10 synthetic DeepSeek-V3 shards."""
    from netmount.dev.testhub import synthetic

    ds = {sh.path: (len(sh.header), json.loads(sh.header[8:])) for sh in synthetic.shards() if sh.path in DS_SHARDS}
    with lg.mount(fresh=True, repo=DS_REPO) as m:
        t = time.monotonic()
        picks = run_json(PARTIAL, str(m.mp), "deepseek", ",".join(DS_SHARDS), timeout=1800)
        took = time.monotonic() - t
        m.idle()
        st = m.stats()
    lg.res.add("deepseek expert/shard", fetched_safetensors(st) / wanted_bytes(picks, ds))
    lg.res.add("deepseek seconds", took)


def parallel_download(url: str, size: int, conns: int = 16) -> float:
    """A 16-connection range downloader (like hf_transfer / aria2c -x16) into memory."""
    t = time.monotonic()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    try:
        target = urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url, method="HEAD")).url
    except urllib.error.HTTPError as e:  # the 302
        target = e.headers["Location"]
    part = -(-size // conns)

    def get(i):
        a, b = i * part, min(size, (i + 1) * part) - 1
        with urllib.request.urlopen(urllib.request.Request(target, headers={"Range": f"bytes={a}-{b}"})) as resp:
            n = 0
            while chunk := resp.read(1 << 20):
                n += len(chunk)
        return n

    with concurrent.futures.ThreadPoolExecutor(conns) as pool:
        got = sum(pool.map(get, range(conns)))
    assert got == size, (got, size)
    return time.monotonic() - t


def cat(lg: Legacy) -> None:
    big = max(lg.model.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    sha = lg.hub.sha(REPO)
    for _ in range(lg.runs):
        with lg.mount(fresh=True) as m:
            cpu = cpu_seconds(m.pid)
            lg.res.add("cat via netmount", tools.cat(m.mp / big.name))
            lg.res.add("cat daemon CPU s", cpu_seconds(m.pid) - cpu)
            lg.res.add("cat largest FUSE read KiB", m.stats()["max_read_bytes"] / 1024)
        lg.res.add("16-conn download", parallel_download(f"{lg.hub.url}/{REPO}/resolve/{sha}/{big.name}",
                                                         big.stat().st_size))


def peers(lg: Legacy, kinds: list[str]) -> None:
    url = f"{lg.hub.url}/{REPO}/resolve/{lg.hub.sha(REPO)}/"
    for kind in kinds:
        if tools.missing(kind):
            continue
        for _ in range(lg.runs):
            try:
                p = PeerMount(kind, url, lg.work)
            except RuntimeError as exc:
                print(f"  {kind}: {exc}", flush=True)
                break
            try:
                lg.res.add(f"{kind} cold", p.mount_seconds + run_json(LOAD, str(p.mp), timeout=900)["seconds"])
            except Exception as exc:
                print(f"  {kind}: load failed: {str(exc)[-300:]}", flush=True)
                break
            finally:
                p.unmount()
