"""The detector on a state database filled by the real pipeline (signed messages, linking), and
its integrity points: queued in the outbox, idempotent, and queryable with InfluxQL."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import pytest

from collector.config import Config, load_config
from collector.db import connect
from collector.detection import run_detection
from collector.detection.run import connect_detector
from collector.influx import make_writer
from collector.service import Collector
from collector.sim.hall import VirtualHall
from collector.sim.profiles import draw_hall


def _simulated(tmp_path: Path, cfg: Config | None = None) -> tuple[VirtualHall, str, int]:
    """One business day of a 6-window hall with an end-of-day fill-in at one window."""
    cfg = cfg or load_config(None, env={})
    cfg = cfg.with_overrides(collector__data_dir=str(tmp_path / "state"))
    rng = random.Random(11)
    plans = draw_hall(rng, "h1", 6, ["fill_in_burst"], start_day=0)
    cheat = next(p.window for p in plans if p.profile == "fill_in_burst")
    hall = VirtualHall(cfg, plans, hall="h1", seed=5)
    hall.schedule_day(0)
    hall.run_until(hall.day_bounds(0)[1] - 1)
    return hall, cheat, hall.local_ms(hall.business_day(0), "19:00")


def _outbox(hall: VirtualHall) -> list[str]:
    return [r[0] for r in hall.conn.execute(
        "SELECT line FROM influx_outbox WHERE line LIKE 'integrity%' ORDER BY id")]


def _identity(line: str) -> tuple[str, str]:
    return line.split(" ", 1)[0], line.rsplit(" ", 1)[1]  # series key, timestamp


def test_fill_in_is_flagged_and_honest_windows_are_not(tmp_path):
    hall, cheat, close = _simulated(tmp_path)
    verdicts = run_detection(hall.conn, hall.cfg, close)
    windows = {(v.window, v.period): v for v in verdicts if v.staff is None}
    day = windows[(cheat, "day")]
    assert day.flagged and "burst" in day.strong
    assert any("闭厅后" in r for r in day.reasons_zh)
    honest = [v for (w, _), v in windows.items() if w != cheat]
    assert honest and not any(v.flagged for v in honest)
    # Staff members are judged too: the fill-in happened while nobody was signed on.
    assert any(v.staff is not None for v in verdicts)
    # Every device event and status keeps its message's boot counter (key_counters uses it).
    assert hall.conn.execute("SELECT count(*), count(boot) FROM device_log").fetchone()[1] > 0
    nulls = hall.conn.execute("SELECT count(*) FROM device_log WHERE boot IS NULL").fetchone()
    assert nulls == (0,)


def test_integrity_points_are_queued_and_a_rerun_overwrites_them(tmp_path):
    hall, _, close = _simulated(tmp_path)
    run_detection(hall.conn, hall.cfg, close - 3600_000)
    first = _outbox(hall)
    run_detection(hall.conn, hall.cfg, close)
    second = _outbox(hall)[len(first):]
    assert first and len(first) == len(second)
    # Same series and timestamps: InfluxDB keeps the later values, nothing accumulates.
    assert {_identity(x) for x in first} == {_identity(x) for x in second}
    assert len({_identity(x) for x in second}) == len(second)
    verdict_lines = [x for x in second if x.startswith("integrity_verdict,")]
    assert any(",staff=*," in x for x in verdict_lines)
    assert all("reasons_zh=" in x and "reasons_en=" in x for x in verdict_lines)


def test_run_detection_without_points(tmp_path):
    hall, _, close = _simulated(tmp_path)
    before = hall.conn.execute("SELECT count(*) FROM influx_outbox").fetchone()[0]
    assert run_detection(hall.conn, hall.cfg, close, write_points=False)
    assert hall.conn.execute("SELECT count(*) FROM influx_outbox").fetchone()[0] == before


@pytest.mark.servers
def test_integrity_points_answer_influxql(tmp_path, make_config):
    from tests.helpers import query

    cfg = make_config()
    hall, cheat, close = _simulated(tmp_path, cfg)
    run_detection(hall.conn, hall.cfg, close)
    writer = make_writer(cfg)
    writer.ensure_database()  # type: ignore[attr-defined]
    writer.write(_outbox(hall))
    flagged = query(cfg, 'SELECT "severity", "reasons_zh", "reasons_en", "strong" '
                         'FROM "integrity_verdict" WHERE "staff" = \'*\' AND "flagged" = 1 '
                         'GROUP BY "window", "period"')
    assert {r["window"] for r in flagged} == {cheat}
    assert all(r["severity"] >= 2 and "burst" in r["strong"] for r in flagged)
    assert any("秒内连续" in r["reasons_zh"] and "ratings within" in r["reasons_en"]
               for r in flagged)
    burst = query(cfg, 'SELECT last("value") AS v, last("strength") AS s, last("events") AS e '
                       'FROM "integrity" WHERE "indicator" = \'burst\' AND "staff" = \'*\' '
                       'AND "period" = \'day\' GROUP BY "window"')
    by_window = {r["window"]: r for r in burst}
    assert by_window[cheat]["s"] == "strong" and by_window[cheat]["v"] >= 5
    assert all(r["s"] != "strong" for w, r in by_window.items() if w != cheat)
    # The observations behind the p-value: the burst's ratings, an integer field.
    assert by_window[cheat]["e"] == by_window[cheat]["v"]
    fields = {r["fieldKey"]: r["fieldType"] for r in query(cfg, 'SHOW FIELD KEYS FROM "integrity"')}
    assert fields["events"] == "integer"
    # Deterministic indicators have no p-value, so no events field.
    assert query(cfg, 'SELECT count("events") FROM "integrity" '
                      'WHERE "indicator" = \'key_counters\'') == []


def test_a_full_database_reports_full_not_a_failed_rollback(tmp_path):
    """On SQLITE_FULL SQLite has rolled the transaction back itself: the detector must let that
    error through (an unguarded ROLLBACK raised "no transaction is active" instead)."""
    hall, _, close = _simulated(tmp_path)
    conn = hall.conn
    conn.execute("VACUUM")  # no free pages left to fill
    used = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={used}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        run_detection(conn, hall.cfg, close)
    assert not conn.in_transaction


def test_the_detector_connection_keeps_max_db_mb(tmp_path):
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path / "s"),
                                                    collector__max_db_mb=3)
    conn = connect_detector(cfg)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    assert conn.execute("PRAGMA max_page_count").fetchone()[0] == 3 * 2**20 // page


def _fill_to(path: str, max_mb: int) -> int:
    """Fill the state database up to `max_mb` (through a connection bounded like the collector's)
    so that any write needing a new page fails; the page count it reached."""
    conn = connect(path, max_mb=max_mb)
    conn.execute("CREATE TABLE pad (b BLOB)")
    for size in (65536, 4096, 512, 64):
        try:
            while True:
                conn.execute("INSERT INTO pad VALUES (zeroblob(?))", (size,))
        except sqlite3.OperationalError as e:
            assert "full" in str(e)
    pages: int = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    return pages


def test_the_service_detector_thread_keeps_max_db_mb(tmp_path, caplog):
    """The connection the collector's detector thread (`Collector._detect`) works on is bounded
    by `[collector] max_db_mb`: at the bound its run fails with SQLITE_FULL (logged; ingestion
    goes on) and the file does not grow, where an unbounded connection would write the points."""
    hall, _, close = _simulated(tmp_path)
    hall.conn.execute("VACUUM")  # no free pages: a write past the bound needs new ones
    size = hall.conn.execute("SELECT page_count * page_size FROM pragma_page_count, "
                             "pragma_page_size").fetchone()[0]
    max_mb = size // 2**20 + 1
    cfg = hall.cfg.with_overrides(collector__max_db_mb=max_mb)
    pages = _fill_to(cfg.state_db, max_mb)

    def clock() -> int:  # read once at a run's start: one run of the real detector thread
        collector._stop.set()
        return close

    collector = Collector(cfg, clock=clock)
    with caplog.at_level(logging.ERROR, logger="collector.service"):
        collector._detector.start()
        collector._detector.join(120)
    assert not collector._detector.is_alive()
    collector._db.close()
    failed = [r for r in caplog.records if "integrity detection failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None
    assert "full" in str(failed[0].exc_info[1])
    assert hall.conn.execute("PRAGMA page_count").fetchone()[0] == pages
    assert _outbox(hall) == []
    # The same run on a connection without the bound grows the file past it.
    unbounded = connect(cfg.state_db)
    run_detection(unbounded, cfg, close)
    unbounded.close()
    assert _outbox(hall) != []
    assert hall.conn.execute("PRAGMA page_count").fetchone()[0] > pages
