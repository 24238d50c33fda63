"""`netmount prefetch`: exactly the selected blocks cross the network, cached ones never again."""

from __future__ import annotations

import fnmatch
import hashlib
import json

import pytest

from netmount.core.safetensors import header_size, parse_header

from conftest import run_cli, settle, sha256_file
from conftest import stats as settled_stats


def blocks_of(start, end, bs):
    return set(range(start // bs, (end - 1) // bs + 1)) if end > start else set()


def fetched_blocks(hub, folder, bs):
    """File -> set of blocks the CDN sent, and bytes sent.  A block may come in pieces (a
    miss a reader waits for goes out in parallel parts) but no byte comes twice."""
    by_sha = {sha256_file(p): p.name for p in folder.iterdir() if p.is_file()}
    spans: dict[str, list[tuple[int, int]]] = {}
    total = 0
    for r in hub.requests(server="cdn", method="GET"):
        name = by_sha[r.path.rsplit("/", 1)[1]]
        a, b = (int(x) for x in r.range.removeprefix("bytes=").split("-"))
        assert r.body_bytes == b + 1 - a
        total += r.body_bytes
        spans.setdefault(name, []).append((a, b + 1))
    out: dict[str, set[int]] = {}
    for name, ranges in spans.items():
        ranges.sort()
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            assert end <= start, f"{name}: a byte was fetched twice"
        out[name] = set().union(*(blocks_of(a, b, bs) for a, b in ranges))
    return out, total


def expected_blocks(folder, patterns, bs):
    """Header blocks of the shards the index puts matching tensors in, plus those tensors' blocks."""
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]

    def hit(name):
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    out: dict[str, set[int]] = {}
    for shard in sorted({f for n, f in weight_map.items() if hit(n)}):
        raw = (folder / shard).read_bytes()
        want = blocks_of(0, header_size(raw), bs)
        for t in parse_header(raw, len(raw)):
            if hit(t.name):
                want |= blocks_of(t.start, t.end, bs)
        out[shard] = want
    return out


@pytest.mark.parametrize("daemon_prefetch", [False, True])
def test_glob_fetches_exactly_those_tensors_blocks_plus_headers(bare, mounter, hub, hub_root,
                                                                daemon_prefetch):
    folder = hub_root / "tests" / "tiny-dsv3"
    bs = 64 << 10
    if daemon_prefetch:  # a normal mount: its prefetcher must stay out of the selection
        mp = mounter.mount("tests/tiny-dsv3", "--block-size", "64K", name="mnt-prefetching")
    else:
        mp = bare.mount("tests/tiny-dsv3", block_size=bs)
    hub.reset_log()
    # tensors with unselected blocks between and after them, in several shards
    patterns = ["model.layers.4.embed_tokens.*", "*.experts.5.*", "model.layers.1.*"]
    done = run_cli("prefetch", str(mp), *(a for p in patterns for a in ("--match", p)))
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and "B/s" in done.stderr  # tqdm: bytes, rate
    want = expected_blocks(folder, patterns, bs)
    last = "model-00011-of-00011.safetensors"
    assert want[last] == {0, 1, 2, 3, 6, 7}  # header, embed_tokens, experts.5: gaps between
    assert len(want) >= 4
    settle(mp)
    got, sent = fetched_blocks(hub, folder, bs)
    assert got == want
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert sent == sum(min((i + 1) * bs, sizes[f]) - i * bs for f, bl in want.items() for i in bl)
    stats = settled_stats(mp)
    cached = {f["path"]: {i for a, b in f["cached_runs"] for i in range(a, b + 1)} for f in stats["files"]}
    for shard, blocks in want.items():
        assert cached[shard] == blocks
    assert "tensors" in done.stdout and "read now" in done.stdout


def test_cached_blocks_are_skipped_so_it_resumes(bare, hub, hub_root):
    folder = hub_root / "tests" / "big"
    src = folder / "model.safetensors"
    mp = bare.mount("tests/big")
    raw = src.read_bytes()
    tensors = {t.name: t for t in parse_header(raw[:1 << 20], len(raw))}
    first = run_cli("prefetch", str(mp), "--match", "layer.5.weight", "--quiet")
    assert first.returncode == 0, first.stderr
    hub.reset_log()
    again = run_cli("prefetch", str(mp), "--match", "layer.[45].weight", "--quiet")
    assert again.returncode == 0, again.stderr
    bs = 1 << 20
    t4, t5 = tensors["layer.4.weight"], tensors["layer.5.weight"]
    settle(mp)
    got, _ = fetched_blocks(hub, folder, bs)
    assert got == {"model.safetensors": blocks_of(t4.start, t4.end, bs) - blocks_of(t5.start, t5.end, bs)}
    hub.reset_log()
    third = run_cli("prefetch", str(mp), "--match", "layer.[45].weight", "--quiet")
    assert third.returncode == 0 and "0 B read now" in third.stdout
    settle(mp)
    assert hub.requests(server="cdn") == []


def test_whole_files_by_path_glob(bare, hub, hub_root):
    folder = hub_root / "tests" / "plain"
    mp = bare.mount("tests/plain")
    done = run_cli("prefetch", str(mp), "--match", "data.bin", "--match", "sub/*", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = settled_stats(mp)
    cached = {f["path"]: f["cached_bytes"] for f in stats["files"]}
    assert cached["data.bin"] == (folder / "data.bin").stat().st_size
    assert cached["sub/deeper/note.txt"] == 5
    assert cached["README.md"] == 0 and cached["config.json"] == 0
    assert hashlib.sha256((mp / "data.bin").read_bytes()).hexdigest() == sha256_file(folder / "data.bin")


def test_with_the_daemons_prefetch_on_everything_selected_is_cached(mounter, hub, hub_root):
    folder = hub_root / "tests" / "tiny-dsv3"
    mp = mounter.mount("tests/tiny-dsv3", "--block-size", "64K")
    done = run_cli("prefetch", str(mp), "--match", "model.layers.2.*", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = settled_stats(mp)
    cached = {f["path"]: {i for a, b in f["cached_runs"] for i in range(a, b + 1)} for f in stats["files"]}
    for shard, blocks in expected_blocks(folder, ["model.layers.2.*"], 64 << 10).items():
        assert blocks <= cached[shard], shard
    assert "still missing" not in done.stdout
    everything = run_cli("prefetch", str(mp), "--quiet")  # no glob: the whole repo
    assert everything.returncode == 0, everything.stderr
    stats = settled_stats(mp)
    assert stats["cached_bytes"] == stats["total_bytes"]


def test_nothing_matched_and_not_a_mount_fail_in_one_line(bare, tmp_path):
    mp = bare.mount("tests/plain")
    done = run_cli("prefetch", str(mp), "--match", "no.such.*", "--quiet")
    assert done.returncode == 1
    assert "--match 'no.such.*' matched no file and no tensor" in done.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    done = run_cli("prefetch", str(plain))
    assert done.returncode != 0
    assert done.stderr.strip() == f"netmount: error: {plain} is not a netmount mount"
