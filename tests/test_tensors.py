"""Safetensors header parsing against the safetensors library, and `netmount tensors`."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import struct

import pytest

from netmount.core.safetensors import MAX_HEADER, HeaderError, TensorInfo, header_size, parse_header, read_header

from conftest import run_cli, within

# -- parse_header against files the safetensors writer produced ----------------------------


def _torch_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 2, generator=g).to(torch.float16),
        "d.fp8": torch.randn(16, 4, generator=g).to(torch.float8_e4m3fn),
        "e.e5m2": torch.randn(3, generator=g).to(torch.float8_e5m2),
        "f.i64": torch.arange(5),
        "g.bool": torch.tensor([True, False, True]),
        "h.u8": torch.arange(11, dtype=torch.uint8),
        "i.scalar": torch.tensor(3.5),
        "j.empty": torch.zeros(0, 4),
        "k.f64": torch.randn(2, generator=g, dtype=torch.float64),
        "l.i8": torch.arange(-3, 3, dtype=torch.int8),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def test_matches_the_safetensors_library_byte_for_byte(tmp_path):
    import torch
    from safetensors import safe_open

    path, tensors = _torch_file(tmp_path)
    raw = path.read_bytes()
    records = parse_header(raw, len(raw))
    assert {r.name for r in records} == set(tensors)
    with safe_open(str(path), framework="pt") as sf:
        assert set(sf.keys()) == set(tensors)
        for r in records:
            sl = sf.get_slice(r.name)
            assert r.dtype == sl.get_dtype()
            assert list(r.shape) == list(sl.get_shape())
            want = sf.get_tensor(r.name)
            assert r.nbytes == want.numel() * want.element_size()
            assert raw[r.start:r.end] == want.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert records[-1].end == len(raw)  # file order, ending at the end of the file


def test_read_header_reads_only_the_header(tmp_path):
    path, _ = _torch_file(tmp_path)
    raw = path.read_bytes()
    calls = []

    def read(start, end):
        calls.append((start, end))
        return raw[start:end]

    span = header_size(raw)
    assert read_header(read, len(raw), first=16) == parse_header(raw, len(raw))
    assert calls == [(0, 16), (16, span)]  # one speculative read, then the rest of the header
    calls.clear()
    read_header(read, len(raw))
    assert calls == [(0, len(raw))]  # a small file is covered by the first read


def _file(header: dict, data_len: int | None = None, pad: bytes = b"") -> bytes:
    text = json.dumps(header).encode() + pad
    if data_len is None:
        data_len = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                       default=0)
    return struct.pack("<Q", len(text)) + text + b"\0" * data_len


def test_padding_metadata_and_sub_byte_dtypes():
    raw = _file({"__metadata__": {"k": "v"},
                 "w": {"dtype": "F4", "shape": [4, 4], "data_offsets": [0, 8]},
                 "s": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [8, 11]}}, pad=b"   ")
    assert parse_header(raw, len(raw)) == [
        TensorInfo("w", "F4", (4, 4), header_size(raw), header_size(raw) + 8),
        TensorInfo("s", "F6_E2M3", (4,), header_size(raw) + 8, header_size(raw) + 11),
    ]


def test_unknown_dtype_is_accepted_but_must_stay_contiguous():
    raw = _file({"x": {"dtype": "F3_FUTURE", "shape": [5], "data_offsets": [0, 2]}})
    assert parse_header(raw, len(raw))[0].nbytes == 2


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD = {
    "absurd length": struct.pack("<Q", MAX_HEADER + 1) + b"{}",
    "length past file": struct.pack("<Q", 1000) + b"{}",
    "zero length": struct.pack("<Q", 0),
    "too short": b"\x01\x02",
    "not json": struct.pack("<Q", 4) + b"{abc",
    "not utf8": struct.pack("<Q", 4) + b'{"\xff"',
    "not an object": struct.pack("<Q", 2) + b"[]",
    "size mismatch": _file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
    "hole": _file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
    "overlap": _file({"x": T, "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
    "negative shape": _file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8),
    "bool shape": _file({"x": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}),
    "float offsets": _file({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1.0]}}, 1),
    "reversed offsets": _file({"x": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, 1),
    "missing key": _file({"x": {"dtype": "U8", "data_offsets": [0, 1]}}, 1),
    "bad dtype": _file({"x": {"dtype": "f32; rm -rf", "shape": [2], "data_offsets": [0, 8]}}),
    "bad metadata": _file({"__metadata__": {"k": 1}, "x": T}),
    "trailing bytes": _file({"x": T}, 9),
    "misaligned F4": _file({"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}),
}


@pytest.mark.parametrize("why", sorted(BAD))
def test_corrupt_headers_raise_header_error(why):
    raw = BAD[why]
    with pytest.raises(HeaderError):
        parse_header(raw, len(raw))


def test_duplicate_keys_are_rejected():
    text = b'{"x": %s, "x": %s}' % (json.dumps(T).encode(), json.dumps(T).encode())
    raw = struct.pack("<Q", len(text)) + text + b"\0" * 8
    with pytest.raises(HeaderError, match="duplicate"):
        parse_header(raw, len(raw))


def test_truncated_prefix_is_an_error_not_a_guess():
    raw = _file({"x": T})
    with pytest.raises(HeaderError):
        parse_header(raw[:20], len(raw))


# -- `netmount tensors` end to end: a repo over HTTP, a mount, a local folder ----------------

def _library_view(folder):
    """What the safetensors library says about every tensor of every shard in ``folder``."""
    import torch
    from safetensors import safe_open

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        raw = shard.read_bytes()
        with safe_open(str(shard), framework="pt") as sf:
            for name in sf.keys():
                sl = sf.get_slice(name)
                data = sf.get_tensor(name).reshape(-1).view(torch.uint8).numpy().tobytes()
                out[name] = (shard.name, sl.get_dtype(), list(sl.get_shape()), data, raw)
    return out


def _check_against_library(records, folder):
    lib = _library_view(folder)
    assert sorted(r["name"] for r in records) == sorted(lib)
    for r in records:
        file, dtype, shape, data, raw = lib[r["name"]]
        assert (r["file"], r["dtype"], r["shape"]) == (file, dtype, shape), r
        assert r["end"] - r["start"] == r["nbytes"] == len(data)
        assert raw[r["start"]:r["end"]] == data, r["name"]


def _env(hub):
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_tensors_of_a_repo_equal_the_library_and_read_headers_only(hub, hub_root):
    from urllib.parse import quote

    folder = hub_root / "tests" / "tiny-dsv3"
    hub.reset_log()
    done = run_cli("tensors", "tests/tiny-dsv3", "--json", env=_env(hub))
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    _check_against_library(records, folder)
    sha = hub.commit_sha("tests/tiny-dsv3")
    for r in records:
        assert set(r) == {"name", "dtype", "shape", "file", "start", "end", "nbytes", "url"}
        assert r["url"] == f"{hub.url}/tests/tiny-dsv3/resolve/{sha}/{quote(r['file'])}"
    # Range requests only, one per shard: the first min(size, 256 KiB) bytes (these headers
    # are shorter than that), never the tensor data beyond.
    gets = [g for g in hub.requests(server="cdn", method="GET")]
    shards = sorted(folder.glob("*.safetensors"))
    assert len(gets) == len(shards)
    for g in gets:
        assert g.range is not None and g.range.startswith("bytes=0-")
        assert int(g.range.split("-")[1]) + 1 <= 256 << 10
    assert hub.bytes_sent("cdn") <= sum(min(p.stat().st_size, 256 << 10) for p in shards)


def test_tensors_of_a_mount_equal_the_library(mounter, hub_root):
    mp = mounter.mount("tests/tiny-dsv3")
    done = run_cli("tensors", str(mp), "--json")
    assert done.returncode == 0, done.stderr
    _check_against_library(json.loads(done.stdout), hub_root / "tests" / "tiny-dsv3")


def test_tensors_of_a_mount_read_only_header_blocks(bare, hub, hub_root):
    folder = hub_root / "tests" / "tiny-dsv3"
    mp = bare.mount("tests/tiny-dsv3", block_size=64 << 10)  # no daemon prefetch: what we read
    hub.reset_log()
    done = run_cli("tensors", str(mp), "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    records = [{**r, "shape": json.loads(r["shape"]), "start": int(r["start"]), "end": int(r["end"]),
                "nbytes": int(r["nbytes"])} for r in rows]
    _check_against_library(records, folder)
    sha = hub.commit_sha("tests/tiny-dsv3")
    assert all(r["url"].startswith(f"{hub.url}/tests/tiny-dsv3/resolve/{sha}/") for r in records)
    # the mount fetched each shard's header blocks, and no tensor data beyond them
    stats = bare.stats(mp)  # settled: header blocks fetched are also stored (write-behind)
    block = 64 << 10
    for f in stats["files"]:
        if f["path"].endswith(".safetensors"):
            n = int.from_bytes((folder / f["path"]).read_bytes()[:8], "little")
            header_blocks = (8 + n - 1) // block + 1
            assert f["cached_runs"] == [[0, header_blocks - 1]], f
        else:
            assert f["cached_bytes"] == 0 or f["path"].endswith(".index.json"), f
    # the same listing straight from the source folder (a local folder works too)
    local = json.loads(run_cli("tensors", str(folder), "--json").stdout)
    assert [{**r, "url": None} for r in records] == [{**r, "url": None} for r in local]


def test_match_reads_only_the_shards_the_index_names(hub):
    from netmount.dev.testhub import synthetic

    index = json.loads(synthetic.file_bytes("model.safetensors.index.json", 0, dict(
        synthetic.repo_files())["model.safetensors.index.json"]))["weight_map"]
    want = sorted(n for n in index if fnmatch.fnmatchcase(n, "model.layers.10.*"))
    hub.reset_log()
    done = run_cli("tensors", "deepseek-ai/DeepSeek-V3", "--match", "model.layers.10.*", "--json",
                   env=_env(hub))
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert sorted(r["name"] for r in records) == want
    shards = {index[n] for n in want}
    assert {r["file"] for r in records} == shards
    read = {g.path.rsplit("/", 1)[1] for g in hub.requests(method="HEAD")}
    assert read == shards | {"model.safetensors.index.json"}  # of 163 shards, only those


def test_deepseek_v3_sized_listing_reads_headers_only(hub):
    from netmount.commands.tensorlist import list_tensors
    from netmount.core.safetensors import FIRST_READ
    from netmount.dev.testhub import synthetic

    hub.reset_log()
    # 163 headers, all at once (about 2 s on one core); the bound only catches a hang
    records = within(300, lambda: list_tensors("deepseek-ai/DeepSeek-V3", endpoint=hub.url, token=False))
    expected = {(t.name, s.path) for s in synthetic.shards() for t in s.tensors}
    assert len(records) == len(expected) > 90_000
    assert {(r["name"], r["file"]) for r in records} == expected
    shard = synthetic.shards()[41]
    got = [r for r in records if r["file"] == shard.path]
    assert [r["name"] for r in got] == [t.name for t in shard.tensors]
    assert got[-1]["end"] == shard.size
    # headers only: one speculative read per shard, a second only past a long header, and
    # no byte beyond max(that read, the header) of any shard
    shards = synthetic.shards()
    gets = [r for r in hub.requests(method="GET") if r.range]
    assert len(shards) <= len(gets) <= 2 * len(shards)
    assert sum(r.body_bytes for r in gets) <= sum(max(min(s.size, FIRST_READ), len(s.header)) for s in shards)


def test_corrupt_shard_is_skipped_with_a_warning(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(tmp_path / "good.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    done = run_cli("tensors", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in json.loads(done.stdout)] == ["w"]
    assert done.stderr.count("\n") == 1 and "warning: skipping bad.safetensors" in done.stderr


def test_tensors_of_a_missing_path_or_repo_is_one_line(hub, tmp_path):
    for target, why in ((str(tmp_path / "nope"), "no such file"), ("tests/missing", "not found")):
        done = run_cli("tensors", target, env=_env(hub))
        assert done.returncode != 0 and why in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
