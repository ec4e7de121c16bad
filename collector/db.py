"""The collector's embedded state database (SQLite, WAL).

One file holds everything that must survive a crash together: the device registry, the linking
state, the identities of processed messages (replay protection), and the two outboxes (points for
InfluxDB, commands for devices). One transaction covers all effects of a batch of inbound messages,
and only then are those messages acknowledged to the broker.

The schema has a version (meta 'schema_version'): `connect` upgrades an older database in place
(`_MIGRATIONS`) and refuses a newer one; `connect_reader` (the drainer) accepts only the current.

The same database can live in PostgreSQL instead ([state] url, docs/storage.md): `connect` and
`connect_reader` take a file path or a postgresql:// URL and give a connection with the same API
either way (collector/pgstate.py), so every statement has one text for both.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from collector.pgstate import (
    PgConnection,
    ddl_statements,
    is_url,
    open_pg,
    redacted_url,
    split_script,
)

__all__ = ["SCHEMA_VERSION", "connect", "connect_drained", "connect_reader",
           "current_schema_statements", "drained_cursors", "drained_path", "drained_up_to",
           "is_postgres", "outbox_high_water", "partition_locks_lost", "release_partition_locks",
           "state_instance", "sync", "transaction", "try_lock_partition"]

# What `connect` takes: an SQLite file path (or ":memory:"), or a postgresql:// URL.
StateTarget = str | Path

_LOG = logging.getLogger(__name__)

# The schema's changes since version 1 (_SCHEMA), in order: entry i takes version i + 1 to i + 2.
# A new database is made at version 1 and goes through them too, so a new and an upgraded
# database cannot differ. A schema change is one more entry here, never an edit of _SCHEMA;
# SCHEMA_VERSION follows from the list.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 2: device_log keeps the message's boot counter (NULL in rows stored before).
    ("ALTER TABLE device_log ADD COLUMN boot INTEGER",),
    # 3: the hall manager's work (collector/manager, issue 17): directory, users, follow-up
    # cases, appeals, and the hash-chained audit log (append-only: triggers refuse edits).
    (
        "CREATE TABLE dir_service (code TEXT PRIMARY KEY, name TEXT NOT NULL, department TEXT)",
        "CREATE TABLE dir_window (hall TEXT NOT NULL, window TEXT NOT NULL, name TEXT NOT NULL, "
        "services TEXT NOT NULL DEFAULT '', PRIMARY KEY (hall, window))",
        "CREATE TABLE dir_staff (staff_id TEXT PRIMARY KEY, name TEXT NOT NULL, badge TEXT, "
        "department TEXT, hall TEXT, windows TEXT NOT NULL DEFAULT '')",
        "CREATE TABLE mgr_user (username TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN "
        "('manager', 'lead', 'inspector')), hall TEXT NOT NULL, staff_id TEXT, "
        "pw_hash TEXT NOT NULL, created_ms INTEGER NOT NULL)",
        "CREATE TABLE mgr_case (case_id INTEGER PRIMARY KEY AUTOINCREMENT, hall TEXT NOT NULL, "
        "txn TEXT NOT NULL, window TEXT NOT NULL, staff_id TEXT NOT NULL, service_code TEXT, "
        "level INTEGER NOT NULL, reason TEXT, rating_id TEXT, opened_ms INTEGER NOT NULL, "
        "due TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('open', 'verified', "
        "'rectified', 'called', 'closed', 'voided')), finding TEXT, action TEXT, "
        "reached INTEGER, citizen_view TEXT, closed_ms INTEGER, UNIQUE (hall, txn))",
        "CREATE INDEX mgr_case_due ON mgr_case (hall, state, due)",
        "CREATE TABLE mgr_appeal (appeal_id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "case_id INTEGER NOT NULL REFERENCES mgr_case (case_id), filed_by TEXT NOT NULL, "
        "grounds TEXT NOT NULL, filed_ms INTEGER NOT NULL, state TEXT NOT NULL CHECK (state IN "
        "('pending', 'approved', 'refused')), decided_by TEXT, decided_ms INTEGER, note TEXT)",
        "CREATE TABLE mgr_audit (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, "
        "actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, data TEXT NOT NULL, "
        "prev TEXT NOT NULL, hash TEXT NOT NULL)",
        "CREATE TRIGGER mgr_audit_no_update BEFORE UPDATE ON mgr_audit BEGIN "
        "SELECT RAISE(ABORT, 'mgr_audit is append-only'); END",
        "CREATE TRIGGER mgr_audit_no_delete BEFORE DELETE ON mgr_audit BEGIN "
        "SELECT RAISE(ABORT, 'mgr_audit is append-only'); END",
    ),
    # 4: the integrity detector's flags (severity >= 2) per unit, period and local day, kept
    # for the monthly report (collector/manager/report.py): the final verdict of each day, as
    # in InfluxDB's integrity_verdict (a later run of the day that no longer flags deletes it).
    (
        "CREATE TABLE integrity_flag (hall TEXT NOT NULL, window TEXT NOT NULL, "
        "staff TEXT NOT NULL, period TEXT NOT NULL, day TEXT NOT NULL, "
        "severity INTEGER NOT NULL, reasons_zh TEXT NOT NULL, reasons_en TEXT NOT NULL, "
        "strong TEXT NOT NULL, computed_ms INTEGER NOT NULL, "
        "PRIMARY KEY (hall, window, staff, period, day))",
    ),
)

SCHEMA_VERSION = 1 + len(_MIGRATIONS)

# Version 1, as first released (later versions: _MIGRATIONS).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS device (
    device   TEXT PRIMARY KEY,
    hall     TEXT NOT NULL,
    window   TEXT NOT NULL,
    key_hex  TEXT NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX IF NOT EXISTS device_place ON device (hall, window, state);
-- Any change to the registry, by any process, bumps meta 'registry_version': a running collector
-- compares it now and then and forgets its cached devices only when it changed.
CREATE TRIGGER IF NOT EXISTS device_added AFTER INSERT ON device BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version';
END;
CREATE TRIGGER IF NOT EXISTS device_changed AFTER UPDATE ON device BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version';
END;
CREATE TRIGGER IF NOT EXISTS device_removed AFTER DELETE ON device BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version';
END;

-- Identities of processed device messages: (device, boot, seq) is accepted once.
CREATE TABLE IF NOT EXISTS seen_msg (
    device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (device, boot, seq)
) WITHOUT ROWID;

-- Event ids of the business-system feed already processed, per hall.
CREATE TABLE IF NOT EXISTS seen_feed (
    hall TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (hall, id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS txn (
    hall TEXT NOT NULL, txn TEXT NOT NULL, window TEXT NOT NULL,
    staff_id TEXT NOT NULL, staff_name TEXT, staff_badge TEXT,
    service_code TEXT NOT NULL, service_name TEXT,
    started_ms INTEGER NOT NULL, completed_ms INTEGER NOT NULL, outcome TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('awaiting', 'rated', 'unrated')),
    rating_id TEXT, level INTEGER,
    PRIMARY KEY (hall, txn)
);
CREATE INDEX IF NOT EXISTS txn_window ON txn (hall, window, state, completed_ms);
CREATE INDEX IF NOT EXISTS txn_deadline ON txn (state, deadline_ms);

CREATE TABLE IF NOT EXISTS rating (
    rating_id TEXT PRIMARY KEY,          -- device:boot:seq
    hall TEXT NOT NULL, window TEXT NOT NULL, device TEXT NOT NULL,
    boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    level INTEGER NOT NULL, reason TEXT, mode TEXT NOT NULL, rt_ms INTEGER,
    txn_claimed TEXT,                    -- the case number the device sent, if any
    press_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, device_ts INTEGER,
    state TEXT NOT NULL CHECK (state IN ('held', 'linked', 'unlinked')),
    hold_until_ms INTEGER,
    txn TEXT, staff_id TEXT, service_code TEXT, unlinked_reason TEXT,
    paused INTEGER NOT NULL DEFAULT 0, signed_on INTEGER
);
CREATE INDEX IF NOT EXISTS rating_held ON rating (state, hold_until_ms);

-- What the business system last said about each window.
CREATE TABLE IF NOT EXISTS window_state (
    hall TEXT NOT NULL, window TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    staff_id TEXT, staff_name TEXT, staff_badge TEXT,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (hall, window)
);

-- Facts the integrity detector reads (docs/detection.md); append-only, one row per event.
CREATE TABLE IF NOT EXISTS device_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL, hall TEXT NOT NULL, window TEXT NOT NULL,
    kind TEXT NOT NULL,           -- status, or the event type (heartbeat, key_uninvited, ...)
    at_ms INTEGER NOT NULL,       -- event time as stored in InfluxDB
    received_ms INTEGER NOT NULL,
    data TEXT NOT NULL            -- JSON: the event's data, or {"state": ...} for status
    -- boot INTEGER (schema 2): the message's boot counter, NULL in rows stored before
);
CREATE INDEX IF NOT EXISTS device_log_place ON device_log (hall, window, at_ms);
CREATE TABLE IF NOT EXISTS window_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hall TEXT NOT NULL, window TEXT NOT NULL, kind TEXT NOT NULL, at_ms INTEGER NOT NULL,
    staff_id TEXT, reason TEXT
);
CREATE INDEX IF NOT EXISTS window_log_place ON window_log (hall, window, at_ms);

-- Command counters per device (docs/protocol.md §5).
CREATE TABLE IF NOT EXISTS cmd_seq (device TEXT PRIMARY KEY, cseq INTEGER NOT NULL);

-- Points waiting to be written to InfluxDB, in order: line protocol, or (spec = 1) a JSON point
-- spec that the drainer renders (collector/points.py PointSpec). The drainer records how far it
-- has written in its own database (`connect_drained`); the collector deletes the rows up to there.
CREATE TABLE IF NOT EXISTS influx_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, spec INTEGER NOT NULL DEFAULT 0
);
-- Commands waiting for the broker's PUBACK.
CREATE TABLE IF NOT EXISTS cmd_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, payload BLOB NOT NULL, expires_ms INTEGER NOT NULL
);

-- Messages whose processing raised an unexpected error: kept for a human, never lost.
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, error TEXT NOT NULL, at_ms INTEGER NOT NULL
);
"""


# drained.db, version 2 (PRAGMA user_version): one row per InfluxDB target ([influx] targets),
# so several servers can be fed the same outbox, each at its own pace.
_DRAINED_SCHEMA = """
-- How far each target's drainer has written the state database's influx_outbox.
-- `instance` is the state database's meta 'instance': progress through another (recreated)
-- state database's outbox means nothing.
CREATE TABLE IF NOT EXISTS drained_target (
    target TEXT PRIMARY KEY, instance TEXT NOT NULL, outbox_id INTEGER NOT NULL
);
-- What each target's drainer process last reported, for /healthz and /metrics.
CREATE TABLE IF NOT EXISTS drainer_target_status (
    target TEXT PRIMARY KEY,
    pid INTEGER, healthy INTEGER NOT NULL, last_error TEXT NOT NULL, updated_ms INTEGER NOT NULL,
    points_written INTEGER NOT NULL, errors_unavailable INTEGER NOT NULL,
    errors_internal INTEGER NOT NULL, dead_points INTEGER NOT NULL
);
-- Points a target refused as invalid (kept, never silently dropped).
CREATE TABLE IF NOT EXISTS influx_target_dead (
    target TEXT NOT NULL, id INTEGER NOT NULL, line TEXT NOT NULL, error TEXT NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (target, id)
);
"""
_DRAINED_VERSION = 2


@contextmanager
def transaction(conn: sqlite3.Connection, *,
                pipelined: bool = False) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` if the block raises.

    The ROLLBACK only runs while a transaction is open: on some errors (SQLITE_FULL, I/O) SQLite
    has rolled back already, and a ROLLBACK then would raise "no transaction is active" and hide
    the error that matters. Every transaction block of the collector goes through here.

    `pipelined`: on PostgreSQL the block's statements do not wait for their replies until a
    result is read (collector/pgstate.py), so an error may surface at a later statement or at
    COMMIT; only for a block where any error fails the whole block (or its savepoint). SQLite
    runs it the same either way."""
    pg = cast(object, conn)  # a PgConnection behind the sqlite3 annotation (_open_pg)
    if pipelined and isinstance(pg, PgConnection):
        pg.begin_pipelined()
    else:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def sync(conn: sqlite3.Connection) -> None:
    """In a pipelined transaction on PostgreSQL: wait until every statement sent so far has
    answered, so that an error of one raises here (collector/pgstate.py). SQLite: nothing (its
    statements ran as they were executed)."""
    pg = cast(object, conn)
    if isinstance(pg, PgConnection):
        pg.sync()


def _open(path: str | Path, check_same_thread: bool) -> sqlite3.Connection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), isolation_level=None, timeout=30.0, check_same_thread=check_same_thread
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def is_postgres(conn: sqlite3.Connection) -> bool:
    return isinstance(conn, PgConnection)


def _open_pg(url: str) -> sqlite3.Connection:
    # A PgConnection implements the part of sqlite3.Connection the collector uses
    # (collector/pgstate.py); the callers keep their sqlite3.Connection annotations.
    return cast(sqlite3.Connection, open_pg(url))


def connect(path: StateTarget, *, check_same_thread: bool = True,
            max_mb: int = 0) -> sqlite3.Connection:
    """Open (creating if needed) the state database with the current schema: an SQLite file in
    WAL mode, or (`path` a postgresql:// URL) a PostgreSQL database.

    Transactions are explicit (`isolation_level=None`; callers use `BEGIN IMMEDIATE`), and
    `synchronous=FULL` so a committed transaction survives a power cut, not just a process kill.
    On PostgreSQL `max_mb` is not applied (a quota there is the database administrator's).
    """
    if is_url(path):
        conn = _open_pg(str(path))
        where = redacted_url(str(path))
        _warn_collation(conn, where)
    else:
        conn = _open(path, check_same_thread)
        conn.execute("PRAGMA foreign_keys=ON")
        where = str(path)
    found = _schema_version(conn)
    if found is not None and found > SCHEMA_VERSION:
        conn.close()
        raise RuntimeError(f"state database {where} has schema {found}, newer than this "
                           f"collector's {SCHEMA_VERSION}: run the version that wrote it, or "
                           "restore a backup")
    if found is None:  # a new database: version 1, then the same upgrades as an old one
        try:
            _create(conn)
        except BaseException:
            conn.close()
            raise
    if (found or 1) < SCHEMA_VERSION:
        try:
            _migrate(conn, where, announce=found is not None)
        except BaseException:
            conn.close()
            raise
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if int(row[0]) != SCHEMA_VERSION:
        conn.close()
        raise RuntimeError(f"state database {where} has schema {row[0]}, expected {SCHEMA_VERSION}")
    if max_mb > 0 and not is_postgres(conn):
        # A bound on the file, so that a long InfluxDB outage fills neither the disk nor this
        # database: past it, writes fail with SQLITE_FULL and the collector stops acknowledging
        # (the broker keeps the messages) until the outbox drains.
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={max(1, max_mb * 2**20 // page)}")
    return conn


def _warn_collation(conn: sqlite3.Connection, where: str) -> None:
    """Text sorts by bytes in SQLite; a PostgreSQL database with a language collation sorts
    the same rows (registry lists, reports) in another order."""
    collate = conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()"
                           ).fetchone()[0]
    if str(collate).lower() not in ("c", "posix", "c.utf-8", "c.utf8"):
        _LOG.warning("state database %s has collation %s: lists sort in another order than on "
                     "SQLite; create it with LC_COLLATE 'C' (docs/storage.md)", where, collate)


def _create(conn: sqlite3.Connection) -> None:
    """Schema version 1 in a new database, in one transaction (two processes starting on one new
    PostgreSQL database: the second waits, then finds it made)."""
    with transaction(conn):
        if _schema_version(conn) is not None:
            return
        for sql in _schema_statements(conn, _SCHEMA):
            conn.execute(sql)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', '1'), ('instance', ?), "
            "('registry_version', '0') ON CONFLICT DO NOTHING", (secrets.token_hex(16),))


def _schema_statements(conn: sqlite3.Connection, script: str) -> list[str]:
    """The statements of a schema script in the connection's dialect (collector/pgstate.py)."""
    if is_postgres(conn):
        return ddl_statements(script)
    return list(split_script(script))


def current_schema_statements(conn: sqlite3.Connection) -> list[str]:
    """The statements that make the current schema's tables in an empty database, in the
    connection's dialect: version 1 and every migration, as `connect` runs them (without the
    `meta` rows; the caller runs them in a transaction of its own: `evalterm state copy`)."""
    out = _schema_statements(conn, _SCHEMA)
    for statements in _MIGRATIONS:
        for step in statements:
            out += _schema_statements(conn, step)
    return out


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """The database's schema version; None for a new (empty) database."""
    if is_postgres(conn):
        exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
    else:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                              ).fetchone() is not None
    if not exists:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else int(row[0])


def _migrate(conn: sqlite3.Connection, path: str | Path, announce: bool) -> None:
    """Upgrade an older state database in place, in one transaction: all steps or none.
    `announce`: log it (not for a database made just now)."""
    with transaction(conn):
        # Read again under the write lock: another process may have upgraded it meanwhile.
        found = _schema_version(conn)
        assert found is not None
        if found < SCHEMA_VERSION:
            for statements in _MIGRATIONS[found - 1:]:
                for step in statements:
                    for sql in _schema_statements(conn, step):
                        conn.execute(sql)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                         (str(SCHEMA_VERSION),))
    if found < SCHEMA_VERSION and announce:
        _LOG.info("state database %s migrated from schema %d to %d", path, found, SCHEMA_VERSION)


def connect_reader(path: StateTarget) -> sqlite3.Connection:
    """Open an existing state database for reading only (the drainer): no schema statements, so
    opening it never waits for the ingest worker's write lock. Only the current schema is
    accepted: the collector upgrades an older database (`connect`) before it starts the drainer."""
    if is_url(path):
        reader = cast(sqlite3.Connection, open_pg(str(path), read_only=True))
        return _current_only(reader, redacted_url(str(path)))
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None,
                           # the drainer reads ahead in a thread
                           timeout=30.0, check_same_thread=False)
    return _current_only(conn, str(path))


def _current_only(conn: sqlite3.Connection, path: str) -> sqlite3.Connection:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None or int(row[0]) != SCHEMA_VERSION:
        conn.close()
        raise RuntimeError(f"state database {path} has schema {row and row[0]}, expected "
                           f"{SCHEMA_VERSION} (the collector upgrades an older one when it starts)")
    return conn


def drained_path(state_db: str | Path) -> Path:
    """The drainer's own database, next to the state database."""
    return Path(state_db).with_name("drained.db")


def connect_drained(path: str | Path, *, check_same_thread: bool = True,
                    first_target: str = "main") -> sqlite3.Connection:
    """Open the drainer's database: its progress through the outbox, its status, refused points.

    Only the drainer process writes it, so the drainer never waits for the state database's write
    lock, which the ingest worker holds nearly all the time under load; the collector only reads
    it (WAL readers do not block the writer) and deletes the drained outbox rows itself.
    `first_target` (the first of `[influx] targets`) inherits the progress, status and refused
    points of a version 1 database (one target, one row), so an upgrade neither loses nor
    re-sends anything.
    """
    conn = _open(path, check_same_thread)
    with transaction(conn):  # several drainers may open it at once: one upgrades
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _DRAINED_VERSION:
            raise RuntimeError(f"{path} has version {version}, newer than this collector's "
                               f"{_DRAINED_VERSION}: run the version that wrote it")
        if version < _DRAINED_VERSION:
            for statement in filter(str.strip, _DRAINED_SCHEMA.split(";")):
                conn.execute(statement)
            old = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "drained" in old:  # version 1
                conn.execute("INSERT OR IGNORE INTO drained_target (target, instance, outbox_id) "
                             "SELECT ?, instance, outbox_id FROM drained", (first_target,))
                conn.execute("INSERT OR IGNORE INTO drainer_target_status SELECT ?, pid, healthy, "
                             "last_error, updated_ms, points_written, errors_unavailable, "
                             "errors_internal, dead_points FROM drainer_status", (first_target,))
                conn.execute("INSERT OR IGNORE INTO influx_target_dead SELECT ?, id, line, error, "
                             "at_ms FROM influx_dead", (first_target,))
                for table in ("drained", "drainer_status", "influx_dead"):
                    conn.execute(f"DROP TABLE {table}")
                _LOG.info("%s upgraded: its progress is InfluxDB target %r's", path, first_target)
            conn.execute(f"PRAGMA user_version = {_DRAINED_VERSION}")
    return conn


def drained_up_to(state: sqlite3.Connection, drained: sqlite3.Connection,
                  target: str = "main") -> int:
    """The highest influx_outbox id that InfluxDB target `target` has confirmed (0: none, or not
    for this state database: one recreated, or restored from a backup older than the drainer's
    progress)."""
    return drained_cursors(state, drained).get(target, 0)


def drained_cursors(state: sqlite3.Connection, drained: sqlite3.Connection) -> dict[str, int]:
    """Every target's progress recorded in drained.db, valid for this state database (see
    `drained_up_to`), targets no longer configured included."""
    mine = state.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
    top = outbox_high_water(state)
    return {target: int(up_to) if mine is not None and mine[0] == instance and up_to <= top else 0
            for target, instance, up_to in
            drained.execute("SELECT target, instance, outbox_id FROM drained_target")}


def outbox_high_water(state: sqlite3.Connection) -> int:
    """The highest influx_outbox id ever handed out (deleted rows included; 0: none)."""
    if is_postgres(state):
        row = state.execute("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence("
                            "'influx_outbox', 'id')), 0)").fetchone()
    else:
        row = state.execute("SELECT seq FROM sqlite_sequence WHERE name = 'influx_outbox'"
                            ).fetchone()
    return int(row[0]) if row else 0


# Partition locks: PostgreSQL advisory locks in their two-key form (classid, objid), this class
# id, so they never meet the single-key WRITE_LOCK_KEY of collector/pgstate.py.
_PARTITION_LOCK_CLASS = 0x65767074  # "evpt"
# The SQLite partition locks' open files, by connection: held while the connection lives.
_SQLITE_LOCKS: dict[int, dict[int, int]] = {}


def partition_lock_path(state_db: str | Path, k: int) -> Path:
    """The file an SQLite state database's partition `k` is locked on (beside the database)."""
    return Path(state_db).with_name(f"{Path(state_db).name}.partition-{k}.lock")


def try_lock_partition(conn: sqlite3.Connection, k: int) -> bool:
    """Take the ownership lock of partition `k` for the process holding `conn`, without waiting:
    True if it is now held (or was already held through this connection), False if another
    connection holds it.

    PostgreSQL: a session-level `pg_try_advisory_lock`, held until the connection ends (closed,
    or dropped by the server: a crashed owner's lock is freed when PostgreSQL notices the dead
    connection) and shared by no other session. SQLite: an exclusive `flock` on
    `partition_lock_path` (beside the database file), held while `conn` is open in this process
    (the kernel frees it when the process dies); a second connection, of this process or another,
    is refused. `:memory:` databases have no file: always True."""
    if is_postgres(conn):
        pg = cast(PgConnection, conn)
        row = conn.execute("SELECT pg_try_advisory_lock(?, ?)",
                           (_PARTITION_LOCK_CLASS, int(k))).fetchone()
        if row[0]:
            pg.partition_locks.add(int(k))  # a broken connection then stays broken
        return bool(row[0])
    db_file = conn.execute("PRAGMA database_list").fetchone()[2]
    if not db_file:
        return True
    held = _SQLITE_LOCKS.setdefault(id(conn), {})
    if k in held:
        return True
    fd = os.open(partition_lock_path(db_file, k), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    held[k] = fd
    return True


def partition_locks_lost(conn: sqlite3.Connection) -> bool:
    """True when `conn` is a PostgreSQL connection that held partition locks and broke: the
    locks died with the session (collector/pgstate.py), so nothing may be served under them."""
    if not is_postgres(conn):
        return False
    pg = cast(PgConnection, conn)
    return bool(pg.partition_locks) and (pg.raw.broken or pg.raw.closed)


def release_partition_locks(conn: sqlite3.Connection) -> None:
    """Close an SQLite connection's partition lock files (call before closing `conn`; a
    PostgreSQL connection's locks end with it)."""
    for fd in _SQLITE_LOCKS.pop(id(conn), {}).values():
        os.close(fd)


def state_instance(state: sqlite3.Connection) -> str:
    return str(state.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0])
