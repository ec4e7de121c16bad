"""An in-RAM filesystem with power cuts and a full flash, for the store and outbox tests.

The whole-device tests use the real filesystem instead (fwfakes.tmpdir), as the ESP32 has one
(LittleFS): holding a flash image in RAM next to the device does not fit in 64 KiB.
"""

from fwfakes import heap_sample


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
        heap_sample()
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
