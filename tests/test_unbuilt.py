"""Which shards a loader opens for their header only (netmount/read/unbuilt.py): pure tables."""

from __future__ import annotations

import json

import pytest

from netmount.read.unbuilt import num_layers, unbuilt_shards


@pytest.mark.parametrize("config, want", [
    ({"num_hidden_layers": 61}, 61),
    ({"text_config": {"num_hidden_layers": 40}}, 40),  # multimodal configs nest it
    ({"num_hidden_layers": 0}, None),
    ({"num_hidden_layers": True}, None),
    ({"num_hidden_layers": "61"}, None),
    ({}, None),
    ([1, 2], None),
])
def test_num_layers(config, want):
    assert num_layers(json.dumps(config)) == want


@pytest.mark.parametrize("raw", [None, b"", b"{not json", b"\xff\xfe"])
def test_num_layers_of_no_or_bad_json(raw):
    assert num_layers(raw) is None


DSV3 = {  # DeepSeek-V3's shape: layers 0-60 built, 61 is the MTP layer in its own shard
    "model.embed_tokens.weight": "model-00001-of-00163.safetensors",
    "model.layers.0.self_attn.q_a_proj.weight": "model-00001-of-00163.safetensors",
    "model.layers.60.mlp.experts.255.down_proj.weight": "model-00162-of-00163.safetensors",
    "model.layers.61.embed_tokens.weight": "model-00163-of-00163.safetensors",
    "model.layers.61.mlp.experts.0.up_proj.weight": "model-00163-of-00163.safetensors",
    "model.layers.61.shared_head.head.weight": "model-00163-of-00163.safetensors",
    "lm_head.weight": "model-00162-of-00163.safetensors",
}


@pytest.mark.parametrize("weight_map, layers, want", [
    (DSV3, 61, {"model-00163-of-00163.safetensors"}),
    (DSV3, 62, set()),  # a config that builds layer 61 too
    (DSV3, None, set()),  # no config: nothing is known
    ({**DSV3, "model.norm.weight": "model-00163-of-00163.safetensors"}, 61, set()),  # also holds a built tensor
    ({**DSV3, "model.layers.59.mlp.gate.weight": "model-00163-of-00163.safetensors"}, 61, set()),
    ({"vision.layers.3.w": "a.safetensors", "model.layers.1.w": "c.safetensors",
      "model.layers.2.w": "b.safetensors"}, 2, {"b.safetensors"}),  # a vision tower's deeper stack
    ({"model.layers.0.w": "a.safetensors", "model.layers.5.w": "b.safetensors"}, 2, set()),  # no layer 1: unsure
    ({"model.layers.12x.w": "a.safetensors"}, 2, set()),  # not a layer number
    (None, 61, set()),
    ({}, 61, set()),
])
def test_unbuilt_shards(weight_map, layers, want):
    assert unbuilt_shards(weight_map, layers) == want
