"""Typed data (issue 14 item 4): a device cannot poison InfluxDB's field types, every time fits
InfluxDB, and two messages of one device never share a point. Against the real InfluxDB."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import T0, Dev, feed, feed_bytes, query, txn_msg

from collector.config import Config
from collector.db import connect, connect_drained, drained_path, transaction
from collector.influx import OutboxDrainer, V1Writer
from collector.ingest import Inbound, Ingest

pytestmark = pytest.mark.servers

LAST_MS = 9_223_372_036_853  # the last millisecond the schemas accept (InfluxDB: 2262-04-11)


class Rig:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.conn = connect(cfg.state_db, check_same_thread=False)
        self.ingest = Ingest(self.conn, cfg)
        with transaction(self.conn):
            self.key = self.ingest.registry.add("kp1", "h1", "w1", T0).key
        self.prefix = cfg.mqtt.topic_prefix

    def dev(self, boot: int = 1) -> Dev:
        return Dev(self.prefix, "kp1", self.key, boot=boot)

    def send(self, *msgs: tuple[str, bytes], at: int = T0 + 1000) -> list[tuple[str, str]]:
        items = [Inbound("mqtt", t, p, at) for t, p in msgs]
        return [(o.status, o.reason) for o in self.ingest.process_batch(items, at)]

    def drain(self) -> int:
        """Write the outbox to InfluxDB; returns how many points InfluxDB refused."""
        drainer = OutboxDrainer(self.conn, connect_drained(drained_path(self.cfg.state_db)),
                                V1Writer(self.cfg.influx.url, self.cfg.influx.database))
        while drainer.drain_once():
            pass
        drainer.close()
        return drainer.dead_points


@pytest.fixture
def rig(make_config: Callable[..., Config]) -> Rig:
    return Rig(make_config(linking__grace_s=0))


def test_a_device_cannot_change_a_field_type(rig: Rig) -> None:
    d = rig.dev()
    poison = [d.event("boot", {"fw": "1", "reset_cause": "x", "key": "5"}),
              d.event("config_error", {"detail": "x", "key": "5"}),
              d.event("invite_expired", {"txn": "T1", "key": "5"}),
              d.event("key_uninvited", {"key": "5", "state": "idle"}),
              d.event("heartbeat", {**_beat(), "heap_free": "5"})]
    assert rig.send(*poison) == [("rejected", "invalid")] * len(poison)
    # An undeclared heartbeat member (even a key ending in a backslash) is kept out of the point.
    honest = [d.event("heartbeat", {**_beat(), "zz\\": "text", "ntp": True}),
              d.event("key_uninvited", {"key": 5, "state": "idle"}),
              d.event("boot", {"fw": "1.0.0", "reset_cause": "power_on"})]
    assert rig.send(*honest) == [("accepted", "")] * 3
    assert rig.drain() == 0
    rows = query(rig.cfg, 'SELECT * FROM "device_event"')
    assert sorted(r["type"] for r in rows) == ["boot", "heartbeat", "key_uninvited"]
    assert not any(k.startswith("d_zz") for r in rows for k in r)
    [key] = [r for r in rows if r["type"] == "key_uninvited"]
    [beat] = [r for r in rows if r["type"] == "heartbeat"]
    assert key["d_key"] == 5 and beat["d_ntp"] == 1 and beat["d_heap_free"] == 50_000


def _beat() -> dict[str, Any]:
    return {"fw": "1.0.0", "rssi": -60, "heap_free": 50_000, "outbox": 0, "discards": 0,
            "reconnects": 0, "keys": [0, 0, 0, 0, 0], "uninvited": 0, "state": "idle"}


def test_two_boots_same_millisecond_same_seq_are_two_points(rig: Rig) -> None:
    first, second = rig.dev(boot=1), rig.dev(boot=2)
    # Same tags too (level, link, mode...): one series, so only the timestamp keeps them apart.
    assert rig.send(first.rating(5, None, ts=T0), second.rating(5, None, ts=T0)) == [
        ("accepted", "")] * 2
    assert rig.drain() == 0
    rows = query(rig.cfg, 'SELECT "boot", "seq" FROM "rating"')
    assert sorted((r["boot"], r["seq"]) for r in rows) == [(1, 1), (2, 1)]


def test_integers_beyond_64_bits_are_malformed(rig: Rig) -> None:
    d = rig.dev()
    huge = d.event("heartbeat", {**_beat(), "heap_free": 2**64})
    msg = txn_msg("T1")
    msg["started"] = 2**63
    assert rig.send(huge, (feed(rig.prefix), feed_bytes(msg))) == [("rejected", "malformed")] * 2


def test_times_beyond_influxdb_are_refused_and_the_last_one_is_stored(rig: Rig) -> None:
    late, last = txn_msg("T-late", completed=LAST_MS + 1), txn_msg("T-last", completed=LAST_MS)
    assert rig.send((feed(rig.prefix), feed_bytes(late))) == [("rejected", "invalid")]
    assert rig.send((feed(rig.prefix), feed_bytes(last)), at=LAST_MS) == [("accepted", "")]
    rig.ingest.tick(LAST_MS + 10**6)  # the transaction is judged unrated: its point is queued
    assert rig.drain() == 0
    rows = query(rig.cfg, 'SELECT "txn" FROM "transaction"')
    assert [r["txn"] for r in rows] == ["T-last"]


def test_storage_doc_lists_every_device_event_field_with_its_type() -> None:
    import re
    from pathlib import Path

    from collector.points import EVENT_FIELDS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "storage.md").read_text("utf-8")
    row = next(x for x in doc.splitlines() if x.startswith("| `device_event` |"))
    ints, strs = (set(re.findall(r"`(d_\w+)`", cell)) for cell in row.split("|")[2:4])
    declared: dict[str, set[str]] = {"string": set(), "integer": set()}
    for fields in EVENT_FIELDS.values():
        for name, kind in fields.items():
            declared["string" if kind == "string" else "integer"].add(f"d_{name}")
    assert (ints, strs) == (declared["integer"], declared["string"])
