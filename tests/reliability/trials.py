"""Fault-injection loops run a reduced count by default (CI); RELIABILITY_FULL=1 runs the full count.

    RELIABILITY_FULL=1 pytest tests/reliability      # the counts docs/reliability.md reports
"""

from __future__ import annotations

import os

FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")


def count(full: int, reduced: int) -> int:
    """How many trials a fault-injection loop runs: `full` under RELIABILITY_FULL=1, else `reduced`."""
    return full if FULL else reduced


def tree_digest(root) -> str:
    """One hash of every path and file's bytes below `root`: equal before and after means nothing was written."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()
