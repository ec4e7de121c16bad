"""Time the window's device was unreachable during opening hours, and whether it restarted."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable

import collector.detection.stats as stats
from collector.detection.facts import RatingFact, Unit
from collector.detection.indicators.base import (
    MAX_ITEMS,
    NONE,
    STRONG,
    WEAK,
    _Ctx,
    _judged,
    _Raw,
    item,
    rating_items,
)
from collector.detection.indicators.keys import _BOOT_LAG_MS, _devices

# The broker publishes a device's last will this long after its connection was lost
# (1.5 x the 30 s keepalive).
WILL_DELAY_MS = 45_000

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
        for a, b in itertools.pairwise(beats):
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
    zh = (f"评价器在办公时间离线 {minutes:.0f} 分钟、{len(mine)} 次"
          f"（同厅中位数 {median:.0f} 分钟），"
          f"其中 {restarts} 次恢复时已重新启动（断电），离线期间办结 {missed} 件无法评价")
    en = (f"device offline {minutes:.0f} min in {len(mine)} episodes during opening hours (hall "
          f"median {median:.0f} min), {restarts} of them ending in a restart (power cut); "
          f"{missed} transactions completed while it was offline")
    items = [item("event", a, note=f"离线 offline {(b - a) / 60_000:.0f} min"
                  + (" 重启 restarted" if _restarted(u, a, b) else ""))
             for a, b in mine[:MAX_ITEMS]]
    return _Raw(round(minutes, 1), None, True, ev, (zh, en), strength, items=items)




# -- interruption after a bad rating ----------------------------------------------------------

# How soon after a 差评 a device state change counts as following it: the clearest of three
# windows (a cut at once, after the citizen left, a few minutes on), Bonferroni over them.
INTERRUPT_WINDOWS_MS = (60_000, 3 * 60_000, 10 * 60_000)
# A change estimated this long before the 差评 still follows it: the broker publishes the last
# will 1.5 keepalives after the device's last packet, which may precede the cut by up to one
# keepalive (30 s), so the will's time minus 45 s can be up to 30 s early.
INTERRUPT_SLACK_MS = 30_000
# State changes closer together than this are one (a power loss and its last will); a boot
# this soon after an outage began is that outage's end, not a change of its own.
_CHANGE_MERGE_MS = 90_000
_BOOT_OF_OUTAGE_MS = 3600_000
# Chance never below this many state changes per open hour and device (a hall whose devices
# never dropped must not make two coincidences proof): one in 20 open hours.
INTERRUPT_FLOOR_PER_H = 0.1
# The same for power losses the device reported itself (`power_lost`, the hardware's last
# gasp: its own clock, so a few seconds of slack): rarer than Wi-Fi drops, so judged apart too.
POWER_LOST_FLOOR_PER_H = 0.02
POWER_LOST_SLACK_MS = 5_000
# A change that this many other devices of the hall share (within _HALL_WIDE_MS) is the hall's
# network or power, not the window's staff.
_HALL_WIDE_MIN = 2
_HALL_WIDE_MS = 120_000
# Least 差评 followed by a state change for strong evidence.
INTERRUPT_MIN = 2


def _raw_changes(u: Unit, c: _Ctx) -> list[tuple[int, str]]:
    """When the unit's device changed state during opening hours, and how: went offline (the
    reception of its last will minus WILL_DELAY_MS), reported losing power (power_lost, the
    device's own time), restarted (boot, unless it ends an outage already counted); changes
    within _CHANGE_MERGE_MS of each other are one (the first kind kept)."""
    def find() -> list[tuple[int, str]]:
        raw = []
        for d in u.device_log:
            if d.kind == "status" and d.data.get("state") == "offline":
                raw.append((d.received_ms - WILL_DELAY_MS, "offline"))
            elif d.kind in ("boot", "power_lost"):
                raw.append((d.at_ms, d.kind))
        raw.sort(key=lambda x: (x[0], x[1] != "power_lost"))
        out: list[tuple[int, str]] = []
        last_outage: int | None = None
        for t, kind in raw:
            if kind == "boot" and last_outage is not None and t - last_outage < _BOOT_OF_OUTAGE_MS:
                continue  # the power came back: the end of the outage counted at its start
            if kind != "boot":
                last_outage = t
            if out and t - out[-1][0] < _CHANGE_MERGE_MS:
                continue
            out.append((t, kind))
        return [x for x in out if c.period.start_ms <= x[0] <= c.period.end_ms
                and c.s.is_open(x[0])]
    return c.once("raw_changes", u, find)


def _state_changes(u: Unit, c: _Ctx) -> list[tuple[int, str]]:
    """The unit's device state changes (`_raw_changes`) less the hall-wide ones: a change that
    at least _HALL_WIDE_MIN other devices of the hall share within _HALL_WIDE_MS (a network or
    power failure of the hall, which the window's staff did not cause)."""
    def find() -> list[tuple[int, str]]:
        others = [sorted(t for t, _ in _raw_changes(x, c)) for x in c.units
                  if x is not u and x.has_device and x.staff is None]
        out = []
        for t, kind in _raw_changes(u, c):
            shared = sum(1 for ts in others
                         if bisect.bisect_right(ts, t + _HALL_WIDE_MS)
                         > bisect.bisect_left(ts, t - _HALL_WIDE_MS))
            if shared < _HALL_WIDE_MIN:
                out.append((t, kind))
        return out
    return c.once("changes", u, find)


def _followed(bad: list[RatingFact], changes: list[tuple[int, str]], window_ms: int,
              slack_ms: int = INTERRUPT_SLACK_MS) -> list[tuple[RatingFact, tuple[int, str]]]:
    """The 差评 followed by a change within [press - slack_ms, press + window_ms]."""
    times = [t for t, _ in changes]
    out = []
    for r in bad:
        i = bisect.bisect_left(times, r.press_ms - slack_ms)
        if i < len(times) and times[i] <= r.press_ms + window_ms:
            out.append((r, changes[i]))
    return out


def _interrupted(u: Unit, c: _Ctx) -> _Raw | None:
    """差评 followed by a device state change (offline, restart, power loss) during opening
    hours, against chance. Under honest operation state changes come at times unrelated to the
    ratings, at a rate per open hour: the larger of the peers' (hall-wide changes left out on
    both sides), the window's own away from its 差评 (a device with poor Wi-Fi drops often,
    whatever its citizens press) and INTERRUPT_FLOOR_PER_H. The chance p0 that one falls in the
    window after a given 差评 follows, and the count of 差评 so followed is binomial(n, p0);
    the clearest of the INTERRUPT_WINDOWS_MS, × their number. A staff member who cuts the power
    or the network after 差评 makes that count high whatever the cut's length."""
    if not u.has_device:
        return None
    bad = [r for r in _judged(u, c) if r.level <= 2 and c.s.is_open(r.press_ms)]
    if not bad:
        return None
    open_ms = max(c.open_ms(), 1)
    peers = [x for x in c.units if x is not u and x.has_device and x.staff is None]
    # Two readings: every state change (slack for the last will's timing), and the power
    # losses the device reported (exact, rarer); each against its own honest rate.
    def power_losses(x: Unit) -> list[tuple[int, str]]:
        return [ch for ch in _state_changes(x, c) if ch[1] == "power_lost"]

    models: tuple[tuple[Callable[[Unit], list[tuple[int, str]]], int, float], ...] = (
        (lambda x: _state_changes(x, c), INTERRUPT_SLACK_MS, INTERRUPT_FLOOR_PER_H),
        (power_losses, POWER_LOST_SLACK_MS, POWER_LOST_FLOOR_PER_H))
    tries = len(INTERRUPT_WINDOWS_MS) * len(models)
    best: tuple[float, int, list[tuple[RatingFact, tuple[int, str]]], float, float, float,
                float] | None = None
    def away(x: Unit, of: Callable[[Unit], list[tuple[int, str]]], slack: int
             ) -> tuple[int, int]:
        """(changes not after a 差评 of the unit, the open time away from its 差评): its
        honest rate, which a manipulator's cuts after 差评 do not raise."""
        def find() -> tuple[int, int]:
            xbad = [r for r in _judged(x, c) if r.level <= 2 and c.s.is_open(r.press_ms)]
            changes = of(x)
            after = {ch for _, ch in _followed(xbad, changes, INTERRUPT_WINDOWS_MS[-1], slack)}
            widest = INTERRUPT_WINDOWS_MS[-1] + slack
            return len(changes) - len(after), max(open_ms - len(xbad) * widest, open_ms // 4)
        return c.once(f"interrupt_away:{slack}", x, find)

    for of, slack, floor in models:
        changes = of(u)
        # The peers' rate away from their own 差评 too: the hall's other manipulated windows
        # must not make cuts after 差评 look like the hall's habit.
        peer_away = [away(x, of, slack) for x in peers]
        peer_rate = (sum(n for n, _ in peer_away) / max(sum(t for _, t in peer_away), 1)
                     if peers else 0.0)
        own_n, own_time = away(u, of, slack)
        own_rate = own_n / own_time
        rate = max(peer_rate, own_rate, floor / 3600_000)
        for w in INTERRUPT_WINDOWS_MS:
            fol = _followed(bad, changes, w, slack)
            p0 = 1 - math.exp(-rate * (w + slack))
            p = min(1.0, stats.binomial_sf(len(fol), len(bad), p0) * tries)
            if best is None or p < best[0]:
                best = (p, w, fol, p0, rate, own_rate, peer_rate)
    assert best is not None
    p, w, followed, p0, rate, own_rate, peer_rate = best
    k = len(followed)
    expected = p0 * len(bad)
    kinds = sorted({ch[1] for _, ch in followed})
    ev = {"bad": len(bad), "followed": k, "chance": round(p0, 5),
          "expected": round(expected, 3), "window_s": w // 1000,
          "rate_per_h": round(rate * 3600_000, 3), "own_rate_per_h": round(own_rate * 3600_000, 3),
          "peer_rate_per_h": round(peer_rate * 3600_000, 3), "kinds": kinds}
    minutes = f"{w / 60_000:.0f}"
    zh = (f"{len(bad)} 条差评中有 {k} 条之后 {minutes} 分钟内评价器离线、重启或断电"
          f"（按本窗口与同厅设备每小时 {rate * 3600_000:.2f} 次状态变化，偶然约 "
          f"{expected:.2f} 条）")
    en = (f"{k} of {len(bad)} 差评 followed within {minutes} min by the device going offline, "
          f"restarting or losing power (at {rate * 3600_000:.2f} state changes an hour, chance "
          f"predicts {expected:.2f})")
    items = []
    for r, (t, kind) in followed[:MAX_ITEMS // 2]:
        items += rating_items([r], "差评 bad rating")
        items.append(item("event", t, note=kind, device=r.device or None,
                          after_s=round((t - r.press_ms) / 1000)))
    guard = k >= INTERRUPT_MIN and k >= 3 * expected
    return _Raw(k, p, guard, ev, (zh, en), events=k, items=items)
