"""The issue-21 model: a random Llama of 1.5 GB in 4 shards of ~450 MB, built once per work dir.

Small models hide the daemon's per-byte cost behind fixed costs (imports, mount), so the
throughput scenarios load this one: hidden 2048, 12 layers, intermediate 5632, vocab 32000,
full multi-head attention (16 heads of 128), bf16; ``save_pretrained(max_shard_size="450MB")``
writes what the Hub would serve (shards, index, config) and ``save_tokenizer`` a 32000-token
tokenizer.  The folder name hashes the parameters and the transformers version; the build runs
in a temp folder and is renamed into place, so an interrupted build never looks done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

SHAPE = {"hidden_size": 2048, "num_hidden_layers": 12, "intermediate_size": 5632, "vocab_size": 32000,
         "num_attention_heads": 16, "num_key_value_heads": 16}
SHARD = "450MB"
SEED = 0


def build(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from netmount.dev.testmodels import save_tokenizer

    cfg = LlamaConfig(**SHAPE, max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1, dtype="bfloat16")
    torch.manual_seed(SEED)
    model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size=SHARD)
    del model
    save_tokenizer(out, cfg.vocab_size)


def cached(root: Path) -> Path:
    """The built model under ``root`` (built now if missing: ~1 minute, 1.5 GB on disk)."""
    import transformers

    key = json.dumps({"shape": SHAPE, "shard": SHARD, "seed": SEED, "transformers": transformers.__version__},
                     sort_keys=True)
    final = root / f"llama-1p5b-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
    try:
        build(tmp)
        for path in [tmp, *tmp.iterdir()]:  # readable by nginx's workers (user nobody)
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":  # python scripts/benchlib/model.py DIR: build ahead of a run
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(cached(Path(sys.argv[1])))
