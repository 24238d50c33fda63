"""Small, locally built model checkpoints for tests, benchmarks and ``netmount demo``.

Nothing here touches the network: weights are random (fixed seed), configs and tokenizers are
built with ``transformers`` and ``tokenizers`` themselves, so the files look like what the Hub
serves (sharded safetensors, ``model.safetensors.index.json``, ``config.json``,
``generation_config.json``, ``tokenizer.json``) and load with stock ``from_pretrained``.

- :func:`build_tiny_deepseek_v3` mimics the layout of ``deepseek-ai/DeepSeek-V3``: routed
  experts stored one tensor per expert, many shards, and a multi-token-prediction (MTP) layer
  ``model.layers.N.*`` in the last shard that transformers lists in the index but never loads.
  That shard is what a lazy mount must not fetch.
- :func:`build_llama_like` makes a plain Llama of a chosen size for throughput benchmarks,
  streamed shard by shard so memory stays at about one shard.
- :func:`build_tiny_minilm` is a sentence-embedding model laid out like all-MiniLM-L6-v2 (a
  BERT in one ``model.safetensors``, sentence-transformers' module files).
- :func:`cached_model` builds once per parameter set and publishes by atomic rename.

torch/transformers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when a builder's output changes for the same parameters: it is part of the cache key.
BUILDER_VERSION = 1

TOKENIZER_TEXT = """
A model repository on the Hub holds a configuration file, a tokenizer and the weights, often split
into many shards of safetensors. Each shard starts with a small header in JSON that names every
tensor, its data type, its shape and where its bytes begin and end. A loader reads the index, opens
the shards it needs, and copies only the tensors that the model expects. The rest is never touched.
When a file system fetches bytes lazily over the network, the order of reads matters as much as
their size: one large request is cheaper than a thousand small ones, and a block that two readers
want at once should be fetched only one time. The cache keeps blocks on local disk so that a second
run is fast, and the kernel keeps pages in memory so that a third run is faster still.
The quick brown fox jumps over the lazy dog while seven wizards quietly hex the jovial boxer.
Mixture of experts models route every token to a few experts out of many; the router picks them,
a shared expert sees every token, and the outputs are mixed with learned weights. Attention
compresses keys and values into a low rank latent, then expands them again for each head.
Once upon a time a small model lived in a folder. It could not say much, but it said it quickly,
and every word it spoke came from a file that nobody had downloaded in full.
"""
BOS, EOS = "<|bos|>", "<|eos|>"  # ids 0 and 1, as in DeepSeek-V3


# --------------------------------------------------------------------------- shared pieces


def save_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Train a byte-level BPE of exactly ``vocab_size`` tokens on built-in text and save it.

    Byte-level so any text round-trips; a few filler tokens are added if the text is too small
    to reach ``vocab_size`` merges, so token ids always fit the model's embedding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing < 0:
        raise ValueError(f"vocab_size {vocab_size} is below the 258 byte-level base tokens")
    tok.add_tokens([f"<|filler_{i}|>" for i in range(missing)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS,
        clean_up_tokenization_spaces=False, model_max_length=4096,
    )
    fast.save_pretrained(out_dir)


def _save_generation_config(out_dir: Path, max_new_tokens: int = 20) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, do_sample=False, max_new_tokens=max_new_tokens
    ).save_pretrained(out_dir)


def _shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def _write_index(out_dir: Path, weight_map: dict[str, str], total_size: int, total_parameters: int):
    index = {
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------- DeepSeek-V3


def tiny_deepseek_v3_config():
    """DeepSeek-V3's structure at toy size: MLA attention, 1 dense layer then MoE layers with
    8 routed experts (2 per token, 4 groups of which 2 are picked) and 1 shared expert."""
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,  # dense MLP of layer 0
        moe_intermediate_size=64,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        max_position_embeddings=4096,
        num_nextn_predict_layers=1,  # as in the real config.json; transformers ignores it
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=False,
    )


def tiny_deepseek_v3_model(seed: int = 0):
    """The in-memory model that :func:`build_tiny_deepseek_v3` saves (same seed, same weights).

    bfloat16 like the real checkpoint's compute dtype; the router (``gate.weight``,
    ``e_score_correction_bias``) stays float32 as transformers keeps it. bf16 -> file -> bf16
    is lossless, so reloaded logits are bit-identical.
    """
    import torch
    from transformers import DeepseekV3ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepseekV3ForCausalLM._from_config(tiny_deepseek_v3_config(), dtype=torch.bfloat16)
    return model.eval()


def _mtp_tensors(out_dir: Path, weight_map: dict[str, str], config, seed: int) -> dict:
    """Random tensors for MTP layer ``n`` named as DeepSeek-V3 names its layer 61: a full decoder
    layer shaped like layer n-1 (an MoE layer, experts one tensor each) plus the MTP extras."""
    import torch
    from safetensors import safe_open

    gen = torch.Generator().manual_seed(seed + 1)

    def fill(name: str, shape, dtype):
        t = torch.empty(shape, dtype=dtype)
        if name.endswith("e_score_correction_bias"):
            return t.zero_()
        if len(shape) == 1:  # RMSNorm weights
            return t.fill_(1.0)
        return t.normal_(0.0, 0.02, generator=gen)

    n, h, v, bf16 = config.num_hidden_layers, config.hidden_size, config.vocab_size, torch.bfloat16
    src = f"model.layers.{n - 1}."
    shapes = {}
    for key, fname in weight_map.items():
        if key.startswith(src):
            with safe_open(out_dir / fname, framework="pt") as f:
                sl = f.get_slice(key)
                dtype = getattr(torch, {"BF16": "bfloat16", "F32": "float32"}[sl.get_dtype()])
                shapes[f"model.layers.{n}." + key[len(src):]] = (sl.get_shape(), dtype)
    p = f"model.layers.{n}."
    shapes.update({
        p + "embed_tokens.weight": ((v, h), bf16),
        p + "enorm.weight": ((h,), bf16),
        p + "hnorm.weight": ((h,), bf16),
        p + "eh_proj.weight": ((h, 2 * h), bf16),
        p + "shared_head.norm.weight": ((h,), bf16),
        p + "shared_head.head.weight": ((v, h), bf16),
    })
    return {name: fill(name, shape, dtype) for name, (shape, dtype) in sorted(shapes.items())}


def build_tiny_deepseek_v3(out_dir: Path, *, shards: int = 8, seed: int = 0) -> Path:
    """Save :func:`tiny_deepseek_v3_model` in at least ``shards`` shards plus one MTP shard.

    Shards are written by ``save_pretrained`` (which stores experts one tensor per expert, as
    the real repo does), then renumbered ``-of-{total}`` so the extra last shard holding layer
    ``num_hidden_layers`` (the MTP layer) fits in; the index lists its tensors too. With the
    defaults: 10 model shards of 150-280 KB (2.3 MB) plus a 0.9 MB MTP shard, built in ~2 s.

    transformers only knows DeepSeek's MTP layer as ``model.layers.61`` and so logs a
    "LOAD REPORT" table of UNEXPECTED keys for layer N at warning level (logger
    ``transformers.modeling_utils``); quiet it with ``transformers.logging.set_verbosity_error()``.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = tiny_deepseek_v3_model(seed)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # every shard <= total/shards, so there are at least `shards` of them
    model.save_pretrained(out_dir, max_shard_size=total // shards)

    index_path = out_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    old_names = sorted(set(index["weight_map"].values()))
    n_files = len(old_names) + 1
    renamed = {old: _shard_name(i, n_files) for i, old in enumerate(old_names, 1)}
    for old, new in renamed.items():
        os.rename(out_dir / old, out_dir / new)
    weight_map = {k: renamed[f] for k, f in index["weight_map"].items()}

    mtp = _mtp_tensors(out_dir, weight_map, model.config, seed)
    mtp_name = _shard_name(n_files, n_files)
    save_file(mtp, out_dir / mtp_name, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(mtp, mtp_name))
    meta = index["metadata"]
    _write_index(
        out_dir,
        weight_map,
        total_size=meta["total_size"] + sum(t.numel() * t.element_size() for t in mtp.values()),
        total_parameters=meta.get("total_parameters", 0) + sum(t.numel() for t in mtp.values()),
    )
    save_tokenizer(out_dir, model.config.vocab_size)
    _save_generation_config(out_dir)
    return out_dir


# --------------------------------------------------------------------------- Llama-like


def llama_like_config(total_bytes: int, shards: int = 6):
    """A Llama config whose bf16 weights come to about ``total_bytes``: head_dim 64, GQA 4:1,
    MLP 2.75x hidden, ~2 layers per shard; hidden then layer count are fitted to the size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, params = 512, total_bytes // 2
    layers_hint = max(2, 2 * shards)

    def config(hidden: int, layers: int):
        heads = hidden // 64
        return LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=round(hidden * 2.75 / 64) * 64,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
            max_position_embeddings=4096, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, dtype="bfloat16",
        )

    def count(cfg) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())

    hidden = max(64, round((params / (layers_hint * 13)) ** 0.5 / 64) * 64)
    fixed = count(config(hidden, 1))
    per_layer = count(config(hidden, 2)) - fixed
    return config(hidden, max(1, 1 + round((params - fixed) / per_layer)))


def build_llama_like(
    out_dir: Path, *, total_bytes: int = 300_000_000, shards: int = 6, seed: int = 0
) -> Path:
    """Write a random bf16 Llama of about ``total_bytes`` as ``shards`` safetensors shards.

    The model is only instantiated on the ``meta`` device (names and shapes); tensors are
    generated shard by shard and written with ``safetensors``, so RAM peaks near one shard and
    300 MB takes a few seconds. Norms are ones, everything else N(0, 0.02).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = llama_like_config(total_bytes, shards)
    with torch.device("meta"):
        meta = LlamaForCausalLM(cfg).to(torch.bfloat16)
    specs = [(k, tuple(t.shape)) for k, t in meta.state_dict().items()]
    sizes = [2 * torch.Size(s).numel() for _, s in specs]
    total = sum(sizes)

    groups: list[list[int]] = [[] for _ in range(shards)]
    start = 0
    for i, size in enumerate(sizes):  # by where a tensor starts, so no shard gets > ~1/shards
        groups[min(shards - 1, start * shards // total)].append(i)
        start += size
    groups = [g for g in groups if g]

    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for n, group in enumerate(groups, 1):
        name = _shard_name(n, len(groups))
        tensors = {}
        for i in group:
            key, shape = specs[i]
            t = torch.empty(shape, dtype=torch.bfloat16)
            tensors[key] = t.fill_(1.0) if len(shape) == 1 else t.normal_(0.0, 0.02, generator=gen)
            weight_map[key] = name
        save_file(tensors, out_dir / name, metadata={"format": "pt"})
        del tensors
    _write_index(out_dir, weight_map, total_size=total, total_parameters=total // 2)
    cfg.save_pretrained(out_dir)
    save_tokenizer(out_dir, cfg.vocab_size)
    _save_generation_config(out_dir)
    return out_dir


# --------------------------------------------------------------------------- MiniLM


def build_tiny_minilm(out_dir: Path, *, seed: int = 0) -> Path:
    """A sentence-embedding model laid out like ``sentence-transformers/all-MiniLM-L6-v2``: a
    BERT encoder in one ``model.safetensors``, a WordPiece tokenizer, and sentence-transformers'
    ``modules.json``, ``sentence_bert_config.json`` and ``1_Pooling/config.json`` (mean pooling),
    tiny (hidden 32, 2 layers), random weights (``seed``)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([TOKENIZER_TEXT], trainers.WordPieceTrainer(vocab_size=512, special_tokens=special,
                                                                          show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    BertTokenizerFast(tokenizer_object=tok, model_max_length=128).save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ], indent=2) + "\n")
    (out_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128,
                                                                   "do_lower_case": False}) + "\n")
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False,
        "pooling_mode_max_tokens": False}) + "\n")
    return out_dir


# --------------------------------------------------------------------------- cache

BUILDERS = {"tiny-deepseek-v3": build_tiny_deepseek_v3, "llama-like": build_llama_like,
            "tiny-minilm": build_tiny_minilm}


def models_cache_root() -> Path:
    from netmount.core.settings import cache_dir

    return cache_dir() / "models"  # $NETMOUNT_CACHE_DIR/models or ~/.cache/netmount/models


def cached_model(kind: str, cache_root: Path | None = None, **kw) -> Path:
    """Path of a built ``kind`` model for these parameters, building it on first use.

    The folder name hashes the parameters (defaults filled in), :data:`BUILDER_VERSION` and the
    transformers version (save formats change between releases). The build runs in a hidden
    temp folder next to it and is renamed into place only when complete, so an interrupted or
    crashed build never leaves a folder that looks done; two racing builders both succeed and
    the first rename wins.
    """
    builder = BUILDERS[kind]
    import transformers

    bound = inspect.signature(builder).bind(Path("."), **kw)
    bound.apply_defaults()
    params = {k: v for k, v in bound.arguments.items() if k != "out_dir"}
    key = json.dumps(
        {"kind": kind, "params": params, "builder": BUILDER_VERSION, "transformers": transformers.__version__},
        sort_keys=True,
    )
    root = Path(cache_root) if cache_root is not None else models_cache_root()
    final = root / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
    try:
        builder(tmp, **params)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
