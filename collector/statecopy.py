"""`evalterm state copy`: a hall's SQLite state database into a new, empty PostgreSQL database.

The collector must be stopped: the copy refuses a state.db that another process has open
(collector/backup.py `db_in_use`), and holds SQLite's write lock while it reads, so a collector
started meanwhile writes nothing the copy would miss. The source is opened with
collector.db.connect, which upgrades an older schema first, as every evalterm command does.

In one PostgreSQL transaction: the current schema (collector/db.py `current_schema_statements`,
the same statements `connect` runs), every table's rows by COPY, in the order SQLite created the
tables (a referenced table before the one referring to it) and `meta` last (so the registry
triggers bump nothing: registry_version, schema_version and the instance arrive as they were),
then each identity counter set to the highest id SQLite ever handed out (`sqlite_sequence`, rows
deleted since included), so new ids continue after the copied ones. The drainer's drained.db
then stays valid: it belongs to the same instance, and its cursor (`id > cursor`) points into the
same ids (collector/db.py `drained_cursors`, `outbox_high_water`). Before the COMMIT the row
count of every table and the outbox's high-water mark are compared on both sides.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import cast

import psycopg

from collector.backup import db_in_use
from collector.config import Config, state_url_problem
from collector.db import connect, current_schema_statements, outbox_high_water, transaction
from collector.errors import InputFileError, UsageError
from collector.pgadmin import user_relations
from collector.pgstate import PgConnection, open_pg, redacted_url

__all__ = ["copy_state"]

_BATCH = 5000


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_tables(lite: sqlite3.Connection) -> list[str]:
    return [r[0] for r in lite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\' ORDER BY rowid")]


def _columns_sqlite(lite: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in lite.execute(f"PRAGMA table_info({_q(table)})")]


def _columns_pg(pg: PgConnection, table: str) -> list[str]:
    return [r[0] for r in pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]


def _count(conn: sqlite3.Connection | PgConnection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()[0])  # noqa: S608


def _copy_table(lite: sqlite3.Connection, pg: PgConnection, table: str, cols: list[str],
                src: Path) -> None:
    names = ", ".join(_q(c) for c in cols)
    rows = lite.execute(f"SELECT {names} FROM {_q(table)}")  # noqa: S608
    try:
        with pg.raw.cursor() as cur, cur.copy(
                f"COPY {_q(table)} ({names}) FROM STDIN") as copy:
            while batch := rows.fetchmany(_BATCH):
                for row in batch:
                    copy.write_row(row)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputFileError(f"{src}: table {table} cannot be copied into PostgreSQL ({first}); "
                             "nothing was copied") from None


def _advance_identities(lite: sqlite3.Connection, pg: PgConnection) -> None:
    handed_out = {str(name): int(seq) for name, seq in
                  lite.execute("SELECT name, seq FROM sqlite_sequence")}
    for table, column in pg.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_identity = 'YES'").fetchall():
        top = int(pg.execute(f"SELECT coalesce(max({_q(column)}), 0) "  # noqa: S608
                             f"FROM {_q(table)}").fetchone()[0])
        top = max(top, handed_out.get(table, 0))
        if top > 0:  # the next id is top + 1; untouched: 1, as in SQLite
            pg.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?, true)",
                       (_q(table), column, top))


def copy_state(cfg: Config, url: str, say: Callable[[str], None] = lambda _: None
               ) -> dict[str, int]:
    """Copy the SQLite state database of `cfg` into the empty PostgreSQL database `url` (module
    docstring). Returns the row count of every table."""
    problem = state_url_problem(url, "the target URL")
    if problem:
        raise UsageError(problem)
    src = cfg.state_db
    if not src.is_file():
        raise UsageError(f"no state database at {src}: check [collector] data_dir (-c "
                         "collector.toml)")
    if db_in_use(src):
        raise UsageError(f"{src} is open by a running process (the collector or its drainer): "
                         "stop it first (systemctl stop evalterm-collector) and run state copy "
                         "again")
    where = redacted_url(url)
    pg = open_pg(url)
    try:
        n = user_relations(pg)
        if n:
            raise UsageError(f"the PostgreSQL database {where} is not empty ({n} tables, views "
                             "or sequences): copy into a new empty database (createdb, "
                             "docs/storage.md)")
        lite = connect(src)  # upgrades an older schema first
        try:
            lite.execute("BEGIN IMMEDIATE")  # held to the end: nobody writes meanwhile
            try:
                counts = _copy(lite, pg, src)
            finally:
                lite.execute("ROLLBACK")
        finally:
            lite.close()
    finally:
        pg.close()
    say(f"copied into {where}")
    return counts


def _copy(lite: sqlite3.Connection, pg: PgConnection, src: Path) -> dict[str, int]:
    tables = _sqlite_tables(lite)
    with transaction(cast(sqlite3.Connection, pg)):
        for sql in current_schema_statements(cast(sqlite3.Connection, pg)):
            pg.execute(sql)
        made = {r[0] for r in pg.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE'")}
        if set(tables) != made:
            raise InputFileError(
                f"{src}: its tables differ from the schema's (only in it: "
                f"{sorted(set(tables) - made)}, missing: {sorted(made - set(tables))}): "
                "not a state database of this evalterm")
        counts: dict[str, int] = {}
        for table in [t for t in tables if t != "meta"] + ["meta"]:
            cols = _columns_sqlite(lite, table)
            if sorted(cols) != sorted(_columns_pg(pg, table)):
                raise InputFileError(f"{src}: table {table} has other columns than the "
                                     "schema's: not a state database of this evalterm")
            _copy_table(lite, pg, table, cols, src)
            counts[table] = _count(lite, table)
        _advance_identities(lite, pg)
        copied = {t: _count(pg, t) for t in counts}
        if copied != counts:
            raise RuntimeError(f"copied row counts {copied} differ from the source's {counts}")
        pg_top = outbox_high_water(cast(sqlite3.Connection, pg))
        if pg_top != outbox_high_water(lite):
            raise RuntimeError(f"influx_outbox high water {pg_top} differs from the source's "
                               f"{outbox_high_water(lite)}")
    return counts
