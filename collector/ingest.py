"""Ingest: validate inbound messages, run the linking engine, queue points and commands.

`Ingest.process_batch` is the one place where inbound messages take effect. It runs a batch inside
one SQLite transaction (a savepoint per message, so one bad message cannot undo the others) and
returns only after COMMIT; the transports acknowledge the messages after that. It takes the current
time as an argument, so it is as deterministic as the linking engine under it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from collector import outbox, points
from collector.config import Config
from collector.db import sync, transaction
from collector.linking import (
    Decision,
    Invite,
    Linker,
    RatingIn,
    RatingJudged,
    TxnIn,
    TxnRecorded,
    WindowEvent,
    WindowSet,
)
from collector.metrics import Metrics
from collector.protocol import (
    MAX_RECEIPT_SEQS,
    DeviceTopic,
    ProtocolError,
    Rejection,
    command_message,
    compact_json,
    decode_feed_message,
    device_topic,
    invitation_message,
    open_device_message,
    parse_topic,
    receipt_message,
)
from collector.registry import Device, Registry

__all__ = ["Inbound", "Ingest", "Outcome"]


REGISTRY_REFRESH_MS = 2000


def _last_states(lines: list[str | TxnRecorded]) -> list[str]:
    """The points of a batch, rendered, without the transaction points that a later one of the
    batch overwrites.

    A transaction's point is rewritten whenever its state changes (awaiting, then rated), with
    the same series and time (collector/points.py), so InfluxDB merges the later over the
    earlier field by field: an earlier point whose optional fields (level, rating_id) the later
    ones all carry leaves no trace and need not be written. A transaction and its rating usually
    arrive in the same batch: one point of their three."""
    later: dict[tuple[str, str], tuple[bool, bool]] = {}  # optional fields written after
    out: list[str] = []
    for x in reversed(lines):
        if isinstance(x, str):
            out.append(x)
            continue
        key = (x.txn.hall, x.txn.txn)
        level, rating = x.level is not None, x.rating_id is not None
        after = later.get(key)
        if after is None or (level and not after[0]) or (rating and not after[1]):
            out.append(points.transaction_point(x))
            later[key] = (level or (after is not None and after[0]),
                          rating or (after is not None and after[1]))
    out.reverse()
    return out


class _RedoCarefully(Exception):
    """A message failed unexpectedly on the fast path: run the batch again, one savepoint each."""


class _Replay(ProtocolError):
    """A message already processed; `receipt` is its identity when the device keeps it on flash
    until a receipt comes (its first receipt may have been lost: it is answered again)."""

    def __init__(self, receipt: tuple[str, int, int] | None, detail: str) -> None:
        super().__init__(Rejection.REPLAY, detail)
        self.receipt = receipt


_LOG = logging.getLogger(__name__)


@dataclass(slots=True)
class Inbound:
    source: str  # mqtt, http, import
    topic: str
    payload: bytes
    received_ms: int
    token: Any = None  # the transport's handle (MQTT mid, HTTP waiter)


@dataclass(slots=True)
class Outcome:
    status: str  # accepted, duplicate, rejected, error
    reason: str = ""
    detail: str = ""
    decisions: list[Decision] = field(default_factory=list)
    # (device, boot, seq) of a device message the device keeps on flash until the collector's
    # receipt says it is committed (docs/protocol.md §5.1): a rating or a non-heartbeat event,
    # accepted or a replay of one accepted before.
    receipt: tuple[str, int, int] | None = None


class Ingest:
    def __init__(self, conn: sqlite3.Connection, cfg: Config, metrics: Metrics | None = None, *,
                 linker: Linker | None = None) -> None:
        """`linker`: the linking engine on `conn` (default: one configured from `cfg`)."""
        self._db = conn
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.metrics = metrics or Metrics()
        self.registry = Registry(conn)
        self.linker = linker or Linker(
            conn,
            rating_window_ms=cfg.linking.rating_window_s * 1000,
            grace_ms=cfg.linking.grace_s * 1000,
            invite_ttl_ms=cfg.linking.invite_ttl_s * 1000,
            unrated_default=cfg.unrated_default,
        )
        self._serial = 0
        # A partitioned service: the halls it serves (the timer judges only theirs); None: all.
        self.owns: Callable[[str], bool] | None = None
        # Points of the batch in hand; a transaction's as its decision, rendered at the flush
        # unless a later one of the batch overwrites it (_last_states).
        self._lines: list[str | TxnRecorded] = []
        self._registry_read_ms = 0
        self._received_by_kind: dict[str, Any] = {}
        self._registry_version: tuple[str] | None = None

    # -- the batch ---------------------------------------------------------------------------------

    def process_batch(self, items: Iterable[Inbound], now_ms: int) -> list[Outcome]:
        """Apply a batch of messages in one transaction; return one outcome per message.

        The fast path runs without a savepoint per message: every protocol check raises before
        the message writes anything. Only if handling a message fails unexpectedly (a bug) is
        the batch rolled back and run again with a savepoint per message, so the failing message
        alone goes to the dead-letter table.
        """
        batch = list(items)
        if now_ms - self._registry_read_ms >= REGISTRY_REFRESH_MS:
            # `evalterm device revoke` and `rotate-key` run in other processes: look now and
            # then whether the registry changed, so a revoked device is refused within seconds.
            self._registry_read_ms = now_ms
            version = self._db.execute(
                "SELECT value FROM meta WHERE key = 'registry_version'").fetchone()
            if version != self._registry_version:
                self.registry.invalidate()
                self._registry_version = version
        try:
            return self._run_batch(batch, now_ms, careful=False)
        except _RedoCarefully:
            return self._run_batch(batch, now_ms, careful=True)

    def _run_batch(self, items: list[Inbound], now_ms: int, *, careful: bool) -> list[Outcome]:
        db = self._db
        outcomes: list[Outcome] = []
        self._lines = []
        # Pipelined: any error of a statement fails the batch (or, careful, its message's
        # savepoint), so on PostgreSQL the writes whose results are not read need not wait.
        with transaction(db, pipelined=True):
            for item in items:
                mark = len(self._lines)
                if careful:
                    db.execute("SAVEPOINT msg")
                try:
                    outcome = self._handle(item)
                    if careful:
                        db.execute("RELEASE msg")
                except ProtocolError as exc:
                    if careful:
                        db.execute("ROLLBACK TO msg")
                        db.execute("RELEASE msg")
                    del self._lines[mark:]
                    outcome = Outcome("rejected", exc.reason.value, exc.detail,
                                      receipt=getattr(exc, "receipt", None))
                    self._record_rejection(item, exc)
                except sqlite3.OperationalError:
                    raise  # storage trouble (disk full, I/O): abort the batch, retry it later
                except Exception as exc:  # a bug must not take the service down or lose the message
                    if not careful:
                        raise _RedoCarefully from exc
                    db.execute("ROLLBACK TO msg")
                    db.execute("RELEASE msg")
                    del self._lines[mark:]
                    _LOG.exception("processing failed for %s message on %s",
                                   item.source, item.topic)
                    db.execute(
                        "INSERT INTO dead_letter (source, topic, payload, error, at_ms) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (item.source, item.topic, item.payload, repr(exc)[:500], item.received_ms),
                    )
                    outcome = Outcome("error", "internal", type(exc).__name__)
                outcomes.append(outcome)
            if not careful:
                # a pipelined statement's error surfaces at a later read: the last message's
                # here, where it still sends the batch down the careful path
                try:
                    sync(db)
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:
                    raise _RedoCarefully from exc
            ticked = self.linker.tick(now_ms, self.owns)
            self._apply(ticked, now_ms, "")
            self._flush_lines()
        self._count(outcomes, ticked)
        return outcomes

    def tick(self, now_ms: int) -> list[Decision]:
        """Time passes with no message: expire and judge what is due."""
        self._lines = []
        with transaction(self._db, pipelined=True):
            decisions = self.linker.tick(now_ms, self.owns)
            self._apply(decisions, now_ms, "")
            self._flush_lines()
        self._count([], decisions)
        return decisions

    def _count(self, outcomes: list[Outcome], ticked: list[Decision]) -> None:
        m = self.metrics
        m.batches.inc()
        for o in outcomes:
            if o.status == "rejected":
                m.rejected.labels(o.reason).inc()
            elif o.status == "duplicate":
                m.duplicates.inc()
            elif o.status == "error":
                m.dead_letters.inc()
        for d in [d for o in outcomes for d in o.decisions] + ticked:
            if isinstance(d, RatingJudged):
                if d.linked:
                    m.linked.inc()
                else:
                    m.unlinked.labels(d.reason.value if d.reason else "").inc()
            elif isinstance(d, TxnRecorded) and d.state == "unrated":
                m.unrated.inc()
            elif isinstance(d, Invite):
                m.invites.inc()

    # -- one message -----------------------------------------------------------------------------

    def _handle(self, item: Inbound) -> Outcome:
        where = parse_topic(self.prefix, item.topic)
        if isinstance(where, DeviceTopic):
            self._received(where.kind).inc()
            return self._device_message(item)
        self._received("feed").inc()
        return self._feed_message(where[1], item)

    def _received(self, kind: str) -> Any:
        """The `received` counter of a message kind (labels() costs a look-up under a lock)."""
        child = self._received_by_kind.get(kind)
        if child is None:
            child = self._received_by_kind[kind] = self.metrics.received.labels(kind)
        return child

    def _device_message(self, item: Inbound) -> Outcome:
        topic, msg = open_device_message(self.prefix, item.topic, item.payload, self.registry.get)
        cur = self._db.execute(
            "INSERT INTO seen_msg (device, boot, seq) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (msg["dev"], msg["boot"], msg["seq"]),
        )
        kept = topic.kind == "rating" or (topic.kind == "event" and msg["type"] != "heartbeat")
        receipt = (topic.device, msg["boot"], msg["seq"]) if kept else None
        event_ms = self._event_time(msg, item.received_ms)
        reads = None
        if topic.kind == "rating":
            r = RatingIn(
                hall=topic.hall, window=topic.window, device=topic.device, boot=msg["boot"],
                seq=msg["seq"], level=msg["level"], reason=msg["reason"], mode=msg["mode"],
                rt_ms=msg["rt"], txn=msg["txn"], press_ms=event_ms, received_ms=item.received_ms,
                device_ts=msg["ts"],
            )
            # Asked before the replay check is read (it only reads): on PostgreSQL the
            # check and the linker's read come back in one round trip.
            reads = self.linker.rating_reads(r)
        if cur.rowcount == 0:
            if reads is not None:
                reads.close()
            raise _Replay(receipt,
                          f"{msg['dev']} boot {msg['boot']} seq {msg['seq']} already processed")
        if topic.kind == "rating":
            decisions = self.linker.rating(r, item.received_ms, reads)
            self._apply(decisions, item.received_ms, "")
            return Outcome("accepted", decisions=decisions, receipt=receipt)
        if topic.kind == "event":
            lines = [points.device_event_point(topic.hall, topic.window, msg, event_ms)]
            if msg["type"] == "heartbeat":
                lines.append(points.telemetry_point(topic.hall, topic.window, msg, event_ms))
            self._queue_points(lines)
            kind, data = msg["type"], msg["data"]
        else:
            self._queue_points([points.status_point(topic.hall, topic.window, msg, event_ms)])
            kind, data = "status", {"state": msg["state"], "fw": msg["fw"]}
            if msg["state"] == "online":
                self._resend_state(topic, item.received_ms)
        self._db.execute(
            "INSERT INTO device_log (device, hall, window, kind, at_ms, received_ms, data, boot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (topic.device, topic.hall, topic.window, kind, event_ms, item.received_ms,
             compact_json(data), msg["boot"]),
        )
        return Outcome("accepted", receipt=receipt)

    def _resend_state(self, topic: DeviceTopic, now_ms: int) -> None:
        """A device (re)connected: send it the window's state (pause or resume) again, which it
        may have missed while offline. A command is not state until a window was paused or
        staffed once (no window_state row): then there is nothing to restore."""
        paused = self.linker.paused(topic.hall, topic.window)
        dev = self.registry.get(topic.device)
        if paused is None or dev is None:
            return
        self._queue_command(topic.hall, topic.window,
                            partial(command_message, cmd="pause" if paused else "resume",
                                    ts=now_ms), now_ms, 3600_000, [dev])

    def receipts(self, outcomes: Iterable[Outcome], now_ms: int) -> list[tuple[str, bytes]]:
        """The signed receipts (topic, payload) for the device messages of committed outcomes,
        one per device and boot (up to MAX_RECEIPT_SEQS seqs each), in the order received.
        Not stored: a receipt that is lost costs a resend, which is answered again."""
        seqs: dict[tuple[str, int], list[int]] = {}
        for o in outcomes:
            if o.receipt is not None:
                dev, boot, seq = o.receipt
                seqs.setdefault((dev, boot), []).append(seq)
        out: list[tuple[str, bytes]] = []
        for (device, boot), got in seqs.items():
            d = self.registry.get(device)
            if d is None:
                continue
            topic = device_topic(self.prefix, d.hall, d.window, device, "cmd")
            for i in range(0, len(got), MAX_RECEIPT_SEQS):
                out.append((topic, receipt_message(d.key, topic, boot=boot,
                                                   seqs=got[i:i + MAX_RECEIPT_SEQS], ts=now_ms)))
        return out

    def _event_time(self, msg: dict[str, Any], received_ms: int) -> int:
        """Device time when it is plausible, else the collector's receive time."""
        ts = msg["ts"]
        lk = self.cfg.linking
        if ts is not None and received_ms - lk.max_delivery_delay_s * 1000 <= ts <= (
            received_ms + lk.max_clock_skew_s * 1000
        ):
            return int(ts)
        return received_ms

    def _feed_message(self, hall: str, item: Inbound) -> Outcome:
        msg = decode_feed_message(item.payload)
        cur = self._db.execute(
            "INSERT INTO seen_feed (hall, id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (hall, msg["id"]),
        )
        if cur.rowcount == 0:
            return Outcome("duplicate")
        if msg["kind"] == "txn_completed":
            staff, service = msg["staff"], msg["service"]
            t = TxnIn(
                hall=hall, window=msg["window"], txn=msg["txn"], staff_id=staff["id"],
                staff_name=staff.get("name", ""), staff_badge=staff.get("badge", ""),
                service_code=service["code"], service_name=service.get("name", ""),
                started_ms=msg["started"], completed_ms=msg["completed"], outcome=msg["outcome"],
            )
            decisions = self.linker.txn_completed(t, item.received_ms)
        else:
            staff = msg.get("staff") or {}
            e = WindowEvent(
                hall=hall, window=msg["window"], kind=msg["kind"], ts_ms=msg["ts"],
                staff_id=staff.get("id"), staff_name=staff.get("name"),
                staff_badge=staff.get("badge"),
                # A queue call (叫号) keeps its ticket number where a pause keeps its reason.
                reason=msg.get("ticket") if msg["kind"] == "queue_called" else msg.get("reason"),
            )
            decisions = self.linker.window_event(e)
        self._apply(decisions, item.received_ms, msg["id"])
        return Outcome("accepted", decisions=decisions)

    # -- effects -----------------------------------------------------------------------------------

    def _apply(self, decisions: list[Decision], now_ms: int, feed_id: str) -> None:
        lines: list[str | TxnRecorded] = []
        for d in decisions:
            if isinstance(d, RatingJudged):
                lines.append(points.rating_point(d))
            elif isinstance(d, TxnRecorded):
                lines.append(d)
            elif isinstance(d, WindowSet):
                lines.append(points.window_point(d, feed_id))
                if d.event.kind in ("window_paused", "window_resumed"):
                    cmd = "pause" if d.event.kind == "window_paused" else "resume"
                    self._queue_command(d.event.hall, d.event.window,
                                        partial(command_message, cmd=cmd, ts=now_ms),
                                        now_ms, 3600_000)
            elif isinstance(d, Invite):
                ttl_s = self.cfg.linking.invite_ttl_s
                invite = partial(invitation_message, ts=now_ms, txn=d.txn, staff_name=d.staff_name,
                                 staff_badge=d.staff_badge, service=d.service_name, ttl=ttl_s)
                self._queue_command(d.hall, d.window, invite, now_ms, ttl_s * 1000)
        self._queue_points(lines)

    def _queue_points(self, lines: Iterable[str | TxnRecorded]) -> None:
        self._lines.extend(lines)  # written to the outbox once per batch, before COMMIT

    def _flush_lines(self) -> None:
        if self._lines:
            outbox.add_points(self._db, _last_states(self._lines))
            self._lines = []

    def _queue_command(self, hall: str, window: str, build: Callable[..., bytes], now_ms: int,
                       ttl_ms: int, devices: list[Device] | None = None) -> None:
        """One command per active device of the window (or per device of `devices`):
        `build(key, topic, cseq=...)` signs it."""
        for dev in self.registry.active_at(hall, window) if devices is None else devices:
            topic = device_topic(self.prefix, hall, window, dev.device, "cmd")
            cseq = outbox.next_cseq(self._db, dev.device)
            outbox.add_command(self._db, topic, build(dev.key, topic, cseq=cseq),
                               now_ms + ttl_ms)

    def _record_rejection(self, item: Inbound, exc: ProtocolError) -> None:
        self._serial += 1
        hall = window = device = None
        try:
            where = parse_topic(self.prefix, item.topic)
            if isinstance(where, DeviceTopic):
                hall, window, device = where.hall, where.window, where.device
            else:
                hall = where[1]
        except ProtocolError:
            pass
        _LOG.warning("rejected %s message on %r: %s", item.source, item.topic[:120], exc)
        self._queue_points([
            points.rejection_point(exc.reason.value, item.source, item.topic, exc.detail,
                                   item.received_ms, self._serial, hall, window, device)
        ])
