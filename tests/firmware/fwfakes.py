"""Fakes shared by the firmware tests. Plain Python that runs on CPython and MicroPython.

Kept small: under MicroPython every line here costs heap next to the firmware (64 KiB).
The in-RAM filesystem with power cuts is in fwmemfs.py, the network fakes in fwnet.py.
"""

import gc
import json
import os

from etfw.clock import ticks_add

_env = getattr(os, "getenv", lambda k: None)
FIGURES = {}  # measurements the runner prints (name -> int)
# Peak live heap: [highest gc.mem_alloc() right after a collection, samples taken]. Sampled
# by heap_sample(), which the fakes call whenever the firmware reads the clock, touches
# the (fake) flash or the (fake) broker, and the runner calls around every test.
HEAP = [0, 0]
_mem_alloc = None if _env("FW_HEAP_SAMPLE") == "0" else getattr(gc, "mem_alloc", None)


def heap_sample():
    if _mem_alloc is None:  # CPython, or the plain MicroPython run
        return
    gc.collect()
    used = _mem_alloc()
    HEAP[1] += 1
    if used > HEAP[0]:
        HEAP[0] = used


def scrub(depth=24):
    """Zero the C stack below the caller, so that the next calls' frames hold no stale
    pointers: the GC scans the stack conservatively, and an old word pointing at the
    previous boot's device would keep all of it alive. (A device boots once; the tests
    boot one after another.) Each call level's frame is zeroed when it is set up."""
    a = b = c = d = e = f = g = h = None
    if depth:
        scrub(depth - 1)
    return a or b or c or d or e or f or g or h


DIRS = []  # made by tmpdir()


def cleanup():
    """Delete the folders tmpdir() made (files only: the tests make no sub-folders)."""
    while DIRS:
        path = DIRS.pop()
        for name in os.listdir(path):
            os.remove(path + "/" + name)
        os.rmdir(path)


def tmpdir():
    """A new empty folder on the real filesystem, as a path prefix ending in '/'.

    The device's flash is a real filesystem too (LittleFS); the whole-device tests use
    this with the firmware's own RealFS instead of holding a flash image in RAM. Under
    the MicroPython wrapper and pytest, FW_TMP names a per-run folder."""
    n = len(DIRS)
    while True:
        n += 1
        path = f"{_env('FW_TMP') or '/tmp'}/etfw-{n:d}"
        try:
            os.mkdir(path)
        except OSError:  # left over from an earlier run (FW_TMP unset): the next number
            continue
        DIRS.append(path)
        return path + "/"


KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes(range(32))
TICKS_PERIOD = ticks_add(0, -1) + 1  # 2**30 on the ESP32, larger on 64-bit unix


class Ticks:
    """A settable millisecond tick source that wraps like the platform's ticks_ms."""

    def __init__(self, start=0):
        self.t = start

    def __call__(self):
        heap_sample()
        return self.t % TICKS_PERIOD

    def advance(self, ms):
        self.t += ms


class FakePin:
    def __init__(self, level=1):
        self.level = level
        self.handler = None

    def irq(self, handler=None, trigger=3):
        self.handler = handler

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v

    def set(self, level):
        """Drive the input; fires the edge interrupt like the hardware would."""
        if level != self.level:
            self.level = level
            if self.handler is not None:
                self.handler(self)


def config_dict(**over):
    d = {
        "device": "kp-0007", "hall": "hall01", "window": "w03", "key": KEY_HEX,
        "wifi": {"ssid": "hall-net", "password": "pw"},
        "broker": {"host": "127.0.0.1", "port": 1883, "keepalive": 30},
        "board": "devkitc-5led",
    }
    d.update(over)
    return d


def config(**over):
    """A parsed Config. The config module is dropped again afterwards, as main.py does on
    the device: it is needed once per boot and is the largest module."""
    c = _parse(over)
    if type(c) is tuple:
        raise ValueError(c[0])
    return c


def config_error(**over):
    """(detail, link) of a config that must not parse, as main.py gets them."""
    err = _parse(over)
    assert type(err) is tuple, "config accepted"
    return err


def _parse(over):
    import etfw
    from etfw import config as cfgmod

    try:
        return cfgmod.parse(json.dumps(config_dict(**over)))
    except cfgmod.ConfigError as e:
        return str(e), e.link
    finally:
        heap_sample()  # the config module and its result: the peak of a boot's parse
        cfgmod = None
        etfw.unload("config")


def cmd_payload(signer, topic, fields):
    """Sign a command the way the collector does (fields: list of (name, value))."""
    from etfw.sign import Writer

    w = Writer(signer, 512).begin()  # commands are short; no second 1 KiB block needed
    for k, v in fields:
        w.field(k, v)
    heap_sample()
    return w.seal(topic)
