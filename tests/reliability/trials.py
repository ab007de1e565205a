"""Fault-injection loops run a reduced count by default (CI); RELIABILITY_FULL=1 runs the full count.

    RELIABILITY_FULL=1 pytest tests/reliability      # the counts docs/reliability.md reports
"""

from __future__ import annotations

import os

FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")


def count(full: int, reduced: int) -> int:
    """How many trials a fault-injection loop runs: `full` under RELIABILITY_FULL=1, else `reduced`."""
    return full if FULL else reduced
