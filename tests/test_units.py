import random

import pytest

from netmount.core.units import format_size, parse_size

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("text, expected", [
    ("0", 0),
    ("123", 123),
    ("512K", 512 * K),
    ("512k", 512 * K),
    ("1M", M),
    ("1MiB", M),
    ("1mib", M),
    ("1MB", M),
    ("1.5G", 3 * G // 2),
    ("50GB", 50 * G),
    ("50gb", 50 * G),
    ("2T", 2 * T),
    ("2TiB", 2 * T),
    ("1P", 1 << 50),
    ("100B", 100),
    (".5K", 512),
    ("1.3K", 1331),        # rounded down to whole bytes
    (" 64 K ", 64 * K),    # surrounding and inner spaces
    (4096, 4096),          # an int passes through
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "abc", "K", "G", "1X", "1.2.3", "1e3", "inf", "nan", "0x10", "1iB", "1GiBB",
    "1 G B", "1,5G", "٣K", "1.5", "+1G", None, 1.5, True,
])
def test_parse_size_rejects_junk(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize("text", ["-1", "-1G", " -5K", -3])
def test_parse_size_rejects_negative(text):
    with pytest.raises(ValueError, match="negative"):
        parse_size(text)


@pytest.mark.parametrize("n, expected", [
    (0, "0 B"),
    (1, "1 B"),
    (1023, "1023 B"),
    (K, "1 KiB"),
    (1536, "1.5 KiB"),
    (M - 1, "1 MiB"),        # rounds up into the next unit, never "1024 KiB"
    (M, "1 MiB"),
    (3 * G // 2, "1.5 GiB"),
    (50 * G, "50 GiB"),
    (2 * T, "2 TiB"),
    (688 * 10**9, "640.7 GiB"),
    (-2 * K, "-2 KiB"),
])
def test_format_size(n, expected):
    assert format_size(n) == expected


def test_format_parse_round_trip_random():
    rng = random.Random(11)
    for _ in range(3000):
        n = rng.randint(0, 1 << rng.randint(0, 60))
        text = format_size(n)
        number = float(text.split()[0])
        assert 1 <= number < 1024 or n == 0
        back = parse_size(text.replace(" ", ""))
        # one decimal in the chosen unit: within 5% (and exact below 1 KiB)
        assert abs(back - n) <= n * 0.05, (n, text, back)
        if n < K:
            assert back == n


def test_a_daemon_config_round_trips_with_a_view_and_its_seed():
    from netmount.mounting.daemon import DaemonConfig
    from netmount.remote.hub import RemoteFile, Snapshot

    snap = Snapshot("org/name", "main", "a" * 40, "http://127.0.0.1:1", [RemoteFile("m.safetensors", 9, "b" * 64)])
    seed = [("m.safetensors", 0, b"\n\x00head"), ("config.json", 3, b"{}\n")]
    for view, seeds in ((None, []), (b"view\nbytes", seed), (b"", seed)):
        config = DaemonConfig(snap, "/mnt", "/cache", view=view, seed=seeds)
        back = DaemonConfig.from_bytes(config.to_bytes())
        assert (back.view, back.seed, back.snapshot.files) == (view, seeds, snap.files)
    with pytest.raises(ValueError):
        DaemonConfig.from_bytes(DaemonConfig(snap, "/mnt", "/cache", seed=seed).to_bytes()[:-1])
