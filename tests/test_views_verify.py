"""``netmount verify`` on a view mount: it checks the repo's files (what the cache holds), and
a drop also evicts the kernel's pages of the view files cut from the dropped file."""

from __future__ import annotations

import hashlib
import json

import pytest

from netmount.core.safetensors import parse_header

from conftest import run_cli
from faultkit import fhub, fm  # noqa: F401 (fixtures)

REPO = "views/model"


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory):
    import numpy as np
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("viewverifyroot")
    repo = root / "views" / "model"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(3)
    save_file({"a.weight": rng.standard_normal((300, 600), dtype=np.float32),
               "b.weight": rng.standard_normal((200, 600), dtype=np.float32)},
              str(repo / "model.safetensors"), metadata={"format": "np"})
    (repo / "config.json").write_text("{}")
    return root


def test_a_lie_under_a_view_is_caught_and_its_view_files_heal(fm, fhub, fault_root):  # noqa: F811
    src = (fault_root / "views" / "model" / "model.safetensors").read_bytes()
    want = {t.name: src[t.start:t.end] for t in parse_header(src, len(src))}
    mp = fm.mount(REPO, "--reshard", "layer")  # a.safetensors, b.safetensors: all of the source
    fhub.set_faults([{"kind": "lie", "path_contains": hashlib.sha256(src).hexdigest()}])

    def tensors() -> dict[str, bytes]:
        out = {}
        for name in ("a.safetensors", "b.safetensors"):
            data = (mp / name).read_bytes()
            out.update({t.name: data[t.start:t.end] for t in parse_header(data, len(data))})
        return out

    done = run_cli("prefetch", str(mp), "--quiet")  # every source block, lied about, stored
    assert done.returncode == 0, done.stderr
    assert tensors() != want  # the lie went through, unseen, into the kernel's pages too
    done = run_cli("verify", str(mp), "--fetch", "--json")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "shows a view" in done.stderr
    done = run_cli("verify", str(mp), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    records = {r["path"]: r for r in json.loads(done.stdout)}
    assert records["model.safetensors"]["status"] == "mismatch"
    fhub.clear_faults()
    # the view files' pages were evicted with the dropped source: read afresh, right
    assert tensors() == want
