"""The test hub's family of synthetic repos (``synthetic/repo-{n}``, ``synthetic/gated-{n}``):
made on demand, real digests, shared files, bounded memory — checked with huggingface_hub."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from netmount.dev.testhub import TestHub, family
from netmount.dev.testhub.repo import git_blob_sha1

TOKEN = "hf_family"


@pytest.fixture(scope="module")
def hub():
    with TestHub(synthetic_repos=True, tokens=[TOKEN]) as hub:
        yield hub


@pytest.fixture(autouse=True)
def _own_hf_home(tmp_path, monkeypatch):  # tokens are passed explicitly; telemetry is off (conftest)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.mark.parametrize("repo_id, parsed", [
    ("synthetic/repo-0", (0, False)), ("synthetic/repo-999999", (999999, False)), ("synthetic/gated-12", (12, True)),
    ("synthetic/repo-01", None), ("synthetic/repo-1000000", None), ("synthetic/repo-", None),
    ("synthetic/other", None), ("other/repo-1", None),
])
def test_ids_of_the_family(repo_id, parsed):
    assert family.parse(repo_id) == parsed


def test_a_family_repo_has_real_digests_and_shares_two_files(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=False)
    infos = {n: api.model_info(f"synthetic/repo-{n}", files_metadata=True) for n in (3, 4)}
    ids = {n: {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings} for n, info in infos.items()}
    assert set(ids[3]) == {"config.json", "model.safetensors", "tokenizer.json", "embed.safetensors"}
    assert infos[3].sha != infos[4].sha
    assert ids[3]["tokenizer.json"] == ids[4]["tokenizer.json"]  # shared: one git blob
    assert ids[3]["embed.safetensors"] == ids[4]["embed.safetensors"]  # shared: one LFS object
    assert ids[3]["model.safetensors"] != ids[4]["model.safetensors"]
    assert ids[3]["config.json"] != ids[4]["config.json"]
    for name, want in ids[3].items():
        got = Path(hf_hub_download("synthetic/repo-3", name, endpoint=hub.url, cache_dir=tmp_path, token=False))
        data = got.read_bytes()
        real = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(data)
        assert real == want, name
    assert json.loads((got.parent / "config.json").read_text())["repo"] == 3
    from safetensors.numpy import load_file

    weight = load_file(str(got.parent / "model.safetensors"))["weight"]
    assert weight.shape == (4, 8) and weight.dtype.name == "float32"


def test_a_gated_member_lists_but_does_not_download_without_a_token(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info("synthetic/gated-5").gated == "auto"  # as the Hub: the listing is public
    with pytest.raises(GatedRepoError):
        hf_hub_download("synthetic/gated-5", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    got = hf_hub_download("synthetic/gated-5", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
    assert json.loads(Path(got).read_text())["repo"] == 5
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("synthetic/repo-007")


def test_hundreds_of_repos_cost_bounded_memory(hub):
    family.family_repo.cache_clear()
    shas = set()
    for n in range(300):
        with urllib.request.urlopen(f"{hub.url}/api/models/synthetic/repo-{1000 + n}", timeout=30) as resp:
            shas.add(json.loads(resp.read())["sha"])
    assert len(shas) == 300
    assert family.family_repo.cache_info().currsize <= family.family_repo.cache_info().maxsize == 256
