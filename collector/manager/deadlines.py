"""The follow-up deadline rule: N working days after the 差评, with a holiday calendar.

China moves weekends: a holiday file lists days off (法定节假日) and make-up working days (调休上班)
that fall on a weekend. File format (CSV, one date a line): `2026-10-01,off` or `2026-10-10,work`;
`#` starts a comment. Per-hall overrides: a mapping hall -> working days.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from collector.manager import ManagerError

__all__ = ["Calendar", "DeadlineRule", "add_working_days", "load_calendar"]


@dataclass(frozen=True)
class Calendar:
    off: frozenset[date] = frozenset()
    work: frozenset[date] = frozenset()

    def is_working_day(self, d: date) -> bool:
        if d in self.work:
            return True
        if d in self.off:
            return False
        return d.weekday() < 5


def load_calendar(path: str | Path) -> Calendar:
    off: set[date] = set()
    work: set[date] = set()
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                d = date.fromisoformat(row[0].strip())
                kind = row[1].strip() if len(row) > 1 else "off"
            except ValueError as e:
                raise ManagerError("bad_calendar", f"{path}:{n}: not a date: {row[0]!r}") from e
            if kind not in ("off", "work"):
                raise ManagerError("bad_calendar",
                                   f"{path}:{n}: kind must be off or work, not {kind!r}")
            (off if kind == "off" else work).add(d)
    both = off & work
    if both:
        raise ManagerError("bad_calendar", f"{path}: {min(both)} is both off and work")
    return Calendar(frozenset(off), frozenset(work))


def add_working_days(start: date, days: int, cal: Calendar) -> date:
    """The date `days` working days after `start` (the start day itself does not count)."""
    if days < 1:
        raise ManagerError("bad_rule", f"working days must be at least 1, not {days}")
    d, left = start, days
    while left:
        d += timedelta(days=1)
        if cal.is_working_day(d):
            left -= 1
    return d


@dataclass(frozen=True)
class DeadlineRule:
    default_days: int = 5
    per_hall: dict[str, int] = field(default_factory=dict)
    calendar: Calendar = Calendar()

    def days_for(self, hall: str) -> int:
        return self.per_hall.get(hall, self.default_days)

    def due(self, hall: str, opened: date) -> date:
        """The last day (inclusive) by which the case must be closed."""
        return add_working_days(opened, self.days_for(hall), self.calendar)
