"""Repo metadata, once per mount: pin the revision to a commit sha and list every file.

huggingface_hub does the talking (pagination, headers, token handling, typed errors) —
it is the reference client and we would only re-implement it worse.  This module turns
its answers into a ``Snapshot`` and its exceptions into netmount's one-line errors.
Nothing here is proportional to repo *bytes*: a 688 GB repo is a few hundred entries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import NamedTuple

from netmount.core import errors

REPO_TYPES = ("model", "dataset", "space")
_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}  # as the Hub's URLs spell them


def url_path(repo_id: str, repo_type: str = "model") -> str:
    """The repo as the Hub's URLs name it: ``org/name``, ``datasets/org/name``, ``spaces/org/name``."""
    return repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"


@dataclass(frozen=True)
class RepoRef:
    """A repo at one commit: where a file's bytes are (``/{url_path}/resolve/{sha}/{path}``).
    One fetcher serves files of any number of repos on its endpoint (``--hf-cache``)."""

    repo_id: str
    repo_type: str = "model"
    sha: str = ""

    @property
    def url_path(self) -> str:
        return url_path(self.repo_id, self.repo_type)


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    content_id: str  # LFS sha256, else the git blob oid: the cache key, shared across revisions
    lfs: bool = False
    repo: RepoRef | None = None  # the repo and commit it is in (a Snapshot's files: the snapshot's)


@dataclass
class Snapshot:
    """A repo pinned to a commit, and its files; each file names this repo and commit
    (``RemoteFile.repo``, one shared ``RepoRef``: set here for files that name none)."""

    repo_id: str
    revision: str  # as asked ("main", a tag, a sha)
    sha: str  # the pinned commit every URL uses
    endpoint: str
    files: list[RemoteFile]
    repo_type: str = "model"  # "model", "dataset" or "space", as huggingface_hub spells it

    def __post_init__(self) -> None:
        ref = self.ref
        self.files = [f if f.repo is not None else dataclasses.replace(f, repo=ref) for f in self.files]

    @property
    def ref(self) -> RepoRef:
        return RepoRef(self.repo_id, self.repo_type, self.sha)

    @property
    def name(self) -> str:
        """How users name the repo (``datasets/org/name``; a model is just ``org/name``)."""
        return url_path(self.repo_id, self.repo_type)

    def to_json(self) -> str:
        """Compact: a file of this snapshot's repo and commit does not repeat them."""
        data = {k: getattr(self, k) for k in ("repo_id", "revision", "sha", "endpoint", "repo_type")}
        ref = self.ref
        data["files"] = [_file_json(f, ref) for f in self.files]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "Snapshot":
        data = json.loads(text)
        data["files"] = [RemoteFile(**{**f, "repo": RepoRef(**f["repo"])} if "repo" in f else f)
                         for f in data["files"]]
        return cls(**data)


def _file_json(f: RemoteFile, ref: RepoRef) -> dict:
    out = {"path": f.path, "size": f.size, "content_id": f.content_id, "lfs": f.lfs}
    if f.repo is not None and f.repo != ref:
        out["repo"] = dataclasses.asdict(f.repo)
    return out


class RepoSpec(NamedTuple):
    repo_id: str  # org/name, without the type prefix
    revision: str
    repo_type: str  # "model", "dataset" or "space"


def parse_repo_spec(spec: str, revision: str | None = None, repo_type: str | None = None) -> RepoSpec:
    """``[models/|datasets/|spaces/]org/name[@rev]`` (+ an explicit ``--revision`` and
    ``repo_type``, as huggingface_hub spells it) -> RepoSpec.  A prefix and a different
    ``repo_type`` together are an error, as is anything but exactly ``org/name`` after the
    prefix (``datasets/onlyorg``, ``models/a/b/c``, ``foo/a/b``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_type is not None and repo_type not in REPO_TYPES:
        raise errors.BadInput(f"invalid repo type {repo_type!r}: one of {', '.join(REPO_TYPES)}")
    name, at, rev = spec.partition("@")
    if at and not rev:
        raise errors.BadInput(f"invalid repo id {spec!r}: nothing after '@'")
    if rev and revision and rev != revision:
        raise errors.BadInput(f"revision given twice: {spec!r} and --revision {revision!r}")
    parts = name.split("/")
    kind = repo_type or "model"
    if len(parts) == 3:
        if parts[0] not in _PREFIXES:
            raise errors.BadInput(f"invalid repo id {name!r}: unknown repo type {parts[0]!r} "
                                  f"(expected models/, datasets/ or spaces/ before 'org/name')")
        kind = _PREFIXES[parts[0]]
        if repo_type is not None and repo_type != kind:
            raise errors.BadInput(f"repo type given twice: {name!r} and repo_type={repo_type!r}")
        parts = parts[1:]
    elif len(parts) == 2 and parts[0] in _PREFIXES:
        raise errors.BadInput(f"invalid repo id {name!r}: expected '{parts[0]}/org/name'")
    repo_id = "/".join(parts)
    try:
        if len(parts) != 2:
            raise HFValidationError(repo_id)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise errors.BadInput(
            f"invalid repo id {name!r}: expected '[datasets/|spaces/]org/name' (letters, digits, '-', '_', '.')"
        ) from None
    return RepoSpec(repo_id, revision or rev or "main", kind)


def check_path(path: str) -> str:
    """Reject listing entries that could escape or confuse the mount: ../x, /abs, a//b."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in parts)
        or parts[0] == ".netmount"
    ):
        raise errors.UnsafeListing(f"the server listed an unsafe path {path!r}; refusing to mount")
    return path


def check_tree(files: list[RemoteFile]) -> None:
    """A listing must describe a tree: no path twice, no file that is also a folder."""
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise errors.UnsafeListing(f"the server listed {f.path!r} twice; refusing to mount")
        seen.add(f.path)
    for f in files:
        parts = f.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen:
                raise errors.UnsafeListing(
                    f"the server listed {parent!r} as a file and as a folder; refusing to mount")
    for f in files:
        if f.size < 0 or not f.content_id or ":" in f.content_id or "/" in f.content_id:
            raise errors.UnsafeListing(f"the server listed {f.path!r} with a bad size or id; refusing to mount")


def metadata_timeout() -> float:
    """Seconds to wait for the Hub API (connect and each answer): a black-holed endpoint
    fails the mount in this time instead of hanging (huggingface_hub waits forever by
    default).  ``NETMOUNT_METADATA_TIMEOUT`` changes it."""
    try:
        value = float(os.environ.get("NETMOUNT_METADATA_TIMEOUT", "") or 20.0)
    except ValueError:
        value = 20.0
    return value if value > 0 else 20.0


def listing_timeout() -> float:
    """Seconds the whole file listing may take (all its pages and huggingface_hub's own
    retries).  ``NETMOUNT_LISTING_TIMEOUT`` changes it; 60 s lists a repo of thousands
    of files over a slow link."""
    try:
        value = float(os.environ.get("NETMOUNT_LISTING_TIMEOUT", "") or 60.0)
    except ValueError:
        value = 60.0
    return value if value > 0 else 60.0


class _Background:
    """``call()`` on a daemon thread, its result (or exception) waited for with a deadline.
    Why a thread: ``list_repo_tree`` takes no timeout (huggingface_hub 2.x lists through
    its shared httpx client, whose timeout is None) and retries a timed-out request five
    times, so nothing but a deadline of our own bounds it.  On time-out the thread is left
    behind, blocked on its socket; it holds no lock of ours."""

    def __init__(self, call) -> None:
        self._box: dict = {}
        self._done = threading.Event()

        def work() -> None:
            try:
                self._box["value"] = call()
            except BaseException as exc:  # handed to the waiting thread
                self._box["error"] = exc
            finally:
                self._done.set()

        threading.Thread(target=work, name="netmount-listing", daemon=True).start()

    def result(self, seconds: float, message: str):
        """The call's value, or its exception re-raised here; ``EndpointUnreachable(message)``
        (``{}`` in it becomes ``seconds``) if it has not finished in ``seconds``."""
        if not self._done.wait(seconds):
            raise errors.EndpointUnreachable(message.format(seconds))
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]


_COMMIT = re.compile(r"[0-9a-f]{40}")


def resolve_snapshot(repo_id: str, revision: str, endpoint: str, token: str | None,
                     repo_type: str = "model") -> Snapshot:
    """Resolve ``revision`` to a commit sha and list all files at that sha.

    Two Hub round trips, one after the other: the listing must be of the commit that
    ``revision`` names now.  A revision that is a commit sha already is listed while its
    info is asked for (one round trip less)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token if token else False)
    timeout = metadata_timeout()
    with _mapped_errors(url_path(repo_id, repo_type), revision, endpoint, token):

        def list_files(sha: str) -> list[RemoteFile]:
            files = []
            for entry in api.list_repo_tree(repo_id, recursive=True, revision=sha, repo_type=repo_type):
                if not isinstance(entry, RepoFile):
                    continue
                lfs = entry.lfs
                content_id = lfs.sha256 if lfs else entry.blob_id
                files.append(RemoteFile(check_path(entry.path), int(entry.size), str(content_id or ""), bool(lfs)))
            return files

        early = _Background(lambda: list_files(revision)) if _COMMIT.fullmatch(revision) else None
        # the info request bounds a dead endpoint; the listing has its own bound (below)
        info = api.repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=timeout)
        sha = info.sha
        listing = early if early is not None and sha == revision else _Background(lambda: list_files(sha))
        tree_url = f"{endpoint}/api/{repo_type}s/{repo_id}/tree/{sha}"
        files = listing.result(listing_timeout(),
                               f"{tree_url}: the file listing did not finish in {{:g}} s "
                               f"(a stalled server? NETMOUNT_LISTING_TIMEOUT sets the limit)")
        check_tree(files)
        if getattr(info, "gated", False) and files:
            _probe_access(api, repo_id, repo_type, sha, min(files, key=lambda f: f.size).path, endpoint, timeout)
    if not sha:
        raise errors.RepoNotFound(f"{endpoint} gave no commit for {url_path(repo_id, repo_type)}@{revision}")
    files.sort(key=lambda f: f.path)
    return Snapshot(repo_id, revision, sha, endpoint, files, repo_type)


def _probe_access(api, repo_id: str, repo_type: str, sha: str, path: str, endpoint: str, timeout: float) -> None:
    """Gated repos list their files to anyone; find out now, not at the first read, if
    this token may download them (raises GatedRepoError through huggingface_hub)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, path, revision=sha, endpoint=endpoint, repo_type=repo_type)
    get_hf_file_metadata(url, token=api.token, timeout=timeout)


class _mapped_errors:
    """Turn huggingface_hub / network exceptions into netmount's typed one-line errors."""

    def __init__(self, repo_id, revision, endpoint, token):
        self.where = f"{repo_id}@{revision}" if revision != "main" else repo_id
        self.repo_id, self.revision, self.endpoint, self.token = repo_id, revision, endpoint, token

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, errors.NetmountError):
            return False
        from huggingface_hub import errors as hf

        if isinstance(exc, hf.GatedRepoError):
            hint = (
                "this token has no access to it: request access on the repo page, or check HF_TOKEN"
                if self.token
                else "give a token that has access: set HF_TOKEN, run `hf auth login`, or pass --token"
            )
            raise errors.GatedRepo(f"{self.repo_id} is gated: {hint}") from None
        if isinstance(exc, hf.RevisionNotFoundError):
            raise errors.RevisionNotFound(
                f"revision {self.revision!r} not found in {self.repo_id}"
            ) from None
        if isinstance(exc, hf.RepositoryNotFoundError):
            more = "" if self.token else " (if it is private, set HF_TOKEN)"
            raise errors.RepoNotFound(
                f"repository {self.repo_id} not found at {self.endpoint}{more}"
            ) from None
        if isinstance(exc, hf.HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise errors.AuthFailed(
                    f"{self.endpoint} rejected the token (HTTP {status}): check HF_TOKEN"
                ) from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise errors.EndpointUnreachable(f"{self.endpoint}: {first}") from None
        if isinstance(exc, hf.OfflineModeIsEnabled):
            raise errors.EndpointUnreachable(
                "HF_HUB_OFFLINE is set: netmount must ask the Hub (set offline mode for the programs "
                "that read the mount, not for netmount)") from None
        if isinstance(exc, (OSError, ConnectionError, TimeoutError)) or _is_http_transport(exc):
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise errors.EndpointUnreachable(
                f"cannot reach {self.endpoint}: {type(exc).__name__}: {first}".rstrip(": ")) from None
        return False


def _is_http_transport(exc: BaseException) -> bool:
    """httpx-style transport errors, without importing a particular httpx flavour."""
    return any(c.__name__ in ("TransportError", "HTTPError", "RequestError") for c in type(exc).__mro__)
