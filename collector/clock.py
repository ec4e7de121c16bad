"""The wall clock, in the one unit the collector uses for time: milliseconds since the epoch.

Cores never read it themselves: they take `now_ms` values (or a clock callable) as arguments, so
they stay deterministic under test and in simulated time.
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000_000
