"""Issue 21's 1.5 GB model loads (``--only big``) and ``fio`` on a warm mount (``--only fio``).

Loads, each with mmap and with ``disable_mmap=True`` (loaders.LOAD), alternating per run:

- cold, over the emulated WAN: ``netmount mount`` (timed) + load on a fresh cache, vs
  ``snapshot_download`` (fresh cache dir) + the same load of the downloaded folder (one
  download per run serves both modes: the files are in the page cache after it either way);
  the daemon's CPU per GB and its peak RSS (``VmHWM``) after the load;
- warm: a fresh mount over the full cache (mount not timed), page cache dropped, vs the
  load of the model's local folder, page cache dropped.

fio: 1 MiB sequential reads of the shard and 4 KiB random reads (4 jobs) on a fresh mount
over a full cache vs the local file, page cache dropped before each (tools.fio).
"""

from __future__ import annotations

import shutil

from . import tools
from .context import BIG, Ctx
from .loaders import LOAD, SNAPSHOT
from .procs import drop_caches, run_json
from .profile import Spy

MODES = ("mmap", "nommap")


def load(folder, mode: str) -> float:
    return run_json(LOAD, str(folder), mode)["seconds"]


def cold_netmount(ctx: Ctx, hub, mode: str) -> None:
    size = sum(p.stat().st_size for p in ctx.model.glob("*.safetensors"))  # what a load reads
    with ctx.mount(hub, ctx.cache(f"big-{mode}", fresh=True)) as m:
        cpu = m.cpu()
        ctx.res.add(f"big cold {mode} s", m.mount_seconds + load(m.mp, mode))
        m.idle()
        ctx.res.add(f"big cold {mode} CPU s/GB", (m.cpu() - cpu) / (size / 1e9))
        ctx.res.add(f"big cold {mode} RSS MiB", m.peak_rss() / 2**20)
        ctx.res.add(f"big cold {mode} fetched/size", m.stats()["bytes_fetched"] / size)


def snapshot(ctx: Ctx, hub) -> None:
    hf = ctx.work / "hf-cache"
    shutil.rmtree(hf, ignore_errors=True)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", "HF_HOME": str(ctx.work / "hf-home"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    d = run_json(SNAPSHOT, BIG, str(hf), env=env)
    ctx.res.add("big snapshot_download s", d["seconds"])
    for mode in MODES:
        ctx.res.add(f"big snapshot+load {mode} s", d["seconds"] + load(d["path"], mode))
    shutil.rmtree(hf, ignore_errors=True)


def warm(ctx: Ctx, mode: str) -> None:
    size = sum(p.stat().st_size for p in ctx.model.glob("*.safetensors"))
    with ctx.mount(ctx.hub(wan=True), ctx.cache(f"big-{mode}", fresh=False)) as m:
        drop_caches()
        cpu = m.cpu()
        ctx.res.add(f"big warm {mode} s", load(m.mp, mode))
        ctx.res.add(f"big warm {mode} CPU s/GB", (m.cpu() - cpu) / (size / 1e9))
    drop_caches()
    ctx.res.add(f"big local {mode} s", load(ctx.model, mode))


def big(ctx: Ctx) -> None:
    hub = ctx.hub(wan=True)
    if hub is None:
        return
    for _ in range(ctx.runs):
        for mode in MODES:
            cold_netmount(ctx, hub, mode)
        snapshot(ctx, hub)
        for mode in MODES:
            warm(ctx, mode)


def fio(ctx: Ctx) -> None:
    if tools.missing("fio"):
        return
    cache = ctx.warm_cache()
    for _ in range(ctx.runs):
        for pattern in ("seq", "rand"):
            with ctx.mount(ctx.hub(wan=False), cache) as m:
                drop_caches()
                cpu = m.cpu()
                out = tools.fio(m.mp / ctx.shard.name, pattern)
                add_fio(ctx, f"fio {pattern}", out)
                ctx.res.add(f"fio {pattern} CPU µs/op", (m.cpu() - cpu) * 1e6 / out["ops"])
            drop_caches()
            add_fio(ctx, f"fio local {pattern}", tools.fio(ctx.shard, pattern))
    if ctx.profile is not None:
        with ctx.mount(ctx.hub(wan=False), cache) as m:
            drop_caches()
            with Spy(m.pid, ctx.profile / "warm-randread-4k"):
                tools.fio(m.mp / ctx.shard.name, "rand")


def add_fio(ctx: Ctx, key: str, out: dict) -> None:
    ctx.res.add(f"{key} MB/s", out["MBps"])
    ctx.res.add(f"{key} IOPS", out["iops"])
    ctx.res.add(f"{key} lat µs", out["lat_us"])
