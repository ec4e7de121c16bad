"""`evalterm backup` / `restore` and InfluxDB retention against a real InfluxDB and a real
collector: ratings stored, backed up while the collector runs, both stores wiped, restored, and
every rating back in the state database and in InfluxDB; the retention policies and continuous
queries exist, and InfluxDB's own continuous queries write the hourly rollups."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Dev, Publisher, feed, feed_bytes, query, txn_msg, wait_for

from collector.cli import main
from collector.clock import now_ms
from collector.config import Config
from collector.db import connect
from collector.influx import influxql
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import InfluxServer, free_port

pytestmark = pytest.mark.servers

N = 24


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """An InfluxDB of this test's (it is wiped), with continuous queries on."""
    server = InfluxServer(tmp_path / "influx", continuous_queries=True).start()
    yield server
    server.stop()


def _config(make_config: Callable[..., Config], influx: InfluxServer, **kw: Any) -> Config:
    return make_config(influx__url=influx.url, influx__backup_address=influx.backup_address,
                       influx__rollup_every_s=1, linking__grace_s=0, **kw)


def _file(cfg: Config, tmp_path: Path) -> str:
    path = tmp_path / "collector.toml"
    path.write_text(cfg.to_toml(), "utf-8")
    return str(path)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _state_ratings(cfg: Config) -> set[str]:
    c = sqlite3.connect(cfg.state_db)
    try:
        return {r[0] for r in c.execute("SELECT rating_id FROM rating")}
    finally:
        c.close()


def _influx_ratings(cfg: Config) -> set[str]:
    return {r["rating_id"] for r in query(cfg, 'SELECT "rating_id", "value" FROM "rating"')}


def _rollup_n(cfg: Config) -> int:
    rows = query(cfg, 'SELECT sum("n") FROM "rollup"."rating_1h"')
    return int(rows[0]["sum"]) if rows else 0


def _store_ratings(cfg: Config, publisher: Publisher) -> Collector:
    conn = connect(cfg.state_db)
    dev = Registry(conn).add("kp1", "h1", "w1", now_ms())
    conn.close()
    d = Dev(cfg.mqtt.topic_prefix, "kp1", dev.key, "h1", "w1")
    c = Collector(cfg)
    c.start()
    wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
    time.sleep(0.3)
    t = now_ms()
    for i in range(N // 2):  # half linked to a transaction, half standalone
        publisher.publish(feed(cfg.mqtt.topic_prefix), feed_bytes(txn_msg(f"T{i}", completed=t)))
    time.sleep(0.5)
    for i in range(N):
        txn = f"T{i}" if i < N // 2 else None
        publisher.publish(*d.rating(1 + i % 5, txn, ts=now_ms()))
    wait_for(lambda: len(_influx_ratings(cfg)) == N, what=f"{N} ratings in InfluxDB")
    wait_for(lambda: len(_state_ratings(cfg)) == N, what=f"{N} ratings in the state database")
    return c


def test_backup_wipe_restore_brings_every_rating_back(
        make_config: Callable[..., Config], own_influx: InfluxServer, publisher: Publisher,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(make_config, own_influx)
    conf = _file(cfg, tmp_path)
    c = _store_ratings(cfg, publisher)
    try:
        # Retention, as the drainer set it up when it created the database.
        rps = {r["name"]: r for r in query(cfg, "SHOW RETENTION POLICIES")}
        assert rps["autogen"]["duration"] == f"{1830 * 24}h0m0s" and rps["autogen"]["default"]
        assert rps["rollup"]["duration"] == "0s"
        cqs = [r["name"] for r in query(cfg, "SHOW CONTINUOUS QUERIES")]
        assert sorted(n.rsplit("_", 1)[0] for n in cqs) == [
            "evalterm_rating_1h", "evalterm_telemetry_1h", "evalterm_transaction_1h"]
        # InfluxDB's continuous query (every second here) writes the hourly rollup.
        wait_for(lambda: _rollup_n(cfg) == N, what="the continuous query's rating rollup")
        before_state, before_influx = _state_ratings(cfg), _influx_ratings(cfg)
        assert before_state == before_influx and len(before_state) == N

        code, out, err = _cli(capsys, "-c", conf, "backup", str(tmp_path / "bk"))
        assert code == 0, err
        assert f"{N} ratings" in out
        manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
        assert manifest["state"]["counts"]["rating"] == N
        assert any(name.startswith("influx/") for name in manifest["files"])

        # A live collector's database is not replaced without --live.
        code, _out, err = _cli(capsys, "-c", conf, "restore", str(tmp_path / "bk"))
        assert code == 2 and len(err.splitlines()) == 1 and "stop it first" in err
    finally:
        c.stop()

    # Lose everything: InfluxDB's disk and the collector's data folder.
    own_influx.wipe()
    own_influx.start()
    shutil.rmtree(cfg.collector.data_dir)
    assert influxql(own_influx.url, "", "SHOW DATABASES")[0].get("values") is None

    code, out, err = _cli(capsys, "-c", conf, "restore", str(tmp_path / "bk"))
    assert code == 0, err
    assert _state_ratings(cfg) == before_state
    assert _influx_ratings(cfg) == before_influx
    assert _rollup_n(cfg) == N  # the rollups came back with the database
    assert not (Path(cfg.collector.data_dir) / "drained.db").exists()

    # The restored collector starts, rewrites its outbox (overwriting), and counts are unchanged.
    c = Collector(cfg)
    c.start()
    try:
        wait_for(lambda: c.health()["outbox_depth"] == 0, what="restored outbox drained")
        assert _influx_ratings(cfg) == before_influx
        assert len(query(cfg, 'SELECT "value" FROM "rating"')) == N
    finally:
        c.stop()


def test_restore_into_an_existing_database_merges_and_the_rollup_job_recomputes(
        make_config: Callable[..., Config], own_influx: InfluxServer, publisher: Publisher,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(make_config, own_influx)
    conf = _file(cfg, tmp_path)
    c = _store_ratings(cfg, publisher)
    try:
        before = _influx_ratings(cfg)
        code, _out, err = _cli(capsys, "-c", conf, "backup", "--dated", "--keep", "1",
                              str(tmp_path / "bks"))
        assert code == 0, err
        time.sleep(1.1)
        code, _out, err = _cli(capsys, "-c", conf, "backup", "--dated", "--keep", "1",
                              str(tmp_path / "bks"))
        assert code == 0, err
        dated = [p for p in (tmp_path / "bks").iterdir()]
        assert len(dated) == 1 and (dated[0] / "manifest.json").is_file()  # --keep 1
        influxql(cfg.influx.url, cfg.influx.database, 'DROP MEASUREMENT "rating"')
        influxql(cfg.influx.url, cfg.influx.database, 'DROP MEASUREMENT "rating_1h"')
        assert _influx_ratings(cfg) == set()
        # InfluxDB only, while the collector runs (the database exists: merged into it).
        code, _out, err = _cli(capsys, "-c", conf, "restore", "--no-state", str(dated[0]))
        assert code == 0, err
        assert "copied into the existing database" in err
        assert _influx_ratings(cfg) == before
        assert "evalterm_restore" not in str(influxql(cfg.influx.url, "", "SHOW DATABASES"))
    finally:
        c.stop()
    # The recomputing job gives the same rollup as the continuous query, and again the same.
    influxql(cfg.influx.url, cfg.influx.database, 'DROP MEASUREMENT "rating_1h"')
    for _ in range(2):
        code, _out, err = _cli(capsys, "-c", conf, "influx", "rollup", "--days", "1")
        assert code == 0, err
        assert _rollup_n(cfg) == N
    rows = query(cfg, 'SELECT sum("bad") AS "bad", sum("n") AS "n" FROM "rollup"."rating_1h"')
    raw = query(cfg, 'SELECT sum("bad") AS "bad", count("value") AS "n" FROM "rating"')
    assert (rows[0]["bad"], rows[0]["n"]) == (raw[0]["bad"], raw[0]["n"])


def test_influx_setup_follows_the_configuration(
        make_config: Callable[..., Config], own_influx: InfluxServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(make_config, own_influx)
    code, out, _ = _cli(capsys, "-c", _file(cfg, tmp_path), "influx", "setup")
    assert code == 0 and "CREATE DATABASE" in out
    code, out, _ = _cli(capsys, "-c", _file(cfg, tmp_path), "influx", "setup")
    assert code == 0 and "already as configured" in out
    changed = cfg.with_overrides(influx__retention_days=3650, influx__rollup_days=7300,
                                 influx__rollup_every_s=60)
    code, out, _ = _cli(capsys, "-c", _file(changed, tmp_path), "influx", "setup")
    assert code == 0
    rps = {r["name"]: r["duration"] for r in query(cfg, "SHOW RETENTION POLICIES")}
    assert rps == {"autogen": f"{3650 * 24}h0m0s", "rollup": f"{7300 * 24}h0m0s"}
    cqs = query(cfg, "SHOW CONTINUOUS QUERIES")
    assert len(cqs) == 3 and all("EVERY 1m" in r["query"] for r in cqs), cqs


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _out, err = _cli(capsys, *argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("evalterm: error: "), err
    return err


def test_backup_and_restore_errors_are_one_line(
        make_config: Callable[..., Config], own_influx: InfluxServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(make_config, own_influx)
    conn = connect(cfg.state_db)
    Registry(conn).add("kp1", "h1", "w1", now_ms())
    conn.close()
    conf = _file(cfg, tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "not empty" in _one_line_error(capsys, "-c", conf, "backup", str(full))
    # The database does not exist yet (no point written): said so.
    assert "no database" in _one_line_error(capsys, "-c", conf, "backup", str(tmp_path / "a"))
    # InfluxDB down; its backup service on a wrong port.
    down = _file(cfg.with_overrides(influx__url=f"http://127.0.0.1:{free_port()}"), tmp_path)
    assert "unreachable" in _one_line_error(capsys, "-c", down, "backup", str(tmp_path / "b"))
    influxql(cfg.influx.url, "", f'CREATE DATABASE "{cfg.influx.database}"')
    rpc = _file(cfg.with_overrides(influx__backup_address=f"127.0.0.1:{free_port()}"), tmp_path)
    err = _one_line_error(capsys, "-c", rpc, "backup", str(tmp_path / "c"))
    assert "backup service" in err and "backup_address" in err
    # A state-only backup, then damaged, then from the future.
    conf = _file(cfg, tmp_path)
    code, _, err = _cli(capsys, "-c", conf, "backup", "--no-influx", str(tmp_path / "ok"))
    assert code == 0, err
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ok", bad)
    with (bad / "state.db").open("r+b") as f:
        f.seek(200)
        f.write(b"\xff")
    assert "do not match the manifest" in _one_line_error(capsys, "-c", conf, "restore",
                                                          "--no-influx", str(bad))
    newer = tmp_path / "newer"
    shutil.copytree(tmp_path / "ok", newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    assert "newer" in _one_line_error(capsys, "-c", conf, "restore", str(newer))
    (newer / "manifest.json").unlink()
    assert "no manifest.json" in _one_line_error(capsys, "-c", conf, "restore", str(newer))
    # A process of another kind holding the database open (as the collector would).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM meta').fetchall()\n"
         "print('open', flush=True); time.sleep(60)", str(cfg.state_db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        err = _one_line_error(capsys, "-c", conf, "restore", "--no-influx", str(tmp_path / "ok"))
        assert "stop it first" in err and "--live" in err
        code, out, err = _cli(capsys, "-c", conf, "restore", "--no-influx", "--live",
                              str(tmp_path / "ok"))
        assert code == 0 and "restart the collector now" in out, err
    finally:
        holder.kill()
        holder.wait()
    code, _out, err = _cli(capsys, "-c", conf, "restore", "--no-influx", str(tmp_path / "ok"))
    assert code == 0, err
    kept = list(Path(cfg.collector.data_dir).glob("state.db.pre-restore-*"))
    assert kept, "the replaced state database is kept"
