"""The display screens, under CPython (etfw.fbshim) and the MicroPython unix port (the real
framebuf). Every screen is checked glyph by glyph against the font file and, when FW_SCREENS
names a folder, its framebuffer is written there (<name>.bin, 1024 bytes MONO_VLSB) for
test_fw_display.py to compare across the two runtimes and turn into PNGs.

The font comes from FW_FONT or ./font.etf (built by firmware/tools/build_font.py); under
CPython without either, the test builds one from the Debian package unifont."""

import gc
import os
import sys

import fwfakes
from etfw import screen as screen_mod
from etfw.font import Font
from etfw.indicators import Indicators
from etfw.outputs import Outputs
from etfw.screen import Screen
from etfw.terminal import Terminal

NAMES = "张伟李娜"  # staff names in the test invitations (the test font adds them)
RARE = "喆"  # in Unifont, not in GB 2312 and not in the test font: drawn as a box
_FONT = [None]


def font_path():
    p = os.getenv("FW_FONT") or _FONT[0]
    if p:
        return p
    try:
        os.stat("font.etf")  # next to the .mpy files (test_micropython*.py put it there)
        return "font.etf"
    except OSError:
        pass
    if sys.implementation.name != "cpython":
        raise OSError("FW_FONT: no font file")
    import pathlib
    import tempfile

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "firmware" / "tools"))
    import build_font

    out = pathlib.Path(tempfile.mkdtemp()) / "font.etf"
    assert build_font.main(["--charset", "prompts", "--extra", NAMES, "--out", str(out)]) == 0
    _FONT[0] = str(out)
    return _FONT[0]


class Panel(screen_mod.framebuf.FrameBuffer):
    """A 128x64 panel: the framebuffer, and `show()` counts what would go over I2C."""

    def __init__(self):
        self.buf = bytearray(1024)
        super().__init__(self.buf, 128, 64, screen_mod.framebuf.MONO_VLSB)
        self.shown = 0

    def show(self):
        self.shown += 1


def _rig(window="w07", page_ms=5000):
    f = open(font_path(), "rb")
    ind = Indicators([fwfakes.FakePin() for _ in range(5)])
    panel = Panel()
    scr = Screen(panel, Font(f), ind.text, window, page_ms)
    return scr, panel, ind, f


def _glyph_matches(panel, font, ch, x, y, rows=range(16)):
    g = font.glyph(ord(ch))
    assert g is not None, ch
    buf, w = g
    row = w // 8
    for yy in rows:
        for xx in range(w):
            bit = (buf[yy * row + (xx >> 3)] >> (7 - (xx & 7))) & 1
            if panel.pixel(x + xx, y + yy) != bit:
                return False
    return True


def _line_matches(panel, font, text, y):
    """`text` drawn centred on the line at y, as screen.py lays it out."""
    w = font.width(text)
    x = (128 - w) // 2 if w < 128 else 0
    for ch in text:
        if not _glyph_matches(panel, font, ch, x, y):
            return False
        x += 8 if ord(ch) < 0x80 else 16
    return True


def _blank(panel, y0, y1):
    for y in range(y0, y1):
        for x in range(128):
            if panel.pixel(x, y):
                return False
    return True


def _key_matches(panel, font, digit, x, y):
    """A framed key number at x: the digit inside (rows 1-14), the frame around it."""
    if not _glyph_matches(panel, font, digit, x + 1, y, range(1, 15)):
        return False
    for yy in range(16):
        if not (panel.pixel(x, y + yy) and panel.pixel(x + 9, y + yy)):
            return False
    for xx in range(10):
        if not (panel.pixel(x + xx, y) and panel.pixel(x + xx, y + 15)):
            return False
    return True


def _dump(panel, name):
    d = os.getenv("FW_SCREENS")
    if d:
        with open(d + "/" + name + ".bin", "wb") as f:
            f.write(panel.buf)


def _invite():
    return {"cmd": "invite", "cseq": 1, "txn": "T1", "ttl": 60,
            "staff": {"name": "张伟", "badge": "010233"}}


def test_idle_shows_welcome_and_window():
    scr, panel, _ind, f = _rig()
    scr.show("idle", 0)
    font = scr._font
    assert _line_matches(panel, font, "欢迎评价", 0)
    assert _blank(panel, 16, 32)
    assert _line_matches(panel, font, "窗口 w07", 32)
    assert panel.shown == 1
    _dump(panel, "idle")
    f.close()


def test_invited_shows_prompt_staff_badge_and_scale():
    scr, panel, _ind, f = _rig()
    scr.show("invited", 0, _invite())
    font = scr._font
    assert _line_matches(panel, font, "请对本次服务评价", 0)
    assert _line_matches(panel, font, "张伟", 16)
    assert _line_matches(panel, font, "工号 010233", 32)
    # The scale: key numbers 1-5 in frames, each with a bar taller than the one before.
    heights = []
    for i in range(5):
        x = 2 + 26 * i
        assert _key_matches(panel, font, "12345"[i], x, 48)
        h = 0
        while h < 16 and panel.pixel(x + 16, 63 - h):
            h += 1
        heights.append(h)
    assert heights == sorted(heights) and len(set(heights)) == 5, heights
    _dump(panel, "invited")
    f.close()


def test_reason_pages_turn_and_come_back():
    scr, panel, _ind, f = _rig(page_ms=6000)
    keys = ("attitude", "efficiency", "notice", "wait", "other")
    scr.show("reason", 1000, keys)
    font = scr._font
    assert _line_matches(panel, font, "请选择不满意原因", 0)
    # "\x02" + digit is a framed key number: 12 pixels, not a glyph of its own.
    assert _key_matches(panel, font, "1", (128 - (12 + 64)) // 2, 16)
    _dump(panel, "reason1")
    first = bytes(panel.buf)
    scr.tick(6999)
    assert scr.page == 0 and panel.shown == 1  # not before page_ms
    scr.tick(7000)
    assert scr.page == 1 and panel.shown == 2
    assert _key_matches(panel, font, "4", (128 - (12 + 80)) // 2, 16)  # 4 等候时间长
    assert _blank(panel, 48, 64)  # five reasons: the second page has two
    _dump(panel, "reason2")
    scr.tick(13000)
    assert scr.page == 0 and bytes(panel.buf) == first
    f.close()


def test_thanks_shows_the_level_chosen():
    scr, panel, ind, f = _rig()
    for level in (1, 5):
        scr.show("thanks", 0, level)
        assert _line_matches(panel, scr._font, "感谢您的评价", 0)
        text = ind.text(7 + level - 1)
        w = 12 + scr._font.width(text)
        x = (128 - w) // 2
        assert _key_matches(panel, scr._font, str(level), x, 32)
        assert _glyph_matches(panel, scr._font, text[0], x + 12, 32)
        _dump(panel, "thanks" + str(level))
    f.close()


def test_paused_and_message():
    scr, panel, _ind, f = _rig()
    scr.show("paused", 0)
    assert _blank(panel, 0, 32)
    assert _line_matches(panel, scr._font, "暂停服务", 32)
    _dump(panel, "paused")
    scr.message("12:30")
    assert _line_matches(panel, scr._font, "12:30", 48) and panel.shown == 2
    f.close()


def test_confirm_preview_reads_level_and_prompt():
    scr, panel, _ind, f = _rig()
    scr.preview(2, 0)
    assert _line_matches(panel, scr._font, "请对本次服务评价", 0)
    assert _line_matches(panel, scr._font, "再按一次确认", 48)
    _dump(panel, "confirm")
    f.close()


def test_rare_name_character_is_a_box():
    scr, panel, _ind, f = _rig()
    inv = _invite()
    inv["staff"] = {"name": "李" + RARE, "badge": "7"}
    scr.show("invited", 0, inv)
    x = (128 - 32) // 2
    assert _glyph_matches(panel, scr._font, "李", x, 16)
    x += 16
    # the box: a 12x12 outline, empty inside
    assert panel.pixel(x + 2, 18) and panel.pixel(x + 13, 29) and not panel.pixel(x + 7, 23)
    _dump(panel, "rare")
    f.close()


def test_terminal_drives_the_screen_through_outputs():
    scr, panel, ind, f = _rig()

    class Sink:
        def hold(self, *a):
            pass

        def rating(self, *a):
            pass

        def event(self, *a):
            pass

    t = Terminal(Sink(), Outputs([ind, scr]), thanks_ms=3000)
    t.start(0)
    assert scr.head == ind.text(0)
    t.command(_invite(), 100)
    assert scr.head == ind.text(1) and ind.mode == "invited"
    t.press(4, 900)
    assert scr.head == ind.text(3) and ind.mode == "thanks"
    t.tick(3900)
    assert scr.head == ind.text(0) and panel.shown == 4
    f.close()


def test_heap_and_time_per_screen():
    """Figures (not asserted beyond the budget): the heap a Screen and its font hold, and
    the time to draw and hand over each screen, on this runtime."""
    if not hasattr(gc, "mem_alloc"):
        return  # CPython: no heap figures
    import time

    gc.collect()
    before = gc.mem_alloc()
    scr, _panel, _ind, f = _rig()
    gc.collect()
    held = gc.mem_alloc() - before
    t0 = time.ticks_us()
    for _ in range(4):
        scr.show("invited", 0, _invite())
        scr.show("reason", 0, ("attitude", "efficiency", "notice", "wait", "other"))
        scr.show("thanks", 0, 5)
    per = time.ticks_diff(time.ticks_us(), t0) // 12
    gc.collect()
    fwfakes.FIGURES["display_heap_bytes"] = held
    fwfakes.FIGURES["display_render_us"] = per
    assert held < 8192, held
    f.close()
