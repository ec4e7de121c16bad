"""The five rating keys: edge capture in interrupts, debounce and stuck detection in the loop.

The interrupt handler only stores a tick count and a flag in pre-allocated arrays: it must
not allocate (a hard IRQ cannot, and a soft one should not fragment the heap). Everything
else happens in `poll()`, called from the main loop. Because the edge time is latched, a
press that began and ended while the loop was busy (a blocking connect) is still seen, and
its real start time is kept.

A key is any object with `value()` (and `irq(handler=..., trigger=...)` when the hardware
has interrupts), so a lambda or a fake pin stands in for hardware in tests. All keys share
ONE handler, a bound method made once: it finds the key by the pin it is given.
"""

from array import array

try:
    from micropython import const
except ImportError:  # CPython
    const = int

from .clock import ticks_diff

PRESS = 1
STUCK = 2
RELEASED = 3

_UP = const(0)
_DOWN = const(1)
_STUCK = const(2)


class Keys:
    def __init__(self, pins, ticks, active_low: bool = True, debounce_ms: int = 30,
                 stuck_ms: int = 10000, irq_trigger: int = 3) -> None:
        n = len(pins)
        self._pins = pins
        self._ticks = ticks
        self._active = 0 if active_low else 1
        self.debounce_ms = debounce_ms
        self.stuck_ms = stuck_ms
        self._first = array("i", [0] * n)  # tick of the first edge since armed
        self._last = array("i", [0] * n)  # tick of the latest edge
        self._latched = bytearray(n)  # an edge was seen since the key was armed
        self._state = bytearray(n)
        self._down_at = [0] * n  # uptime ms of the debounced press
        self.counts = [0] * n  # physical presses since first boot (restored by the app)
        self.stuck_now = 0
        # Made once and kept (the pin may hold only a weak reference): calling a bound
        # method allocates nothing, making one does.
        self._irq = self._edge
        for p in pins:
            irq = getattr(p, "irq", None)
            if irq is not None:
                irq(handler=self._irq, trigger=irq_trigger)

    def _edge(self, pin) -> None:
        # Interrupt context: small ints and array stores only, nothing allocated.
        t = self._ticks()
        i = self._pins.index(pin)
        if not self._latched[i]:
            self._latched[i] = 1
            self._first[i] = t
        self._last[i] = t

    def handler(self, i: int):
        """The interrupt handler (the same for every key; tests call it as pin i would)."""
        return self._irq

    def poll(self, now: int, out) -> None:
        """Debounce all keys at uptime `now`; report with out(kind, key 1..5, held_ms)."""
        t = self._ticks()
        db = self.debounce_ms
        latched = self._latched
        state = self._state
        for i in range(len(self._pins)):
            down = self._pins[i].value() == self._active
            st = state[i]
            if st == _UP:
                if not latched[i]:
                    if not down:
                        continue
                    # A press without an interrupt (polling-only pin, or a lost edge).
                    latched[i] = 1
                    self._first[i] = t
                    self._last[i] = t
                if ticks_diff(t, self._last[i]) < db:
                    continue  # still bouncing
                latched[i] = 0
                if down:
                    state[i] = _DOWN
                    self._down_at[i] = now - ticks_diff(t, self._first[i])
                elif ticks_diff(self._last[i], self._first[i]) < db:
                    continue  # a glitch shorter than the debounce time
                # else: pressed and released while the loop was busy, long enough to be real
                self.counts[i] += 1
                out(PRESS, i + 1, 0)
            else:
                held = now - self._down_at[i]
                if down:
                    latched[i] = 0  # bounces while held mean nothing
                    if st == _DOWN and held >= self.stuck_ms:
                        state[i] = _STUCK
                        self.stuck_now += 1
                        out(STUCK, i + 1, held)
                    continue
                if latched[i] and ticks_diff(t, self._last[i]) < db:
                    continue  # release still bouncing
                latched[i] = 0
                state[i] = _UP
                if st == _STUCK:
                    self.stuck_now -= 1
                    out(RELEASED, i + 1, held)

    def is_stuck(self, key: int) -> bool:
        return self._state[key - 1] == _STUCK
