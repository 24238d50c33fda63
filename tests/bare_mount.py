"""Mounts with the daemon's own prefetcher off, for tests that count exact blocks.

The daemon's prefetcher speculates (sequential windows, whole tensors, next shards); a test
of what *another* component asks for must not depend on those guesses.  The daemon is
started as ``lifecycle`` starts it: ``python -m netmount.mounting.daemon``, configuration as JSON on
stdin, one ``ready`` line back once the kernel mount is live.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import require_fuse


class BareMounter:
    def __init__(self, tmp_path: Path, endpoint: str):
        self.tmp_path, self.endpoint = tmp_path, endpoint
        self.live: list[tuple[Path, subprocess.Popen]] = []

    def mount(self, repo: str, *, block_size: int = 1 << 20, name: str = "bare") -> Path:
        from netmount.mounting.daemon import DaemonConfig
        from netmount.remote.hub import resolve_snapshot

        require_fuse()
        mp = self.tmp_path / name
        mp.mkdir()
        snap = resolve_snapshot(repo, "main", self.endpoint, None)
        config = DaemonConfig(snap, str(mp), str(self.tmp_path / f"{name}-cache"), 1 << 30, block_size,
                              log_file=str(self.tmp_path / f"{name}.log"), prefetch=False)
        proc = subprocess.Popen([sys.executable, "-m", "netmount.mounting.daemon"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdin.write(config.to_json())
        proc.stdin.close()
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise AssertionError(f"daemon did not start: {line!r} (log: {config.log_file})")
        self.live.append((mp, proc))
        return mp

    def cleanup(self) -> None:
        for mp, proc in self.live:
            subprocess.run(["fusermount", "-u", str(mp)], capture_output=True)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount", "-uz", str(mp)], capture_output=True)
                proc.kill()
        self.live.clear()
