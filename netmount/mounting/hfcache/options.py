"""What a ``--hf-cache`` mount is asked for, checked: one-line ``BadInput`` for anything wrong.

Shared by the CLI (``netmount mount --hf-cache MOUNTPOINT [--repo ID[@REV]]... [--refs-ttl
DURATION]``) and the Python API; the daemon gets ``HfCacheOptions``.  ``--repo`` names a repo
as ``netmount mount`` does (``[datasets/|spaces/]org/name[@rev]``): it is listed at the root
from the start and never evicted.  ``--refs-ttl``: how long ``refs/{branch}`` is trusted
before the Hub is asked again (``600``, ``90s``, ``10m``, ``1h``; ``0`` asks at every lookup).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from netmount.core import errors
from netmount.mounting.hfcache.layout import RepoKey

DEFAULT_REFS_TTL = 600.0  # seconds (issue 22: 10 min)
MAX_REFS_TTL = 30 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# options of a plain mount that name one repo or a view of it: meaningless for the whole Hub
PER_REPO = ("REPO", "--revision", "--reshard", "--only", "--experts")


@dataclass(frozen=True)
class HfCacheOptions:
    repos: tuple[tuple[RepoKey, str], ...] = ()  # pinned at mount time: (repo, revision), in order given
    refs_ttl: float = DEFAULT_REFS_TTL


def check_refs_ttl(value: float | int | str) -> float:
    """Seconds in ``value``: a number of seconds, or with a unit (``90s``, ``10m``, ``1h``, ``1d``)."""
    if isinstance(value, bool):
        raise errors.BadInput(f"invalid --refs-ttl {value!r}: a duration such as 600, 90s, 10m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(str(value).strip())
        if m is None:
            raise errors.BadInput(f"invalid --refs-ttl {value!r}: a duration such as 600, 90s, 10m or 1h")
        seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not 0 <= seconds <= MAX_REFS_TTL:
        raise errors.BadInput(f"invalid --refs-ttl {value!r}: from 0 (ask at every lookup) to 30 days")
    return seconds


def check_repos(specs) -> tuple[tuple[RepoKey, str], ...]:
    """``--repo`` values -> (repo, revision) pairs, in order, each once."""
    from netmount.remote.hub import parse_repo_spec

    if isinstance(specs, str):
        specs = [specs]
    out: list[tuple[RepoKey, str]] = []
    for spec in specs:
        try:
            parsed = parse_repo_spec(spec)
        except errors.BadInput as exc:
            raise errors.BadInput(f"--repo: {exc}") from None
        pair = (RepoKey(parsed.repo_type, parsed.repo_id), parsed.revision)
        if pair not in out:
            out.append(pair)
    return tuple(out)


def check_hf_cache(*, repos=(), refs_ttl: float | int | str | None = None,
                   given: dict[str, object] | None = None) -> HfCacheOptions:
    """The options of an ``--hf-cache`` mount.  ``given``: the per-repo options of a plain mount
    (``PER_REPO`` names -> their values); any that is set is an error, as it names one repo."""
    for name, value in (given or {}).items():
        if value not in (None, False, "", [], ()):
            hint = " (name repos with --repo ID[@REV])" if name in ("REPO", "--revision") else ""
            raise errors.BadInput(f"--hf-cache shows every repo of the Hub: {name} does not go with it{hint}")
    ttl = DEFAULT_REFS_TTL if refs_ttl is None else check_refs_ttl(refs_ttl)
    return HfCacheOptions(check_repos(repos or ()), ttl)


def check_plain(*, repo: str | None, repos=(), refs_ttl=None) -> None:
    """A plain mount: it names its repo, and takes no option of ``--hf-cache``."""
    if repos:
        raise errors.BadInput("--repo is an option of --hf-cache (a plain mount names its repo: REPO MOUNTPOINT)")
    if refs_ttl is not None:
        raise errors.BadInput("--refs-ttl is an option of --hf-cache")
    if not repo:
        raise errors.BadInput("give REPO and MOUNTPOINT, or --hf-cache MOUNTPOINT for every repo of the Hub "
                              "(see netmount mount --help)")


def daemon_spec(options: HfCacheOptions, endpoint: str, pinned) -> dict:
    """What the daemon is told (JSON): the endpoint, ``refs_ttl``, and each ``--repo`` as the
    parent resolved it (``pinned``: (revision, Snapshot) pairs, in order)."""
    return {"endpoint": endpoint, "refs_ttl": options.refs_ttl,
            "pinned": [{"revision": rev, "snapshot": json.loads(snap.to_json())} for rev, snap in pinned]}


def pinned_snapshots(spec: dict) -> list[tuple[RepoKey, str, object]]:
    """``daemon_spec``'s pinned repos back: (repo, revision, Snapshot)."""
    from netmount.remote.hub import Snapshot

    out = []
    for pin in spec.get("pinned", ()):
        snap = Snapshot.from_json(json.dumps(pin["snapshot"]))
        out.append((RepoKey(snap.repo_type, snap.repo_id), pin["revision"], snap))
    return out
