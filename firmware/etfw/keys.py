"""The five rating keys: edge capture in interrupts, debounce and stuck detection in the loop.

The interrupt handler only stores a tick count and a flag in pre-allocated arrays: it must
not allocate (a hard IRQ cannot, and a soft one should not fragment the heap). Everything
else happens in `poll()`, called from the main loop. Because the edge time is latched, a
press that began and ended while the loop was busy (a blocking connect) is still seen, and
its real start time is kept.

A key is any object with `value()` (and `irq(handler=..., trigger=...)` when the hardware
has interrupts), so a lambda or a fake pin stands in for hardware in tests.
"""

from array import array

from .clock import ticks_diff

PRESS = 1
STUCK = 2
RELEASED = 3

_UP = 0
_DOWN = 1
_STUCK = 2


class Keys:
    def __init__(self, pins, ticks, active_low: bool = True, debounce_ms: int = 30,
                 stuck_ms: int = 10000, irq_trigger: int = 3) -> None:
        n = len(pins)
        self._pins = pins
        self._ticks = ticks
        self._active = 0 if active_low else 1
        self.debounce_ms = debounce_ms
        self.stuck_ms = stuck_ms
        self._first = array("i", [0] * n)  # tick of the first edge since the key was armed
        self._last = array("i", [0] * n)  # tick of the latest edge
        self._latched = bytearray(n)  # an edge was seen since the key was armed
        self._state = bytearray(n)
        self._down_at = [0] * n  # uptime ms of the debounced press
        self.counts = [0] * n  # physical presses since first boot (restored by the app)
        self.stuck_now = 0
        self._handlers = []
        for i in range(n):
            h = self._make_handler(i)
            self._handlers.append(h)  # keep a reference: the pin may hold only a weak one
            irq = getattr(pins[i], "irq", None)
            if irq is not None:
                irq(handler=h, trigger=irq_trigger)

    def _make_handler(self, i: int):
        def handler(pin) -> None:
            self._edge(i)

        return handler

    def _edge(self, i: int) -> None:
        # Interrupt context: small ints and array stores only, nothing allocated.
        t = self._ticks()
        if not self._latched[i]:
            self._latched[i] = 1
            self._first[i] = t
        self._last[i] = t

    def handler(self, i: int):
        """The interrupt handler of key i (tests call it as the pin would)."""
        return self._handlers[i]

    def poll(self, now: int, out) -> None:
        """Debounce all keys at uptime `now`; report with out(kind, key 1..5, held_ms)."""
        t = self._ticks()
        db = self.debounce_ms
        for i in range(len(self._pins)):
            down = self._pins[i].value() == self._active
            st = self._state[i]
            if st == _UP:
                if not self._latched[i]:
                    if not down:
                        continue
                    # A press without an interrupt (polling-only pin, or a lost edge).
                    self._latched[i] = 1
                    self._first[i] = t
                    self._last[i] = t
                quiet = ticks_diff(t, self._last[i])
                if quiet < db:
                    continue  # still bouncing
                self._latched[i] = 0
                age = ticks_diff(t, self._first[i])
                if down:
                    self._state[i] = _DOWN
                    self._down_at[i] = now - age
                    self.counts[i] += 1
                    out(PRESS, i + 1, 0)
                elif ticks_diff(self._last[i], self._first[i]) >= db:
                    # Pressed and released while the loop was busy: long enough to be real.
                    self.counts[i] += 1
                    out(PRESS, i + 1, 0)
                # else: a glitch shorter than the debounce time.
            else:
                held = now - self._down_at[i]
                if down:
                    self._latched[i] = 0  # bounces while held mean nothing
                    if st == _DOWN and held >= self.stuck_ms:
                        self._state[i] = _STUCK
                        self.stuck_now += 1
                        out(STUCK, i + 1, held)
                    continue
                if self._latched[i] and ticks_diff(t, self._last[i]) < db:
                    continue  # release still bouncing
                self._latched[i] = 0
                self._state[i] = _UP
                if st == _STUCK:
                    self.stuck_now -= 1
                    out(RELEASED, i + 1, held)

    def is_stuck(self, key: int) -> bool:
        return self._state[key - 1] == _STUCK
