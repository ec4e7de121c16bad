"""CPython stand-ins for MicroPython built-ins, so the tests run the firmware's own code on
a build machine. Never imported on MicroPython (clock.py only falls back to it)."""

import time

_PERIOD = 1 << 30  # MicroPython's ticks wrap at 2**30 ms (about 12 days) on the ESP32
_HALF = _PERIOD >> 1


def ticks_ms() -> int:
    # getattr: the MicroPython stubs pyright checks this file against have no monotonic_ns.
    return (getattr(time, "monotonic_ns")() // 1000000) & (_PERIOD - 1)  # noqa: B009


def ticks_diff(a: int, b: int) -> int:
    d = (a - b) & (_PERIOD - 1)
    return d - _PERIOD if d >= _HALF else d


def ticks_add(a: int, d: int) -> int:
    return (a + d) & (_PERIOD - 1)
