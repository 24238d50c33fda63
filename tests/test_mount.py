"""End to end: real HTTP server on 127.0.0.1, real kernel FUSE mount, real readers."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from conftest import run_cli, settle, sha256_file


def source_files(repo_dir):
    for p in sorted(repo_dir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            yield p.relative_to(repo_dir).as_posix(), p


def test_every_file_has_exact_size_and_sha256(mounter, hub_root):
    src = hub_root / "tests" / "plain"
    mp = mounter.mount("tests/plain")
    for rel, path in source_files(src):
        assert os.path.getsize(mp / rel) == path.stat().st_size, rel
        assert sha256_file(mp / rel) == sha256_file(path), rel
    assert sorted(os.listdir(mp)) == sorted(p.name for p in src.iterdir())
    assert ".netmount" not in os.listdir(mp)


def test_read_only_and_stat_blocks_show_cached_bytes(mounter, hub_root):
    mp = mounter.mount("tests/plain")
    data = mp / "data.bin"
    assert os.stat(data).st_blocks == 0
    with pytest.raises(OSError) as exc:
        open(data, "r+b")
    assert exc.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mp / "new.txt").write_text("x")
    with open(data, "rb") as fh:
        fh.seek(5 << 20)  # the last, short block: kernel readahead cannot reach further
        fh.read(10)
    # the daemon stores a block just after handing it to the read: wait until it has nothing
    # in flight.  Then stat the same file through raw/: the kernel keeps the attributes of
    # data.bin (stat'ed above) for attr_timeout, but has never looked this inode up, so its
    # st_blocks comes fresh from the daemon's getattr (the same code), with no sleep
    settle(mp)
    cached = os.stat(mp / ".netmount" / "raw" / "data.bin").st_blocks * 512
    assert cached == (12345 + 511) // 512 * 512, cached  # exactly the block that holds the bytes


def test_mmap_random_ranges(mounter, hub_root):
    import random

    src = (hub_root / "tests" / "plain" / "data.bin").read_bytes()
    mp = mounter.mount("tests/plain")
    with open(mp / "data.bin", "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        rnd = random.Random(0)
        for _ in range(200):
            a = rnd.randrange(len(src))
            b = min(len(src), a + rnd.randrange(1, 300_000))
            assert mm[a:b] == src[a:b]


def test_stats_file_is_hidden_but_readable(mounter):
    mp = mounter.mount("tests/plain")
    (mp / "config.json").read_bytes()
    stats = mounter.stats(mp)
    assert stats["repo"] == "tests/plain"
    assert stats["bytes_fetched"] >= len((mp / "config.json").read_bytes())
    assert {f["path"] for f in stats["files"]} >= {"config.json", "sub/deeper/note.txt"}


def test_safe_open_one_tensor_fetches_only_its_blocks_and_header(mounter, hub, hub_root):
    from safetensors import safe_open

    src = hub_root / "tests" / "big" / "model.safetensors"
    mp = mounter.mount("tests/big")
    hub.reset_log()
    name = "layer.5.weight"
    with safe_open(str(mp / "model.safetensors"), framework="pt") as sf:
        got = sf.get_tensor(name)
    with safe_open(str(src), framework="pt") as sf:
        want = sf.get_tensor(name)
    assert (got == want).all()
    header_len = int.from_bytes(src.read_bytes()[:8], "little")
    import json

    header = json.loads(src.read_bytes()[8 : 8 + header_len])
    begin, finish = header[name]["data_offsets"]
    begin += 8 + header_len
    finish += 8 + header_len
    block = 1 << 20
    allowed = set(range(0, (8 + header_len - 1) // block + 1))  # the header's blocks
    # the tensor's blocks, and one on each side: the kernel's mmap read-around spills up to
    # 256 KiB past the pages a program touches
    allowed |= set(range(begin // block - 1, (finish - 1) // block + 2))
    settle(mp)  # the kernel's read-around of the last pages may still be coming in
    fetched = hub.bytes_sent(server="cdn")
    assert fetched <= len(allowed) * block, (fetched, len(allowed) * block, finish - begin)
    assert fetched >= finish - begin
    # in fact a lone tensor comes exactly (netmount/extents.py): the header's 128 KiB, the
    # tensor, and the kernel's reads around its ends (128 KiB before, up to 512 KiB after)
    assert fetched <= (128 << 10) + (finish - begin) + (128 << 10) + (512 << 10), (fetched, finish - begin)


def test_remount_serves_everything_from_cache(mounter, hub, hub_root):
    src = hub_root / "tests" / "plain"
    mp = mounter.mount("tests/plain")
    for rel, _ in source_files(src):
        (mp / rel).read_bytes()
    mounter.unmount(mp)
    hub.reset_log()
    mp = mounter.mount("tests/plain", name="mnt2")
    for rel, path in source_files(src):
        assert sha256_file(mp / rel) == sha256_file(path)
    settle(mp)
    data_requests = [r for r in hub.log if "/resolve/" in r.path or r.server == "cdn"]
    assert data_requests == []


def test_mount_pinned_to_a_commit(mounter, hub, hub_root):
    """A commit sha as revision: its listing is asked for alongside its info (hub.py), and
    the mount is of that commit."""
    src = hub_root / "tests" / "plain"
    sha = hub.commit_sha("tests/plain")
    hub.reset_log()
    mp = mounter.mount(f"tests/plain@{sha}")
    assert sorted(os.listdir(mp)) == sorted(p.name for p in src.iterdir())
    for rel, path in source_files(src):
        assert sha256_file(mp / rel) == sha256_file(path), rel
    assert mounter.stats(mp)["revision"] == sha
    api = [r.path for r in hub.log if r.path.startswith("/api/models/")]
    assert api.count(f"/api/models/tests/plain/revision/{sha}") == 1, api
    assert {p for p in api if "/tree/" in p} == {f"/api/models/tests/plain/tree/{sha}"}, api


def test_tiny_deepseek_v3_loads_with_stock_transformers(mounter, hub, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    mp = mounter.mount("tests/tiny-dsv3")
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    ref = AutoModelForCausalLM.from_pretrained(tiny_model)
    got = AutoModelForCausalLM.from_pretrained(mp)
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, got(ids).logits)


def test_synthetic_deepseek_v3_scale(mounter, hub):
    from netmount.dev.testhub import synthetic

    mp = mounter.mount("deepseek-ai/DeepSeek-V3")
    shards = sorted(p for p in os.listdir(mp) if p.endswith(".safetensors"))
    assert len(shards) == 163
    expected = dict(synthetic.repo_files())
    for name in shards:
        assert os.path.getsize(mp / name) == expected[name]
    import json

    index = json.loads((mp / "model.safetensors.index.json").read_text())
    name = "model.layers.10.mlp.experts.17.down_proj.weight"
    shard = index["weight_map"][name]
    with open(mp / shard, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        begin, end = header[name]["data_offsets"]
        fh.seek(8 + n + begin)
        data = fh.read(end - begin)
    assert len(data) == end - begin == 2048 * 7168  # fp8: one byte per weight
    assert data == synthetic.file_bytes(shard, 8 + n + begin, 8 + n + end)
    stats = mounter.stats(mp)
    assert stats["bytes_fetched"] < 64 << 20  # a header and one expert, not the repo


@pytest.mark.parametrize("args, message", [
    (["tests/missing"], "not found"),
    (["tests/plain@nope"], "revision"),
    (["tests/plain@" + "0" * 40], "revision"),  # a commit sha: listed while its info is asked
    (["not a repo!"], "invalid repo id"),
    (["tests/gated"], "gated"),
    (["tests/plain", "--block-size", "3K"], "block-size"),
    (["tests/plain", "--cache-size", "lots"], "cache-size"),
])
def test_bad_input_is_one_line_and_leaves_nothing_mounted(tmp_path, hub, args, message):
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {"HF_ENDPOINT": hub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "c"), "HF_TOKEN": ""}
    done = run_cli("mount", args[0], str(mp), *args[1:], env=env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0].lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.ismount(mp)


def test_mountpoint_errors(tmp_path, hub, mounter):
    env = {"HF_ENDPOINT": hub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "c")}
    done = run_cli("mount", "tests/plain", str(tmp_path / "absent"), env=env)
    assert done.returncode != 0 and "does not exist" in done.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    done = run_cli("mount", "tests/plain", str(full), env=env)
    assert done.returncode != 0 and "not empty" in done.stderr
    mp = mounter.mount("tests/plain")
    done = run_cli("mount", "tests/plain", str(mp), env=env)
    assert done.returncode != 0 and "already mounted" in done.stderr


def test_gated_repo_with_token(mounter):
    mp = mounter.mount("tests/gated", env={"HF_TOKEN": "good-token"})
    assert (mp / "config.json").read_text() == "{}"


def test_unmount_of_a_plain_folder_fails_cleanly(tmp_path):
    done = run_cli("unmount", str(tmp_path))
    assert done.returncode != 0
    assert "not a netmount mount" in done.stderr and "Traceback" not in done.stderr


def test_raw_mirror_serves_the_same_bytes_and_no_control_files(mounter, hub_root):
    src = hub_root / "tests" / "plain"
    mp = mounter.mount("tests/plain")
    raw = mp / ".netmount" / "raw"
    assert sorted(os.listdir(raw)) == sorted(os.listdir(mp))
    for rel, path in source_files(src):
        assert sha256_file(raw / rel) == sha256_file(path), rel
    assert not (raw / ".netmount").exists()
    assert not (raw / ".netmount" / "stats.json").exists()
