"""The state database's schema upgrade on a real version-1 file (built from the version-1 schema,
collector/db.py `_SCHEMA`, which later versions only add to): rows kept, the new column there,
the version recorded, idempotent; a newer database refused; the drainer's read-only connection
accepts only the current version."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import T0, Dev, Publisher, query, wait_for

from collector.config import Config, load_config
from collector.db import _SCHEMA as V1_SCHEMA
from collector.db import (
    SCHEMA_VERSION,
    connect,
    connect_drained,
    connect_reader,
    drained_path,
    drained_up_to,
)
from collector.detection.facts import load_hall_facts
from collector.ingest import Inbound, Ingest
from collector.service import Collector

KEY = bytes(range(32))
INSTANCE = "0123456789abcdef0123456789abcdef"


def _v1_db(path: Path, outbox_ns: int = 0) -> None:
    """A state database as the version-1 collector left it: a device, its heartbeats, outbox
    points (at `outbox_ns` on)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1'), "
                 "('instance', ?), ('registry_version', '0')", (INSTANCE,))
    conn.execute("INSERT INTO device (device, hall, window, key_hex, state, created_ms) "
                 "VALUES ('kp1', 'h1', 'w1', ?, 'active', ?)", (KEY.hex(), T0 - 86_400_000))
    for i in range(2):
        data = {"keys": [0, 0, 0, 1, i], "outbox": 0, "uninvited": 0, "state": "idle"}
        conn.execute("INSERT INTO device_log (device, hall, window, kind, at_ms, received_ms, "
                     "data) VALUES ('kp1', 'h1', 'w1', 'heartbeat', ?, ?, ?)",
                     (T0 - 120_000 + i * 60_000, T0 - 120_000 + i * 60_000, json.dumps(data)))
    conn.executemany("INSERT INTO influx_outbox (line) VALUES (?)",
                     [(f"migrated v={i} {outbox_ns + i}",) for i in range(3)])
    conn.close()


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_a_version_1_database_is_upgraded_in_place_once(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "state.db"
    _v1_db(db)
    # The drainer's progress through the outbox, recorded against this database.
    drained = connect_drained(drained_path(db))
    drained.execute("INSERT INTO drained_target (target, instance, outbox_id) VALUES "
                    "('main', ?, 2)", (INSTANCE,))
    with pytest.raises(RuntimeError, match=f"has schema 1, expected {SCHEMA_VERSION}"):
        connect_reader(db)  # the drainer never runs on an older schema

    caplog.set_level(logging.INFO, logger="collector.db")
    conn = connect(db)
    assert SCHEMA_VERSION == 4 and _version(conn) == 4
    assert "integrity_flag" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert [r.getMessage() for r in caplog.records] == [
        f"state database {db} migrated from schema 1 to {SCHEMA_VERSION}"]
    assert _columns(conn, "device_log")[-1] == "boot"
    rows = conn.execute("SELECT kind, at_ms, data, boot FROM device_log ORDER BY id").fetchall()
    assert [(r[0], r[1], json.loads(r[2])["keys"], r[3]) for r in rows] == [
        ("heartbeat", T0 - 120_000, [0, 0, 0, 1, 0], None),
        ("heartbeat", T0 - 60_000, [0, 0, 0, 1, 1], None)]
    assert conn.execute("SELECT device, key_hex FROM device").fetchall() == [("kp1", KEY.hex())]
    assert conn.execute("SELECT count(*) FROM influx_outbox").fetchone()[0] == 3
    # Same instance, same outbox: the drainer's progress still counts.
    assert drained_up_to(conn, drained) == 2
    connect_reader(db).close()

    # The upgraded database takes the new rows: a heartbeat through the real pipeline keeps its
    # boot counter, and the detector's facts carry it (None for the rows stored before).
    ingest = Ingest(conn, load_config(None, env={}))
    dev = Dev("evalterm", "kp1", KEY, boot=7)
    out = ingest.process_batch([Inbound("mqtt", *dev.heartbeat([0, 0, 0, 1, 2]), T0)], T0)
    assert [o.status for o in out] == ["accepted"]
    facts = load_hall_facts(conn, "h1", T0 - 3600_000, T0 + 1, T0 - 86_400_000)
    (unit,) = facts.units
    assert [(d.received_ms, d.boot) for d in unit.device_log] == [
        (T0 - 120_000, None), (T0 - 60_000, None), (T0, 7)]
    conn.close()

    # Opening it again changes nothing and logs nothing.
    caplog.clear()
    raw = sqlite3.connect(db)
    schema = raw.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    raw.close()
    conn = connect(db)
    assert _version(conn) == SCHEMA_VERSION and caplog.records == []
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert conn.execute("SELECT count(*) FROM device_log").fetchone()[0] == 3
    conn.close()


def _v1_db_then(path: Path, sql: str) -> Path:
    """A version-1 database, then one statement on it."""
    _v1_db(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(sql)
    raw.close()
    return path


def test_a_new_database_starts_at_the_current_version(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    assert _version(conn) == SCHEMA_VERSION
    assert "boot" in _columns(conn, "device_log")
    conn.close()


def test_a_failed_upgrade_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    # A version-1 file that cannot take the step (the column is there already): all or nothing.
    db = _v1_db_then(tmp_path / "state.db", "ALTER TABLE device_log ADD COLUMN boot TEXT")
    with pytest.raises(sqlite3.OperationalError, match="duplicate column"):
        connect(db)
    conn = sqlite3.connect(db)
    assert _version(conn) == 1
    assert conn.execute("SELECT count(*) FROM device_log").fetchone()[0] == 2
    conn.close()


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = _v1_db_then(tmp_path / "state.db",
                     "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError,
                       match=f"has schema 99, newer than this collector's {SCHEMA_VERSION}"):
        connect(db)
    with pytest.raises(RuntimeError, match=f"has schema 99, expected {SCHEMA_VERSION}"):
        connect_reader(db)
    # Refused before any statement: the file is untouched.
    conn = sqlite3.connect(db)
    assert _version(conn) == 99 and "boot" not in _columns(conn, "device_log")
    conn.close()


@pytest.mark.servers
def test_the_service_starts_on_a_version_1_database(make_config: Callable[..., Config],
                                                     publisher: Publisher) -> None:
    # The collector upgrades before it starts its drainer, whose read-only connection accepts
    # only the current version: the points left in the old outbox reach InfluxDB, and a new
    # heartbeat is stored with its boot counter.
    cfg = make_config()
    Path(cfg.state_db).parent.mkdir(parents=True, exist_ok=True)
    _v1_db(Path(cfg.state_db), outbox_ns=time.time_ns())
    c = Collector(cfg)
    try:
        c.start()
        wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
        time.sleep(0.3)  # subscriptions granted
        wait_for(lambda: sorted(r["v"] for r in query(cfg, 'SELECT "v" FROM "migrated"'))
                 == [0, 1, 2], what="the old outbox drained")
        assert c.health()["influx_ok"]
        dev = Dev(cfg.mqtt.topic_prefix, "kp1", KEY, boot=7)
        publisher.publish(*dev.heartbeat([0, 0, 0, 1, 2]))
        conn = sqlite3.connect(cfg.state_db)
        wait_for(lambda: conn.execute("SELECT boot FROM device_log WHERE boot IS NOT NULL"
                                      ).fetchall() == [(7,)], what="the heartbeat stored")
        conn.close()
    finally:
        c.stop()
