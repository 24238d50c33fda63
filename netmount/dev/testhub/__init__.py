"""A Hub-compatible HTTP server for tests and demos: API, /resolve/, a signed-URL CDN.

    from netmount.dev.testhub import TestHub, synthetic
    with TestHub(root, tokens=["hf_x"]) as hub:
        HfApi(endpoint=hub.url).model_info("org/name", files_metadata=True)

``root/<org>/<name>/`` is revision ``main`` of model repo ``org/name`` (``root/datasets/<org>/<name>/``
of dataset ``datasets/org/name``, ``root/spaces/...`` of a space); a ``.gated`` file at
its top gates it.  ``synthetic_deepseek=True`` adds a 688 GB ``deepseek-ai/DeepSeek-V3``
whose bytes are generated on demand (see ``synthetic``); ``synthetic_repos=True`` a million
small repos ``synthetic/repo-{n}`` (and gated ``synthetic/gated-{n}``) made on demand, two of
their files shared by all (see ``family``).
"""

from . import synthetic
from .records import RequestRecord
from .runner import TestHub
from .server import HubError

__all__ = ["TestHub", "RequestRecord", "HubError", "synthetic"]
