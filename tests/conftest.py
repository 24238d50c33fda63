"""Shared fixtures: a Hub-compatible server on 127.0.0.1 and real kernel FUSE mounts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# huggingface_hub (telemetry on) keeps the agent-harness registry the test hub serves in
# $HF_HOME/.agent_harnesses.json for a day: tests (this process and the CLIs it runs) must not
# write into the machine's HF_HOME, nor change what other users' processes send the Hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``netmount`` as a user would: a separate process, text output."""
    return subprocess.run([sys.executable, "-m", "netmount", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def within(seconds: float, fn, *args):
    """``fn(*args)``'s result (or its exception), failing the test if it has not returned
    after ``seconds``.  A hang guard, not a speed claim: give it a generous bound.  (Runs
    in a daemon thread, so a read stuck in a FUSE call cannot hold the test up.)"""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller below
            out["error"] = exc

    t = threading.Thread(target=run, name="within", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {seconds:.0f}s: it hangs")
    if "error" in out:
        raise out["error"]
    return out["value"]


def settle(mp: Path | str) -> None:
    """Wait until the mount at ``mp`` is settled: nothing read, fetched, written behind or
    scheduled (blocks, exact ranges, heads; prefetch).  The one way tests wait for a mount: read
    its stats, or the hub's byte log, only after this.  One open of ``.netmount/idle`` (the
    daemon waits on its own events); fails the test if the daemon says it is still busy."""
    from netmount.mounting.stats import wait_idle

    assert wait_idle(mp), f"{mp}: still busy when the daemon stopped waiting for it to settle"


def stats(mp: Path | str, settled: bool = True) -> dict:
    """The mount's ``stats.json``, settled first (``settle``).  ``settled=False`` only for a
    test that must see a live mount mid-work (a read held by a fault, a daemon's pid)."""
    from netmount.mounting.stats import read_stats

    return read_stats(mp, settled=settled)


def require_fuse() -> None:
    """Fail, never skip: a test that needs FUSE and cannot have it must not pass quietly
    (select the others with ``-m "not fuse"``).  Also fails a test that mounts or starts a
    hub process without the ``fuse`` marker, so ``-m "not fuse"`` stays the fast set."""
    require_fuse_marker()
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: these tests need kernel FUSE (install fuse3 libfuse2)")


# The ``fuse`` marker (registered in setup.cfg) goes on every test that needs a real FUSE
# mount or the test hub in another process, so ``./scripts/test -m "not fuse"`` runs the
# rest in seconds.  Found by fixture: each such test depends, directly or through
# mounter/fm/bare, on a hub process (``hub`` here, ``fhub`` in faultkit.py); the modules in
# FUSE_MODULES start their own.
HUB_PROCESS_FIXTURES = {("conftest", "hub"), ("faultkit", "fhub")}
FUSE_MODULES = {"test_demo"}


def pytest_sessionfinish(session, exitstatus):
    """Where ``CI`` is set (``.ci/run`` sets it) a skipped test fails the run: there a skip
    can only mean a missing part (git, torch, FUSE) that would hide what the test checks."""
    if os.environ.get("CI") and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and reporter.stats.get("skipped"):
            reporter.write_sep("=", "CI: skipped tests fail the run (their reasons are in the summary)", red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


_running: list = [None]  # the test being run, for require_fuse_marker


@pytest.fixture(autouse=True)
def _current_test(request):
    _running[0] = request.node
    yield
    _running[0] = None


def require_fuse_marker() -> None:
    node = _running[0]
    if node is not None and node.get_closest_marker("fuse") is None:
        pytest.fail(f"{node.nodeid} mounts or starts a hub process but is not marked: "
                    f"add @pytest.mark.fuse (or take the hub / fhub fixture)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _needs_fuse(item):
            item.add_marker(pytest.mark.fuse)


def _needs_fuse(item) -> bool:
    if getattr(item.module, "__name__", "") in FUSE_MODULES:
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ())[-1:]:
            if (getattr(fixturedef.func, "__module__", ""), fixturedef.argname) in HUB_PROCESS_FIXTURES:
                return True
    return False


class Mounter:
    """Mounts through the real CLI and guarantees nothing stays mounted after a test."""

    def __init__(self, tmp_path: Path, endpoint: str):
        self.tmp_path, self.endpoint = tmp_path, endpoint
        self.cache_dir = tmp_path / "cache"
        self.mounted: list[Path] = []
        self.env = {"HF_ENDPOINT": endpoint, "NETMOUNT_CACHE_DIR": str(self.cache_dir),
                    "HF_TOKEN": "", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def mount(self, repo: str, *extra: str, name: str = "mnt", env: dict | None = None) -> Path:
        require_fuse()
        mp = self.tmp_path / name
        mp.mkdir(exist_ok=True)
        done = run_cli("mount", repo, str(mp), *extra, env={**self.env, **(env or {})})
        assert done.returncode == 0, f"mount failed: {done.stderr}"
        self.mounted.append(mp)
        return mp

    def unmount(self, mp: Path) -> None:
        """Unmount, and wait for the daemon to exit: it closes the cache on its way out (a
        mount on the same cache dir may open it next), and no request of its can reach the
        hub's log after this returns."""
        pids = daemon_pids(mp)
        done = run_cli("unmount", str(mp))
        assert done.returncode == 0, done.stderr
        self.mounted.remove(mp)
        wait_gone(pids)

    def stats(self, mp: Path, settled: bool = True) -> dict:
        return stats(mp, settled)

    def cleanup(self) -> None:
        from netmount.mounting.mounts import force_unmount

        for mp in self.mounted:
            force_unmount(str(mp), lazy=True)
        self.mounted.clear()


def daemon_pids(mp: Path) -> list[int]:
    """Pids of daemons serving ``mp`` (from their live stats, if the mount answers)."""
    from netmount.core.errors import NetmountError

    try:
        return [stats(mp, settled=False)["pid"]]
    except (NetmountError, KeyError):
        return []


def wait_gone(pids, timeout: float = 20.0) -> None:
    """Wait for each daemon to exit (a pidfd, no polling); the bound only catches a hang."""
    from netmount.core.procs import wait_exit

    for pid in pids:
        assert wait_exit(pid, timeout), f"daemon {pid} still running {timeout:.0f}s after its unmount"


@pytest.fixture
def mounter(tmp_path, hub):
    m = Mounter(tmp_path, hub.url)
    yield m
    m.cleanup()


@pytest.fixture
def bare(tmp_path, hub):
    """Mounts with the daemon's prefetcher off (bare_mount.py), for tests that count blocks."""
    from bare_mount import BareMounter

    m = BareMounter(tmp_path, hub.url)
    yield m
    m.cleanup()


def write_plain_repo(root: Path) -> Path:
    """Small files, a nested folder, an empty file and a multi-block binary."""
    repo = root / "tests" / "plain"
    (repo / "sub" / "deeper").mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"hello": "world"}))
    (repo / "README.md").write_text("# plain\n" * 100)
    (repo / "empty.txt").write_bytes(b"")
    (repo / "sub" / "deeper" / "note.txt").write_text("deep\n")
    (repo / "data.bin").write_bytes(os.urandom(5 * (1 << 20) + 12345))
    return repo


def write_big_safetensors(root: Path) -> Path:
    """One ~40 MB safetensors shard with tensors of different sizes (for amplification tests)."""
    import numpy as np
    from safetensors.numpy import save_file

    repo = root / "tests" / "big"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tensors = {f"layer.{i}.weight": rng.standard_normal((1024, 1024 + 256 * i), dtype=np.float32)
               for i in range(8)}
    tensors["small.bias"] = rng.standard_normal((7,), dtype=np.float32)
    save_file(tensors, str(repo / "model.safetensors"), metadata={"format": "np"})
    (repo / "config.json").write_text("{}")
    return repo


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from netmount.dev.testmodels import build_tiny_deepseek_v3

    return build_tiny_deepseek_v3(tmp_path_factory.mktemp("models") / "tiny-dsv3")


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory, tiny_model) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("hubroot")
    write_plain_repo(root)
    write_big_safetensors(root)
    shutil.copytree(tiny_model, root / "tests" / "tiny-dsv3")
    gated = root / "tests" / "gated"
    gated.mkdir(parents=True)
    (gated / "config.json").write_text("{}")
    (gated / ".gated").write_text("")
    return root


@pytest.fixture(scope="session")
def hub(hub_root):
    from hubproc import HubProcess

    # a separate process: tests read the mount through mmap (see hubproc.py)
    with HubProcess(hub_root, page_size=3, tokens={"good-token"}, synthetic_deepseek=True) as server:
        yield server
