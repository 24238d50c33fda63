"""``Recent``: a dict that keeps only its most recently written keys.

For state kept per file or per folder that a long-lived mount would otherwise grow without
end (``--hf-cache`` reads files of thousands of repos): losing the oldest entry costs a
decision made afresh (a sequential run restarted, a folder's order read again), never a
wrong byte.  Not thread-safe: its owner's lock guards it.
"""

from __future__ import annotations

from collections import OrderedDict


class Recent(OrderedDict):
    """At most ``max_items`` keys; writing a key (``d[k] = v``, ``setdefault``) makes it the
    newest, and the oldest goes once there are too many."""

    def __init__(self, max_items: int) -> None:
        super().__init__()
        self.max_items = max_items

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_items:
            self.popitem(last=False)

    def add(self, key) -> None:
        """Use as a set: ``key in d`` after ``d.add(key)``."""
        self[key] = None
