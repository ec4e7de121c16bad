"""Keys: debounce, glitches, presses seen late, stuck keys, counters, allocation-free IRQ."""

from etfw.keys import PRESS, RELEASED, STUCK, Keys
from fwfakes import TICKS_PERIOD, FakePin, Ticks


def _keys(**kw):
    ticks = Ticks(1000)
    pins = [FakePin(1) for _ in range(5)]  # active low, pulled up
    k = Keys(pins, ticks, True, kw.get("debounce", 30), kw.get("stuck", 10000))
    return k, pins, ticks


def _poll(k, ticks, out):
    k.poll(ticks.t, lambda kind, key, held: out.append((kind, key, held)))


def test_clean_press_after_debounce():
    k, pins, ticks = _keys()
    out = []
    pins[2].set(0)
    _poll(k, ticks, out)
    assert out == []
    ticks.advance(29)
    _poll(k, ticks, out)
    assert out == []
    ticks.advance(1)
    _poll(k, ticks, out)
    assert out == [(PRESS, 3, 0)]
    ticks.advance(500)
    _poll(k, ticks, out)
    pins[2].set(1)
    ticks.advance(40)
    _poll(k, ticks, out)
    assert out == [(PRESS, 3, 0)] and k.counts == [0, 0, 1, 0, 0]


def test_bouncing_contact_is_one_press():
    k, pins, ticks = _keys()
    out = []
    for lvl in (0, 1, 0, 1, 0):
        pins[0].set(lvl)
        ticks.advance(3)
        _poll(k, ticks, out)
    ticks.advance(30)
    _poll(k, ticks, out)
    for lvl in (1, 0, 1):  # release bounce
        pins[0].set(lvl)
        ticks.advance(2)
        _poll(k, ticks, out)
    ticks.advance(40)
    _poll(k, ticks, out)
    assert out == [(PRESS, 1, 0)] and k.counts[0] == 1


def test_glitch_shorter_than_debounce_is_ignored():
    k, pins, ticks = _keys()
    out = []
    pins[4].set(0)
    ticks.advance(2)
    pins[4].set(1)
    ticks.advance(100)
    _poll(k, ticks, out)
    assert out == [] and k.counts[4] == 0


def test_press_while_loop_was_busy_is_still_seen():
    k, pins, ticks = _keys()
    out = []
    pins[1].set(0)
    ticks.advance(120)  # the loop was blocked (connecting) during the whole press
    pins[1].set(1)
    ticks.advance(2000)
    _poll(k, ticks, out)
    assert out == [(PRESS, 2, 0)] and k.counts[1] == 1


def test_stuck_then_released():
    k, pins, ticks = _keys(stuck=10000)
    out = []
    pins[3].set(0)
    ticks.advance(30)
    _poll(k, ticks, out)
    ticks.advance(9969)
    _poll(k, ticks, out)
    assert out == [(PRESS, 4, 0)]
    ticks.advance(1)
    _poll(k, ticks, out)
    assert out[-1] == (STUCK, 4, 10000) and k.is_stuck(4) and k.stuck_now == 1
    ticks.advance(5000)
    _poll(k, ticks, out)
    assert len(out) == 2  # reported once
    pins[3].set(1)
    ticks.advance(30)
    _poll(k, ticks, out)
    assert out[-1] == (RELEASED, 4, 15030) and k.stuck_now == 0
    assert k.counts[3] == 1


def test_polling_only_pins_work():
    ticks = Ticks(0)
    levels = [1, 1, 1, 1, 1]

    class P:
        def __init__(self, i):
            self.i = i

        def value(self):
            return levels[self.i]

    k = Keys([P(i) for i in range(5)], ticks, True, 30, 10000)
    out = []
    levels[0] = 0
    _poll(k, ticks, out)
    ticks.advance(30)
    _poll(k, ticks, out)
    assert out == [(PRESS, 1, 0)]


def test_ticks_wraparound():
    k, pins, ticks = _keys()
    ticks.t = TICKS_PERIOD - 10
    out = []
    pins[0].set(0)
    ticks.advance(40)
    _poll(k, ticks, out)
    assert out == [(PRESS, 1, 0)]


def test_interrupt_handler_does_not_allocate():
    from etfw.clock import ticks_ms

    pins = [FakePin(1) for _ in range(5)]
    k = Keys(pins, ticks_ms, True, 30, 10000)  # the real tick source, as on the device
    h = k.handler(2)
    try:
        import micropython

        lock, unlock = micropython.heap_lock, micropython.heap_unlock
    except (ImportError, AttributeError):
        lock = unlock = None  # CPython: only the behaviour is checked
    if lock is not None:
        lock()
    try:
        for _ in range(10):
            h(pins[2])
    finally:
        if unlock is not None:
            unlock()
    assert k._latched[2] == 1
