"""Human sizes for flags and reports: ``parse_size("50G")`` and ``format_size(n)``.

Units are powers of 1024 whatever their spelling (K, KB, KiB are all 1024): cache and
block sizes are about memory and disk, and a user typing ``50GB`` means "about 50 G",
not a different number from ``50G``.
"""

from __future__ import annotations

import re
from fractions import Fraction

_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?b)?", re.IGNORECASE | re.ASCII)
_NAMES = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``123``, ``512K``, ``1M``, ``1MiB``, ``1.5G``, ``50GB``, ``2T``.

    Case-insensitive; a fraction is rounded down to whole bytes (``1.3K`` -> 1331), but a
    fraction of a byte with no unit is junk. Raises ``ValueError`` with a one-line message.
    Zero is returned as 0; whether it is allowed is the caller's business.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{text!r} is not a size")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    s = text.strip()
    if s.startswith("-"):
        raise ValueError(f"size must not be negative: {text!r}")
    m = _SIZE.fullmatch(s)
    if m is None or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise ValueError(f"{text!r} is not a size (examples: 123, 512K, 1.5G, 50GB, 2TiB)")
    number, prefix = Fraction(m.group(1)), m.group(2).lower()
    value = number * 1024 ** _POWERS[prefix]
    if not prefix and value.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)  # rounds toward zero, i.e. down


def format_size(n: int) -> str:
    """``n`` bytes for people: ``"512 B"``, ``"1.5 GiB"``, ``"2 TiB"`` (one decimal at most)."""
    sign, n = ("-", -n) if n < 0 else ("", n)
    power = 0
    while power < len(_NAMES) - 1 and round(n / 1024 ** power, 1) >= 1024:
        power += 1
    if power == 0:
        return f"{sign}{n} B"
    text = f"{n / 1024 ** power:.1f}".removesuffix(".0")
    return f"{sign}{text} {_NAMES[power]}"
