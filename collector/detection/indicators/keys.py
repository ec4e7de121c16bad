"""Key presses and the device's counters against what the device published."""

from __future__ import annotations

from typing import Any

from collector.detection.facts import DeviceRecord, Unit
from collector.detection.indicators.base import (
    _REASONS_ON_BAD_KEYS,
    MAX_ITEMS,
    NONE,
    STRONG,
    _Ctx,
    _eb_excess_p,
    _judged,
    _Raw,
    item,
    rating_items,
)

# -- key presses and counters ------------------------------------------------------------------


def _heartbeats(u: Unit, device: str, c: _Ctx) -> list[DeviceRecord]:
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
    delta: int = inside[-1].data[name] - first.data[name]  # both ints (filtered above)
    return max(0, delta)


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
    presses = [e for e in u.device_log if e.kind == "key_uninvited"
               and c.period.start_ms <= e.at_ms <= c.period.end_ms]
    items = [item("event", e.at_ms, note="key_uninvited", device=e.device or None, boot=e.boot,
                  key=e.data.get("key")) for e in presses[:MAX_ITEMS]]
    return _Raw(good, p, good >= c.s.uninvited_min, ev, (zh, en), events=good, items=items)


# Counters of the firmware that live in RAM only (they start again from 0 at each boot): one
# that went back between two heartbeats tells of a restart even when its boot event is missing.
_RAM_COUNTERS = ("reconnects", "lost", "filtered", "cmd_bad", "damaged")
# A boot event can arrive a little after the boot's first heartbeat (the heartbeat is sent
# directly, the boot event waits its turn in the outbox, and its time may be the receive time).
_BOOT_LAG_MS = 120_000


def _restart_between(a: DeviceRecord, b: DeviceRecord, boots: list[DeviceRecord]) -> bool:
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


def _account(u: Unit, dev: str, first: DeviceRecord, last: DeviceRecord
             ) -> dict[str, Any] | None:
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
    # have been a rating, so each excuses one press. So does each record it still held
    # without the collector's receipt at the end (sent or not: in flight, or lost by a broker
    # after its PUBACK; the device sends it again, docs/protocol.md §5.1).
    held = last.data.get("outbox", 0)
    lost = (grew("discards") + grew("lost") + grew("damaged")
            + (held if isinstance(held, int) and held > 0 else 0))
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
    # Exact accounting: a 差评-key press that is not explained is a 差评 that never left the
    # device as one, whether it became nothing (the net surplus `unexplained` counts it, with
    # its reason tag or a second 差评) or a rating of another level (no net surplus: a rating
    # of that level with no press of its key, `no_press`, pairs with it). The net surplus
    # alone would explain the second kind away: every press produced some rating.
    other_level = min(max(0, bad_hidden), no_press)
    hidden = max(0, unexplained) + other_level if bad_hidden >= 1 else 0
    return {"value": max(no_press, bad_hidden, unexplained, 0), "device": dev,
            "presses": delta, "ratings": per_level, "no_press": no_press,
            "bad_keys_unexplained": max(0, bad_hidden), "unexplained": max(0, unexplained),
            "lost": lost, "pending_negative": int(pending_end),
            "negatives_hidden": hidden, "became_other_level": other_level,
            "first_ms": first.at_ms, "last_ms": last.at_ms}


def _key_counters(u: Unit, c: _Ctx) -> _Raw | None:
    """Key counters against published ratings. Between two heartbeats of one boot the firmware's
    accounting is exact (a rating or held 差评 is on flash before its press is counted, losses
    are reported), so one 差评 press that became nothing is evidence; across a restart (a power
    cut between the count and the heartbeat, a held record that flash refused) up to
    `negative_key_tolerance` such presses are not. A heartbeat that still had messages in its
    outbox may be followed by ratings pressed before it: each excuses one press, and its span
    is judged with the tolerance; so is every span of a firmware that does not wait for the
    collector's receipts (no `unconfirmed` in its heartbeats)."""
    if not u.has_device:
        return None
    worst: dict[str, Any] | None = None
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

            def tolerance(end: DeviceRecord, restarted: bool) -> int:
                # Exact only for a firmware that keeps every record until the collector's
                # receipt (its heartbeats report `unconfirmed`): an older one deletes it on
                # the broker's PUBACK, and a broker can lose it after that.
                exact = (not restarted and end.data.get("outbox") == 0
                         and "unconfirmed" in end.data)
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
    if worst.get("became_other_level") and strength == STRONG:
        zh += f"；其中 {worst['became_other_level']} 次差评键按下后上报为其他等级"
        en += f"; {worst['became_other_level']} of them published as another level"
    first_ms, last_ms = worst.pop("first_ms"), worst.pop("last_ms")
    rs = [r for r in (*u.ratings, *u.held)
          if r.device == worst["device"] and first_ms < r.press_ms <= last_ms]
    items = [item("event", first_ms, note="heartbeat", device=worst["device"]),
             *rating_items(rs[: MAX_ITEMS - 2], "计数区间内的评价 rating in the span"),
             item("event", last_ms, note="heartbeat", device=worst["device"])]
    return _Raw(value, None, True, worst, (zh, en), strength, items=items)


