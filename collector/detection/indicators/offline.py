"""Time the window's device was unreachable during opening hours, and whether it restarted."""

from __future__ import annotations

import bisect
import itertools
import math

import collector.detection.stats as stats
from collector.detection.facts import Unit
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

# A device state change this soon after a 差评 counts as following it (the broker publishes
# the last will 45 s after the connection is lost).
INTERRUPT_WINDOW_MS = 6 * 60_000
# State changes closer together than this are one (a boot after a power loss, its status).
_CHANGE_MERGE_MS = 90_000
# Least 差评 followed by a state change for strong evidence (two coincidences at a window with
# few 差评 are within what a hall of windows produces over a rolling period), or by a power
# loss the device itself reported (`power_lost`: the hardware's fact, its time exact).
INTERRUPT_MIN = 3
INTERRUPT_MIN_POWER_LOST = 2


def _state_changes(u: Unit, c: _Ctx) -> list[tuple[int, str]]:
    """When the unit's device changed state during opening hours, and how: went offline (by
    the reception of its last will), restarted (boot), or reported losing power (power_lost);
    changes within _CHANGE_MERGE_MS of each other are one."""
    def find() -> list[tuple[int, str]]:
        raw = []
        for d in u.device_log:
            if d.kind == "status" and d.data.get("state") == "offline":
                raw.append((d.received_ms - WILL_DELAY_MS, "offline"))
            elif d.kind in ("boot", "power_lost"):
                raw.append((d.at_ms, d.kind))
        raw = sorted(x for x in raw if c.period.start_ms <= x[0] <= c.period.end_ms
                     and c.s.is_open(x[0]))
        out: list[tuple[int, str]] = []
        for t, kind in raw:
            if out and t - out[-1][0] < _CHANGE_MERGE_MS:
                continue
            out.append((t, kind))
        return out
    return c.once("changes", u, find)


def _interrupted(u: Unit, c: _Ctx) -> _Raw | None:
    """差评 followed within INTERRUPT_WINDOW_MS by a device state change (offline, restart, power
    loss) during opening hours, against chance: the peers' rate of state changes per open hour
    gives the probability p0 that one falls in the window after any moment, and the count of
    差评 so followed is binomial(n 差评, p0) under honest operation (p0 at least rate_floor; the
    window's own rate of changes away from its 差评 when larger: a device with poor Wi-Fi).
    A staff member who cuts the power after each 差评 makes that count high whatever the cut's
    length; Wi-Fi drops come at random times."""
    if not u.has_device:
        return None
    bad = [r for r in _judged(u, c) if r.level <= 2 and c.s.is_open(r.press_ms)]
    if not bad:
        return None
    changes = _state_changes(u, c)
    times = [t for t, _ in changes]
    followed = []
    for r in bad:
        i = bisect.bisect_right(times, r.press_ms)
        if i < len(times) and times[i] <= r.press_ms + INTERRUPT_WINDOW_MS:
            followed.append((r, changes[i]))
    open_ms = max(c.open_ms(), 1)
    peers = [x for x in c.units if x is not u and x.has_device]
    n_changes = sum(len(_state_changes(x, c)) for x in peers)
    rate = n_changes / (open_ms * len(peers)) if peers else 0.0
    # The window's own rate away from its 差评 too (a device with poor Wi-Fi drops often,
    # whatever its citizens press): the larger of the two is chance.
    after = {ch for _, ch in followed}
    own_time = max(open_ms - len(bad) * INTERRUPT_WINDOW_MS, open_ms // 4)
    rate = max(rate, (len(changes) - len(after)) / own_time)
    p0 = max(c.s.rate_floor, 1 - math.exp(-rate * INTERRUPT_WINDOW_MS))
    k = len(followed)
    p = stats.binomial_sf(k, len(bad), p0)
    expected = p0 * len(bad)
    ev = {"bad": len(bad), "followed": k, "chance": round(p0, 4),
          "expected": round(expected, 2), "window_s": INTERRUPT_WINDOW_MS // 1000,
          "kinds": sorted({ch[1] for _, ch in followed})}
    zh = (f"{len(bad)} 条差评中有 {k} 条之后 {INTERRUPT_WINDOW_MS // 60_000} 分钟内评价器离线、"
          f"重启或断电（按同厅设备状态变化的频率，偶然约 {expected:.2f} 条）")
    en = (f"{k} of {len(bad)} 差评 followed within {INTERRUPT_WINDOW_MS // 60_000} min by the "
          f"device going offline, restarting or losing power (chance predicts {expected:.2f})")
    items = []
    for r, (t, kind) in followed[:MAX_ITEMS // 2]:
        items += rating_items([r], "差评 bad rating")
        items.append(item("event", t, note=kind, device=r.device or None))
    power_lost = sum(1 for _, ch in followed if ch[1] == "power_lost")
    guard = (k >= INTERRUPT_MIN or power_lost >= INTERRUPT_MIN_POWER_LOST) and k >= 3 * expected
    return _Raw(k, p, guard, ev, (zh, en), events=k, items=items)
