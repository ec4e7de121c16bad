"""The PostgreSQL state database from the IT staff's side: `pg_dump` and `pg_restore` (found in
a version that fits the server, run without any password on their command line), whether a
database is empty, and who else is connected to it. Used by `evalterm backup`/`restore`
(collector/backup.py) and `evalterm state copy` (collector/statecopy.py).

The password never goes through here: the URL holds none (`[state] url` and `state copy` refuse
one, collector/config.py `state_url_problem`), and libpq in the tools reads it, as the
collector's own connections do, from PGPASSWORD, a PGPASSFILE file (default ~/.pgpass) or a
service file, all inherited through the environment. The URL that is logged or shown is
`redacted_url`'s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from collector.errors import ServiceUnavailable, UsageError
from collector.pgstate import PgConnection, open_pg, redacted_url

__all__ = ["Snapshot", "dump", "find_tool", "other_sessions", "run_tool", "server_major",
           "snapshot", "tool_major", "user_relations"]

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def server_major(conn: PgConnection) -> int:
    """The server's major version (15 for 15.20)."""
    return int(conn.execute("SELECT current_setting('server_version_num')").fetchone()[0]) // 10000


def tool_major(path: str) -> int | None:
    """The major version of a PostgreSQL client program (`pg_dump --version`), None if it does
    not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False,
                             timeout=30).stdout
    except OSError:
        return None
    m = _VERSION.search(out)
    return int(m.group(1)) if m else None


def _candidates(name: str) -> list[str]:
    """Debian installs every major version under /usr/lib/postgresql/N/bin (what is on PATH is
    a wrapper that picks one); elsewhere the one on PATH."""
    found = [str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")]
    on_path = shutil.which(name)
    if on_path:
        found.append(on_path)
    return found


def find_tool(name: str, need_major: int) -> tuple[str, int]:
    """`name` (pg_dump, pg_restore) of major version `need_major` or newer: the newest found, and
    its major version. A newer one reads an older server and an older archive; an older one
    does neither."""
    versions = [(v, p) for p in _candidates(name) if (v := tool_major(p)) is not None]
    fitting = [(v, p) for v, p in versions if v >= need_major]
    if fitting:
        v, p = max(fitting)
        return p, v
    if not versions:
        raise ServiceUnavailable(f"{name} is not installed here (it is needed for the state "
                                 f"database in PostgreSQL {need_major}): apt-get install "
                                 f"postgresql-client-{need_major}")
    newest = max(versions)
    raise ServiceUnavailable(f"{name} {newest[0]} ({newest[1]}) is older than the PostgreSQL "
                             f"{need_major} it has to work with: apt-get install "
                             f"postgresql-client-{need_major}")


def run_tool(argv: list[str], what: str) -> None:
    """Run a PostgreSQL client program; on failure one line: its first error line."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln.lower() or "fatal:" in ln.lower()]
        first = (errors or lines or [f"exit status {proc.returncode}"])[0]
        raise ServiceUnavailable(f"{what} failed: {redacted_url(first)}")


def user_relations(conn: PgConnection) -> int:
    """How many tables, views and sequences the database holds outside the system schemas (0:
    an empty database, as `createdb` makes it)."""
    return int(conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
    ).fetchone()[0])


def other_sessions(conn: PgConnection, grace_s: float = 3.0) -> int:
    """How many other client sessions are connected to this database (a running collector has
    at least two: its ingest worker's and its drainer's). Waits up to `grace_s` for them to go:
    the server ends a session a moment after its client closed it (a collector just stopped)."""
    deadline = time.monotonic() + grace_s
    while True:
        n = int(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()[0])
        if n == 0 or time.monotonic() >= deadline:
            return n
        time.sleep(0.2)


@dataclass
class Snapshot:
    """An open repeatable-read transaction whose snapshot is exported: what `conn` reads in it
    and what `dump` writes are the same state of the database."""

    url: str
    conn: PgConnection
    id: str
    server_major: int


@contextmanager
def snapshot(url: str) -> Iterator[Snapshot]:
    conn = open_pg(url)
    try:
        major = server_major(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        sid = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])
        yield Snapshot(url, conn, sid, major)
        conn.execute("COMMIT")
    finally:
        conn.close()


def dump(snap: Snapshot, dest: Path) -> int:
    """`pg_dump` of the snapshot's database into `dest` (custom format, no owner: it restores
    into a database of another user). Returns pg_dump's major version."""
    if dest.exists():
        raise UsageError(f"{dest} exists already")
    pg_dump, major = find_tool("pg_dump", snap.server_major)
    run_tool([pg_dump, "--format=custom", "--no-owner", f"--snapshot={snap.id}",
              f"--file={dest}", f"--dbname={snap.url}"], "pg_dump")
    return major
