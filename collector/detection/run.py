"""Run the detector: state database in, verdicts out, integrity points queued in `influx_outbox`.

`detect_hall` is pure (facts, period and settings in, verdicts out). `run_detection` is the thin
adapter the collector service calls every `[detection] interval_s` seconds and at day close: it
reads the facts of every hall, judges every window and every staff member for today and for the
rolling lookback period, and queues the points in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace

import collector.detection.stats as stats
from collector.config import Config
from collector.db import connect, transaction
from collector.detection.facts import HallFacts, Unit, halls, load_hall_facts
from collector.detection.indicators import Indicator, compute_indicators
from collector.detection.points import (
    ALL_STAFF,
    evidence_points,
    indicator_point,
    verdict_point,
)
from collector.detection.settings import DAY_MS, DetectionSettings, Period
from collector.detection.verdict import Combined, Verdict, combine, judge
from collector.outbox import add_lines

__all__ = ["connect_detector", "detect_hall", "restrict", "run_detection"]

_LOG = logging.getLogger(__name__)


def restrict(hall: HallFacts, start_ms: int) -> HallFacts:
    """The same facts from `start_ms` on; earlier ratings move into each unit's history."""
    units = []
    for u in hall.units:
        earlier = tuple(r.level for r in u.ratings if r.press_ms < start_ms)
        done = [t for t in u.txns if t.completed_ms < start_ms and t.state != "awaiting"]
        moved = [r for r in u.ratings if r.press_ms < start_ms and r.mode == "invited"
                 and r.rt_ms is not None and r.state in ("linked", "unlinked")]
        units.append(replace(
            u, history=u.history + earlier,
            history_rated=u.history_rated + sum(1 for t in done if t.state == "rated"),
            history_decided=u.history_decided + len(done),
            history_rts=u.history_rts + tuple(r.rt_ms for r in moved),  # type: ignore[misc]
            history_rt_levels=(u.history_rt_levels + tuple(r.level for r in moved)
                               if len(u.history_rt_levels) == len(u.history_rts) else ()),
            history_rt_staff=(u.history_rt_staff + tuple(r.staff_id for r in moved)
                              if len(u.history_rt_staff) == len(u.history_rts) else ()),
            history_rt_press=(u.history_rt_press + tuple(r.press_ms for r in moved)
                              if len(u.history_rt_press) == len(u.history_rts) else ()),
            ratings=tuple(r for r in u.ratings if r.press_ms >= start_ms),
            txns=tuple(t for t in u.txns if t.completed_ms >= start_ms),
        ))
    return replace(hall, units=tuple(units))


def detect_hall(hall: HallFacts, period: Period, settings: DetectionSettings, *,
                per_staff: bool = True) -> list[Verdict]:
    """Verdicts for every window of the hall, then for every staff member seen in the period."""
    verdicts = []
    windows = list(hall.units)
    found = compute_indicators(hall, windows, period, settings)
    combined = _combined(found, settings)
    for label, inds in found.items():
        verdicts.append(judge(hall.hall, label, None, period.kind, inds, combined[label]))
    if per_staff:
        staff_units: list[Unit] = []
        for u in windows:
            names = sorted({t.staff_id for t in u.txns if t.staff_id}
                           | {r.staff_id for r in u.ratings if r.staff_id})
            staff_units += [u.for_staff(s) for s in names]
        by_label = {u.label: u for u in staff_units}
        found = compute_indicators(hall, staff_units, period, settings)
        combined = _combined(found, settings)
        for label, inds in found.items():
            u = by_label[label]
            verdicts.append(judge(hall.hall, u.window, u.staff, period.kind, inds,
                                  combined[label]))
    return verdicts


def _combined(found: dict[str, list[Indicator]], settings: DetectionSettings
              ) -> dict[str, Combined | None]:
    """Weak signals of independent kinds per unit (verdict.combine; each resting on at least
    combine_min_count observations), adjusted across the units like one more indicator
    (Benjamini-Hochberg), strong below q_strong."""
    parts = {label: combine(inds, settings.q_weak, settings.combine_min_count)
             for label, inds in found.items()}
    labels = list(parts)
    qs = stats.benjamini_hochberg([parts[x][0] for x in labels])
    out: dict[str, Combined | None] = {}
    for label, q in zip(labels, qs, strict=True):
        p, agreeing = parts[label]
        out[label] = Combined(p, q, q < settings.q_strong, agreeing) if agreeing else None
    return out


def connect_detector(cfg: Config) -> sqlite3.Connection:
    """The detector's own connection to the state database, bounded by `[collector] max_db_mb`
    like the ingest worker's (SQLite applies `max_page_count` per connection: a connection
    opened without it could grow the file past the bound)."""
    return connect(cfg.state_target, max_mb=cfg.collector.max_db_mb)


def run_detection(conn: sqlite3.Connection, cfg: Config | DetectionSettings, now_ms: int, *,
                  write_points: bool = True, per_staff: bool = True) -> list[Verdict]:
    """Judge every hall at `now_ms`; queue the integrity points unless `write_points` is False.

    Call it from the thread that owns `conn`, outside any open transaction.
    """
    settings = cfg if isinstance(cfg, DetectionSettings) else DetectionSettings.from_config(cfg)
    periods = settings.periods(now_ms)
    earliest = min(p.start_ms for p in periods)
    verdicts: list[Verdict] = []
    days: list[str] = []  # each verdict's local day (its period's last day)
    lines: list[str] = []
    for hall in halls(conn):
        facts = load_hall_facts(conn, hall, earliest, now_ms,
                                earliest - settings.history_days * DAY_MS)
        for period in periods:
            found = detect_hall(restrict(facts, period.start_ms), period, settings,
                                per_staff=per_staff)
            verdicts += found
            days += [period.day.isoformat()] * len(found)
            midnight = settings.midnight_ms(period.day)
            for v in found if write_points else ():
                lines.append(verdict_point(v, midnight, now_ms, settings.language))
                lines += [indicator_point(v, i, midnight, now_ms) for i in range(len(v.indicators))]
                lines += evidence_points(v, now_ms)
    if write_points and verdicts:
        with transaction(conn):
            add_lines(conn, lines)
            _store_flags(conn, verdicts, days, now_ms)
    flagged = [v for v in verdicts if v.flagged and v.staff is None]
    if flagged:
        _LOG.info("integrity: %d window verdict(s) flagged: %s", len(flagged),
                  ", ".join(f"{v.hall}/{v.window} ({v.period})" for v in flagged))
    return verdicts


def _store_flags(conn: sqlite3.Connection, verdicts: list[Verdict], days: list[str],
                 now_ms: int) -> None:
    """Keep each unit's flag of the day in `integrity_flag` (the monthly report reads it): a
    flagged verdict replaces the day's row, one that no longer flags deletes it."""
    for v, day in zip(verdicts, days, strict=True):
        key = (v.hall, v.window, v.staff or ALL_STAFF, v.period, day)
        if v.flagged:
            conn.execute("INSERT INTO integrity_flag VALUES (?,?,?,?,?,?,?,?,?,?) "
                         "ON CONFLICT (hall, window, staff, period, day) DO UPDATE SET "
                         "severity = excluded.severity, reasons_zh = excluded.reasons_zh, "
                         "reasons_en = excluded.reasons_en, strong = excluded.strong, "
                         "computed_ms = excluded.computed_ms",
                         (*key, v.severity, "；".join(v.reasons_zh), "; ".join(v.reasons_en),
                          ",".join(v.strong), now_ms))
        else:
            conn.execute("DELETE FROM integrity_flag WHERE hall=? AND window=? AND staff=? "
                         "AND period=? AND day=?", key)


def flagged_windows(verdicts: list[Verdict]) -> dict[tuple[str, str], Verdict]:
    """The most severe window-level verdict per flagged (hall, window)."""
    out: dict[tuple[str, str], Verdict] = {}
    for v in verdicts:
        if v.staff is None and v.flagged:
            key = (v.hall, v.window)
            if key not in out or v.severity > out[key].severity:
                out[key] = v
    return out


__all__ += ["flagged_windows"]
