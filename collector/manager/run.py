"""The hall manager's work inside the collector service: the thin adapter `service.py` runs
every `[manager] interval_s` on a connection of its own.

Each run (`ManagerRun.run_once`):
1. opens a case for every 差评 that has none (`CaseService.open_cases`, idempotent);
2. queues the follow-up figures for InfluxDB (docs/storage.md, "Follow-up"): one `followup`
   point per case, rewritten when the case changes, and one `followup_open` point per hall,
   window and staff member with the cases open and overdue now;
3. queues the directory's names (`directory` points) when they changed, and once a day;
4. writes last month's report (PDF and XLSX) of each hall into `[manager] monthly_report_dir`,
   once the month has ended in the hall's time, unless both files are there already.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

from influxdb_client import Point, WritePrecision
from starlette.routing import BaseRoute, Mount

from collector.config import Config, parse_days_per_hall, parse_offset
from collector.db import transaction
from collector.manager import ManagerError, audit
from collector.manager.cases import CaseService
from collector.manager.deadlines import Calendar, DeadlineRule, load_calendar
from collector.manager.directory import learn_from_txn
from collector.manager.report import case_flags, month_figures, write_pdf, write_xlsx
from collector.outbox import add_lines

__all__ = ["ManagerRun", "RunResult", "anchor_line", "case_service", "deadline_rule",
           "directory_lines", "followup_lines", "hall_tz", "last_month", "report_paths",
           "ui_mounts", "write_month_report"]

_LOG = logging.getLogger(__name__)
_NS = WritePrecision.NS
ALL_STAFF = "*"
DIRECTORY_EVERY_MS = 86_400_000  # names are written again at least this often (retention)
# A unit's open/overdue counts are written when they change, and at least this often, so that
# the last hour (the overdue alert rule's range) and today always hold its latest count.
OPEN_EVERY_MS = 1_800_000


def hall_tz(cfg: Config) -> timezone:
    """The halls' local time (`[detection] utc_offset`)."""
    return timezone(timedelta(minutes=parse_offset(cfg.detection.utc_offset)))


def deadline_rule(cfg: Config) -> DeadlineRule:
    """The configured deadline rule ([manager] followup_days, per hall, holidays_file)."""
    m = cfg.manager
    cal = load_calendar(m.holidays_file) if m.holidays_file else Calendar()
    return DeadlineRule(m.followup_days, parse_days_per_hall(m.followup_days_per_hall), cal)


def case_service(cfg: Config, conn: sqlite3.Connection, clock: Callable[[], int]) -> CaseService:
    """A CaseService with the configured deadline rule and the halls' time zone."""
    return CaseService(conn, deadline_rule(cfg), clock, hall_tz(cfg))


def ui_mounts(cfg: Config) -> list[BaseRoute]:
    """The manager's web UI at /ui on the collector's HTTP server, with the same deadline rule
    and time zone as the service's cases; none when [manager] is off or nothing listens."""
    if not (cfg.manager.enabled and cfg.http.listen):
        return []
    from collector.web.ui import UiSettings, build_ui

    settings = UiSettings(rule=deadline_rule(cfg), tz=hall_tz(cfg),
                          https_only=bool(cfg.http.tls_certfile))
    return [Mount("/ui", app=build_ui(cfg.state_target, settings))]


def _local(ms: int, tz: timezone) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).date()


Unit = tuple[str, str, str]  # hall, window, staff ("*": the window's total)
_FINAL = "('closed', 'voided')"


def followup_lines(conn: sqlite3.Connection, now_ms: int, tz: timezone, *,
                   after_id: int | None = None, also: frozenset[int] = frozenset(),
                   units: set[Unit] | None = None
                   ) -> tuple[dict[int, str], dict[Unit, tuple[tuple[int, int], str]],
                              frozenset[int]]:
    """({case_id: its `followup` line}, {unit: ((open, overdue), its `followup_open` line at
    `now_ms`)}, the ids of the cases not closed or voided).

    All cases, or with `after_id` only those that can have changed since a run that saw the
    cases up to `after_id`: the ones not closed or voided, the newer ones, and `also` (those
    that were open then). A closed or voided case counts neither open nor overdue, so the
    counts are right either way; `units` (updated in place) are the units to count, with 0
    for those without open cases, so that a window whose last case closed shows 0."""
    today = _local(now_ms, tz)
    per_case: dict[int, str] = {}
    still_open: set[int] = set()
    counts: dict[Unit, list[int]] = {}
    sql = ("SELECT case_id, hall, txn, window, staff_id, service_code, level, reason, "
           "opened_ms, due, state, closed_ms, reached, citizen_view FROM mgr_case")
    rows = conn.execute(sql).fetchall() if after_id is None else [
        *conn.execute(f"{sql} WHERE state NOT IN {_FINAL} OR case_id > ?",
                      (after_id,)),
        *(r for chunk in _chunks(sorted(also)) for r in conn.execute(
            f"{sql} WHERE state IN {_FINAL} AND case_id <= ? "
            f"AND case_id IN ({','.join('?' * len(chunk))})", (after_id, *chunk)))]
    for (cid, hall, txn, window, staff, service, level, reason, opened_ms, due, state,
         closed_ms, reached, view) in rows:
        if state not in ("closed", "voided"):
            still_open.add(cid)
        closed = None if closed_ms is None else _local(closed_ms, tz)
        f = case_flags(state, date.fromisoformat(due), closed,
                       None if reached is None else bool(reached), view, today)
        p = (Point("followup").tag("hall", hall).tag("window", window).tag("staff", staff)
             .tag("service", service or "unknown").field("case_id", cid).field("txn", txn)
             .field("level", level).field("state", state).field("due", due)
             .field("reason", reason or "").field("voided", int(state == "voided")))
        for k, v in f.items():
            p = p.field(k, v)
        # At the case's opening, with a stable sub-millisecond offset: rewriting overwrites.
        per_case[cid] = p.time(opened_ms * 1_000_000 + cid % 1_000_000, _NS).to_line_protocol()
        for key in ((hall, window, staff), (hall, window, ALL_STAFF)):
            u = counts.setdefault(key, [0, 0])
            u[0] += f["open"]
            u[1] += f["overdue"]
    if units is not None:
        units.update(counts)
        for key in units:
            counts.setdefault(key, [0, 0])
    now_lines = {}
    for (hall, window, staff), (n_open, n_over) in sorted(counts.items()):
        off = zlib.crc32(f"{hall}/{window}/{staff}".encode()) % 1_000_000
        now_lines[(hall, window, staff)] = ((n_open, n_over), (
            Point("followup_open").tag("hall", hall).tag("window", window).tag("staff", staff)
            .field("open", n_open).field("overdue", n_over)
            .time(now_ms * 1_000_000 + off, _NS).to_line_protocol()))
    return per_case, now_lines, frozenset(still_open)


def _chunks(ids: list[int], n: int = 500) -> list[list[int]]:
    return [ids[i:i + n] for i in range(0, len(ids), n)]


def directory_lines(conn: sqlite3.Connection, now_ms: int) -> list[str]:
    """One `directory` point per window, staff member and service: its name for the dashboards
    (tag `kind`, and the id under the tag the other measurements use: window, staff, service)."""
    lines = []
    ts = now_ms * 1_000_000
    for hall, window, name in conn.execute("SELECT hall, window, name FROM dir_window"):
        lines.append(Point("directory").tag("kind", "window").tag("hall", hall)
                     .tag("window", window).field("name", name).time(ts, _NS).to_line_protocol())
    for staff, name, badge, dept in conn.execute(
            "SELECT staff_id, name, badge, department FROM dir_staff"):
        lines.append(Point("directory").tag("kind", "staff").tag("staff", staff)
                     .field("name", name).field("badge", badge or "")
                     .field("department", dept or "").time(ts, _NS).to_line_protocol())
    for code, name, dept in conn.execute("SELECT code, name, department FROM dir_service"):
        lines.append(Point("directory").tag("kind", "service").tag("service", code)
                     .field("name", name).field("department", dept or "").time(ts, _NS)
                     .to_line_protocol())
    return lines


def last_month(now_ms: int, tz: timezone) -> str:
    """The month (YYYY-MM) that ended last in local time."""
    d = _local(now_ms, tz).replace(day=1) - timedelta(days=1)
    return f"{d.year:04d}-{d.month:02d}"


def report_paths(out_dir: Path, hall: str, month: str) -> tuple[Path, Path]:
    return out_dir / f"{hall}-{month}.pdf", out_dir / f"{hall}-{month}.xlsx"


def write_month_report(conn: sqlite3.Connection, hall: str, month: str, out_dir: Path,
                       tz: timezone) -> tuple[Path, Path, int]:
    """Write the hall's report of the month (PDF, XLSX) into out_dir; each file appears whole
    (written under a temporary name, then renamed). Returns the paths and the page count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pdf, xlsx = report_paths(out_dir, hall, month)
    figs = month_figures(conn, hall, month, tz)
    tmp_pdf, tmp_xlsx = pdf.with_name(f".{pdf.name}.tmp.pdf"), xlsx.with_name(f".{xlsx.name}.tmp")
    pages = write_pdf(figs, hall, month, tmp_pdf, audit.head(conn))
    write_xlsx(figs, hall, month, tmp_xlsx)
    os.replace(tmp_xlsx, xlsx)
    os.replace(tmp_pdf, pdf)  # the PDF last: both files there means the report is done
    return pdf, xlsx, pages


def anchor_line(head: tuple[int, str], now_ms: int) -> str:
    """The audit log's head as an InfluxDB point (`audit_head`, docs/storage.md): the anchor
    `evalterm audit verify --anchors` holds the log against."""
    p = (Point("audit_head").field("seq", head[0]).field("hash", head[1])
         .time(now_ms * 1_000_000, _NS))
    return str(p.to_line_protocol())


@dataclass
class RunResult:
    opened: list[int] = field(default_factory=list)
    points: int = 0
    reports: list[Path] = field(default_factory=list)


class ManagerRun:
    """State kept between runs: what was last queued, so unchanged points are not rewritten."""

    def __init__(self, cfg: Config, conn: sqlite3.Connection, clock: Callable[[], int]) -> None:
        self.cfg, self.conn, self.clock = cfg, conn, clock
        self.tz = hall_tz(cfg)
        self.cases = case_service(cfg, conn, clock)
        self._written: dict[int, str] = {}  # case_id -> its last queued line
        self._max_id: int | None = None  # the highest case id seen (None: no run yet)
        self._open: frozenset[int] = frozenset()  # cases not closed or voided at the last run
        self._units: set[Unit] = set()
        self._counted: dict[Unit, tuple[tuple[int, int], int]] = {}  # counts, when written
        self._dir_hash = ""
        self._dir_at = 0  # when the names were last queued
        self._txn_seen = 0  # the feed's names are learnt from the transactions after this rowid
        self._report_error = ""  # the last monthly report failure logged
        self._anchored: tuple[int, str] = (0, audit.GENESIS)  # the audit head last queued

    def run_once(self) -> RunResult:
        """One run; call it from the thread that owns `conn`, outside a transaction."""
        res = RunResult(opened=self.cases.open_cases())
        now = self.clock()
        per_case, now_lines, still_open = followup_lines(
            self.conn, now, self.tz, after_id=self._max_id, also=self._open, units=self._units)
        lines = [line for cid, line in per_case.items() if self._written.get(cid) != line]
        counted = {}
        for unit, (counts, line) in now_lines.items():
            last = self._counted.get(unit)
            if last is None or last[0] != counts or now - last[1] >= OPEN_EVERY_MS:
                lines.append(line)
                counted[unit] = (counts, now)
        self._txn_seen = learn_from_txn(self.conn, self._txn_seen)
        names = directory_lines(self.conn, 0)  # compared without their time
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
        if digest != self._dir_hash or now - self._dir_at >= DIRECTORY_EVERY_MS:
            lines += directory_lines(self.conn, now)
            self._dir_hash, self._dir_at = digest, now
        anchor = audit.head(self.conn)
        if anchor[0] and anchor != self._anchored:
            lines.append(anchor_line(anchor, now))
        if lines:
            with transaction(self.conn):
                add_lines(self.conn, lines)
        self._anchored = anchor
        self._written.update(per_case)  # (only once they are queued)
        self._counted.update(counted)
        self._max_id = max([self._max_id or 0, *per_case])
        self._open = still_open
        res.points = len(lines)
        if self.cfg.manager.monthly_report_dir:
            try:
                res.reports = self._monthly(Path(self.cfg.manager.monthly_report_dir), now)
                self._report_error = ""
            except (OSError, ManagerError) as exc:  # e.g. a folder it may not write, no font
                if str(exc) != self._report_error:  # once, not every interval
                    _LOG.warning("monthly report not written ([manager] monthly_report_dir = "
                                 "%r): %s; retried every run", self.cfg.manager.monthly_report_dir,
                                 exc)
                self._report_error = str(exc)
        return res

    def _monthly(self, out_dir: Path, now: int) -> list[Path]:
        month = last_month(now, self.tz)
        y, m = (int(x) for x in month.split("-"))
        lo = int(datetime(y, m, 1, tzinfo=self.tz).timestamp() * 1000)
        hi = int(datetime(y + m // 12, m % 12 + 1, 1, tzinfo=self.tz).timestamp() * 1000)
        halls = [h for (h,) in self.conn.execute(
            "SELECT DISTINCT hall FROM txn WHERE completed_ms >= ? AND completed_ms < ? "
            "ORDER BY hall", (lo, hi))]
        written = []
        for hall in halls:
            if all(p.exists() for p in report_paths(out_dir, hall, month)):
                continue  # done once already (idempotent across runs and restarts)
            pdf, xlsx, pages = write_month_report(self.conn, hall, month, out_dir, self.tz)
            _LOG.info("monthly report of %s %s: %s (%d pages), %s", hall, month, pdf, pages, xlsx)
            written += [pdf, xlsx]
        return written
