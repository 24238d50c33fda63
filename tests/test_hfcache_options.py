"""`netmount mount --hf-cache MOUNTPOINT [--repo ID[@REV]]... [--refs-ttl DURATION]` parsed and
checked (issue 22): the checks alone (tests/test_hfcache_mount.py mounts)."""

from __future__ import annotations

import pytest

from netmount.commands import cli
from netmount.core import errors
from netmount.mounting.hfcache import RepoKey
from netmount.mounting.hfcache.options import DEFAULT_REFS_TTL, check_hf_cache, check_refs_ttl, check_repos


def parse(*argv: str):
    args = cli.build_parser(()).parse_args(["mount", *argv])
    return args, cli.hf_cache_request(args)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_users_get_the_flags():
    help_text = _mount_help(cli.build_parser(()))
    assert "--hf-cache" in help_text and "--repo ID[@REV]" in help_text and "--refs-ttl" in help_text


def _mount_help(parser) -> str:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices["mount"].format_help()


def test_hf_cache_takes_the_mountpoint_alone():
    args, options = parse("--hf-cache", "/mnt/hf")
    assert args.mountpoint == "/mnt/hf" and args.repo is None
    assert options.repos == () and options.refs_ttl == DEFAULT_REFS_TTL == 600


def test_repos_are_pinned_in_order_once_with_their_revisions():
    _, options = parse("--hf-cache", "/mnt/hf", "--repo", "deepseek-ai/DeepSeek-V3", "--repo", "datasets/org/data@v2",
                       "--repo", "org/m@refs/pr/1", "--repo", "deepseek-ai/DeepSeek-V3", "--refs-ttl", "90s")
    assert options.repos == ((RepoKey("model", "deepseek-ai/DeepSeek-V3"), "main"),
                             (RepoKey("dataset", "org/data"), "v2"), (RepoKey("model", "org/m"), "refs/pr/1"))
    assert options.refs_ttl == 90


def test_a_plain_mount_parses_as_before():
    args, options = parse("org/name", "/mnt/x", "--revision", "v1")
    assert options is None and (args.repo, args.mountpoint, args.revision) == ("org/name", "/mnt/x", "v1")


@pytest.mark.parametrize("argv, words", [
    (["--hf-cache", "org/name", "/mnt/hf"], ["REPO", "--repo ID[@REV]"]),
    (["--hf-cache", "/mnt/hf", "--revision", "v1"], ["--revision"]),
    (["--hf-cache", "/mnt/hf", "--reshard", "layer"], ["--reshard"]),
    (["--hf-cache", "/mnt/hf", "--only", "model.layers.0.*"], ["--only"]),
    (["--hf-cache", "/mnt/hf", "--experts", "0-3"], ["--experts"]),
    (["--hf-cache", "/mnt/hf", "--repo", "onlyname/"], ["--repo", "invalid repo id"]),
    (["--hf-cache", "/mnt/hf", "--repo", "org/name@"], ["--repo", "nothing after '@'"]),
    (["--hf-cache", "/mnt/hf", "--refs-ttl", "soon"], ["--refs-ttl", "10m"]),
    (["--hf-cache", "/mnt/hf", "--refs-ttl", "-5"], ["--refs-ttl"]),
    (["--hf-cache", "/mnt/hf", "--refs-ttl", "31d"], ["--refs-ttl", "30 days"]),
    (["/mnt/x"], ["give REPO and MOUNTPOINT", "--hf-cache"]),
    (["org/name", "/mnt/x", "--repo", "org/other"], ["--repo is an option of --hf-cache"]),
    (["org/name", "/mnt/x", "--refs-ttl", "1m"], ["--refs-ttl is an option of --hf-cache"]),
])
def test_bad_combinations_are_one_line_errors(argv, words):
    with pytest.raises(errors.BadInput) as caught:
        parse(*argv)
    text = one_line(caught)
    for word in words:
        assert word in text, (word, text)


@pytest.mark.parametrize("value, seconds", [
    ("600", 600), ("90s", 90), ("10m", 600), ("1h", 3600), ("2H", 7200), ("1d", 86400), ("0", 0), ("1.5m", 90),
    (" 5 m ", 300), (600, 600), (0.5, 0.5),
])
def test_refs_ttl_durations(value, seconds):
    assert check_refs_ttl(value) == seconds


@pytest.mark.parametrize("value", ["", "m", "10 minutes", "1e3", "-1", "1w", True, -3, 31 * 86400])
def test_refs_ttl_rejects(value):
    with pytest.raises(errors.BadInput) as caught:
        check_refs_ttl(value)
    assert "--refs-ttl" in one_line(caught)


def test_the_api_checks_the_same_way():
    options = check_hf_cache(repos=["org/a", "spaces/org/b@main"], refs_ttl="5m")
    assert options.repos == ((RepoKey("model", "org/a"), "main"), (RepoKey("space", "org/b"), "main"))
    assert options.refs_ttl == 300
    assert check_repos("org/a") == ((RepoKey("model", "org/a"), "main"),)
    with pytest.raises(errors.BadInput):
        check_hf_cache(repos=["a/b/c/d"])
