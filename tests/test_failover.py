"""Hall partitions and failover with real parts only: a private Mosquitto, a PostgreSQL primary
with a synchronous standby, one InfluxDB, and two collector processes (`evalterm run`) sharing
4 partitions over 40 halls.

About 200 ratings/s, each with its transaction's `txn_completed` feed message, for 60 s; at
20 s the collector that holds the singletons (drainer, detector, manager) is killed with
SIGKILL, and the survivor takes over its partitions under the same client ids; at 40 s the
standby is promoted (the old primary stopped), and the survivor reconnects through the
multi-host `[state] url`. Then: every rating is in InfluxDB exactly once, the per-window
linked/unlinked counts equal a single-collector run on the same input (collector.ingest on an
SQLite database, in publication order), no dead letters, no partition served by two processes
at once (from the serving intervals the collectors log), the promoted primary has
synchronous_standby_names cleared.

EVALTERM_FAILOVER_RATE (ratings/s, default 200) and EVALTERM_FAILOVER_SECONDS (default 60)
scale it; the kill and the promotion stay at 1/3 and 2/3 of the run.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import Dev, PgPair, feed, feed_bytes, query, txn_msg, wait_for

from collector.config import Config
from collector.db import connect
from collector.ingest import Inbound, Ingest
from collector.partition import partition_of
from collector.registry import Registry
from collector.sim.servers import MosquittoServer

pytestmark = pytest.mark.servers

EVALTERM = [sys.executable, "-m", "collector.cli"]
RATE = int(os.environ.get("EVALTERM_FAILOVER_RATE", "200"))
SECONDS = float(os.environ.get("EVALTERM_FAILOVER_SECONDS", "60"))
HALLS = [f"fh{i:02d}" for i in range(40)]
WINDOWS = ("w1", "w2")
P = 4
GRACE_S = 10

_SERVING = re.compile(r"partition (\d+): serving from ([0-9.]+)")
_STOPPED = re.compile(r"partition (\d+): stopped serving at ([0-9.]+)")


class _Stream:
    """QoS 1 publisher that does not wait for each PUBACK (paho keeps up to 5000 in flight)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="failover-pub",
                                  protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(5000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        self.infos.append(info)

    def wait_all(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not acknowledge a publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _start(cfg_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*EVALTERM, "-c", str(cfg_file), "run"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _intervals(log: str, end: float) -> list[tuple[int, float, float]]:
    """(partition, start, stop) of every time the process served a partition; one still open
    ends at `end` (the process was killed, or the log ends)."""
    events = sorted([(float(m[2]), 1, int(m[1])) for m in _SERVING.finditer(log)]
                    + [(float(m[2]), 0, int(m[1])) for m in _STOPPED.finditer(log)])
    out: list[tuple[int, float, float]] = []
    open_: dict[int, float] = {}
    for t, starts, k in events:
        if starts:
            assert k not in open_, f"partition {k} served twice by one process"
            open_[k] = t
        else:
            out.append((k, open_.pop(k), t))
    out += [(k, t, end) for k, t in open_.items()]
    return out


def _reference(cfg: Config, keys: dict[str, bytes], published: list[tuple[str, bytes, int]],
               path: Path) -> Counter[tuple[str, str, str]]:
    """A single collector's judgement of the same input (the ingest pipeline on SQLite, in
    publication order): (hall, window, linked|unlinked) -> ratings."""
    conn = connect(path)
    reg = Registry(conn)
    for device, key in keys.items():
        _, hall, window = device.split("-")
        reg.add(device, hall, window, published[0][2], key=key)
    ingest = Ingest(conn, cfg)
    for i in range(0, len(published), 500):
        chunk = published[i:i + 500]
        ingest.process_batch([Inbound("mqtt", t, p, at) for t, p, at in chunk], chunk[-1][2])
    ingest.tick(published[-1][2] + (GRACE_S + 1) * 1000)
    rows = conn.execute("SELECT hall, window, state FROM rating").fetchall()
    conn.close()
    assert all(s in ("linked", "unlinked") for _, _, s in rows)
    return Counter((h, w, s) for h, w, s in rows)


def test_partitions_fail_over_on_kill_and_on_promotion(
        make_config: Callable[..., Config], pg_pair: PgPair, tmp_path: Path) -> None:
    (tmp_path / "mosquitto").mkdir()
    broker = MosquittoServer(tmp_path / "mosquitto", save_every_change=False)
    broker.start()
    pg_pair.primary.sql("CREATE DATABASE ev")
    url = pg_pair.url("ev")
    base = make_config(
        mqtt__port=broker.port, state__url=url, http__listen="",
        linking__grace_s=GRACE_S, partitions__count=P, partitions__takeover=True,
        partitions__takeover_delay_s=3.0, partitions__lock_interval_s=0.5)
    prefix = base.mqtt.topic_prefix
    conn = connect(url)
    reg = Registry(conn)
    devs: list[Dev] = []
    keys: dict[str, bytes] = {}
    for h in HALLS:
        for w in WINDOWS:
            d = reg.add(f"kp-{h}-{w}", h, w, int(time.time() * 1000))
            devs.append(Dev(prefix, d.device, d.key, h, w))
            keys[d.device] = d.key
    conn.close()
    files = {}
    for name, own in (("a", "0,1"), ("b", "2,3")):
        cfg = base.with_overrides(collector__data_dir=str(tmp_path / name),
                                  partitions__own=own)
        files[name] = tmp_path / f"{name}.toml"
        files[name].write_text(cfg.to_toml())
    logs = {n: tmp_path / f"{n}.log" for n in files}
    procs = {"a": _start(files["a"], logs["a"])}
    # a first: it takes the singletons' lock, so the kill below tests their takeover too
    wait_for(lambda: "singletons: running" in logs["a"].read_text()
             and logs["a"].read_text().count("connected to the broker") >= 2,
             timeout=60, what="a serving and running the singletons")
    procs["b"] = _start(files["b"], logs["b"])
    wait_for(lambda: logs["b"].read_text().count("connected to the broker") >= 2,
             timeout=60, what="b serving its partitions")
    time.sleep(1.0)  # subscriptions granted

    stream = _Stream(broker.port)
    published: list[tuple[str, bytes, int]] = []
    expected_ids: set[str] = set()
    n = int(RATE * SECONDS)
    marks: dict[str, float] = {}

    def produce() -> None:
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dev = devs[i % len(devs)]
            now = int(time.time() * 1000)
            if i % 20 == 7:  # names a transaction that never comes: unlinked after the grace
                txn = f"NOPE-{i}"
            else:
                txn = f"T-{i}"
                body = feed_bytes(txn_msg(txn, window=dev.window, completed=now))
                stream.publish(feed(prefix, dev.hall), body)
                published.append((feed(prefix, dev.hall), body, now))
            topic, payload = dev.rating(1 + i % 5, txn, ts=now + 5)
            stream.publish(topic, payload)
            published.append((topic, payload, now + 5))
            expected_ids.add(f"{dev.device}:1:{dev.seq}")
        marks["produced"] = time.monotonic() - t0

    producer = threading.Thread(target=produce)
    started, started_wall = time.monotonic(), time.time()
    producer.start()
    try:
        time.sleep(max(0.0, started + SECONDS / 3 - time.monotonic()))
        procs["a"].send_signal(signal.SIGKILL)
        procs["a"].wait(10)
        killed_at = time.time()
        time.sleep(max(0.0, started + 2 * SECONDS / 3 - time.monotonic()))
        promote_at = time.time()
        pg_pair.promote_standby()
        promoted_at = time.time()
        producer.join(SECONDS + 60)
        assert not producer.is_alive()
        stream.wait_all()
        total = len(expected_ids)

        def all_stored() -> list[dict[str, Any]]:
            rows = query(base, 'SELECT * FROM "rating"')
            whole = all(r.get("rating_id") is not None for r in rows)
            return rows if whole and len(rows) >= total else []

        rows = wait_for(all_stored, timeout=240, interval=2,
                        what=f"{total} ratings in InfluxDB")
        done_at = time.time()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        stream.close()
        broker.stop()
    log_a, log_b = logs["a"].read_text(), logs["b"].read_text()

    # Every rating exactly once in InfluxDB.
    ids = Counter(str(r["rating_id"]) for r in rows)
    assert set(ids) == expected_ids, "lost or unknown ratings"
    assert max(ids.values()) == 1, f"duplicated: {[i for i, c in ids.items() if c > 1][:5]}"

    # The same judgement as one collector given the same input.
    ref = _reference(base, keys, published, tmp_path / "reference.db")
    got = Counter((str(r["hall"]), str(r["window"]), str(r["link"])) for r in rows)
    assert got == ref
    assert sum(v for (_, _, s), v in ref.items() if s == "unlinked") == len(
        [i for i in range(n) if i % 20 == 7])

    state = connect(url)
    assert state.execute("SELECT count(*) FROM dead_letter").fetchone()[0] == 0
    assert state.execute("SELECT count(*) FROM rating").fetchone()[0] == total
    state.close()
    assert pg_pair.standby.sql("SHOW synchronous_standby_names") == [("",)]
    assert pg_pair.standby.sql("SELECT pg_is_in_recovery()") == [(False,)]

    # No partition served by two processes at once.
    spans = [("a", *s) for s in _intervals(log_a, killed_at)]
    spans += [("b", *s) for s in _intervals(log_b, done_at + 60)]
    for k in range(P):
        mine = sorted((s, e, who) for who, kk, s, e in spans if kk == k)
        assert mine, f"partition {k} never served"
        for (_s1, e1, w1), (s2, _e2, w2) in itertools.pairwise(mine):
            assert s2 >= e1, f"partition {k}: {w1} until {e1:.3f}, {w2} from {s2:.3f}"
    # The survivor took a's partitions over after the kill, and everything after the promotion.
    taken = [s for who, k, s, _ in spans if who == "b" and k in (0, 1) and s > killed_at]
    assert taken, "b never served a's partitions"
    after = {k: min(s for who, kk, s, _ in spans if who == "b" and kk == k and s > promote_at)
             for k in range(P)}
    assert "singletons: running" in log_b
    figures = {
        "ratings": total, "rate_per_s": RATE, "seconds": SECONDS,
        "produced_in_s": round(marks["produced"], 1),
        "takeover_after_kill_s": round(min(taken) - killed_at, 2),
        "promotion_s": round(promoted_at - promote_at, 2),
        "serving_again_after_promotion_s": {k: round(t - promoted_at, 2)
                                            for k, t in after.items()},
        "all_in_influx_after_end_s": round(done_at - started_wall - SECONDS, 1),
        "per_partition_halls": dict(Counter(partition_of(h, P) for h in HALLS)),
    }
    print("FAILOVER FIGURES", figures)
    (tmp_path / "figures.txt").write_text(repr(figures))
