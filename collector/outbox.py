"""The two outboxes of the state database, and the only module that reads or writes them.

* `influx_outbox`: points for InfluxDB. The ingest path and the detector add them inside the
  transaction that decided them; the drainer process reads them in id order (`read_points`) and
  records how far InfluxDB confirmed in its own database; the collector then deletes what was
  confirmed (`prune_points`). A row holds a `PointSpec` JSON (spec = 1, rendered to line protocol
  by the drainer, collector/points.py) or, for rows written by the detector and by older
  versions, line protocol (spec = 0). `read_points` returns both as line protocol.
* `cmd_outbox`: signed commands for devices, with an expiry. Ingest adds them (`add_command`)
  in the transaction that decided them; the collector's worker publishes them in id order
  (`commands_after`) and deletes them once the broker acknowledged them or they expired
  (`delete_commands`).

Functions take the connection and never open transactions of their own: the caller's
transaction (collector.db.transaction) decides what commits together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from collector.db import drained_cursors
from collector.points import render

__all__ = [
    "add_command",
    "add_lines",
    "add_points",
    "commands_after",
    "delete_commands",
    "discard_points",
    "next_cseq",
    "points_depth",
    "prune_points",
    "read_points",
    "slowest_cursor",
]


def add_points(conn: sqlite3.Connection, specs: Iterable[str]) -> None:
    """Queue points built with `points.PointSpec` (their JSON, rendered by the drainer)."""
    conn.executemany("INSERT INTO influx_outbox (line, spec) VALUES (?, 1)", [(x,) for x in specs])


def add_lines(conn: sqlite3.Connection, lines: Iterable[str]) -> None:
    """Queue points already in line protocol (the detector's integrity points)."""
    conn.executemany("INSERT INTO influx_outbox (line, spec) VALUES (?, 0)", [(x,) for x in lines])


def read_points(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` points after outbox id `after`, in order, as (id, line protocol)."""
    rows = conn.execute(
        "SELECT id, line, spec FROM influx_outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    ).fetchall()
    return [(i, render(line) if spec else line) for i, line, spec in rows]


def slowest_cursor(state: sqlite3.Connection, drained: sqlite3.Connection,
                   targets: Sequence[str] = ("main",)) -> int:
    """The outbox id every one of `targets` has confirmed (a target without progress: 0).
    Progress of targets not listed (removed from the configuration) holds nothing back."""
    cursors = drained_cursors(state, drained)
    return min((cursors.get(t, 0) for t in targets), default=0)


def points_depth(state: sqlite3.Connection, drained: sqlite3.Connection,
                 targets: Sequence[str] = ("main",)) -> int:
    """Points in the outbox that some target of `targets` has not confirmed yet."""
    row = state.execute("SELECT count(*) FROM influx_outbox WHERE id > ?",
                        (slowest_cursor(state, drained, targets),)).fetchone()
    return int(row[0])


def prune_points(state: sqlite3.Connection, drained: sqlite3.Connection,
                 targets: Sequence[str] = ("main",)) -> int:
    """Delete the points every target has confirmed (the collector's side of the drainers)."""
    up_to = slowest_cursor(state, drained, targets)
    if not up_to:
        return 0
    return state.execute("DELETE FROM influx_outbox WHERE id <= ?", (up_to,)).rowcount


def next_cseq(conn: sqlite3.Connection, device: str) -> int:
    """The next command counter of `device` (docs/protocol.md §5), persisted: one statement, so
    two processes (the collector, `evalterm device update`) never hand out the same one."""
    # fetchall: a RETURNING statement read only up to its first row is still running, and in
    # autocommit mode its write transaction (the database's write lock) stays open until then.
    rows = conn.execute(
        "INSERT INTO cmd_seq (device, cseq) VALUES (?, 1) "
        "ON CONFLICT (device) DO UPDATE SET cseq = cmd_seq.cseq + 1 RETURNING cseq",
        (device,),
    ).fetchall()
    return int(rows[0][0])


def add_command(conn: sqlite3.Connection, topic: str, payload: bytes, expires_ms: int) -> None:
    conn.execute("INSERT INTO cmd_outbox (topic, payload, expires_ms) VALUES (?, ?, ?)",
                 (topic, payload, expires_ms))


def commands_after(conn: sqlite3.Connection, after: int) -> list[tuple[int, str, bytes, int]]:
    """Queued commands after id `after`, in order: (id, topic, payload, expires_ms)."""
    rows = conn.execute(
        "SELECT id, topic, payload, expires_ms FROM cmd_outbox WHERE id > ? ORDER BY id", (after,)
    ).fetchall()
    return [(i, t, bytes(p), e) for i, t, p, e in rows]


def delete_commands(conn: sqlite3.Connection, ids: Iterable[int]) -> int:
    """Forget commands the broker acknowledged (or that expired)."""
    return conn.executemany("DELETE FROM cmd_outbox WHERE id=?", [(i,) for i in ids]).rowcount


def discard_points(conn: sqlite3.Connection) -> int:
    """Drop every queued point (simulations that run no InfluxDB: points only pile up there)."""
    return conn.execute("DELETE FROM influx_outbox").rowcount
