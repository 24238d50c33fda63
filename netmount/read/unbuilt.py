"""Shards a loader opens only for their header: every tensor in them belongs to a layer
numbered past the model's ``num_hidden_layers``.

DeepSeek-V3 (and GLM-4.5, MiMo, Qwen3-Next) store their multi-token-prediction layers as
``model.layers.<num_hidden_layers + k>``; transformers builds no such layer, but it opens
every shard the index names, the MTP shard too, and reads its header.  Knowing that from
the index and config.json, the mount gives such a shard the small readahead (its header
fault costs 128 KiB, not 1 MiB) and no speculative window ahead of a loader.  Pure: the
caller reads the two JSON files.
"""

from __future__ import annotations

import json
import re

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def num_layers(config_json: bytes | str | None) -> int | None:
    """``num_hidden_layers`` of a config.json (or of its ``text_config``), or None."""
    try:
        config = json.loads(config_json) if config_json else None
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    for where in (config, config.get("text_config")):
        n = where.get("num_hidden_layers") if isinstance(where, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def unbuilt_shards(weight_map: dict | None, layers: int | None) -> frozenset[str]:
    """Shard names (as the index names them) whose every tensor is in a layer ``>= layers``
    of the stack the config counts: the prefix (``model.``) that also has layer ``layers - 1``,
    so a vision tower's own deeper stack is never taken for extra layers."""
    if not isinstance(weight_map, dict) or not layers:
        return frozenset()
    found = []
    for key, shard in weight_map.items():
        m = _LAYER.search(key) if isinstance(key, str) else None
        found.append((shard, (key[: m.start()], int(m.group(1))) if m else None))
    stacks = {at[0] for _, at in found if at is not None and at[1] == layers - 1}
    built: set[str] = set()
    beyond: set[str] = set()
    for shard, at in found:
        (beyond if at is not None and at[0] in stacks and at[1] >= layers else built).add(shard)
    return frozenset(beyond - built)
