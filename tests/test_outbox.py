"""The InfluxDB outbox between the ingest worker and the drainer process (collector/influx.py):
progress kept in the drainer's own database, rows deleted by the collector only up to what
InfluxDB confirmed, and progress that belongs to another state database ignored."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from helpers import wait_for

from collector.db import connect, connect_drained, connect_reader, drained_path
from collector.influx import OutboxDrainer, WriteFailed, outbox_depth, prune_outbox


class RecordingWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fail = False

    def write(self, lines: list[str]) -> None:
        if self.fail:
            raise WriteFailed("InfluxDB unreachable: test")
        self.lines.extend(lines)

    def ping(self) -> bool:
        return not self.fail

    def close(self) -> None:
        pass


def _queue(state_db: Path | str, n: int, start: int = 0) -> None:
    conn = connect(state_db)
    conn.executemany("INSERT INTO influx_outbox (line) VALUES (?)",
                     [(f"m v={i}i {i}",) for i in range(start, start + n)])
    conn.close()


def _replace_state_db(state_db: Path, backup: Path | None = None) -> None:
    """Remove the state database (with its WAL) and put a backup in its place, or nothing."""
    for p in state_db.parent.glob(state_db.name + "*"):
        p.unlink()
    if backup is not None:
        shutil.copy(backup, state_db)


def _drainer(state_db: Path, writer: RecordingWriter, batch: int = 4) -> OutboxDrainer:
    return OutboxDrainer(connect_reader(state_db), connect_drained(drained_path(state_db)), writer,
                         batch_size=batch)


def test_points_leave_the_outbox_only_after_influxdb_confirmed(tmp_path: Path,
                                                              state_target: str) -> None:
    db = state_target  # SQLite or PostgreSQL; drained.db stays an SQLite file of the drainer's
    drained_db = tmp_path / "drained.db"

    def _drainer(db: str, writer: RecordingWriter) -> OutboxDrainer:
        return OutboxDrainer(connect_reader(db), connect_drained(drained_db), writer, batch_size=4)

    _queue(db, 10)
    writer = RecordingWriter()
    drainer = _drainer(db, writer)
    state, drained = connect(db), connect_drained(drained_db)
    writer.fail = True
    with pytest.raises(WriteFailed):
        drainer.drain_once()
    assert prune_outbox(state, drained) == 0 and outbox_depth(state, drained) == 10
    writer.fail = False
    assert [drainer.drain_once() for _ in range(4)] == [4, 4, 2, 0]
    assert writer.lines == [f"m v={i}i {i}" for i in range(10)]  # in order, each once
    assert outbox_depth(state, drained) == 0
    assert prune_outbox(state, drained) == 10
    assert state.execute("SELECT count(*) FROM influx_outbox").fetchone()[0] == 0
    drainer.close()
    # A new drainer (after a restart) goes on from the recorded progress.
    _queue(db, 3, start=10)
    again = _drainer(db, writer)
    assert again.drain_once() == 3 and writer.lines[-3:] == [f"m v={i}i {i}" for i in (10, 11, 12)]
    again.close()


def test_progress_of_another_state_database_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _queue(db, 6)
    writer = RecordingWriter()
    drainer = _drainer(db, writer, batch=100)
    assert drainer.drain_once() == 6
    drainer.close()
    _replace_state_db(db)  # recreated; drained.db, next to it, stays
    _queue(db, 3)
    state, drained = connect(db), connect_drained(drained_path(db))
    assert prune_outbox(state, drained) == 0  # progress 6 is not about these rows
    assert outbox_depth(state, drained) == 3
    writer.lines.clear()
    fresh = _drainer(db, writer, batch=100)
    assert fresh.drain_once() == 3 and len(writer.lines) == 3
    assert prune_outbox(state, drained) == 3
    fresh.close()


def test_progress_beyond_a_restored_backup_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _queue(db, 2)
    backup = tmp_path / "backup"
    backup.mkdir()
    conn = connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copy(db, backup / "state.db")
    _queue(db, 8, start=2)
    writer = RecordingWriter()
    drainer = _drainer(db, writer, batch=100)
    assert drainer.drain_once() == 10
    drainer.close()
    _replace_state_db(db, backup / "state.db")  # same instance, older: ids 3.. are used again
    _queue(db, 2, start=100)
    state, drained = connect(db), connect_drained(drained_path(db))
    assert prune_outbox(state, drained) == 0
    assert outbox_depth(state, drained) == 4


def test_an_idle_drainer_pings_influxdb_and_reports_an_outage_without_traffic(
        tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _queue(db, 0)
    writer = RecordingWriter()
    stop = threading.Event()

    def run() -> None:  # the drainer's connections belong to its thread
        drainer = OutboxDrainer(connect_reader(db), connect_drained(drained_path(db)), writer,
                                batch_size=4, probe_s=0.05)
        drainer.run(stop, idle_poll_s=0.01)

    status = connect_drained(drained_path(db))

    def healthy() -> tuple[int, str]:
        row = status.execute("SELECT healthy, last_error FROM drainer_target_status").fetchone()
        return (-1, "") if row is None else (row[0], row[1])

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: healthy() == (1, ""), what="healthy at first")
        writer.fail = True  # InfluxDB away, and nothing to write
        wait_for(lambda: healthy()[0] == 0, what="unhealthy from the ping alone")
        assert "ping" in healthy()[1] and writer.lines == []
        writer.fail = False
        wait_for(lambda: healthy() == (1, ""), what="healthy again")
    finally:
        stop.set()
        t.join(10)
