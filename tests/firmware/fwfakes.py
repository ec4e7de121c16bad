"""Fakes shared by the firmware tests. Plain Python that runs on CPython and MicroPython."""

import json
import os

_here = __file__.replace("\\", "/")
if not _here.startswith("/"):
    _here = os.getcwd() + "/" + _here
# Precompiled .mpy copies live elsewhere: the MicroPython wrapper passes the repo root.
ROOT = getattr(os, "getenv", lambda k: None)("EVALTERM_ROOT") or _here.rsplit("/", 3)[0]
FIGURES = {}  # measurements the runner prints (name -> int)
KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes(range(32))


_VECTORS = []


def vectors():
    """The ```vector blocks of docs/protocol.md as dicts (topic, payload bytes, sig).

    Read line by line: the whole document would not fit next to the tests in 64 KiB."""
    if _VECTORS:
        return _VECTORS
    cur = None
    with open(ROOT + "/docs/protocol.md", "rb") as f:
        while True:
            line = f.readline()
            if not line:
                break
            line = line.rstrip(b"\n")
            if cur is None:
                if line == b"```vector":
                    cur = {}
            elif line.startswith(b"```"):
                _VECTORS.append(cur)
                cur = None
            elif b": " in line:
                k, val = line.split(b": ", 1)
                cur[k.decode()] = val if k == b"payload" else val.decode()
    return _VECTORS


def _ticks_period():
    from etfw.clock import ticks_add

    return ticks_add(0, -1) + 1  # 2**30 on the ESP32, larger on 64-bit unix


TICKS_PERIOD = _ticks_period()


class Ticks:
    """A settable millisecond tick source that wraps like the platform's ticks_ms."""

    def __init__(self, start=0):
        self.t = start

    def __call__(self):
        return self.t % TICKS_PERIOD

    def advance(self, ms):
        self.t += ms


class FakePin:
    def __init__(self, level=1):
        self.level = level
        self.handler = None
        self.writes = []

    def irq(self, handler=None, trigger=3):
        self.handler = handler

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        self.writes.append(v)
        return None

    def set(self, level):
        """Drive the input; fires the edge interrupt like the hardware would."""
        if level != self.level:
            self.level = level
            if self.handler is not None:
                self.handler(self)


class PowerCut(Exception):
    pass


class _MemFile:
    def __init__(self, fs, path, mode):
        self.fs = fs
        self.path = path
        self.pos = 0
        self.mode = mode
        if "w" in mode:
            fs.files[path] = bytearray()
        elif path not in fs.files:
            if "a" in mode:
                fs.files[path] = bytearray()
            else:
                raise OSError(2)

    def read(self, n=-1):
        data = self.fs.files[self.path]
        end = len(data) if n < 0 else min(len(data), self.pos + n)
        out = bytes(data[self.pos:end])
        self.pos = end
        return out

    def seek(self, off):
        self.pos = off

    def write(self, b):
        fs = self.fs
        data = fs.files[self.path]
        b = bytes(b)
        if fs.budget is not None:
            if len(b) > fs.budget:
                data.extend(b[:fs.budget])
                fs.budget = 0
                raise PowerCut()
            fs.budget -= len(b)
        if fs.full_at is not None and fs.used() + len(b) > fs.full_at:
            raise OSError(28)  # ENOSPC
        data.extend(b)
        return len(b)

    def close(self):
        pass


class MemFS:
    """In-memory filesystem with a power-cut budget: `budget` bytes (and atomic operations,
    one unit each) may still happen, then PowerCut is raised mid-way."""

    def __init__(self):
        self.files = {}
        self.budget = None
        self.full_at = None

    def used(self):
        return sum(len(v) for v in self.files.values())

    def _op(self):
        if self.budget is not None:
            if self.budget == 0:
                raise PowerCut()
            self.budget -= 1

    def open(self, path, mode):
        return _MemFile(self, path, mode)

    def remove(self, path):
        if path not in self.files:
            raise OSError(2)
        self._op()
        del self.files[path]

    def rename(self, src, dst):
        if src not in self.files:
            raise OSError(2)
        self._op()
        self.files[dst] = self.files.pop(src)

    def size(self, path):
        return len(self.files[path]) if path in self.files else -1

    def snapshot(self):
        return {k: bytes(v) for k, v in self.files.items()}

    def restore(self, snap):
        self.files = {k: bytearray(v) for k, v in snap.items()}
        self.budget = None


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
    """A parsed Config. The config module is dropped again afterwards, as main.py may do
    on the device: it is needed once per boot and is the largest module."""
    import sys

    import etfw
    from etfw import config as cfgmod

    c = cfgmod.parse(json.dumps(config_dict(**over)))
    if "etfw.config" in sys.modules:
        del sys.modules["etfw.config"]
    if hasattr(etfw, "config"):
        delattr(etfw, "config")
    return c


def cmd_payload(signer, topic, fields):
    """Sign a command the way the collector does (fields: list of (name, value))."""
    from etfw.sign import Writer

    w = Writer(signer).begin()
    for k, v in fields:
        w.field(k, v)
    return w.seal(topic)
