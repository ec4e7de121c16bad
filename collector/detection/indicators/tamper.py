"""What the device's hardware reports about itself: its enclosure opened, a key circuit failing
its self-test, the power lost (docs/detection.md, "What the hardware can add")."""

from __future__ import annotations

from collector.detection.facts import Unit
from collector.detection.indicators.base import MAX_ITEMS, NONE, STRONG, WEAK, _Ctx, _Raw, item

# Device event kinds of the hardware's own observations (collector/schemas/v1/event.json).
TAMPER_KINDS = ("enclosure_opened", "key_selftest_failed", "power_lost")


def _tamper(u: Unit, c: _Ctx) -> _Raw | None:
    """The hardware's own reports, facts rather than statistics: a key circuit that failed its
    self-test (a key dead, shorted or rewired: its ratings cannot be trusted, whoever did it) is
    strong evidence; the enclosure opened is a weak signal on its own (a technician's visit opens
    it too, and should be on record), strong with a failed self-test. A power loss ("last gasp")
    is not judged here: whether it follows 差评 is (`device_interrupted`)."""
    if not u.has_device:
        return None
    seen = [d for d in u.device_log if d.kind in TAMPER_KINDS[:2]
            and c.period.start_ms <= d.at_ms <= c.period.end_ms]
    if not seen:
        return None
    failed = [d for d in seen if d.kind == "key_selftest_failed"]
    # The switch reports both edges (`closed` false when opened, true when shut again):
    # an opening is the first.
    opened = [d for d in seen if d.kind == "enclosure_opened" and d.data.get("closed") is not True]
    strength = STRONG if failed else WEAK if opened else NONE
    keys = sorted({k for d in failed for k in (d.data.get("keys") or []) if isinstance(k, int)})
    ev = {"selftest_failed": len(failed), "enclosure_opened": len(opened), "keys": keys,
          "first": c.hhmm(seen[0].at_ms)}
    zh = "；".join(x for x in (
        f"按键电路自检失败 {len(failed)} 次（键 {keys or '?'}），该设备评价不可信"
        if failed else "",
        f"设备外壳被打开 {len(opened)} 次（{c.hhmm(opened[0].at_ms)} 起），请核对维护记录"
        if opened else "") if x)
    en = "; ".join(x for x in (
        f"key-circuit self-test failed {len(failed)} times (keys {keys or '?'}): the device's "
        "ratings cannot be trusted" if failed else "",
        f"enclosure opened {len(opened)} times (from {c.hhmm(opened[0].at_ms)}): check the "
        "maintenance record" if opened else "") if x)
    items = [item("event", d.at_ms, note=d.kind, device=d.device or None, boot=d.boot,
                  **{k: v for k, v in d.data.items() if isinstance(v, int | str)})
             for d in seen[:MAX_ITEMS]]
    return _Raw(len(seen), None, True, ev, (zh, en), strength, items=items)
