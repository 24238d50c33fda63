"""The issue-21 model: a random Llama of 1.5 GB in 4 shards of ~450 MB, built once per work dir.

Small models hide the daemon's per-byte cost behind fixed costs (imports, mount), so the
throughput scenarios load this one: hidden 2048, 12 layers, intermediate 5632, vocab 32000,
full multi-head attention (16 heads of 128), bf16; ``save_pretrained(max_shard_size="450MB")``
writes what the Hub would serve (shards, index, config) and ``save_tokenizer`` a 32000-token
tokenizer.  Built and cached by ``netmount.dev.testmodels.cached_model`` (a folder named by
the parameters and the transformers version, published by rename), with this builder
registered under ``KIND``: ~20 s, 1.5 GB on disk.
"""

from __future__ import annotations

from pathlib import Path

KIND = "llama-1p5b"


def build_llama_1p5b(out_dir: Path, *, hidden_size: int = 2048, num_hidden_layers: int = 12,
                     intermediate_size: int = 5632, vocab_size: int = 32000, heads: int = 16,
                     shard: str = "450MB", seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from netmount.dev.testmodels import save_tokenizer

    cfg = LlamaConfig(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      intermediate_size=intermediate_size, vocab_size=vocab_size, num_attention_heads=heads,
                      num_key_value_heads=heads, max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1, dtype="bfloat16")
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out_dir, max_shard_size=shard)
    del model
    save_tokenizer(out_dir, vocab_size)
    return out_dir


def cached(root: Path) -> Path:
    """The built model under ``root`` (built now if missing)."""
    from netmount.dev import testmodels

    testmodels.BUILDERS.setdefault(KIND, build_llama_1p5b)
    return testmodels.cached_model(KIND, cache_root=root)
