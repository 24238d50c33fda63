"""Helpers for unit tests of pure logic: deterministic bytes, remote files, and the
in-memory fetcher (``netmount.remote.memory.MemoryFetcher``, which follows the fetch
contract exactly: ``tests/test_fetch_contract.py`` runs against it and the real one)."""

from __future__ import annotations

import random

from netmount.remote.hub import RemoteFile
from netmount.remote.memory import MemoryFetcher

__all__ = ["MemoryFetcher", "make_bytes", "remote", "spans"]


def make_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def remote(path: str, data: bytes) -> RemoteFile:
    return RemoteFile(path, len(data), "cid-" + path, True)


def spans(fetcher: MemoryFetcher) -> list[tuple[str, int, int]]:
    """The fetches asked for so far, as (path, start, end)."""
    return [(p, s, e) for p, s, e, _ in list(fetcher.calls)]
