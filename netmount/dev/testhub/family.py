"""Many small model repos made on demand: ``synthetic/repo-{n}`` and ``synthetic/gated-{n}``.

For what a mount that resolves repos by id must be tested with (issue 22): thousands of
distinct repos, none stored.  Repo ``n`` (0 to 999999, written without leading zeros) holds

- ``config.json`` and ``model.safetensors`` (one F32 tensor ``weight`` [4, 8]): its own bytes,
  a pure function of ``n``;
- ``tokenizer.json`` (a regular file) and ``embed.safetensors`` (an LFS file): the same bytes in
  every repo of the family — what fine-tunes of one base share, so the same git blob id and
  the same LFS sha256 in every repo.

Ids and digests are real (git blob sha1, LFS sha256 of the bytes), so huggingface_hub and
``netmount verify`` can check what they get.  ``synthetic/gated-{n}`` is repo ``n`` gated.
A repo's files are a few KB, made when the repo is first asked for; the last few hundred
repos asked for are kept (``lru_cache``), so serving a million ids costs no more memory than
serving a few hundred.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import struct
from collections.abc import Iterator

from .repo import Entry, Repo, Snapshot, git_blob_sha1, is_lfs

ORG = "synthetic"
_ID = re.compile(rf"{ORG}/(repo|gated)-(0|[1-9][0-9]{{0,5}})")
RELEASED = 1767225600.0  # 2026-01-01: every family repo's "lastModified"


def safetensors_bytes(name: str, rows: int, cols: int, seed: int) -> bytes:
    """A valid safetensors file: one F32 tensor of deterministic values, header padded to 8."""
    rng = random.Random(seed)
    data = struct.pack(f"<{rows * cols}f", *(rng.uniform(-1, 1) for _ in range(rows * cols)))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         name: {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, len(data)]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data


@functools.lru_cache(maxsize=1)
def shared_files() -> dict[str, bytes]:
    """The files every repo of the family holds, byte for byte."""
    vocab = {f"tok{i}": i for i in range(200)}
    return {
        "tokenizer.json": (json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab}},
                                      indent=1) + "\n").encode(),
        "embed.safetensors": safetensors_bytes("embed.weight", 64, 8, seed=0),
    }


def own_files(n: int) -> dict[str, bytes]:
    """The files only repo ``n`` holds."""
    config = {"architectures": ["SyntheticModel"], "model_type": "synthetic", "repo": n, "hidden_size": 8}
    return {"config.json": (json.dumps(config, indent=2) + "\n").encode(),
            "model.safetensors": safetensors_bytes("weight", 4, 8, seed=n + 1)}


def parse(repo_id: str) -> tuple[int, bool] | None:
    """``synthetic/repo-12`` -> (12, False); ``synthetic/gated-12`` -> (12, True); else None."""
    m = _ID.fullmatch(repo_id)
    return None if m is None else (int(m.group(2)), m.group(1) == "gated")


class FamilyRepo(Repo):
    def __init__(self, repo_id: str, n: int, gated: bool) -> None:
        self.repo_id, self.n, self._gated = repo_id, n, gated
        self.files = {**own_files(n), **shared_files()}
        entries = []
        for path, content in self.files.items():
            if is_lfs(path, len(content)):
                entries.append(Entry.make(path, len(content), sha256=hashlib.sha256(content).hexdigest()))
            else:
                entries.append(Entry.make(path, len(content), blob_sha1=git_blob_sha1(content)))
        self._snapshot = Snapshot(entries, RELEASED)

    @property
    def gated(self) -> bool:
        return self._gated

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        yield self.files[path][start:end]


@functools.lru_cache(maxsize=256)
def family_repo(repo_id: str) -> FamilyRepo | None:
    """The family's repo ``repo_id``, or None if the id is not one of the family."""
    found = parse(repo_id)
    return None if found is None else FamilyRepo(repo_id, *found)
