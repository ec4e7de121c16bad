"""InfluxDB points for integrity indicators and verdicts (schema: docs/storage.md, "Integrity").

A point's tags and timestamp depend only on what it describes (hall, window, staff, period kind,
indicator, and the local midnight of the period's last day), never on when it was computed: each
run of the detector overwrites the day's points instead of adding to them, and the value a
dashboard shows is the latest.
"""

from __future__ import annotations

import json
import zlib

from influxdb_client import Point, WritePrecision

from collector.detection.verdict import SEVERITY_NAMES, Verdict

__all__ = ["ALL_STAFF", "evidence_points", "indicator_point", "verdict_point"]

ALL_STAFF = "*"  # staff tag of a whole-window point
_NS = WritePrecision.NS


def _ts(midnight_ms: int, *parts: str) -> int:
    # Midnight plus a stable sub-millisecond offset, as collector/points.py does for events.
    return midnight_ms * 1_000_000 + zlib.crc32("/".join(parts).encode()) % 1_000_000


def _base(measurement: str, v: Verdict) -> Point:
    p: Point = (Point(measurement).tag("hall", v.hall).tag("window", v.window)
                .tag("staff", v.staff or ALL_STAFF).tag("period", v.period))
    return p


def indicator_point(v: Verdict, index: int, midnight_ms: int, computed_ms: int) -> str:
    i = v.indicators[index]
    p = (
        _base("integrity", v).tag("indicator", i.name)
        .field("value", float(i.value))
        .field("strength", i.strength)
        .field("strong", int(i.strength == "strong"))
        .field("decisive", int(i.decisive))
        .field("evidence", json.dumps(i.evidence, ensure_ascii=False, sort_keys=True)[:2000])
        .field("reason_zh", i.reason_zh)
        .field("reason_en", i.reason_en)
        .field("computed_ms", computed_ms)
        .time(_ts(midnight_ms, v.window, v.staff or "", v.period, i.name), _NS)
    )
    if i.p is not None:
        p.field("p", float(i.p))
    if i.q is not None:
        p.field("q", float(i.q))
    if i.events is not None:
        p.field("events", int(i.events))
    line: str = p.to_line_protocol()
    return line


def verdict_point(v: Verdict, midnight_ms: int, computed_ms: int, language: str = "zh") -> str:
    name_zh, name_en = SEVERITY_NAMES[v.severity]
    p = (
        _base("integrity_verdict", v)
        .field("severity", v.severity)
        .field("flagged", int(v.flagged))
        .field("severity_name", name_zh if language == "zh" else name_en)
        .field("reasons", "；".join(v.reasons_zh) if language == "zh" else "; ".join(v.reasons_en))
        .field("reasons_zh", "；".join(v.reasons_zh))
        .field("reasons_en", "; ".join(v.reasons_en))
        .field("strong", ",".join(v.strong))
        .field("weak", ",".join(v.weak))
        .field("n_strong", len(v.strong))
        .field("combined", ",".join(i.name for i in v.combined.agreeing) if v.combined else "")
        .field("combined_strong", int(bool(v.combined and v.combined.strong)))
        .field("evidence_n", len(v.evidence()))
        .field("evidence", json.dumps([{"indicator": name, **x} for name, x in v.evidence()],
                                      ensure_ascii=False, sort_keys=True)[:8000])
        .field("computed_ms", computed_ms)
        .time(_ts(midnight_ms, v.window, v.staff or "", v.period), _NS)
    )
    line: str = p.to_line_protocol()
    return line


# Fields of an evidence point, from an observation (indicators/base.py, `item`).
_EVIDENCE_INT = ("level", "boot", "seq", "rt_ms", "completed_ms", "started_ms", "key")
_EVIDENCE_STR = ("txn", "device", "staff", "state", "note")


def evidence_points(v: Verdict, computed_ms: int) -> list[str]:
    """One `integrity_evidence` point per observation behind a flagged verdict (a rating, a
    transaction, a device event), at the observation's own time: what a manager holds against
    the queue log or CCTV. Its tags and time depend only on what it describes, so a later run
    overwrites it (with its own computed_ms); an observation that stops being evidence keeps
    the point of the run that cited it (`computed_ms` tells which)."""
    if not v.flagged:
        return []
    lines = []
    for name, x in v.evidence():
        p = (_base("integrity_evidence", v).tag("indicator", name).tag("kind", x["kind"])
             .field("severity", v.severity).field("computed_ms", computed_ms))
        for k in _EVIDENCE_INT:
            if isinstance(x.get(k), int):
                p.field(k, int(x[k]))
        for k in _EVIDENCE_STR:
            if x.get(k) is not None:  # "staff" is a tag already: the one who served is staff_id
                p.field("staff_id" if k == "staff" else k, str(x[k])[:200])
        ident = x.get("txn") or f"{x.get('device', '')}:{x.get('boot', '')}:{x.get('seq', '')}"
        p.time(_ts(int(x["at_ms"]), v.window, v.staff or "", v.period, name, str(ident),
                   str(x.get("note", ""))), _NS)
        lines.append(p.to_line_protocol())
    return lines
