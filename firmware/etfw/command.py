"""Checking a received command (docs/protocol.md section 5): topic, size, signature, fields,
cseq and expiry. Loaded by Messages.command for each command and dropped again after it
(etfw.unload): commands are rare next to the main loop's steps, so a running device does
not keep this code on its heap. The checked command goes to Terminal.command. (The
signature check is receipt.verify: receipts, far more frequent, load only that module.)
"""

import json

from .message import CommandError
from .receipt import verify

COMMANDS = ("invite", "cancel", "pause", "resume", "display", "update")  # update: etfw/update.py


def _is_str(v, lo: int, hi: int) -> bool:
    return isinstance(v, str) and lo <= len(v) <= hi


def check(msgs, topic: bytes, payload: bytes) -> dict:
    """The command `payload` received on `topic` by the device of `msgs` (message.Messages),
    checked; raise CommandError if it must be ignored. Accepting it advances msgs.last_cseq."""
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
    if not isinstance(c, dict) or c.get("v") != 1 or c.get("kind") != "cmd":
        raise CommandError("malformed")
    name = c.get("cmd")
    cseq = c.get("cseq")
    ts = c.get("ts")
    if name not in COMMANDS or not isinstance(cseq, int) or not isinstance(ts, int) \
            or isinstance(cseq, bool) or isinstance(ts, bool):
        raise CommandError("malformed")
    if cseq <= msgs.last_cseq:
        raise CommandError("cseq")
    _check_fields(msgs, name, c, ts)
    msgs.last_cseq = cseq
    return c


def _check_fields(msgs, name: str, c: dict, ts: int) -> None:
    """The fields of each command (§5), and an invitation's expiry."""
    if name == "invite":
        staff = c.get("staff")
        ttl = c.get("ttl")
        if not (_is_str(c.get("txn"), 1, 64) and isinstance(staff, dict)
                and isinstance(ttl, int) and not isinstance(ttl, bool)
                and 1 <= ttl <= 3600):
            raise CommandError("malformed")
        for k in ("name", "badge"):
            if k in staff and not _is_str(staff[k], 0, 32):
                raise CommandError("malformed")
        if "service" in c and not _is_str(c["service"], 0, 64):
            raise CommandError("malformed")
        now = msgs.clock.ts()
        if now is not None and ts + ttl * 1000 < now:
            raise CommandError("expired")
    elif name == "cancel":
        if not _is_str(c.get("txn"), 1, 64):
            raise CommandError("malformed")
    elif name == "display":
        if not _is_str(c.get("text"), 0, 64):
            raise CommandError("malformed")
