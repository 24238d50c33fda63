"""What a user compares a mount with: ``cat``, ``dd``, ``curl``, ``aria2c -x16``, ``fio`` — timed.

Each returns seconds (or fio's numbers) and raises ``ToolError`` on a failure or a short
result, so a scenario can report one line and go on.  ``missing(tool)`` says once, in one
line, that a tool is not installed; callers skip that row.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

_told: set[str] = set()


class ToolError(RuntimeError):
    pass


def missing(tool: str) -> bool:
    """True (and one line printed, once) when ``tool`` is not on PATH."""
    if shutil.which(tool):
        return False
    if tool not in _told:
        _told.add(tool)
        print(f"  {tool}: not installed, its rows are skipped (scripts/bench_setup.sh installs it)", flush=True)
    return True


def _timed(cmd: list[str], timeout: float = 900) -> float:
    t = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    took = time.monotonic() - t
    if done.returncode:
        raise ToolError(f"{cmd[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    return took


def cat(path: Path) -> float:
    return _timed(["cat", str(path)])


def dd(path: Path) -> float:
    return _timed(["dd", f"if={path}", "of=/dev/null", "bs=4M"])


def _check_size(out: Path, size: int) -> None:
    got = out.stat().st_size if out.exists() else -1
    if got != size:
        raise ToolError(f"{out.name}: {got} bytes, expected {size}")


def curl(url: str, out: Path | None, size: int) -> float:
    """One connection, following the hub's 302; into ``out`` (then checked and removed) or /dev/null."""
    took = _timed(["curl", "-sfL", "-o", str(out) if out else "/dev/null", url])
    if out is not None:
        _check_size(out, size)
        out.unlink()
    return took


def aria2c(url: str, folder: Path, size: int, conns: int = 16) -> float:
    """``aria2c -x16 -s16``: 16 ranged connections into a file (checked and removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "aria2-download"
    out.unlink(missing_ok=True)
    took = _timed(["aria2c", "-q", f"-x{conns}", f"-s{conns}", "-k1M", "--file-allocation=none",
                   "--allow-overwrite=true", "--auto-file-renaming=false", "-d", str(folder), "-o", out.name, url])
    _check_size(out, size)
    out.unlink()
    return took


def fio(path: Path, pattern: str, runtime: float = 8.0) -> dict:
    """``seq``: 1 MiB sequential reads of the whole file, one job; ``rand``: 4 KiB random reads,
    4 jobs, each over its own quarter of the file, 16 MiB each (every 4 KiB block read at most
    once: no job reads a page another one brought into the page cache), at most ``runtime``
    seconds.  Buffered (through the page cache, as programs read), fio's page-cache
    invalidation at start on; fio advises random access, so no readahead.  Returns MB/s, IOPS,
    mean completion latency (µs) and the number of reads."""
    job = ["--rw=read", "--bs=1M", "--numjobs=1"] if pattern == "seq" else [
        "--rw=randread", "--bs=4k", "--numjobs=4", "--size=25%", "--offset_increment=25%", "--io_size=16m",
        f"--runtime={runtime}"]
    cmd = ["fio", "--name=bench", f"--filename={path}", "--readonly", "--ioengine=psync", "--invalidate=1",
           "--group_reporting", "--output-format=json", *job]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise ToolError(f"fio exited {done.returncode}: {done.stderr[-300:]}")
    read = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]["read"]
    if not read["io_bytes"]:
        raise ToolError("fio read nothing")
    return {"MBps": read["bw_bytes"] / 1e6, "iops": read["iops"], "lat_us": read["clat_ns"]["mean"] / 1e3,
            "ops": read["total_ios"]}
