"""The fetcher's blocking connections (netmount/remote/links.py), against a server of our own
(tests/rangeserver.py) where the test hub cannot do what is needed: keep-alive per thread
and host, a keep-alive connection the server dropped sent again without a retry, TLS with
the default SSL context.  In this process: no FUSE, so threads are fine."""

from __future__ import annotations

import os
import ssl

import pytest

from netmount.core.errors import FetchError
from netmount.remote.contract import fetch_bytes
from netmount.remote.fetch import RangeFetcher
from netmount.remote.hub import RemoteFile

from rangeserver import RangeServer, self_signed

M = 1 << 20
WAIT = 60  # seconds: a hang guard only
DATA = os.urandom(3 * M + 12345)
FILE = RemoteFile("data.bin", len(DATA), "cid", lfs=True)


def fetcher_for(server: RangeServer, **options) -> RangeFetcher:
    return RangeFetcher(server.url, "org/x", "a" * 40, **options).start()


def read_all(fetcher: RangeFetcher, step: int, prefetch: bool = False) -> None:
    """The file in ranges of ``step``, one after the other (one request each when
    ``prefetch``; a demand read of 512 KiB or more goes out as parallel sub-requests)."""
    for a in range(0, len(DATA), step):
        b = min(len(DATA), a + step)
        assert fetch_bytes(fetcher, FILE, a, b, prefetch=prefetch).result(timeout=WAIT) == DATA[a:b]


def test_a_thread_keeps_its_connection():
    """One thread, one host: every request on one keep-alive connection; one resolve."""
    with RangeServer(DATA) as server:
        fetcher = fetcher_for(server, connections=1)
        try:
            read_all(fetcher, M // 3)
        finally:
            fetcher.close()
    assert {conn for conn, *_ in server.log} == {0}
    assert [method for _, method, _, _ in server.log].count("HEAD") == 1
    assert len(server.log) == 1 + -(-len(DATA) // (M // 3))


def test_a_keep_alive_connection_the_server_dropped_is_sent_again_not_retried():
    """The server answers once per connection, then drops it as the next request comes in
    (its keep-alive timeout, racing the client): each such request goes out once more on a
    new connection, and the bytes are right, with no retry, no error, no backoff."""
    with RangeServer(DATA, answers_per_conn=1) as server:
        fetcher = fetcher_for(server, connections=1, max_retries=0)
        try:
            read_all(fetcher, M, prefetch=True)
        finally:
            fetcher.close()
        c = fetcher.counters
        assert (c.get("retries"), c.get("errors")) == (0, 0)
    gets = -(-len(DATA) // M)
    answered = [e for e in server.log if e[3]]
    dropped = [e for e in server.log if not e[3]]
    assert len(answered) == 1 + gets and len(dropped) == gets  # every GET met a dropped connection
    assert len({conn for conn, *_ in answered}) == len(answered)  # one answer per connection


@pytest.fixture
def tls_server(tmp_path):
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with RangeServer(DATA, tls=context) as server:
        server.cert = cert
        yield server


def test_https_with_the_default_context_and_its_ca_from_ssl_cert_file(tls_server, monkeypatch):
    """HTTPS: resolve and ranged GETs (a demand read goes out as parallel sub-requests, each
    on a TLS connection of its own thread), the CA trusted the way users add one."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))
    fetcher = fetcher_for(tls_server)
    try:
        assert fetch_bytes(fetcher, FILE, 7, 2 * M + 99).result(timeout=WAIT) == DATA[7 : 2 * M + 99]
        read_all(fetcher, M)
    finally:
        fetcher.close()
    assert len({conn for conn, *_ in tls_server.log}) > 1
    assert all(status in (200, 206) for *_, status in tls_server.log)


def test_https_to_an_untrusted_certificate_fails_at_once(tls_server, monkeypatch):
    """The default context verifies: a certificate no CA vouches for is a FetchError, not
    retried (retrying cannot make it trusted)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    fetcher = fetcher_for(tls_server, max_retries=3, backoff=5.0)
    try:
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch_bytes(fetcher, FILE, 0, 1000).result(timeout=WAIT)
        assert fetcher.counters.get("retries") == 0 and fetcher.counters.get("errors") == 1
    finally:
        fetcher.close()
    assert tls_server.log == []  # no request got through
