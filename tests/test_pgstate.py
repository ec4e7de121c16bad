"""The state database on PostgreSQL (collector/pgstate.py, collector/db.py): statement
translation, the schema and its upgrade, bytes, lost connections, the partition locks, and a
primary with a synchronous standby that is promoted (real PostgreSQL 15 servers: helpers.py)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from helpers import (
    T0,
    Dev,
    PgPair,
    PostgresServer,
    Publisher,
    feed,
    feed_bytes,
    query,
    txn_msg,
    wait_for,
)

from collector.clock import now_ms
from collector.config import Config, ConfigError, load_config
from collector.db import (
    _MIGRATIONS,
    _SCHEMA,
    SCHEMA_VERSION,
    connect,
    connect_reader,
    partition_lock_path,
    release_partition_locks,
    transaction,
    try_lock_partition,
)
from collector.errors import ServiceUnavailable
from collector.pgstate import StateUnavailable, ddl_statements, open_pg, translate
from collector.registry import Registry


def test_translate_placeholders_percent_and_the_reserved_window() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND window = ?") == (
        'SELECT a FROM t WHERE b = %s AND "window" = %s')
    # quoted text keeps its ? and its words; every % is doubled (psycopg reads them all)
    assert translate("SELECT '?', 'window', x % 2, '5%' FROM t WHERE w.window=?") == (
        "SELECT '?', 'window', x %% 2, '5%%' FROM t WHERE w.\"window\"=%s")
    assert translate('SELECT "window", window_state.hall FROM dir_window, window_state') == (
        'SELECT "window", window_state.hall FROM dir_window, window_state')


def test_ddl_of_the_schema_and_an_unknown_trigger() -> None:
    ddl = ddl_statements(_SCHEMA)
    text = "\n".join(ddl)
    assert "AUTOINCREMENT" not in text and "BLOB" not in text and "WITHOUT ROWID" not in text
    assert "INTEGER" not in text.replace("AS INTEGER", "")
    assert sum(s.startswith("CREATE TRIGGER device_") for s in ddl) == 3
    assert "payload BYTEA NOT NULL" in text
    with pytest.raises(RuntimeError, match="no PostgreSQL form of trigger t_new"):
        ddl_statements("CREATE TRIGGER t_new AFTER INSERT ON device BEGIN SELECT 1; END")


def test_schema_bytes_and_wide_integers_round_trip(pg_database: str) -> None:
    conn = connect(pg_database)
    payload = bytes(range(256))
    with transaction(conn):
        conn.execute("INSERT INTO cmd_outbox (topic, payload, expires_ms) VALUES (?, ?, ?)",
                     ("t/a", payload, 2**53))
    assert conn.execute("SELECT payload, expires_ms FROM cmd_outbox").fetchall() == [
        (payload, 2**53)]
    # a bool parameter is 0/1, as sqlite3 stores it
    conn.execute("UPDATE cmd_outbox SET expires_ms = expires_ms + ? WHERE ? = 1 AND ? = 0",
                 (True, True, False))
    assert conn.execute("SELECT expires_ms FROM cmd_outbox").fetchone() == (2**53 + 1,)
    conn.execute("UPDATE cmd_outbox SET expires_ms = expires_ms - ?", (True,))
    # sum() of a bigint column is numeric in PostgreSQL: read back as int, like SQLite's
    row = conn.execute("SELECT sum(expires_ms), avg(expires_ms) / 2 FROM cmd_outbox").fetchone()
    assert row == (2**53, 2**52) and type(row[0]) is int
    # the registry triggers bump registry_version, the audit log is append-only
    before = conn.execute("SELECT value FROM meta WHERE key='registry_version'").fetchone()[0]
    conn.execute("INSERT INTO device (device, hall, window, key_hex, state, created_ms) "
                 "VALUES ('d', 'h', 'w', '00', 'active', 1)")
    conn.execute("DELETE FROM device")
    assert int(conn.execute("SELECT value FROM meta WHERE key='registry_version'"
                            ).fetchone()[0]) == int(before) + 2
    conn.execute("INSERT INTO mgr_audit VALUES (1, 1, 'a', 'x', 's', '{}', '', 'h')")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE mgr_audit SET actor = 'b'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM mgr_audit")
    assert not conn.in_transaction
    conn.close()
    again = connect(pg_database)  # opening an existing current database changes nothing
    assert again.execute("SELECT count(*) FROM mgr_audit").fetchone()[0] == 1
    again.close()


def _v1_pg(url: str) -> None:
    raw = psycopg.connect(url, autocommit=True)
    for sql in ddl_statements(_SCHEMA):
        raw.execute(translate(sql), ())  # type: ignore[arg-type]
    raw.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1'), "
                "('instance', 'i1'), ('registry_version', '0')")
    raw.execute("INSERT INTO device_log (device, hall, \"window\", kind, at_ms, received_ms, "
                "data) VALUES ('kp1', 'h1', 'w1', 'heartbeat', %s, %s, '{}')", (T0, T0))
    raw.close()


def test_a_version_1_postgres_database_is_upgraded_and_a_failed_upgrade_changes_nothing(
        pg_server: PostgresServer) -> None:
    url = pg_server.create_database()
    _v1_pg(url)
    with pytest.raises(RuntimeError, match=f"has schema 1, expected {SCHEMA_VERSION}"):
        connect_reader(url)
    conn = connect(url)  # the same _MIGRATIONS as SQLite
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    assert conn.execute("SELECT kind, boot FROM device_log").fetchall() == [("heartbeat", None)]
    assert conn.execute("SELECT to_regclass('integrity_flag') IS NOT NULL").fetchone() == (True,)
    conn.close()
    connect_reader(url).close()

    broken = pg_server.create_database()
    _v1_pg(broken)
    raw = psycopg.connect(broken, autocommit=True)
    raw.execute("CREATE TABLE dir_service (x TEXT)")  # step 3 cannot run: all steps or none
    with pytest.raises(sqlite3.ProgrammingError, match="already exists"):
        connect(broken)
    assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
    cols = raw.execute("SELECT column_name FROM information_schema.columns WHERE "
                       "table_name = 'device_log' AND column_name = 'boot'").fetchall()
    assert cols == []  # step 2 (the boot column) was undone with the rest
    raw.close()
    assert len(_MIGRATIONS) == SCHEMA_VERSION - 1


def test_a_lost_connection_is_state_unavailable_and_its_commit_not_taken(
        pg_server: PostgresServer, pg_database: str) -> None:
    conn = connect(pg_database)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(StateUnavailable) as lost:
        with transaction(conn):
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'e1')")
            pg_server.sql(f"SELECT pg_terminate_backend({int(pid)})")
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'e2')")
    # a user command shows it as one line; the ingest worker aborts the batch unacknowledged
    assert isinstance(lost.value, ServiceUnavailable)
    assert isinstance(lost.value, sqlite3.OperationalError)
    again = connect(pg_database)
    assert again.execute("SELECT count(*) FROM seen_feed").fetchone() == (0,)
    again.close()
    # the next statement on the same connection connects again (the service's worker retries)
    with transaction(conn):
        conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'e3')")
    assert conn.execute("SELECT id FROM seen_feed").fetchall() == [("e3",)]
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    conn.close()
    # unreachable: the same error, naming the server without a password
    with pytest.raises(StateUnavailable, match="unreachable") as down:
        open_pg("postgresql://someone@127.0.0.1:1/x", connect_timeout_s=2)
    assert "127.0.0.1:1" in str(down.value)


def test_a_partition_lock_fences_a_second_connection_until_its_holder_dies(
        pg_server: PostgresServer, pg_database: str) -> None:
    holder, other = connect(pg_database), connect(pg_database)
    assert try_lock_partition(holder, 7) is True
    assert try_lock_partition(holder, 7) is True  # re-entrant for its own session
    assert try_lock_partition(other, 7) is False
    assert try_lock_partition(other, 8) is True  # another partition is free
    pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
    pg_server.sql(f"SELECT pg_terminate_backend({int(pid)})")  # the owner's connection dies
    wait_for(lambda: try_lock_partition(other, 7), timeout=20)
    # the old owner does not silently reconnect without its lock: it must take it again
    with pytest.raises(StateUnavailable, match="connection lost"):
        holder.execute("SELECT 1")  # it learns of the loss here
    for _ in range(2):
        with pytest.raises(StateUnavailable, match="partition locks"):
            holder.execute("SELECT 1")
    third = connect(pg_database)
    assert try_lock_partition(third, 7) is False and try_lock_partition(third, 8) is False
    other.close()
    third.close()


def test_an_sqlite_partition_lock_is_a_file_lock_held_by_the_living_process(
        tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first, second = connect(db), connect(db)
    assert try_lock_partition(first, 1) is True and try_lock_partition(first, 1) is True
    assert try_lock_partition(second, 1) is False
    assert partition_lock_path(db, 1).exists()
    release_partition_locks(first)
    assert try_lock_partition(second, 1) is True
    release_partition_locks(second)
    # a process that holds the lock and is killed: the kernel frees it
    code = ("import sys, time; from collector.db import connect, try_lock_partition; "
            f"c = connect({str(db)!r}); print(try_lock_partition(c, 2), flush=True); "
            "time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "True"
        assert try_lock_partition(first, 2) is False
    finally:
        child.kill()
        child.wait()
    assert try_lock_partition(first, 2) is True
    release_partition_locks(first)
    first.close()
    second.close()


def test_state_url_config() -> None:
    cfg = load_config(None, env={"EVALTERM_STATE__URL": "postgresql://ev@db1:5432,db2/ev?"
                                 "target_session_attrs=read-write"})
    assert str(cfg.state_target).startswith("postgresql://ev@db1")
    assert load_config(None, env={}).state_target == load_config(None, env={}).state_db
    with pytest.raises(ConfigError, match="holds a password") as e:
        load_config(None, env={"EVALTERM_STATE__URL": "postgresql://ev:hunter2@db1/ev"})
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match="holds a password"):
        load_config(None, env={"EVALTERM_STATE__URL": "postgresql://db1/ev?password=hunter2"})
    with pytest.raises(ConfigError, match="postgresql:// URL"):
        load_config(None, env={"EVALTERM_STATE__URL": "mysql://db1/ev"})


def _commit_in_thread(url: str, row: str) -> threading.Thread:
    def run() -> None:
        conn = connect(url)
        with transaction(conn):
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', ?)", (row,))
        conn.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_commit_on_the_primary_is_on_the_synchronous_standby(pg_pair: PgPair) -> None:
    url = pg_pair.primary.create_database()
    conn = connect(url)
    with transaction(conn):
        conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'e1')")
        before_commit = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    # synchronous_commit = on: the commit returned after the standby flushed its WAL
    db = url.rsplit("/", 1)[1]
    flushed = pg_pair.standby.sql(
        f"SELECT pg_last_wal_receive_lsn() >= '{before_commit}'::pg_lsn")
    assert flushed == [(True,)]
    assert pg_pair.primary.sql("SELECT sync_state FROM pg_stat_replication") == [("sync",)]

    def replayed() -> bool:  # flushed is not yet replayed: the table may not be there yet
        try:
            return pg_pair.standby.sql("SELECT id FROM seen_feed", db) == [("e1",)]
        except (psycopg.errors.UndefinedTable, psycopg.OperationalError):  # nor the database
            return False

    wait_for(replayed)
    # the standby is read-only: the collector's multi-host URL picks the primary
    assert pg_pair.standby.sql("SELECT pg_is_in_recovery()") == [(True,)]
    multi = connect(pg_pair.url(db))
    assert multi.execute("SELECT count(*) FROM seen_feed").fetchone() == (1,)
    assert multi.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    multi.close()
    # and so does the drainer's read-only connection (read-only after connecting: libpq's
    # target_session_attrs=read-write would refuse a session read-only from its start)
    reader = connect_reader(pg_pair.url(db))
    assert reader.execute("SELECT count(*) FROM seen_feed").fetchone() == (1,)
    with pytest.raises(sqlite3.DatabaseError, match="read-only"):
        reader.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'no')")
    reader.close()
    # a dead link is noticed in seconds (TCP keepalives, tcp_user_timeout), unless the URL says
    multi = connect(pg_pair.url(db))
    params = multi.raw.info.get_parameters()  # type: ignore[attr-defined]
    assert (params["keepalives_idle"], params["tcp_user_timeout"]) == ("10", "20000")
    multi.close()
    own = connect(pg_pair.url(db) + "&keepalives_idle=30")
    assert own.raw.info.get_parameters()["keepalives_idle"] == "30"  # type: ignore[attr-defined]
    own.close()
    # with the standby gone, a commit waits (it is not acknowledged): the synchronous guarantee
    pg_pair.standby.stop("immediate")
    waiting = _commit_in_thread(url, "e2")
    waiting.join(timeout=5)
    assert waiting.is_alive()
    pg_pair.primary.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
    pg_pair.primary.sql("SELECT pg_reload_conf()")
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    conn.close()


def test_after_promote_standby_a_commit_on_the_new_primary_returns(pg_pair: PgPair) -> None:
    url = pg_pair.primary.create_database()
    db = url.rsplit("/", 1)[1]
    conn = connect(url)
    with transaction(conn):
        conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'before')")
    conn.close()
    # the standby copied synchronous_standby_names; promote_standby() clears it
    assert pg_pair.standby.sql("SHOW synchronous_standby_names") == [("*",)]
    pg_pair.promote_standby()
    assert pg_pair.standby.sql("SHOW synchronous_standby_names") == [("",)]
    assert pg_pair.standby.sql("SELECT pg_is_in_recovery()") == [(False,)]
    # the same multi-host URL now finds the promoted server (the old primary is down)
    done = _commit_in_thread(pg_pair.url(db), "after")
    done.join(timeout=60)
    assert not done.is_alive(), "the commit on the promoted primary hangs"
    rows = pg_pair.standby.sql("SELECT id FROM seen_feed ORDER BY id", db)
    assert rows == [("after",), ("before",)]


@pytest.mark.servers
def test_the_collector_service_on_postgres(make_config: Callable[..., Config],
                                           publisher: Publisher, pg_database: str) -> None:
    """The whole service with [state] url: a transaction from the feed, its invite, a rating in,
    linked, in InfluxDB; the state in PostgreSQL; the drained outbox pruned there."""
    from collector.service import Collector

    cfg = make_config(state__url=pg_database)
    conn = connect(cfg.state_target)
    dev_row = Registry(conn).add("kp1", "h1", "w1", now_ms())
    conn.close()
    dev = Dev(cfg.mqtt.topic_prefix, "kp1", dev_row.key, "h1", "w1")
    c = Collector(cfg)
    c.start()
    try:
        wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
        time.sleep(0.3)  # subscriptions granted
        publisher.subscribe(dev.topic("cmd"))
        publisher.publish(feed(cfg.mqtt.topic_prefix),
                          feed_bytes(txn_msg("BJ-0001", completed=now_ms())))
        invite = wait_for(lambda: [m for m in publisher.received
                                   if m.topic == dev.topic("cmd")], what="invite")[0]
        assert json.loads(invite.payload)["txn"] == "BJ-0001"
        publisher.publish(*dev.rating(5, "BJ-0001", ts=now_ms()))
        rows = wait_for(lambda: query(cfg, 'SELECT * FROM "rating"'), what="rating in InfluxDB")
        assert [(r["link"], r["txn"], r["level"]) for r in rows] == [("linked", "BJ-0001", "5")]
        state = psycopg.connect(pg_database, autocommit=True)
        assert state.execute("SELECT state, txn, level FROM rating").fetchall() == [
            ("linked", "BJ-0001", 5)]
        assert state.execute("SELECT state FROM txn").fetchall() == [("rated",)]
        # the drainer's progress lets the collector delete what InfluxDB has
        wait_for(lambda: state.execute("SELECT count(*) FROM influx_outbox").fetchone() == (0,),
                 timeout=60, what="outbox pruned")
        # Every connection of the collector and its drainer is cut: they connect again on their
        # next statement, and the next transaction and rating go the whole way.
        db = pg_database.rsplit("/", 1)[1]
        cut = state.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = %s AND pid <> pg_backend_pid()", (db,)).fetchall()
        assert len(cut) >= 2  # the ingest worker's and the drainer's at least
        publisher.publish(feed(cfg.mqtt.topic_prefix),
                          feed_bytes(txn_msg("BJ-0002", completed=now_ms())))
        wait_for(lambda: [m for m in publisher.received if m.topic == dev.topic("cmd")
                          and json.loads(m.payload).get("txn") == "BJ-0002"], what="invite 2")
        publisher.publish(*dev.rating(4, "BJ-0002", ts=now_ms()))
        rows = wait_for(lambda: [r for r in query(cfg, 'SELECT * FROM "rating"')
                                 if r["txn"] == "BJ-0002"], timeout=60, what="rating 2 in InfluxDB")
        assert [(r["link"], r["level"]) for r in rows] == [("linked", "4")]
        assert state.execute("SELECT count(*) FROM rating WHERE state = 'linked'").fetchone() == (
            2,)
        state.close()
        # health()'s own connection (the outbox depth) learns of the cut on its first use after
        # it, and is connected again on the next
        with contextlib.suppress(StateUnavailable):
            c.health()
        assert c.health()["mqtt_connected"] and c.health()["outbox_depth"] >= 0
    finally:
        c.stop()


def test_the_detector_and_the_monthly_figures_agree_on_both_backends(
        tmp_path: Path, pg_database: str) -> None:
    """A simulated business day (on SQLite, as the simulator runs), copied row for row into
    PostgreSQL: the integrity detector's verdicts, its stored flags and the monthly report's
    figures are the same on both."""
    import random
    from datetime import timedelta, timezone

    from collector.detection import run_detection
    from collector.manager.report import month_figures
    from collector.sim.hall import VirtualHall
    from collector.sim.profiles import draw_hall

    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path / "state"))
    plans = draw_hall(random.Random(11), "h1", 6, ["fill_in_burst"], start_day=0)
    hall = VirtualHall(cfg, plans, hall="h1", seed=5)
    hall.schedule_day(0)
    hall.run_until(hall.day_bounds(0)[1] - 1)
    close = hall.local_ms(hall.business_day(0), "19:00")
    lite = hall.conn
    pg = connect(pg_database)
    tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                         "AND name NOT IN ('meta', 'sqlite_sequence')")]
    copied = 0
    with transaction(pg):
        for table in tables:
            rows = lite.execute(f"SELECT * FROM {table}").fetchall()
            if rows:
                marks = ",".join("?" * len(rows[0]))
                pg.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
                copied += len(rows)
        # explicit ids leave the identity sequences behind: move them past the copied rows
        for table, column in pg.execute("SELECT table_name, column_name FROM "
                                        "information_schema.columns WHERE is_identity = 'YES'"):
            pg.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                       f"(SELECT coalesce(max({column}), 0) + 1 FROM {table}), false)")
    assert copied > 1000 and pg.execute("SELECT count(*) FROM rating").fetchone()[0] > 50
    on_sqlite = run_detection(lite, hall.cfg, close)
    on_pg = run_detection(pg, hall.cfg, close)
    assert any(v.flagged for v in on_sqlite)  # not two empty runs
    assert on_pg == on_sqlite
    flags = "SELECT * FROM integrity_flag ORDER BY hall, window, staff, period, day"
    assert pg.execute(flags).fetchall() == lite.execute(flags).fetchall()
    day = hall.business_day(0)
    month = f"{day.year:04d}-{day.month:02d}"
    tz = timezone(timedelta(hours=8))
    assert month_figures(pg, "h1", month, tz) == month_figures(lite, "h1", month, tz)
    pg.close()


def test_the_registry_on_both_backends(state_target: str) -> None:
    from collector.registry import Registry, RegistryError

    conn = connect(state_target)
    reg = Registry(conn)
    version = "SELECT value FROM meta WHERE key = 'registry_version'"
    v0 = int(conn.execute(version).fetchone()[0])
    a = reg.add("kp-b", "h1", "w2", T0)
    reg.add("kp-a", "h1", "w2", T0, key=bytes(range(32)))
    reg.add("KP-c", "h1", "w1", T0)
    assert [d.device for d in reg.list()] == ["KP-c", "kp-a", "kp-b"]  # byte order
    assert [d.device for d in reg.active_at("h1", "w2")] == ["kp-a", "kp-b"]
    assert reg.get("kp-a") is not None and reg.get("kp-a").key == bytes(range(32))  # type: ignore[union-attr]
    rotated = reg.rotate_key("kp-b")
    assert rotated.key != a.key and len(rotated.key) == 32
    assert reg.revoke("kp-b", T0 + 1).state == "revoked"
    with pytest.raises(RegistryError, match="no new key"):
        reg.rotate_key("kp-b")
    reg.invalidate()
    assert [d.device for d in reg.active_at("h1", "w2")] == ["kp-a"]
    assert reg.remove("KP-c").device == "KP-c" and reg.get("KP-c") is None
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("kp-a", "h1", "w1", T0)
    # every change bumped registry_version (3 adds, a rotation, a revocation, a removal)
    assert int(conn.execute(version).fetchone()[0]) == v0 + 6
    conn.close()


def test_a_pipelined_transaction_reports_errors_at_reads_and_commits_nothing_of_them(
        pg_server: PostgresServer, pg_database: str) -> None:
    """transaction(pipelined=True): a write's error comes at the next read (or before COMMIT)
    as the same sqlite3 class, the transaction is rolled back, the connection goes on."""
    conn = connect(pg_database)
    dup = "INSERT INTO seen_feed (hall, id) VALUES ('h1', 'x'), ('h1', 'x')"
    with pytest.raises(sqlite3.IntegrityError):
        with transaction(conn, pipelined=True):
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'a')")
            conn.execute(dup)  # not waited for
            conn.execute("SELECT count(*) FROM seen_feed").fetchone()
    with pytest.raises(sqlite3.IntegrityError):
        with transaction(conn, pipelined=True):
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'b')")
            conn.execute(dup)  # its error comes at COMMIT, which is then not sent
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM seen_feed").fetchone() == (0,)
    # results read in the transaction are those of its statements, in order
    with transaction(conn, pipelined=True):
        first = conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'c') "
                             "ON CONFLICT DO NOTHING")
        again = conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'c') "
                             "ON CONFLICT DO NOTHING")
        count = conn.execute("SELECT count(*) FROM seen_feed")
        assert (again.rowcount, first.rowcount, count.fetchone()) == (0, 1, (1,))
        # a savepoint waits at RELEASE: its own error surfaces there, inside it
        conn.execute("SAVEPOINT msg")
        conn.execute(dup)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("RELEASE msg")
        conn.execute("ROLLBACK TO msg")
        conn.execute("RELEASE msg")
        conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'd')")
    assert conn.execute("SELECT id FROM seen_feed ORDER BY id").fetchall() == [("c",), ("d",)]
    # a lost connection in a pipelined transaction: StateUnavailable, nothing of it committed,
    # and the next transaction connects again
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(StateUnavailable):
        with transaction(conn, pipelined=True):
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'e')")
            pg_server.sql(f"SELECT pg_terminate_backend({int(pid)})")
            conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'f')")
            conn.execute("SELECT 1").fetchone()
    with transaction(conn, pipelined=True):
        conn.execute("INSERT INTO seen_feed (hall, id) VALUES ('h1', 'g')")
    assert conn.execute("SELECT id FROM seen_feed ORDER BY id").fetchall() == [
        ("c",), ("d",), ("g",)]
    conn.close()
