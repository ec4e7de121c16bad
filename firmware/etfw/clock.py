"""Uptime and wall-clock time.

MicroPython's ticks wrap (every 2**30 ms, about 12 days), so uptime is accumulated from
tick differences on every call; the main loop calls it many times a second. Wall time
exists only after an NTP sync; before that `ts()` is None, as the protocol wants.
"""

import time

_PERIOD = 1 << 30
_HALF = _PERIOD >> 1


def _cp_ticks_ms() -> int:
    # CPython stand-in with MicroPython's wrap-around, so tests exercise the same arithmetic.
    return (getattr(time, "monotonic_ns")() // 1000000) & (_PERIOD - 1)


def _cp_ticks_diff(a: int, b: int) -> int:
    d = (a - b) & (_PERIOD - 1)
    return d - _PERIOD if d >= _HALF else d


def _cp_ticks_add(a: int, d: int) -> int:
    return (a + d) & (_PERIOD - 1)


ticks_ms = getattr(time, "ticks_ms", _cp_ticks_ms)
ticks_diff = getattr(time, "ticks_diff", _cp_ticks_diff)
ticks_add = getattr(time, "ticks_add", _cp_ticks_add)


def epoch_offset_s() -> int:
    # Ports with a 2000 epoch (older ESP32 builds) report gmtime(0) as 2000-01-01.
    return 946684800 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    def __init__(self, ticks=ticks_ms) -> None:
        self._ticks = ticks
        self._last = ticks()
        self._up = 0
        self._offset = None  # epoch ms at uptime 0, once synced
        self.syncs = 0

    def up(self) -> int:
        """Milliseconds since boot; never wraps, never goes back."""
        t = self._ticks()
        d = ticks_diff(t, self._last)
        if d > 0:
            self._up += d
        self._last = t
        return self._up

    def ticks(self) -> int:
        return self._ticks()

    def sync(self, epoch_ms: int) -> None:
        self._offset = epoch_ms - self.up()
        self.syncs += 1

    @property
    def synced(self) -> bool:
        return self._offset is not None

    def ts(self):
        """Epoch ms when synced, else None (the message then carries ts null)."""
        off = self._offset
        if off is None:
            return None
        return off + self.up()
