"""Names in huggingface_hub's cache layout, and the small files it reads, made from a snapshot.

``models--{org}--{name}`` is ``repo_folder_name`` of huggingface_hub (file_download.py): the
type in the plural, then the repo id with ``/`` as ``--`` (a repo id never holds ``--``:
``validate_repo_id`` refuses it, so the name parses back).  ``refs/{revision}`` holds the
commit sha, 40 characters and no newline (huggingface_hub writes it with ``write_text`` and
reads it back with ``f.read()``, unstripped).  ``trees/{sha}.json`` is huggingface_hub 2.x's
cache of a commit's file listing (``_tree_cache.py``, format 1).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import NamedTuple

COMMIT = re.compile(r"[0-9a-f]{40}")
PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}  # as the folder names spell them


class RepoKey(NamedTuple):
    repo_type: str  # "model", "dataset" or "space"
    repo_id: str  # "org/name" (or a legacy "name", as the Hub still resolves "gpt2")

    @property
    def folder(self) -> str:
        return "--".join([f"{self.repo_type}s", *self.repo_id.split("/")])


def parse_folder(name: str) -> RepoKey | None:
    """``models--org--name`` -> RepoKey; None for anything else (``.locks``, ``blobs``,
    ``CACHEDIR.TAG``, ``kernels--…``, a malformed id): such names are never asked of the Hub."""
    kind, sep, rest = name.partition("--")
    if not sep or kind not in PLURALS:
        return None
    parts = rest.split("--")
    if len(parts) > 2 or not _valid_id("/".join(parts)):
        return None
    return RepoKey(PLURALS[kind], "/".join(parts))


def _valid_id(repo_id: str) -> bool:
    """As huggingface_hub's own ``validate_repo_id`` judges it: the names it would make are
    exactly the names this layout answers."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def is_commit(name: str) -> bool:
    return bool(COMMIT.fullmatch(name))


def ref_content(sha: str) -> bytes:
    """``refs/{revision}`` as huggingface_hub writes it: the sha alone, no newline."""
    return sha.encode()


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob id of an LFS file's pointer (what the Hub lists as its ``oid``/``blob_id``)."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


def tree_json(files) -> bytes:
    """``trees/{sha}.json`` for a snapshot's files (``RemoteFile``: path, size, content_id, lfs).

    What it buys: ``snapshot_download`` online finds the listing here and skips listing the
    repo; offline it checks the snapshot folder against it (``_raise_if_incomplete_snapshot``);
    ``get_cached_repo_tree`` answers.  No ``xet_hash``: with one, huggingface_hub would skip
    its HEAD request and download through Xet, which a read-only cache cannot take."""
    entries = {}
    for f in sorted(files, key=lambda f: f.path):
        if f.lfs:
            entries[f.path] = {"size": f.size, "blob_id": lfs_pointer_oid(f.content_id, f.size),
                               "lfs_sha256": f.content_id, "lfs_size": f.size}
        else:
            entries[f.path] = {"size": f.size, "blob_id": f.content_id}
    return json.dumps({"format_version": 1, "files": entries}, indent=1).encode()
