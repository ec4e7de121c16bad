"""What the citizen sees and hears: per-key LEDs or one RGB LED, a buzzer, a text display.

Outputs are objects with `value(v)` (machine.Pin, or a fake). The text display is any
callable taking two lines; the reference board has none, so the app prints to the serial
console. Blinking and beeps are timed by `tick(now)` from the main loop: no timers needed.
"""

try:
    from micropython import const
except ImportError:  # CPython
    const = int

# Line numbers in i18n.texts().
_IDLE = const(0)
_INVITED = const(1)
_REASON = const(2)
_THANKS = const(3)
_PAUSED = const(4)
_ERROR = const(5)
_STAFF = const(6)
_LEVEL1 = const(7)
_REASON1 = const(12)
REASONS = ("attitude", "efficiency", "notice", "wait", "facility", "other")  # i18n order

# RGB colours: bit 0 red, bit 1 green, bit 2 blue.
_GREEN = const(2)
_AMBER = const(3)
_RED = const(1)
_BLUE = const(4)


class Indicators:
    def __init__(self, leds=None, rgb=None, buzzer=None, display=None,
                 lang: str = "zh", active_high: bool = True) -> None:
        from . import i18n, unload

        self._texts = i18n.texts(lang)
        unload("i18n")  # only the chosen language's texts stay (one string)
        self._outs = list(leds or ()) + list(rgb or ())
        self._nleds = len(leds or ())
        self._buzzer = buzzer
        self._display = display
        self._on = 1 if active_high else 0
        self.mode = ""
        self._blink = 0  # blink period ms, 0 = steady
        self._lit = 0  # bits 0-4: key LEDs (key i+1), then the RGB channels
        self._beep_until = -1
        self._phase = True
        self.lines = ("", "")
        self._apply()

    def text(self, i: int) -> str:
        """Line i of the texts (see i18n.py for the order)."""
        s = self._texts
        a = 0
        for _ in range(i):
            a = s.index("\n", a) + 1
        b = s.find("\n", a)
        return s[a:] if b < 0 else s[a:b]

    def _apply(self) -> None:
        on = self._on
        lit = self._lit if self._phase else 0
        for i in range(len(self._outs)):
            self._outs[i].value(on if lit & (1 << i) else 1 - on)

    def _text(self, a: str, b: str = "") -> None:
        self.lines = (a, b)
        if self._display is not None:
            self._display(a, b)

    def _set(self, mode: str, mask: int, colour: int, blink: int) -> None:
        self.mode = mode
        self._lit = (mask & ((1 << self._nleds) - 1)) | (colour << self._nleds)
        self._blink = blink
        self._phase = True
        self._apply()

    def beep(self, now: int, ms: int = 120) -> None:
        if self._buzzer is not None:
            self._buzzer.value(1)
            self._beep_until = now + ms

    def show(self, state: str, now: int, info=None) -> None:
        """Render a terminal state; `info` is the invitation or the chosen level."""
        t = self.text
        if state == "invited":
            self._set(state, 0x1F, _GREEN, 0)
            staff = ""
            if info:
                s = info.get("staff") or {}
                staff = "{} {} {}".format(s.get("name", ""), t(_STAFF), s.get("badge", ""))
            self._text(t(_INVITED), staff)
            self.beep(now, 60)
        elif state == "reason":
            self._set(state, 0x1F, _AMBER, 500)
            self._text(t(_REASON), " ".join(
                f"{i + 1:d} {t(_REASON1 + REASONS.index(r))}"
                for i, r in enumerate(info or ())))
        elif state == "thanks":
            level = info or 0
            self._set(state, 1 << (level - 1) if level else 0, _BLUE, 0)
            self._text(t(_THANKS), t(_LEVEL1 + level - 1) if level else "")
            self.beep(now)
        elif state == "paused":
            self._set(state, 0, _RED, 0)
            self._text(t(_PAUSED))
        elif state == "error":
            self._set(state, 0x1F, _RED, 200)
            self._text(t(_ERROR), str(info or "")[:64])
        else:
            self._set("idle", 0, 0, 0)
            self._text(t(_IDLE))

    def preview(self, key: int, now: int, reason=None) -> None:
        """Confirm mode: the pressed key's LED alone, blinking fast (a pattern, not a colour)."""
        self._set("preview", 1 << (key - 1), _AMBER, 150)
        self.beep(now, 30)

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
