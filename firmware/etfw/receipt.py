"""The collector's receipts (docs/protocol.md section 5.1), on the command topic: checked
(topic, size, signature, fields) and applied to the outbox, whose records they name leave
it. Loaded by Messages.command for each receipt and dropped again after it (etfw.unload),
like command.py, and smaller than it: a receipt follows every rating and event the device
sends. `verify` checks the signature of commands too.
"""

import json
from binascii import hexlify

from .message import CommandError
from .sign import SIG_HEAD

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_SIG_LEN = const(74)  # len(',"sig":"') + 64 hex digits + '"}'
_MAX_SEQS = const(64)  # seqs in one receipt


def verify(signer, topic: bytes, payload: bytes) -> bool:
    """True if `payload` ends in a well-formed sig member that matches `signer`'s key
    (constant time)."""
    n = len(payload)
    if n < _SIG_LEN + 2:
        return False
    if payload[n - _SIG_LEN:n - 66] != SIG_HEAD or payload[n - 2:] != b'"}':
        return False
    mv = memoryview(payload)
    want = hexlify(signer.mac((topic, b"\n", mv[:n - _SIG_LEN], b"}")))
    diff = 0
    for i in range(64):
        c = payload[n - 66 + i]
        # Uppercase or non-hex digits are malformed, not merely different.
        if not (48 <= c <= 57 or 97 <= c <= 102):
            return False
        diff |= c ^ want[i]
    return diff == 0


def check(msgs, topic: bytes, payload: bytes, outbox=None, now: int = 0) -> dict:
    """The receipt `payload` received on `topic` by the device of `msgs` (message.Messages),
    checked (raise CommandError if it must be ignored) and applied to `outbox`
    (etfw.outbox.Outbox). No cseq: a receipt states a fact about one (boot, seq) for ever,
    so an old one replayed is still true; the signature (device key, this topic) is what
    counts."""
    if topic != msgs.t_cmd:
        raise CommandError("topic")
    if len(payload) > 1024:
        raise CommandError("oversized")
    if not verify(msgs.signer, topic, payload):
        raise CommandError("signature")
    try:
        c = json.loads(payload)
    except ValueError:
        raise CommandError("malformed") from None
    if not isinstance(c, dict) or c.get("v") != 1 or c.get("kind") != "receipt":
        raise CommandError("malformed")
    boot = c.get("boot")
    seqs = c.get("seqs")
    if not (isinstance(seqs, list) and 1 <= len(seqs) <= _MAX_SEQS):
        raise CommandError("malformed")
    seqs.append(boot)  # checked with them, then taken off again
    for v in seqs:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CommandError("malformed")
    seqs.pop()
    if outbox is not None:
        # Retire the records it names among those in flight (the outbox's first
        # `unconfirmed`; the identity is read from each record's envelope on flash).
        k = 0
        done = False
        while k < outbox.unconfirmed:
            rec = outbox.peek(k)  # (a damaged one is retired: the next takes its place)
            if rec is None:
                break
            if field(rec[2], b'"boot":') == boot and field(rec[2], b',"seq":') in seqs:
                if k:
                    outbox._retire(k)  # the ones above move down to k
                else:
                    outbox.ack(rec[0])
                done = True
            else:
                k += 1
        if done:
            outbox.start = now
            outbox.wait = 0  # the first wait again (outbox._RESEND_MS)
    return c


def field(payload, name: bytes) -> int:
    """The non-negative integer member `name` of a device message's envelope (boot, seq)."""
    i = payload.find(name)
    v = 0
    if i >= 0:
        i += len(name)
        while i < len(payload) and 48 <= payload[i] <= 57:
            v = v * 10 + payload[i] - 48
            i += 1
    return v

