"""差评 follow-up cases and appeals (申诉): the service API the web UI calls.

Every action takes the acting user's `username`; the role check is here, not in the handler:
- manager (hall manager): every step, files and decides appeals;
- lead (window lead): records 核实/整改/回访 for cases of its hall, files appeals;
- inspector (督查): read-only.
An appeal is decided by a manager who is neither the person who filed it nor the staff member
concerned. Every step goes into the hash-chained audit log in the same transaction.

Cases are opened by `open_cases` (a reconciliation over committed, rated transactions with level
1-2): idempotent (UNIQUE (hall, txn)), so it can run after every batch or on a timer without a hook
in the ingest pipeline that is being moved.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from collector.manager import ManagerError, audit
from collector.manager.deadlines import DeadlineRule

__all__ = ["Case", "CaseService", "User", "check_new_password", "check_password",
           "hash_password"]

ROLES = ("manager", "lead", "inspector")
_STEP_FROM = {"verify": "open", "rectify": "verified", "callback": "rectified", "close": "called"}
_STEP_TO = {"verify": "verified", "rectify": "rectified", "callback": "called", "close": "closed"}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(h).decode()


def check_new_password(password: str) -> None:
    """The rule for a new password (user add, password reset)."""
    if len(password) < 8:
        raise ManagerError("weak_password", "password must have at least 8 characters")


def check_password(password: str, stored: str) -> bool:
    try:
        _, s, h = stored.split("$")
        want = base64.b64decode(h)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(s), n=2**14, r=8, p=1)
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class User:
    username: str
    role: str
    hall: str
    staff_id: str | None


@dataclass(frozen=True)
class Case:
    case_id: int
    hall: str
    txn: str
    window: str
    staff_id: str
    service_code: str | None
    level: int
    reason: str | None
    opened_ms: int
    due: date
    state: str
    finding: str | None
    action: str | None
    reached: bool | None
    citizen_view: str | None
    closed_ms: int | None

    def overdue(self, today: date) -> bool:
        return self.state not in ("closed", "voided") and today > self.due


_CASE_COLS = ("case_id, hall, txn, window, staff_id, service_code, level, reason, opened_ms, due, "
              "state, finding, action, reached, citizen_view, closed_ms")


def _case(row: tuple[Any, ...]) -> Case:
    r = list(row)
    r[9] = date.fromisoformat(r[9])
    r[13] = None if r[13] is None else bool(r[13])
    return Case(*r)


class CaseService:
    """Cases, appeals and users over the state database (schema 3)."""

    def __init__(self, conn: sqlite3.Connection, rule: DeadlineRule,
                 clock_ms: Callable[[], int], tz: timezone = timezone(timedelta(hours=8))) -> None:
        self.conn, self.rule, self.clock_ms, self.tz = conn, rule, clock_ms, tz

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _local_date(self, ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.tz).date()

    # users -------------------------------------------------------------------------------
    def add_user(self, actor: str, username: str, role: str, hall: str, password: str,
                 staff_id: str | None = None) -> User:
        """Bootstrapping: `actor` is 'admin' (the CLI) or a manager of the hall."""
        if role not in ROLES:
            raise ManagerError("bad_role", f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if actor != "admin":
            self._require(actor, ("manager",), hall)
        check_new_password(password)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM mgr_user WHERE username=?", (username,)).fetchone():
                raise ManagerError("exists", f"user {username!r} exists already")
            c.execute("INSERT INTO mgr_user VALUES (?,?,?,?,?,?)",
                      (username, role, hall, staff_id, hash_password(password), self.clock_ms()))
            audit.append(c, self.clock_ms(), actor, "user.add", username,
                         {"role": role, "hall": hall, "staff_id": staff_id})
        return User(username, role, hall, staff_id)

    def authenticate(self, username: str, password: str) -> User:
        row = self.conn.execute("SELECT pw_hash FROM mgr_user WHERE username=?",
                                (username,)).fetchone()
        if row is None or not check_password(password, row[0]):
            raise ManagerError("bad_credentials", "unknown user or wrong password")
        return self.user(username)

    def user(self, username: str) -> User:
        row = self.conn.execute("SELECT username, role, hall, staff_id FROM mgr_user "
                                "WHERE username=?", (username,)).fetchone()
        if row is None:
            raise ManagerError("not_found", f"no user {username!r}")
        return User(*row)

    def _require(self, username: str, roles: tuple[str, ...], hall: str) -> User:
        u = self.user(username)
        if u.role not in roles or u.hall != hall:
            raise ManagerError("forbidden", f"{username} ({u.role}, {u.hall}) may not do this "
                               f"in hall {hall}")
        return u

    # cases -------------------------------------------------------------------------------
    def open_cases(self, hall: str | None = None) -> list[int]:
        """Open a case for every rated transaction with a 差评 that has none (idempotent)."""
        opened: list[int] = []
        sql = ("SELECT t.hall, t.txn, t.window, t.staff_id, t.service_code, t.level, "
               "t.rating_id, r.reason, r.press_ms, t.completed_ms FROM txn t "
               "LEFT JOIN rating r ON r.rating_id = t.rating_id "
               "LEFT JOIN mgr_case m ON m.hall = t.hall AND m.txn = t.txn "
               "WHERE t.state = 'rated' AND t.level <= 2 AND m.case_id IS NULL "
               "AND (CAST(? AS TEXT) IS NULL OR t.hall = ?) ORDER BY t.completed_ms")
        # Read first without the write lock (the service calls this every minute; the ingest
        # worker needs the lock), then again under it when there is something to open.
        if not self.conn.execute(sql + " LIMIT 1", (hall, hall)).fetchone():
            return opened
        with self._tx() as c:
            rows = c.execute(sql, (hall, hall)).fetchall()
            for h, txn, window, staff, svc, level, rid, reason, press_ms, done_ms in rows:
                at = press_ms if press_ms is not None else done_ms
                due = self.rule.due(h, self._local_date(at))
                cur = c.execute(
                    "INSERT INTO mgr_case (hall, txn, window, staff_id, service_code, level, "
                    "reason, rating_id, opened_ms, due, state) VALUES (?,?,?,?,?,?,?,?,?,?,'open') "
                    "RETURNING case_id",  # not lastrowid: PostgreSQL has none
                    (h, txn, window, staff, svc, level, reason, rid, at, due.isoformat()))
                cid = int(cur.fetchall()[0][0])
                audit.append(c, self.clock_ms(), "system", "case.open", f"case:{cid}",
                             {"hall": h, "txn": txn, "level": level, "reason": reason,
                              "due": due.isoformat()})
                opened.append(cid)
        return opened

    def get(self, username: str, case_id: int) -> Case:
        row = self.conn.execute(f"SELECT {_CASE_COLS} FROM mgr_case WHERE case_id=?",  # noqa: S608
                                (case_id,)).fetchone()
        if row is None:
            raise ManagerError("not_found", f"no case {case_id}")
        case = _case(row)
        self._require(username, ROLES, case.hall)
        return case

    def list(self, username: str, *, open_only: bool = False) -> list[Case]:
        """The user's hall's cases: overdue first, then by due date."""
        u = self.user(username)
        sql = f"SELECT {_CASE_COLS} FROM mgr_case WHERE hall=?"  # noqa: S608
        if open_only:
            sql += " AND state NOT IN ('closed', 'voided')"
        cases = [_case(r) for r in self.conn.execute(sql + " ORDER BY due, case_id", (u.hall,))]
        today = self._local_date(self.clock_ms())
        return sorted(cases, key=lambda k: (not k.overdue(today), k.due, k.case_id))

    def _step(self, username: str, case_id: int, step: str, **fields: Any) -> Case:
        case = self.get(username, case_id)
        u = self._require(username, ("manager", "lead"), case.hall)
        if step == "close" and u.role != "manager":
            raise ManagerError("forbidden", "only the hall manager closes a case (办结)")
        if case.state != _STEP_FROM[step]:
            raise ManagerError("state", f"case {case_id} is {case.state}: cannot {step} now")
        now = self.clock_ms()
        sets = dict(fields, state=_STEP_TO[step])
        if step == "close":
            sets["closed_ms"] = now
        with self._tx() as c:  # the state is checked again under the write lock
            cur = c.execute(f"UPDATE mgr_case SET {', '.join(k + '=?' for k in sets)} "  # noqa: S608
                            "WHERE case_id=? AND state=?",
                            (*sets.values(), case_id, _STEP_FROM[step]))
            if cur.rowcount != 1:
                raise ManagerError("state", f"case {case_id} changed meanwhile: reload it")
            audit.append(c, now, username, f"case.{step}", f"case:{case_id}", fields)
        return self.get(username, case_id)

    def verify(self, username: str, case_id: int, finding: str) -> Case:
        """核实: the manager's or lead's finding."""
        return self._step(username, case_id, "verify", finding=_text(finding, "finding"))

    def rectify(self, username: str, case_id: int, action: str) -> Case:
        """整改: the action taken."""
        return self._step(username, case_id, "rectify", action=_text(action, "action"))

    def callback(self, username: str, case_id: int, reached: bool, citizen_view: str) -> Case:
        """回访: whether the citizen was reached and their view of the fix."""
        return self._step(username, case_id, "callback", reached=int(reached),
                          citizen_view=citizen_view.strip())

    def close(self, username: str, case_id: int) -> Case:
        """办结 (manager only)."""
        return self._step(username, case_id, "close")

    # appeals -----------------------------------------------------------------------------
    def file_appeal(self, username: str, case_id: int, grounds: str) -> int:
        """申诉: ask to void a mistaken or malicious 差评."""
        case = self.get(username, case_id)
        self._require(username, ("manager", "lead"), case.hall)
        if case.state in ("closed", "voided"):
            raise ManagerError("state", f"case {case_id} is {case.state}: no appeal")
        if self.conn.execute("SELECT 1 FROM mgr_appeal WHERE case_id=? AND state='pending'",
                             (case_id,)).fetchone():
            raise ManagerError("exists", f"case {case_id} has a pending appeal")
        now = self.clock_ms()
        with self._tx() as c:
            cur = c.execute("INSERT INTO mgr_appeal (case_id, filed_by, grounds, filed_ms, state) "
                            "VALUES (?,?,?,?,'pending') RETURNING appeal_id",
                            (case_id, username, _text(grounds, "grounds"), now))
            aid = int(cur.fetchall()[0][0])
            audit.append(c, now, username, "appeal.file", f"case:{case_id}",
                         {"appeal": aid, "grounds": grounds})
        return aid

    def decide_appeal(self, username: str, appeal_id: int, approve: bool, note: str) -> Case:
        """The second person's decision; approval voids the case (the 差评 is set aside)."""
        row = self.conn.execute("SELECT case_id, filed_by, state FROM mgr_appeal "
                                "WHERE appeal_id=?", (appeal_id,)).fetchone()
        if row is None:
            raise ManagerError("not_found", f"no appeal {appeal_id}")
        case_id, filed_by, state = row
        case = self.get(username, case_id)
        u = self._require(username, ("manager",), case.hall)
        if state != "pending":
            raise ManagerError("state", f"appeal {appeal_id} is {state} already")
        if username == filed_by:
            raise ManagerError("conflict", "the person who filed an appeal cannot decide it")
        if u.staff_id is not None and u.staff_id == case.staff_id:
            raise ManagerError("conflict", "the staff member concerned cannot decide the appeal")
        now = self.clock_ms()
        with self._tx() as c:
            c.execute("UPDATE mgr_appeal SET state=?, decided_by=?, decided_ms=?, note=? "
                      "WHERE appeal_id=?",
                      ("approved" if approve else "refused", username, now, note, appeal_id))
            if approve:
                c.execute("UPDATE mgr_case SET state='voided', closed_ms=? WHERE case_id=?",
                          (now, case_id))
            audit.append(c, now, username, "appeal.approve" if approve else "appeal.refuse",
                         f"case:{case_id}", {"appeal": appeal_id, "note": note})
        return self.get(username, case_id)


def _text(value: str, what: str) -> str:
    v = value.strip()
    if not v:
        raise ManagerError("empty", f"{what} must not be empty")
    return v
