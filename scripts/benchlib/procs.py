"""The bench's processes: the test hub, netmount mounts, peer FUSE mounts, loaders.

Every process is separate — the hub, each mount daemon and each loader — because a loader
reading a FUSE mount through mmap holds its GIL during the page fault (tests/hubproc.py).
The mount CLI and its daemon get ``PYTHONPATH`` of this tree: the daemon starts with ``-P``
from ``/``, so without it the venv's editable install would be benchmarked instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
TREE_ENV = {"PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


def run_json(code: str, *args: str, env=None, timeout=900):
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    done = subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **TREE_ENV, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{code.strip().splitlines()[0][:40]}...: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def drop_caches() -> None:
    """Page cache out, so 'local' and 'warm' read from disk — best effort (needs root); mounts
    with kernel_cache keep their own pages while mounted."""
    try:
        subprocess.run(["sync"])
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """``VmHWM``: the process's peak resident set, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Hub:
    """``python -m netmount.dev.testhub`` serving ``root`` (and the synthetic DeepSeek-V3 if asked);
    ``cdn_base`` sends folder repos' LFS downloads to an external CDN (the bench's nginx)."""

    def __init__(self, root: Path, latency_ms: float = 0, conn_mbps: float = 0, *, synthetic: bool = False,
                 cdn_base: str = ""):
        cmd = [PY, "-m", "netmount.dev.testhub", "--root", str(root), "--latency-ms", str(latency_ms),
               "--conn-mbps", str(conn_mbps)]
        cmd += ["--synthetic-deepseek"] if synthetic else []
        cmd += ["--cdn-base", cdn_base] if cdn_base else []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                                     env={**os.environ, **TREE_ENV})
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("test hub did not start")

    def sha(self, repo: str) -> str:
        import urllib.request

        return json.loads(urllib.request.urlopen(f"{self.url}/api/models/{repo}").read())["sha"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class NetMount:
    """``netmount mount`` (the CLI, timed as ``mount_seconds``) of ``repo`` at ``work/mnt-netmount``."""

    def __init__(self, hub: Hub, work: Path, cache: Path, *extra: str, repo: str = "bench/llama"):
        self.mp = work / "mnt-netmount"
        self.mp.mkdir(exist_ok=True)
        self.env = {"HF_ENDPOINT": hub.url, "NETMOUNT_CACHE_DIR": str(cache), "HF_TOKEN": "", **TREE_ENV}
        t = time.monotonic()
        done = subprocess.run([PY, "-m", "netmount", "mount", repo, str(self.mp), *extra],
                              capture_output=True, text=True, env={**os.environ, **self.env}, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(done.stderr)
        self.mount_seconds = time.monotonic() - t
        self.pid = self.stats()["pid"]

    def stats(self) -> dict:
        return json.loads((self.mp / ".netmount" / "stats.json").read_text())

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        return peak_rss(self.pid)

    def idle(self) -> bool:
        from netmount.mounting.stats import wait_idle

        return wait_idle(self.mp)

    def unmount(self):
        subprocess.run([PY, "-m", "netmount", "unmount", str(self.mp)], env={**os.environ, **self.env},
                       capture_output=True, cwd=ROOT)

    def __enter__(self) -> "NetMount":
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()


class PeerMount:
    """rclone (http remote, --vfs-cache-mode full) or httpdirfs --cache of the folder at ``url``
    (an HTML index), in the foreground; ``fresh=False`` keeps the cache of an earlier mount."""

    def __init__(self, kind: str, url: str, work: Path, fresh: bool = True):
        self.mp = work / f"mnt-{kind}"
        self.mp.mkdir(exist_ok=True)
        cache = work / f"cache-{kind}"
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(exist_ok=True)
        if kind == "rclone":
            cmd = ["rclone", "mount", ":http:", str(self.mp), "--http-url", url, "--vfs-cache-mode", "full",
                   "--cache-dir", str(cache), "--read-only", "--config", "/dev/null"]
        elif kind == "httpdirfs":
            cmd = ["httpdirfs", "-f", "--cache", "--cache-location", str(cache), url, str(self.mp)]
        else:
            raise ValueError(kind)
        t = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.ismount(self.mp):  # a foreign program: no idle file to wait on
            if self.proc.poll() is not None or time.monotonic() - t > 30:
                raise RuntimeError(f"{kind} did not mount")
            time.sleep(0.05)
        self.mount_seconds = time.monotonic() - t

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def unmount(self):
        subprocess.run(["fusermount", "-u", str(self.mp)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["fusermount", "-uz", str(self.mp)], capture_output=True)

    def __enter__(self) -> "PeerMount":
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()
