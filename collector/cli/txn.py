"""`evalterm txn import`: backfill completed transactions from a CSV file."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from collector.cli.common import load, now_ms, setup_logging
from collector.db import connect
from collector.errors import InputFileError
from collector.protocol import feed_message

__all__ = ['add_parsers', 'csv_to_feed']


CSV_COLUMNS = ("id", "window", "txn", "staff_id", "staff_name", "staff_badge", "service_code",
               "service_name", "started", "completed", "outcome")

def _csv_time(value: str, column: str, line: int) -> int:
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "１２３" or "١٢٣" (int() takes them)
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"line {line}: {column} {value!r} is neither epoch ms nor ISO 8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"line {line}: {column} {value!r} has no UTC offset (e.g. +08:00)")
    return int(dt.timestamp() * 1000)

def csv_to_feed(path: Path) -> list[tuple[int, bytes | str]]:
    """Rows of a backfill CSV as feed messages; a row that cannot be converted is an error text."""
    out: list[tuple[int, bytes | str]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputFileError(f"{path}: missing columns {', '.join(missing)}")
        for n, row in enumerate(reader, start=2):
            try:
                started = _csv_time(row["started"], "started", n)
                completed = _csv_time(row["completed"], "completed", n)
            except ValueError as exc:
                out.append((n, str(exc)))
                continue
            out.append((n, feed_message(
                "txn_completed", id=row["id"], window=row["window"], ts=completed, txn=row["txn"],
                staff={"id": row["staff_id"], "name": row["staff_name"],
                       "badge": row["staff_badge"]},
                service={"code": row["service_code"], "name": row["service_name"]},
                started=started, completed=completed, outcome=row["outcome"])))
    return out

def cmd_txn_import(args: argparse.Namespace) -> int:
    from collector.ingest import Inbound, Ingest
    from collector.protocol import feed_topic

    cfg = load(args)
    setup_logging("WARNING")
    rows = csv_to_feed(Path(args.file))
    ingest = Ingest(connect(cfg.state_db), cfg)
    topic = feed_topic(cfg.mqtt.topic_prefix, args.hall)
    counts: dict[str, int] = {}
    errors = 0
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        items, lines = [], []
        for n, msg in chunk:
            if isinstance(msg, str):
                print(f"error: {msg}", file=sys.stderr)
                errors += 1
                continue
            items.append(Inbound("import", topic, msg, now_ms()))
            lines.append(n)
        for n, outcome in zip(lines, ingest.process_batch(items, now_ms()), strict=True):
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if outcome.status in ("rejected", "error"):
                errors += 1
                print(f"error: line {n}: {outcome.reason}: {outcome.detail}", file=sys.stderr)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"imported {args.file}: {summary or 'nothing'}; {errors} error(s)")
    return 1 if errors else 0

def add_parsers(sub: Any) -> None:
    """Register the `txn` command group on the main parser's subparsers."""
    txn = sub.add_parser("txn", help="transactions from the business system")
    txn_sub = txn.add_subparsers(dest="txn_command", required=True)
    imp = txn_sub.add_parser("import", help="backfill completed transactions from a CSV file")
    imp.add_argument("file")
    imp.add_argument("--hall", required=True)
    imp.set_defaults(func=cmd_txn_import)
