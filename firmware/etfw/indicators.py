"""What the citizen sees and hears: per-key LEDs or one RGB LED, a buzzer, a text display.

Outputs are objects with `value(v)` (machine.Pin, or a fake). The text display is any
callable taking two lines; the reference board has none, so the app prints to the serial
console. Blinking and beeps are timed by `tick(now)` from the main loop: no timers needed.
"""

from .i18n import texts

# RGB colours as (r, g, b) on/off.
_OFF = (0, 0, 0)
_GREEN = (0, 1, 0)
_AMBER = (1, 1, 0)
_RED = (1, 0, 0)
_BLUE = (0, 0, 1)


class Indicators:
    def __init__(self, leds=None, rgb=None, buzzer=None, display=None,
                 lang: str = "zh", active_high: bool = True) -> None:
        self._leds = leds or ()
        self._rgb = rgb or ()
        self._buzzer = buzzer
        self._display = display
        self._on = 1 if active_high else 0
        self.t = texts(lang)
        self.mode = ""
        self._blink = 0  # blink period ms, 0 = steady
        self._mask = 0  # which key LEDs are lit (bit i = key i+1)
        self._colour = _OFF
        self._beep_until = -1
        self._phase = True
        self.lines = ("", "")
        self._apply()

    def _out(self, pin, lit: bool) -> None:
        pin.value(self._on if lit else 1 - self._on)

    def _apply(self) -> None:
        lit = self._phase
        for i in range(len(self._leds)):
            self._out(self._leds[i], lit and bool(self._mask & (1 << i)))
        for i in range(len(self._rgb)):
            self._out(self._rgb[i], lit and bool(self._colour[i]))

    def _text(self, a: str, b: str = "") -> None:
        self.lines = (a, b)
        if self._display is not None:
            self._display(a, b)

    def _set(self, mode: str, mask: int, colour, blink: int) -> None:
        self.mode = mode
        self._mask = mask
        self._colour = colour
        self._blink = blink
        self._phase = True
        self._apply()

    def beep(self, now: int, ms: int = 120) -> None:
        if self._buzzer is not None:
            self._buzzer.value(1)
            self._beep_until = now + ms

    def show(self, state: str, now: int, info=None) -> None:
        """Render a terminal state; `info` is the invitation or the chosen level."""
        t = self.t
        if state == "invited":
            self._set(state, 0x1F, _GREEN, 0)
            staff = ""
            if info:
                s = info.get("staff") or {}
                staff = "%s %s %s" % (s.get("name", ""), t["staff"], s.get("badge", ""))
            self._text(t["invited"], staff)
            self.beep(now, 60)
        elif state == "reason":
            self._set(state, 0x1F, _AMBER, 500)
            self._text(t["reason"], " ".join(
                "%d %s" % (i + 1, t[r]) for i, r in enumerate(info or ())))
        elif state == "thanks":
            level = info or 0
            self._set(state, 1 << (level - 1) if level else 0, _BLUE, 0)
            self._text(t["thanks"], t["levels"][level - 1] if level else "")
            self.beep(now)
        elif state == "paused":
            self._set(state, 0, _RED, 0)
            self._text(t["paused"])
        elif state == "error":
            self._set(state, 0x1F, _RED, 200)
            self._text(t["config_error"], str(info or "")[:64])
        else:
            self._set("idle", 0, _OFF, 0)
            self._text(t["idle"])

    def message(self, text: str) -> None:
        """A `display` command: a short text on the second line."""
        self._text(self.lines[0], text)

    def tick(self, now: int) -> None:
        if self._beep_until >= 0 and now >= self._beep_until:
            self._beep_until = -1
            if self._buzzer is not None:
                self._buzzer.value(0)
        if self._blink:
            phase = (now // self._blink) % 2 == 0
            if phase != self._phase:
                self._phase = phase
                self._apply()
