"""Protocol v1 messages of one device: topics, the signed envelope, command checks.

Every message takes the next `seq` of this boot; `seq` advances only when a message was
actually sealed, so a message that failed to build leaves no gap.
"""

import json

from .sign import Signer, Writer

COMMANDS = ("invite", "cancel", "pause", "resume", "display")


class CommandError(ValueError):
    """A command the device must ignore; args[0] is a short reason for the counters/log."""


def _is_str(v, lo: int, hi: int) -> bool:
    return isinstance(v, str) and lo <= len(v) <= hi


class Messages:
    def __init__(self, prefix: str, hall: str, window: str, dev: str, key: bytes,
                 boot: int, clock, size: int = 1024) -> None:
        base = "%s/dev/%s/%s/%s/" % (prefix, hall, window, dev)
        self.t_rating = (base + "rating").encode()
        self.t_event = (base + "event").encode()
        self.t_status = (base + "status").encode()
        self.t_cmd = (base + "cmd").encode()
        self.dev = dev
        self.boot = boot
        self.seq = 0  # the seq the next sealed message gets
        self.last_cseq = -1  # commands accepted since boot (§5)
        self._clock = clock
        self.signer = Signer(key)
        self._w = Writer(self.signer, size)

    def _envelope(self, kind: str) -> Writer:
        return self._w.begin().field("v", 1).field("kind", kind).field("dev", self.dev) \
            .field("boot", self.boot).field("seq", self.seq) \
            .field("ts", self._clock.ts()).field("up", self._clock.up())

    def _seal(self, w: Writer, topic: bytes) -> bytes:
        payload = w.seal(topic)
        self.seq += 1
        return payload

    def rating(self, level: int, txn, reason, rt, mode: str) -> bytes:
        return self._seal(self._envelope("rating").field("level", level).field("txn", txn)
                          .field("reason", reason).field("rt", rt).field("mode", mode),
                          self.t_rating)

    def event(self, etype: str, data: dict) -> bytes:
        return self._seal(self._envelope("event").field("type", etype).field("data", data),
                          self.t_event)

    def status(self, state: str, fw: str) -> bytes:
        return self._seal(self._envelope("status").field("state", state).field("fw", fw),
                          self.t_status)

    def command(self, topic: bytes, payload: bytes) -> dict:
        """Check a command (§5) and return it; raise CommandError if it must be ignored."""
        if topic != self.t_cmd:
            raise CommandError("topic")
        if len(payload) > 1024:
            raise CommandError("oversized")
        if not self.signer.verify(topic, payload):
            raise CommandError("signature")
        try:
            c = json.loads(payload)
        except ValueError:
            raise CommandError("malformed")
        if not isinstance(c, dict) or c.get("v") != 1 or c.get("kind") != "cmd":
            raise CommandError("malformed")
        name = c.get("cmd")
        cseq = c.get("cseq")
        ts = c.get("ts")
        if name not in COMMANDS or not isinstance(cseq, int) or not isinstance(ts, int) \
                or isinstance(cseq, bool) or isinstance(ts, bool):
            raise CommandError("malformed")
        if cseq <= self.last_cseq:
            raise CommandError("cseq")
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
            now = self._clock.ts()
            if now is not None and ts + ttl * 1000 < now:
                raise CommandError("expired")
        elif name == "cancel":
            if not _is_str(c.get("txn"), 1, 64):
                raise CommandError("malformed")
        elif name == "display":
            if not _is_str(c.get("text"), 0, 64):
                raise CommandError("malformed")
        self.last_cseq = cseq
        return c
