"""Issue 20's first promise, through real mounts: whatever crosses the network lands in the
store, so a load after a remount on the same cache fetches nothing, ``du`` of each loaded
shard is its size, and a plain mount after a view mount of the same repo fetches nothing
for the same load.  Stock transformers loads (``from_pretrained``, a forward pass, and a sum
over every parameter, as the bench's "load": transformers keeps weights as views of the
mapped files, so without the sum rows nobody reads are never read); the hub (another process)
counts every byte it sent, read after the mount is settled (``.netmount/idle``)."""

from __future__ import annotations

import json
import os

import pytest

from netmount.mounting.stats import wait_idle as _idle

from conftest import Mounter

pytestmark = pytest.mark.fuse
DSV3, MINILM = "once/tiny-dsv3", "once/tiny-minilm"


@pytest.fixture(scope="module")
def once_root(tmp_path_factory):
    from netmount.dev.testmodels import build_tiny_deepseek_v3, build_tiny_minilm

    root = tmp_path_factory.mktemp("onceroot")
    build_tiny_deepseek_v3(root / DSV3)
    build_tiny_minilm(root / MINILM)
    return root


@pytest.fixture(scope="module")
def once_hub(once_root):
    from hubproc import HubProcess

    with HubProcess(once_root) as server:
        yield server


def wait_idle(mp) -> None:
    assert _idle(mp), f"{mp} did not settle"


def _causal(path):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers import logging as tlog

    tlog.set_verbosity_error()  # the MTP layer's UNEXPECTED keys report
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 13, 2, 7, 300, 42]])).logits, _touch(model)


def _touch(model) -> float:
    """Every parameter's every byte read (a sum)."""
    import torch

    with torch.no_grad():
        return sum(float(p.float().sum()) for p in model.parameters())


def _embedding(path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    batch = tokenizer(["a shard starts with a small header", "the quick brown fox"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1), _touch(model)  # sentence-transformers' mean pooling


def _sent(hub) -> int:
    """Bytes of file content the hub sent: the CDN's, and small files' from ``/resolve/``."""
    return hub.bytes_sent(server="cdn") + sum(r.body_bytes for r in hub.requests(server="hub")
                                              if "/resolve/" in r.path and r.method == "GET")


def _loaded_shards(root, repo) -> list[str]:
    """The weight files a load reads: the index's shards but the one holding only the MTP layer."""
    index = root / repo / "model.safetensors.index.json"
    if not index.exists():
        return ["model.safetensors"]
    weight_map = json.loads(index.read_text())["weight_map"]
    mtp = "model.layers.{}.".format(json.loads((root / repo / "config.json").read_text())["num_hidden_layers"])
    return sorted({shard for shard in weight_map.values()
                   if not all(k.startswith(mtp) for k, w in weight_map.items() if w == shard)})


@pytest.mark.parametrize("repo, load", [(DSV3, _causal), (MINILM, _embedding)])
def test_a_load_after_a_remount_fetches_nothing_and_du_is_the_size(tmp_path, once_hub, once_root, repo, load):
    import torch

    mounter = Mounter(tmp_path, once_hub.url)
    try:
        mp = mounter.mount(repo, name="first")
        ref = load(mp)
        wait_idle(mp)
        stats = mounter.stats(mp)
        held = {f["path"]: f["cached_bytes"] for f in stats["files"]}
        assert 0 < stats["bytes_fetched"] == _sent(once_hub) == sum(held.values())  # each byte stored, once
        shards = {name: (once_root / repo / name).stat().st_size for name in _loaded_shards(once_root, repo)}
        assert {name: held[name] for name in shards} == shards
        mounter.unmount(mp)
        once_hub.reset_log()
        mp = mounter.mount(repo, name="second")
        for name, size in shards.items():  # du on the new mount: what the store holds
            assert os.stat(mp / name).st_blocks == -(-size // 512), name
        again = load(mp)
        assert torch.equal(again[0], ref[0]) and again[1] == ref[1]
        wait_idle(mp)
        assert _sent(once_hub) == 0, [(r.server, r.path, r.range) for r in once_hub.log]
    finally:
        mounter.cleanup()


def test_a_plain_mount_after_a_layer_view_fetches_nothing_for_the_same_load(tmp_path, once_hub):
    import torch

    mounter = Mounter(tmp_path, once_hub.url)
    try:
        view = mounter.mount(DSV3, "--reshard", "layer", name="view")
        ref = _causal(view)
        wait_idle(view)
        mounter.unmount(view)
        once_hub.reset_log()
        plain = mounter.mount(DSV3, name="plain")
        again = _causal(plain)
        assert torch.equal(again[0], ref[0]) and again[1] == ref[1]
        wait_idle(plain)
        cdn = once_hub.requests(server="cdn", method="GET")
        assert cdn == [] and _sent(once_hub) == 0, [(r.server, r.path, r.range) for r in once_hub.log]
    finally:
        mounter.cleanup()
