"""A stand-in for MicroPython's `framebuf`, for CPython only (the build machine and the
simulator): the few calls screen.py makes, on the same byte layouts (MONO_VLSB for the
panel, MONO_HLSB for glyphs), so the same screen code renders the same bytes. The tests
compare its buffers with the real framebuf's on the MicroPython unix port, pixel for pixel.
Never imported on MicroPython."""

MONO_VLSB = 0
MONO_HLSB = 3


class FrameBuffer:
    def __init__(self, buf, width: int, height: int, fmt: int) -> None:
        if fmt not in (MONO_VLSB, MONO_HLSB):
            raise ValueError("fbshim: MONO_VLSB or MONO_HLSB only")
        self.buf = buf
        self.width = width
        self.height = height
        self.fmt = fmt

    def pixel(self, x: int, y: int, c=None):
        if not (0 <= x < self.width and 0 <= y < self.height):
            return None
        if self.fmt == MONO_VLSB:
            i, bit = (y >> 3) * self.width + x, y & 7
        else:
            i, bit = (y * ((self.width + 7) >> 3)) + (x >> 3), 7 - (x & 7)
        if c is None:
            return (self.buf[i] >> bit) & 1
        if c:
            self.buf[i] |= 1 << bit
        else:
            self.buf[i] &= ~(1 << bit) & 0xFF
        return None

    def fill(self, c: int) -> None:
        v = 0xFF if c else 0
        for i in range(len(self.buf)):
            self.buf[i] = v

    def fill_rect(self, x: int, y: int, w: int, h: int, c: int) -> None:
        for yy in range(max(y, 0), min(y + h, self.height)):
            for xx in range(max(x, 0), min(x + w, self.width)):
                self.pixel(xx, yy, c)

    def rect(self, x: int, y: int, w: int, h: int, c: int, f: bool = False) -> None:
        if f:
            self.fill_rect(x, y, w, h, c)
            return
        self.fill_rect(x, y, w, 1, c)
        self.fill_rect(x, y + h - 1, w, 1, c)
        self.fill_rect(x, y, 1, h, c)
        self.fill_rect(x + w - 1, y, 1, h, c)

    def blit(self, src: "FrameBuffer", x: int, y: int, key: int = -1) -> None:
        for sy in range(src.height):
            for sx in range(src.width):
                c = src.pixel(sx, sy)
                if c != key:
                    self.pixel(x + sx, y + sy, c)
