"""Several InfluxDB targets fed from one outbox ([influx] targets): a cursor per target in
drained.db, pruning below the slowest, the upgrade of a single-cursor drained.db, and two real
InfluxDB servers behind the real collector, one of them stopped and restarted."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Publisher, query, wait_for
from test_outbox import RecordingWriter, _queue

from collector.config import Config, ConfigError, parse_config
from collector.db import connect, connect_drained, connect_reader, drained_path, state_instance
from collector.drainer import DrainerProcess
from collector.influx import OutboxDrainer
from collector.outbox import points_depth, prune_points
from collector.service import Collector
from collector.sim.servers import InfluxServer

# drained.db as versions before targets made it (one row, no user_version).
_V1_DRAINED = """
CREATE TABLE drained (one INTEGER PRIMARY KEY CHECK (one = 1), instance TEXT NOT NULL,
    outbox_id INTEGER NOT NULL);
CREATE TABLE drainer_status (one INTEGER PRIMARY KEY CHECK (one = 1), pid INTEGER,
    healthy INTEGER NOT NULL, last_error TEXT NOT NULL, updated_ms INTEGER NOT NULL,
    points_written INTEGER NOT NULL, errors_unavailable INTEGER NOT NULL,
    errors_internal INTEGER NOT NULL, dead_points INTEGER NOT NULL);
CREATE TABLE influx_dead (id INTEGER PRIMARY KEY, line TEXT NOT NULL, error TEXT NOT NULL,
    at_ms INTEGER NOT NULL);
"""


def _drainer(db: Path, writer: RecordingWriter, target: str, first: str = "a") -> OutboxDrainer:
    return OutboxDrainer(connect_reader(db), connect_drained(drained_path(db), first_target=first),
                         writer, batch_size=100, target=target)


def test_config_targets_inherit_and_are_validated() -> None:
    cfg = parse_config('[influx]\ntargets = "a, b"\nurl = "http://x:8086"\npassword = "pa"\n'
                       '[influx.b]\nurl = "http://y:8086"\n', "t")
    (a, ia), (b, ib) = cfg.influx_targets
    assert (a, ia.url, b, ib.url, ib.password, ib.database) == (
        "a", "http://x:8086", "b", "http://y:8086", "pa", "evalterm")
    # What the drainer of b is handed: the whole config through TOML, then b's settings.
    again = parse_config(cfg.to_toml(), "stdin")
    assert again.influx_targets == cfg.influx_targets
    assert again.for_influx_target("b").influx.url == "http://y:8086"
    assert cfg.redacted()["influx"]["b"]["password"] == "***"
    # The single-target config means what it always meant: one target, "main".
    assert [n for n, _ in parse_config("", "t").influx_targets] == ["main"]
    for text, message in [
        ('[influx]\ntargets = "a,b"\n', "'a' and 'b' are the same InfluxDB database"),
        ('[influx]\ntargets = "a"\n[influx.b]\nurl = "http://y:1"\n', "[influx.b]: not a further"),
        ('[influx]\ntargets = "a,B"\n', "'B' is not a target name"),
        ('[influx]\ntargets = "a,b"\n[influx.b]\nurl = "ftp://y"\n', "[influx.b] url"),
        ('[influx]\ntargets = "a,b"\n[influx.b]\nnope = 1\n', "[influx.b] nope"),
        ('[influx]\ntargets = ""\n', "name at least one target"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(text, "t")
        assert message in str(err.value), (text, str(err.value))


def test_pruning_waits_for_the_slowest_target_and_ignores_removed_ones(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _queue(db, 10)
    fast, slow = RecordingWriter(), RecordingWriter()
    da, db_ = _drainer(db, fast, "a"), _drainer(db, slow, "b")
    state, drained = connect(db), connect_drained(drained_path(db), first_target="a")
    slow.fail = True
    assert da.drain_once() == 10
    with pytest.raises(Exception, match="unreachable"):
        db_.drain_once()
    both = ("a", "b")
    assert points_depth(state, drained, ("a",)) == 0 and points_depth(state, drained, both) == 10
    assert prune_points(state, drained, both) == 0  # b has nothing yet: everything stays
    slow.fail = False
    _queue(db, 5, start=10)
    assert db_.drain_once() == 15 and slow.lines == [f"m v={i}i {i}" for i in range(15)]
    assert prune_points(state, drained, both) == 10  # a has 10, b 15
    assert da.drain_once() == 5 and fast.lines == [f"m v={i}i {i}" for i in range(15)]
    # b removed from the configuration: its cursor (15) is ignored, a alone decides.
    _queue(db, 3, start=15)
    assert da.drain_once() == 3
    assert prune_points(state, drained, ("a",)) == 8
    da.close()
    db_.close()


def test_a_single_cursor_drained_db_becomes_the_first_targets(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "state.db"
    _queue(db, 6)
    state = connect(db)
    old = sqlite3.connect(drained_path(db))
    old.executescript(_V1_DRAINED)
    old.execute("INSERT INTO drained VALUES (1, ?, 4)", (state_instance(state),))
    old.execute("INSERT INTO drainer_status VALUES (1, 1, 1, '', 0, 4, 0, 0, 1)")
    old.execute("INSERT INTO influx_dead VALUES (2, 'bad', 'refused', 0)")
    old.commit()
    old.close()
    caplog.set_level(logging.INFO, logger="collector.db")
    writer = RecordingWriter()
    drainer = _drainer(db, writer, "a", first="a")
    assert any("progress is InfluxDB target 'a'" in r.getMessage() for r in caplog.records)
    drained = connect_drained(drained_path(db), first_target="a")
    assert drained.execute("PRAGMA user_version").fetchone()[0] == 2
    assert {r[0] for r in drained.execute("SELECT name FROM sqlite_master WHERE type='table'")
            } == {"drained_target", "drainer_target_status", "influx_target_dead"}
    assert drained.execute("SELECT target, id FROM influx_target_dead").fetchall() == [("a", 2)]
    assert points_depth(state, drained, ("a",)) == 2
    # Nothing lost, nothing sent again: a goes on after 4.
    assert drainer.drain_once() == 2 and writer.lines == ["m v=4i 4", "m v=5i 5"]
    assert prune_points(state, drained, ("a",)) == 6
    drainer.close()
    # Opening it again (another drainer, the collector) changes nothing.
    again = connect_drained(drained_path(db), first_target="zzz")
    assert again.execute("SELECT target, outbox_id FROM drained_target").fetchall() == [("a", 6)]


def _ratings(cfg: Config) -> list[str]:
    rows = query(cfg, 'SELECT * FROM "rating"')
    return [str(r["rating_id"]) for r in rows if r.get("rating_id") is not None]


@pytest.mark.servers
def test_two_influxdb_targets_each_get_every_rating_once(
        make_config: Callable[..., Config], publisher: Publisher, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from test_collector_servers import register

    a = InfluxServer(tmp_path / "influx-a").start()
    b = InfluxServer(tmp_path / "influx-b").start()
    c: Collector | None = None
    try:
        cfg = make_config(influx__url=a.url, influx__targets="a,b", influx__b__url=b.url,
                          linking__grace_s=0)
        only_a, only_b = cfg.for_influx_target("a"), cfg.for_influx_target("b")
        dev = register(cfg, "kp1")
        c = Collector(cfg)
        c.start()
        wait_for(lambda: c is not None and c.health()["mqtt_connected"], what="connected")
        time.sleep(0.3)
        for i in range(10):
            publisher.publish(*dev.rating(1 + i % 5, None))
        wait_for(lambda: len(_ratings(only_a)) == 10 and len(_ratings(only_b)) == 10,
                 what="the first ten ratings in both")
        wait_for(lambda: c is not None and c.health()["outbox_depth"] == 0, what="pruned")

        caplog.set_level(logging.WARNING, logger="collector.drainer")
        b.stop()
        for i in range(30):
            publisher.publish(*dev.rating(1 + i % 5, None))
        # a keeps receiving while b is away; the outbox keeps b's points.
        wait_for(lambda: len(_ratings(only_a)) == 40, what="a goes on without b")
        health = wait_for(lambda: c is not None and (h := c.health())["influx_targets"]["b"][
            "state"] == "down" and h, what="b reported down")
        assert health["status"] == "degraded" and health["parts"]["influx"]["reason"].startswith(
            "b: ")
        assert health["influx_targets"]["a"] == {"state": "up", "reason": "", "outbox_depth": 0}
        assert health["influx_targets"]["b"]["outbox_depth"] == health["outbox_depth"] >= 30
        state = sqlite3.connect(cfg.state_db)
        assert state.execute("SELECT count(*) FROM influx_outbox").fetchone()[0] >= 30
        state.close()
        reg = c.metrics.registry
        assert reg.get_sample_value("evalterm_outbox_target_depth", {"target": "a"}) == 0
        assert (reg.get_sample_value("evalterm_outbox_target_depth", {"target": "b"}) or 0) >= 30
        wait_for(lambda: any("InfluxDB target 'b' is" in r.getMessage() and
                             r.levelno == logging.WARNING for r in caplog.records),
                 timeout=90, what="the warning naming b")
        assert not any(b.url in r.getMessage() for r in caplog.records)

        b.start()
        wait_for(lambda: len(_ratings(only_b)) == 40, timeout=60, what="b catches up")
        wait_for(lambda: c is not None and c.health()["outbox_depth"] == 0, what="pruned after")
        for target in (only_a, only_b):
            ids = _ratings(target)
            assert len(ids) == len(set(ids)) == 40
        assert _ratings(only_a) == _ratings(only_b)
        state = sqlite3.connect(cfg.state_db)
        wait_for(lambda: state.execute("SELECT count(*) FROM influx_outbox").fetchone()[0] == 0,
                 what="the outbox pruned once both have every point")
        state.close()
        wait_for(lambda: c is not None and c.health()["status"] == "ok", what="healthy again")
    finally:
        if c is not None:
            c.stop()
        a.stop()
        b.stop()


def test_a_removed_targets_cursor_is_ignored_with_a_warning(
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config()
    _queue(cfg.state_db, 4)
    writer = RecordingWriter()
    gone = _drainer(cfg.state_db, writer, "old", first="main")
    assert gone.drain_once() == 4
    gone.close()
    caplog.set_level(logging.WARNING, logger="collector.drainer")
    handle = DrainerProcess(cfg, connect(cfg.state_db))
    assert handle.targets == ("main",) and handle.depth() == 4  # "old" holds nothing
    assert any("target 'old', which is not in [influx] targets" in r.getMessage()
               for r in caplog.records)
