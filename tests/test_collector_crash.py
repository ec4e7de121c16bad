"""The collector process killed with SIGKILL mid-stream, and restarted: nothing lost, nothing twice.

Also the CLI paths that run as their own processes: `evalterm run`, `txn import`, `config check`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import Dev, Publisher, feed, feed_bytes, query, txn_msg, wait_for

from collector.config import Config
from collector.db import connect
from collector.registry import Registry

pytestmark = pytest.mark.servers

EVALTERM = [sys.executable, "-m", "collector.cli"]


def start_collector(cfg_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*EVALTERM, "-c", str(cfg_file), "run"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
        make_config: Callable[..., Config], broker: object, tmp_path: Path) -> None:
    cfg = make_config(linking__grace_s=1, collector__batch_max=50)
    cfg_file = tmp_path / "collector.toml"
    cfg_file.write_text(cfg.to_toml())
    conn = connect(cfg.state_db)
    reg = Registry(conn)
    devs = []
    for w in range(1, 6):
        d = reg.add(f"kp{w}", "h1", f"w{w}", int(time.time() * 1000))
        devs.append(Dev(cfg.mqtt.topic_prefix, d.device, d.key, "h1", d.window))
    conn.close()
    log = tmp_path / "collector.log"
    proc = start_collector(cfg_file, log)
    # The first start creates the persistent session; messages published while the collector
    # is dead are then queued for it by the broker.
    wait_for(lambda: "connected to the broker" in log.read_text(), what="collector connected")

    pub = Publisher(broker.port, "crash-publisher")  # type: ignore[attr-defined]
    n_txn, n_implicit = 300, 100
    now = int(time.time() * 1000)
    expected: dict[str, str | None] = {}  # rating_id -> linked txn (None: implicit, any)
    done = threading.Event()

    def produce() -> None:
        rng = random.Random(5)
        for i in range(n_txn):
            dev = devs[i % 5]
            txn = f"K-{i:04d}"
            pub.publish(feed(cfg.mqtt.topic_prefix), feed_bytes(
                txn_msg(txn, window=dev.window, completed=now + i)))
            pub.publish(*dev.rating(rng.randint(1, 5), txn, ts=now + i + 10))
            expected[f"{dev.device}:1:{dev.seq}"] = txn
            time.sleep(0.015)  # a stream long enough for several kills
        for i in range(n_implicit):
            dev = devs[i % 5]
            pub.publish(*dev.rating(rng.randint(1, 5), None, ts=now + 1000 + i))
            expected[f"{dev.device}:1:{dev.seq}"] = None
            time.sleep(0.015)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    kills = mid_stream = 0
    try:
        while not done.is_set() or kills < 3:
            time.sleep(random.uniform(0.3, 0.9))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            mid_stream += not done.is_set()
            time.sleep(0.2)
            proc = start_collector(cfg_file, log)
        producer.join(60)
        assert not producer.is_alive()
        total = n_txn + n_implicit

        def all_stored() -> list[dict[str, object]]:
            rows = query(cfg, 'SELECT * FROM "rating"')
            # InfluxDB 1.x stores each field on its own: a read racing a write can see a point
            # with only some of its fields yet. Wait until every point is whole.
            whole = all(r.get("rating_id") is not None for r in rows)
            return rows if whole and len(rows) >= total else []

        rows = wait_for(all_stored, timeout=90, what=f"{total} ratings in InfluxDB")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        pub.close()
    assert mid_stream >= 3, f"only {mid_stream} kills landed mid-stream"
    ids = [r["rating_id"] for r in rows]
    assert len(ids) == total and set(ids) == set(expected), "lost or duplicated ratings"
    for r in rows:
        want = expected[str(r["rating_id"])]
        if want is not None:
            assert (r["link"], r["txn"]) == ("linked", want)
    conn = connect(cfg.state_db)
    assert conn.execute("SELECT count(*) FROM rating").fetchone()[0] == total
    assert conn.execute("SELECT count(*) FROM txn WHERE state='rated'").fetchone()[0] >= n_txn
    conn.close()
    txns = query(cfg, 'SELECT count("completed_n") FROM "transaction"')
    assert txns[0]["count"] == n_txn


def test_txn_import_and_config_check(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(cfg.to_toml())
    csv_file = tmp_path / "backfill.csv"
    csv_file.write_text(
        "id,window,txn,staff_id,staff_name,staff_badge,service_code,service_name,started,"
        "completed,outcome\n"
        "e1,w1,OLD-1,s1,王芳,0001,sfz,身份证,2026-11-20T09:00:00+08:00,2026-11-20T09:10:00+08:00,"
        "completed\n"
        "e2,w2,OLD-2,s2,李娜,0002,hk,户口,1763600000000,1763600300000,rejected\n"
        "e3,w2,OLD-3,s2,李娜,0002,hk,户口,yesterday,1763600300000,completed\n"
        "e4,w2,OLD-4,s 2,李娜,0002,hk,户口,1763600000000,1763600300000,completed\n",
        encoding="utf-8")
    imp = [*EVALTERM, "-c", str(cfg_file), "txn", "import", str(csv_file), "--hall", "h1"]
    refused = subprocess.run(imp, capture_output=True, text=True, timeout=60)
    # Every problem of every row, and nothing stored from a file with problems...
    assert refused.returncode == 1, refused.stderr
    assert "line 4" in refused.stderr and "yesterday" in refused.stderr
    assert "line 5: invalid" in refused.stderr
    assert "nothing was imported" in refused.stderr and "Traceback" not in refused.stderr
    conn = connect(cfg.state_db)
    assert conn.execute("SELECT count(*) FROM txn").fetchone()[0] == 0
    conn.close()
    # ...unless asked for the good rows.
    res = subprocess.run([*imp, "--partial"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "line 4" in res.stderr and "yesterday" in res.stderr
    assert "line 5: invalid" in res.stderr
    assert "2 accepted" in res.stdout
    again = subprocess.run([*imp, "--partial"], capture_output=True, text=True, timeout=60)
    assert "2 duplicate" in again.stdout
    conn = connect(cfg.state_db)
    states = conn.execute("SELECT txn, state, completed_ms FROM txn ORDER BY txn").fetchall()
    assert [(t, s) for t, s, _ in states] == [("OLD-1", "unrated"), ("OLD-2", "unrated")]
    assert states[0][2] == int(datetime(2026, 11, 20, 1, 10, tzinfo=UTC).timestamp() * 1000)
    conn.close()

    check = subprocess.run([*EVALTERM, "-c", str(cfg_file), "config", "check"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "config OK" in check.stdout
    assert cfg.http.feed_token not in check.stdout and '"***"' in check.stdout
    bad = subprocess.run([*EVALTERM, "-c", str(cfg_file), "config", "check"], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "EVALTERM_MQTT__PORT": "0"})
    assert bad.returncode == 2 and "[mqtt] port" in bad.stderr and "at least 1" in bad.stderr


def test_drainer_process_does_not_outlive_a_killed_collector(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(cfg.to_toml())
    log = tmp_path / "collector.log"
    proc = start_collector(cfg_file, log)
    try:
        def drainer_pids() -> list[int]:
            out = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "collector.drainer"],
                                 capture_output=True, text=True)
            return [int(x) for x in out.stdout.split()]

        [pid] = wait_for(drainer_pids, what="the drainer process")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             timeout=10, what="the orphaned drainer to exit")
