"""The locally built checkpoints look like the Hub's and load with stock transformers."""

import json
import re
import shutil
import struct
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

from netmount.dev import testmodels  # noqa: E402

SHARD_RE = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> Path:
    return testmodels.build_tiny_deepseek_v3(tmp_path_factory.mktemp("ds") / "model")


@pytest.fixture(scope="module")
def reference_logits():
    model = testmodels.tiny_deepseek_v3_model(seed=0)
    with torch.no_grad():
        return model(_ids()).logits


def _ids():
    return torch.tensor([[0, 5, 17, 300, 42, 511, 7, 99]])


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _load(folder: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


def _check_index_matches_files(folder: Path) -> dict:
    index = _index(folder)
    by_file: dict[str, set] = {}
    for key, fname in index["weight_map"].items():
        by_file.setdefault(fname, set()).add(key)
    assert set(by_file) == {p.name for p in _shards(folder)}
    total = 0
    for fname, keys in by_file.items():
        with safe_open(folder / fname, framework="pt") as f:
            assert set(f.keys()) == keys, fname
            for k in keys:
                sl = f.get_slice(k)
                n = 1
                for d in sl.get_shape():
                    n *= d
                total += n * {"BF16": 2, "F32": 4}[sl.get_dtype()]
    assert index["metadata"]["total_size"] == total
    return index


# --------------------------------------------------------------------------- DeepSeek-V3


def test_tiny_deepseek_v3_layout(tiny_ds):
    shards = _shards(tiny_ds)
    assert len(shards) >= 8 + 1
    numbers = [SHARD_RE.fullmatch(p.name).groups() for p in shards]
    assert [int(i) for i, _ in numbers] == list(range(1, len(shards) + 1))
    assert {int(n) for _, n in numbers} == {len(shards)}

    index = _check_index_matches_files(tiny_ds)
    n = json.loads((tiny_ds / "config.json").read_text())["num_hidden_layers"]
    mtp = {k for k in index["weight_map"] if k.startswith(f"model.layers.{n}.")}
    for name in ["eh_proj", "enorm", "hnorm", "shared_head.head", "shared_head.norm", "embed_tokens",
                 "self_attn.q_a_proj", "self_attn.kv_b_proj", "self_attn.o_proj", "input_layernorm",
                 "mlp.gate", "mlp.shared_experts.down_proj", "mlp.experts.0.gate_proj",
                 "mlp.experts.7.down_proj"]:
        assert f"model.layers.{n}.{name}.weight" in mtp
    # the MTP layer alone fills the last shard, like layer 61 in the real repo
    assert {index["weight_map"][k] for k in mtp} == {shards[-1].name}
    with safe_open(shards[-1], framework="pt") as f:
        assert set(f.keys()) == mtp
        assert f.get_slice(f"model.layers.{n}.eh_proj.weight").get_shape() == [128, 256]
    # experts are stored one tensor per expert, as on the Hub
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in index["weight_map"]
    assert (tiny_ds / "generation_config.json").is_file()


def test_tiny_deepseek_v3_loads_with_same_logits(tiny_ds, reference_logits):
    model, info = _load(tiny_ds)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    n = model.config.num_hidden_layers
    assert info["unexpected_keys"] and all(k.startswith(f"model.layers.{n}.") for k in info["unexpected_keys"])
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(model(_ids()).logits, reference_logits)


def test_mtp_shard_data_is_not_needed(tiny_ds, reference_logits, tmp_path, monkeypatch):
    """Fill the MTP shard's data (not its header) with 0xFF (NaN in bf16 and f32) and record
    which tensors transformers materializes: none from that shard, and logits are unchanged.

    A page-cache residency check would not do: on this kernel safe_open on ext4 pulls whole
    small files into the page cache. The FUSE mount measures real reads; this checks the API.
    """
    folder = tmp_path / "model"
    shutil.copytree(tiny_ds, folder)
    mtp_shard = _shards(folder)[-1]
    with open(mtp_shard, "r+b") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        size = mtp_shard.stat().st_size - 8 - header_len
        f.seek(8 + header_len)
        f.write(b"\xff" * size)

    import transformers.modeling_utils as mu

    materialized: list[tuple[str, str, str]] = []
    real_safe_open = mu.safe_open

    class Slice:
        def __init__(self, sl, fname, key):
            self._sl, self._fname, self._key = sl, fname, key

        def __getitem__(self, item):  # this is what reads the bytes
            materialized.append((Path(self._fname).name, self._key, threading.current_thread().name))
            return self._sl[item]

        def __getattr__(self, name):
            return getattr(self._sl, name)

    class Handle:
        def __init__(self, fname, *args, **kwargs):
            self._h, self._fname = real_safe_open(fname, *args, **kwargs), fname

        def get_slice(self, key):
            return Slice(self._h.get_slice(key), self._fname, key)

        def __getattr__(self, name):
            return getattr(self._h, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._h.__exit__(*exc)

    monkeypatch.setattr(mu, "safe_open", Handle)
    model, info = _load(folder)
    assert not info["missing_keys"]
    files = {fname for fname, _, _ in materialized}
    assert len(files) >= 8 and mtp_shard.name not in files
    with torch.no_grad():
        assert torch.equal(model(_ids()).logits, reference_logits)


def test_tokenizer_offline_round_trip_and_generate(tiny_ds, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_ds)
    config = transformers.AutoConfig.from_pretrained(tiny_ds)
    assert len(tok) == config.vocab_size
    for text in [PROMPT, "naïve café — 東京, 42!\n  spaces\tand tabs"]:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id == 0
        assert max(ids) < config.vocab_size
        assert tok.decode(ids, skip_special_tokens=True) == text

    model, _ = _load(tiny_ds)
    inputs = tok(PROMPT, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5)
    assert out.shape[1] == inputs.input_ids.shape[1] + 5


# --------------------------------------------------------------------------- Llama-like


def test_llama_like_small(tmp_path):
    folder = testmodels.build_llama_like(tmp_path / "llama", total_bytes=20_000_000, shards=6, seed=3)
    shards = _shards(folder)
    assert [p.name for p in shards] == [f"model-{i:05d}-of-00006.safetensors" for i in range(1, 7)]
    index = _check_index_matches_files(folder)
    assert 0.85 * 20_000_000 < index["metadata"]["total_size"] < 1.15 * 20_000_000

    model, info = _load(folder)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.model_type == "llama" and model.dtype == torch.bfloat16
    key = "model.layers.0.mlp.up_proj.weight"
    with safe_open(folder / index["weight_map"][key], framework="pt") as f:
        assert torch.equal(model.state_dict()[key], f.get_tensor(key))
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        assert torch.isfinite(model(**tok(PROMPT, return_tensors="pt")).logits).all()


# --------------------------------------------------------------------------- cache


def test_cached_model_builds_once(tmp_path, monkeypatch):
    calls = []
    real = testmodels.build_tiny_deepseek_v3

    def counting(out_dir, *, shards=8, seed=0):
        calls.append(out_dir)
        return real(out_dir, shards=shards, seed=seed)

    monkeypatch.setitem(testmodels.BUILDERS, "tiny-deepseek-v3", counting)
    first = testmodels.cached_model("tiny-deepseek-v3", tmp_path)
    second = testmodels.cached_model("tiny-deepseek-v3", tmp_path, shards=8)  # defaults hash alike
    assert first == second and len(calls) == 1  # the builder ran once: the second was the cache
    assert first.parent == tmp_path and first.name.startswith("tiny-deepseek-v3-")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folder left
    assert (first / "model.safetensors.index.json").is_file()
    _check_index_matches_files(first)


def test_cached_model_key_depends_on_params(tmp_path, monkeypatch):
    def fake(out_dir, *, size=1, seed=0):
        (out_dir / "config.json").write_text(json.dumps({"size": size, "seed": seed}))
        return out_dir

    monkeypatch.setitem(testmodels.BUILDERS, "fake", fake)
    a = testmodels.cached_model("fake", tmp_path)
    assert testmodels.cached_model("fake", tmp_path, size=1, seed=0) == a
    assert testmodels.cached_model("fake", tmp_path, seed=1) != a
    monkeypatch.setattr(testmodels, "BUILDER_VERSION", testmodels.BUILDER_VERSION + 1)
    assert testmodels.cached_model("fake", tmp_path) != a


def test_interrupted_build_leaves_nothing_that_looks_done(tmp_path, monkeypatch):
    def crashing(out_dir, *, seed=0):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C halfway

    monkeypatch.setitem(testmodels.BUILDERS, "fake", crashing)
    with pytest.raises(KeyboardInterrupt):
        testmodels.cached_model("fake", tmp_path)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setitem(testmodels.BUILDERS, "fake", lambda out_dir, *, seed=0: out_dir)
    done = testmodels.cached_model("fake", tmp_path)
    assert done.is_dir() and [p.name for p in tmp_path.iterdir()] == [done.name]


def test_default_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NETMOUNT_CACHE_DIR", str(tmp_path))
    assert testmodels.models_cache_root() == tmp_path / "models"
    monkeypatch.delenv("NETMOUNT_CACHE_DIR")
    assert testmodels.models_cache_root() == Path.home() / ".cache" / "netmount" / "models"
