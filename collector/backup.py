"""Backups of a hall: the state database and InfluxDB, in one folder with a manifest.

A backup folder holds

    state.db        the state database, copied by SQLite's online backup API: a consistent
                    copy taken while the collector runs (it holds the device keys: secret)
    state.pgdump    instead, with the state in PostgreSQL ([state] url): `pg_dump` of that
                    database (custom format, no owner) from an exported snapshot, in which the
                    manifest's counts are read too (collector/pgadmin.py)
    influx/         `influxd backup -portable -db <database>` (InfluxDB 1.x), unless left out
    manifest.json   what the folder holds: format, evalterm version, the state database's
                    schema version and instance, the InfluxDB database, and the SHA-256 and size
                    of every file; written last, so a folder without it is an unfinished backup

`restore` checks the manifest and every checksum before it changes anything. It refuses to
replace a state database that another process has open (a running collector or drainer: SQLite's
own lock on the `-shm` file tells) unless told to (`live=True`, through the backup API; the
service must be restarted right after). The old state database is kept next to it as
`state.db.pre-restore-<time>`, and `drained.db` is removed, so the drainer writes the restored
outbox again from its first row (points overwrite themselves). InfluxDB is restored directly when
the database does not exist; when it does (a collector started meanwhile creates it), the backup
is restored into a temporary database and copied in with `SELECT * INTO ... GROUP BY *`, per
retention policy and measurement, then the temporary database is dropped.

With the state in PostgreSQL, `restore` runs `pg_restore` into the configured database in one
transaction. It refuses a database that other sessions are connected to (a running collector),
and one that is not empty unless told to (`replace=True`: its content is first dumped to
`state.pgdump.pre-restore-<time>` in the data folder, then the backup's tables replace it);
`drained.db` is removed as above. A backup of one backend is not restored into the other: the
SQLite one is restored as SQLite and then moved with `evalterm state copy`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector import __version__
from collector.config import Config
from collector.db import SCHEMA_VERSION, drained_path
from collector.errors import InputFileError, ServiceUnavailable, UsageError
from collector.influx import QueryFailed, QueryRefused, influxql
from collector.pgadmin import (
    dump,
    find_tool,
    other_sessions,
    run_tool,
    server_major,
    snapshot,
    user_relations,
)
from collector.pgstate import PgConnection, open_pg, redacted_url

__all__ = ["FORMAT", "FORMAT_VERSION", "BackupResult", "backup", "db_in_use", "prune_dated",
           "read_manifest", "restore"]

FORMAT = "evalterm-backup"
# The newest format this version reads. 1: state.db; 2: state.pgdump (PostgreSQL), which an
# evalterm reading only 1 must refuse as newer. An SQLite backup is still written as 1.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PG_DUMP = "state.pgdump"
# The tables whose row counts a manifest records (the restore compares them).
_COUNTED = ("device", "txn", "rating", "influx_outbox")
_DATED = re.compile(r"\d{8}T\d{6}Z")
_HOUR_NS = 3600 * 10**9


@dataclass
class BackupResult:
    folder: Path
    manifest: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def db_in_use(db: Path) -> bool:
    """Whether another process has the SQLite database `db` open.

    Every connection to a WAL database holds a shared POSIX lock on the "DMS" byte of its `-shm`
    file (offset 128) for as long as it is open; an exclusive lock on that byte is granted only
    when no other process has the database open. (Locks of this process never conflict with
    themselves: call it without a connection of one's own.)"""
    shm = Path(f"{db}-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, os.SEEK_SET)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 128, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


def _sqlite_copy(src: Path, dest: Path) -> None:
    """`src` -> `dest` by the online backup API (consistent while others write `src`)."""
    s = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30.0)
    try:
        d = sqlite3.connect(str(dest))
        try:
            s.backup(d)
        finally:
            d.close()
    finally:
        s.close()


def _meta(db: Path) -> dict[str, str]:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if c.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise InputFileError(f"{db}: the SQLite integrity check fails")
        return {k: v for k, v in c.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise InputFileError(f"{db}: not a usable state database ({exc})") from None
    finally:
        c.close()


def _count_rows(conn: sqlite3.Connection | PgConnection) -> dict[str, int]:
    return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # noqa: S608
            for t in _COUNTED}


def _counts(db: Path) -> dict[str, int]:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return _count_rows(c)
    finally:
        c.close()


def _pg_state(conn: PgConnection, url: str) -> None:
    """Refuse a PostgreSQL database that holds no evalterm state (no `meta` table)."""
    if not conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
        raise UsageError(f"the PostgreSQL database {redacted_url(url)} holds no evalterm state "
                         "database (no meta table): check [state] url")


def _pg_check_backup(url: str) -> None:
    """Before anything is written: the server answers, holds the state, pg_dump fits it."""
    conn = open_pg(url)
    try:
        _pg_state(conn, url)
        find_tool("pg_dump", server_major(conn))
    finally:
        conn.close()


def _pg_backup(url: str, dest: Path) -> dict[str, Any]:
    """The state in PostgreSQL dumped into `dest`; the manifest's `state` entry, read in the
    dump's own snapshot."""
    with snapshot(url) as snap:
        _pg_state(snap.conn, url)
        meta = {str(k): str(v) for k, v in snap.conn.execute("SELECT key, value FROM meta")}
        counts = _count_rows(snap.conn)
        tool = dump(snap, dest)
    return {"backend": "postgresql", "schema_version": int(meta.get("schema_version", "0")),
            "instance": meta.get("instance", ""), "counts": counts,
            "server_major": snap.server_major, "pg_dump_major": tool}


def _influxd() -> str:
    found = shutil.which("influxd")
    if not found:
        raise ServiceUnavailable("influxd is not installed here (it runs `influxd backup` and "
                                 "`influxd restore`): apt-get install influxdb, or pass "
                                 "--no-influx")
    return found


def _check_rpc(cfg: Config) -> None:
    host, _, port = cfg.influx.backup_address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError:
        raise ServiceUnavailable(
            f"InfluxDB's backup service at {cfg.influx.backup_address} is unreachable: start "
            "InfluxDB, or set [influx] backup_address to the bind-address of influxdb.conf "
            "(or pass --no-influx)") from None


def _q(cfg: Config, text: str, db: str | None = None) -> list[dict[str, Any]]:
    i = cfg.influx
    rows: list[dict[str, Any]] = []
    for s in influxql(i.url, db or i.database, text, username=i.username, password=i.password,
                      epoch="ns", timeout_s=max(i.timeout_s, 300.0)):
        for v in s.get("values") or []:  # type: ignore[attr-defined]
            row = dict(zip(s["columns"], v, strict=True))  # type: ignore[call-overload]
            row["_series"] = s.get("name")
            rows.append(row)
    return rows


def _databases(cfg: Config) -> set[str]:
    return {str(r["name"]) for r in _q(cfg, "SHOW DATABASES")}


def _run_influxd(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise ServiceUnavailable(f"{what} failed: {lines[-1] if lines else proc.returncode}")


def _empty_or_new(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{folder} is a file: give a new or empty folder")
        if any(folder.iterdir()):
            raise UsageError(f"{folder} is not empty: give a new or empty folder (or use "
                             "--dated, which makes a new one under it)")


def backup(cfg: Config, folder: Path, *, influx: bool = True, dated: bool = False,
           keep: int = 0) -> BackupResult:
    """Back up the state database and (1.x) InfluxDB into `folder` (new or empty; `dated`: a new
    folder `YYYYmmddTHHMMSSZ` under it, written as `.partial-...` and renamed when complete;
    `keep`: then delete all but the newest `keep` dated backups there)."""
    state = cfg.state_db
    if cfg.state.url:
        _pg_check_backup(cfg.state.url)
    elif not state.is_file():
        raise UsageError(f"no state database at {state}: check [collector] data_dir (-c "
                         "collector.toml)")
    if not dated:
        _empty_or_new(folder)
    if influx:
        if cfg.influx.version != 1:
            raise UsageError("backing up InfluxDB 2.x/3.x is not built: back it up with `influx "
                             "backup`, and pass --no-influx here")
        influxd = _influxd()
        try:
            if cfg.influx.database not in _databases(cfg):
                raise ServiceUnavailable(f"InfluxDB at {cfg.influx.url} has no database "
                                         f"{cfg.influx.database!r}: check [influx] database, or "
                                         "pass --no-influx")
        except QueryFailed as exc:
            raise ServiceUnavailable(f"{exc} (or pass --no-influx)") from None
        _check_rpc(cfg)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if dated:
        final = folder / stamp
        if final.exists():
            raise UsageError(f"{final} exists already: wait a second and run it again")
        work = folder / f".partial-{stamp}"
        folder.mkdir(parents=True, exist_ok=True)
        work.mkdir(mode=0o700)
    else:
        final = work = folder
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    try:
        old_umask = os.umask(0o077)  # the copy holds device keys
        try:
            if cfg.state.url:
                state_entry = _pg_backup(cfg.state.url, work / PG_DUMP)
            else:
                _sqlite_copy(state, work / "state.db")
                meta = _meta(work / "state.db")
                state_entry = {"schema_version": int(meta.get("schema_version", "0")),
                               "instance": meta.get("instance", ""),
                               "counts": _counts(work / "state.db")}
            manifest: dict[str, Any] = {
                "format": FORMAT, "format_version": 2 if cfg.state.url else 1,
                "evalterm_version": __version__,
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "host": socket.gethostname(),
                "state": state_entry,
                "influx": None,
            }
            if influx:
                _run_influxd([influxd, "backup", "-portable", "-host",
                              cfg.influx.backup_address, "-db", cfg.influx.database,
                              str(work / "influx")], "influxd backup")
                manifest["influx"] = {"version": 1, "database": cfg.influx.database}
            manifest["files"] = {
                str(p.relative_to(work)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                for p in sorted(work.rglob("*")) if p.is_file()
            }
            tmp = work / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", "utf-8")
            os.replace(tmp, work / MANIFEST)
        finally:
            os.umask(old_umask)
        if dated:
            os.replace(work, final)
    except BaseException:
        if dated:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if dated and keep > 0:
        prune_dated(folder, keep)
    return BackupResult(final, manifest)


def prune_dated(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete dated backups under `folder` (and unfinished
    `.partial-` ones older than a day). Returns what it deleted."""
    done = sorted(p for p in folder.iterdir()
                  if p.is_dir() and _DATED.fullmatch(p.name) and (p / MANIFEST).is_file())
    gone = done[:-keep] if keep > 0 else []
    for p in folder.glob(".partial-*"):
        if p.is_dir() and time.time() - p.stat().st_mtime > 86400:
            gone.append(p)
    for p in gone:
        shutil.rmtree(p)
    return gone


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a backup folder, checked: format, version, every file's checksum."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    if not path.is_file():
        raise InputFileError(f"{folder} has no {MANIFEST}: not an evalterm backup, or an "
                             "unfinished one; use another backup")
    try:
        m = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc}); use another backup") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise InputFileError(f"{path}: not an evalterm backup manifest")
    if not isinstance(m.get("format_version"), int) or m["format_version"] > FORMAT_VERSION:
        raise InputFileError(f"{folder}: backup format {m.get('format_version')!r} from evalterm "
                             f"{m.get('evalterm_version')}, newer than this one's "
                             f"({FORMAT_VERSION}): restore it with that version or a newer one")
    schema = m.get("state", {}).get("schema_version", 0)
    if schema > SCHEMA_VERSION:
        raise InputFileError(f"{folder}: its state database has schema {schema}, newer than this "
                             f"evalterm's {SCHEMA_VERSION} (backup from evalterm "
                             f"{m.get('evalterm_version')}): install that version to restore it")
    files = m.get("files")
    if not isinstance(files, dict) or _state_file(m) not in files:
        raise InputFileError(f"{path}: lists no {_state_file(m)}; use another backup")
    bad = []
    for name, info in files.items():
        p = folder / name
        if ".." in Path(name).parts or not p.is_file():
            bad.append(f"{name} missing")
        elif p.stat().st_size != info.get("bytes") or _sha256(p) != info.get("sha256"):
            bad.append(f"{name} changed")
    if bad:
        raise InputFileError(f"{folder}: {len(bad)} file(s) do not match the manifest "
                             f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the "
                             "backup is damaged; use another one")
    return m


def _is_pg(m: dict[str, Any]) -> bool:
    state = m.get("state")
    return isinstance(state, dict) and state.get("backend") == "postgresql"


def _state_file(m: dict[str, Any]) -> str:
    return PG_DUMP if _is_pg(m) else "state.db"


def restore(cfg: Config, folder: Path, *, influx: bool = True, state: bool = True,
            live: bool = False, replace: bool = False,
            say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Restore a backup made by `backup` (module docstring). Returns what was done.
    `replace`: with the state in PostgreSQL, restore into a database that is not empty."""
    m = read_manifest(folder)
    done: dict[str, Any] = {}
    has_influx = m.get("influx") is not None
    if influx and has_influx:
        if cfg.influx.version != 1:
            raise UsageError("the backup holds InfluxDB 1.x data but [influx] version = 2: "
                             "restore into a 1.x server, or pass --no-influx")
        _influxd()
        try:
            _databases(cfg)
        except QueryFailed as exc:
            raise ServiceUnavailable(f"{exc} (or pass --no-influx)") from None
        _check_rpc(cfg)
    target = cfg.state_db
    if state and _is_pg(m) and not cfg.state.url:
        raise UsageError("the backup holds a PostgreSQL state database (state.pgdump) but "
                         "[state] url is empty: set it to a new empty PostgreSQL database and "
                         "run restore again, or pass --no-state")
    if state and cfg.state.url and not _is_pg(m):
        raise UsageError("the backup holds an SQLite state database (state.db) but [state] url "
                         "names PostgreSQL: restore it with [state] url empty, then move it with "
                         "`evalterm state copy` (docs/storage.md), or pass --no-state")
    if state and cfg.state.url:
        if live:
            raise UsageError("--live replaces an SQLite state database under a running "
                             "collector; with [state] url stop the collector and restore "
                             "without --live")
        plan = _pg_restore_check(cfg.state.url, m["state"], replace)
        done["state"] = _pg_restore(cfg, folder / PG_DUMP, m["state"], plan, say)
    elif state:
        if db_in_use(target) and not live:
            raise UsageError(f"{target} is open by a running process (the collector or its "
                             "drainer): stop it first (systemctl stop evalterm-collector) and "
                             "run restore again, or pass --live to replace it under the "
                             "running service and restart the service right after")
        done["state"] = _restore_state(folder / "state.db", target, live, say)
    if influx and has_influx:
        done["influx"] = _restore_influx(cfg, folder, m["influx"]["database"], say)
    return done


@dataclass
class _PgRestorePlan:
    pg_restore: str
    nonempty: int  # relations in the target before (0: empty)


def _pg_restore_check(url: str, entry: dict[str, Any], replace: bool) -> _PgRestorePlan:
    """Before anything changes: the target is reachable, unused, empty (or `replace`), and a
    pg_restore (and for `replace` a pg_dump) of a fitting version is here."""
    conn = open_pg(url)
    try:
        where = redacted_url(url)
        others = other_sessions(conn)
        if others:
            raise UsageError(f"the PostgreSQL state database {where} is in use by {others} other "
                             "session(s) (the collector or its drainer): stop it first "
                             "(systemctl stop evalterm-collector) and run restore again")
        n = user_relations(conn)
        if n and not replace:
            raise UsageError(f"the PostgreSQL state database {where} is not empty ({n} tables, "
                             "views or sequences): restore into a new empty database (docs/"
                             "storage.md), or pass --replace to replace it (its content is "
                             "dumped to the data folder first)")
        major = server_major(conn)
        if n:
            find_tool("pg_dump", major)
        tool, _ = find_tool("pg_restore", int(entry.get("pg_dump_major", major)))
        return _PgRestorePlan(tool, n)
    finally:
        conn.close()


def _pg_restore(cfg: Config, src: Path, entry: dict[str, Any], plan: _PgRestorePlan,
                say: Callable[[str], None]) -> dict[str, Any]:
    url = str(cfg.state.url)
    kept = None
    if plan.nonempty:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = cfg.state_db.with_name(f"{PG_DUMP}.pre-restore-{stamp}")
        kept.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o077)
        try:
            with snapshot(url) as snap:
                dump(snap, kept)
        finally:
            os.umask(old_umask)
        say(f"kept the previous state database as {kept}")
    run_tool([plan.pg_restore, "--single-transaction", "--exit-on-error", "--no-owner",
              "--no-acl", *(["--clean", "--if-exists"] if plan.nonempty else []),
              f"--dbname={url}", str(src)], "pg_restore")
    conn = open_pg(url)
    try:
        counts = _count_rows(conn)
    finally:
        conn.close()
    if counts != entry.get("counts"):
        raise InputFileError(f"{src}: restored, but the row counts {counts} differ from the "
                             f"manifest's {entry.get('counts')}: check the database")
    drained = drained_path(cfg.state_db)
    for p in (Path(f"{drained}-wal"), Path(f"{drained}-shm"), drained):
        p.unlink(missing_ok=True)
    say(f"state database restored into {redacted_url(url)}: {counts['device']} devices, "
        f"{counts['txn']} transactions, {counts['rating']} ratings")
    return {"kept": str(kept) if kept else None, "counts": counts}


def _restore_state(src: Path, target: Path, live: bool, say: Callable[[str], None]
                   ) -> dict[str, Any]:
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = None
    if target.exists():
        kept = target.with_name(f"{target.name}.pre-restore-{stamp}")
        _sqlite_copy(target, kept)  # consistent, -wal included
        say(f"kept the previous state database as {kept}")
    if live:
        # Into the open database through SQLite, page by page under its write lock.
        s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        d = sqlite3.connect(str(target), timeout=60.0)
        try:
            s.backup(d)
        finally:
            d.close()
            s.close()
    else:
        for p in (Path(f"{target}-wal"), Path(f"{target}-shm"), target):
            p.unlink(missing_ok=True)
        old_umask = os.umask(0o077)
        try:
            _sqlite_copy(src, target)
        finally:
            os.umask(old_umask)
        c = sqlite3.connect(str(target))
        try:
            c.execute("PRAGMA journal_mode=WAL")
        finally:
            c.close()
        drained = drained_path(target)
        for p in (Path(f"{drained}-wal"), Path(f"{drained}-shm"), drained):
            p.unlink(missing_ok=True)
    counts = _counts(target)
    say(f"state database restored: {counts['device']} devices, {counts['txn']} transactions, "
        f"{counts['rating']} ratings")
    return {"kept": str(kept) if kept else None, "counts": counts}


def _restore_influx(cfg: Config, folder: Path, backup_db: str, say: Callable[[str], None]
                    ) -> dict[str, Any]:
    influxd = _influxd()
    db = cfg.influx.database
    host = cfg.influx.backup_address
    src = str(folder / "influx")
    if db not in _databases(cfg):
        _run_influxd([influxd, "restore", "-portable", "-host", host, "-db", backup_db,
                      "-newdb", db, src], "influxd restore")
        _wait_shards(cfg, db)
        say(f"InfluxDB database {db!r} restored")
        return {"mode": "new database"}
    tmp = f"{db}_restore_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
    _run_influxd([influxd, "restore", "-portable", "-host", host, "-db", backup_db,
                  "-newdb", tmp, src], "influxd restore")
    try:
        _wait_shards(cfg, tmp)
        written = _merge(cfg, tmp, db)
    finally:
        _q(cfg, f'DROP DATABASE "{tmp}"')
    say(f"InfluxDB: {sum(written.values())} points copied into the existing database {db!r}")
    return {"mode": "merged", "written": written}


def _wait_shards(cfg: Config, db: str, timeout_s: float = 120.0) -> None:
    """Wait until InfluxDB has opened the restored shards: for a moment after `influxd restore`
    queries fail with "shard is disabled" (influxdata/influxdb#11935, #19510) or "engine is
    closed" (the shard is being reopened)."""
    deadline = time.monotonic() + timeout_s
    ok = 0
    while ok < 3:  # three answers in a row: the shards are open, not just one of them yet
        try:
            _q(cfg, "SELECT * FROM /.*/ LIMIT 1", db)
            ok += 1
            time.sleep(0.2)
        except QueryRefused as exc:
            ok = 0
            transient = any(t in str(exc) for t in ("shard is disabled", "engine is closed"))
            if not transient or time.monotonic() > deadline:
                raise ServiceUnavailable(f"InfluxDB did not open the restored database {db!r}: "
                                         f"{exc}; see InfluxDB's log") from None
            time.sleep(0.5)


def _merge(cfg: Config, src: str, dest: str) -> dict[str, int]:
    """Copy every point of database `src` into `dest`, per retention policy and measurement,
    a week of time per query (memory)."""
    written: dict[str, int] = {}
    have = {str(r["name"]) for r in _q(cfg, f'SHOW RETENTION POLICIES ON "{dest}"')}
    for rp in _q(cfg, f'SHOW RETENTION POLICIES ON "{src}"'):
        name = str(rp["name"])
        if name not in have:
            dur = str(rp["duration"])
            _q(cfg, f'CREATE RETENTION POLICY "{name}" ON "{dest}" DURATION '
                    f'{"INF" if dur == "0s" else dur} REPLICATION 1')
        for row in _q(cfg, f'SHOW MEASUREMENTS ON "{src}"', src):
            meas = str(row["name"]).replace("\\", "\\\\").replace('"', '\\"')
            frm = f'"{src}"."{name}"."{meas}"'
            first = _q(cfg, f"SELECT * FROM {frm} ORDER BY time ASC LIMIT 1", src)  # noqa: S608
            if not first:
                continue
            last = _q(cfg, f"SELECT * FROM {frm} ORDER BY time DESC LIMIT 1", src)  # noqa: S608
            lo, hi = int(first[0]["time"]), int(last[0]["time"]) + 1
            week = 7 * 24 * _HOUR_NS
            for t in range(lo, hi, week):
                for r in _q(cfg, f'SELECT * INTO "{dest}"."{name}"."{meas}" FROM {frm} '  # noqa: S608
                                 f"WHERE time >= {t} AND time < {min(t + week, hi)} GROUP BY *",
                            src):
                    written[f"{name}.{row['name']}"] = (written.get(f"{name}.{row['name']}", 0)
                                                        + int(r.get("written") or 0))
    return written

