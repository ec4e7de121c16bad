"""Protocol v1 messages of one device: topics, the signed envelope; command checks in
command.py, loaded when a command arrives.

Every message takes the next `seq` of this boot; `seq` advances only when a message was
actually sealed, so a message that failed to build leaves no gap.
"""

from .sign import Signer, Writer


class CommandError(ValueError):
    """A command the device must ignore; args[0] is a short reason for the counters/log.
    (Here, not in command.py, so that catching it does not need that module.)"""


class Messages:
    def __init__(self, prefix: str, hall: str, window: str, dev: str, key: bytes,
                 boot: int, clock, size: int = 1024) -> None:
        base = f"{prefix}/dev/{hall}/{window}/{dev}/"
        self.t_rating = (base + "rating").encode()
        self.t_event = (base + "event").encode()
        self.t_status = (base + "status").encode()
        self.t_cmd = (base + "cmd").encode()
        self.dev = dev
        self.boot = boot
        self.seq = 0  # the seq the next sealed message gets
        self.last_cseq = -1  # commands accepted since boot (§5)
        self.clock = clock
        self.signer = Signer(key)
        self._w = Writer(self.signer, size)

    def _envelope(self, kind: str) -> Writer:
        return self._w.begin().field("v", 1).field("kind", kind).field("dev", self.dev) \
            .field("boot", self.boot).field("seq", self.seq) \
            .field("ts", self.clock.ts()).field("up", self.clock.up())

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

    def command(self, topic: bytes, payload: bytes, outbox=None, now: int = 0):
        """Check a command (§5) and return it; raise CommandError if it must be ignored.
        A receipt (§5.1, which the collector writes beginning with these bytes) retires the
        records of `outbox` it names; it returns None. The checks (command.py, receipt.py)
        are loaded for each message and dropped again: a running device does not keep them
        on its heap."""
        from . import unload

        try:
            if payload.startswith(b'{"v":1,"kind":"receipt",'):
                from . import receipt

                return receipt.check(self, topic, payload, outbox, now)
            from . import command

            return command.check(self, topic, payload)
        finally:
            unload("command")
            unload("receipt")
