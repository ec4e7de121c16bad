"""The whole device with a display and a voice module: an invitation shows the staff member
and speaks, a confirmed key press is rated; and what the two cost on the device's heap."""

import gc
import os
import sys

from etfw import screen as screen_mod
from etfw.voice import frame
from fwfakes import FIGURES
from fwrig import Rig


def _font():
    p = os.getenv("FW_FONT")
    if p:
        return p
    try:
        os.stat("font.etf")  # next to the .mpy files (test_micropython*.py)
        return "font.etf"
    except OSError:
        if sys.implementation.name != "cpython":
            raise
    import test_fw_screen  # CPython: builds one from the Debian package unifont

    return test_fw_screen.font_path()


class Panel(screen_mod.framebuf.FrameBuffer):
    def __init__(self):
        self.buf = bytearray(1024)
        super().__init__(self.buf, 128, 64, screen_mod.framebuf.MONO_VLSB)
        self.shown = 0

    def show(self):
        self.shown += 1


class Uart:
    def __init__(self):
        self.sent = []

    def write(self, b):
        self.sent.append(bytes(b))


def _live():
    gc.collect()
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0


def test_invitation_shows_speaks_and_a_confirmed_key_is_rated():
    panel = Panel()
    uart = Uart()
    f = open(_font(), "rb")
    r = Rig(more_hw={"screen": panel, "font": f, "voice": uart}, confirm_ms=4000,
            display={"page_ms": 5000}, voice={"volume": 12})
    assert uart.sent[:2] == [frame(0x09, 2), frame(0x06, 12)]
    scr = r.dev.out.parts[1]
    assert scr.head == r.dev.ui.text(0) and panel.shown == 1
    r.run(100)
    r.cmd(1, "invite", txn="T9", staff={"name": "李娜", "badge": "0421"}, ttl=60)
    r.run(100)
    assert r.dev.term.state == "invited" and scr.body[0] == "李娜"
    assert uart.sent[-1] == frame(0x0F, 0x0106)  # the confirm-mode invitation
    r.press(4)
    assert uart.sent[-1] == frame(0x0F, 0x010E) and not r.broker.messages("rating")
    r.press(4)
    r.run(200)
    ratings = r.broker.messages("rating")
    assert [(m["level"], m["txn"]) for m in ratings] == [(4, "T9")]
    assert uart.sent[-1] == frame(0x0F, 0x0103) and scr.head == r.dev.ui.text(3)
    f.close()


def test_display_and_voice_heap_on_a_running_device():
    before = _live()
    r = Rig()
    r.run(200)
    plain = _live() - before
    r = None
    before = _live()
    f = open(_font(), "rb")
    r = Rig(more_hw={"screen": Panel(), "font": f, "voice": Uart()}, display={}, voice={})
    r.run(200)
    FIGURES["device_av_extra_heap_bytes"] = _live() - before - plain
    assert r.dev.link.up
    f.close()
