"""Uptime and wall-clock time.

MicroPython's ticks wrap (every 2**30 ms, about 12 days), so uptime is accumulated from
tick differences on every call; the main loop calls it many times a second. Wall time
exists only after an NTP sync; before that `ts()` is None, as the protocol wants.
"""

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython (tests): the same wrap-around arithmetic
    from .cpython import ticks_add, ticks_diff, ticks_ms  # noqa: F401  (ticks_add: tests)


class Clock:
    def __init__(self, ticks=ticks_ms) -> None:
        self._ticks = ticks
        self._last = ticks()
        self._up = 0
        self._offset = 0  # epoch ms at uptime 0, once synced
        self.synced = False
        self.syncs = 0

    def up(self) -> int:
        """Milliseconds since boot; never wraps, never goes back."""
        t = self._ticks()
        d = ticks_diff(t, self._last)  # pyright: ignore[reportArgumentType]  (ticks: any source)
        if d > 0:
            self._up += d
        self._last = t
        return self._up

    def sync(self, epoch_ms: int) -> None:
        self._offset = epoch_ms - self.up()
        self.synced = True
        self.syncs += 1

    def ts(self):
        """Epoch ms when synced, else None (the message then carries ts null)."""
        return self._offset + self.up() if self.synced else None
