"""HMAC-SHA256 signatures exactly as docs/protocol.md section 3 defines them (checking a
received signature is receipt.verify: only commands and receipts need it).

MicroPython has no hmac module, so HMAC (RFC 2104) is built here over hashlib.sha256.
The pads are computed once per key; hashing takes the parts of the signed bytes one by one
(topic, LF, body) so no concatenated copy of the message is ever made.
"""

import hashlib
import json
from binascii import hexlify

try:
    from micropython import const
except ImportError:  # CPython
    const = int

SIG_HEAD = b',"sig":"'
_BLOCK = const(64)


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            k = key[i] if i < len(key) else 0
            ipad[i] = k ^ 0x36
            opad[i] = k ^ 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def mac(self, parts) -> bytes:
        """HMAC-SHA256 of the concatenation of `parts` (a tuple of buffers)."""
        inner = hashlib.sha256(self._ipad)
        for p in parts:
            inner.update(p)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        return outer.digest()

    def hexmac(self, topic: bytes, body) -> bytes:
        """Lowercase hex signature of an unsigned JSON object `body` published on `topic`."""
        return hexlify(self.mac((topic, b"\n", body)))


class Writer:
    """Writes one JSON object into a pre-allocated buffer, then signs and seals it.

    Members are written in call order: the protocol's envelope order is part of the bytes.
    Values are written compactly (no spaces), as json.dumps with separators (",", ":") does
    on both CPython and MicroPython; a dict's members in its own iteration order.
    """

    def __init__(self, signer: Signer, size: int = 1024) -> None:
        self._signer = signer
        self.buf = bytearray(size)
        self._mv = memoryview(self.buf)
        self.n = 0

    def begin(self) -> "Writer":
        self.n = 0
        self._raw(b"{")
        return self

    def _raw(self, b) -> None:
        m = len(b)
        if self.n + m > len(self.buf):
            raise ValueError("message too long")
        self.buf[self.n:self.n + m] = b
        self.n += m

    def field(self, name: str, v) -> "Writer":
        if self.n > 1:
            self._raw(b",")
        self._raw(b'"')
        self._raw(name.encode())
        self._raw(b'":')
        self._raw(json.dumps(v, separators=(",", ":")).encode())
        return self

    def seal(self, topic: bytes) -> bytes:
        """Close the object, sign exactly those bytes, append the sig member (section 3)."""
        self._raw(b"}")
        sig = self._signer.hexmac(topic, self._mv[:self.n])
        self.n -= 1
        self._raw(SIG_HEAD)
        self._raw(sig)
        self._raw(b'"}')
        return bytes(self._mv[:self.n])
