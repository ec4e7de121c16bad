"""Two partitioned collectors in one process on one SQLite state database, against the real
Mosquitto and InfluxDB: each serves its partitions' halls only, the singletons run once, a
stopped peer's partitions are taken over, a hall new to the registry is subscribed.
(tests/test_failover.py does the same with processes, PostgreSQL and a kill -9.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from helpers import Dev, PostgresServer, Publisher, feed, feed_bytes, query, txn_msg, wait_for

from collector.clock import now_ms
from collector.config import Config
from collector.db import connect
from collector.partition import partition_of
from collector.registry import Registry
from collector.service import Collector

pytestmark = pytest.mark.servers


def _halls(count: int, per_partition: int) -> list[str]:
    """Halls, `per_partition` in each of `count` partitions."""
    out: list[str] = []
    i = 0
    while len(out) < count * per_partition:
        h = f"ph{i}"
        if sum(partition_of(x, count) == partition_of(h, count) for x in out) < per_partition:
            out.append(h)
        i += 1
    return out


def test_two_partitioned_collectors_split_the_halls_and_take_over(
        make_config: Callable[..., Config], publisher: Publisher) -> None:
    base = make_config(partitions__count=4, partitions__takeover_delay_s=1.0,
                       partitions__lock_interval_s=0.2, http__listen="")
    a_cfg = base.with_overrides(partitions__own="0,1")
    b_cfg = base.with_overrides(partitions__own="2,3")
    prefix = base.mqtt.topic_prefix
    halls = _halls(4, 2)
    conn = connect(base.state_db)
    reg = Registry(conn)
    devs = {h: Dev(prefix, f"kp-{h}", reg.add(f"kp-{h}", h, "w1", now_ms()).key, h, "w1")
            for h in halls}
    conn.close()
    a, b = Collector(a_cfg), Collector(b_cfg)
    a.start()
    b.start()
    try:
        wait_for(lambda: a.served_partitions() == [0, 1] and b.served_partitions() == [2, 3],
                 what="each collector serving its own partitions")
        wait_for(lambda: a.health()["mqtt_connected"] and b.health()["mqtt_connected"],
                 what="partition clients connected")
        # the singletons run in exactly one of them
        wait_for(lambda: a.serves_singletons != b.serves_singletons, what="one singleton owner")
        assert a.health()["partitions"] == {"count": 4, "own": [0, 1], "served": [0, 1],
                                            "singletons": a.serves_singletons}
        served = a.metrics.registry.get_sample_value("evalterm_partition_served",
                                                     {"partition": "1"})
        assert served == 1.0
        assert a.metrics.registry.get_sample_value("evalterm_partition_served",
                                                   {"partition": "2"}) == 0.0
        # a webhook for a hall another process serves is "busy" (503) at once, not queued
        theirs = next(h for h in halls if partition_of(h, 4) in (2, 3))
        began = time.monotonic()
        assert a.submit_feed(theirs, feed_bytes(txn_msg("X-1"))) is None
        assert time.monotonic() - began < 1
        time.sleep(0.5)  # subscriptions granted

        def one_round(tag: str) -> None:
            t = now_ms()
            for h, d in devs.items():
                publisher.publish(feed(prefix, h), feed_bytes(txn_msg(f"{tag}-{h}", completed=t)))
                publisher.publish(*d.rating(5, f"{tag}-{h}", ts=t + 10))

        one_round("A")
        rows = wait_for(lambda: [r for r in query(base, 'SELECT * FROM "rating"')
                                 if r.get("link") == "linked"] if len(
            query(base, 'SELECT * FROM "rating"')) >= len(halls) else [],
            timeout=30, what="the first round in InfluxDB")
        assert sorted(r["txn"] for r in rows) == sorted(f"A-{h}" for h in halls)
        # who linked what: each collector only its own partitions' halls
        linked_a = a.metrics.registry.get_sample_value("evalterm_linked_total")
        linked_b = b.metrics.registry.get_sample_value("evalterm_linked_total")
        in_a = sum(partition_of(h, 4) in (0, 1) for h in halls)
        assert (linked_a, linked_b) == (in_a, len(halls) - in_a)

        a.stop()  # a peer goes away: its locks are free, b takes its partitions over
        wait_for(lambda: b.served_partitions() == [0, 1, 2, 3], timeout=15,
                 what="b serving every partition")
        wait_for(lambda: b.serves_singletons, timeout=15, what="b running the singletons")
        wait_for(lambda: b.health()["mqtt_connected"], what="b's new clients connected")
        # a hall new to the registry is subscribed without a restart
        conn = connect(base.state_db)
        new = "ph-new"
        devs[new] = Dev(prefix, "kp-new", Registry(conn).add("kp-new", new, "w1", now_ms()).key,
                        new, "w1")
        conn.close()
        time.sleep(3)  # the registry is read again every 2 s
        one_round("B")
        total = 2 * len(halls) + 1
        rows = wait_for(lambda: (lambda rs: rs if len(rs) >= total else [])(
            query(base, 'SELECT * FROM "rating"')), timeout=30, what="the second round")
        assert len(rows) == total and all(r["link"] == "linked" for r in rows)
        assert {r["txn"] for r in rows} >= {f"B-{h}" for h in devs}
    finally:
        a.stop()
        b.stop()


def test_a_lost_database_session_stops_every_partition_until_the_locks_are_retaken(
        make_config: Callable[..., Config], pg_server: PostgresServer, publisher: Publisher,
        caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL ends the session holding the locks (as a failover does): the collector stops
    serving everything, opens a new session, takes its partitions again, and goes on."""
    url = pg_server.create_database()
    cfg = make_config(state__url=url, partitions__count=2, partitions__lock_interval_s=0.2,
                      partitions__takeover_delay_s=0.5, http__listen="")
    prefix = cfg.mqtt.topic_prefix
    conn = connect(url)
    reg = Registry(conn)
    halls = _halls(2, 1)
    devs = {h: Dev(prefix, f"kp-{h}", reg.add(f"kp-{h}", h, "w1", now_ms()).key, h, "w1")
            for h in halls}
    conn.close()
    c = Collector(cfg)
    c.start()
    try:
        wait_for(lambda: c.served_partitions() == [0, 1] and c.serves_singletons
                 and c.health()["mqtt_connected"], what="serving both partitions")
        pid = c._db.execute("SELECT pg_backend_pid()").fetchone()[0]
        with caplog.at_level(logging.INFO, logger="collector.service"):
            pg_server.sql(f"SELECT pg_terminate_backend({int(pid)})")
            wait_for(lambda: any("session holding the partition locks is lost" in r.getMessage()
                                 for r in caplog.records), what="the loss noticed")
            wait_for(lambda: c.served_partitions() == [0, 1] and c.serves_singletons
                     and c.health()["mqtt_connected"], what="serving again")
        stopped = [r.getMessage() for r in caplog.records if "stopped serving" in r.getMessage()]
        assert len(stopped) == 2
        assert c._db.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        time.sleep(0.5)
        t = now_ms()
        for h, d in devs.items():
            publisher.publish(feed(prefix, h), feed_bytes(txn_msg(f"L-{h}", completed=t)))
            publisher.publish(*d.rating(4, f"L-{h}", ts=t + 10))

        def linked() -> int:
            state = connect(url)
            n = state.execute("SELECT count(*) FROM rating WHERE state = 'linked'").fetchone()[0]
            state.close()
            return int(n)

        wait_for(lambda: linked() == len(halls), what="both ratings linked after the loss")
    finally:
        c.stop()
