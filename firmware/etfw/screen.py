"""The display: a 128x64 1-bit panel (SSD1306 / SSD1309 OLED), driven by the terminal's state
changes like the indicators (show / message / preview / tick; see terminal.py).

`fb` is the panel: a framebuf.FrameBuffer (MONO_VLSB, 128x64) with a `show()` that sends the
buffer to the panel; micropython-lib's ssd1306.SSD1306_I2C is exactly that. `font` is an
etfw.font.Font (glyphs read from flash one at a time); `text` gives line i of the texts
(Indicators.text: one copy of the texts in RAM). Four lines of 16 pixels: a fixed first line
(what to do) and a body of up to three lines; a longer body (the reason choices) turns its
pages every `page_ms`, slow enough for elderly citizens (config display.page_ms).

Nothing depends on colour (there is none): every level and reason carries its key number in
a frame, the same number as on the key cap.
"""

try:
    import framebuf
except ImportError:  # CPython: the build machine's stand-in
    from . import fbshim as framebuf

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_W = const(128)
_LINE = const(16)
_ROWS = const(3)  # body lines under the first line
_SCALE = "\x01"  # body line drawn as the five-level scale (key numbers and rising bars)
_KEY = "\x02"  # prefix: the next character is a key number, drawn in a frame

# Line numbers in i18n.texts() (as in indicators.py).
_IDLE = const(0)
_INVITED = const(1)
_REASON = const(2)
_THANKS = const(3)
_PAUSED = const(4)
_ERROR = const(5)
_STAFF = const(6)
_LEVEL1 = const(7)
_REASON1 = const(12)
_WINDOW = const(18)
_CONFIRM = const(19)
_NOTICE_SHORT = const(20)
REASONS = ("attitude", "efficiency", "notice", "wait", "facility", "other")  # i18n order


class Screen:
    def __init__(self, fb, font, text, window: str = "", page_ms: int = 5000) -> None:
        self._fb = fb
        self._font = font
        self._t = text
        self.window = window
        self.page_ms = page_ms
        self._gn = framebuf.FrameBuffer(font.narrow, 8, 16, framebuf.MONO_HLSB)
        self._gw = framebuf.FrameBuffer(font.wide, 16, 16, framebuf.MONO_HLSB)
        self.head = ""
        self.body = ()
        self.note = ""
        self.page = 0
        self._turn_at = -1
        self.renders = 0

    # --- drawing ---------------------------------------------------------------------------

    def _text(self, s: str, x: int, y: int) -> None:
        fb = self._fb
        font = self._font
        i = 0
        n = len(s)
        while i < n and x < _W:
            ch = s[i]
            i += 1
            if ch == _KEY and i < n:
                ch = s[i]
                i += 1
                g = font.glyph(ord(ch))
                if g is not None:
                    fb.blit(self._gn, x + 1, y)
                fb.rect(x, y, 10, _LINE, 1)  # after the glyph: its blank rows would cut it
                x += 12
                continue
            g = font.glyph(ord(ch))
            if g is None:  # not in the font (a rare name character): a box in its place
                fb.rect(x + 2, y + 2, 12, 12, 1)
                x += 16
            else:
                fb.blit(self._gn if g[1] == 8 else self._gw, x, y)
                x += g[1]

    def _centre(self, s: str, y: int) -> None:
        w = self._font.width(s) - 4 * s.count(_KEY)  # a framed key number is 12 pixels
        self._text(s, (_W - w) // 2 if w < _W else 0, y)

    def _scale(self, y: int) -> None:
        fb = self._fb
        for i in range(5):
            x = 2 + 26 * i
            self._text(_KEY + "12345"[i], x, y)
            h = 3 * (i + 1)
            fb.fill_rect(x + 13, y + _LINE - h, 8, h, 1)

    def render(self) -> None:
        fb = self._fb
        fb.fill(0)
        self._centre(self.head, 0)
        body = self.body
        first = self.page * _ROWS
        for r in range(_ROWS):
            j = first + r
            if j >= len(body):
                break
            line = body[j]
            y = _LINE * (r + 1)
            if line == _SCALE:
                self._scale(y)
            else:
                self._centre(line, y)
        if self.note:
            fb.fill_rect(0, 3 * _LINE, _W, _LINE, 0)
            self._centre(self.note, 3 * _LINE)
        fb.show()
        self.renders += 1

    def _set(self, now: int, head: str, body=()) -> None:
        self.head = head
        self.body = body
        self.note = ""
        self.page = 0
        self._turn_at = now + self.page_ms if len(body) > _ROWS else -1
        self.render()

    # --- the terminal's outputs ---------------------------------------------------------------

    def _level(self, level: int) -> str:
        return _KEY + "12345"[level - 1] + self._t(_LEVEL1 + level - 1)

    def _reason(self, i: int, r: str) -> str:
        k = REASONS.index(r)
        return _KEY + "12345"[i] + self._t(_NOTICE_SHORT if r == "notice" else _REASON1 + k)

    def show(self, state: str, now: int, info=None) -> None:
        t = self._t
        if state == "invited":
            s = (info or {}).get("staff") or {}
            badge = s.get("badge", "")
            self._set(now, t(_INVITED), (s.get("name", ""),
                                         t(_STAFF) + " " + badge if badge else "", _SCALE))
        elif state == "reason":
            self._set(now, t(_REASON), tuple(self._reason(i, r) for i, r in enumerate(info or ())))
        elif state == "thanks":
            self._set(now, t(_THANKS), ("", self._level(info)) if info else ())
        elif state == "paused":
            self._set(now, "", ("", t(_PAUSED)))
        elif state == "error":
            self._set(now, t(_ERROR), (str(info or "")[:16],))
        else:
            w = self.window
            self._set(now, t(_IDLE), ("", t(_WINDOW) + " " + w if w else ""))

    def preview(self, level: int, now: int, reason=None) -> None:
        """Confirm mode: the key pressed, before it counts (see terminal.py)."""
        if reason:
            head, line = self._t(_REASON), self._reason(level - 1, reason)
        else:
            head, line = self._t(_INVITED), self._level(level)
        self._set(now, head, ("", line, self._t(_CONFIRM)))

    def message(self, text: str) -> None:
        """A `display` command: the last line, until the next screen."""
        self.note = text
        self.render()

    def tick(self, now: int) -> None:
        if self._turn_at >= 0 and now >= self._turn_at:
            pages = (len(self.body) + _ROWS - 1) // _ROWS
            self.page = (self.page + 1) % pages
            self._turn_at = now + self.page_ms
            self.render()
