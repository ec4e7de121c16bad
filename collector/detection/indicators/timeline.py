"""Ratings against the business system's timeline: a rating pressed after the window's next
citizen's service had begun."""

from __future__ import annotations

import bisect

from collector.detection.facts import RatingFact, Unit
from collector.detection.indicators.base import _Ctx, _eb_excess_p, _judged, _Raw, rating_items

# A rating this long after the next service began cannot be the previous citizen finishing
# (the clerk calls the next one while the last one is still at the device, clocks differ).
NEXT_TOLERANCE_MS = 20_000
# Least ratings after the next service began for strong evidence.
AFTER_NEXT_MIN = 3


def _after_next(u: Unit, c: _Ctx) -> tuple[list[RatingFact], int]:
    """(ratings pressed more than NEXT_TOLERANCE_MS after the window's next citizen was called
    or began to be served, ratings that could be judged). A linked, invited rating is judged
    when the business system says when the next one came: a queue call (叫号, `queue_called`)
    at or after its transaction's completion, or the next transaction's start when that began
    after its own was completed (a business system whose services overlap at one window says
    nothing about who stood there)."""
    def find() -> tuple[list[RatingFact], int]:
        starts = sorted((t.started_ms, t.completed_ms) for t in u.txns
                        if t.started_ms is not None)
        keys = [s for s, _ in starts]
        calls = sorted(e.at_ms for e in u.window_log if e.kind == "queue_called")
        late, judged = [], 0
        for r in _judged(u, c):
            if r.state != "linked" or r.mode != "invited" or r.txn_completed_ms is None:
                continue
            nexts = []
            j = bisect.bisect_left(calls, r.txn_completed_ms)
            if j < len(calls):
                nexts.append(calls[j])
            if r.txn_started_ms is not None:
                i = bisect.bisect_right(keys, r.txn_started_ms)
                while i < len(starts) and starts[i] == (r.txn_started_ms, r.txn_completed_ms):
                    i += 1  # the rating's own transaction
                if i < len(starts) and starts[i][0] >= r.txn_completed_ms:
                    nexts.append(starts[i][0])
            if not nexts:
                continue
            judged += 1
            if r.press_ms > min(nexts) + NEXT_TOLERANCE_MS:
                late.append(r)
        return late, judged
    return c.once("after_next", u, find)


def _after_next_start(u: Unit, c: _Ctx) -> _Raw | None:
    """Ratings pressed after the next citizen's service began at the window, per judged
    rating, against the peers' rate (beta-binomial with an empirical-Bayes prior, at least
    rate_floor). The citizen being rated had left: whoever pressed, it was not them. Strong
    evidence needs AFTER_NEXT_MIN such ratings and three times the peers' share."""
    if not c.hall.has_feed:
        return None
    late, judged = _after_next(u, c)
    if not judged:
        return None
    peers = c.peer_sums("after_next", u, lambda x: (len(_after_next(x, c)[0]),
                                                    _after_next(x, c)[1]))
    p, peer_rate = _eb_excess_p(len(late), judged, peers, c)
    ev = {"after_next_start": len(late), "judged": judged, "peer_share": round(peer_rate, 4),
          "tolerance_ms": NEXT_TOLERANCE_MS}
    zh = (f"{len(late)} 条评价（可判断的 {judged} 条）在该窗口下一位群众开始办理后才按下"
          f"（同厅 {peer_rate:.1%}），被评价的群众已离开")
    en = (f"{len(late)} of {judged} ratings pressed after the window's next service had begun "
          f"(hall {peer_rate:.1%}): the citizen rated had left")
    guard = len(late) >= AFTER_NEXT_MIN and len(late) >= 3 * peer_rate * judged
    return _Raw(len(late), p, guard, ev, (zh, en), events=len(late),
                items=rating_items(late, "下一位已开始办理 after the next service began"))
