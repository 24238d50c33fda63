"""`netmount demo` end to end, as a user runs it: a separate process, real kernel FUSE, the
test hub in its own process, stock transformers loading through mmap.

Each test gives the demo its own --cache-dir, so it builds its own model and leaves nothing
behind: no mount, no process that names or holds a file under that folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from netmount.core.procs import wait_exit

from conftest import ROOT, require_fuse

DEMO_TIMEOUT = 600


def demo(*args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    require_fuse()
    return subprocess.run([sys.executable, "-m", "netmount", "demo", "--cache-dir", str(cache_dir), *args],
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT,
                          env={**os.environ, "HF_TOKEN": ""}, cwd=cache_dir.parent)


def mounts_under(folder: Path) -> list[str]:
    with open("/proc/mounts") as fh:
        return [line for line in fh if str(folder) in line.replace("\\040", " ")]


def processes_using(folder: Path) -> list[str]:
    """Processes whose command line, working directory or an open file lies under ``folder``."""
    return [f"{pid}: {cmdline}" for pid, cmdline in _users(folder).items()]


def _users(folder: Path) -> dict[int, str]:
    needle, found = str(folder), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            links = [os.readlink(f"/proc/{pid}/cwd")]
            fd_dir = f"/proc/{pid}/fd"
            links += [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if needle in cmdline or any(link.startswith(needle) for link in links):
            found[int(pid)] = cmdline.strip()
    return found


def assert_nothing_left(cache_dir: Path) -> None:
    # the demo's unmount has returned, so the kernel mount is gone already; its daemon exits
    # a moment later: wait for each process still there to exit (a pidfd, no polling; the
    # bound only catches one that never goes, and the assert below then names it)
    assert mounts_under(cache_dir) == []
    for pid in _users(cache_dir):
        wait_exit(pid, 10)
    assert processes_using(cache_dir) == []


def test_demo_loads_through_the_mount_and_skips_the_mtp_shard(tmp_path):
    cache_dir = tmp_path / "nm"
    done = demo(cache_dir=cache_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "fetched no further than its header" in out, out
    m = re.search(r"fetched ([\d,]+) of ([\d,]+) bytes", out)
    assert m, out
    fetched, total = (int(g.replace(",", "")) for g in m.groups())
    assert 0 < fetched < total
    # every file is listed with a coverage bar, and the MTP shard's is nowhere near full
    mtp_line = next(line for line in out.splitlines() if "MTP layer, unused" in line)
    assert re.search(r"\[#{0,6}\.+\]", mtp_line), mtp_line
    assert "DeepseekV3ForCausalLM" in out and "generated" in out
    assert "[demo]" in done.stderr and "[demo]" not in out  # progress on stderr, report on stdout
    assert_nothing_left(cache_dir)
    assert not (cache_dir / "demo" / "mnt").exists()


def test_demo_keep_then_stop(tmp_path):
    cache_dir = tmp_path / "nm"
    try:
        done = demo("--keep", cache_dir=cache_dir)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"netmount demo --stop --cache-dir {cache_dir}" in done.stdout
        mnt = cache_dir / "demo" / "mnt"
        assert mounts_under(mnt), "--keep must leave the repo mounted"
        # the kept mount still works after the demo process exited: the hub runs detached
        src = next((cache_dir / "models").glob("tiny-deepseek-v3-*"))
        assert (mnt / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
        assert processes_using(cache_dir), "the detached test hub should be running"

        again = demo("--keep", cache_dir=cache_dir)  # idempotent: replaces the kept demo
        assert again.returncode == 0, again.stderr
        assert "removed what an earlier demo left running" in again.stderr
        assert len(mounts_under(mnt)) == 1
    finally:
        stop = demo("--stop", cache_dir=cache_dir)
    assert stop.returncode == 0, stop.stderr
    assert "stopped the kept demo" in stop.stderr
    assert_nothing_left(cache_dir)
    assert "no demo was running" in demo("--stop", cache_dir=cache_dir).stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_cleans_up(tmp_path, sig):
    require_fuse()
    cache_dir = tmp_path / "nm"
    proc = subprocess.Popen([sys.executable, "-m", "netmount", "demo", "--cache-dir", str(cache_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_TOKEN": ""})
    try:
        lines = []
        for line in proc.stderr:  # interrupt while transformers loads through the mount
            lines.append(line)
            if "loading with stock transformers" in line:
                proc.send_signal(sig)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "cleaning up" in rest
    assert_nothing_left(cache_dir)


# the demo's load with a SIGTERM landing in code compiled from a string (transformers' lazy
# imports exec theirs), through the real CLI: deterministic, no FUSE, no model
INTERRUPTED_IN_EXEC = """
import sys
from netmount.commands.cli import main
from netmount.dev import demo

def load(cache_dir, keep, out):
    with demo._Signals():
        exec("import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\nwhile True: pass")

demo._run_demo = load
sys.exit(main(["demo"]))
"""


def test_sigterm_in_exec_d_code_exits_130_not_by_sigint(tmp_path):
    """A KeyboardInterrupt leaving code compiled from a string marks the interpreter, and
    ``python -m`` then ends by SIGINT (-2) however the exception was caught later: the demo's
    own exception type does not (it becomes KeyboardInterrupt, for the CLI's 130, outside
    that code).  Run with ``-m``, as ``netmount demo`` is (``-c`` and a script exit at once)."""
    (tmp_path / "interrupted_demo.py").write_text(INTERRUPTED_IN_EXEC)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "interrupted_demo"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr


def test_mtp_verdict_allows_only_the_header_blocks():
    from netmount.dev.demo import MtpShard, mtp_verdict

    mtp = MtpShard("mtp.safetensors", layer=4, header_len=5000, tensors=3, size=900_000)

    def stats(fetched: int, block: int = 128 << 10) -> dict:
        return {"block_size": block, "files": [{"path": mtp.path, "size": mtp.size, "fetched_bytes": fetched}]}

    assert mtp_verdict(stats(0), mtp)[0]
    ok, line = mtp_verdict(stats(128 << 10), mtp)
    assert ok and "fetched no further than its header" in line
    ok, line = mtp_verdict(stats((128 << 10) + 1), mtp)
    assert not ok and "no further" not in line
    # blocks as large as the file prove nothing
    assert not mtp_verdict(stats(5000, block=1 << 20), mtp)[0]
    big_header = MtpShard("mtp.safetensors", layer=4, header_len=200_000, tensors=3, size=900_000)
    assert mtp_verdict(stats(256 << 10), big_header)[0]
    assert not mtp_verdict({"files": []}, mtp)[0]
