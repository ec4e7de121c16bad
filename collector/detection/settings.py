"""The detector's settings: the `[detection]` config section, parsed once, plus the hall calendar.

Every threshold is declared (with its default and meaning) in `collector/config.py` under
`[detection]`; this module only parses the strings (opening hours, weekdays, UTC offset) and turns
local business days into UTC millisecond intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta, timezone
from typing import Any

from collector.config import (  # the parsers: re-exported
    Config,
    load_config,
    parse_offset,
    parse_opening_hours,
    parse_weekdays,
)

__all__ = ["DetectionSettings", "Period"]

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Period:
    """What a set of indicators covers: `kind` day (one business day) or rolling (N days)."""

    kind: str
    day: date            # the (last) local business day covered
    start_ms: int        # local midnight of the first day, UTC ms
    end_ms: int          # evaluation time (at most the end of `day`)
    days: tuple[date, ...]


@dataclass(frozen=True)
class DetectionSettings:
    enabled: bool
    interval_s: int
    opening_hours: tuple[tuple[int, int], ...]  # minutes after local midnight
    business_days: frozenset[int]
    utc_offset_min: int
    lookback_days: int
    history_days: int
    min_ratings: int
    q_strong: float
    q_weak: float
    combine_min_count: int
    rate_floor: float
    prior_strength_max: float
    unmatched_min: int
    out_of_service_min: int
    uninvited_min: int
    counter_tolerance: int
    negative_key_tolerance: int
    min_human_rt_ms: int
    fast_min: int
    regular_bin_ms: int
    regular_min: int
    shift_min: int
    burst_window_s: int
    burst_min: int
    offline_gap_s: int
    offline_excess_min: int
    offline_min_episodes: int
    coverage_gap: float
    language: str

    @classmethod
    def from_config(cls, cfg: Config) -> DetectionSettings:
        parsed = ("opening_hours", "business_days", "utc_offset_min")
        raw: dict[str, Any] = {f.name: cfg.get("detection", f.name) for f in fields(cls)
                               if f.name not in parsed}
        raw["opening_hours"] = parse_opening_hours(cfg.get("detection", "opening_hours"))
        raw["business_days"] = parse_weekdays(cfg.get("detection", "business_days"))
        raw["utc_offset_min"] = parse_offset(cfg.get("detection", "utc_offset"))
        return cls(**raw)

    @classmethod
    def defaults(cls, **overrides: Any) -> DetectionSettings:
        """The documented defaults, optionally overridden (tests, evaluation)."""
        cfg = load_config(None, env={})
        if overrides:
            cfg = cfg.with_overrides(**{f"detection__{k}": v for k, v in overrides.items()})
        return cls.from_config(cfg)

    # -- the hall calendar -------------------------------------------------------------------------

    @property
    def tz(self) -> timezone:
        return timezone(timedelta(minutes=self.utc_offset_min))

    def local_day(self, ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, self.tz).date()

    def midnight_ms(self, day: date) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp() * 1000)

    def is_business_day(self, day: date) -> bool:
        return day.isoweekday() in self.business_days

    def open_intervals(self, day: date) -> list[tuple[int, int]]:
        """Opening hours of `day` as UTC ms intervals (none on a closed day)."""
        if not self.is_business_day(day):
            return []
        base = self.midnight_ms(day)
        return [(base + a * 60_000, base + b * 60_000) for a, b in self.opening_hours]

    def is_open(self, ms: int) -> bool:
        return any(a <= ms < b for a, b in self.open_intervals(self.local_day(ms)))

    def business_days_back(self, day: date, n: int) -> list[date]:
        """The last `n` business days up to and including `day` (oldest first)."""
        out: list[date] = []
        d = day
        for _ in range(n * 7 + 7):
            if len(out) == n:
                break
            if self.is_business_day(d):
                out.append(d)
            d -= timedelta(days=1)
        return out[::-1]

    def periods(self, now_ms: int) -> list[Period]:
        """The periods evaluated at `now_ms`: today so far, and the rolling lookback."""
        today = self.local_day(now_ms)
        day_end = self.midnight_ms(today) + DAY_MS
        end = min(now_ms, day_end)
        days = self.business_days_back(today, self.lookback_days) or [today]
        out = [Period("day", today, self.midnight_ms(today), end, (today,))]
        if self.lookback_days > 1:
            out.append(Period("rolling", today, self.midnight_ms(days[0]), end, tuple(days)))
        return out
