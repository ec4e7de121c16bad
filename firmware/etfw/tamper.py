"""The device watching itself: the reference board's tamper inputs (docs/firmware.md, wiring;
docs/detection.md, "What the hardware can add"). Loaded only when the config lists fitted parts
(`tamper`), so a board without them pays nothing and a floating pin can never accuse anyone.

- Enclosure switch (`enclosure`): normally closed to GND while the lid is shut, a pull-up
  otherwise. A change that holds for _SETTLE_MS is an `enclosure_opened` event (`closed` false
  when opened, true when shut again); open at boot is reported too (`state` "boot").
- Last gasp (`power`): the supply sense reads 0 when the 5 V input is gone and the board runs on
  its hold-up capacitor. The `power_lost` event is published at once, not queued behind the
  outbox (the capacitor holds for one publish); kept on flash if the link is down.
- Key ladder (`ladder`): each key also switches its own resistor to GND under one pull-up, read
  by one ADC pin, so the ladder says which key is physically down. Sampled every loop step and
  compared with the key GPIOs: a key down on its GPIO but not on the ladder (rewired to another
  level, ladder cut), or a key on the ladder with no GPIO down (its GPIO wire cut: a dead key),
  is a mismatch. Two keys down at once is not judged (their resistors are in parallel). A
  mismatch counts once it has held for _HOLD_MS (contacts bounce at different moments) and is
  reported as `key_selftest_failed` only on its second occurrence in a boot (one glitch accuses
  nobody); then at most once per key per _REPORT_EVERY_MS.
"""

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_SETTLE_MS = const(200)
_HOLD_MS = const(60)  # two debounce times
_REPORT_EVERY_MS = const(3600000)
_IDLE = const(0)
_NO_BAND = const(-1)

# The reference ladder: key k's resistor (1 k, 2.2 k, 4.7 k, 10 k, 22 k) to GND under a 10 k
# pull-up to 3.3 V, in mV as ADC.read_uv() reports them (eFuse-calibrated); the last is no key
# down (the ESP32's ADC at 11 dB tops out near 3.1 V). A board whose parts differ gives its
# own measured levels as board.ladder_mv.
LADDER_MV = (300, 595, 1056, 1650, 2269, 3100)


def classify(mv: int, levels) -> int:
    """The key (1-5) whose level `mv` is nearest, 0 for the idle level, -1 for a voltage no
    key makes (farther from the nearest level than 45 % of the gap to its neighbour)."""
    best = 0
    for i in range(1, 6):
        if abs(mv - levels[i]) < abs(mv - levels[best]):
            best = i
    lv = levels[best]
    gap = min(abs(lv - levels[i]) for i in range(6) if i != best)
    if abs(mv - lv) * 100 > gap * 45:
        return _NO_BAND
    return _IDLE if best == 5 else best + 1


class Tamper:
    def __init__(self, hw: dict, fitted, key_active: int, levels=None) -> None:
        """hw: "keys" (the five key pins), "enclosure", "power", "ladder" (objects with
        value() or read_uv()); fitted: the parts the config lists; key_active: the level a
        pressed key's GPIO reads."""
        self._encl = hw.get("enclosure") if "enclosure" in fitted else None
        self._power = hw.get("power") if "power" in fitted else None
        self._ladder = hw.get("ladder") if "ladder" in fitted else None
        self._keys = hw["keys"]
        self._active = key_active
        self._levels = levels or LADDER_MV
        self._encl_open = False
        self._encl_since = 0
        self._encl_seen = 0  # the raw reading being settled
        self._gasped = False
        self._mis = None  # (gpio key or 0, ladder class) of the mismatch being held
        self._mis_since = 0
        self._mis_counted = False
        self._seen = bytearray(6)  # mismatch occurrences per key (0: none identified)
        self._reported = [-1] * 6  # uptime of the last report per key, -1: none
        self.mismatches = 0

    def start(self, now: int, dev) -> None:
        e = self._encl
        if e is not None and e.value():
            self._encl_open = True
            self._encl_seen = 1
            dev.event("enclosure_opened", {"closed": False, "state": "boot"})

    def poll(self, now: int, dev) -> None:
        e, pw, lad = self._encl, self._power, self._ladder
        if e is not None:
            self._enclosure(e, now, dev)
        if pw is not None:
            self._supply(pw, dev)
        if lad is not None:
            self._sample(lad, now, dev)

    def _enclosure(self, pin, now: int, dev) -> None:
        v = 1 if pin.value() else 0
        if v != self._encl_seen:
            self._encl_seen = v
            self._encl_since = now
            return
        if (v == 1) == self._encl_open or now - self._encl_since < _SETTLE_MS:
            return
        self._encl_open = v == 1
        dev.event("enclosure_opened", {"closed": not self._encl_open,
                                       "state": "opened" if self._encl_open else "shut"})

    def _supply(self, pin, dev) -> None:
        up = pin.value()
        if up and self._gasped:
            self._gasped = False  # a brown-out the board rode out: armed again
        elif not up and not self._gasped:
            self._gasped = True
            data = {}
            read = getattr(pin, "read_uv", None)
            if read is not None:
                data["vcc_mv"] = read() // 1000
            dev.urgent_event("power_lost", data)

    def _sample(self, adc, now: int, dev) -> None:
        down = 0
        for i in range(5):
            if self._keys[i].value() == self._active:
                if down:
                    self._mis = None  # two keys: resistors in parallel, not judged
                    return
                down = i + 1
        mv = adc.read_uv() // 1000
        cls = classify(mv, self._levels)
        if cls == down:
            self._mis = None
            return
        m = (down, cls)
        if m != self._mis:
            self._mis = m
            self._mis_since = now
            self._mis_counted = False
            return
        if self._mis_counted or now - self._mis_since < _HOLD_MS:
            return
        self._mis_counted = True
        self.mismatches += 1
        key = down or (cls if cls > 0 else 0)
        self._seen[key] = min(self._seen[key] + 1, 255)
        last = self._reported[key]
        if self._seen[key] < 2 or (last >= 0 and now - last < _REPORT_EVERY_MS):
            return
        self._reported[key] = now
        keys = sorted(set(k for k in (down, cls) if k > 0))
        dev.event("key_selftest_failed", {"keys": keys,
                                          "adc": [mv]})
