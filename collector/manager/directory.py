"""The directory: services, windows and staff, by name, for everything a person reads.

Fed by a CSV import from the business system (`import_csv`) and by the feed, whose messages
already carry staff and service names (`learn_from_txn`). `lookup` turns ids into names.
CSV columns, by kind:
- service: code,name,department
- window: hall,window,name,services (services: codes separated by ';')
- staff: staff_id,name,badge,department,hall,windows (windows separated by ';')
"""

from __future__ import annotations

import csv
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from collector.db import is_postgres
from collector.manager import ManagerError

__all__ = ["COLUMNS", "Names", "import_csv", "learn_from_txn", "lookup"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "service": ("code", "name", "department"),
    "window": ("hall", "window", "name", "services"),
    "staff": ("staff_id", "name", "badge", "department", "hall", "windows"),
}
_TABLE = {"service": "dir_service", "window": "dir_window", "staff": "dir_staff"}
_KEY = {"service": ("code",), "window": ("hall", "window"), "staff": ("staff_id",)}


def import_csv(conn: sqlite3.Connection, kind: str, path: str | Path) -> int:
    """Upsert every row of the file (one transaction); returns the row count."""
    if kind not in COLUMNS:
        raise ManagerError("bad_kind", f"kind must be one of {', '.join(COLUMNS)}, not {kind!r}")
    cols = COLUMNS[kind]
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in cols if c not in (reader.fieldnames or [])]
        if missing:
            raise ManagerError("bad_csv", f"{path}: missing column(s) {', '.join(missing)}; "
                               f"a {kind} file has {','.join(cols)}")
        rows = []
        for n, r in enumerate(reader, 2):
            vals = tuple((r[c] or "").strip() for c in cols)
            if not vals[0] or not vals[1]:
                raise ManagerError("bad_csv", f"{path}:{n}: {cols[0]} and {cols[1]} are required")
            rows.append(vals)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # every column is given: updating the others on conflict replaces the row
        update = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in _KEY[kind])
        conn.executemany(f"INSERT INTO {_TABLE[kind]} ({','.join(cols)}) "  # noqa: S608
                         f"VALUES ({','.join('?' * len(cols))}) "
                         f"ON CONFLICT ({','.join(_KEY[kind])}) DO UPDATE SET {update}", rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(rows)


def learn_from_txn(conn: sqlite3.Connection, after_rowid: int = 0) -> int:
    """Fill names the directory lacks from what the feed said (txn.staff_name/service_name) of
    the transactions stored after `after_rowid` (0: all); an imported name is never
    overwritten. Reads first and writes only the missing names (the scan holds no write lock).
    Returns the highest txn rowid looked at: pass it next time to read only the new ones.
    Call outside a transaction, or inside one (then nothing else may write meanwhile)."""
    if is_postgres(conn):
        # No rowid there: every call reads all transactions (the NOT IN filters keep it
        # correct; a cursor column would take a schema step). Always returns 0.
        top, rows, span = 0, "", ()
    else:
        top = conn.execute("SELECT coalesce(max(rowid), 0) FROM txn").fetchone()[0]
        rows, span = "rowid > ? AND rowid <= ? AND ", (after_rowid, top)
    # min(): one row per id in both dialects (SQLite would take any row's bare columns)
    staff = conn.execute(
        "SELECT staff_id, min(staff_name), min(staff_badge), min(hall), min(window) FROM txn "  # noqa: S608
        f"WHERE {rows}staff_name IS NOT NULL AND staff_name != '' AND staff_id NOT IN "
        "(SELECT staff_id FROM dir_staff) GROUP BY staff_id", span).fetchall()
    services = conn.execute(
        f"SELECT service_code, min(service_name) FROM txn WHERE {rows}"  # noqa: S608
        "service_name IS NOT NULL AND service_name != '' AND service_code NOT IN (SELECT code "
        "FROM dir_service) GROUP BY service_code", span).fetchall()
    if not staff and not services:
        return int(top)
    outside = not conn.in_transaction
    if outside:
        conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT INTO dir_staff (staff_id, name, badge, hall, windows) "
                         "VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", staff)
        conn.executemany("INSERT INTO dir_service (code, name) VALUES (?,?) "
                         "ON CONFLICT DO NOTHING", services)
    except BaseException:
        if outside and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if outside:
        conn.execute("COMMIT")
    return int(top)


@dataclass(frozen=True)
class Names:
    window: str
    staff: str
    badge: str | None
    service: str
    department: str | None


def lookup(conn: sqlite3.Connection, hall: str, window: str | None = None,
           staff_id: str | None = None, service_code: str | None = None) -> Names:
    """Names for ids; an unknown id is shown as itself."""
    w = conn.execute("SELECT name FROM dir_window WHERE hall=? AND window=?",
                     (hall, window)).fetchone() if window else None
    s = conn.execute("SELECT name, badge, department FROM dir_staff WHERE staff_id=?",
                     (staff_id,)).fetchone() if staff_id else None
    v = conn.execute("SELECT name, department FROM dir_service WHERE code=?",
                     (service_code,)).fetchone() if service_code else None
    return Names(w[0] if w else (window or ""), s[0] if s else (staff_id or ""),
                 s[1] if s else None, v[0] if v else (service_code or ""),
                 (v[1] if v else None) or (s[2] if s else None))
