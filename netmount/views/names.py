"""Which view file a tensor goes to under ``--reshard layer`` / ``--reshard expert`` (issue 12).

The names are the ones layer-by-layer loaders (AirLLM's split folders) use:
``<prefix>.layers.<N>.<rest>`` -> ``<prefix>.layers.<N>.safetensors`` (DeepSeek-V3's MTP layer
61 is just ``model.layers.61``); a routed expert's tensors
``<prefix>.layers.<N>.<moe>.experts.<E>.<rest>`` (``<moe>`` = ``mlp`` for DeepSeek-V3 and
Qwen-MoE, ``block_sparse_moe`` for Mixtral) -> ``<prefix>.layers.<N>.<moe>.experts.<E>.safetensors``
under ``expert``; any other tensor -> its module, i.e. its name without the last dotted part
(``lm_head.weight`` -> ``lm_head.safetensors``).  Shared experts (``mlp.shared_experts``,
Qwen's ``mlp.shared_expert``) are not routed experts: they stay in their layer's file.
"""

from __future__ import annotations

import re

SUFFIX = ".safetensors"
MOE_MODULES = ("mlp", "block_sparse_moe")

# Leftmost "layers.<N>." at the start of the name or after a dot.
_LAYER = re.compile(r"(?:^|\.)layers\.\d+\.")
# A routed expert: "<...>layers.<N>.<moe>.experts.<E>." -> groups: head (up to "experts."), E.
_EXPERT = re.compile(r"^((?:.*\.)?layers\.\d+\.(?:%s)\.experts\.)(\d+)\." % "|".join(MOE_MODULES))


def layer_file(name: str) -> str:
    """View file of ``name`` under ``--reshard layer``."""
    m = _LAYER.search(name)
    if m:
        return name[: m.end() - 1] + SUFFIX
    module = name.rpartition(".")[0]
    return (module or name) + SUFFIX


def expert_of(name: str) -> tuple[str, int, str] | None:
    """``(head, E, rest)`` of a routed expert's tensor (``head`` ends in ``experts.``), else None."""
    m = _EXPERT.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2)), name[m.end():]


def expert_file(name: str) -> str:
    """View file of ``name`` under ``--reshard expert``."""
    e = expert_of(name)
    if e is None:
        return layer_file(name)
    return f"{e[0]}{e[1]}{SUFFIX}"


def file_for(name: str, reshard: str) -> str:
    if reshard == "layer":
        return layer_file(name)
    if reshard == "expert":
        return expert_file(name)
    raise ValueError(f"unknown reshard mode {reshard!r}")
