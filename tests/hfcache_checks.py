"""What stock huggingface_hub, transformers and sentence-transformers do with a read-only
Hugging Face cache, as scripts run in a child process (``HF_HUB_CACHE`` is read at import),
each printing one JSON line.  ``test_hfcache_readonly.py`` runs them on a read-only bind mount
of the cache the --hf-cache namespace describes (written out by ``materialize``),
``test_hfcache_mount.py`` on the live mount; ``SENTENCE_MODEL`` builds a tiny
sentence-embedding model with sentence-transformers itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from netmount.mounting.hfcache.resolution import hub_resolver  # noqa: F401  (the daemon's, for the tests)
from netmount.mounting.namespace import Namespace

_PRELUDE = '''
import json, sys, time
def attempt(call):
    """{"value": what call() returned} or {"error": [type, first line, errno, seconds]}."""
    started = time.monotonic()
    try:
        return {"value": call()}
    except Exception as exc:
        return {"error": [type(exc).__name__, (str(exc).splitlines() or [""])[0], getattr(exc, "errno", None),
                          time.monotonic() - started]}
def error_of(call):
    return attempt(call).get("error")
args = json.loads(sys.argv[1])
'''

OFFLINE_HUB = _PRELUDE + '''
from huggingface_hub import (get_cached_repo_tree, hf_hub_download, scan_cache_dir, snapshot_download,
                             try_to_load_from_cache)
from huggingface_hub.file_download import _CACHED_NO_EXIST
repo, first = args["repo"], args["files"][0]
out = {"download": {f: hf_hub_download(repo, f) for f in args["files"]},
       "by_sha": hf_hub_download(repo, first, revision=args["sha"]),
       "snapshot": snapshot_download(repo),
       "try": try_to_load_from_cache(repo, first),
       "try_absent": (lambda found: "no-exist" if found is _CACHED_NO_EXIST else found)(
           try_to_load_from_cache(repo, "absent.json")),
       "try_no_exist": try_to_load_from_cache(repo, args["no_exist"]) is _CACHED_NO_EXIST,
       "tree": sorted(f.path for f in get_cached_repo_tree(repo)),
       "unknown": error_of(lambda: hf_hub_download(args["unknown"], "config.json")),
       "unknown_snapshot": error_of(lambda: snapshot_download(args["unknown"])),
       "gated": error_of(lambda: hf_hub_download(args["gated"], "config.json"))}
info = scan_cache_dir()
out["scan"] = {"repos": sorted(r.repo_id for r in info.repos), "warnings": [str(w) for w in info.warnings],
               "files": sum(len(rev.files) for r in info.repos for rev in r.revisions)}
print(json.dumps(out))
'''

TRANSFORMERS_BY_ID = _PRELUDE + '''
import torch, transformers
from transformers import AutoModelForCausalLM
from transformers.utils.hub import cached_file
transformers.logging.set_verbosity_error()
ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2]])
by_id = AutoModelForCausalLM.from_pretrained(args["repo"])
local = AutoModelForCausalLM.from_pretrained(args["local"])
with torch.no_grad():
    a, b = by_id(ids).logits, local(ids).logits
print(json.dumps({"equal": bool(torch.equal(a, b)), "shape": list(a.shape),
                  "config": cached_file(args["repo"], "config.json")}))
'''

ONLINE = _PRELUDE + '''
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import AutoConfig
repo = args["repo"]
out = {"download": {f: attempt(lambda: hf_hub_download(repo, f)) for f in args["files"]},
       "snapshot": attempt(lambda: snapshot_download(repo)),
       "config": error_of(lambda: AutoConfig.from_pretrained(repo)),
       "gated": error_of(lambda: hf_hub_download(args["gated"], "config.json")),
       "unknown": error_of(lambda: hf_hub_download(args["unknown"], "config.json"))}
print(json.dumps(out))
'''


READ = _PRELUDE + '''
from huggingface_hub import hf_hub_download
def read():
    path = hf_hub_download(args["repo"], args["file"])
    with open(path) as fh:
        return [path, fh.read()]
print(json.dumps(attempt(read)))
'''

SENTENCE_MODEL = _PRELUDE + '''
import torch
from pathlib import Path
from sentence_transformers import SentenceTransformer, models
from transformers import BertConfig, BertModel, BertTokenizerFast
out, work = Path(args["out"]), Path(args["work"])
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *args["words"]]
(work / "vocab.txt").write_text("\\n".join(vocab) + "\\n")
torch.manual_seed(0)
config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64)
BertModel(config).save_pretrained(work / "bert")
BertTokenizerFast(vocab_file=str(work / "vocab.txt")).save_pretrained(work / "bert")
words = models.Transformer(str(work / "bert"), max_seq_length=32)
pooling = models.Pooling(words.get_embedding_dimension(), "mean")
SentenceTransformer(modules=[words, pooling], device="cpu").save(str(out))
print(json.dumps(sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())))
'''

SENTENCE_BY_ID = _PRELUDE + '''
import numpy as np
from sentence_transformers import SentenceTransformer
texts = ["the quick brown fox", "netmount mounts the hub lazily"]
by_id, local = SentenceTransformer(args["repo"], device="cpu"), SentenceTransformer(args["local"], device="cpu")
a, b = by_id.encode(texts), local.encode(texts)
print(json.dumps({"equal": bool(np.array_equal(a, b)), "shape": list(a.shape)}))
'''


def run_hf(script: str, args: dict, *, cache: Path, endpoint: str, home: Path, offline: bool,
           timeout: float = 300) -> dict:
    """Run ``script`` with ``args`` against ``cache`` (no token, telemetry off, a private
    ``HF_HOME``); its JSON line.  A failing script fails the test with its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_TOKEN="",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def materialize(ns: Namespace, dest: Path, content, markers: dict[str, list[str]] | None = None,
                path: str = "/") -> None:
    """Write the tree ``ns`` answers under ``path`` into ``dest``: folders, data files, and each
    file's bytes from ``content(file)``.  ``markers``: ``.no_exist`` names to write per repo
    folder (what is absent cannot be listed, only looked up)."""
    for name in ns.children(path):
        child = f"{path.rstrip('/')}/{name}"
        node = ns.lookup(child)
        target = dest / child.lstrip("/")
        if node.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            materialize(ns, dest, content, markers, child)
        else:
            target.write_bytes(node.data if node.kind == "data" else content(node.file))
    if path == "/":
        for folder, names in (markers or {}).items():
            for sha in ns.children(f"/{folder}/snapshots"):
                for name in names:
                    marker = f"/{folder}/.no_exist/{sha}/{name}"
                    (dest / marker.lstrip("/")).write_bytes(ns.lookup(marker).data)
