"""Negatives, satisfaction and coverage: 差评 that should have been there, satisfaction above
peers, invitations given selectively."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import collector.detection.stats as stats
from collector.detection.facts import RatingFact, TxnFact, Unit
from collector.detection.indicators.base import MAX_ITEMS, _Ctx, _judged, _Raw, item, rating_items
from collector.detection.indicators.offline import _offline_stretches
from collector.detection.indicators.timing import _splits

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
    # what an excellent window looks like, and the peers alone must not decide, neither as
    # strong evidence nor in the combination of weak signals (no events to count there: two
    # excellent windows were flagged by it with a few presses outside an invitation, or with
    # their very quick citizens' regular timing).
    past = len(before) >= c.s.prior_strength_max
    return _Raw(run, p, run >= c.s.min_ratings and past, ev, (zh, en),
                events=run if past else 0)


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


def _coverage_rate(u: Unit, c: _Ctx) -> float:
    rated, decided = _coverage_counts(u, c)
    return rated / decided if decided else 0.0


def _two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    """z of k1/n1 - k2/n2 under a pooled proportion (own now vs own past)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-9) * (1 / n1 + 1 / n2))
    return (k1 / n1 - k2 / n2) / se


def _decided_txns(u: Unit, c: _Ctx) -> list[TxnFact]:
    """Decided (rated or unrated) transactions, leaving out those completed while the device was
    offline: those citizens could not rate, whatever the staff did."""
    def find() -> list[TxnFact]:
        offline = _offline_stretches(u, c) if u.has_device else []
        return [t for t in u.txns if t.state in ("rated", "unrated")
                and not any(a <= t.completed_ms < b for a, b in offline)]
    return c.once("decided", u, find)


_CoverageRef = tuple[int, int, int, int, int, int, int, int, "int | None"]


def _coverage_refs(u: Unit, c: _Ctx) -> list[_CoverageRef]:
    """Own-past references for coverage and satisfaction: (current rated, decided, satisfied,
    ratings; the past's same four; the change-point or None), the whole period against the
    window's history, then each change-point of the rolling period (`_splits`) against all
    before it; only those with at least min_ratings in each count."""
    rated, decided = _coverage_counts(u, c)
    rs = _judged(u, c)
    past_sat = sum(1 for x in u.history if x >= 4)
    refs: list[_CoverageRef] = [(rated, decided, _satisfied(rs), len(rs), u.history_rated,
                                 u.history_decided, past_sat, len(u.history), None)]
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
    return [r for r in refs if min(r[1], r[3], r[5], r[7]) >= c.s.min_ratings]


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
    # The hall's coverage as the median window has it when that is lower than the pooled one:
    # a few windows whose staff fill in unrated invitations raise the pooled coverage, and an
    # honest colleague would then look selective against it.
    median = c.peer_median("coverage_rate", u, lambda x: _coverage_rate(x, c),
                           lambda x: _coverage_counts(x, c)[1] >= c.s.min_ratings)
    peers_cov = c.peer_sums("coverage", u, lambda x: _coverage_counts(x, c))
    z_cov, cov0, _ = stats.funnel_z_sums(rated, decided, peers_cov)
    if median is not None and median < cov0:
        z_cov, cov0, _ = stats.funnel_z_sums(rated, decided, peers_cov, center=median)
    z_sat, sat0, _ = stats.funnel_z_sums(*_satisfied_count(u, c), c.peer_sums(
        "satisfied", u, lambda x: _satisfied_count(x, c)))
    if math.isnan(cov0) or math.isnan(sat0):
        return None
    cov, sat = rated / decided, _satisfied(rs) / len(rs)
    p = max(stats.normal_sf(-z_cov), stats.normal_sf(z_sat))
    if u.history_decided >= c.s.min_ratings and len(u.history) >= c.s.min_ratings:
        # Against the hall, a window whose citizens are always happier than the hall's (an
        # excellent window) is "above" on every day, so a day of low coverage (a rush) would
        # be enough. With a past of its own, the satisfaction must also have risen over that
        # past, or the past's coverage must itself be below the hall's (selection all along).
        past_sat = sum(1 for x in u.history if x >= 4)
        p_rise = stats.normal_sf(_two_proportion_z(_satisfied(rs), len(rs), past_sat,
                                                   len(u.history)))
        z_past, _, _ = stats.funnel_z_sums(u.history_rated, u.history_decided, peers_cov,
                                           center=cov0)
        p = max(p, min(p_rise, stats.normal_sf(-z_past)))
    ref_cov, ref_sat, own, since, judged = cov0, sat0, False, None, decided
    refs = _coverage_refs(u, c)
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
    zh = (f"{when_zh}参评率 {cov:.0%} 远低于{whose_zh} {ref_cov:.0%}，"
          f"而满意率 {sat:.1%} 高于 {ref_sat:.1%}（疑似只邀请满意的群众评价）")
    en = (f"{when_en}coverage {cov:.0%} far below {whose_en} {ref_cov:.0%} while satisfaction "
          f"{sat:.1%} is above {ref_sat:.1%} (only satisfied citizens invited?)")
    # The observations behind it: the transactions left unrated beyond the reference's coverage.
    shortfall = max(0, round((ref_cov - cov) * judged))
    unrated = [t for t in _decided_txns(u, c) if t.state == "unrated"
               and (since is None or t.completed_ms >= since)]
    return _Raw(round(cov - ref_cov, 4), p, cov <= ref_cov - c.s.coverage_gap and sat > ref_sat,
                ev, (zh, en), events=shortfall, items=txn_items(unrated, "未评价 unrated"))


def txn_items(ts: Sequence[TxnFact], note: str = "") -> list[dict[str, Any]]:
    """Transactions as observations (case number, service start and completion, staff)."""
    return [item("txn", t.completed_ms, note=note, txn=t.txn or None, started_ms=t.started_ms,
                 staff=t.staff_id or None, state=t.state) for t in ts[:MAX_ITEMS]]


# Least rise in coverage over the window's own past for strong evidence of fill-in.
COVERAGE_RISE = 0.08


def _coverage_up(u: Unit, c: _Ctx) -> _Raw | None:
    """Coverage (rated / decided) rising above the window's own past while satisfaction rises
    too: citizens who walked away without rating are being rated in their place. Against the
    own past only (two-proportion z, one-sided up; an excellent window simply has high
    coverage, so peers say nothing). As in `_selective`, satisfaction above the past at
    p < q_weak lets the coverage test speak; otherwise both must hold (intersection-union: the
    larger p). Over the references of `_coverage_refs`, with a Bonferroni factor."""
    if not c.hall.has_feed:
        return None
    refs = _coverage_refs(u, c)
    if not refs:
        return None
    best = None
    for k1, n1, s1, m1, k2, n2, s2, m2, split in refs:
        p_cov = stats.normal_sf(_two_proportion_z(k1, n1, k2, n2))
        p_sat = stats.normal_sf(_two_proportion_z(s1, m1, s2, m2))
        p = p_cov if p_sat < c.s.q_weak else max(p_cov, p_sat)
        if best is None or p < best[0]:
            best = (p, k1 / n1, k2 / n2, s1 / m1, s2 / m2, n1, split)
    assert best is not None
    p, cov, ref_cov, sat, ref_sat, n1, since = best
    p = min(1.0, p * len(refs))
    surplus = max(0, round((cov - ref_cov) * n1))
    ev = {"coverage": round(cov, 4), "reference_coverage": round(ref_cov, 4),
          "satisfied": round(sat, 4), "reference_satisfied": round(ref_sat, 4),
          "transactions": n1, "surplus": surplus,
          "since": None if since is None else str(c.s.local_day(since))}
    when_zh = when_en = ""
    if since is not None:
        day = c.s.local_day(since).strftime("%m-%d")
        when_zh, when_en = f"自 {day} 起", f"since {day}, "
    zh = (f"{when_zh}参评率 {cov:.0%} 高于本窗口以往 {ref_cov:.0%}，满意率 {sat:.1%} 也高于以往 "
          f"{ref_sat:.1%}（约多 {surplus} 条评价，疑似替离开的群众补评）")
    en = (f"{when_en}coverage {cov:.0%} above this window's past {ref_cov:.0%} while satisfaction "
          f"{sat:.1%} rose above {ref_sat:.1%} (about {surplus} more ratings: citizens who left "
          "rated in their place?)")
    late = [r for r in _judged(u, c) if r.state == "linked" and (since is None
                                                                 or r.press_ms >= since)]
    late.sort(key=lambda r: -(r.rt_ms or 0))  # the slowest first: the likeliest fill-ins
    return _Raw(round(cov - ref_cov, 4), p, cov >= ref_cov + COVERAGE_RISE and sat > ref_sat,
                ev, (zh, en), events=surplus,
                items=rating_items(late, "参评率上升 coverage rose"))


# The longest shares of a window's services compared with the rest of them.
DURATION_CUTS = (0.5, 0.25, 0.125)
# Least long services for a peer's gap to count in the hall's median (fewer are noise).
DURATION_PEER_MIN = 8


def _durations(u: Unit, c: _Ctx, cut: float, since_ms: int = 0
               ) -> tuple[int, int, int, int, list[TxnFact]]:
    """(rated, decided) of the window's longest `cut` share of services (by completed -
    started) completed from `since_ms` on, and of the rest, and the long ones' unrated
    transactions."""
    def find() -> tuple[int, int, int, int, list[TxnFact]]:
        started = [(t, t.started_ms) for t in _decided_txns(u, c)
                   if t.started_ms is not None and t.completed_ms >= since_ms]
        ts = [t for t, _ in sorted(started, key=lambda x: x[0].completed_ms - x[1])]
        n_long = int(len(ts) * cut)
        short, long = ts[:len(ts) - n_long], ts[len(ts) - n_long:]
        return (sum(1 for t in long if t.state == "rated"), len(long),
                sum(1 for t in short if t.state == "rated"), len(short),
                [t for t in long if t.state == "unrated"])
    return c.once(f"durations:{cut}:{since_ms}", u, find)


def _duration_selection(u: Unit, c: _Ctx) -> _Raw | None:
    """Long (difficult) services rated less often than the others, beyond the hall's own
    difference: citizens with long cases are not asked to rate. The window's coverage of its
    longest half, quarter and eighth of services against the rest of them. The null: the long
    ones are rated as often as the window's short ones less the hall's gap at that cut (the
    median of the other windows' gaps, so the hall's manipulated windows do not set it), the
    short ones' coverage known only from their counts: the long ones rated then follow a
    beta-binomial law (exact at a handful of long services, where a normal approximation
    accused honest windows); the clearest cut with a Bonferroni factor of 3. Strong evidence
    needs a gap of coverage_gap beyond the hall's and at least 3 citizens missing."""
    if not c.hall.has_feed:
        return None
    # Selection starts on some day: over the rolling period also its last one and two
    # business days alone (the days before them would dilute it), Bonferroni over the spans.
    days = list(c.period.days)
    recent = days[-2:] if len(days) >= 3 else days[-1:] if len(days) == 2 else []
    spans = [0] + [c.s.midnight_ms(d) for d in recent]
    found = []
    for since, cut in itertools.product(spans, DURATION_CUTS):
        kl, nl, ks, ns, unrated = _durations(u, c, cut, since)
        if nl < 4 or ns < c.s.min_ratings // 2:
            continue
        gaps = []
        for x in c.units:
            if x is not u and x.staff is None:
                xkl, xnl, xks, xns, _ = _durations(x, c, cut, since)
                if xnl >= DURATION_PEER_MIN and xns:
                    gaps.append(xks / xns - xkl / xnl)
        peer_gap = max(0.0, statistics.median(gaps)) if gaps else 0.0
        cl, cs = kl / nl, ks / ns
        expect = min(1.0, max(0.01, cs - peer_gap))
        a, b = expect * ns + 1, (1 - expect) * ns + 1
        p_cut = stats.beta_binomial_cdf(kl, nl, a, b)
        sd = math.sqrt(max(expect * (1 - expect), 1e-9) / nl)
        z = (cs - cl - peer_gap) / sd
        missing = max(0, round((cs - peer_gap - cl) * nl))
        guard = cs - cl - peer_gap >= c.s.coverage_gap and missing >= 3
        found.append((not guard, p_cut, cut, cl, cs, peer_gap, nl, ns, z, missing,
                      unrated, guard, since))
    if not found:
        return None
    _, p, cut, cl, cs, peer_gap, nl, ns, z, missing, unrated, guard, since = min(
        found, key=lambda f: (f[0], f[1]))
    p = min(1.0, p * len(DURATION_CUTS) * len(spans))
    ev = {"long_coverage": round(cl, 4), "short_coverage": round(cs, 4), "longest_share": cut,
          "peer_gap": round(peer_gap, 4), "long": nl, "short": ns, "z": round(z, 2),
          "missing": missing,
          "since": str(c.s.local_day(since)) if since else None}
    zh = (f"办理时间最长的 {cut:.0%} 办件参评率 {cl:.0%}，远低于其余办件的 {cs:.0%}"
          f"（同厅差距 {peer_gap:.0%}），"
          f"约 {missing} 位办理复杂业务的群众未被邀请评价")
    en = (f"coverage of the longest {cut:.0%} of services {cl:.0%} far below the others' "
          f"{cs:.0%} (hall gap {peer_gap:.0%}): about {missing} citizens with long cases not "
          "asked to rate")
    return _Raw(round(cs - cl, 4), p, guard, ev, (zh, en), events=missing,
                items=txn_items(unrated, "长时间办件未评价 long service unrated"))


