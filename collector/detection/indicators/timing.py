"""How soon after the invitation ratings come: fast, machine-regular, shifted against the
window's own past, and bursts."""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, TypedDict

import collector.detection.stats as stats
from collector.detection.facts import RatingFact, Unit
from collector.detection.indicators.base import (
    CLOCK_TOLERANCE_MS,
    _Ctx,
    _eb_excess_p,
    _judged,
    _Raw,
    rating_items,
)

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
    quick = [r for r in _invited(u, c) if r.rt_ms is not None and r.rt_ms < limit]
    return _Raw(fast, p, guard, ev, (zh, en), events=events,
                items=rating_items(quick, "响应过快 too fast"))


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
    band = [r for r in _invited(u, c) if r.rt_ms is not None and lo <= r.rt_ms < lo + w]
    return _Raw(best, p, best >= c.s.regular_min and best >= 3 * expected, ev, (zh, en),
                events=best, items=rating_items(band, "节奏整齐 regular"))


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
    window's history). `past_press`: when each past rating was pressed (None where not known),
    to count the business days the past spans."""

    now: list[int]
    now_levels: list[int]
    past: list[int]
    past_levels: list[int | None]
    since: int | None
    now_staff: list[str | None] = field(default_factory=list)
    past_staff: list[str | None] = field(default_factory=list)  # None where not known
    past_press: list[int | None] = field(default_factory=list)


# A current invited rating's (response time, level, staff), and a past one's (level None
# where the past's levels are not known; press time None where not known).
_NowRt = tuple[int, int, str | None]
_PastRt = tuple[int, int | None, str | None, int | None]


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
        press: tuple[int | None, ...] | list[None] = (
            u.history_rt_press if len(u.history_rt_press) == m else [None] * m)
        history: list[_PastRt] = list(zip(u.history_rts, levels, staff, press, strict=True))
        # (response time, level, staff, press): _invited keeps only ratings with a response time.
        timed = [(r.rt_ms, r.level, r.staff_id, r.press_ms) for r in invited
                 if r.rt_ms is not None]
        triples: list[_NowRt] = [(rt, lv, st) for rt, lv, st, _ in timed]
        cuts: list[tuple[list[_NowRt], list[_PastRt], int | None]] = [(triples, history, None)]
        for split in _splits(c):
            before: list[_PastRt] = [(rt, lv, st, at) for rt, lv, st, at in timed if at < split]
            cuts.append(([(rt, lv, st) for rt, lv, st, at in timed if at >= split],
                         history + before, split))
        refs = []
        for now, past, since in cuts:
            if not now or len(past) < c.s.min_ratings:
                continue
            now = sorted(now, key=lambda x: x[0])
            past = sorted(past, key=lambda x: x[0])
            refs.append(_RtRef([x[0] for x in now], [x[1] for x in now],
                               [x[0] for x in past], [x[1] for x in past], since,
                               [x[2] for x in now], [x[2] for x in past],
                               [x[3] for x in past]))
        return refs
    return c.once("rt_refs", u, build)


def _since_words(c: _Ctx, since: int | None) -> tuple[str, str]:
    if since is None:
        return "", ""
    day = c.s.local_day(since).strftime("%m-%d")
    return f"自 {day} 起", f"since {day}, "


# Least past response times of one staff member at the window for a stratum of its own.
STAFF_PAST_MIN = 10


_Stratum = tuple[list[int], list[int], list[int], list[int | None]]


def _strata_index(ref: _RtRef) -> list[tuple[list[int], list[int], bool]]:
    """(indices into now, indices into past, whether the current ratings' staff member has a
    past of their own) of each stratum: one per staff member with at least STAFF_PAST_MIN past
    response times at the window, then the other current ratings against the rest of the past
    (the whole past if the rest is too small). A single stratum when who served is not known."""
    if not ref.past_staff or None in ref.past_staff:
        # Who served is not known: the past mixes staff members as today does, and the day
        # deviations of `_honest_spread` were measured on such mixes too.
        return [(list(range(len(ref.now))), list(range(len(ref.past))), True)]
    counts: dict[str | None, int] = {}
    for x in ref.past_staff:
        counts[x] = counts.get(x, 0) + 1
    own = {x for x in set(ref.now_staff) if x is not None and counts.get(x, 0) >= STAFF_PAST_MIN}
    strata = []
    for who in sorted(own):
        strata.append(([i for i, x in enumerate(ref.now_staff) if x == who],
                       [i for i, x in enumerate(ref.past_staff) if x == who], True))
    rest_now = [i for i, x in enumerate(ref.now_staff) if x not in own]
    if rest_now:
        rest_past = [i for i, x in enumerate(ref.past_staff) if x not in own]
        if len(rest_past) < STAFF_PAST_MIN:
            rest_past = list(range(len(ref.past)))
        strata.append((rest_now, rest_past, False))
    return strata


def _staff_strata(ref: _RtRef) -> list[_Stratum]:
    """(now response times, now levels, past response times, past levels), sorted by response
    time, per stratum of `_strata_index`."""
    return [([ref.now[i] for i in now], [ref.now_levels[i] for i in now],
             [ref.past[i] for i in past], [ref.past_levels[i] for i in past])
            for now, past, _own in _strata_index(ref)]


# Honest response times move from day to day as a whole (a rush, who is waiting, the staff
# member's manner): the response-shift test allows for a day-level shift of the log response
# times, normal with a standard deviation estimated from the hall's own past days
# (`_honest_spread`). Without enough past days to estimate it: the prior below; never less
# than the floor (an estimate from few days may come out near 0 by chance).
DAY_SD_PRIOR = 0.2
DAY_SD_MIN = 0.05
# The same for the difference between one staff member's citizens and another's at a window,
# used where the current ratings' staff member has no past of their own there.
STAFF_SD_PRIOR = 0.25
STAFF_SD_MIN = 0.05
# Least response times of one (staff member, day) for its median to count in the estimate, and
# least such deviations for an estimate (else the prior).
SPREAD_GROUP_MIN = 8
SPREAD_GROUPS_MIN = 6
_CHI2_1_MEDIAN = 0.454936  # the median of a chi-square with one degree of freedom


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _robust_sd(xs: list[float]) -> float:
    """The interquartile range over 1.349: the standard deviation of a normal sample, not
    moved by a few outliers (citizens who linger)."""
    if len(xs) < 4:
        return 0.5
    q = statistics.quantiles(xs, n=4)
    return max(0.05, (q[2] - q[0]) / 1.349)


def _re_sd(devs: list[tuple[float, float, float]], prior: float, floor: float) -> float:
    """The between-group standard deviation tau of a random effect from (deviation, its
    sampling variance, the factor on tau^2 in its variance) triples: the tau at which the
    median of dev^2 / (factor tau^2 + variance) is the chi-square(1) median (robust: a minority
    of manipulated windows cannot inflate it). The prior with too few deviations; at least the
    floor."""
    if len(devs) < SPREAD_GROUPS_MIN:
        return prior

    def med(t2: float) -> float:
        return _median([d * d / (f * t2 + v) for d, v, f in devs])

    if med(0.0) <= _CHI2_1_MEDIAN:
        return floor
    lo, hi = 0.0, 4.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if med(mid) > _CHI2_1_MEDIAN:
            lo = mid
        else:
            hi = mid
    return max(floor, math.sqrt((lo + hi) / 2))


def _honest_spread(c: _Ctx) -> tuple[float, float]:
    """(tau_day, tau_staff): how much the log response times of honest citizens move between
    business days (one staff member's citizens, one day against that staff member's other
    days at the window) and between staff members of one window, estimated once per run from
    every unit's response times before today (the history and the period's earlier days).

    Each (window, staff member, day) with at least SPREAD_GROUP_MIN response times gives the
    deviation of its median log response time from the median of the same staff member's other
    days at the window, with the sampling variance of the two medians (pi/2 s^2/n, s the robust
    spread of the logs); each pair of staff members of a window, the deviation of their
    medians. `_re_sd` turns them into tau."""
    def build() -> tuple[float, float]:
        today = c.s.midnight_ms(c.period.day)
        day_devs: list[tuple[float, float, float]] = []
        staff_devs: list[tuple[float, float, float]] = []
        for u in c.units:
            rows: list[tuple[int, str | None, int]] = []  # (rt, staff, local day ordinal)
            if len(u.history_rt_press) == len(u.history_rts):
                staff = (u.history_rt_staff if len(u.history_rt_staff) == len(u.history_rts)
                         else (None,) * len(u.history_rts))
                rows += [(rt, st, c.s.local_day(at).toordinal())
                         for rt, st, at in zip(u.history_rts, staff, u.history_rt_press,
                                               strict=True)]
            rows += [(r.rt_ms, r.staff_id, c.s.local_day(r.press_ms).toordinal())
                     for r in _invited(u, c) if r.rt_ms is not None and r.press_ms < today]
            by_staff: dict[str | None, dict[int, list[float]]] = {}
            for rt, st, day in rows:
                by_staff.setdefault(st, {}).setdefault(day, []).append(math.log(max(rt, 1)))
            medians: list[tuple[float, float]] = []  # (median, its sampling variance) per staff
            for days in by_staff.values():
                logs = [x for xs in days.values() for x in xs]
                sd2 = _robust_sd(logs) ** 2
                if len(logs) >= 2 * SPREAD_GROUP_MIN:
                    medians.append((_median(logs), math.pi / 2 * sd2 / len(logs)))
                for day, xs in days.items():
                    others = [x for d, ys in days.items() if d != day for x in ys]
                    if len(xs) < SPREAD_GROUP_MIN or len(others) < SPREAD_GROUP_MIN:
                        continue
                    var = math.pi / 2 * sd2 * (1 / len(xs) + 1 / len(others))
                    # The other days' median averages their own day effects.
                    day_devs.append((_median(xs) - _median(others), var,
                                     1 + 1 / (len(days) - 1)))
            for i, (a, va) in enumerate(medians):
                for b, vb in medians[i + 1:]:
                    # Both medians carry day effects too: twice tau_day^2 is left in (a
                    # conservative, i.e. larger, tau_staff).
                    staff_devs.append((a - b, va + vb, 2.0))
        return (_re_sd(day_devs, DAY_SD_PRIOR, DAY_SD_MIN),
                _re_sd(staff_devs, STAFF_SD_PRIOR, STAFF_SD_MIN))
    return c.once("honest_spread", c.units[0] if c.units else _NO_UNIT, build)


_NO_UNIT = Unit("", None, (), ())


def _spreads(ref: _RtRef, c: _Ctx) -> list[float]:
    """Per stratum (`_strata_index`), the standard deviation of the honest shift of today's log
    response times against its past: tau_day^2 (1 + 1/D) for a past of D business days (the
    past's own day effects average over D), plus tau_staff^2 where the current ratings' staff
    member has no past of their own at the window."""
    tau_day, tau_staff = _honest_spread(c)
    out = []
    for _now, past, own in _strata_index(ref):
        days = {c.s.local_day(at) for at in (ref.past_press[i] for i in past) if at is not None}
        var = tau_day ** 2 * (1 + 1 / max(1, len(days)))
        if not own:
            var += tau_staff ** 2
        out.append(math.sqrt(var))
    return out


class _Shift(TypedDict):
    """`_shift_at`'s reading at one share of the past."""

    p: float
    p_times: float
    p_level: float
    below: int
    expected: float
    fives: int
    fives_before: int | None      # None: the past's levels are not known
    before: int
    thresholds: list[int]
    levels_known: bool


# The honest shift is integrated over its normal law (below) in bins of half a standard
# deviation out to 6 on each side (beyond: p = 1, a weight of 2e-9), each bin at its middle.
_SHIFT_NODES = tuple((z + 0.25, stats.normal_sf(z) - stats.normal_sf(z + 0.5))
                     for z in (0.5 * i for i in range(-12, 12)))
# Only a p-value that could matter is integrated (skipping it never lowers a p-value: the
# unshifted law is used instead, as before).
_MIX_FROM = 0.01
# The quantile of today's response times that measures how much faster the day is as a whole:
# the upper quartile, which a pile of fast presses at the bottom moves least (a share s of
# them moves it to the citizens' (0.75 - s) / (1 - s) quantile); its sampling standard
# deviation on the log scale is sqrt(q (1 - q)) / phi(z_q) s / sqrt(n) = 1.36 s / sqrt(n).
_BODY_SE = 1.36


def _body_shift(stratum: _Stratum, tau: float) -> tuple[float, float]:
    """(mean, standard deviation) of the honest log shift of today's response times against the
    past in one stratum: the prior N(0, tau^2) (`_spreads`) updated with what today's body
    shows, the log ratio of the upper quartiles with its sampling variance (normal-normal).
    With fewer than 4 current response times: the prior."""
    now, _lv, past, _plv = stratum
    if len(now) < 4 or len(past) < 4:
        return 0.0, tau
    logs = [math.log(max(x, 1)) for x in past]
    d = (math.log(max(1.0, statistics.quantiles(now, n=4)[2]))
         - math.log(max(1.0, statistics.quantiles(past, n=4)[2])))
    v = (_BODY_SE * _robust_sd(logs)) ** 2 * (1 / len(now) + 1 / len(past))
    t2 = tau * tau
    return t2 / (t2 + v) * d, math.sqrt(t2 * v / (t2 + v))


def _times_p(strata: list[_Stratum], share: float, below: int,
             spreads: list[float] | None, floor: int = 0) -> float:
    """P(at least `below` current response times under the strata's thresholds) when now and
    before come from one distribution up to an honest shift of the log response times by a
    factor e^d (`spreads`: the prior standard deviation of d per stratum; None: no shift
    allowed, the exact distribution-free law).

    An honest day that is faster as a whole shows in the body of today's response times, a
    pile of presses by a hand already on the device only at the bottom: d is integrated over
    its law given the upper quartile's shift (`_body_shift`), one standard normal z shared by
    the strata (a day's shift moves them together). Under a shift d the threshold's place in
    the past is that of threshold e^-d: the count's law is that of the count below an order
    statistic (`below_order_statistic_pmf`, exact), interpolated between the two order
    statistics around it (`_k_of`)."""
    memo: dict[tuple[int, int, int], list[float]] = {}

    def pmf_of(now: int, past: int, k: int) -> list[float]:
        key = (now, past, k)
        if key not in memo:
            memo[key] = stats.below_order_statistic_pmf(now, past, k)
        return memo[key]

    def at(scale: list[float]) -> float:
        pmfs = []
        for st, f in zip(strata, scale, strict=True):
            n, m = len(st[0]), len(st[2])
            (k1, w1), (k2, w2) = _k_of(st, share, f, floor)
            if len(strata) == 1:
                return (w1 * stats.below_order_statistic_sf(below, n, m, k1)
                        + (w2 * stats.below_order_statistic_sf(below, n, m, k2) if w2 else 0.0))
            a, b = pmf_of(n, m, k1), pmf_of(n, m, k2)
            pmfs.append([w1 * x + w2 * y for x, y in zip(a, b, strict=True)] if w2 else a)
        return stats.convolution_sf(pmfs, below)

    p0 = at([1.0] * len(strata))
    if not spreads or p0 >= _MIX_FROM or max(spreads) <= 0:
        return p0
    laws = [_body_shift(st, tau) for st, tau in zip(strata, spreads, strict=True)]
    total = 2 * stats.normal_sf(6.0)
    for z, w in _SHIFT_NODES:
        total += w * at([math.exp(-(mu + z * sd)) for mu, sd in laws])
    return min(1.0, total)


def _k_at(past: list[int], share: float, floor: int = 0) -> int:
    """The rank k of the threshold in the past (sorted; mirrored for the slow tail: negated
    times): the share's, or, where that threshold is quicker than the hall's `floor` (ms, the
    slow tail's `_hall_late_floor`), the first past value at or below the floor, so that the
    count beyond it is judged against the past's own count beyond the floor."""
    m = len(past)
    k = max(1, round(share * m))
    if floor > 0 and -past[k - 1] < floor:
        k = min(m, 1 + bisect.bisect_left(past, -floor))
    return k


def _k_of(stratum: _Stratum, share: float, f: float, floor: int = 0
          ) -> tuple[tuple[int, float], tuple[int, float]]:
    """Where the threshold (the k-th smallest of the past, k its share: `_k_at`) scaled by f
    falls among the past's order statistics: between the r-th and the (r+1)-th, as ((r, 1 - x),
    (r + 1, x)) with x its linear place between them (`_times_p` mixes the two laws by these
    weights)."""
    past = stratum[2]
    m = len(past)
    k = _k_at(past, share, floor)
    if f == 1.0:
        return (k, 1.0), (k, 0.0)
    v = past[k - 1] * f
    r = bisect.bisect_left(past, v)  # past[r - 1] < v <= past[r]
    if r >= m:
        return (m, 1.0), (m, 0.0)
    lo = past[r - 1] if r else 0
    x = (v - lo) / (past[r] - lo) if past[r] > lo else 1.0
    if r == 0:
        return (1, 1.0), (1, 0.0)
    return (r, 1.0 - x), (r + 1, x)


def _shift_at(strata: list[_Stratum], share: float, spreads: list[float] | None = None,
              floor: int = 0) -> _Shift:
    """The response-shift count and level test at one share of the past, summed over the
    strata (each against its own past; exact laws convolved); `spreads`: allow for an honest
    day-level shift of that standard deviation per stratum (`_times_p`)."""
    below = fives = before = fives_before = 0
    expected = 0.0
    level_pmfs, thresholds = [], []
    levels_known = True
    for now, now_levels, past, past_levels in strata:
        n, m = len(now), len(past)
        k = _k_at(past, share, floor)
        threshold = past[k - 1]
        b = bisect.bisect_left(now, threshold)
        below += b
        expected += n * k / (m + 1)
        thresholds.append(threshold)
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
    p_times = _times_p(strata, share, below, spreads, floor)
    p_level, known_before = 1.0, None
    if levels_known and below and before:
        p_level = stats.convolution_sf(level_pmfs, fives)
        known_before = fives_before
    # The response times alone, or with the levels (Fisher: under honest operation the level
    # test, conditional on the response times, is independent of the count). Citizens of one
    # window may answer faster on some days for honest reasons (who serves, a rush): the
    # count's law allows for the hall's honest day-to-day shift (`spreads`), and the guard
    # (in _response_shift) asks for the fast ones to be newly 非常满意 too.
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
    def pile(f: _Shift) -> bool:
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

    found: list[dict[str, Any]] = []  # each reading with its reference and share
    for ref in refs:
        strata = _staff_strata(ref)
        spreads = _spreads(ref, c)
        for share in SHIFT_QUANTILES:
            f = _shift_at(strata, share, spreads)
            found.append({**f, "ref": ref, "share": share, "pile": pile(f), "spreads": spreads,
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
          "past_fast_very_satisfied": fives_before,
          "honest_shift_sd": [round(x, 3) for x in best["spreads"]]}
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
    quick = [r for r in _invited(u, c) if r.rt_ms is not None and r.rt_ms < threshold
             and (since is None or r.press_ms >= since)]
    return _Raw(below, p, guard, ev, (zh, en), events=below,
                items=rating_items(quick, "快于以往 faster than before"))


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
    # A clerk who closes several cases at once invites each citizen in turn: a burst whose
    # every rating answers an invitation of a transaction completed just before is explained
    # by the business system, never decisive proof on its own.
    explained = all(r.state == "linked" and r.mode == "invited" and r.txn_completed_ms is not None
                    and r.press_ms >= r.txn_completed_ms - CLOCK_TOLERANCE_MS for r in group)
    ev = {"count": best, "span_s": span_s, "start": c.hhmm(group[0].press_ms),
          "unmatched": unmatched, "outside_hours": closed,
          "levels": sorted({r.level for r in group}), "explained_by_transactions": explained}
    when_zh = "闭厅后" if closed == best else ""
    when_en = " outside opening hours" if closed == best else ""
    zh = (f"{when_zh}{span_s:.0f} 秒内连续 {best} 条评价（{c.hhmm(group[0].press_ms)} 起），"
          f"其中 {unmatched} 条未匹配办件")
    en = (f"{best} ratings within {span_s:.0f} s{when_en} (from {c.hhmm(group[0].press_ms)}), "
          f"{unmatched} of them matched no transaction")
    return _Raw(best, p, best >= c.s.burst_min and not explained, ev, (zh, en), events=best,
                items=rating_items(group, "集中评价 burst"))




# Shares of the window's own past response times above which today's are counted (the slow
# tail: a staff member filling in a citizen who walked away rates tens of seconds late).
# Not the 25 % of `response_shift`: fill-in is tens of seconds late, in the extreme tail; an
# excess in the moderate tail is what a slower day looks like (simulated honest variation).
LATE_QUANTILES = (0.05, 0.1)


def _mirror(ref: _RtRef) -> _RtRef:
    """The same reference with response times negated (slowest first): the fast-tail law of
    `_shift_at` then counts the slow tail."""
    return _RtRef([-x for x in reversed(ref.now)], list(reversed(ref.now_levels)),
                  [-x for x in reversed(ref.past)], list(reversed(ref.past_levels)), ref.since,
                  list(reversed(ref.now_staff)), list(reversed(ref.past_staff)),
                  list(reversed(ref.past_press)))


def _unshifted(stratum: tuple[list[int], list[int], list[int], list[int | None]]
               ) -> tuple[list[int], list[int], list[int], list[int | None]]:
    """A mirrored stratum with the current response times scaled back by how much slower the
    whole current distribution is than the past's (the ratio of the lower quartiles, if above
    1, less its sampling noise): a day on which citizens answer slower (a staff member who
    lets them read the prompt, a rush, elderly citizens) moves every response time, a fill-in
    adds late ones and leaves the fast quarter where it was. Only the latter is evidence; the
    late ones of a fill-in, tens of seconds late, stay late after the scaling."""
    now, levels, past, past_levels = stratum
    if len(now) < 4 or len(past) < 4:
        return stratum
    # Negated and sorted ascending: the fast quarter is at the end.
    ratio = (statistics.quantiles([-x for x in now], n=4)[0]
             / max(1.0, statistics.quantiles([-x for x in past], n=4)[0]))
    # Beyond the quartile's own sampling noise (about 2/sqrt(n) relative, for a log-normal of
    # the spread human response times have): only a shift larger than that is drift.
    ratio /= 1 + 2 / math.sqrt(len(now))
    if ratio <= 1:
        return stratum
    return [int(x / ratio) for x in now], levels, past, past_levels


# The hall's own slow tail, below which no rating counts as late: the upper quartile of the
# response times of the hall's median window (its past). A window whose citizens are quick
# has a slow tail of 2-3 s, and a day on which they take 3-4 s (a new staff member, elderly
# citizens) is then "late" against it; the fill-in this indicator is for comes when the
# citizen has left, later than most of the hall's citizens answer at all.
HALL_FLOOR_QUANTILE = 0.75


def _hall_late_floor(u: Unit, c: _Ctx) -> int:
    """HALL_FLOOR_QUANTILE of the past response times of the hall's median window (each
    window's longest own past of `_rt_refs`: its history, or over the rolling period the days
    before a change-point); 0 without any. The median of windows: a few fill-in windows cannot
    move it."""
    def quantile(x: Unit) -> float | None:
        refs = _rt_refs(x, c)
        if not refs:
            return None
        rts = max((r.past for r in refs), key=len)  # sorted ascending
        return float(rts[min(len(rts) - 1, int(HALL_FLOOR_QUANTILE * len(rts)))])
    key = ("hall_late_floor", None)
    if key not in c.memo:
        values = sorted(v for v in (quantile(x) for x in c.units) if v is not None)
        c.memo[key] = int(values[len(values) // 2]) if values else 0
    floor: int = c.memo[key]
    return floor


def _floored(stratum: _Stratum, floor_ms: int) -> _Stratum:
    """A mirrored stratum whose current response times at or below `floor_ms` can no longer
    count as late: each is replaced by the smaller of itself and the past's median (below
    every slow threshold, `_k_at`). The threshold then sits at the first past value at or
    below the floor, and the count beyond it is the count beyond the floor: its exact law is
    the one of the count beyond that order statistic, which bounds it (never anti-
    conservative)."""
    now, levels, past, past_levels = stratum
    if floor_ms <= 0 or not past:
        return stratum
    mid = -past[len(past) // 2]  # mirrored: past holds negated times, slowest first
    pairs = sorted((x if -x > floor_ms else -min(-x, mid), lv)
                   for x, lv in zip(now, levels, strict=True))
    return [x for x, _ in pairs], [lv for _, lv in pairs], past, past_levels


def _late_response(u: Unit, c: _Ctx) -> _Raw | None:
    """Ratings arriving later after the invitation than this window's citizens' did: of the
    current invited ratings, the number slower than the k-th slowest of the window's own past
    (k = 5, 10 % of it; per staff member where each has a past of their own), against the
    exact distribution-free law of that count when now and before come from one distribution
    (`_shift_at` on negated times), joined by Fisher's method with the levels of the late ones
    against the past's slower half. A citizen answers in seconds; a staff member who rates the
    invitations of citizens who walked away does it when they get round to it, tens of seconds
    later, and mostly with a 5. The whole current distribution is judged, not only the fast tail.
    Strong evidence needs a pile: at least shift_min late ones, twice what the past predicts
    (one and a half times with the late ones newly 非常满意) and a past of more than one
    business day. Bonferroni as `_response_shift`.
    A current distribution slower as a whole is scaled back to the past's median first
    (`_unshifted`): honest drift moves every response time, a fill-in only adds late ones."""
    refs = [_mirror(r) for r in _rt_refs(u, c)]
    if not refs:
        return None
    floor = _hall_late_floor(u, c)
    found: list[dict[str, Any]] = []  # each reading with its reference and share
    for ref in refs:
        strata = [_floored(_unshifted(s), floor) for s in _staff_strata(ref)]
        for share in LATE_QUANTILES:
            f = _shift_at(strata, share, floor=floor)
            pile = f["below"] >= c.s.shift_min and (
                f["below"] >= 2 * f["expected"]
                or (f["levels_known"] and f["p_level"] < c.s.q_weak
                    and f["fives_before"] is not None
                    and f["fives"] / f["below"] > f["fives_before"] / max(f["before"], 1)
                    and f["below"] >= 1.5 * f["expected"]))
            found.append({**f, "ref": ref, "share": share, "pile": pile})
    best = min(found, key=lambda f: (not f["pile"], f["p"]))
    ref, share, late = best["ref"], best["share"], best["below"]
    # One business day of past does not establish a window's slow tail (a quick first day,
    # citizens who linger on the next): against a past of a single day the slow tail is weak
    # evidence at most (under honest drift every late_response false flag was a window's second
    # day). Facts without press times are not held back.
    days = {c.s.local_day(at) for at in ref.past_press if at is not None}
    one_day = len(days) == 1
    p = min(1.0, best["p"] * len(LATE_QUANTILES) * len(refs) * 2)
    # The lowest of the strata's slow thresholds, or the hall's floor if higher.
    threshold = max(-max(best["thresholds"]), floor)
    since = ref.since
    ev = {"late": late, "invited": len(ref.now), "threshold_ms": threshold,
          "thresholds_ms": [-x for x in best["thresholds"]], "past_share": share,
          "past_invited": len(ref.past), "expected": round(best["expected"], 1),
          "very_satisfied": best["fives"], "past_slow": best["before"],
          "past_slow_very_satisfied": best["fives_before"], "p_times": best["p_times"],
          "p_levels": best["p_level"], "hall_floor_ms": floor,
          "since": None if since is None else str(c.s.local_day(since))}
    when_zh, when_en = _since_words(c, since)
    zh = (f"{when_zh}{late} 条评价（共 {len(ref.now)} 条）在邀请后超过 "
          f"{threshold / 1000:.1f} 秒才按下，"
          f"慢于本窗口以往最慢的 {share:.0%}（按以往应约 {best['expected']:.1f} 条），其中 "
          f"{best['fives']} 条为“非常满意”，疑似群众离开后由他人补评")
    en = (f"{when_en}{late} of {len(ref.now)} ratings came more than "
          f"{threshold / 1000:.1f} s after the invitation, slower than this window's slowest "
          f"{share:.0%} before (its past predicts {best['expected']:.1f}), {best['fives']} of "
          "them 非常满意: filled in after the citizen left?")
    slow = sorted((r for r in _invited(u, c) if r.rt_ms is not None and r.rt_ms > threshold
                   and (since is None or r.press_ms >= since)),
                  key=lambda r: -r.rt_ms)  # type: ignore[operator]
    ev["past_days"] = len(days) or None
    return _Raw(late, p, best["pile"] and not one_day, ev, (zh, en), events=late,
                items=rating_items(slow, "邀请后很久才评价 late"))
