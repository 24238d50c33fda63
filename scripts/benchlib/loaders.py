"""The programs a bench run times, each run as ``python -c CODE ARGS`` in a fresh process
(``procs.run_json``): imports are not timed, the last stdout line is JSON.

``LOAD`` is ``AutoModelForCausalLM.from_pretrained(dir)`` *plus* a sum over every parameter:
transformers 5.24 keeps CPU bf16 weights as zero-copy mmap views, so from_pretrained alone
touches only a few pages per tensor and the rest would be read at first use.  A second
argument ``nommap`` loads with ``disable_mmap=True`` (transformers 5.x: each shard is one
``read()`` of the whole file into memory, as hf-mount makes it by default, and as diffusers
and ComfyUI read).  ``SNAPSHOT`` is ``snapshot_download``; ``PARTIAL`` reads a pattern of
lone tensors with ``safe_open`` (see ``legacy.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

LOAD = r"""
import os, sys, time, json
import torch
from transformers import AutoModelForCausalLM
if os.environ.get("NETMOUNT_BENCH_WORKERS"):  # transformers 5.x: its loading pool's size
    import transformers.core_model_loading as cml
    cml.GLOBAL_WORKERS = int(os.environ["NETMOUNT_BENCH_WORKERS"])  # read when a load starts
t = time.monotonic()
mode = sys.argv[2] if len(sys.argv) > 2 else "mmap"
kw = {"disable_mmap": True} if mode == "nommap" else {}
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, **kw)
with torch.no_grad():
    s = sum(float(p.float().sum()) for p in m.parameters())
print(json.dumps({"seconds": time.monotonic() - t, "checksum": s}))
"""

PARTIAL = r"""
import sys, json, random
from safetensors import safe_open
from pathlib import Path
import torch
folder, pattern = Path(sys.argv[1]), sys.argv[2]
if len(sys.argv) > 3:
    shards = [Path(folder, n) for n in sys.argv[3].split(",")]
else:
    shards = sorted(folder.glob("*.safetensors"))


def nbytes(sf, k):
    s = sf.get_slice(k)
    n = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}.get(s.get_dtype(), 4)
    for d in s.get_shape():
        n *= d
    return n


picks = []
if pattern == "deepseek":  # one routed expert, all 6 tensors of it, from each shard
    for shard in shards:
        with safe_open(str(shard), framework="pt") as sf:
            experts = {}
            for k in sorted(sf.keys()):
                if ".mlp.experts." in k:
                    experts.setdefault(k.rsplit(".", 2)[0], []).append(k)
        whole = [v for v in experts.values() if len(v) == 6]
        picks += [(shard.name, k) for k in whole[len(whole) // 2]]
else:
    sizes = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as sf:
            sizes[shard.name] = {k: nbytes(sf, k) for k in sf.keys()}
    if pattern == "middle":
        picks = [(n, sorted(s)[len(s) // 2]) for n, s in sizes.items()]
    elif pattern == "median":
        picks = [(n, sorted(s, key=lambda k: (s[k], k))[len(s) // 2]) for n, s in sizes.items()]
    elif pattern == "bigsmall":
        names = list(sizes)
        first = sizes[names[0]]
        picks = [(names[0], max(first, key=lambda k: (first[k], k)))]
        picks += [(n, min(sizes[n], key=lambda k: (sizes[n][k], k))) for n in names[1:]]
    elif pattern == "random10":
        pool = sorted((n, k) for n, s in sizes.items() for k in s)
        picks = random.Random(10).sample(pool, 10)
    else:
        raise SystemExit(f"unknown pattern {pattern}")
for name, key in picks:
    with safe_open(str(folder / name), framework="pt") as sf:
        t = sf.get_tensor(key)
        float(t.float().sum())  # touch every page (on torch's threads)
print(json.dumps(picks))
"""

SNAPSHOT = r"""
import sys, time, json
from huggingface_hub import snapshot_download
t = time.monotonic()
p = snapshot_download(sys.argv[1], cache_dir=sys.argv[2])
print(json.dumps({"seconds": time.monotonic() - t, "path": p}))
"""


def wanted_bytes(picks, layouts) -> int:
    """Each touched shard's header (8 + its length) and every tensor read."""
    need = 0
    for shard in {s for s, _ in picks}:
        need += layouts[shard][0]
    for shard, key in picks:
        a, b = layouts[shard][1][key]["data_offsets"]
        need += b - a
    return need


def file_layout(path: Path) -> tuple[int, dict]:
    """(8 + header length, the header) of a safetensors file."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return 8 + n, json.loads(fh.read(n))
