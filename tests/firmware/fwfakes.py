"""Fakes shared by the firmware tests. Plain Python that runs on CPython and MicroPython.

Kept small: under MicroPython every line here costs heap next to the firmware (64 KiB).
The in-RAM filesystem with power cuts is in fwmemfs.py, the network fakes in fwnet.py.
"""

import gc
import json
import os

_here = __file__.replace("\\", "/")
if not _here.startswith("/"):
    _here = os.getcwd() + "/" + _here
# Precompiled .mpy copies live elsewhere: the MicroPython wrapper passes the repo root.
ROOT = getattr(os, "getenv", lambda k: None)("EVALTERM_ROOT") or _here.rsplit("/", 3)[0]
FIGURES = {}  # measurements the runner prints (name -> int)
# Peak live heap: [highest gc.mem_alloc() right after a collection, samples taken]. Sampled
# by heap_sample(), which the fakes call whenever the firmware reads the clock, touches
# the (fake) flash or the (fake) broker, and the runner calls around every test.
HEAP = [0, 0]
_mem_alloc = getattr(gc, "mem_alloc", None)  # MicroPython only; CPython samples nothing
if getattr(os, "getenv", lambda k: None)("FW_HEAP_SAMPLE") == "0":
    _mem_alloc = None


def heap_sample():
    if _mem_alloc is None:
        return
    gc.collect()
    used = _mem_alloc()
    HEAP[1] += 1
    if used > HEAP[0]:
        HEAP[0] = used


_DIRS = []


def tmpdir():
    """A new empty folder on the real filesystem, as a path prefix ending in '/'.

    The device's flash is a real filesystem too (LittleFS); the whole-device tests use
    this with the firmware's own RealFS instead of holding a flash image in RAM. Under
    the MicroPython wrapper and pytest, FW_TMP names a per-run folder."""
    base = getattr(os, "getenv", lambda k: None)("FW_TMP") or "/tmp"
    n = len(_DIRS)
    while True:
        n += 1
        path = "%s/etfw-%d-%d" % (base, _stamp(), n)
        try:
            os.mkdir(path)
        except OSError:
            continue
        _DIRS.append(path)
        return path + "/"


def _stamp():
    import time

    ns = getattr(time, "time_ns", None)
    return (ns() if ns else int(time.time() * 1e9)) % 1000000007


def cleanup():
    """Delete the folders tmpdir() made (files only: the tests make no sub-folders)."""
    while _DIRS:
        path = _DIRS.pop()
        for name in os.listdir(path):
            os.remove(path + "/" + name)
        os.rmdir(path)
KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes(range(32))


def _ticks_period():
    from etfw.clock import ticks_add

    return ticks_add(0, -1) + 1  # 2**30 on the ESP32, larger on 64-bit unix


TICKS_PERIOD = _ticks_period()


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
        return None

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
    for k in over:
        d[k] = over[k]
    return d


def config(**over):
    """A parsed Config. The config module is dropped again afterwards, as main.py does on
    the device: it is needed once per boot and is the largest module."""
    c, err = _parse(over)
    if err is not None:
        raise ValueError(err[0])
    return c


def config_error(**over):
    """(detail, link) of a config that must not parse, as main.py gets them."""
    c, err = _parse(over)
    assert c is None, "config accepted"
    return err


def _parse(over):
    import sys

    import etfw
    from etfw import config as cfgmod

    try:
        c = cfgmod.parse(json.dumps(config_dict(**over)))
        heap_sample()  # the config module and its result: the peak of a boot's parse
        return c, None
    except cfgmod.ConfigError as e:
        heap_sample()
        return None, (str(e), e.link)
    finally:
        if "etfw.config" in sys.modules:
            del sys.modules["etfw.config"]
        if hasattr(etfw, "config"):
            delattr(etfw, "config")


def cmd_payload(signer, topic, fields):
    """Sign a command the way the collector does (fields: list of (name, value))."""
    from etfw.sign import Writer

    w = Writer(signer, 512).begin()  # commands are short; no second 1 KiB block needed
    for k, v in fields:
        w.field(k, v)
    heap_sample()
    return w.seal(topic)
