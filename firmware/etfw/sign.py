"""HMAC-SHA256 signatures exactly as docs/protocol.md section 3 defines them.

MicroPython has no hmac module, so HMAC (RFC 2104) is built here over hashlib.sha256.
The pads are computed once per key; hashing takes the parts of the signed bytes one by one
(topic, LF, body) so no concatenated copy of the message is ever made.
"""

import hashlib
import json
from binascii import hexlify

SIG_HEAD = b',"sig":"'
SIG_LEN = 74  # len(',"sig":"') + 64 hex digits + '"}'
_BLOCK = 64
_LF = b"\n"
_CLOSE = b"}"


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
        return hexlify(self.mac((topic, _LF, body)))

    def verify(self, topic: bytes, payload: bytes) -> bool:
        """True if `payload` ends in a well-formed sig member that matches (constant time)."""
        n = len(payload)
        if n < SIG_LEN + 2:
            return False
        if payload[n - SIG_LEN:n - 66] != SIG_HEAD or payload[n - 2:] != b'"}':
            return False
        mv = memoryview(payload)
        want = hexlify(self.mac((topic, _LF, mv[:n - SIG_LEN], _CLOSE)))
        diff = 0
        for i in range(64):
            c = payload[n - 66 + i]
            # Uppercase or non-hex digits are malformed, not merely different.
            if not (48 <= c <= 57 or 97 <= c <= 102):
                return False
            diff |= c ^ want[i]
        return diff == 0


MQTT_PASSWORD_LABEL = b"evalterm-mqtt-password"


def mqtt_password(key: bytes) -> str:
    """The device's broker password, derived from its key (docs/protocol.md section 2):
    lowercase hex HMAC-SHA256(key, "evalterm-mqtt-password"). No second secret to store."""
    return hexlify(Signer(key).mac((MQTT_PASSWORD_LABEL,))).decode()


class Writer:
    """Writes one JSON object into a pre-allocated buffer, then signs and seals it.

    Members are written in call order: the protocol's envelope order is part of the bytes.
    """

    def __init__(self, signer: Signer, size: int = 1024) -> None:
        self._signer = signer
        self.buf = bytearray(size)
        self._mv = memoryview(self.buf)
        self.n = 0
        self._first = True

    def begin(self) -> "Writer":
        self.n = 0
        self._first = True
        self._raw(b"{")
        return self

    def _raw(self, b) -> None:
        m = len(b)
        if self.n + m > len(self.buf):
            raise ValueError("message too long")
        self.buf[self.n:self.n + m] = b
        self.n += m

    def _key(self, name: str) -> None:
        if not self._first:
            self._raw(b",")
        self._first = False
        self._raw(b'"')
        self._raw(name.encode())
        self._raw(b'":')

    def value(self, v) -> None:
        if v is None:
            self._raw(b"null")
        elif v is True:
            self._raw(b"true")
        elif v is False:
            self._raw(b"false")
        elif isinstance(v, int):
            self._raw(str(v).encode())
        elif isinstance(v, str):
            self._raw(json.dumps(v).encode())
        elif isinstance(v, (list, tuple)):
            self._raw(b"[")
            for i, x in enumerate(v):
                if i:
                    self._raw(b",")
                self.value(x)
            self._raw(b"]")
        elif isinstance(v, dict):
            self._raw(b"{")
            first = True
            for k in v:
                if not first:
                    self._raw(b",")
                first = False
                self._raw(json.dumps(k).encode())
                self._raw(b":")
                self.value(v[k])
            self._raw(b"}")
        else:
            raise ValueError("unsupported JSON value")

    def field(self, name: str, v) -> "Writer":
        self._key(name)
        self.value(v)
        return self

    def seal(self, topic: bytes) -> bytes:
        """Close the object, sign exactly those bytes, append the sig member (§3)."""
        self._raw(b"}")
        sig = self._signer.hexmac(topic, self._mv[:self.n])
        self.n -= 1
        self._raw(SIG_HEAD)
        self._raw(sig)
        self._raw(b'"}')
        return bytes(self._mv[:self.n])
