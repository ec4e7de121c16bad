"""Ratings that match no transaction: more ratings than the window's citizens could give."""

from __future__ import annotations

import collector.detection.stats as stats
from collector.detection.facts import Unit
from collector.detection.indicators.base import _Ctx, _judged, _rate_of, _Raw, rating_items

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
    return _Raw(value, p, value >= c.s.unmatched_min, ev, (zh, en), events=value,
                items=rating_items(unlinked, "未匹配办件 no transaction"))


