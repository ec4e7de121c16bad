"""Ratings given while the window was not in service (paused, nobody signed on, closed)."""

from __future__ import annotations

import collector.detection.stats as stats
from collector.detection.facts import RatingFact, Unit
from collector.detection.indicators.base import (
    CLOCK_TOLERANCE_MS,
    _Ctx,
    _judged,
    _rate_of,
    _Raw,
    item,
)

# -- ratings out of service -------------------------------------------------------------------


def _service_gaps(u: Unit, c: _Ctx, track_staff: bool) -> list[tuple[int, int, str]]:
    """Stretches (start, end, why) when the unit's window was not in service: paused, nobody
    signed on, or the hall closed."""
    gaps: list[tuple[int, int, str]] = []
    start, end = c.period.start_ms, c.period.end_ms
    # Closed: everything of the period outside opening hours.
    cursor = start
    for a, b in sorted(c.open_intervals()):
        if a > cursor:
            gaps.append((cursor, a, "closed"))
        cursor = max(cursor, b)
    if cursor < end:
        gaps.append((cursor, end, "closed"))
    paused_since: int | None = None
    staff: str | None = None
    off_since: int | None = None
    seen_staff = False
    for e in u.window_log:
        if e.kind == "window_paused" and paused_since is None:
            paused_since = e.at_ms
        elif e.kind == "window_resumed" and paused_since is not None:
            gaps.append((paused_since, e.at_ms, "paused"))
            paused_since = None
        elif e.kind == "staff_signon":
            seen_staff = True
            if off_since is not None:
                gaps.append((off_since, e.at_ms, "signed_off"))
                off_since = None
            staff = e.staff_id
        elif e.kind == "staff_signoff" and (staff is None or staff == e.staff_id):
            seen_staff = True
            if off_since is None:
                off_since = e.at_ms
            staff = None
    if paused_since is not None:
        gaps.append((paused_since, end, "paused"))
    if track_staff and seen_staff and off_since is not None:
        gaps.append((off_since, end, "signed_off"))
    return [(a, b, why) for a, b, why in gaps if b > start and a < end]


def _oos_ratings(u: Unit, c: _Ctx) -> list[tuple[RatingFact, str]]:
    return c.once("oos", u, lambda: _find_oos_ratings(u, c))


def _find_oos_ratings(u: Unit, c: _Ctx) -> list[tuple[RatingFact, str]]:
    gaps = _service_gaps(u, c, c.hall.has_signons)
    found: list[tuple[RatingFact, str]] = []
    for r in _judged(u, c):
        active = [(a, why) for a, b, why in gaps if a <= r.press_ms < b]
        if not active:
            continue
        began = min(a for a, _ in active)
        # The last citizen served before the stop may rate a moment later, and a citizen served
        # after closing time (the business system says so) is a citizen: not suspicious.
        if r.state == "linked" and r.txn_completed_ms is not None and (
                r.txn_completed_ms <= began + CLOCK_TOLERANCE_MS
                or all(why == "closed" for _, why in active)):
            continue
        found.append((r, sorted(w for _, w in active)[0]))
    return found


def _out_of_service(u: Unit, c: _Ctx) -> _Raw | None:
    found = _oos_ratings(u, c)
    by_why = {w: sum(1 for _, x in found if x == w) for w in ("paused", "signed_off", "closed")}
    n = len(_judged(u, c))
    peers = c.peer_sums("oos", u, lambda x: (len(_oos_ratings(x, c)), len(_judged(x, c))))
    peer_rate = _rate_of(peers.events, peers.trials, c.s.rate_floor)
    p = stats.binomial_sf(len(found), max(n, len(found)), peer_rate)
    ev = {"count": len(found), **by_why, "ratings": n, "peer_rate": round(peer_rate, 4),
          "first": c.hhmm(found[0][0].press_ms) if found else None}
    parts_zh = [f"{k} {v} 条" for k, v in (("暂停服务期间", by_why["paused"]),
                                           ("无人签到期间", by_why["signed_off"]),
                                           ("非办公时间", by_why["closed"])) if v]
    parts_en = [f"{v} {k}" for k, v in (("while paused", by_why["paused"]),
                                         ("with nobody signed on", by_why["signed_off"]),
                                         ("outside opening hours", by_why["closed"])) if v]
    zh = (f"{len(found)} 条评价发生在窗口不在服务状态时（{'，'.join(parts_zh)}），"
          "且不属于此前办结的办件")
    en = (f"{len(found)} ratings while the window was out of service ({', '.join(parts_en)}), "
          "not from a transaction completed before")
    items = [item("rating", r.press_ms, note=why, txn=r.txn, level=r.level, device=r.device,
                  boot=r.boot, seq=r.seq, staff=r.staff_id) for r, why in found[:30]]
    return _Raw(len(found), p, len(found) >= c.s.out_of_service_min, ev, (zh, en),
                events=len(found), items=items)


