"""The collector's receipts (docs/protocol.md section 5.1), on the command topic: checked
(topic, size, signature, fields) and applied to the outbox, whose records they name leave
it. Loaded by Messages.command for each receipt and dropped again after it (etfw.unload),
like command.py, and smaller than it: a receipt follows every rating and event the device
sends. `verify` checks the signature of commands too.
"""

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


def check(msgs, topic: bytes, payload: bytes, outbox=None, now: int = 0) -> None:
    """The receipt `payload` received on `topic` by the device of `msgs` (message.Messages),
    checked (raise CommandError if it must be ignored) and applied to `outbox`
    (etfw.outbox.Outbox): the records in flight (its first `unconfirmed`) whose envelope has
    the receipt's boot and one of its seqs leave it. Read from the bytes the collector writes
    (`{"v":1,"kind":"receipt","boot":B,"seqs":[S,...],...`), not through JSON: a running
    device interns no names for it. No cseq: a receipt states a fact about one message for
    ever, so an old one replayed is harmless; the signature (device key, this topic) is what
    counts."""
    if topic != msgs.t_cmd:
        raise CommandError("topic")
    if len(payload) > 1024:
        raise CommandError("oversized")
    if not verify(msgs.signer, topic, payload):
        raise CommandError("signature")
    try:
        i = payload.index(b'"seqs":[') + 8
        seqs = [int(x) for x in payload[i:payload.index(b"]", i)].split(b",")]
        boot = int(payload[31:payload.index(b",", 31)])  # after '..."receipt","boot":'
    except ValueError:
        raise CommandError("malformed") from None
    if payload[:31] != b'{"v":1,"kind":"receipt","boot":' or not 1 <= len(seqs) <= _MAX_SEQS \
            or min(seqs) < 0:
        raise CommandError("malformed")
    k = 0
    done = False
    while outbox is not None and k < outbox.unconfirmed:
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
    if done and outbox is not None:
        outbox.start = now
        outbox.wait = 0  # the first wait again (link._RESEND_MS)


def field(payload, name: bytes) -> int:
    """The non-negative integer member `name` of a device message's envelope (boot, seq);
    -1 if it has none."""
    i = payload.find(name)
    if i < 0:
        return -1
    i += len(name)
    v = 0
    while i < len(payload) and 48 <= payload[i] <= 57:
        v = v * 10 + payload[i] - 48
        i += 1
    return v
