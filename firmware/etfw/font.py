"""The display font on flash, read one glyph at a time (format: firmware/tools/build_font.py).

Only the 8-byte header and two glyph buffers live in RAM; a wide glyph is found by a binary
search over the code point index on flash (13 reads of 2 bytes for the 7445 glyphs of the
GB 2312 build). A character the font lacks comes back as None (the screen draws a box).
"""

_NARROW = 95  # U+0020..U+007E
_INDEX = 8 + _NARROW * 16


class FontError(ValueError):
    pass


class Font:
    def __init__(self, f) -> None:
        """`f`: the font file, open for binary reading (kept open: glyphs are read on use)."""
        self._f = f
        head = f.read(8)
        if len(head) != 8 or head[:4] != b"ETF1":
            raise FontError("font: not an ETF1 file")
        self.count = (head[4] << 8) | head[5]
        self._glyphs = _INDEX + 2 * self.count
        self.narrow = bytearray(16)  # 8x16, MONO_HLSB
        self.wide = bytearray(32)  # 16x16, MONO_HLSB
        self._cp = bytearray(2)

    def _at(self, i: int) -> int:
        f = self._f
        f.seek(_INDEX + 2 * i)
        f.readinto(self._cp)
        return (self._cp[0] << 8) | self._cp[1]

    def glyph(self, cp: int):
        """(buffer, width) of code point `cp`, or None. The buffer is reused by the next call."""
        if 0x20 <= cp <= 0x7E:
            self._f.seek(8 + (cp - 0x20) * 16)
            self._f.readinto(self.narrow)
            return self.narrow, 8
        lo = 0
        hi = self.count - 1
        while lo <= hi:
            mid = (lo + hi) >> 1
            v = self._at(mid)
            if v == cp:
                self._f.seek(self._glyphs + 32 * mid)
                self._f.readinto(self.wide)
                return self.wide, 16
            if v < cp:
                lo = mid + 1
            else:
                hi = mid - 1
        return None

    def width(self, text: str) -> int:
        """Pixels `text` takes (no file access: 8 for ASCII, 16 for everything else)."""
        w = 0
        for ch in text:
            w += 8 if ord(ch) < 0x80 else 16
        return w
