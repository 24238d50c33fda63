#!/usr/bin/env python3
"""Side-by-side benchmark: netmount vs snapshot_download, local disk, a 16-connection
downloader and peer FUSE filesystems, against the WAN-emulated test hub on 127.0.0.1.

    python scripts/bench.py [--latency-ms 40] [--conn-mbps 200] [--runs 3] [--peers rclone,httpdirfs]
                            [--only ...] [--parallel-loading]

Every process is separate — the hub, each mount daemon and each loader — because a
loader reading a FUSE mount through mmap holds its GIL during the page fault (tests/hubproc.py).
"Load" is ``AutoModelForCausalLM.from_pretrained(dir)`` *plus* a sum over every parameter:
transformers 5.24 keeps CPU bf16 weights as zero-copy mmap views, so from_pretrained alone
touches only a few pages per tensor and the rest would be read at first use.  Python and
torch import time is excluded everywhere.  Prints a table of medians and writes nothing
else; BENCHMARKS.md holds a pasted run.

Partial patterns (``--only partial``), each on a fresh mount and an empty cache, scored as
bytes fetched ÷ bytes wanted (each touched shard's header plus the tensors read):
``middle`` the middle tensor by name of every shard; ``median`` the median-size tensor of
every shard; ``bigsmall`` the largest tensor of one shard, then the smallest of every other;
``random10`` 10 random tensors across the shards (seeded); and ``deepseek`` (``--only
deepseek``) one routed expert — 3 FP8 weights and 3 scales — from each of 10 shards of the
hub's synthetic DeepSeek-V3 (4.2 GB shards).  ``--parallel-loading`` uses
transformers' parallel loading with 8 threads for the loads (4.5x: HF_ENABLE_PARALLEL_LOADING;
5.x ignores that and loads on a pool of min(4, cpus) threads, which the load script sets to 8).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable
REPO = "bench/llama"

LOAD = r"""
import os, sys, time, json
import torch
from transformers import AutoModelForCausalLM
if os.environ.get("NETMOUNT_BENCH_WORKERS"):  # transformers 5.x: its loading pool's size
    import transformers.core_model_loading as cml
    cml.GLOBAL_WORKERS = int(os.environ["NETMOUNT_BENCH_WORKERS"])  # read when a load starts
t = time.monotonic()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
with torch.no_grad():
    s = sum(float(p.float().sum()) for p in m.parameters())
print(json.dumps({"seconds": time.monotonic() - t, "checksum": s}))
"""

PARTIAL = r"""
import sys, json, random
from safetensors import safe_open
from pathlib import Path
import torch
folder, pattern = Path(sys.argv[1]), sys.argv[2]
if len(sys.argv) > 3:
    shards = [Path(folder, n) for n in sys.argv[3].split(",")]
else:
    shards = sorted(folder.glob("*.safetensors"))


def nbytes(sf, k):
    s = sf.get_slice(k)
    n = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}.get(s.get_dtype(), 4)
    for d in s.get_shape():
        n *= d
    return n


picks = []
if pattern == "deepseek":  # one routed expert, all 6 tensors of it, from each shard
    for shard in shards:
        with safe_open(str(shard), framework="pt") as sf:
            experts = {}
            for k in sorted(sf.keys()):
                if ".mlp.experts." in k:
                    experts.setdefault(k.rsplit(".", 2)[0], []).append(k)
        whole = [v for v in experts.values() if len(v) == 6]
        picks += [(shard.name, k) for k in whole[len(whole) // 2]]
else:
    sizes = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as sf:
            sizes[shard.name] = {k: nbytes(sf, k) for k in sf.keys()}
    if pattern == "middle":
        picks = [(n, sorted(s)[len(s) // 2]) for n, s in sizes.items()]
    elif pattern == "median":
        picks = [(n, sorted(s, key=lambda k: (s[k], k))[len(s) // 2]) for n, s in sizes.items()]
    elif pattern == "bigsmall":
        names = list(sizes)
        first = sizes[names[0]]
        picks = [(names[0], max(first, key=lambda k: (first[k], k)))]
        picks += [(n, min(sizes[n], key=lambda k: (sizes[n][k], k))) for n in names[1:]]
    elif pattern == "random10":
        pool = sorted((n, k) for n, s in sizes.items() for k in s)
        picks = random.Random(10).sample(pool, 10)
    else:
        raise SystemExit(f"unknown pattern {pattern}")
for name, key in picks:
    with safe_open(str(folder / name), framework="pt") as sf:
        t = sf.get_tensor(key)
        float(t.float().sum())  # touch every page (on torch's threads)
print(json.dumps(picks))
"""

PATTERNS = ["middle", "median", "bigsmall", "random10"]
DS_REPO = "deepseek-ai/DeepSeek-V3"
DS_SHARDS = [f"model-{k:05d}-of-000163.safetensors" for k in range(10, 20)]  # layers 5-10: MoE


def wanted_bytes(picks, layouts) -> int:
    """Each touched shard's header (8 + its length) and every tensor read."""
    need = 0
    for shard in {s for s, _ in picks}:
        need += layouts[shard][0]
    for shard, key in picks:
        a, b = layouts[shard][1][key]["data_offsets"]
        need += b - a
    return need


def file_layout(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()[:8]
    n = int.from_bytes(raw, "little")
    with open(path, "rb") as fh:
        fh.seek(8)
        return 8 + n, json.loads(fh.read(n))


SNAPSHOT = r"""
import sys, time, json
from huggingface_hub import snapshot_download
t = time.monotonic()
p = snapshot_download(sys.argv[1], cache_dir=sys.argv[2])
print(json.dumps({"seconds": time.monotonic() - t, "path": p}))
"""


def run_json(code: str, *args: str, env=None, timeout=600):
    done = subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{code.split(chr(10))[1][:40]}...: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def drop_caches() -> None:
    """Page cache out, so 'local' and 'warm' read from disk as after a reboot would not —
    best effort (needs root); mounts with kernel_cache keep their own pages anyway."""
    try:
        subprocess.run(["sync"])
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


class Hub:
    def __init__(self, root: Path, latency_ms: float, conn_mbps: float):
        self.proc = subprocess.Popen(
            [PY, "-m", "netmount.dev.testhub", "--root", str(root), "--latency-ms", str(latency_ms),
             "--conn-mbps", str(conn_mbps), "--synthetic-deepseek"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=ROOT)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("test hub did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class NetMount:
    def __init__(self, hub: Hub, work: Path, cache: Path, *extra: str, repo: str = REPO):
        self.mp = work / "mnt-netmount"
        self.mp.mkdir(exist_ok=True)
        self.env = {"HF_ENDPOINT": hub.url, "NETMOUNT_CACHE_DIR": str(cache), "HF_TOKEN": ""}
        t = time.monotonic()
        done = subprocess.run([PY, "-m", "netmount", "mount", repo, str(self.mp), *extra],
                              capture_output=True, text=True, env={**os.environ, **self.env}, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(done.stderr)
        self.mount_seconds = time.monotonic() - t

    def stats(self) -> dict:
        return json.loads((self.mp / ".netmount" / "stats.json").read_text())

    def peak_rss(self) -> int:
        pid = self.stats()["pid"]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def unmount(self):
        subprocess.run([PY, "-m", "netmount", "unmount", str(self.mp)], env={**os.environ, **self.env},
                       capture_output=True, cwd=ROOT)


class PeerMount:
    """rclone (http remote, --vfs-cache-mode full) or httpdirfs --cache, in the foreground."""

    def __init__(self, kind: str, hub: Hub, work: Path, sha: str):
        self.mp = work / f"mnt-{kind}"
        self.mp.mkdir(exist_ok=True)
        cache = work / f"cache-{kind}"
        shutil.rmtree(cache, ignore_errors=True)
        url = f"{hub.url}/{REPO}/resolve/{sha}/"
        if kind == "rclone":
            cmd = ["rclone", "mount", ":http:", str(self.mp), "--http-url", url, "--vfs-cache-mode", "full",
                   "--cache-dir", str(cache), "--read-only", "--config", "/dev/null"]
        elif kind == "httpdirfs":
            cache.mkdir()
            cmd = ["httpdirfs", "-f", "--cache", "--cache-location", str(cache), url, str(self.mp)]
        else:
            raise ValueError(kind)
        t = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.ismount(self.mp):
            if self.proc.poll() is not None or time.monotonic() - t > 30:
                raise RuntimeError(f"{kind} did not mount")
            time.sleep(0.05)
        self.mount_seconds = time.monotonic() - t

    def unmount(self):
        subprocess.run(["fusermount", "-u", str(self.mp)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["fusermount", "-uz", str(self.mp)], capture_output=True)


def parallel_download(url: str, size: int, conns: int = 16) -> float:
    """A 16-connection range downloader (like hf_transfer / aria2c -x16) into memory."""
    t = time.monotonic()
    req = urllib.request.Request(url, method="HEAD")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        target = opener.open(req).url
    except urllib.error.HTTPError as e:  # the 302
        target = e.headers["Location"]
    part = -(-size // conns)

    def get(i):
        a, b = i * part, min(size, (i + 1) * part) - 1
        r = urllib.request.Request(target, headers={"Range": f"bytes={a}-{b}"})
        with urllib.request.urlopen(r) as resp:
            n = 0
            while chunk := resp.read(1 << 20):
                n += len(chunk)
        return n

    with concurrent.futures.ThreadPoolExecutor(conns) as pool:
        got = sum(pool.map(get, range(conns)))
    assert got == size, (got, size)
    return time.monotonic() - t


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system): is a cold cat waiting on the link or on the daemon?"""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_cat(path: Path) -> float:
    t = time.monotonic()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - t


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from netmount.mounting.stats import wait_idle
    ap.add_argument("--latency-ms", type=float, default=40)
    ap.add_argument("--conn-mbps", type=float, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=300_000_000, help="model bytes (bf16 Llama-like)")
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--peers", default="rclone,httpdirfs", help="comma list; empty for none")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--mount-args", default="", help="extra netmount mount arguments")
    ap.add_argument("--only", default="local,snapshot,netmount,partial,deepseek,cat,peers",
                    help="scenarios to run (comma list; default all); partial:PATTERN,... for some patterns")
    ap.add_argument("--parallel-loading", action="store_true",
                    help="transformers' parallel loading, 8 threads (4.5x: HF_ENABLE_PARALLEL_LOADING; 5.x: its pool)")
    args = ap.parse_args()
    # transformers 4.5x: HF_ENABLE_PARALLEL_LOADING; 5.x ignores it and loads on a pool of
    # min(4, cpus) threads, which LOAD sets to 8 through NETMOUNT_BENCH_WORKERS
    load_env = {"HF_ENABLE_PARALLEL_LOADING": "true", "HF_PARALLEL_LOADING_WORKERS": "8",
                "NETMOUNT_BENCH_WORKERS": "8"} if args.parallel_loading else {}

    from netmount.dev.testmodels import cached_model

    work = args.work or Path(tempfile.mkdtemp(prefix="netmount-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = cached_model("llama-like", cache_root=work / "models", total_bytes=args.size, shards=args.shards)
    root = work / "hubroot"
    (root / "bench").mkdir(parents=True, exist_ok=True)
    if not (root / REPO).exists():
        (root / REPO).symlink_to(model)
    shards = sorted(model.glob("*.safetensors"))
    total = sum(p.stat().st_size for p in model.iterdir())
    extra = args.mount_args.split()
    R = args.runs
    hub = Hub(root, args.latency_ms, args.conn_mbps)
    print(f"model {total / 1e6:.0f} MB in {len(shards)} shards; hub {hub.url} latency {args.latency_ms} ms, "
          f"{args.conn_mbps} Mbit/s per connection; {R} runs", flush=True)
    res: dict[str, list[float]] = {}

    def idle(m):  # prefetch done: what it fetched counts too
        if not wait_idle(m.mp):
            print("  (the daemon was still busy)", flush=True)

    def add(key, value):
        res.setdefault(key, []).append(value)
        print(f"  {key}: {value:.3f}", flush=True)

    try:
        sha = json.loads(urllib.request.urlopen(f"{hub.url}/api/models/{REPO}").read())["sha"]
        only = set(args.only.split(","))
        for _ in range(R if "local" in only else 0):  # local folder
            drop_caches()
            add("local", run_json(LOAD, str(model), env=load_env)["seconds"])
        for _ in range(R if "snapshot" in only else 0):  # snapshot_download + load
            hf = work / "hf-cache"
            shutil.rmtree(hf, ignore_errors=True)
            d = run_json(SNAPSHOT, REPO, str(hf), env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "",
                                                        "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
            add("snapshot_download", d["seconds"])
            add("snapshot+load", d["seconds"] + run_json(LOAD, d["path"], env=load_env)["seconds"])
        rss = []
        # cold, then hot (same mount) and warm (fresh mount, disk cache)
        for _ in range(R if "netmount" in only else 0):
            cache = work / "nm-cache"
            shutil.rmtree(cache, ignore_errors=True)
            m = NetMount(hub, work, cache, *extra)
            try:
                add("netmount cold", m.mount_seconds + run_json(LOAD, str(m.mp), env=load_env)["seconds"])
                add("netmount hot", run_json(LOAD, str(m.mp), env=load_env)["seconds"])
                st = m.stats()
                add("cold fetched/total", st["bytes_fetched"] / total)
                rss.append(m.peak_rss())
            finally:
                m.unmount()
            drop_caches()
            m = NetMount(hub, work, cache, *extra)
            try:
                add("netmount mount", m.mount_seconds)
                add("netmount warm", run_json(LOAD, str(m.mp), env=load_env)["seconds"])
            finally:
                m.unmount()
        patterns = [p.split(":", 1)[1] for p in only if p.startswith("partial:")]
        patterns = patterns or (PATTERNS if "partial" in only else [])
        layouts = {p.name: file_layout(p) for p in shards}
        for _ in range(R):  # partial patterns, alternating, each on an empty cache
            for pattern in patterns:
                cache = work / "nm-cache"
                shutil.rmtree(cache, ignore_errors=True)
                m = NetMount(hub, work, cache, *extra)
                try:
                    picks = run_json(PARTIAL, str(m.mp), pattern)
                    idle(m)
                    st = m.stats()
                finally:
                    m.unmount()
                fetched = sum(f["fetched_bytes"] for f in st["files"] if f["path"].endswith(".safetensors"))
                add(f"partial {pattern}", fetched / wanted_bytes(picks, layouts))
            if "deepseek" in only:  # one routed expert from each of 10 synthetic DeepSeek-V3 shards
                from netmount.dev.testhub import synthetic

                ds = {sh.path: (len(sh.header), json.loads(sh.header[8:])) for sh in synthetic.shards()
                      if sh.path in DS_SHARDS}
                cache = work / "nm-cache"
                shutil.rmtree(cache, ignore_errors=True)
                m = NetMount(hub, work, cache, *extra, repo=DS_REPO)
                try:
                    t = time.monotonic()
                    picks = run_json(PARTIAL, str(m.mp), "deepseek", ",".join(DS_SHARDS), timeout=1800)
                    took = time.monotonic() - t
                    idle(m)
                    st = m.stats()
                finally:
                    m.unmount()
                fetched = sum(f["fetched_bytes"] for f in st["files"] if f["path"].endswith(".safetensors"))
                add("deepseek expert/shard", fetched / wanted_bytes(picks, ds))
                add("deepseek seconds", took)
        big = max(shards, key=lambda p: p.stat().st_size)
        for _ in range(R if "cat" in only else 0):  # cat one shard vs 16 connections
            cache = work / "nm-cache"
            shutil.rmtree(cache, ignore_errors=True)
            m = NetMount(hub, work, cache, *extra)
            try:
                pid = m.stats()["pid"]
                cpu = cpu_seconds(pid)
                add("cat via netmount", timed_cat(m.mp / big.name))
                add("cat daemon CPU s", cpu_seconds(pid) - cpu)
                add("cat largest FUSE read KiB", m.stats()["max_read_bytes"] / 1024)
            finally:
                m.unmount()
            add("16-conn download", parallel_download(f"{hub.url}/{REPO}/resolve/{sha}/{big.name}",
                                                      big.stat().st_size))
        for kind in [p for p in args.peers.split(",") if p and "peers" in only]:
            if shutil.which(kind) is None:
                print(f"  {kind}: not installed, skipped", flush=True)
                continue
            for _ in range(R):
                try:
                    p = PeerMount(kind, hub, work, sha)
                except RuntimeError as exc:
                    print(f"  {kind}: {exc}", flush=True)
                    break
                try:
                    add(f"{kind} cold", p.mount_seconds + run_json(LOAD, str(p.mp), timeout=900)["seconds"])
                except Exception as exc:
                    print(f"  {kind}: load failed: {str(exc)[-300:]}", flush=True)
                    break
                finally:
                    p.unmount()
        res["daemon peak RSS MiB"] = [x / 2**20 for x in rss]
    finally:
        hub.stop()

    m = {k: med(v) for k, v in res.items()}
    ratio = lambda a, b: f"{m[a] / m[b]:.2f}x" if a in m and b in m else "-"
    lines = [
        ("cold: mount + from_pretrained + touch", "netmount cold", "snapshot+load", "<= 0.8x"),
        ("warm: fresh mount (not timed), disk cache", "netmount warm", "local", "<= 1.2x"),
        ("hot: same mount again", "netmount hot", "local", "<= 1.0x"),
        ("cat one shard vs 16-conn download", "cat via netmount", "16-conn download", "<= 1.25x time"),
    ]
    out = ["| scenario | netmount (s) | baseline (s) | ratio | target |", "|---|---|---|---|---|"]
    for title, a, b, target in lines:
        out.append(f"| {title} | {m.get(a, float('nan')):.2f} | {b}: {m.get(b, float('nan')):.2f} "
                   f"| {ratio(a, b)} | {target} |")
    for pattern, title in [("middle", "middle tensor by name, every shard"),
                           ("median", "median-size tensor, every shard"),
                           ("bigsmall", "largest tensor of one shard, then smallest of every other"),
                           ("random10", "10 random tensors across shards")]:
        if f"partial {pattern}" in m:
            out.append(f"| partial: {title} | amplification {m[f'partial {pattern}']:.3f} "
                       f"| fetched / (tensors + headers) | | <= 1.25 |")
    if "deepseek expert/shard" in m:
        out.append(f"| DeepSeek-V3 (synthetic): one routed expert from each of 10 shards | amplification "
                   f"{m['deepseek expert/shard']:.3f} ({m['deepseek seconds']:.1f} s) "
                   f"| fetched / (experts + headers) | | <= 1.25 |")
    for kind in [p for p in args.peers.split(",") if p]:
        k = f"{kind} cold"
        if k in m:
            out.append(f"| peer {kind}: cold load | {m['netmount cold']:.2f} | {kind}: {m[k]:.2f} "
                       f"| {ratio('netmount cold', k)} | < 1.0x |")
    out.append(f"| snapshot_download alone | | {m.get('snapshot_download', float('nan')):.2f} | | |")
    out.append(f"| `netmount mount` (CLI, warm cache) | {m.get('netmount mount', float('nan')):.2f} | | | |")
    out.append(f"| cold bytes fetched / repo size | {m.get('cold fetched/total', float('nan')):.3f} | | | |")
    if "cat via netmount" in m:  # what a cold cat waits on: the daemon's CPU, and the FUSE request size
        out.append(f"| cat: daemon CPU (s) / largest FUSE read (KiB) | {m['cat daemon CPU s']:.2f} / "
                   f"{m['cat largest FUSE read KiB']:.0f} | | | |")
    out.append(f"| daemon peak RSS (MiB) | {m.get('daemon peak RSS MiB', float('nan')):.0f} | | | <= 300 |")
    print("\nmedians of", R, "runs:")
    print("\n".join(out))
    print("\nall runs:", json.dumps({k: [round(x, 3) for x in v] for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
