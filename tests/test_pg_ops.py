"""The IT staff's side of the state database in PostgreSQL: `evalterm backup`/`restore` with
[state] url (pg_dump/pg_restore), `evalterm state copy` from a hall's SQLite state database, and
the password kept out of the output and the process list (real PostgreSQL, Mosquitto, InfluxDB
and collector: tests/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import Dev, PostgresServer, Publisher, feed, feed_bytes, query, txn_msg, wait_for

from collector.cli import main
from collector.clock import now_ms
from collector.config import Config, load_config
from collector.db import connect, connect_drained, drained_cursors, drained_path
from collector.errors import InputFileError, ServiceUnavailable
from collector.pgadmin import find_tool, user_relations
from collector.pgstate import open_pg
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import InfluxServer
from collector.statecopy import copy_state

ROOT = Path(__file__).resolve().parents[1]
N = 12


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _out, err = _cli(capsys, *argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("evalterm: error: "), err
    return err


def _file(cfg: Config, tmp_path: Path, name: str = "collector.toml") -> str:
    path = tmp_path / name
    path.write_text(cfg.to_toml(), "utf-8")
    return str(path)


def _ratings(target: str | Path) -> set[str]:
    conn = connect(target)
    try:
        return {r[0] for r in conn.execute("SELECT rating_id FROM rating")}
    finally:
        conn.close()


def _influx_ratings(cfg: Config) -> set[str]:
    return {r["rating_id"] for r in query(cfg, 'SELECT "rating_id", "value" FROM "rating"')}


def _rate(cfg: Config, publisher: Publisher, dev: Dev, n: int, first: int = 0) -> None:
    """`n` transactions from the feed and their ratings, through the running collector."""
    t = now_ms()
    for i in range(first, first + n):
        publisher.publish(feed(cfg.mqtt.topic_prefix), feed_bytes(txn_msg(f"T{i}", completed=t)))
    time.sleep(0.5)
    for i in range(first, first + n):
        publisher.publish(*dev.rating(1 + i % 5, f"T{i}", ts=now_ms()))


def _start(cfg: Config) -> Collector:
    c = Collector(cfg)
    c.start()
    wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
    time.sleep(0.3)
    return c


def _device(cfg: Config) -> Dev:
    conn = connect(cfg.state_target)
    row = Registry(conn).add("kp1", "h1", "w1", now_ms())
    conn.close()
    return Dev(cfg.mqtt.topic_prefix, "kp1", row.key, "h1", "w1")


def _counts(conn: Any, tables: list[str]) -> dict[str, int]:
    return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}


def _sqlite_tables(db: Path) -> list[str]:
    c = sqlite3.connect(db)
    try:
        return [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name <> 'sqlite_sequence'")]
    finally:
        c.close()


@pytest.mark.servers
def test_state_copy_moves_a_hall_from_sqlite_to_postgres(
        make_config: Callable[..., Config], publisher: Publisher, pg_server: PostgresServer,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(linking__grace_s=0)
    conf = _file(cfg, tmp_path)
    dev = _device(cfg)
    c = _start(cfg)
    try:
        _rate(cfg, publisher, dev, N)
        wait_for(lambda: len(_influx_ratings(cfg)) == N, what=f"{N} ratings in InfluxDB")
        # the drainer's progress lets the collector delete what InfluxDB has: the outbox's ids
        # then start above 1, and drained.db holds a cursor into them
        wait_for(lambda: c.health()["outbox_depth"] == 0, timeout=60, what="outbox drained")
        url = pg_server.create_database()
        # the running collector holds state.db: refused
        err = _one_line_error(capsys, "-c", conf, "state", "copy", url)
        assert "stop it first" in err
    finally:
        c.stop()
    state = cfg.state_db
    lite = sqlite3.connect(state)
    tables = _sqlite_tables(state)
    before = _counts(lite, tables)
    top = lite.execute("SELECT seq FROM sqlite_sequence WHERE name = 'influx_outbox'").fetchone()
    lite.close()
    assert before["rating"] == N and before["influx_outbox"] == 0 and top[0] > N
    drained = connect_drained(drained_path(state))
    cursors = drained_cursors(connect(state), drained)
    assert cursors["main"] == top[0]

    # a password in the URL is refused, and not repeated
    err = _one_line_error(capsys, "-c", conf, "state", "copy",
                          url.replace("postgres@", "postgres:Hunter2x@"))
    assert "holds a password" in err and "Hunter2x" not in err

    code, out, err = _cli(capsys, "-c", conf, "state", "copy", url)
    assert code == 0, err
    for table in ("rating", "txn", "device", "seen_msg", "influx_outbox", "meta"):
        assert any(line.split()[:2] == [table, str(before[table])] for line in out.splitlines())
    pg = connect(url)
    assert _counts(pg, tables) == before
    assert _ratings(url) == _ratings(state)
    assert pg.execute("SELECT key, value FROM meta ORDER BY key").fetchall() == (
        sqlite3.connect(state).execute("SELECT key, value FROM meta ORDER BY key").fetchall())
    # the same instance and the same outbox ids: the drainer's cursor stays valid in PostgreSQL
    assert drained_cursors(pg, drained) == cursors
    drained.close()
    pg.close()

    # a second copy into the now non-empty database is refused
    err = _one_line_error(capsys, "-c", conf, "state", "copy", url)
    assert "not empty" in err

    # the collector runs on the copy: the next rating goes the whole way, with the next ids
    moved = cfg.with_overrides(state__url=url)
    c = _start(moved)
    try:
        _rate(moved, publisher, dev, 1, first=N)
        wait_for(lambda: len(_influx_ratings(moved)) == N + 1, timeout=60,
                 what="the new rating in InfluxDB")
        raw = psycopg.connect(url, autocommit=True)
        assert raw.execute("SELECT count(*) FROM rating WHERE state = 'linked'").fetchone() == (
            N + 1,)
        seq = raw.execute("SELECT last_value FROM pg_sequences WHERE sequencename LIKE "
                          "'influx_outbox%'").fetchone()[0]
        assert seq > top[0]  # new outbox rows continued after the copied ids
        raw.close()
    finally:
        c.stop()
    # InfluxDB holds every rating once
    assert len(query(moved, 'SELECT "value" FROM "rating"')) == N + 1


def _process_ended(pg_server: PostgresServer, url: str) -> None:
    """What the end of a stopped collector's process does to its sessions: the in-process
    Collector's stop() leaves its state connections to the garbage collector."""
    pg_server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                  f"'{url.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()")


def _instance(url: str) -> str:
    with psycopg.connect(url) as raw:
        return str(raw.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0])


@pytest.mark.servers
def test_backup_wipe_restore_with_the_state_in_postgres(
        make_config: Callable[..., Config], influx: InfluxServer, publisher: Publisher,
        pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = pg_server.create_database()
    cfg = make_config(state__url=url, linking__grace_s=0,
                      influx__backup_address=influx.backup_address)
    conf = _file(cfg, tmp_path)
    dev = _device(cfg)
    c = _start(cfg)
    try:
        _rate(cfg, publisher, dev, N)
        wait_for(lambda: len(_influx_ratings(cfg)) == N, what=f"{N} ratings in InfluxDB")
        before = _ratings(url)
        assert len(before) == N
        # while the collector runs: one consistent snapshot
        code, out, err = _cli(capsys, "-c", conf, "backup", str(tmp_path / "bk"))
        assert code == 0, err
        assert f"{N} ratings" in out and "InfluxDB database" in out
        manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
        assert manifest["format_version"] == 2
        assert manifest["state"]["backend"] == "postgresql"
        assert manifest["state"]["counts"]["rating"] == N
        assert "state.pgdump" in manifest["files"] and "state.db" not in manifest["files"]
        assert any(name.startswith("influx/") for name in manifest["files"])
        assert (tmp_path / "bk" / "state.pgdump").stat().st_mode & 0o077 == 0
        # the running collector's database is not restored over
        err = _one_line_error(capsys, "-c", conf, "restore", str(tmp_path / "bk"))
        assert "in use by" in err and "stop it first" in err
    finally:
        c.stop()
    _process_ended(pg_server, url)
    instance = _instance(url)
    # stopped, but the database is not empty: only when told so
    err = _one_line_error(capsys, "-c", conf, "restore", "--no-influx", str(tmp_path / "bk"))
    assert "not empty" in err and "--replace" in err
    # --live is SQLite's
    err = _one_line_error(capsys, "-c", conf, "restore", "--live", str(tmp_path / "bk"))
    assert "--live" in err
    # a damaged dump is refused before anything changes
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "bk", bad)
    with (bad / "state.pgdump").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    err = _one_line_error(capsys, "-c", conf, "restore", "--no-influx", str(bad))
    assert "do not match the manifest" in err
    # a PostgreSQL backup into an SQLite configuration, an SQLite one into PostgreSQL: refused
    lite_conf = _file(cfg.with_overrides(state__url=""), tmp_path, "lite.toml")
    err = _one_line_error(capsys, "-c", lite_conf, "restore", "--no-influx", str(tmp_path / "bk"))
    assert "[state] url is empty" in err

    # Lose the database and the data folder (drained.db).
    db = url.rsplit("/", 1)[1]
    pg_server.sql(f"DROP DATABASE {db}")
    pg_server.sql(f"CREATE DATABASE {db}")
    shutil.rmtree(cfg.collector.data_dir)
    code, out, err = _cli(capsys, "-c", conf, "restore", "--no-influx", str(tmp_path / "bk"))
    assert code == 0, err
    assert "state database restored" in err and "start the collector" in out
    assert _ratings(url) == before
    assert _instance(url) == instance

    # --replace restores over what is there, and keeps that first
    code, out, err = _cli(capsys, "-c", conf, "restore", "--replace", str(tmp_path / "bk"))
    assert code == 0, err
    kept = list(Path(cfg.collector.data_dir).glob("state.pgdump.pre-restore-*"))
    assert len(kept) == 1 and kept[0].stat().st_size > 0
    assert _ratings(url) == before

    # the collector starts on the restored database, writes its outbox again, takes a rating
    c = _start(cfg)
    try:
        wait_for(lambda: c.health()["outbox_depth"] == 0, timeout=60, what="outbox rewritten")
        _rate(cfg, publisher, dev, 1, first=N)
        wait_for(lambda: len(_ratings(url)) == N + 1, what="the next rating stored")
        wait_for(lambda: len(_influx_ratings(cfg)) == N + 1, timeout=60,
                 what="the next rating in InfluxDB")
    finally:
        c.stop()


def _scram_user(pg_server: PostgresServer, user: str, password: str) -> str:
    """A role that must give its password (scram), owning a new database; that database's URL."""
    hba = pg_server.data / "pg_hba.conf"
    line = f"host all {user} 127.0.0.1/32 scram-sha-256\n"
    text = hba.read_text()
    if line not in text:
        hba.write_text(line + text)
        pg_server.sql("SELECT pg_reload_conf()")
    if not pg_server.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"):
        pg_server.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    url = pg_server.create_database()
    db = url.rsplit("/", 1)[1]
    pg_server.sql(f"ALTER DATABASE {db} OWNER TO {user}")
    return f"postgresql://{user}@127.0.0.1:{pg_server.port}/{db}"


def _cmdlines() -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"))
            except OSError:
                pass
    return out


def test_the_password_stays_out_of_argv_and_output(
        pg_server: PostgresServer, tmp_path: Path) -> None:
    password = "Pw-7fj2Kq-secret"
    url = _scram_user(pg_server, "evpw", password)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGPASSWORD": password,
           "EVALTERM_STATE__URL": url, "EVALTERM_COLLECTOR__DATA_DIR": str(tmp_path / "data")}
    env.pop("PGPASSFILE", None)
    with pytest.raises(ServiceUnavailable):  # the password is needed
        connect(url)
    os.environ["PGPASSWORD"] = password
    try:
        conn = connect(url)
        Registry(conn).add("kp1", "h1", "w1", now_ms())
        conn.close()
    finally:
        del os.environ["PGPASSWORD"]
    # pg_dump waits for a lock on seen_feed (the counts do not read it): meanwhile the process
    # list is read
    locker = psycopg.connect(pg_server.url(url.rsplit("/", 1)[1]))
    locker.execute("LOCK TABLE seen_feed IN ACCESS EXCLUSIVE MODE")
    cli = [sys.executable, "-m", "collector.cli"]
    proc = subprocess.Popen([*cli, "backup", "--no-influx", str(tmp_path / "bk")], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dumping = wait_for(lambda: [c for c in _cmdlines() if "pg_dump" in c and url in c],
                           what="pg_dump running")
        assert all(password not in c for c in _cmdlines()), dumping
    finally:
        locker.rollback()
        locker.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert password not in out + err
    manifest = (tmp_path / "bk" / "manifest.json").read_text()
    assert password not in manifest and '"device": 1' in manifest
    # restore into another empty database of that user, then with the wrong password
    url2 = _scram_user(pg_server, "evpw", password)
    env2 = {**env, "EVALTERM_STATE__URL": url2}
    res = subprocess.run([*cli, "restore", "--no-influx", str(tmp_path / "bk")], env=env2,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert password not in res.stdout + res.stderr
    assert "1 devices" in res.stderr
    wrong = {**env2, "PGPASSWORD": "not-it-" + password[::-1]}
    res = subprocess.run([*cli, "backup", "--no-influx", str(tmp_path / "bk2")], env=wrong,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "password authentication failed" in res.stderr
    assert password[::-1] not in res.stderr and "Traceback" not in res.stderr


def test_a_missing_or_too_old_pg_dump_is_one_line_saying_what_to_install() -> None:
    path, major = find_tool("pg_dump", 15)
    assert Path(path).exists() and major >= 15
    with pytest.raises(ServiceUnavailable) as old:
        find_tool("pg_dump", 99)
    assert "older than the PostgreSQL 99" in str(old.value)
    assert "apt-get install postgresql-client-99" in str(old.value)
    with pytest.raises(ServiceUnavailable) as missing:
        find_tool("pg_dump_not_here", 15)
    assert "not installed" in str(missing.value) and "postgresql-client-15" in str(missing.value)
    assert len(str(old.value).splitlines()) == len(str(missing.value).splitlines()) == 1


def test_state_copy_is_one_transaction_and_ids_continue_after_deleted_rows(
        pg_server: PostgresServer, tmp_path: Path) -> None:
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path / "data"))
    lite = connect(cfg.state_db)
    Registry(lite).add("kp1", "h1", "w1", now_ms())
    lite.executemany("INSERT INTO influx_outbox (line) VALUES (?)",
                     [(f"m v={i}",) for i in range(5)])
    lite.execute("DELETE FROM influx_outbox WHERE id <= 4")  # drained and pruned
    # text PostgreSQL cannot hold (NUL): the copy fails as a whole, the target stays empty
    lite.execute("INSERT INTO dead_letter (source, topic, payload, error, at_ms) "
                 "VALUES ('mqtt', 't', x'00', 'bad' || char(0) || 'text', 1)")
    lite.close()
    url = pg_server.create_database()
    with pytest.raises(InputFileError, match="table dead_letter cannot be copied") as bad:
        copy_state(cfg, url)
    assert len(str(bad.value).splitlines()) == 1
    pg = open_pg(url)
    assert user_relations(pg) == 0
    pg.close()
    lite = connect(cfg.state_db)
    lite.execute("DELETE FROM dead_letter")
    lite.close()
    counts = copy_state(cfg, url)
    assert counts["influx_outbox"] == 1 and counts["device"] == 1 and counts["meta"] == 3
    pg = connect(url)
    # the next outbox id follows the highest one SQLite handed out (5), not the highest left
    new = pg.execute("INSERT INTO influx_outbox (line) VALUES ('m v=9') RETURNING id").fetchone()
    assert new == (6,)
    assert pg.execute("SELECT value FROM meta WHERE key = 'registry_version'").fetchone() == ("1",)
    pg.close()
