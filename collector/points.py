"""InfluxDB points for what the collector decided and received (schema: docs/storage.md).

Tags hold only low-cardinality dimensions; identifiers (case numbers, sequence numbers) are fields.
Every timestamp is derived from the event itself, plus a deterministic sub-millisecond offset that
keeps two events of the same series apart, so writing a point twice overwrites it instead of
duplicating it.
"""

from __future__ import annotations

import json
import zlib
from importlib import resources
from typing import Any

from influxdb_client import Point, WritePrecision

from collector.linking import RatingJudged, TxnRecorded, WindowSet
from collector.protocol import compact_json

__all__ = [
    "EVENT_FIELDS",
    "PointSpec",
    "device_event_point",
    "rating_point",
    "rejection_point",
    "render",
    "status_point",
    "telemetry_point",
    "transaction_point",
    "window_point",
]

UNKNOWN = "unknown"
_NS = WritePrecision.NS


class PointSpec:
    """A point recorded with `influxdb_client.Point`'s fluent calls but not rendered yet.

    The ingest worker stores points in the outbox as compact JSON (`encode`); the drainer, a
    process of its own, renders them to line protocol with `influxdb_client` (`render`). Rendering
    is the most expensive step of ingestion, and this way it runs on another core.
    """

    __slots__ = ("fields", "measurement", "tags", "ts")

    def __init__(self, measurement: str) -> None:
        self.measurement = measurement
        self.tags: dict[str, str] = {}
        self.fields: dict[str, Any] = {}
        self.ts = 0

    def tag(self, key: str, value: str) -> PointSpec:
        self.tags[key] = value
        return self

    def field(self, key: str, value: Any) -> PointSpec:
        self.fields[key] = value
        return self

    def time(self, ts_ns: int, _precision: Any = None) -> PointSpec:
        self.ts = ts_ns
        return self

    def to_line_protocol(self) -> str:
        """The JSON spec (kept under Point's method name so builders read the same)."""
        return compact_json([self.measurement, self.tags, self.fields, self.ts])


def render(spec: str) -> str:
    """Line protocol of a point stored by `PointSpec`."""
    measurement, tags, fields, ts = json.loads(spec)
    p = Point(measurement)
    for k, v in tags.items():
        p.tag(k, v)
    for k, v in fields.items():
        p.field(k, v)
    line: str = p.time(ts, _NS).to_line_protocol()
    return line


def _ts(ms: int, discriminator: int) -> int:
    """Nanosecond timestamp: the event's millisecond plus a stable offset below one ms."""
    return ms * 1_000_000 + discriminator % 1_000_000


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


def _per_message(boot: int, seq: int) -> int:
    """The sub-millisecond offset of a device message's points: distinct for the same seq in
    different boots (and for different seqs of one boot) unless they differ by a multiple of
    1000, so two messages of one device stamped with the same millisecond do not overwrite each
    other in InfluxDB."""
    return boot % 1000 * 1000 + seq % 1000


def _event_fields() -> dict[str, dict[str, str]]:
    """Per event type, the `data` members a point records and their JSON type (from the
    schema, schemas/v1/event.json): InfluxDB fixes a field's type per shard, so only declared,
    schema-checked members become fields, and a device cannot change a field's type."""
    schema = json.loads(resources.files("collector").joinpath("schemas/v1/event.json")
                        .read_text("utf-8"))
    out: dict[str, dict[str, str]] = {}
    for rule in schema["allOf"]:
        cond = rule["if"]["properties"]["type"]
        types = [cond["const"]] if "const" in cond else cond["enum"]
        props = rule["then"]["properties"]["data"]["properties"]
        fields = {}
        for name, spec in props.items():
            kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            scalar = [k for k in kinds if k in ("integer", "string", "boolean")]
            if scalar:
                fields[name] = scalar[0]
        for t in types:
            out[t] = fields
    return out


EVENT_FIELDS = _event_fields()


def rating_point(d: RatingJudged) -> str:
    r = d.rating
    p = (
        PointSpec("rating")
        .tag("hall", r.hall).tag("window", r.window).tag("device", r.device)
        .tag("staff", d.staff_id or UNKNOWN).tag("service", d.service_code or UNKNOWN)
        .tag("level", str(r.level)).tag("link", "linked" if d.linked else "unlinked")
        .tag("mode", r.mode)
        .field("value", r.level)
        .field("satisfied", int(r.level >= 3))
        .field("bad", int(r.level <= 2))
        .field("rating_id", r.rating_id)
        .field("boot", r.boot).field("seq", r.seq)
        .field("received_ms", r.received_ms)
        .field("paused", int(d.paused))
        .time(_ts(r.press_ms, _per_message(r.boot, r.seq)), _NS)
    )
    if r.txn is not None:
        p.field("txn_claimed", r.txn)
    if d.txn is not None:
        p.field("txn", d.txn)
        p.field("implicit", int(r.txn is None))
    if d.reason is not None:
        p.field("unlinked_reason", d.reason.value)
    if r.reason is not None:
        p.field("reason", r.reason)
    if r.rt_ms is not None:
        p.field("rt_ms", r.rt_ms)
    if r.device_ts is not None:
        p.field("device_ts", r.device_ts)
    if d.signed_on is not None:
        p.field("signed_on", int(d.signed_on))
    return p.to_line_protocol()


def transaction_point(d: TxnRecorded) -> str:
    t = d.txn
    p = (
        PointSpec("transaction")
        .tag("hall", t.hall).tag("window", t.window).tag("staff", t.staff_id)
        .tag("service", t.service_code).tag("outcome", t.outcome)
        .field("txn", t.txn)
        .field("state", d.state)
        .field("rated", int(d.state == "rated"))
        .field("unrated", int(d.state == "unrated"))
        .field("completed_n", 1)
        .field("duration_ms", max(0, t.completed_ms - t.started_ms))
        .field("staff_name", t.staff_name)
        .field("staff_badge", t.staff_badge)
        .field("service_name", t.service_name)
        .field("defaulted", int(d.defaulted))
        .time(_ts(t.completed_ms, _stable(t.txn)), _NS)
    )
    if d.level is not None:
        p.field("level", d.level)
    if d.rating_id is not None:
        p.field("rating_id", d.rating_id)
    return p.to_line_protocol()


def window_point(d: WindowSet, event_id: str) -> str:
    e = d.event
    p = (
        PointSpec("window_event")
        .tag("hall", e.hall).tag("window", e.window).tag("kind", e.kind)
        .field("event_id", event_id)
        .time(_ts(e.ts_ms, _stable(event_id)), _NS)
    )
    if e.staff_id:
        p.field("staff", e.staff_id)
    if e.staff_name:
        p.field("staff_name", e.staff_name)
    if e.reason:
        p.field("reason", e.reason)
    return p.to_line_protocol()


def _device_point(measurement: str, hall: str, window: str, msg: dict[str, Any],
                  ms: int) -> PointSpec:
    return (
        PointSpec(measurement)
        .tag("hall", hall).tag("window", window).tag("device", msg["dev"])
        .field("boot", msg["boot"]).field("seq", msg["seq"]).field("up_ms", msg["up"])
        .time(_ts(ms, _per_message(msg["boot"], msg["seq"])), _NS)
    )


def telemetry_point(hall: str, window: str, msg: dict[str, Any], ms: int) -> str:
    data = msg["data"]
    p = _device_point("telemetry", hall, window, msg, ms)
    for name in ("heap_free", "outbox", "discards", "reconnects", "uninvited"):
        if name in data:
            p.field(name, data[name])
    if data.get("rssi") is not None:
        p.field("rssi", data["rssi"])
    for i, count in enumerate(data["keys"], start=1):
        p.field(f"key{i}", count)
    p.field("fw", data["fw"]).field("state", data["state"])
    return p.to_line_protocol()


def device_event_point(hall: str, window: str, msg: dict[str, Any], ms: int) -> str:
    p = _device_point("device_event", hall, window, msg, ms).tag("type", msg["type"])
    p.field("n", 1)
    data = msg["data"]
    for name, kind in EVENT_FIELDS.get(msg["type"], {}).items():
        value = data.get(name)
        if value is None:
            continue
        if kind == "string":
            p.field(f"d_{name}", str(value))
        elif not isinstance(value, list | dict):
            p.field(f"d_{name}", int(value))  # integers, and booleans as 0/1
    return p.to_line_protocol()


def status_point(hall: str, window: str, msg: dict[str, Any], ms: int) -> str:
    p = _device_point("device_status", hall, window, msg, ms)
    p.field("online", int(msg["state"] == "online")).field("fw", msg["fw"])
    return p.to_line_protocol()


def rejection_point(
    reason: str, source: str, topic: str, detail: str, ms: int, serial: int,
    hall: str | None = None, window: str | None = None, device: str | None = None,
) -> str:
    p = (
        PointSpec("rejection")
        .tag("reason", reason).tag("source", source)
        .field("n", 1).field("topic", topic[:200]).field("detail", detail[:200])
        .time(_ts(ms, serial), _NS)
    )
    if hall:
        p.tag("hall", hall)
    if window:
        p.tag("window", window)
    if device:
        p.field("device", device)
    return p.to_line_protocol()
