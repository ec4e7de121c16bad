"""Facts the detector reasons about, and the one adapter that reads them from the state database.

The indicator code sees only these frozen dataclasses; `load_hall_facts` is the only function here
that touches SQLite (tables rating, txn, window_log, device_log: collector/db.py).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DeviceRecord",
    "HallFacts",
    "RatingFact",
    "TxnFact",
    "Unit",
    "WindowRecord",
    "halls",
    "load_hall_facts",
]


@dataclass(frozen=True, slots=True)
class RatingFact:
    press_ms: int
    level: int
    reason: str | None = None
    mode: str = "invited"
    rt_ms: int | None = None
    state: str = "linked"             # linked, unlinked (held ratings are not judged yet)
    unlinked_reason: str | None = None
    staff_id: str | None = None
    txn_completed_ms: int | None = None  # completion of the linked transaction
    device: str = ""
    device_ts: int | None = None
    txn: str | None = None            # the linked transaction's case number
    seq: int | None = None            # the device's message sequence number (with its boot)
    txn_started_ms: int | None = None  # start of the linked transaction's service
    boot: int | None = None


@dataclass(frozen=True, slots=True)
class TxnFact:
    completed_ms: int
    state: str                        # awaiting, rated, unrated
    staff_id: str = ""
    started_ms: int | None = None     # when the business system began the service
    txn: str = ""                     # case number


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """A window_log row: staff_signon/off, window_paused/resumed."""

    at_ms: int
    kind: str
    staff_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device_log row: a status change or a device event (heartbeat, key_uninvited, ...)."""

    at_ms: int
    received_ms: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict, hash=False)
    device: str = ""
    boot: int | None = None  # the message's boot counter; None in rows stored before schema 2


@dataclass(frozen=True, slots=True)
class Unit:
    """What one verdict is about: a window (staff None) or one staff member at a window.

    `history` holds the levels of the unit's ratings before the period (oldest first), the
    baseline of its own past behaviour.
    """

    window: str
    staff: str | None
    ratings: tuple[RatingFact, ...]
    txns: tuple[TxnFact, ...]
    window_log: tuple[WindowRecord, ...] = ()
    device_log: tuple[DeviceRecord, ...] = ()
    history: tuple[int, ...] = ()
    history_rated: int = 0     # transactions before the period that were rated ...
    history_decided: int = 0   # ... out of those rated or unrated
    has_device: bool = True
    history_rts: tuple[int, ...] = ()  # response times of invited ratings before the period
    history_rt_levels: tuple[int, ...] = ()  # ... and their levels, in the same order (or ())
    history_rt_staff: tuple[str | None, ...] = ()  # ... and who served (or ())
    history_rt_press: tuple[int, ...] = ()  # ... and when they were pressed (or ())
    held: tuple[RatingFact, ...] = ()  # ratings the linking engine holds (not judged yet)

    @property
    def label(self) -> str:
        return self.window if self.staff is None else f"{self.window}/{self.staff}"

    def for_staff(self, staff: str) -> Unit:
        """The same window restricted to what `staff` is accountable for (ratings, transactions)."""
        return replace(
            self, staff=staff,
            ratings=tuple(r for r in self.ratings if r.staff_id == staff),
            txns=tuple(t for t in self.txns if t.staff_id == staff),
            device_log=(), has_device=False, history=(), history_rated=0, history_decided=0,
            history_rts=(), history_rt_levels=(), history_rt_staff=(), history_rt_press=(),
            held=(),
        )


@dataclass(frozen=True, slots=True)
class HallFacts:
    hall: str
    units: tuple[Unit, ...]
    has_feed: bool       # the business system reports transactions to this hall
    has_signons: bool    # ... and staff sign-on/off


def halls(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT hall FROM device UNION SELECT hall FROM txn UNION SELECT hall FROM rating "
        "ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def load_hall_facts(conn: sqlite3.Connection, hall: str, start_ms: int, end_ms: int,
                    history_start_ms: int, device_lead_ms: int = 12 * 3600_000) -> HallFacts:
    """Read one hall's facts for [start_ms, end_ms], its ratings' history from history_start_ms,
    and device events from `device_lead_ms` before the start (to know the state at the start)."""
    ratings: dict[str, list[RatingFact]] = {}
    history: dict[str, list[int]] = {}
    history_rts: dict[str, list[int]] = {}
    history_rt_levels: dict[str, list[int]] = {}
    history_rt_staff: dict[str, list[str | None]] = {}
    history_rt_press: dict[str, list[int]] = {}
    held: dict[str, list[RatingFact]] = {}
    for row in conn.execute(
        "SELECT r.window, r.press_ms, r.level, r.reason, r.mode, r.rt_ms, r.state, "
        "r.unlinked_reason, r.staff_id, t.completed_ms, r.device, r.device_ts, r.txn, r.seq, "
        "t.started_ms, r.boot "
        "FROM rating r LEFT JOIN txn t ON t.hall = r.hall AND t.txn = r.txn "
        "WHERE r.hall=? AND r.press_ms >= ? AND r.press_ms <= ? "
        "ORDER BY r.press_ms, r.rating_id",
        (hall, history_start_ms, end_ms),
    ):
        window, press = row[0], row[1]
        if row[6] == "held":  # only the key counters see them (the device did publish them)
            if press >= start_ms:
                held.setdefault(window, []).append(RatingFact(press, *row[2:]))
            continue
        if press < start_ms:
            history.setdefault(window, []).append(row[2])
            if row[4] == "invited" and row[5] is not None:
                history_rts.setdefault(window, []).append(row[5])
                history_rt_levels.setdefault(window, []).append(row[2])
                history_rt_staff.setdefault(window, []).append(row[8])
                history_rt_press.setdefault(window, []).append(press)
        else:
            ratings.setdefault(window, []).append(RatingFact(press, *row[2:]))
    txns: dict[str, list[TxnFact]] = {}
    past: dict[str, list[int]] = {}  # window -> [rated, decided] before the period
    for window, completed, state, staff, started, txn in conn.execute(
        "SELECT window, completed_ms, state, staff_id, started_ms, txn FROM txn WHERE hall=? "
        "AND completed_ms >= ? AND completed_ms <= ? ORDER BY completed_ms",
        (hall, history_start_ms, end_ms),
    ):
        if completed >= start_ms:
            txns.setdefault(window, []).append(TxnFact(completed, state, staff, started, txn))
        elif state != "awaiting":
            counts = past.setdefault(window, [0, 0])
            counts[0] += state == "rated"
            counts[1] += 1
    wlog: dict[str, list[WindowRecord]] = {}
    # All of the window's log up to the end: the state at the start depends on older events.
    for window, at, kind, staff in conn.execute(
        "SELECT window, at_ms, kind, staff_id FROM window_log WHERE hall=? AND at_ms <= ? "
        "AND at_ms >= ? ORDER BY at_ms, id",
        (hall, end_ms, start_ms - 7 * 86_400_000),
    ):
        wlog.setdefault(window, []).append(WindowRecord(at, kind, staff))
    dlog: dict[str, list[DeviceRecord]] = {}
    for device, window, kind, at, received, data, boot in conn.execute(
        "SELECT device, window, kind, at_ms, received_ms, data, boot FROM device_log WHERE hall=? "
        "AND received_ms >= ? AND received_ms <= ? ORDER BY received_ms, id",
        (hall, start_ms - device_lead_ms, end_ms),
    ):
        dlog.setdefault(window, []).append(
            DeviceRecord(at, received, kind, json.loads(data), device, boot))
    devices = {w for (w,) in conn.execute(
        "SELECT DISTINCT window FROM device WHERE hall=? AND state='active'", (hall,))}
    has_feed = conn.execute(
        "SELECT 1 FROM txn WHERE hall=? LIMIT 1", (hall,)).fetchone() is not None
    has_signons = conn.execute(
        "SELECT 1 FROM window_log WHERE hall=? AND kind LIKE 'staff_%' LIMIT 1", (hall,)
    ).fetchone() is not None
    windows = sorted(set(ratings) | set(txns) | devices | set(dlog))

    def unit(w: str) -> Unit:
        rated, decided = past.get(w, (0, 0))
        return Unit(
            w, None, tuple(ratings.get(w, ())), tuple(txns.get(w, ())), tuple(wlog.get(w, ())),
            tuple(dlog.get(w, ())), tuple(history.get(w, ())), rated, decided,
            has_device=w in devices or w in dlog, history_rts=tuple(history_rts.get(w, ())),
            history_rt_levels=tuple(history_rt_levels.get(w, ())),
            history_rt_staff=tuple(history_rt_staff.get(w, ())),
            history_rt_press=tuple(history_rt_press.get(w, ())),
            held=tuple(held.get(w, ())))

    units = tuple(unit(w) for w in windows)
    return HallFacts(hall, units, has_feed, has_signons)
