"""HTTP ``Range`` header -> what to send, the way S3/CloudFront behind the Hub answer.

Only a single byte range is honoured (``bytes=a-b``, ``a-``, ``-n``); a multi-range
header gets the full body with 200, like a server that does not implement multipart;
a malformed header is ignored (RFC 9110 lets a server do that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Plan:
    status: int  # 200 full, 206 partial, 416 unsatisfiable
    start: int = 0
    end: int = 0  # exclusive

    def content_range(self, total: int) -> str | None:
        if self.status == 206:
            return f"bytes {self.start}-{self.end - 1}/{total}"
        if self.status == 416:
            return f"bytes */{total}"
        return None


def plan(header: str | None, total: int) -> Plan:
    full = Plan(200, 0, total)
    if header is None or "," in header:
        return full
    m = _SINGLE.match(header)
    if m is None or (m[1] == "" and m[2] == ""):
        return full
    if m[1] == "":  # suffix: the last n bytes
        n = int(m[2])
        if n == 0 or total == 0:
            return Plan(416)
        return Plan(206, max(0, total - n), total)
    start = int(m[1])
    if m[2] != "" and int(m[2]) < start:
        return full  # syntactically invalid (last < first): ignored
    if start >= total:
        return Plan(416)
    end = total if m[2] == "" else min(total, int(m[2]) + 1)
    return Plan(206, start, end)
