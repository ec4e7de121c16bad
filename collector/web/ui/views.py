"""What the UI's pages show: read-only queries and plain view rows (no HTTP here).

Everything that changes a case goes through `CaseService`; this module only reads the state
database (cases via the service, so its hall check applies; appeals, the audit trail of a case and
the directory by SQL, always restricted to the reading user's hall).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timezone
from typing import Any

from collector.manager.cases import Case, User
from collector.manager.directory import Names, lookup
from collector.reasons import REASON_LABELS

__all__ = ["AppealRow", "CaseRow", "DirectoryView", "NameCache", "StepRow", "appeals_of_case",
           "case_row", "directory", "fmt_ms", "pending_appeals", "reason_text", "steps_of_case"]

ACTIVE_STATES = ("open", "verified", "rectified", "called")
STATES = (*ACTIVE_STATES, "closed", "voided")


def fmt_ms(ms: int | None, tz: timezone) -> str:
    """A time as the hall reads it (its local time zone), to the minute."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def reason_text(tag: str | None, lang: str) -> str:
    """The reason tag's words; a text that is not a known tag is shown as it is."""
    if not tag:
        return ""
    label = REASON_LABELS.get(tag)
    if label is None:
        return tag
    return label[0] if lang == "zh" else label[1]


@dataclass(frozen=True)
class CaseRow:
    case: Case
    window_name: str
    staff_name: str
    staff_badge: str | None
    service_name: str
    reason: str
    opened: str
    closed: str
    overdue_days: int  # > 0: overdue by so many calendar days
    days_left: int  # calendar days until the due date (0: due today); only when not overdue
    active: bool


NameCache = dict[tuple[str, str, str, str | None], Names]


def case_row(conn: sqlite3.Connection, case: Case, today: date, tz: timezone,
             lang: str, cache: NameCache | None = None) -> CaseRow:
    """The case as a page shows it; `cache` (one per request) spares the directory look-ups of
    a long list, where the same window and staff come again and again."""
    key = (case.hall, case.window, case.staff_id, case.service_code)
    names = cache.get(key) if cache is not None else None
    if names is None:
        names = lookup(conn, *key)
        if cache is not None:
            cache[key] = names
    overdue = (today - case.due).days if case.overdue(today) else 0
    return CaseRow(case, names.window, names.staff, names.badge, names.service,
                   reason_text(case.reason, lang), fmt_ms(case.opened_ms, tz),
                   fmt_ms(case.closed_ms, tz), overdue, max(0, (case.due - today).days),
                   case.state in ACTIVE_STATES)


@dataclass(frozen=True)
class StepRow:
    at: str
    actor: str
    action: str  # the audit action, e.g. 'case.verify'
    data: dict[str, Any]


def steps_of_case(conn: sqlite3.Connection, case_id: int, tz: timezone) -> list[StepRow]:
    """The case's trail as the audit log recorded it: who did what, and when."""
    rows = conn.execute("SELECT at_ms, actor, action, data FROM mgr_audit WHERE subject=? "
                        "ORDER BY seq", (f"case:{case_id}",)).fetchall()
    out = []
    for at_ms, actor, action, data in rows:
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {}
        out.append(StepRow(fmt_ms(at_ms, tz), actor, action,
                           parsed if isinstance(parsed, dict) else {}))
    return out


@dataclass(frozen=True)
class AppealRow:
    appeal_id: int
    case_id: int
    filed_by: str
    grounds: str
    filed: str
    state: str
    decided_by: str | None
    decided: str
    note: str | None
    window_name: str
    staff_name: str
    txn: str
    level: int


_APPEAL_SQL = ("SELECT a.appeal_id, a.case_id, a.filed_by, a.grounds, a.filed_ms, a.state, "
               "a.decided_by, a.decided_ms, a.note, c.hall, c.window, c.staff_id, c.txn, c.level "
               "FROM mgr_appeal a JOIN mgr_case c ON c.case_id = a.case_id ")


def _appeals(conn: sqlite3.Connection, where: str, params: tuple[Any, ...],
             tz: timezone) -> list[AppealRow]:
    out = []
    for (aid, cid, filed_by, grounds, filed_ms, state, decided_by, decided_ms, note, hall,
         window, staff, txn, level) in conn.execute(_APPEAL_SQL + where, params):
        names = lookup(conn, hall, window, staff)
        out.append(AppealRow(aid, cid, filed_by, grounds, fmt_ms(filed_ms, tz), state,
                             decided_by, fmt_ms(decided_ms, tz), note, names.window, names.staff,
                             txn, level))
    return out


def appeals_of_case(conn: sqlite3.Connection, user: User, case_id: int,
                    tz: timezone) -> list[AppealRow]:
    return _appeals(conn, "WHERE a.case_id=? AND c.hall=? ORDER BY a.appeal_id",
                    (case_id, user.hall), tz)


def pending_appeals(conn: sqlite3.Connection, user: User, tz: timezone,
                    decided_limit: int = 50) -> tuple[list[AppealRow], list[AppealRow]]:
    """(pending appeals, the latest decided ones) of the user's hall."""
    pending = _appeals(conn, "WHERE c.hall=? AND a.state='pending' ORDER BY a.appeal_id",
                       (user.hall,), tz)
    decided = _appeals(conn, "WHERE c.hall=? AND a.state!='pending' "
                       "ORDER BY a.decided_ms DESC, a.appeal_id DESC LIMIT ?",
                       (user.hall, decided_limit), tz)
    return pending, decided


@dataclass(frozen=True)
class DirectoryView:
    hall: str
    windows: list[tuple[str, str, str]]  # window, name, service names
    staff: list[tuple[str, str, str, str, str]]  # staff id, name, badge, department, windows
    services: list[tuple[str, str, str]]  # code, name, department


def directory(conn: sqlite3.Connection, user: User) -> DirectoryView:
    """The user's hall: its windows and staff, and every service."""
    svc_names = dict(conn.execute("SELECT code, name FROM dir_service").fetchall())
    windows = [(w, name, "、".join(svc_names.get(s, s) for s in services.split(";") if s))
               for w, name, services in conn.execute(
                   "SELECT window, name, services FROM dir_window WHERE hall=? ORDER BY window",
                   (user.hall,))]
    win_names = {w: name for w, name, _ in windows}
    staff = [(sid, name, badge or "", dept or "",
              "、".join(win_names.get(w, w) for w in wins.split(";") if w))
             for sid, name, badge, dept, wins in conn.execute(
                 "SELECT staff_id, name, badge, department, windows FROM dir_staff "
                 "WHERE hall=? ORDER BY staff_id", (user.hall,))]
    services = [(code, name, dept or "") for code, name, dept in conn.execute(
        "SELECT code, name, department FROM dir_service ORDER BY code")]
    return DirectoryView(user.hall, windows, staff, services)
