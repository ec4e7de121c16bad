"""The linking engine: ties each rating to the completed transaction (办件) it rates.

Deterministic: every method takes the events and the current time (`now_ms`) and returns the
decisions it made; nothing reads a clock or the network. The state lives in the SQLite connection
it is given, inside the caller's transaction, so a crash before commit undoes a batch entirely and
a restart resumes exactly where the last commit left off.

Rules (docs/linking.md explains them with examples):

* A completed transaction awaits a rating until `completed + rating_window`; the window's device
  is invited if the invitation can still be useful.
* A rating naming its transaction links if that transaction is at the same window, not yet rated,
  and the press came before the deadline; otherwise it is unlinked with the reason.
* A rating naming no transaction links to the most recent unrated transaction of its window whose
  rating window covers the press.
* A rating that finds no transaction (yet) is held for `grace` and judged again when a matching
  transaction arrives or the grace runs out.
* A transaction whose deadline passes unrated is recorded as unrated, with the configured default
  level if local policy has one. A rating pressed in time but delivered late (device outbox after an
  outage) still links to it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "Decision",
    "Invite",
    "Linker",
    "RatingIn",
    "RatingJudged",
    "TxnIn",
    "TxnRecorded",
    "Unlinked",
    "WindowEvent",
    "WindowSet",
]

# A press may precede the business system's completion stamp by this much (clocks differ).
EARLY_TOLERANCE_MS = 60_000


class Unlinked(StrEnum):
    UNKNOWN = "unknown"            # names a transaction that never arrived
    ALREADY_RATED = "already_rated"
    EXPIRED = "expired"            # pressed after the transaction's rating window
    WRONG_WINDOW = "wrong_window"  # the named transaction belongs to another window
    NO_TRANSACTION = "no_transaction"  # names none, and none was awaiting at the window


@dataclass(frozen=True, slots=True)
class TxnIn:
    hall: str
    window: str
    txn: str
    staff_id: str
    staff_name: str
    staff_badge: str
    service_code: str
    service_name: str
    started_ms: int
    completed_ms: int
    outcome: str


@dataclass(frozen=True, slots=True)
class RatingIn:
    hall: str
    window: str
    device: str
    boot: int
    seq: int
    level: int
    reason: str | None
    mode: str
    rt_ms: int | None
    txn: str | None
    press_ms: int
    received_ms: int
    device_ts: int | None

    @property
    def rating_id(self) -> str:
        return f"{self.device}:{self.boot}:{self.seq}"


@dataclass(frozen=True, slots=True)
class WindowEvent:
    hall: str
    window: str
    kind: str  # staff_signon, staff_signoff, window_paused, window_resumed
    ts_ms: int
    staff_id: str | None = None
    staff_name: str | None = None
    staff_badge: str | None = None
    reason: str | None = None


# --- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invite:
    hall: str
    window: str
    txn: str
    staff_name: str
    staff_badge: str
    service_name: str
    completed_ms: int


@dataclass(frozen=True, slots=True)
class TxnRecorded:
    """A transaction's current state; rewritten (same point) when it changes."""

    txn: TxnIn
    state: str  # awaiting, rated, unrated
    level: int | None
    defaulted: bool
    rating_id: str | None


@dataclass(frozen=True, slots=True)
class RatingJudged:
    rating: RatingIn
    linked: bool
    reason: Unlinked | None
    txn: str | None  # the linked case number
    staff_id: str | None
    service_code: str | None
    paused: bool
    signed_on: bool | None  # None: no business system tells us


@dataclass(frozen=True, slots=True)
class WindowSet:
    event: WindowEvent


Decision = Invite | TxnRecorded | RatingJudged | WindowSet

_TXN_COLS = (
    "hall, window, txn, staff_id, staff_name, staff_badge, service_code, service_name, "
    "started_ms, completed_ms, outcome"
)
_RATING_COLS = (
    "hall, window, device, boot, seq, level, reason, mode, rt_ms, txn_claimed, press_ms, "
    "received_ms, device_ts"
)


def _txn_from_row(row: tuple[Any, ...]) -> TxnIn:
    return TxnIn(*row[:11])


class Linker:
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        rating_window_ms: int = 600_000,
        grace_ms: int = 30_000,
        invite_ttl_ms: int = 120_000,
        unrated_default: int | None = None,
    ) -> None:
        self._db = conn
        self.rating_window_ms = rating_window_ms
        self.grace_ms = grace_ms
        self.invite_ttl_ms = invite_ttl_ms
        self.unrated_default = unrated_default

    # -- transactions ----------------------------------------------------------------------------

    def txn_completed(self, t: TxnIn, now_ms: int) -> list[Decision]:
        db = self._db
        deadline = t.completed_ms + self.rating_window_ms
        cur = db.execute(
            f"INSERT INTO txn ({_TXN_COLS}, deadline_ms, state) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'awaiting') ON CONFLICT (hall, txn) DO NOTHING",
            (t.hall, t.window, t.txn, t.staff_id, t.staff_name, t.staff_badge, t.service_code,
             t.service_name, t.started_ms, t.completed_ms, t.outcome, deadline),
        )
        # Ratings that came before this transaction: the one naming it, else an implicit one.
        # Asked before the insert's row count is read: one round trip for both on PostgreSQL.
        held_cur = db.execute(
            f"SELECT rating_id, {_RATING_COLS} FROM rating WHERE state='held' AND hall=? "
            "AND (txn_claimed=? "
            "OR (txn_claimed IS NULL AND window=? AND press_ms BETWEEN ? AND ?)) "
            "ORDER BY txn_claimed IS NULL, press_ms",
            (t.hall, t.txn, t.window, t.completed_ms - EARLY_TOLERANCE_MS, deadline),
        )
        if cur.rowcount == 0:
            held_cur.close()
            return []  # the same case number again: one transaction, one rating
        out: list[Decision] = [TxnRecorded(t, "awaiting", None, False, None)]
        held = held_cur.fetchall()
        for row in held:
            out += self._judge(RatingIn(*row[1:]), now_ms, final=False)
            if self._txn_state(t.hall, t.txn) == "rated":
                break
        if not held or self._txn_state(t.hall, t.txn) == "awaiting":
            if deadline <= now_ms:
                out += self._expire(t)
            elif now_ms - t.completed_ms < self.invite_ttl_ms:
                out.append(Invite(t.hall, t.window, t.txn, t.staff_name, t.staff_badge,
                                  t.service_name, t.completed_ms))
        return out

    def _txn_state(self, hall: str, txn: str) -> str | None:
        row = self._db.execute("SELECT state FROM txn WHERE hall=? AND txn=?",
                               (hall, txn)).fetchone()
        return None if row is None else row[0]

    def _expire(self, t: TxnIn) -> list[Decision]:
        level = self.unrated_default
        self._db.execute(
            "UPDATE txn SET state='unrated', level=? WHERE hall=? AND txn=? AND state='awaiting'",
            (level, t.hall, t.txn),
        )
        return [TxnRecorded(t, "unrated", level, level is not None, None)]

    # -- ratings ---------------------------------------------------------------------------------

    def rating_reads(self, r: RatingIn) -> sqlite3.Cursor:
        """Ask now what `rating(r)` reads first (the window's state and the candidate
        transaction, one statement): a caller with a result of its own to wait for (the replay
        check) asks it before that, and on PostgreSQL (pipelined) both come back in one round
        trip. The caller reads it by passing it to `rating`, or closes it."""
        return self._candidate_query(r)

    def rating(self, r: RatingIn, now_ms: int,
               reads: sqlite3.Cursor | None = None) -> list[Decision]:
        """Judge a new rating; `reads`: its `rating_reads`, if asked already."""
        row = (self._candidate_query(r) if reads is None else reads).fetchone()
        # Judged before it is stored: the row is inserted once, in its final state.
        return self._judge(r, now_ms, final=self.grace_ms == 0,
                           context=self._window_row(row), candidate=row)

    def _insert_rating(self, r: RatingIn, paused: bool, signed_on: bool | None, state: str,
                       hold_until_ms: int | None = None, txn: str | None = None,
                       staff_id: str | None = None, service_code: str | None = None,
                       unlinked_reason: str | None = None) -> None:
        self._db.execute(
            f"INSERT INTO rating (rating_id, {_RATING_COLS}, state, paused, signed_on, "
            "hold_until_ms, txn, staff_id, service_code, unlinked_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.rating_id, r.hall, r.window, r.device, r.boot, r.seq, r.level, r.reason, r.mode,
             r.rt_ms, r.txn, r.press_ms, r.received_ms, r.device_ts, state, int(paused),
             None if signed_on is None else int(signed_on), hold_until_ms, txn, staff_id,
             service_code, unlinked_reason),
        )

    def paused(self, hall: str, window: str) -> bool | None:
        """Whether a window is paused now; None if no pause or staff event was ever seen."""
        row = self._db.execute(
            "SELECT paused FROM window_state WHERE hall=? AND window=?", (hall, window)
        ).fetchone()
        return None if row is None else bool(row[0])

    @staticmethod
    def _window_row(row: tuple[Any, ...]) -> tuple[bool, bool | None, str | None]:
        """(paused, staff signed on (None: unknown), signed-on staff id) of the window, from a
        `_candidate_query` row (paused is NULL there when the window has no window_state)."""
        if row[0] is None:
            return False, None, None
        return bool(row[0]), row[1] is not None, row[1]

    def _candidate_query(self, r: RatingIn) -> sqlite3.Cursor:
        """One row: the window's state (paused, staff_id) and the transaction `r` may rate
        (_TXN_COLS, state, deadline_ms; NULLs if none), executed, for `_candidate`. One
        statement for both: each costs a round trip on PostgreSQL."""
        ws = ("SELECT ws.paused, ws.staff_id, t.* FROM (SELECT 1 AS one) AS one "
              "LEFT JOIN window_state AS ws ON ws.hall = ? AND ws.window = ? ")
        if r.txn is not None:
            return self._db.execute(
                ws + f"LEFT JOIN (SELECT {_TXN_COLS}, state, deadline_ms FROM txn "
                "WHERE hall = ? AND txn = ?) AS t ON 1 = 1",
                (r.hall, r.window, r.hall, r.txn))
        return self._db.execute(
            ws + f"LEFT JOIN (SELECT {_TXN_COLS}, state, deadline_ms FROM txn "
            "WHERE hall = ? AND window = ? AND state IN ('awaiting', 'unrated') "
            "AND completed_ms <= ? AND deadline_ms >= ? "
            "ORDER BY completed_ms DESC, txn DESC LIMIT 1) AS t ON 1 = 1",
            (r.hall, r.window, r.hall, r.window, r.press_ms + EARLY_TOLERANCE_MS, r.press_ms))

    def _candidate(self, r: RatingIn, window_and_txn: tuple[Any, ...]
                   ) -> tuple[TxnIn, str, int] | Unlinked | None:
        """The transaction `r` rates, the reason it cannot link, or None if none is known yet;
        `window_and_txn`: the row of its `_candidate_query`."""
        row = None if window_and_txn[4] is None else window_and_txn[2:]  # t.txn NULL: none
        if r.txn is not None:
            if row is None:
                return None
            t, state, deadline = _txn_from_row(row), row[11], row[12]
            if t.window != r.window:
                return Unlinked.WRONG_WINDOW
            if state == "rated":
                return Unlinked.ALREADY_RATED
            if r.press_ms > deadline:
                return Unlinked.EXPIRED
            return t, state, deadline
        if row is None:
            return None
        return _txn_from_row(row), row[11], row[12]

    def _judge(self, r: RatingIn, now_ms: int, *, final: bool,
               context: tuple[bool, bool | None, str | None] | None = None,
               candidate: tuple[Any, ...] | None = None) -> list[Decision]:
        """Link `r` or record why not. `context` is the window's state when `r` arrived (read
        from the stored rating when a held rating is judged again); given, `r` is a new rating,
        not stored yet, and is inserted in the state judged. `candidate`: the row of its
        `_candidate_query`, if read already."""
        db = self._db
        if candidate is None:
            candidate = self._candidate_query(r).fetchone()
        found = self._candidate(r, candidate)
        new = context is not None
        if context is None:
            ctx = db.execute(
                "SELECT paused, signed_on FROM rating WHERE rating_id=?", (r.rating_id,)
            ).fetchone()
            paused, signed_on = bool(ctx[0]), None if ctx[1] is None else bool(ctx[1])
            staff_id = None
        else:
            paused, signed_on, staff_id = context
        if isinstance(found, tuple):
            t = found[0]
            db.execute(
                "UPDATE txn SET state='rated', rating_id=?, level=? WHERE hall=? AND txn=?",
                (r.rating_id, r.level, t.hall, t.txn),
            )
            if new:
                self._insert_rating(r, paused, signed_on, "linked", txn=t.txn,
                                    staff_id=t.staff_id, service_code=t.service_code)
            else:
                db.execute(
                    "UPDATE rating SET state='linked', hold_until_ms=NULL, txn=?, staff_id=?, "
                    "service_code=? WHERE rating_id=?",
                    (t.txn, t.staff_id, t.service_code, r.rating_id),
                )
            return [
                RatingJudged(r, True, None, t.txn, t.staff_id, t.service_code, paused, signed_on),
                TxnRecorded(t, "rated", r.level, False, r.rating_id),
            ]
        if found is None:
            hold_until = r.received_ms + self.grace_ms
            if not final and hold_until > now_ms:
                if new:
                    self._insert_rating(r, paused, signed_on, "held", hold_until_ms=hold_until)
                else:
                    db.execute("UPDATE rating SET hold_until_ms=? WHERE rating_id=?",
                               (hold_until, r.rating_id))
                return []
            found = Unlinked.UNKNOWN if r.txn is not None else Unlinked.NO_TRANSACTION
        if context is None:
            staff_id = self._window_row(candidate)[2]  # the window's staff now
        if new:
            self._insert_rating(r, paused, signed_on, "unlinked", staff_id=staff_id,
                                unlinked_reason=found.value)
        else:
            db.execute(
                "UPDATE rating SET state='unlinked', hold_until_ms=NULL, unlinked_reason=?, "
                "staff_id=? WHERE rating_id=?",
                (found.value, staff_id, r.rating_id),
            )
        return [RatingJudged(r, False, found, None, staff_id, None, paused, signed_on)]

    # -- windows ---------------------------------------------------------------------------------

    def window_event(self, e: WindowEvent) -> list[Decision]:
        db = self._db
        db.execute(
            "INSERT INTO window_state (hall, window, updated_ms) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (e.hall, e.window, e.ts_ms),
        )
        if e.kind == "staff_signon":
            db.execute(
                "UPDATE window_state SET staff_id=?, staff_name=?, staff_badge=?, updated_ms=? "
                "WHERE hall=? AND window=?",
                (e.staff_id, e.staff_name, e.staff_badge, e.ts_ms, e.hall, e.window),
            )
        elif e.kind == "staff_signoff":
            # Only the staff member who is signed on can sign off (A/B rotations overlap).
            db.execute(
                "UPDATE window_state SET staff_id=NULL, staff_name=NULL, staff_badge=NULL, "
                "updated_ms=? WHERE hall=? AND window=? AND (staff_id=? OR staff_id IS NULL)",
                (e.ts_ms, e.hall, e.window, e.staff_id),
            )
        elif e.kind in ("window_paused", "window_resumed"):
            db.execute(
                "UPDATE window_state SET paused=?, updated_ms=? WHERE hall=? AND window=?",
                (int(e.kind == "window_paused"), e.ts_ms, e.hall, e.window),
            )
        elif e.kind == "queue_called":
            pass  # the next citizen was called (叫号): only logged, for the detector
        else:
            raise ValueError(f"unknown window event {e.kind!r}")
        db.execute(
            "INSERT INTO window_log (hall, window, kind, at_ms, staff_id, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (e.hall, e.window, e.kind, e.ts_ms, e.staff_id, e.reason),
        )
        return [WindowSet(e)]

    # -- time ------------------------------------------------------------------------------------

    def tick(self, now_ms: int, owns: Callable[[str], bool] | None = None) -> list[Decision]:
        """Judge held ratings whose grace ran out, then expire transactions past their deadline.
        `owns`: only the halls it accepts (a partitioned service: the halls it serves)."""
        db = self._db
        out: list[Decision] = []
        held = db.execute(
            f"SELECT rating_id, {_RATING_COLS} FROM rating WHERE state='held' AND hold_until_ms<=? "
            "ORDER BY hold_until_ms, rating_id",
            (now_ms,),
        ).fetchall()
        for row in held:
            if owns is None or owns(row[1]):
                out += self._judge(RatingIn(*row[1:]), now_ms, final=True)
        due = db.execute(
            f"SELECT {_TXN_COLS} FROM txn WHERE state='awaiting' AND deadline_ms<=? "
            "ORDER BY deadline_ms, hall, txn",
            (now_ms,),
        ).fetchall()
        for row in due:
            if owns is None or owns(row[0]):
                out += self._expire(_txn_from_row(row))
        return out

    def next_due_ms(self, owns: Callable[[str], bool] | None = None) -> int | None:
        """When `tick` next has something to do (for the service's timer); `owns` as in tick."""
        if owns is None:
            row = self._db.execute(
                "SELECT min(x) FROM (SELECT min(hold_until_ms) AS x FROM rating "
                "WHERE state='held' UNION ALL SELECT min(deadline_ms) FROM txn "
                "WHERE state='awaiting') AS due"
            ).fetchone()
            due: int | None = row[0]
            return due
        rows = self._db.execute(
            "SELECT hall, min(hold_until_ms) FROM rating WHERE state='held' GROUP BY hall "
            "UNION ALL SELECT hall, min(deadline_ms) FROM txn WHERE state='awaiting' GROUP BY hall"
        ).fetchall()
        mine = [int(x) for hall, x in rows if owns(hall)]
        return min(mine) if mine else None
