"""PostgreSQL as the state database: a psycopg 3 connection behind the part of the sqlite3 API
that the collector uses, so every statement of collector/ runs on both with one text.

The statements are written in the dialect both accept (ON CONFLICT, RETURNING, `?`
placeholders); what differs is handled here, once per statement text (cached):

- `?` placeholders (outside quotes) become `%s`, and every `%` becomes `%%`;
- the column name `window`, a reserved word in PostgreSQL, is quoted;
- `BEGIN IMMEDIATE` (SQLite: take the write lock now) becomes `BEGIN` plus a transaction-level
  advisory lock (`WRITE_LOCK_KEY`): writers serialize as on SQLite, so read-then-write blocks
  (the audit chain, case numbers) stay correct, and the outboxes' ids appear in commit order,
  which the drainer's cursor (`id > ?`) relies on;
- the schema (collector/db.py `_SCHEMA`, `_MIGRATIONS`) goes through `ddl_statements`.

Errors come out as the sqlite3 classes the callers catch (IntegrityError, OperationalError);
a lost connection as `StateUnavailable`, which is both a `ServiceUnavailable` (one line to a
user) and an `sqlite3.OperationalError` (the ingest worker aborts the batch unacknowledged).
A COMMIT whose reply was lost is reported the same way: its outcome is unknown, so nothing it
covered may be acknowledged; the broker redelivers and replay protection sorts it out.

A transaction begun with `begin_pipelined` (collector/db.py `transaction(pipelined=True)`, the
ingest batch) runs in psycopg's pipeline mode: a statement is sent without waiting for its reply,
and the connection waits (a Sync) only when a result is read (fetch*, rowcount, description), at
a savepoint statement, and before COMMIT, which itself is sent alone, as always. So a statement
whose result nobody reads costs no round trip, and an error of one surfaces at the next of those
points, not at its `execute`: only a block that takes any error as the failure of the whole
block (or of the savepoint it is in) may be pipelined.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper, Loader
from psycopg.conninfo import make_conninfo
from psycopg.types.numeric import Int8Dumper

from collector.errors import ServiceUnavailable

__all__ = ["SYNC_HEADS", "WRITE_LOCK_KEY", "PgConnection", "StateUnavailable", "ddl_statements",
           "is_url", "open_pg", "redacted_url", "split_script", "translate"]

# pg_advisory_xact_lock key of "BEGIN IMMEDIATE" (any constant; the partition locks of
# collector/db.py `try_lock_partition` use another key space: (classid, objid) pairs).
WRITE_LOCK_KEY = 0x6576616C  # "eval"

# In a pipelined transaction these wait for their reply (and for the replies of everything sent
# before): an error of a message's statements surfaces at its own RELEASE, inside its savepoint.
SYNC_HEADS = ("SAVEPOINT", "RELEASE", "ROLLBACK TO")


class StateUnavailable(ServiceUnavailable, sqlite3.OperationalError):
    """The PostgreSQL state database cannot be reached (or the connection broke): reconnect."""


def is_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redacted_url(url: str) -> str:
    """`url` without a password, for messages and logs."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\?|%|\bwindow\b", re.I)


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """A statement of the common dialect as psycopg wants it (see the module's docstring)."""

    def one(m: re.Match[str]) -> str:
        t = m.group(0)
        if t == "?":
            return "%s"
        if t == "%":
            return "%%"
        if t.lower() == "window":
            return '"window"'
        # a literal, a quoted name, a comment: psycopg reads % in them too
        return t.replace("%", "%%")

    return _TOKEN.sub(one, sql)


# The SQLite triggers of the schema, as PostgreSQL triggers (by name). A new trigger in
# _MIGRATIONS needs its entry here; ddl_statements refuses one without.
_REGISTRY_BUMP = (
    "CREATE OR REPLACE FUNCTION evalterm_registry_bump() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN UPDATE meta SET value = (CAST(value AS BIGINT) + 1)::text "
    "WHERE key = 'registry_version'; RETURN NULL; END $$")
_APPEND_ONLY = (
    "CREATE OR REPLACE FUNCTION evalterm_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME "
    "USING ERRCODE = 'integrity_constraint_violation'; END $$")
_PG_TRIGGERS: dict[str, tuple[str, ...]] = {
    "device_added": (_REGISTRY_BUMP, "CREATE TRIGGER device_added AFTER INSERT ON device "
                     "FOR EACH ROW EXECUTE FUNCTION evalterm_registry_bump()"),
    "device_changed": ("CREATE TRIGGER device_changed AFTER UPDATE ON device "
                       "FOR EACH ROW EXECUTE FUNCTION evalterm_registry_bump()",),
    "device_removed": ("CREATE TRIGGER device_removed AFTER DELETE ON device "
                       "FOR EACH ROW EXECUTE FUNCTION evalterm_registry_bump()",),
    "mgr_audit_no_update": (_APPEND_ONLY, "CREATE TRIGGER mgr_audit_no_update BEFORE UPDATE ON "
                            "mgr_audit FOR EACH ROW EXECUTE FUNCTION evalterm_append_only()"),
    "mgr_audit_no_delete": ("CREATE TRIGGER mgr_audit_no_delete BEFORE DELETE ON mgr_audit "
                            "FOR EACH ROW EXECUTE FUNCTION evalterm_append_only()",),
}

_DDL_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", re.I),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    # SQLite's INTEGER is 64-bit (the *_ms columns need it); PostgreSQL's is 32.
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID", re.I), ")"),
)
_TRIGGER_NAME = re.compile(r"^\s*CREATE\s+TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)


def split_script(script: str) -> Iterator[str]:
    """The statements of an SQLite script (a trigger's body holds `;` too), without the comment
    lines; a last statement may lack its `;` (a _MIGRATIONS entry)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()


def ddl_statements(script: str) -> list[str]:
    """SQLite schema statements (a script, or one statement) as PostgreSQL statements, ready
    for `translate` (which still quotes `window`)."""
    out: list[str] = []
    for stmt in split_script(script):
        stmt = stmt.rstrip(";").strip()
        trigger = _TRIGGER_NAME.match(stmt)
        if trigger:
            name = trigger.group(1)
            if name not in _PG_TRIGGERS:
                raise RuntimeError(f"no PostgreSQL form of trigger {name} (collector/pgstate.py)")
            out.extend(_PG_TRIGGERS[name])
            continue
        for pattern, repl in _DDL_REWRITES:
            stmt = pattern.sub(repl, stmt)
        out.append(stmt)
    return out


class _IntOrFloatNumeric(Loader):
    """numeric (sum() of bigint, avg()) as int when whole, else float: what SQLite returns, and
    what the callers (JSON, arithmetic with floats) expect, instead of Decimal."""

    def load(self, data: Any) -> Any:
        d = Decimal(bytes(data).decode())
        return int(d) if d == d.to_integral_value() else float(d)


class _BoolAsInt(Dumper):
    """A Python bool as 0/1, as sqlite3 stores it: the flag columns (paused, reached) are
    integers in both schemas."""

    oid = Int8Dumper.oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


def _sqlite_error(exc: psycopg.Error, conn: psycopg.Connection[Any]) -> Exception:
    """`exc` as the sqlite3 (or evalterm) error the collector's callers catch."""
    if conn.broken or conn.closed or isinstance(exc, psycopg.errors.AdminShutdown):
        return StateUnavailable(f"PostgreSQL state database connection lost: {exc}".strip())
    text = str(exc).strip()
    if isinstance(exc, psycopg.errors.IntegrityError):
        return sqlite3.IntegrityError(text)
    if isinstance(exc, psycopg.OperationalError):
        return sqlite3.OperationalError(text)
    if isinstance(exc, psycopg.DataError):
        return sqlite3.DataError(text)
    if isinstance(exc, psycopg.ProgrammingError):
        return sqlite3.ProgrammingError(text)
    return sqlite3.DatabaseError(text)


_TUPLES = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE)


class PgCursor:
    """What `execute` returns: fetchone/fetchall/rowcount/lastrowid/iteration.

    In a pipelined transaction its reply may not have come yet: every read waits for it."""

    def __init__(self, cur: psycopg.Cursor[Any], owner: PgConnection) -> None:
        self._cur = cur
        self._owner = owner
        self._sent_in = owner._pipe_segment

    def _ready(self) -> None:
        owner = self._owner
        if owner._pipe is not None and self._sent_in == owner._pipe_segment:
            owner.sync()

    def _rows(self) -> bool:
        """Whether the statement returned rows (psycopg's `description` without building its
        Column objects, a cost per statement)."""
        res = self._cur.pgresult
        return res is not None and (res.nfields > 0 or res.status in _TUPLES)

    @property
    def rowcount(self) -> int:
        self._ready()
        return self._cur.rowcount

    @property
    def lastrowid(self) -> None:
        # PostgreSQL has none: statements that need the new id use RETURNING (both backends).
        raise sqlite3.NotSupportedError("lastrowid on PostgreSQL: use INSERT ... RETURNING")

    @property
    def description(self) -> Any:
        self._ready()
        return self._cur.description

    def fetchone(self) -> Any:
        self._ready()
        with self._owner.errors():
            return self._cur.fetchone() if self._rows() else None

    def fetchall(self) -> list[Any]:
        self._ready()
        with self._owner.errors():
            return self._cur.fetchall() if self._rows() else []

    def fetchmany(self, size: int = 1) -> list[Any]:
        self._ready()
        with self._owner.errors():
            return self._cur.fetchmany(size) if self._rows() else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def close(self) -> None:
        self._cur.close()


class PgConnection:
    """A PostgreSQL connection with the sqlite3.Connection API the collector uses (module doc).

    Autocommit mode, as the collector's SQLite connections (`isolation_level=None`): a statement
    outside BEGIN ... COMMIT is its own transaction. One lock makes it usable from two threads
    like an SQLite connection opened with check_same_thread=False (never concurrently).

    After the connection broke (the statement then raised StateUnavailable, and the open
    transaction, if any, is gone), the next statement connects again to the same URL, so a
    caller that retries (the service's worker) goes on once the server is back, possibly a
    promoted standby behind a multi-host URL. Not if the session held partition locks
    (`partition_locks`): those died with it, and taking them again is the owner's decision,
    so it stays broken and the owner makes a new connection."""

    is_postgres = True

    def __init__(self, raw: psycopg.Connection[Any], url: str, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.partition_locks: set[int] = set()
        self._lock = threading.RLock()
        # The pipeline of a transaction begun with begin_pipelined (None: each statement waits
        # for its reply), and its segment: bumped at each Sync, after which every statement
        # sent before has its reply (PgCursor._ready).
        self._pipe: ExitStack | None = None
        self._pipeline: psycopg.Pipeline | None = None
        self._pipe_segment = 0
        self._use(raw)

    def _use(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        raw.adapters.register_loader("numeric", _IntOrFloatNumeric)
        raw.adapters.register_dumper(bool, _BoolAsInt)

    def _reconnect_if_broken(self) -> None:
        if not self.raw.broken:
            return
        self._drop_pipeline()
        if self.partition_locks:
            raise StateUnavailable(
                "PostgreSQL state database connection lost with the partition locks "
                f"{sorted(self.partition_locks)}: open a new connection and take them again")
        self._use(open_pg(self.url, read_only=self.read_only).raw)

    def errors(self) -> _Errors:
        return _Errors(self)

    @property
    def in_transaction(self) -> bool:
        if self._pipe is not None:
            # BEGIN may still be unsent; on a broken connection the server ended it
            return not self.raw.broken
        return self.raw.info.transaction_status in (pq.TransactionStatus.INTRANS,
                                                    pq.TransactionStatus.INERROR,
                                                    pq.TransactionStatus.ACTIVE)

    def begin_pipelined(self) -> None:
        """BEGIN IMMEDIATE, with the transaction's statements pipelined until its COMMIT or
        ROLLBACK (module docstring)."""
        with self._lock, self.errors():
            self._reconnect_if_broken()
            if self._pipe is not None or self.in_transaction:
                raise sqlite3.OperationalError("cannot start a transaction within a transaction")
            stack = ExitStack()
            self._pipeline = stack.enter_context(self.raw.pipeline())
            self._pipe = stack
            self._pipe_segment += 1
            self.raw.execute("BEGIN")
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))

    def sync(self) -> None:
        """Wait for the replies of everything sent (pipelined transaction; else nothing to do):
        the first error among them raises here."""
        with self._lock, self.errors():
            if self._pipeline is not None:
                self._pipe_segment += 1
                self._pipeline.sync()

    def _end_pipeline(self, *, keep_errors: bool) -> None:
        """Leave pipeline mode, every reply received. `keep_errors`: the first error of a
        statement not read yet raises (before COMMIT); else (before ROLLBACK) it is dropped,
        unless the connection broke."""
        stack, self._pipe, self._pipeline = self._pipe, None, None
        self._pipe_segment += 1
        if stack is None:
            return
        try:
            stack.close()
        except psycopg.Error:
            if keep_errors or self.raw.broken:
                raise

    def _after_pipeline_error(self) -> None:
        """In pipeline mode, an error makes the server skip what was sent after it up to the next
        Sync (psycopg may raise it at a later `execute` already): a Sync now, so the caller's
        next statement (ROLLBACK TO, ROLLBACK) runs in the failed transaction."""
        if self._pipeline is None:
            return
        self._pipe_segment += 1
        try:
            self._pipeline.sync()
        except psycopg.Error:  # the skipped statements' "pipeline aborted"
            if self.raw.broken:
                self._drop_pipeline()

    def _drop_pipeline(self) -> None:
        """The connection broke: forget its pipeline (psycopg's too) without a word to it."""
        stack, self._pipe, self._pipeline = self._pipe, None, None
        self._pipe_segment += 1
        if stack is not None:
            lost = psycopg.OperationalError("connection lost")
            try:
                stack.__exit__(type(lost), lost, None)
            except psycopg.Error:
                pass

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        head = sql.strip().upper()
        with self._lock, self.errors():
            self._reconnect_if_broken()
            if head == "BEGIN IMMEDIATE":
                self.raw.execute("BEGIN")
                self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                return PgCursor(self.raw.cursor(), self)
            if self._pipe is not None and head in ("COMMIT", "ROLLBACK"):
                # COMMIT only once every statement of the transaction answered without error,
                # and then alone: a lost reply to it is an unknown outcome (StateUnavailable)
                self._end_pipeline(keep_errors=head == "COMMIT")
                if head == "ROLLBACK" and not self.in_transaction:
                    return PgCursor(self.raw.cursor(), self)  # BEGIN itself failed
            cur = self.raw.cursor()
            # always a parameter tuple: psycopg then reads %% as % (translate doubled them)
            cur.execute(translate(sql), tuple(params))
            if self._pipe is not None and head.startswith(SYNC_HEADS):
                self.sync()
            return PgCursor(cur, self)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> PgCursor:
        with self._lock, self.errors():
            self._reconnect_if_broken()
            cur = self.raw.cursor()
            cur.executemany(translate(sql), [tuple(r) for r in rows])
            return PgCursor(cur, self)

    def executescript(self, script: str) -> None:
        for stmt in ddl_statements(script):
            self.execute(stmt)

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Errors:
    """Context manager: psycopg errors out as sqlite3/evalterm errors (`_sqlite_error`)."""

    def __init__(self, conn: PgConnection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, _t: object, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, psycopg.Error):
            if self._conn.raw.broken:
                self._conn._drop_pipeline()
            else:
                self._conn._after_pipeline_error()
            raise _sqlite_error(exc, self._conn.raw) from exc


_DEAD_LINK = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
              "keepalives_count": "3", "tcp_user_timeout": "20000"}


def open_pg(url: str, *, read_only: bool = False, connect_timeout_s: int = 10) -> PgConnection:
    """Connect to `url` (libpq URL; several hosts and target_session_attrs allowed; the password
    from PGPASSWORD or PGPASSFILE, never from the configuration)."""
    # A reader is made read-only after it connected, not by a startup option: libpq's
    # target_session_attrs=read-write (a multi-host URL) would see the option's read-only
    # session and refuse every host, the primary too.
    # A server that vanished without closing the connection (a host down, a network cut) is
    # noticed within about 20 s instead of the kernel's minutes: the session holding partition
    # locks (collector/service.py) must not keep serving on a dead link. Settings in the URL win.
    dead_link = {k: v for k, v in _DEAD_LINK.items() if f"{k}=" not in url}
    try:
        raw = psycopg.connect(make_conninfo(url, **dead_link), autocommit=True,
                              connect_timeout=connect_timeout_s)
        if read_only:
            raw.execute("SET SESSION default_transaction_read_only = on")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StateUnavailable(f"PostgreSQL state database {redacted_url(url)} unreachable: "
                               f"{first}") from None
    return PgConnection(raw, url, read_only)
