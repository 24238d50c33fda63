"""A minimal HTTP/1.1 server of one file's bytes on 127.0.0.1, for the fetcher's connection
tests (tests/test_links.py): what the test hub cannot be made to do.

- every path is the file: HEAD answers 200 (so a resolve stops at once), a ranged GET 206;
- keep-alive, with a log of which connection answered what (``log``);
- ``answers_per_conn``: after that many answers the server drops the connection as the next
  request arrives, unanswered — a keep-alive timeout firing as a client reuses a connection;
- ``tls``: an ``ssl.SSLContext`` to serve HTTPS with (``self_signed`` makes a certificate).
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from pathlib import Path


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, made by the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class RangeServer:
    def __init__(self, data: bytes, *, tls=None, answers_per_conn: int | None = None) -> None:
        self.data, self.tls, self.answers_per_conn = data, tls, answers_per_conn
        self.log: list[tuple[int, str, str | None, int]] = []  # (connection, method, Range, status)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, name="rangeserver", daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for c in list(self._conns):
            c.close()

    def __enter__(self) -> "RangeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()
            n += 1

    def _serve(self, conn: socket.socket, n: int) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            answered = 0
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                method, rng = request
                if self.answers_per_conn is not None and answered >= self.answers_per_conn:
                    self.log.append((n, method, rng, 0))
                    return  # dropped, unanswered
                status, head, body = self._answer(method, rng)
                self.log.append((n, method, rng, status))
                conn.sendall(head + body)
                answered += 1
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, method: str, rng: str | None) -> tuple[int, bytes, bytes]:
        size = len(self.data)
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
        if method == "GET" and m:
            a, b = int(m[1]), min(int(m[2]), size - 1)
            status, body = 206, self.data[a : b + 1]
            extra = f"Content-Range: bytes {a}-{b}/{size}\r\n"
        else:
            status, body, extra = 200, self.data if method == "GET" else b"", ""
        head = (f"HTTP/1.1 {status} {'Partial Content' if status == 206 else 'OK'}\r\n{extra}"
                f"Content-Length: {len(body) if method == 'GET' else size}\r\n\r\n").encode()
        return status, head, body


def _read_request(reader) -> tuple[str, str | None] | None:
    """(method, Range header) of the next request on a connection, or None at its end."""
    line = reader.readline()
    if not line:
        return None
    method = line.split(b" ", 1)[0].decode()
    rng = None
    while True:
        header = reader.readline()
        if header in (b"\r\n", b"\n", b""):
            return method, rng
        name, _, value = header.decode().partition(":")
        if name.strip().lower() == "range":
            rng = value.strip()
