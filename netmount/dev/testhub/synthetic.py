"""A synthetic ``deepseek-ai/DeepSeek-V3``: the real repo's layout and headers, no stored bytes.

The motivating repo is 688 GB in 163 safetensors shards; nobody can keep a copy for tests.
Everything a reader looks at *structurally* is real: the tensor names, dtypes (FP8 e4m3
weights with F32 ``weight_scale_inv`` per 128x128 block, BF16 norms and embeddings) and
shapes follow the published architecture (61 layers, 0-2 dense, 3-60 MoE with 256 routed
experts, MLA attention, MTP layer 61), and each shard header is laid out the way the
safetensors writer lays it out (``__metadata__`` first, tensors sorted by dtype then name,
JSON padded with spaces to a multiple of 8).  The data region is a pure function of
(file path, absolute offset) so any range can be produced on demand and checked against
what a client received.

Content ids: a shard's LFS sha256 cannot be computed (688 GB of hashing).  We publish
``fake_sha256(path, size)`` instead: a deterministic 64-hex id that is stable across runs
and unique per file, but is NOT the sha256 of the bytes.  Small files (config, index,
README) are real bytes held in memory and get real git blob ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from dataclasses import dataclass

REPO_ID = "deepseek-ai/DeepSeek-V3"
NUM_SHARDS = 163
RELEASED = 1735171200.0  # 2024-12-26, the checkpoint's release: its "lastModified"
CHUNK = 64 * 1024  # the generator's unit: bytes of chunk c depend only on (path, c)

# Architecture (DeepSeek-V3 config.json).
HIDDEN = 7168
INTERMEDIATE = 18432
MOE_INTERMEDIATE = 2048
NUM_LAYERS = 61  # decoder layers 0..60; layer 61 is the MTP module
FIRST_DENSE = 3
N_ROUTED = 256
N_SHARED = 1
HEADS = 128
Q_LORA = 1536
KV_LORA = 512
QK_NOPE = 128
QK_ROPE = 64
V_HEAD = 128
VOCAB = 129280
BLOCK = 128  # FP8 quantization block (weight_block_size)

ITEMSIZE = {"F8_E4M3": 1, "BF16": 2, "F32": 4}
# The safetensors writer sorts tensors by dtype, larger dtypes first, then by name.
_DTYPE_RANK = {"F32": 0, "BF16": 1, "F8_E4M3": 2}

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": FIRST_DENSE,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": INTERMEDIATE,
    "kv_lora_rank": KV_LORA,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": MOE_INTERMEDIATE,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": N_ROUTED,
    "n_shared_experts": N_SHARED,
    "norm_topk_prob": True,
    "num_attention_heads": HEADS,
    "num_experts_per_tok": 8,
    "num_hidden_layers": NUM_LAYERS,
    "num_key_value_heads": HEADS,
    "num_nextn_predict_layers": 1,
    "pretraining_tp": 1,
    "q_lora_rank": Q_LORA,
    "qk_nope_head_dim": QK_NOPE,
    "qk_rope_head_dim": QK_ROPE,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "use_cache": True,
    "v_head_dim": V_HEAD,
    "vocab_size": VOCAB,
}

GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
                     "do_sample": True, "temperature": 0.6, "top_p": 0.95,
                     "transformers_version": "4.46.3"}

README = """---
license: mit
library_name: transformers
---
# DeepSeek-V3 (synthetic)

Served by netmount's test hub. Layout, tensor names, dtypes, shapes and shard headers
follow the published DeepSeek-V3 checkpoint; the tensor data is deterministic
pseudo-random bytes generated on demand, and the LFS sha256 of each shard is a stand-in id.
"""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Shard:
    path: str
    header: bytes  # the 8-byte length prefix + padded JSON
    data_size: int
    tensors: tuple[Tensor, ...]  # in file order

    @property
    def size(self) -> int:
        return len(self.header) + self.data_size


def _fp8_linear(prefix: str, out_f: int, in_f: int) -> list[Tensor]:
    return [
        Tensor(f"{prefix}.weight", "F8_E4M3", (out_f, in_f)),
        Tensor(f"{prefix}.weight_scale_inv", "F32", (-(-out_f // BLOCK), -(-in_f // BLOCK))),
    ]


def _mlp(prefix: str, inter: int) -> list[Tensor]:
    return (
        _fp8_linear(f"{prefix}.gate_proj", inter, HIDDEN)
        + _fp8_linear(f"{prefix}.up_proj", inter, HIDDEN)
        + _fp8_linear(f"{prefix}.down_proj", HIDDEN, inter)
    )


def _decoder_layer(i: int) -> list[Tensor]:
    p = f"model.layers.{i}"
    t = [Tensor(f"{p}.input_layernorm.weight", "BF16", (HIDDEN,))]
    a = f"{p}.self_attn"
    t += _fp8_linear(f"{a}.q_a_proj", Q_LORA, HIDDEN)
    t.append(Tensor(f"{a}.q_a_layernorm.weight", "BF16", (Q_LORA,)))
    t += _fp8_linear(f"{a}.q_b_proj", HEADS * (QK_NOPE + QK_ROPE), Q_LORA)
    t += _fp8_linear(f"{a}.kv_a_proj_with_mqa", KV_LORA + QK_ROPE, HIDDEN)
    t.append(Tensor(f"{a}.kv_a_layernorm.weight", "BF16", (KV_LORA,)))
    t += _fp8_linear(f"{a}.kv_b_proj", HEADS * (QK_NOPE + V_HEAD), KV_LORA)
    t += _fp8_linear(f"{a}.o_proj", HIDDEN, HEADS * V_HEAD)
    t.append(Tensor(f"{p}.post_attention_layernorm.weight", "BF16", (HIDDEN,)))
    if i < FIRST_DENSE:
        t += _mlp(f"{p}.mlp", INTERMEDIATE)
    else:
        t.append(Tensor(f"{p}.mlp.gate.weight", "BF16", (N_ROUTED, HIDDEN)))
        t.append(Tensor(f"{p}.mlp.gate.e_score_correction_bias", "F32", (N_ROUTED,)))
        t += _mlp(f"{p}.mlp.shared_experts", MOE_INTERMEDIATE * N_SHARED)
        for e in range(N_ROUTED):
            t += _mlp(f"{p}.mlp.experts.{e}", MOE_INTERMEDIATE)
    return t


def all_tensors() -> list[Tensor]:
    """Every tensor of the checkpoint, in layer order (the order shards are filled in)."""
    t = [Tensor("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN))]
    for i in range(NUM_LAYERS):
        t += _decoder_layer(i)
    t.append(Tensor("model.norm.weight", "BF16", (HIDDEN,)))
    t.append(Tensor("lm_head.weight", "BF16", (VOCAB, HIDDEN)))
    m = f"model.layers.{NUM_LAYERS}"  # multi-token-prediction module
    t.append(Tensor(f"{m}.embed_tokens.weight", "BF16", (VOCAB, HIDDEN)))
    t.append(Tensor(f"{m}.enorm.weight", "BF16", (HIDDEN,)))
    t.append(Tensor(f"{m}.hnorm.weight", "BF16", (HIDDEN,)))
    t.append(Tensor(f"{m}.eh_proj.weight", "BF16", (HIDDEN, 2 * HIDDEN)))
    t += _decoder_layer(NUM_LAYERS)
    t.append(Tensor(f"{m}.shared_head.head.weight", "BF16", (VOCAB, HIDDEN)))
    t.append(Tensor(f"{m}.shared_head.norm.weight", "BF16", (HIDDEN,)))
    return t


def shard_name(k: int) -> str:
    return f"model-{k:05d}-of-{NUM_SHARDS:06d}.safetensors"


def encode_header(tensors: list[Tensor], metadata: dict[str, str] | None = None) -> tuple[bytes, list[Tensor], int]:
    """Lay tensors out as the safetensors writer does -> (8-byte prefix + header, file order, data size).

    String formatting instead of json.dumps of a dict: ~92k entries must build in well
    under a second, and the output is byte-identical to serde_json's compact form.
    """
    order = sorted(tensors, key=lambda t: (_DTYPE_RANK[t.dtype], t.name))
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":' + json.dumps(metadata, separators=(",", ":")))
    off = 0
    for t in order:
        end = off + t.nbytes
        shape = ",".join(map(str, t.shape))
        parts.append(f'"{t.name}":{{"dtype":"{t.dtype}","shape":[{shape}],"data_offsets":[{off},{end}]}}')
        off = end
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, order, off


@functools.lru_cache(maxsize=1)
def shards() -> tuple[Shard, ...]:
    """The 163 shards: tensors split in layer order at equal fractions of the total bytes.

    A tensor goes to the shard that holds its midpoint, so shards stay contiguous in layer
    order and come out ~4.2 GB each; no tensor is larger than a shard, so none is empty.
    """
    tensors = all_tensors()
    total = sum(t.nbytes for t in tensors)
    groups: list[list[Tensor]] = [[] for _ in range(NUM_SHARDS)]
    cum = 0
    for t in tensors:
        n = t.nbytes
        k = min(NUM_SHARDS - 1, (2 * cum + n) * NUM_SHARDS // (2 * total))
        groups[k].append(t)
        cum += n
    out = []
    for k, group in enumerate(groups, start=1):
        assert group, f"shard {k} came out empty"
        header, order, data_size = encode_header(group, {"format": "pt"})
        out.append(Shard(shard_name(k), header, data_size, tuple(order)))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _small_files() -> dict[str, bytes]:
    weight_map = {t.name: s.path for s in shards() for t in s.tensors}
    index = {
        "metadata": {"total_size": sum(s.data_size for s in shards())},
        "weight_map": dict(sorted(weight_map.items())),
    }
    return {
        "README.md": README.encode(),
        "config.json": (json.dumps(CONFIG, indent=2) + "\n").encode(),
        "generation_config.json": (json.dumps(GENERATION_CONFIG, indent=2) + "\n").encode(),
        "model.safetensors.index.json": (json.dumps(index, indent=2) + "\n").encode(),
    }


@functools.lru_cache(maxsize=1)
def _shard_by_path() -> dict[str, Shard]:
    return {s.path: s for s in shards()}


def repo_files() -> list[tuple[str, int]]:
    """(path, size) of every file in the repo, sorted by path."""
    files = [(p, len(b)) for p, b in _small_files().items()]
    files += [(s.path, s.size) for s in shards()]
    return sorted(files)


def fake_sha256(path: str, size: int) -> str:
    """Stand-in LFS id for a shard (NOT the sha256 of its bytes, which nobody can afford)."""
    return hashlib.sha256(f"netmount-synthetic\0{REPO_ID}\0{path}\0{size}".encode()).hexdigest()


@functools.lru_cache(maxsize=512)
def _path_key(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=256)
def _chunk(key: int, c: int) -> bytes:
    # Mersenne Twister seeded per chunk: stdlib only, ~400 MB/s, any chunk in O(1).
    return random.Random((key << 40) | c).randbytes(CHUNK)


def _data_bytes(path: str, start: int, end: int) -> bytes:
    key = _path_key(path)
    first, last = start // CHUNK, (end - 1) // CHUNK
    if first == last:
        return _chunk(key, first)[start - first * CHUNK : end - first * CHUNK]
    parts = [_chunk(key, first)[start - first * CHUNK :]]
    parts += [_chunk(key, c) for c in range(first + 1, last)]
    parts.append(_chunk(key, last)[: end - last * CHUNK])
    return b"".join(parts)


def file_bytes(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a repo file; raises KeyError for an unknown path."""
    small = _small_files().get(path)
    if small is not None:
        size = len(small)
    else:
        shard = _shard_by_path()[path]
        size = shard.size
    if not 0 <= start <= end <= size:
        raise ValueError(f"range [{start}, {end}) outside {path} of size {size}")
    if small is not None:
        return small[start:end]
    if start == end:
        return b""
    h = shard.header
    if end <= len(h):
        return h[start:end]
    if start >= len(h):
        return _data_bytes(path, start, end)
    return h[start:] + _data_bytes(path, len(h), end)
