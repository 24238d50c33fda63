"""Mounts with the daemon's own prefetcher off, for tests that count exact blocks.

The daemon's prefetcher speculates (sequential windows, whole tensors, next shards); a test
of what *another* component asks for must not depend on those guesses.  The daemon is
started by ``lifecycle.spawn_daemon``, as ``netmount mount`` starts it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from netmount.mounting.lifecycle import spawn_daemon
from netmount.mounting.mounts import unmount_retrying

from conftest import require_fuse, stats


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
        self.live.append((mp, spawn_daemon(config)))
        return mp

    def stats(self, mp: Path, settled: bool = True) -> dict:
        return stats(mp, settled)

    def cleanup(self) -> None:
        for mp, proc in self.live:
            unmount_retrying(str(mp))
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.live.clear()
