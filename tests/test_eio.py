"""The EIO near the end of a file (issue 10), through a real mount.

A read whose blocks are a full block and the short last block of a file went out as one
demand run; the fetcher split it into parallel sub-requests, joined them and handed the
whole run to the reader as one piece, which accepts only block-sized pieces: both blocks
failed and the read got EIO.  These reads, on a cold cache, must return the source bytes.

The test hub's tiny DeepSeek-V3 (conftest) has no shard over 1 MiB, so this module serves
its own ``deepseek-ai/DeepSeek-V3-tiny`` with safetensors shards of the sizes that matter:
``model-00002-of-00010.safetensors`` of exactly 1,139,104 bytes, the file of the issue.
"""

from __future__ import annotations

import os

import pytest

from conftest import Mounter

pytestmark = pytest.mark.fuse  # starts its own hub process and mounts

REPO = "deepseek-ai/DeepSeek-V3-tiny"
SHARD = "model-00002-of-00010.safetensors"  # the issue's file
SHARD_SIZE = 1_139_104
BIG = "model-00001-of-00010.safetensors"  # full blocks and a short last one at 64K, 1M and 4M
BIG_SIZE = 9 * (1 << 20) + 4321


def safetensors_of_size(size: int, seed: int) -> bytes:
    """A valid safetensors file of exactly ``size`` bytes (random U8 and F32 tensors)."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    head = rng.standard_normal((64, 64), dtype=np.float32)
    n = size
    for _ in range(10):  # the header's length depends on the digits of the offsets
        body = save({"model.embed.weight": head, "model.layers.1.mlp.weight": np.zeros(n, np.uint8)})
        if len(body) == size:
            break
        n += size - len(body)
    else:
        raise AssertionError(f"no safetensors file of {size} bytes")
    tail = rng.integers(0, 256, n, dtype=np.uint8)
    body = save({"model.embed.weight": head, "model.layers.1.mlp.weight": tail})
    assert len(body) == size
    return body


@pytest.fixture(scope="module")
def eio_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eioroot")
    repo = root / REPO
    repo.mkdir(parents=True)
    (repo / SHARD).write_bytes(safetensors_of_size(SHARD_SIZE, 2))
    (repo / BIG).write_bytes(safetensors_of_size(BIG_SIZE, 1))
    (repo / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def eio_hub(eio_root):
    from hubproc import HubProcess

    with HubProcess(eio_root) as server:
        yield server


@pytest.fixture
def em(tmp_path, eio_hub):
    m = Mounter(tmp_path, eio_hub.url)
    yield m
    m.cleanup()


def pread_all(path, size: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def no_errors_logged(m: Mounter) -> list[str]:
    return [line for log in sorted((m.cache_dir / "logs").glob("*")) for line in log.read_text().splitlines()
            if " ERROR " in line]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "normal"])
def test_the_issue_read_near_the_end_of_a_file(em, eio_root, raw):
    """Cold cache, 1 MiB blocks: 200,000 bytes from 100,000 before the end of block 0 of a
    1,139,104-byte shard (kernel reads of 128 KiB: one of them spans blocks 0 and 1)."""
    src = (eio_root / REPO / SHARD).read_bytes()
    mp = em.mount(REPO)
    where = (mp / ".netmount" / "raw" / SHARD) if raw else (mp / SHARD)
    offset = (1 << 20) - 100_000
    assert pread_all(where, 200_000, offset) == src[offset : offset + 200_000]
    assert no_errors_logged(em) == []


@pytest.mark.parametrize("block", ["64K", "1M", "4M"])
def test_reads_across_every_block_edge_and_eof(em, eio_root, block):
    """Every block edge of a 9 MiB file and its end, at three block sizes: first the edges
    whose both blocks are cold (every other one), then the rest, then the last bytes.  Each
    read starts less than a kernel read (128 KiB) before its edge, so the kernel's first read
    asks for both blocks at once: one demand run of a block and the next."""
    src = (eio_root / REPO / BIG).read_bytes()
    size = len(src)
    bs = {"64K": 64 << 10, "1M": 1 << 20, "4M": 4 << 20}[block]
    mp = em.mount(REPO, "--block-size", block, name=f"mnt{block}")
    raw = mp / ".netmount" / "raw" / BIG
    edges = list(range(bs, size, bs))
    fd = os.open(raw, os.O_RDONLY)
    try:
        for edge in edges[::-2] + edges[-2::-2]:  # the last edge first: its run ends at EOF
            lo = edge - min(100_000, bs // 2)
            hi = min(size, edge + 100_000)
            assert os.pread(fd, hi - lo, lo) == src[lo:hi], f"edge {edge}"
        assert os.pread(fd, 1000, size - 500) == src[size - 500 :]  # past EOF: short
    finally:
        os.close(fd)
    with open(mp / BIG, "rb") as fh:  # the normal path, on a now partly warm cache
        assert fh.read() == src
    assert no_errors_logged(em) == []
