"""Small persisted state (boot counter, press counters, discard count) and the file seam.

Two slots, each a JSON document with a generation number and a checksum. A save writes
the older slot, so a power cut during a save damages only that slot and the other one
still holds the previous state. Used for the boot counter, which must be stored before
anything of the new boot is signed: (device, boot, seq) must never repeat.
"""

import hashlib
import json
import os
from binascii import hexlify


class RealFS:
    """The filesystem seam: the outbox and the store only use these four calls. The first
    three are the built-ins themselves (a built-in function does not bind to an instance,
    on MicroPython as on CPython): no code of their own."""

    open = open
    remove = os.remove
    rename = os.rename

    def size(self, path: str) -> int:
        """File size, or -1 when the file does not exist."""
        try:
            return os.stat(path)[6]
        except OSError:
            return -1


def _check(data: bytes) -> bytes:
    return hexlify(hashlib.sha256(data).digest()[:4])


class Store:
    def __init__(self, fs, base: str) -> None:
        self._fs = fs
        self._paths = (base + ".a", base + ".b")
        self._gen = 0
        self.bad_slots = 0  # slots found damaged at load (a power cut during a save)

    def _read(self, path: str):
        try:
            f = self._fs.open(path, "rb")
        except OSError:
            return None
        try:
            raw = f.read()
        finally:
            f.close()
        nl = raw.rfind(b"\n")
        if nl < 0 or raw[nl + 1:] != _check(raw[:nl]):
            self.bad_slots += 1
            return None
        try:
            d = json.loads(raw[:nl])
        except ValueError:
            self.bad_slots += 1
            return None
        if not isinstance(d, dict) or not isinstance(d.get("g"), int):
            self.bad_slots += 1
            return None
        return d

    def load(self) -> dict:
        best = None
        for p in self._paths:
            d = self._read(p)
            if d is not None and (best is None or d["g"] > best["g"]):
                best = d
        if best is None:
            return {}
        self._gen = best["g"]
        del best["g"]
        return best

    def save(self, state: dict) -> None:
        gen = self._gen + 1
        d = dict(state)
        d["g"] = gen
        body = json.dumps(d).encode()
        f = self._fs.open(self._paths[gen % 2], "wb")
        try:
            f.write(body + b"\n" + _check(body))
        finally:
            f.close()
        self._gen = gen
