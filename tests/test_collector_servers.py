"""The collector against the real Mosquitto and InfluxDB servers (started by conftest.py)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import Dev, Publisher, feed, feed_bytes, query, txn_msg, wait_for

from collector.clock import now_ms
from collector.config import Config
from collector.db import connect
from collector.protocol import build_signed, verify
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import InfluxServer

pytestmark = pytest.mark.servers



def register(cfg: Config, device: str, hall: str = "h1", window: str = "w1") -> Dev:
    conn = connect(cfg.state_db)
    dev = Registry(conn).add(device, hall, window, now_ms())
    conn.close()
    return Dev(cfg.mqtt.topic_prefix, device, dev.key, hall, window)


@pytest.fixture
def running(make_config: Callable[..., Config]) -> Iterator[Callable[..., Collector]]:
    started: list[Collector] = []

    def start(cfg: Config | None = None) -> Collector:
        c = Collector(cfg or make_config())
        c.start()
        wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
        time.sleep(0.3)  # subscriptions granted
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def metric(c: Collector, name: str, **labels: str) -> float:
    value = c.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def ratings(cfg: Config, extra: str = "") -> list[dict[str, Any]]:
    return query(cfg, f'SELECT * FROM "rating" {extra}')


def test_end_to_end_invite_rate_link(running: Callable[..., Collector],
                                     make_config: Callable[..., Config],
                                     publisher: Publisher) -> None:
    cfg = make_config()
    dev = register(cfg, "kp1")
    c = running(cfg)
    publisher.subscribe(dev.topic("cmd"))
    t = now_ms()
    publisher.publish(feed(cfg.mqtt.topic_prefix), feed_bytes(txn_msg("BJ-0001", completed=t)))

    invite = wait_for(lambda: [m for m in publisher.received if m.topic == dev.topic("cmd")],
                      what="invite on the device topic")[0]
    assert verify(dev.key, invite.topic, invite.payload), (
        "invite must be signed with the device key")
    cmd = json.loads(invite.payload)
    assert (cmd["cmd"], cmd["txn"], cmd["staff"]["name"], cmd["staff"]["badge"]) == (
        "invite", "BJ-0001", "张伟", "010233")
    assert cmd["ttl"] == cfg.linking.invite_ttl_s

    publisher.publish(*dev.rating(5, "BJ-0001", ts=now_ms()))
    rows = wait_for(lambda: ratings(cfg), what="rating in InfluxDB")
    assert len(rows) == 1
    r = rows[0]
    assert (r["link"], r["txn"], r["staff"], r["service"], r["level"], r["value"]) == (
        "linked", "BJ-0001", "s1", "sfz", "5", 5)
    txns = wait_for(lambda: query(cfg, 'SELECT * FROM "transaction" WHERE "state"=\'rated\''),
                    what="rated transaction in InfluxDB")
    assert (txns[0]["txn"], txns[0]["level"], txns[0]["staff"], txns[0]["service_name"]) == (
        "BJ-0001", 5, "s1", "居民身份证换领")
    assert metric(c, "evalterm_linked_total") == 1
    wait_for(lambda: metric(c, "evalterm_commands_acked_total") == 1, what="invite acked")


def _bad_messages(cfg: Config, dev: Dev, other: Dev, revoked: Dev) -> list[tuple[str, str, bytes]]:
    """(expected reason, topic, payload) for each rejection reason reachable over MQTT."""
    p = cfg.mqtt.topic_prefix
    topic, good = dev.rating(4, None)
    fields = json.loads(good)
    del fields["sig"]
    stranger = Dev(p, "ghost", b"\x01" * 32)
    misplaced = Dev(p, "kp1", dev.key, "h1", "w9")  # kp1's key, but another window's topic
    replay_topic, replay = dev.rating(3, None)
    unsigned = json.dumps(fields).encode()
    wrong_key = build_signed(other.key, topic, fields)
    return [
        ("oversized", topic, good[:-1] + b" " * 1100 + b"}"),
        ("bad_topic", f"{p}/dev/h1/w1/kp.1/rating", good),
        ("malformed", topic, b"\x00\xff not json"),
        ("unknown_version", topic, build_signed(dev.key, topic, {**fields, "v": 2})),
        ("unknown_device", *stranger.rating(5, None)),
        ("revoked_device", *revoked.rating(5, None)),
        ("wrong_window", *misplaced.rating(5, None)),
        ("bad_signature", topic, unsigned),
        ("bad_signature", topic, wrong_key),
        ("invalid", topic, build_signed(dev.key, topic, {**fields, "level": 9})),
        ("device_mismatch", topic, build_signed(dev.key, topic, {**fields, "dev": "kp2"})),
        ("replay", replay_topic, replay),
    ]


def test_each_rejection_reason_is_counted_and_the_collector_keeps_serving(
        running: Callable[..., Collector], make_config: Callable[..., Config],
        publisher: Publisher) -> None:
    cfg = make_config(linking__grace_s=0)
    dev = register(cfg, "kp1")
    other = register(cfg, "kp2", window="w2")
    revoked = register(cfg, "kp3", window="w3")
    conn = connect(cfg.state_db)
    Registry(conn).revoke("kp3", now_ms())
    conn.close()
    c = running(cfg)
    bad = _bad_messages(cfg, dev, other, revoked)
    publisher.publish(bad[-1][1], bad[-1][2])  # the first delivery of the replayed message
    wait_for(lambda: len(ratings(cfg)) == 1, what="first delivery stored")
    for reason, topic, payload in bad:
        before = metric(c, "evalterm_rejected_total", reason=reason)
        publisher.publish(topic, payload)
        wait_for(lambda r=reason, b=before: metric(c, "evalterm_rejected_total", reason=r) == b + 1,
                 what=f"rejection {reason}")
    # Still serving: a good rating after all that is stored.
    publisher.publish(*dev.rating(5, None))
    wait_for(lambda: len(ratings(cfg)) == 2, what="good rating after the bad ones")
    q = 'SELECT sum("n") FROM "rejection" GROUP BY "reason"'
    rej = wait_for(lambda: (rows := query(cfg, q))
                   and sum(r["sum"] for r in rows) == len(bad) and rows,
                   what="rejection points")
    assert {r["reason"] for r in rej} == {b[0] for b in bad}
    assert c.health()["mqtt_connected"]


def test_secrets_never_logged(running: Callable[..., Collector], make_config: Callable[..., Config],
                              publisher: Publisher, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(mqtt__password="", influx__password="")
    dev = register(cfg, "kp1")
    c = running(cfg)
    caplog.set_level("DEBUG")
    topic, good = dev.rating(4, None)
    fields = json.loads(good)
    del fields["sig"]
    publisher.publish(topic, build_signed(b"\x02" * 32, topic, fields))
    wait_for(lambda: metric(c, "evalterm_rejected_total", reason="bad_signature") == 1)
    text = caplog.text
    assert "bad_signature" in text
    assert dev.key.hex() not in text and cfg.http.feed_token not in text


def _http(c: Collector, path: str, body: bytes | None = None, token: str | None = None
          ) -> tuple[int, dict[str, Any] | str]:
    req = urllib.request.Request(f"http://127.0.0.1:{c.http_port}{path}", data=body,
                                 method="POST" if body is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            code, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        code, text = err.code, err.read().decode()
    try:
        return code, json.loads(text)
    except json.JSONDecodeError:
        return code, text


def test_http_feed_webhook_health_and_metrics(running: Callable[..., Collector],
                                              make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    c = running(cfg)
    token = cfg.http.feed_token
    body = feed_bytes(txn_msg("WEB-1", completed=now_ms()))
    assert _http(c, "/api/v1/feed/h1", body)[0] == 401
    assert _http(c, "/api/v1/feed/h1", body, "wrong")[0] == 401
    assert _http(c, "/api/v1/feed/h1", body, token) == (202, {"status": "accepted"})
    assert _http(c, "/api/v1/feed/h1", body, token) == (200, {"status": "duplicate"})
    code, err = _http(c, "/api/v1/feed/h1", b'{"v":1,"kind":"txn_completed"}', token)
    assert code == 400 and isinstance(err, dict) and err["error"] == "invalid"
    assert _http(c, "/api/v1/feed/h1", b"x" * 5000, token)[0] == 413
    code, err = _http(c, "/api/v1/feed/bad.hall", body, token)
    assert code == 400 and isinstance(err, dict) and err["error"] == "bad_topic"
    assert _http(c, "/api/v1/other/h1", body, token)[0] == 404
    rows = wait_for(lambda: query(cfg, 'SELECT * FROM "transaction"'), what="webhook txn stored")
    assert [r["txn"] for r in rows] == ["WEB-1"]
    code, health = _http(c, "/healthz")
    assert code == 200 and isinstance(health, dict) and health["status"] == "ok"
    code, text = _http(c, "/metrics")
    assert code == 200 and 'evalterm_rejected_total{reason="unauthorized"} 2.0' in str(text)
    assert 'evalterm_rejected_total{reason="invalid"} 1.0' in str(text)
    assert "evalterm_outbox_depth" in str(text)


def test_out_of_order_expiry_duplicates_and_implicit(running: Callable[..., Collector],
                                                    make_config: Callable[..., Config],
                                                    publisher: Publisher) -> None:
    cfg = make_config(linking__grace_s=2, linking__rating_window_s=10,
                      linking__unrated_default_level="4")
    dev = register(cfg, "kp1")
    c = running(cfg)
    p = cfg.mqtt.topic_prefix
    t = now_ms()
    # Out of order: the rating first, its transaction 1 s later.
    publisher.publish(*dev.rating(2, "OOO-1", ts=t))
    time.sleep(1)
    publisher.publish(feed(p), feed_bytes(txn_msg("OOO-1", completed=t - 1000)))
    # Duplicate delivery of a transaction event and of a rating: no effect.
    publisher.publish(feed(p), feed_bytes(txn_msg("OOO-1", completed=t - 1000)))
    topic, payload = dev.rating(5, None, ts=None)  # implicit: no case number
    publisher.publish(feed(p), feed_bytes(txn_msg("IMP-1", completed=now_ms())))
    time.sleep(0.3)
    publisher.publish(topic, payload)
    publisher.publish(topic, payload)
    # A transaction nobody rates expires to unrated, with the configured default level.
    publisher.publish(feed(p), feed_bytes(txn_msg("EXP-1", completed=now_ms())))

    def settled() -> list[dict[str, Any]]:
        rows = query(cfg, 'SELECT * FROM "transaction"')
        return rows if len(rows) == 3 and all(r["state"] != "awaiting" for r in rows) else []

    txns = {r["txn"]: r for r in wait_for(settled, timeout=30, what="three settled transactions")}
    assert txns["OOO-1"]["state"] == "rated" and txns["OOO-1"]["level"] == 2
    assert txns["IMP-1"]["state"] == "rated" and txns["IMP-1"]["level"] == 5
    assert txns["EXP-1"]["state"] == "unrated"
    assert (txns["EXP-1"]["level"], txns["EXP-1"]["defaulted"]) == (4, 1)
    rows = ratings(cfg)
    assert sorted((r["txn"], r["implicit"]) for r in rows) == [("IMP-1", 1), ("OOO-1", 0)]
    assert metric(c, "evalterm_rejected_total", reason="replay") == 1
    assert metric(c, "evalterm_feed_duplicates_total") == 1


def test_influxdb_outage_loses_nothing(running: Callable[..., Collector],
                                       make_config: Callable[..., Config], publisher: Publisher,
                                       tmp_path: Any) -> None:
    own = InfluxServer(tmp_path / "influx-outage").start()
    try:
        cfg = make_config(influx__url=own.url, linking__grace_s=0)
        dev = register(cfg, "kp1")
        c = running(cfg)
        for i in range(10):
            publisher.publish(*dev.rating(1 + i % 5, None))
        wait_for(lambda: len(ratings(cfg)) == 10, what="first ten ratings")
        own.stop()
        for i in range(40):
            publisher.publish(*dev.rating(1 + i % 5, None))
        wait_for(lambda: c.health()["outbox_depth"] >= 40, what="points waiting in the outbox")
        wait_for(lambda: not c.health()["influx_ok"], what="write failures noticed")
        assert metric(c, "evalterm_influx_write_errors_total", target="main",
                      kind="unavailable") >= 1
        time.sleep(2)
        own.start()
        wait_for(lambda: len(ratings(cfg)) == 50, timeout=40, what="all 50 ratings after restart")
        rows = ratings(cfg)
        assert len({r["rating_id"] for r in rows}) == 50
        wait_for(lambda: c.health()["outbox_depth"] == 0, what="outbox drained")
    finally:
        own.stop()


def test_invalid_points_are_kept_not_dropped(make_config: Callable[..., Config]) -> None:
    from collector.db import connect_drained, drained_path
    from collector.influx import OutboxDrainer, V1Writer, prune_outbox

    cfg = make_config()
    conn: sqlite3.Connection = connect(cfg.state_db, check_same_thread=False)
    drained = connect_drained(drained_path(cfg.state_db))
    good = [f"m,t=a v={i}i {1_700_000_000_000_000_000 + i}" for i in range(7)]
    lines = [*good[:3], "m,t=a v=1i,v=\"x\" 1", *good[3:]]  # one point with a conflicting type
    conn.executemany("INSERT INTO influx_outbox (line) VALUES (?)", [(x,) for x in lines])
    writer = V1Writer(cfg.influx.url, cfg.influx.database)
    drainer = OutboxDrainer(conn, drained, writer, batch_size=100)
    assert drainer.drain_once() == 8
    assert drainer.depth() == 0 and drainer.drain_once() == 0
    assert prune_outbox(conn, drained) == 8
    assert conn.execute("SELECT count(*) FROM influx_outbox").fetchone()[0] == 0
    assert drained.execute("SELECT count(*) FROM influx_target_dead").fetchone()[0] == 1
    assert len(query(cfg, 'SELECT * FROM "m"')) == 7
    assert (drainer.points_written, drainer.dead_points) == (7, 1)
    drainer.close()


def test_service_runs_the_integrity_detector(running: Callable[..., Collector],
                                             make_config: Callable[..., Config],
                                             publisher: Publisher) -> None:
    cfg = make_config(detection__interval_s=1, detection__opening_hours="00:00-24:00",
                      detection__business_days="1-7")
    dev = register(cfg, "kp1")
    running(cfg)
    publisher.publish(feed(cfg.mqtt.topic_prefix), feed_bytes(txn_msg("D-1", completed=now_ms())))
    publisher.publish(*dev.rating(4, "D-1", ts=now_ms()))
    wait_for(lambda: ratings(cfg), what="the rating stored")
    after = now_ms()

    def fresh() -> list[dict[str, Any]]:
        rows = query(cfg, 'SELECT * FROM "integrity_verdict" WHERE "window"=\'w1\'')
        return rows if rows and all(r["computed_ms"] > after for r in rows) else []

    rows = wait_for(fresh, what="integrity verdicts computed after the rating")
    assert {r["hall"] for r in rows} == {"h1"}
    assert {r["period"] for r in rows} == {"day", "rolling"}
    assert all(r["severity"] == 0 for r in rows), [r["reasons_en"] for r in rows]


def test_revocation_takes_effect_while_running(running: Callable[..., Collector],
                                               make_config: Callable[..., Config],
                                               publisher: Publisher) -> None:
    cfg = make_config(linking__grace_s=0)
    dev = register(cfg, "kp1")
    c = running(cfg)
    publisher.publish(*dev.rating(5, None))
    wait_for(lambda: len(ratings(cfg)) == 1, what="accepted before revocation")
    conn = connect(cfg.state_db)
    Registry(conn).revoke("kp1", now_ms())  # as `evalterm device revoke` does, from outside
    conn.close()
    time.sleep(2.5)
    publisher.publish(*dev.rating(5, None))
    wait_for(lambda: metric(c, "evalterm_rejected_total", reason="revoked_device") == 1,
             what="refused after revocation")
    assert len(ratings(cfg)) == 1
