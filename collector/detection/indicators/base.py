"""What every indicator shares: the result types, the context of one run, and small helpers."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import collector.detection.stats as stats
from collector.detection.facts import HallFacts, RatingFact, Unit
from collector.detection.settings import DetectionSettings, Period
from collector.reasons import DEFAULT_REASON_KEYS

__all__ = ["CLOCK_TOLERANCE_MS", "MAX_ITEMS", "NONE", "STRONG", "WEAK", "Indicator", "item",
           "rating_items"]

# Observations listed per indicator (the most telling first).
MAX_ITEMS = 30

NONE, WEAK, STRONG = "none", "weak", "strong"
# A press may precede the business system's completion stamp by this much (clocks differ).
CLOCK_TOLERANCE_MS = 60_000
# Reason-tag presses that may land on keys 1-2 (default firmware reason_keys order).
_REASONS_ON_BAD_KEYS = frozenset(DEFAULT_REASON_KEYS[:2])

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Indicator:
    name: str
    value: float
    strength: str                     # none, weak, strong
    decisive: bool
    p: float | None = None
    q: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict, hash=False)
    reason_zh: str = ""
    reason_en: str = ""
    # How many observations the p-value's evidence rests on (too-fast ratings, presses outside
    # an invitation, unmatched ratings, ...): the combination of weak signals admits only those
    # resting on at least `combine_min_count` (verdict.combine). None: no p-value.
    events: int | None = None
    # The concrete observations behind it (ratings, transactions, device events), each a dict
    # a manager can hold against the queue log or CCTV (`item`): at most MAX_ITEMS.
    items: tuple[dict[str, Any], ...] = field(default=(), hash=False)


@dataclass(slots=True)
class _Raw:
    value: float
    p: float | None = None
    guard: bool = True                # effect size large enough for strong evidence
    evidence: dict[str, Any] = field(default_factory=dict)
    reason: tuple[str, str] = ("", "")
    strength: str | None = None       # deterministic indicators decide directly
    events: int | None = None         # observations the p-value rests on (Indicator.events)
    items: list[dict[str, Any]] = field(default_factory=list)  # the observations behind it (`item`)


@dataclass(frozen=True, slots=True)
class _Ctx:
    s: DetectionSettings
    period: Period
    hall: HallFacts
    units: tuple[Unit, ...] = ()     # the units judged together: each one's peers are the others
    # Per-unit intermediate results, shared by the unit's own test and its peers' tests, and
    # hall totals (computed once; a unit's peers are the totals minus the unit).
    memo: dict[tuple[str, object], Any] = field(default_factory=dict)

    def once(self, name: str, u: Unit, fn: Callable[[], _T]) -> _T:
        key = (name, id(u))
        if key not in self.memo:
            self.memo[key] = fn()
        value: _T = self.memo[key]  # what fn returned for this name and unit
        return value

    def peer_sums(self, name: str, u: Unit, count: Callable[[Unit], tuple[int, int]],
                  include: Callable[[Unit], bool] | None = None) -> stats.PeerSums:
        """The (events, trials) sums of `count` over the unit's peers: every unit of the hall
        (that `include` admits) but `u`. The totals are computed once per name, so judging
        every unit is linear in the hall's size, not quadratic."""
        key = ("sums", name)
        if key not in self.memo:
            sums = stats.PeerSums()
            for x in self.units:
                if include is None or include(x):
                    sums = sums.plus(*count(x))
            self.memo[key] = sums
        total: stats.PeerSums = self.memo[key]
        if include is not None and not include(u):
            return total
        return total.without(*count(u))

    def peer_median(self, name: str, u: Unit, value: Callable[[Unit], float],
                    include: Callable[[Unit], bool]) -> float | None:
        """The median (upper of the two middle ones) of `value` over the unit's peers."""
        key = ("sorted", name)
        if key not in self.memo:
            self.memo[key] = sorted(value(x) for x in self.units if include(x))
        values: list[float] = self.memo[key]
        n = len(values) - (1 if include(u) else 0)
        if n <= 0:
            return None
        i = n // 2
        if include(u) and bisect.bisect_left(values, value(u)) <= i:
            i += 1  # the unit's own value sits at or below the peers' middle: skip it
        return values[i]

    def hhmm(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self.s.tz).strftime("%H:%M:%S")

    @property
    def days(self) -> int:
        return max(1, len(self.period.days))

    def open_intervals(self) -> list[tuple[int, int]]:
        out = []
        for d in self.period.days:
            for a, b in self.s.open_intervals(d):
                if a < self.period.end_ms:
                    out.append((a, min(b, self.period.end_ms)))
        return out

    def open_ms(self) -> int:
        return sum(b - a for a, b in self.open_intervals())


_Fn = Callable[[Unit, _Ctx], _Raw | None]


def item(kind: str, at_ms: int, *, note: str = "", **fields: Any) -> dict[str, Any]:
    """One observation behind a flag: kind "rating", "txn" or "event", when, and what identifies
    it (case number, device, boot and sequence number, level, ...); fields that are None are
    left out."""
    return {"kind": kind, "at_ms": at_ms, **({"note": note} if note else {}),
            **{k: v for k, v in fields.items() if v is not None}}


def rating_items(rs: list[RatingFact], note: str = "") -> list[dict[str, Any]]:
    """The ratings as observations (their case number, press time, level, device sequence)."""
    return [item("rating", r.press_ms, note=note, txn=r.txn, level=r.level, device=r.device or None,
                 boot=r.boot, seq=r.seq, rt_ms=r.rt_ms, staff=r.staff_id,
                 completed_ms=r.txn_completed_ms, started_ms=r.txn_started_ms)
            for r in rs[:MAX_ITEMS]]


def _judged(u: Unit, c: _Ctx) -> list[RatingFact]:
    return c.once("judged", u, lambda: [r for r in u.ratings if r.state in ("linked", "unlinked")])


def _rate_of(events: float, exposure: float, floor: float) -> float:
    return max(floor, events / exposure) if exposure > 0 else floor


def _eb_excess_p(events: int, trials: int, peers: stats.PeerSums, c: _Ctx) -> tuple[float, float]:
    """P(at least `events` in `trials`) when the unit's rate is drawn from its peers' spread:
    a beta-binomial tail with an empirical-Bayes prior fitted to the peers (honest windows differ
    from each other, and that spread must not look like evidence). Returns (p, prior mean)."""
    prior = stats.fit_beta_prior_sums(peers, max_strength=c.s.prior_strength_max)
    mean = max(prior.mean, c.s.rate_floor)
    a, b = mean * prior.strength, (1 - mean) * prior.strength
    trials = max(trials, events)
    return stats.beta_binomial_sf(events, trials, a, b), mean


