"""Append-only, hash-chained audit log.

Each record: seq, at_ms, actor, action, subject, data (JSON), prev (hash of the previous record),
hash = SHA-256 over the canonical JSON of all other fields. `verify` walks the chain and names the
first record that was edited, removed or reordered; the head hash (`head`) is what the manager
keeps elsewhere so a cut-off tail is evident too (`verify(expect_head=...)`).

Anchors: the service writes the head (seq, hash) into InfluxDB whenever it moves (measurement
`audit_head`, docs/storage.md), a store with other permissions than the state database. A
chain rewritten from some record on, every later hash recomputed, passes `verify` on its own;
`check_anchors` holds it against the anchors: each anchored record must still be in the log
with the anchored hash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["GENESIS", "VerifyResult", "append", "check_anchors", "head", "record_hash",
           "verify"]

GENESIS = "0" * 64


def record_hash(seq: int, at_ms: int, actor: str, action: str, subject: str, data: str,
                prev: str) -> str:
    canon = json.dumps([seq, at_ms, actor, action, subject, data, prev],
                       ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def append(conn: sqlite3.Connection, at_ms: int, actor: str, action: str, subject: str,
           data: dict[str, Any]) -> str:
    """Append a record (inside the caller's transaction); returns its hash."""
    row = conn.execute("SELECT seq, hash FROM mgr_audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (1, GENESIS) if row is None else (row[0] + 1, row[1])
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    h = record_hash(seq, at_ms, actor, action, subject, text, prev)
    conn.execute("INSERT INTO mgr_audit (seq, at_ms, actor, action, subject, data, prev, hash) "
                 "VALUES (?,?,?,?,?,?,?,?)", (seq, at_ms, actor, action, subject, text, prev, h))
    return h


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM mgr_audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    head: str
    problem: str = ""
    seq: int | None = None


def verify(conn: sqlite3.Connection, expect_head: str | None = None) -> VerifyResult:
    prev, expected_seq, n = GENESIS, 1, 0
    for seq, at_ms, actor, action, subject, data, p, h in conn.execute(
            "SELECT seq, at_ms, actor, action, subject, data, prev, hash FROM mgr_audit "
            "ORDER BY seq"):
        if seq != expected_seq:
            return VerifyResult(False, n, prev, f"record {expected_seq} is missing (deleted); "
                                f"next present is {seq}", expected_seq)
        if p != prev:
            return VerifyResult(False, n, prev, f"record {seq} does not follow record {seq - 1} "
                                "(previous record deleted or edited)", seq)
        if record_hash(seq, at_ms, actor, action, subject, data, p) != h:
            return VerifyResult(False, n, prev, f"record {seq} was edited (hash mismatch)", seq)
        prev, expected_seq, n = h, seq + 1, n + 1
    if expect_head is not None and expect_head != prev:
        known = conn.execute("SELECT seq FROM mgr_audit WHERE hash = ?", (expect_head,)).fetchone()
        where = (f"the kept head is record {known[0]}, not the last" if known
                 else "the kept head is not in the log: records after it were removed")
        if not known:
            return VerifyResult(False, n, prev, where, n + 1)
    return VerifyResult(True, n, prev)


def check_anchors(conn: sqlite3.Connection, anchors: list[tuple[int, str, int]]
                  ) -> VerifyResult:
    """Hold the log against anchors kept elsewhere: (seq, hash, at_ms) of heads seen earlier.
    The first anchor whose record is gone or has another hash names where the log was
    rewritten or cut."""
    n = 0
    for seq, h, at_ms in sorted(anchors):
        row = conn.execute("SELECT hash FROM mgr_audit WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return VerifyResult(False, n, h, f"record {seq}, anchored at {at_ms} (epoch ms), is "
                                "no longer in the log: records were removed", seq)
        if row[0] != h:
            return VerifyResult(False, n, h, f"record {seq} has another hash than anchored at "
                                f"{at_ms} (epoch ms): the log was rewritten up to it", seq)
        n += 1
    last = max(anchors)[:2] if anchors else (0, GENESIS)
    return VerifyResult(True, n, last[1])
