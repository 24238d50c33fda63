"""The --hf-cache namespace over the real resolver (``remote/hub.resolve_snapshot``, through
huggingface_hub) against the test hub: what the daemon will wire in phase 2, without FUSE.
Missing and gated repos are ENOENT within seconds; the family's shared files are one content
id in every repo; thousands of lookups keep the metadata bounded."""

from __future__ import annotations

import time

import pytest

from netmount.dev.testhub import TestHub
from netmount.mounting.hfcache import HfCacheNamespace, RepoKey
from netmount.mounting.hfcache.catalog import Catalog
from netmount.mounting.hfcache.resolution import hub_resolver  # the daemon's
from netmount.mounting.namespace import DIR, NotFound, Unavailable

from conftest import within

TOKEN = "hf_family"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubroot")
    (root / "org" / "plain").mkdir(parents=True)
    (root / "org" / "plain" / "config.json").write_text("{}\n")
    with TestHub(root, synthetic_repos=True, tokens=[TOKEN]) as hub:
        yield hub


def test_repos_resolve_on_lookup_and_share_content_ids(hub):
    ns = HfCacheNamespace(hub_resolver(hub.url, None))
    try:
        shas = {}
        for n in (1, 2):
            assert ns.lookup(f"/models--synthetic--repo-{n}") is DIR
            shas[n] = ns.lookup(f"/models--synthetic--repo-{n}/refs/main").data.decode()
            assert shas[n] == hub.commit_sha(f"synthetic/repo-{n}")
        files = {n: {name: ns.lookup(f"/models--synthetic--repo-{n}/snapshots/{shas[n]}/{name}").file
                     for name in ("embed.safetensors", "tokenizer.json", "model.safetensors")} for n in (1, 2)}
        assert files[1]["embed.safetensors"].content_id == files[2]["embed.safetensors"].content_id
        assert files[1]["tokenizer.json"].content_id == files[2]["tokenizer.json"].content_id
        assert files[1]["model.safetensors"].content_id != files[2]["model.safetensors"].content_id
        assert ns.children("/") == ["models--synthetic--repo-1", "models--synthetic--repo-2"]
        assert ns.lookup("/models--org--plain/refs/main").size == 40
    finally:
        ns.close()


def test_missing_and_gated_repos_are_enoent_quickly_and_not_listed(hub):
    ns = HfCacheNamespace(hub_resolver(hub.url, None), wait_seconds=30)
    try:
        for name in ("models--synthetic--gated-3", "models--org--nothing", "datasets--org--plain"):
            started = time.monotonic()
            with pytest.raises(NotFound):
                within(60, ns.lookup, f"/{name}")
            assert time.monotonic() - started < 10, name  # a hang guard with room for a loaded machine
        assert ns.children("/") == []
        hub.reset_log()
        with pytest.raises(NotFound):
            ns.lookup("/models--synthetic--gated-3/refs/main")
        assert hub.requests() == []  # remembered: not asked again
    finally:
        ns.close()
    with_token = HfCacheNamespace(hub_resolver(hub.url, TOKEN))
    try:
        assert with_token.lookup("/models--synthetic--gated-3") is DIR
        assert with_token.children("/") == ["models--synthetic--gated-3"]
    finally:
        with_token.close()


def test_an_unreachable_hub_is_eio_not_enoent(hub, monkeypatch):
    monkeypatch.setenv("NETMOUNT_METADATA_TIMEOUT", "5")
    ns = HfCacheNamespace(hub_resolver("http://127.0.0.1:9", None))  # nothing listens there
    try:
        with pytest.raises(Unavailable):
            within(60, ns.lookup, "/models--synthetic--repo-1")
    finally:
        ns.close()


def test_a_thousand_repos_through_the_hub_keep_the_metadata_bounded(hub):
    ns = HfCacheNamespace(hub_resolver(hub.url, None), catalog=Catalog(max_repos=100, max_entries=5000))
    try:
        started = time.monotonic()
        for n in range(1000):
            key = RepoKey("model", f"synthetic/repo-{10_000 + n}")
            assert ns.lookup(f"/{key.folder}/refs/main").size == 40
        took = time.monotonic() - started
        usage = ns.usage()
        assert usage["repos"] <= 100 and usage["entries"] <= 5000 and usage["resolving"] == 0
        print(f"1,000 repos resolved on lookup in {took:.1f} s ({took:.1f} ms each), held: {usage}")
    finally:
        ns.close()
