"""Integrity indicators: facts of a hall in, one `Indicator` per unit and indicator out.

Each indicator compares a unit (a window, or one staff member) with its peers (the other units
of the same hall and scope) over one period, yields a statistic, a p-value where one makes sense,
the evidence behind it, and a human-readable reason in Chinese and English. p-values of one
indicator are adjusted across the hall's units with Benjamini-Hochberg; an indicator is `strong`
when its q-value is below `q_strong` AND its effect-size guard holds (a minimum count, a minimum
gap), `weak` below `q_weak`. Some indicators are deterministic (key counters, offline time) and
set their strength directly. docs/detection.md documents every statistic and why it was chosen.

`decisive` indicators may flag a window on their own when strong; the others (satisfaction above
peers) only support a flag raised by something else, so an honest excellent window is never
accused for being excellent.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from datetime import datetime

from . import stats
from .facts import HallFacts, RatingFact, Unit
from .settings import DetectionSettings, Period

__all__ = ["INDICATORS", "Indicator", "compute_indicators"]

NONE, WEAK, STRONG = "none", "weak", "strong"
# A press may precede the business system's completion stamp by this much (clocks differ).
CLOCK_TOLERANCE_MS = 60_000
# Reason-tag presses that may land on keys 1-2 (default firmware reason_keys order).
_REASONS_ON_BAD_KEYS = frozenset({"attitude", "efficiency"})


@dataclass(frozen=True, slots=True)
class Indicator:
    name: str
    value: float
    strength: str                     # none, weak, strong
    decisive: bool
    p: float | None = None
    q: float | None = None
    evidence: dict = field(default_factory=dict, hash=False)
    reason_zh: str = ""
    reason_en: str = ""
    # How many observations the p-value's evidence rests on (too-fast ratings, presses outside
    # an invitation, unmatched ratings, ...): the combination of weak signals admits only those
    # resting on at least `combine_min_count` (verdict.combine). None: no p-value.
    events: int | None = None


@dataclass(slots=True)
class _Raw:
    value: float
    p: float | None = None
    guard: bool = True                # effect size large enough for strong evidence
    evidence: dict = field(default_factory=dict)
    reason: tuple[str, str] = ("", "")
    strength: str | None = None       # deterministic indicators decide directly
    events: int | None = None         # observations the p-value rests on (Indicator.events)


@dataclass(frozen=True, slots=True)
class _Ctx:
    s: DetectionSettings
    period: Period
    hall: HallFacts
    units: tuple[Unit, ...] = ()     # the units judged together: each one's peers are the others
    # Per-unit intermediate results, shared by the unit's own test and its peers' tests, and
    # hall totals (computed once; a unit's peers are the totals minus the unit).
    memo: dict = field(default_factory=dict)

    def once(self, name: str, u: Unit, fn: Callable[[], object]) -> Any:
        key = (name, id(u))
        if key not in self.memo:
            self.memo[key] = fn()
        return self.memo[key]

    def peer_sums(self, name: str, u: Unit, count: Callable[[Unit], tuple[int, int]],
                  include: Callable[[Unit], bool] | None = None) -> stats.PeerSums:
        """The (events, trials) sums of `count` over the unit's peers: every unit of the hall
        (that `include` admits) but `u`. The totals are computed once per name, so judging
        every unit is linear in the hall's size, not quadratic."""
        key = ("sums", name)
        if key not in self.memo:
            total = stats.PeerSums()
            for x in self.units:
                if include is None or include(x):
                    total = total.plus(*count(x))
            self.memo[key] = total
        total = self.memo[key]
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


def _judged(u: Unit, c: _Ctx) -> list[RatingFact]:
    return c.once("judged", u, lambda: [r for r in u.ratings if r.state in ("linked", "unlinked")])


def _rate_of(events: int, exposure: int, floor: float) -> float:
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


# -- unmatched and excess ratings -------------------------------------------------------------


def _unlinked_count(u: Unit, c: _Ctx) -> tuple[int, int]:
    rs = _judged(u, c)
    return sum(1 for r in rs if r.state == "unlinked"), len(rs)


def _unmatched(u: Unit, c: _Ctx) -> _Raw | None:
    if not c.hall.has_feed:
        return None  # no business system: no rating can match a transaction
    rs = _judged(u, c)
    unlinked = [r for r in rs if r.state == "unlinked"]
    excess = max(0, len(rs) - len(u.txns))
    value = max(len(unlinked), excess)
    # Honest operation hardly produces unmatched ratings at any window, so the peers' pooled
    # rate (at least rate_floor) is the reference, without an over-dispersion allowance.
    peers = c.peer_sums("unlinked", u, lambda x: _unlinked_count(x, c))
    peer_rate = _rate_of(peers.events, peers.trials, c.s.rate_floor)
    p = stats.binomial_sf(value, max(len(rs), value), peer_rate)
    by_reason: dict[str, int] = {}
    for r in unlinked:
        why = r.unlinked_reason or "unknown"
        by_reason[why] = by_reason.get(why, 0) + 1
    ev = {"unlinked": len(unlinked), "ratings": len(rs), "transactions": len(u.txns),
          "excess": excess, "by_reason": by_reason, "peer_rate": round(peer_rate, 4)}
    zh = (f"{len(unlinked)} 条评价未匹配任何已办结办件（评价 {len(rs)} 条，办结 {len(u.txns)} 件"
          f"{'，评价数多于办件数' if excess else ''}；同厅平均 {peer_rate:.1%}）")
    en = (f"{len(unlinked)} ratings matched no completed transaction ({len(rs)} ratings, "
          f"{len(u.txns)} transactions{', more ratings than transactions' if excess else ''}; "
          f"hall rate {peer_rate:.1%})")
    return _Raw(value, p, value >= c.s.unmatched_min, ev, (zh, en), events=value)


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
    return _Raw(len(found), p, len(found) >= c.s.out_of_service_min, ev, (zh, en),
                events=len(found))


# -- key presses and counters ------------------------------------------------------------------


def _heartbeats(u: Unit, device: str, c: _Ctx) -> list:
    return c.once(f"hb:{device}", u, lambda: [
        d for d in u.device_log if d.kind == "heartbeat" and d.device == device
            and isinstance(d.data.get("keys"), list) and len(d.data["keys"]) == 5])


def _devices(u: Unit) -> list[str]:
    return sorted({d.device for d in u.device_log})


def _counter_delta(u: Unit, device: str, c: _Ctx, name: str) -> int:
    """Increase of a heartbeat counter over the period (0 if it cannot be told)."""
    hbs = [h for h in _heartbeats(u, device, c) if isinstance(h.data.get(name), int)]
    before = [h for h in hbs if h.at_ms < c.period.start_ms]
    inside = [h for h in hbs if c.period.start_ms <= h.at_ms <= c.period.end_ms]
    if not inside:
        return 0
    first = before[-1] if before else inside[0]
    return max(0, inside[-1].data[name] - first.data[name])


def _uninvited(u: Unit, c: _Ctx) -> _Raw | None:
    """Presses of the favourable keys (4, 5) with no invitation showing, per transaction.

    Citizens and passers-by press stray keys at random; someone trying to add good ratings
    presses 4 or 5. The key comes from the key_uninvited events (at most one per second)."""
    if not u.has_device:
        return None

    def count(unit: Unit) -> tuple[int, int, dict[int, int]]:
        return c.once("uninvited", unit, lambda: _count_uninvited(unit))

    def _count_uninvited(unit: Unit) -> tuple[int, int, dict[int, int]]:
        keys: dict[int, int] = {}
        for e in unit.device_log:
            k = e.data.get("key")
            if (e.kind == "key_uninvited" and isinstance(k, int)
                    and c.period.start_ms <= e.at_ms <= c.period.end_ms):
                keys[k] = keys.get(k, 0) + 1
        counted = sum(_counter_delta(unit, dev, c, "uninvited") for dev in _devices(unit))
        return keys.get(4, 0) + keys.get(5, 0), max(sum(keys.values()), counted), keys

    good, total, keys = count(u)
    exposure = max(len(u.txns), len(_judged(u, c)), 1)

    def per_txn(x: Unit) -> tuple[int, int]:
        k = count(x)[0]
        return k, max(len(x.txns), len(_judged(x, c)), k)

    peers = c.peer_sums("uninvited", u, per_txn, lambda x: x.has_device)
    p, peer_rate = _eb_excess_p(good, exposure, peers, c)
    ev = {"good_keys": good, "presses": total,
          "by_key": {str(k): v for k, v in sorted(keys.items())},
          "per_transaction": round(good / exposure, 3), "peer_per_transaction": round(peer_rate, 3)}
    zh = (f"无评价邀请时按键 {total} 次，其中按“满意/非常满意”键 {good} 次"
          f"（每件 {good / exposure:.2f} 次，同厅 {peer_rate:.2f} 次）")
    en = (f"{total} key presses outside an invitation, {good} of them on keys 4-5 "
          f"({good / exposure:.2f} per transaction, hall {peer_rate:.2f})")
    return _Raw(good, p, good >= c.s.uninvited_min, ev, (zh, en), events=good)


# Counters of the firmware that live in RAM only (they start again from 0 at each boot): one
# that went back between two heartbeats tells of a restart even when its boot event is missing.
_RAM_COUNTERS = ("reconnects", "lost", "filtered", "cmd_bad", "damaged")
# A boot event can arrive a little after the boot's first heartbeat (the heartbeat is sent
# directly, the boot event waits its turn in the outbox, and its time may be the receive time).
_BOOT_LAG_MS = 120_000


def _restart_between(a: Any, b: Any, boots: list) -> bool:
    """Whether the device may have restarted between heartbeats `a` and `b`."""
    if a.boot is not None and b.boot is not None:
        # The boot counter both carry settles it, whatever the boot events or RAM counters say.
        return bool(a.boot != b.boot)
    # Rows stored before the collector kept the boot counter: inferred.
    if any(a.at_ms < e.at_ms <= b.at_ms
           or a.received_ms < e.received_ms <= b.received_ms + _BOOT_LAG_MS for e in boots):
        return True
    return any(isinstance(a.data.get(k), int) and isinstance(b.data.get(k), int)
               and b.data[k] < a.data[k] for k in _RAM_COUNTERS)


def _account(u: Unit, dev: str, first: Any, last: Any) -> dict | None:
    """Every key press between two heartbeats of a device against what it published."""
    k0, k1 = first.data["keys"], last.data["keys"]
    if any(b < a for a, b in zip(k0, k1, strict=True)):
        return None  # counters went back: device replaced or its flash reset; nothing to compare
    delta = [b - a for a, b in zip(k0, k1, strict=True)]
    # Ratings the linking engine still holds (waiting for their transaction) were published.
    rs = [r for r in (*u.ratings, *u.held)
          if r.device == dev and first.at_ms < r.press_ms <= last.at_ms]
    per_level = [sum(1 for r in rs if r.level == k) for k in range(1, 6)]
    reasons = sum(1 for r in rs if r.level <= 2 and r.reason not in (None, "none"))
    reasons_bad_keys = sum(1 for r in rs if r.level <= 2 and r.reason in _REASONS_ON_BAD_KEYS)

    def grew(name: str) -> int:
        a, b = first.data.get(name, 0), last.data.get(name, 0)
        return max(0, b - a) if isinstance(a, int) and isinstance(b, int) else 0

    stray, filtered = grew("uninvited"), grew("filtered")
    # Messages the device itself reports lost (outbox full, unreadable records): each may
    # have been a rating, so each excuses one press.
    lost = grew("discards") + grew("lost") + grew("damaged")
    slack = stray + filtered + lost
    # A 差评 waits for its reason tag (or the timeout) before it is published: a heartbeat
    # in state "reason" at the end means one 差评 press whose rating is not out yet; at the
    # start, one rating whose press was counted before.
    pending_end = last.data.get("state") == "reason"
    pending_start = first.data.get("state") == "reason"
    # key_uninvited events name their key; presses beyond the events (rate-limited) may be
    # on any key, and are charged to the 差评 keys to stay on the safe side.
    stray_keys = [e.data.get("key") for e in u.device_log if e.kind == "key_uninvited"
                  and e.device == dev and first.at_ms < e.at_ms <= last.at_ms]
    stray_bad = (sum(1 for k in stray_keys if k in (1, 2))
                 + max(0, stray - len(stray_keys)) + filtered + lost)
    # Ratings no physical press produced (messages made without the keys).
    no_press = max(0, sum(max(0, n - d) for n, d in zip(per_level, delta, strict=True))
                   - pending_start)
    # Presses of the 差评 keys that neither became 差评 nor reason tags nor stray presses.
    bad_hidden = (delta[0] + delta[1] - per_level[0] - per_level[1] - reasons_bad_keys
                  - stray_bad - pending_end)
    unexplained = sum(delta) - sum(per_level) - reasons - slack - pending_end
    # Exact accounting: with every press explained but the pending one, a 差评-key press
    # that became nothing, together with any other unexplained press (its reason tag, or a
    # second 差评), is a 差评 that never left the device.
    return {"value": max(no_press, bad_hidden, unexplained, 0), "device": dev,
            "presses": delta, "ratings": per_level, "no_press": no_press,
            "bad_keys_unexplained": max(0, bad_hidden), "unexplained": max(0, unexplained),
            "lost": lost, "pending_negative": int(pending_end),
            "negatives_hidden": max(0, unexplained) if bad_hidden >= 1 else 0}


def _key_counters(u: Unit, c: _Ctx) -> _Raw | None:
    """Key counters against published ratings. Between two heartbeats of one boot the firmware's
    accounting is exact (a rating or held 差评 is on flash before its press is counted, losses
    are reported), so one 差评 press that became nothing is evidence; across a restart (a power
    cut between the count and the heartbeat, a held record that flash refused) up to
    `negative_key_tolerance` such presses are not. A heartbeat that still had messages in its
    outbox may be followed by ratings pressed before it: its span is judged with the tolerance."""
    if not u.has_device:
        return None
    worst: dict | None = None
    for dev in _devices(u):
        hbs = _heartbeats(u, dev, c)
        before = [h for h in hbs if h.at_ms < c.period.start_ms]
        inside = [h for h in hbs if c.period.start_ms <= h.at_ms <= c.period.end_ms]
        if not inside:
            continue
        chain = [before[-1], *inside] if before else inside
        acc = _account(u, dev, chain[0], chain[-1])
        if acc is None:
            continue
        accounts = [acc]
        acc.update(negative_tolerance=None, restart=None)  # not needed: nothing hidden
        if acc["negatives_hidden"]:
            boots = [e for e in u.device_log if e.kind == "boot" and e.device == dev]
            cuts = [i for i in range(len(chain) - 1)
                    if _restart_between(chain[i], chain[i + 1], boots)]

            def tolerance(end: Any, restarted: bool) -> int:
                exact = not restarted and end.data.get("outbox") == 0
                return 0 if exact else c.s.negative_key_tolerance

            acc.update(negative_tolerance=tolerance(chain[-1], bool(cuts)), restart=bool(cuts))
            # Each stretch of one boot on its own, where its accounting is exact.
            for lo, hi in zip([0] + [i + 1 for i in cuts], [*cuts, len(chain) - 1], strict=True):
                if cuts and hi > lo and tolerance(chain[hi], False) == 0:
                    part = _account(u, dev, chain[lo], chain[hi])
                    if part is not None:
                        accounts.append({**part, "negative_tolerance": 0, "restart": False})
        for acc in accounts:
            tol = acc["negative_tolerance"]
            rank = (acc["value"] > c.s.counter_tolerance
                    or (tol is not None and acc["negatives_hidden"] > tol), acc["value"])
            if worst is None or rank > worst["rank"]:
                worst = {"rank": rank, **acc}
    if worst is None:
        return None
    worst.pop("rank")
    value = worst["value"]
    suppressed = (worst["negative_tolerance"] is not None
                  and worst["negatives_hidden"] > worst["negative_tolerance"])
    strength = STRONG if value > c.s.counter_tolerance or suppressed else NONE
    d, n = worst["presses"], worst["ratings"]
    if worst["no_press"] > c.s.counter_tolerance:
        zh = f"{worst['no_press']} 条评价没有对应的物理按键（按键计数 {d}，评价 {n}）"
        en = (f"{worst['no_press']} ratings without a physical key press "
              f"(key counters {d}, ratings {n})")
    elif worst["bad_keys_unexplained"] > c.s.counter_tolerance or suppressed:
        hidden = max(worst["bad_keys_unexplained"], worst["negatives_hidden"])
        zh = (f"差评键（1、2）被按 {d[0] + d[1]} 次，但只上报 {n[0] + n[1]} 条差评"
              f"（{hidden} 次按键去向不明，其中差评键 {worst['bad_keys_unexplained']} 次）")
        en = (f"bad-rating keys 1-2 pressed {d[0] + d[1]} times but only {n[0] + n[1]} 差评 "
              f"published ({hidden} presses unaccounted for, "
              f"{worst['bad_keys_unexplained']} of them on keys 1-2)")
    else:
        zh = f"物理按键计数比上报评价多 {worst['unexplained']} 次（按键 {d}，评价 {n}）"
        en = (f"key counters exceed published ratings by {worst['unexplained']} "
              f"(keys {d}, ratings {n})")
    return _Raw(value, None, True, worst, (zh, en), strength)


# -- timing -------------------------------------------------------------------------------------


def _rts(u: Unit, c: _Ctx) -> list[int]:
    return c.once("rts", u, lambda: sorted(
        r.rt_ms for r in _judged(u, c) if r.mode == "invited" and r.rt_ms is not None))


def _fast(u: Unit, c: _Ctx) -> _Raw | None:
    rts = _rts(u, c)
    if not rts:
        return None
    limit = c.s.min_human_rt_ms
    fast = bisect.bisect_left(rts, limit)
    peers = c.peer_sums("fast", u, lambda x: (bisect.bisect_left(_rts(x, c), limit),
                                              len(_rts(x, c))))
    p, peer_share = _eb_excess_p(fast, len(rts), peers, c)
    ev: dict[str, Any] = {"fast": fast, "invited": len(rts), "limit_ms": limit,
                          "peer_share": round(peer_share, 4),
                          "median_fast_ms": rts[fast // 2] if fast else None}
    guard = fast >= c.s.fast_min
    events = fast
    past_zh = past_en = ""
    refs = _rt_refs(u, c)
    if not refs:
        # Against peers alone this cannot tell citizens who wait at the device from a staff
        # member's hand (under honest drift most false flags were this, on a window's first
        # day): at most weak then, for the combination; the rhythm, stray presses and, once
        # the window has a past, this same test judge a new window.
        guard = False
    else:
        # Citizens of one window may simply be quicker than the hall's (they wait at the
        # device): with a past of its own the window must also be faster than it used to be
        # (exact: of the fast ratings now and before, how many fall now when both come from one
        # distribution, hypergeometric), and both must hold (the larger p counts). Bonferroni
        # over the references tried (the history; over the rolling period, each change-point).
        best: tuple[float, int, int, int, int, int | None] | None = None
        for ref in refs:
            now, past = ref.now, ref.past
            f_now, f_past = bisect.bisect_left(now, limit), bisect.bisect_left(past, limit)
            p_past = stats.hypergeom_sf(f_now, len(now) + len(past), f_now + f_past, len(now))
            if best is None or p_past < best[0]:
                best = (p_past, f_now, len(now), f_past, len(past), ref.since)
        assert best is not None
        p_past, f_now, n_now, f_past, m, since = best
        p = max(p, min(1.0, p_past * len(refs)))
        expected = f_past * n_now / m
        guard = guard and f_now >= 2 * expected
        events = min(fast, f_now)  # both tests count (the larger p): the smaller count
        ev.update(past_fast=f_past, past_invited=m, expected_from_past=round(expected, 1),
                  since=None if since is None else str(c.s.local_day(since)))
        when_zh, when_en = _since_words(c, since)
        past_zh = f"；{when_zh}本窗口以往仅 {f_past / m:.1%}"
        past_en = f"; {when_en}its own past {f_past / m:.1%}"
    zh = (f"{fast} 条评价在邀请后 {limit / 1000:.1f} 秒内完成（共 {len(rts)} 条，"
          f"同厅仅 {peer_share:.1%}{past_zh}），快于群众转身看屏按键的时间")
    en = (f"{fast} of {len(rts)} ratings pressed within {limit / 1000:.1f} s of the invitation "
          f"(hall {peer_share:.1%}{past_en}): faster than a citizen can turn to the device")
    return _Raw(fast, p, guard, ev, (zh, en), events=events)


def _regular(u: Unit, c: _Ctx) -> _Raw | None:
    """A sharp peak in the unit's own response times: the densest band of width w holds far
    more than the 4w of neighbouring times around it would predict. A smooth (human) response
    time distribution is nearly linear over 5w, so the band should hold about 1/5 of the
    ratings in [x - 2w, x + 3w); a hand pressing at a practised rhythm puts many more there.
    Peers' response times are not used: each window's citizens and layout differ."""
    rts = _rts(u, c)
    if len(rts) < c.s.regular_min:
        return None
    w = c.s.regular_bin_ms
    best, lo = 0, rts[0]
    for i, x in enumerate(rts):  # densest band [x, x + w)
        n = bisect.bisect_left(rts, x + w) - i
        if n > best:
            best, lo = n, x
    local = bisect.bisect_left(rts, lo + 3 * w) - bisect.bisect_left(rts, lo - 2 * w)
    expected = local / 5
    # The band was chosen as the densest: correct for the number of bands that could have won.
    bands = float(len(rts))  # every rating may start the winning band
    p = min(1.0, stats.binomial_sf(best, local, 0.2) * bands)
    ev = {"in_band": best, "invited": len(rts), "band_ms": [lo, lo + w],
          "neighbourhood": local, "expected": round(expected, 1)}
    past = sorted(u.history_rts)
    if len(past) >= c.s.min_ratings:
        # A window whose citizens always answer at one pace has that peak in its own past too:
        # the band must also be denser now than before (conditional binomial: of the ratings in
        # the band, now and before, the share of today's is that of its ratings), and both tests
        # must hold (intersection-union: the larger p counts).
        before = bisect.bisect_left(past, lo + w) - bisect.bisect_left(past, lo)
        p_past = stats.binomial_sf(best, best + before, len(rts) / (len(rts) + len(past)))
        p = max(p, min(1.0, p_past * bands))
        ev.update(past_in_band=before, past_invited=len(past))
        expected = max(expected, before * len(rts) / len(past))
        ev["expected"] = round(expected, 1)
    zh = (f"{best} 条评价的响应时间都落在 {lo / 1000:.2f}–{(lo + w) / 1000:.2f} 秒之间"
          f"（共 {len(rts)} 条，按相邻时间段推算约 {expected:.1f} 条），节奏近似机器")
    en = (f"{best} of {len(rts)} response times fall within {lo / 1000:.2f}-{(lo + w) / 1000:.2f} s"
          f" (the neighbouring times predict {expected:.1f}): machine-like regularity")
    return _Raw(best, p, best >= c.s.regular_min and best >= 3 * expected, ev, (zh, en),
                events=best)


# Shares of the window's own past response times below which today's are counted.
SHIFT_QUANTILES = (0.05, 0.1, 0.25)


def _splits(c: _Ctx) -> list[int]:
    """Change-points tried over the rolling period: the local midnights that begin its last one
    and last two business days (a manipulation that began within the period is compared with
    everything before it, not diluted by it)."""
    if c.period.kind != "rolling":
        return []
    return [c.s.midnight_ms(c.period.days[-k]) for k in (1, 2) if k < len(c.period.days)]


def _invited(u: Unit, c: _Ctx) -> list[RatingFact]:
    return c.once("invited", u, lambda: sorted(
        (r for r in _judged(u, c) if r.mode == "invited" and r.rt_ms is not None),
        key=lambda r: r.press_ms))


@dataclass(frozen=True, slots=True)
class _RtRef:
    """One own-past reference for response times: the current invited ratings' response times
    and levels, and the past ones (levels None where the past's levels are not known), each
    sorted by response time; `since` is the change-point (None: the whole period against the
    window's history)."""

    now: list[int]
    now_levels: list[int]
    past: list[int]
    past_levels: list[int | None]
    since: int | None
    now_staff: list[str | None] = field(default_factory=list)
    past_staff: list[str | None] = field(default_factory=list)  # None where not known


def _rt_refs(u: Unit, c: _Ctx) -> list[_RtRef]:
    """The unit's own-past references for response times: the whole period against the
    window's history, then, over the rolling period, each change-point (`_splits`) against
    everything before it. Only references with at least `min_ratings` past response times and
    some current ones."""
    def build() -> list[_RtRef]:
        invited = _invited(u, c)
        m = len(u.history_rts)
        levels = u.history_rt_levels if len(u.history_rt_levels) == m else [None] * m
        staff = u.history_rt_staff if len(u.history_rt_staff) == m else [None] * m
        history = list(zip(u.history_rts, levels, staff, strict=True))
        triples = [(r.rt_ms, r.level, r.staff_id) for r in invited]
        cuts = [(triples, history, None)]
        for split in _splits(c):
            cuts.append(([(r.rt_ms, r.level, r.staff_id) for r in invited
                          if r.press_ms >= split],
                         history + [(r.rt_ms, r.level, r.staff_id) for r in invited
                                    if r.press_ms < split], split))
        refs = []
        for now, past, since in cuts:
            if not now or len(past) < c.s.min_ratings:
                continue
            now = sorted(now, key=lambda x: x[0])  # type: ignore[arg-type, return-value]
            past = sorted(past, key=lambda x: x[0])  # type: ignore[arg-type, return-value]
            refs.append(_RtRef([x[0] for x in now], [x[1] for x in now],  # type: ignore[misc]
                               [x[0] for x in past], [x[1] for x in past], since,
                               [x[2] for x in now], [x[2] for x in past]))
        return refs
    return c.once("rt_refs", u, build)


def _since_words(c: _Ctx, since: int | None) -> tuple[str, str]:
    if since is None:
        return "", ""
    day = c.s.local_day(since).strftime("%m-%d")
    return f"自 {day} 起", f"since {day}, "


# Least past response times of one staff member at the window for a stratum of its own.
STAFF_PAST_MIN = 10


def _staff_strata(ref: _RtRef) -> list[tuple[list[int], list[int], list[int], list[int | None]]]:
    """(now response times, now levels, past response times, past levels), sorted by response
    time, per staff member with at least STAFF_PAST_MIN past ones at the window; the other
    current ratings against the rest of the past (the whole past if the rest is too small).
    A single stratum when who served is not known."""
    if not ref.past_staff or None in ref.past_staff:
        return [(ref.now, ref.now_levels, ref.past, ref.past_levels)]
    counts: dict[str | None, int] = {}
    for x in ref.past_staff:
        counts[x] = counts.get(x, 0) + 1
    own = {x for x in set(ref.now_staff) if x is not None and counts.get(x, 0) >= STAFF_PAST_MIN}
    strata = []
    for who in sorted(own):
        now = [i for i, x in enumerate(ref.now_staff) if x == who]
        past = [i for i, x in enumerate(ref.past_staff) if x == who]
        strata.append(([ref.now[i] for i in now], [ref.now_levels[i] for i in now],
                       [ref.past[i] for i in past], [ref.past_levels[i] for i in past]))
    rest_now = [i for i, x in enumerate(ref.now_staff) if x not in own]
    if rest_now:
        rest_past = [i for i, x in enumerate(ref.past_staff) if x not in own]
        if len(rest_past) < STAFF_PAST_MIN:
            rest_past = list(range(len(ref.past)))
        strata.append(([ref.now[i] for i in rest_now], [ref.now_levels[i] for i in rest_now],
                       [ref.past[i] for i in rest_past], [ref.past_levels[i] for i in rest_past]))
    return strata


def _shift_at(strata: list[tuple[list[int], list[int], list[int], list[int | None]]],
              share: float) -> dict:
    """The response-shift count and level test at one share of the past, summed over the
    strata (each against its own past; exact laws convolved)."""
    below = fives = before = fives_before = 0
    expected = 0.0
    pmfs, level_pmfs, thresholds = [], [], []
    levels_known = True
    for now, now_levels, past, past_levels in strata:
        n, m = len(now), len(past)
        k = max(1, round(share * m))
        threshold = past[k - 1]
        b = bisect.bisect_left(now, threshold)
        below += b
        expected += n * k / (m + 1)
        thresholds.append(threshold)
        pmfs.append(stats.below_order_statistic_pmf(n, m, k))
        # The fast ones are 非常满意 far more often than this window's fast ones were: a hand
        # already on the device presses 5. The reference is the past's faster half (or its
        # ratings below the threshold, if more): a window whose quick citizens are also its
        # happiest is not accused for that, and half the past is enough to tell.
        bf = max(bisect.bisect_left(past, threshold), len(past) // 2)
        f_now = sum(1 for x in now_levels[:b] if x == 5)
        fives += f_now
        before += bf
        if None in past_levels[:bf]:
            levels_known = False
            continue
        f_past = sum(1 for x in past_levels[:bf] if x == 5)
        fives_before += f_past
        level_pmfs.append(stats.hypergeom_pmf(b + bf, f_now + f_past, b))
    p_times = stats.convolution_sf(pmfs, below) if len(pmfs) > 1 else \
        stats.below_order_statistic_sf(below, len(strata[0][0]), len(strata[0][2]),
                                       max(1, round(share * len(strata[0][2]))))
    p_level, known_before = 1.0, None
    if levels_known and below and before:
        p_level = stats.convolution_sf(level_pmfs, fives)
        known_before = fives_before
    # The response times alone, or with the levels (Fisher: under honest operation the level
    # test, conditional on the response times, is independent of the count). Citizens of one
    # window may answer faster on some days for honest reasons (who serves, a rush): the guard
    # (in _response_shift) then asks for the fast ones to be newly 非常满意 too.
    p = min(p_times, stats.truncated_product_p([p_times, p_level], 1.0))
    return {"p": p, "p_times": p_times, "p_level": p_level, "below": below, "expected": expected,
            "fives": fives, "fives_before": known_before, "before": before,
            "thresholds": thresholds, "levels_known": levels_known}


def _response_shift(u: Unit, c: _Ctx) -> _Raw | None:
    """Ratings arriving faster than this window's citizens ever did: of today's invited ratings,
    the number faster than the k-th fastest of the window's own past response times (k = 5, 10,
    25 % of the past), against the exact distribution-free law of that count when now and before
    come from the same distribution. A hand already on the device (a staff member rating in the
    citizen's place) answers in about a second whatever the window's citizens do, so it shows as
    a pile below the window's own fast tail even when it is neither too fast for a human nor
    machine-regular. Peers are not used: each window's layout and citizens differ; the window's
    past is the reference (none without one).

    Over the rolling period the change may have begun within it: the last one or two business
    days are also compared with everything before them (the window's history and the period's
    earlier days). A staff member presses 5: the levels of the fast ones are compared with those
    of the faster half of the window's ratings before (hypergeometric) and, independent of the
    count under honest operation given the response times, joined to it by Fisher's method.
    Bonferroni over the three shares, the references tried and the two readings (the count
    alone, the count with the levels)."""
    refs = _rt_refs(u, c)
    if not refs:
        return None
    def pile(f: dict) -> bool:
        """Strong evidence needs a pile: at least shift_min below the thresholds and, with the
        past's levels known, one and a half times what the past predicts with the fast ones
        newly 非常满意 (level p < q_weak, and a larger share than before); without them
        (facts that lack them), twice."""
        if f["below"] < c.s.shift_min:
            return False
        if not f["levels_known"]:
            return f["below"] >= 2 * f["expected"]
        return (f["p_level"] < c.s.q_weak and f["fives_before"] is not None
                and f["fives"] / f["below"] > f["fives_before"] / max(f["before"], 1)
                and f["below"] >= 1.5 * f["expected"])

    found = []
    for ref in refs:
        strata = _staff_strata(ref)
        for share in SHIFT_QUANTILES:
            f = _shift_at(strata, share)
            found.append({**f, "ref": ref, "share": share, "pile": pile(f),
                          "by_staff": bool(ref.past_staff) and None not in ref.past_staff})
    # The clearest reading that shows a pile, else the clearest reading; its p-value with the
    # Bonferroni factor of all readings (shares, references, the count alone or with levels).
    best = min(found, key=lambda f: (not f["pile"], f["p"]))
    ref, share = best["ref"], best["share"]
    below, expected, top = best["below"], best["expected"], best["fives"]
    n, m, since = len(ref.now), len(ref.past), ref.since
    fives_before, before, p_level = best["fives_before"], best["before"], best["p_level"]
    p = min(1.0, best["p"] * len(SHIFT_QUANTILES) * len(refs) * 2)
    guard = best["pile"]
    threshold = max(best["thresholds"])
    ev = {"below": below, "invited": n, "threshold_ms": threshold,
          "thresholds_ms": best["thresholds"], "by_staff": best["by_staff"],
          "past_share": share, "past_invited": m, "expected": round(expected, 1),
          "very_satisfied": top, "since": None if since is None else str(c.s.local_day(since)),
          "p_times": best["p_times"], "p_levels": p_level, "past_fast": before,
          "past_fast_very_satisfied": fives_before}
    when_zh, when_en = _since_words(c, since)
    past_zh, past_en = ("本窗口以往", "this window's own") if since is None else (
        "本窗口此前", "this window's earlier")
    if best["by_staff"]:
        # Each staff member's ratings against the ratings of that staff member's own past
        # citizens: a day served by a staff member whose citizens answer faster is no shift.
        past_zh += "同一工作人员当班时"
        past_en += " (same staff member's)"
    zh = (f"{when_zh}{below} 条评价（共 {n} 条）在邀请后 {threshold / 1000:.2f} 秒内完成，快于"
          f"{past_zh}最快的 {share:.0%}（按以往应约 {expected:.1f} 条），其中 {top} 条为“非常满意”"
          "，疑似非群众本人按键")
    en = (f"{when_en}{below} of {n} ratings came within {threshold / 1000:.2f} s of the "
          f"invitation, faster than {past_en} fastest {share:.0%} before (its past predicts "
          f"{expected:.1f}), {top} of them 非常满意: pressed by someone other than the citizen?")
    if fives_before is not None and before:
        zh += f"（此前较快的一半评价中“非常满意”仅占 {fives_before / before:.0%}）"
        en += f" (before, {fives_before / before:.0%} of its faster half were 非常满意)"
    return _Raw(below, p, guard, ev, (zh, en), events=below)


def _burst(u: Unit, c: _Ctx) -> _Raw | None:
    rs = sorted(_judged(u, c), key=lambda r: r.press_ms)
    if len(rs) < 2:
        return None
    w = c.s.burst_window_s * 1000
    presses = [r.press_ms for r in rs]
    best, at = 0, 0
    for i, t in enumerate(presses):
        n = bisect.bisect_right(presses, t + w) - i
        if n > best:
            best, at = n, i
    group = rs[at:at + best]
    span_s = (group[-1].press_ms - group[0].press_ms) / 1000
    # The window's own pace outside the burst, over the time it could have had ratings.
    exposure_s = max(c.open_ms(), 3600_000) / 1000
    rate = max(len(rs) - best, 1) / exposure_s
    positions = max(1.0, exposure_s / c.s.burst_window_s)
    p = min(1.0, positions * stats.poisson_sf(best, rate * c.s.burst_window_s))
    unmatched = sum(1 for r in group if r.state == "unlinked")
    closed = sum(1 for r in group if not c.s.is_open(r.press_ms))
    ev = {"count": best, "span_s": span_s, "start": c.hhmm(group[0].press_ms),
          "unmatched": unmatched, "outside_hours": closed,
          "levels": sorted({r.level for r in group})}
    when_zh = "闭厅后" if closed == best else ""
    when_en = " outside opening hours" if closed == best else ""
    zh = (f"{when_zh}{span_s:.0f} 秒内连续 {best} 条评价（{c.hhmm(group[0].press_ms)} 起），"
          f"其中 {unmatched} 条未匹配办件")
    en = (f"{best} ratings within {span_s:.0f} s{when_en} (from {c.hhmm(group[0].press_ms)}), "
          f"{unmatched} of them matched no transaction")
    return _Raw(best, p, best >= c.s.burst_min, ev, (zh, en), events=best)


# -- negatives and satisfaction ------------------------------------------------------------------


def _bad(rs: Sequence[RatingFact]) -> int:
    return sum(1 for r in rs if r.level <= 2)


def _missing_negatives(u: Unit, c: _Ctx) -> _Raw | None:
    rs = _judged(u, c)
    levels = list(u.history) + [r.level for r in rs]
    run = 0
    for level in reversed(levels):  # ratings since the last 差评
        if level <= 2:
            break
        run += 1
    if len(rs) < c.s.min_ratings:
        return None
    peers = c.peer_sums("bad", u, lambda x: (_bad(_judged(x, c)), len(_judged(x, c))))
    prior = stats.fit_beta_prior_sums(peers, max_strength=c.s.prior_strength_max)
    # The window's own past (before the current run) sharpens the prior: a window that was always
    # excellent keeps a low expected 差评 rate; one whose 差评 suddenly stopped does not.
    before = levels[: len(levels) - run]
    own = prior.updated(sum(1 for x in before if x <= 2), len(before))
    p = stats.run_without_event_p(run, own.a, own.b)
    ev = {"run": run, "ratings": len(rs), "peer_bad_rate": round(prior.mean, 4),
          "expected_bad_rate": round(own.mean, 4), "history": len(before),
          "prior_strength": round(prior.strength, 1)}
    zh = (f"连续 {run} 条评价没有差评；按同厅差评率 {prior.mean:.1%} 及本窗口以往情况，"
          f"出现这种情况的概率约 {p:.1g}")
    en = (f"no 差评 in the last {run} ratings; with the hall's 差评 rate {prior.mean:.1%} and this "
          f"window's own past, the chance of that is about {p:.1g}")
    # Only a window with a real past of its own can lose its 差评: without one, a long run is
    # what an excellent window looks like, and the peers alone must not decide.
    return _Raw(run, p, run >= c.s.min_ratings and len(before) >= c.s.prior_strength_max, ev,
                (zh, en), events=run)


def _satisfied(rs: Sequence[RatingFact]) -> int:
    return sum(1 for r in rs if r.level >= 4)


def _satisfied_count(u: Unit, c: _Ctx) -> tuple[int, int]:
    rs = _judged(u, c)
    return c.once("satisfied", u, lambda: _satisfied(rs)), len(rs)


def _satisfaction_high(u: Unit, c: _Ctx) -> _Raw | None:
    rs = _judged(u, c)
    if len(rs) < c.s.min_ratings:
        return None
    z, p0, tau2 = stats.funnel_z_sums(*_satisfied_count(u, c), c.peer_sums(
        "satisfied", u, lambda x: _satisfied_count(x, c)))
    if math.isnan(p0):
        return None
    share = _satisfied(rs) / len(rs)
    ev = {"satisfied": round(share, 4), "ratings": len(rs), "peer": round(p0, 4), "z": round(z, 2),
          "tau": round(math.sqrt(tau2), 4)}
    zh = f"满意率 {share:.1%} 高于同厅 {p0:.1%}（评价量 {len(rs)}，z={z:.1f}）"
    en = (f"satisfaction {share:.1%} above the hall's {p0:.1%} for its volume "
          f"({len(rs)} ratings, z={z:.1f})")
    return _Raw(round(z, 3), stats.normal_sf(z), True, ev, (zh, en), events=_satisfied(rs))


def _coverage_counts(u: Unit, c: _Ctx) -> tuple[int, int]:
    """(rated, decided) transactions, leaving out those completed while the device was offline
    (unplugging has its own indicator)."""
    def find() -> tuple[int, int]:
        decided = _decided_txns(u, c)
        return sum(1 for t in decided if t.state == "rated"), len(decided)
    return c.once("coverage", u, find)


def _two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    """z of k1/n1 - k2/n2 under a pooled proportion (own now vs own past)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-9) * (1 / n1 + 1 / n2))
    return (k1 / n1 - k2 / n2) / se


def _decided_txns(u: Unit, c: _Ctx) -> list:
    """Decided (rated or unrated) transactions, leaving out those completed while the device was
    offline: those citizens could not rate, whatever the staff did."""
    def find() -> list:
        offline = _offline_stretches(u, c) if u.has_device else []
        return [t for t in u.txns if t.state in ("rated", "unrated")
                and not any(a <= t.completed_ms < b for a, b in offline)]
    return c.once("decided", u, find)


def _selective(u: Unit, c: _Ctx) -> _Raw | None:
    """Coverage (rated / decided transactions) far below, satisfaction (share 满意 or better)
    above.

    Against peers (funnel, over-dispersion adjusted) both must be significant: an honest window
    may have low coverage and happy citizens at once, so this is an intersection-union test (the
    larger p counts). Against the window's own past (two-proportion z) a coverage drop is a
    change, and satisfaction above the past at p < q_weak suffices with it. Over the rolling
    period the change may have begun within it: the last one or two business days are also
    compared with everything before them (the window's history and the period's earlier days),
    a change-point test. The clearest reference is reported, with a Bonferroni factor for the
    number of references tried."""
    if not c.hall.has_feed:
        return None
    rated, decided = _coverage_counts(u, c)
    rs = _judged(u, c)
    if decided < c.s.min_ratings or len(rs) < c.s.min_ratings:
        return None
    z_cov, cov0, _ = stats.funnel_z_sums(rated, decided, c.peer_sums(
        "coverage", u, lambda x: _coverage_counts(x, c)))
    z_sat, sat0, _ = stats.funnel_z_sums(*_satisfied_count(u, c), c.peer_sums(
        "satisfied", u, lambda x: _satisfied_count(x, c)))
    if math.isnan(cov0) or math.isnan(sat0):
        return None
    cov, sat = rated / decided, _satisfied(rs) / len(rs)
    p = max(stats.normal_sf(-z_cov), stats.normal_sf(z_sat))
    ref_cov, ref_sat, own, since, judged = cov0, sat0, False, None, decided
    # Own-past references: (current rated, decided, satisfied, ratings; past the same; since).
    past_sat = sum(1 for x in u.history if x >= 4)
    refs = [(rated, decided, _satisfied(rs), len(rs), u.history_rated, u.history_decided,
             past_sat, len(u.history), None)]
    txns = _decided_txns(u, c)
    for split in _splits(c):
        now_t = [t for t in txns if t.completed_ms >= split]
        now_r = [r for r in rs if r.press_ms >= split]
        old_t = [t for t in txns if t.completed_ms < split]
        old_r = [r for r in rs if r.press_ms < split]
        refs.append((sum(1 for t in now_t if t.state == "rated"), len(now_t),
                     _satisfied(now_r), len(now_r),
                     u.history_rated + sum(1 for t in old_t if t.state == "rated"),
                     u.history_decided + len(old_t),
                     past_sat + _satisfied(old_r), len(u.history) + len(old_r), split))
    refs = [r for r in refs if min(r[1], r[3], r[5], r[7]) >= c.s.min_ratings]
    for k1, n1, s1, m1, k2, n2, s2, m2, split in refs:
        p_cov = stats.normal_sf(-_two_proportion_z(k1, n1, k2, n2))
        p_sat = stats.normal_sf(_two_proportion_z(s1, m1, s2, m2))
        p_own = p_cov if p_sat < c.s.q_weak else max(p_cov, p_sat)
        if p_own < p:
            p, own, since, judged = p_own, True, split, n1
            cov, sat, ref_cov, ref_sat = k1 / n1, s1 / m1, k2 / n2, s2 / m2
    p = min(1.0, (1 + len(refs)) * p)
    ev = {"coverage": round(cov, 4), "peer_coverage": round(cov0, 4), "z_coverage": round(z_cov, 2),
          "satisfied": round(sat, 4), "peer_satisfied": round(sat0, 4),
          "z_satisfied": round(z_sat, 2), "reference": "own_past" if own else "peers",
          "reference_coverage": round(ref_cov, 4),
          "reference_satisfied": round(ref_sat, 4), "transactions": decided,
          "since": None if since is None else str(c.s.local_day(since))}
    whose_zh, whose_en = ("本窗口以往", "its own past") if own else ("同厅", "the hall's")
    when_zh = when_en = ""
    if since is not None:
        day = c.s.local_day(since).strftime("%m-%d")
        whose_zh, whose_en = "本窗口此前", "its own earlier days"
        when_zh, when_en = f"自 {day} 起", f"since {day}, "
    zh = (f"{when_zh}参评率 {cov:.0%} 远低于{whose_zh} {ref_cov:.0%}，而满意率 {sat:.1%} 高于 {ref_sat:.1%}"
          "（疑似只邀请满意的群众评价）")
    en = (f"{when_en}coverage {cov:.0%} far below {whose_en} {ref_cov:.0%} while satisfaction {sat:.1%} is "
          f"above {ref_sat:.1%} (only satisfied citizens invited?)")
    # The observations behind it: the transactions left unrated beyond the reference's coverage.
    shortfall = max(0, round((ref_cov - cov) * judged))
    return _Raw(round(cov - ref_cov, 4), p, cov <= ref_cov - c.s.coverage_gap and sat > ref_sat,
                ev, (zh, en), events=shortfall)


# -- device offline ------------------------------------------------------------------------------


def _offline_stretches(u: Unit, c: _Ctx) -> list[tuple[int, int]]:
    return c.once("offline", u, lambda: _find_offline_stretches(u, c))


def _find_offline_stretches(u: Unit, c: _Ctx) -> list[tuple[int, int]]:
    """When the window's device was unreachable: offline status until online, and heartbeat
    silences longer than offline_gap_s, by reception time (a last will carries its connect-time
    stamp, and a buffered message its creation time)."""
    spans: list[tuple[int, int]] = []
    gap = c.s.offline_gap_s * 1000
    end = c.period.end_ms
    for dev in _devices(u):
        log = [d for d in u.device_log if d.device == dev]
        off_at: int | None = None
        for d in log:
            if d.kind == "status":
                if d.data.get("state") == "offline" and off_at is None:
                    off_at = d.received_ms
                elif d.data.get("state") == "online" and off_at is not None:
                    spans.append((off_at, d.received_ms))
                    off_at = None
        if off_at is not None:
            spans.append((off_at, end))
        beats = [d.received_ms for d in log if d.kind == "heartbeat"]
        for a, b in zip(beats, beats[1:], strict=False):
            if b - a > gap:
                spans.append((a + gap, b))
        if beats and end - beats[-1] > gap:
            spans.append((beats[-1] + gap, end))
    if not _devices(u) and u.has_device and u.txns and not u.ratings:
        # A device that never reported at all while transactions were completed (a rating
        # would prove it was reachable, even without status or heartbeat messages).
        spans.append((c.period.start_ms, end))
    # Clip to opening hours, merge overlaps.
    clipped = sorted((max(a, oa), min(b, ob)) for a, b in spans for oa, ob in c.open_intervals()
                     if min(b, ob) > max(a, oa))
    merged: list[tuple[int, int]] = []
    for a, b in clipped:
        if merged and a <= merged[-1][1] + 60_000:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _restarted(u: Unit, a: int, b: int) -> bool:
    """Whether a device of the unit restarted (its power cut, or a reset) while it was offline
    from `a` to `b` (reception times). A network outage leaves it running (the same boot)."""
    for dev in _devices(u):
        log = [d for d in u.device_log if d.device == dev]
        # The boot counters from the last message before the stretch (its last will, sent by
        # the broker with the boot it had) to the first one after it: more than one value
        # means the device started again in between.
        known = [d for d in log if d.boot is not None]
        seen = [d.boot for d in known if a < d.received_ms <= b]
        seen += [d.boot for d in known if d.received_ms <= a][-1:]
        seen += [d.boot for d in known if d.received_ms > b][:1]
        if len(seen) >= 2:
            if len(set(seen)) > 1:
                return True
        elif any(d.kind == "boot" and a < d.received_ms <= b + _BOOT_LAG_MS for d in log):
            return True  # rows stored before the boot counter was kept: its boot event
    return False


def _offline_minutes(u: Unit, c: _Ctx) -> float:
    return sum(b - a for a, b in _offline_stretches(u, c)) / 60_000


def _offline(u: Unit, c: _Ctx) -> _Raw | None:
    if not u.has_device:
        return None
    mine = _offline_stretches(u, c)
    minutes = _offline_minutes(u, c)
    median = c.peer_median("offline", u, lambda x: _offline_minutes(x, c),
                           lambda x: x.has_device)
    median = 0.0 if median is None else median
    excess = minutes - median
    missed = sum(1 for t in u.txns if any(a <= t.completed_ms < b for a, b in mine))
    need = c.s.offline_excess_min * c.days
    # Episodes shorter than the heartbeat-gap threshold are network blips, not an unplugging;
    # and unplugging cuts the power, so the device comes back with its next boot counter,
    # while a network or broker outage leaves it running (at most "weak" then).
    long = [(a, b) for a, b in mine if b - a >= c.s.offline_gap_s * 1000]
    long_episodes = len(long)
    restarts = sum(1 for a, b in long if _restarted(u, a, b))
    if excess >= need and restarts >= c.s.offline_min_episodes:
        strength = STRONG
    elif excess >= need / 2:
        strength = WEAK
    else:
        strength = NONE
    open_min = c.open_ms() / 60_000
    ev = {"minutes": round(minutes, 1), "episodes": len(mine), "long_episodes": long_episodes,
          "restarted_episodes": restarts, "peer_median_minutes": round(median, 1),
          "open_minutes": round(open_min), "transactions_while_offline": missed,
          "longest_minutes": round(max((b - a for a, b in mine), default=0) / 60_000, 1)}
    zh = (f"评价器在办公时间离线 {minutes:.0f} 分钟、{len(mine)} 次（同厅中位数 {median:.0f} 分钟），"
          f"其中 {restarts} 次恢复时已重新启动（断电），离线期间办结 {missed} 件无法评价")
    en = (f"device offline {minutes:.0f} min in {len(mine)} episodes during opening hours (hall "
          f"median {median:.0f} min), {restarts} of them ending in a restart (power cut); "
          f"{missed} transactions completed while it was offline")
    return _Raw(round(minutes, 1), None, True, ev, (zh, en), strength)


# -- the table ---------------------------------------------------------------------------------

# name -> (function, decisive)
INDICATORS: dict[str, tuple[_Fn, bool]] = {
    "unmatched": (_unmatched, True),
    "out_of_service": (_out_of_service, True),
    "uninvited_presses": (_uninvited, True),
    "key_counters": (_key_counters, True),
    "fast_response": (_fast, True),
    "regular_response": (_regular, True),
    "response_shift": (_response_shift, True),
    "burst": (_burst, True),
    "missing_negatives": (_missing_negatives, True),
    "satisfaction_high": (_satisfaction_high, False),
    "selective_invitation": (_selective, True),
    "device_offline": (_offline, True),
}


def compute_indicators(hall: HallFacts, units: Sequence[Unit], period: Period,
                       settings: DetectionSettings) -> dict[str, list[Indicator]]:
    """Every indicator for every unit (keyed by `Unit.label`), peers being the other units."""
    ctx = _Ctx(settings, period, hall, tuple(units))
    out: dict[str, list[Indicator]] = {u.label: [] for u in units}
    for name, (fn, decisive) in INDICATORS.items():
        raws: dict[str, _Raw] = {}
        for u in units:
            raw = fn(u, ctx)
            if raw is not None:
                raws[u.label] = raw
        tested = [label for label, r in raws.items() if r.p is not None and r.strength is None]
        qs = dict(zip(tested, stats.benjamini_hochberg([raws[x].p for x in tested]), strict=True))
        for label, r in raws.items():
            q = qs.get(label)
            if r.strength is not None:
                strength = r.strength
            elif q is not None and q < settings.q_strong and r.guard:
                strength = STRONG
            elif q is not None and q < settings.q_weak:
                strength = WEAK
            else:
                strength = NONE
            # A reason is kept for weak evidence, and for a p-value that may join others of
            # independent kinds in the verdict (verdict.combine).
            keep = strength != NONE or (r.p is not None and r.p <= settings.q_weak)
            zh, en = r.reason if keep else ("", "")
            out[label].append(Indicator(name, float(r.value), strength, decisive, r.p, q,
                                        r.evidence, zh, en, r.events))
    return out
