"""`evalterm txn import`: backfill completed transactions from a CSV file.

The file may be UTF-8 (with or without the BOM Excel writes) or GB18030/GBK (what Excel writes on
Chinese Windows). Times are epoch milliseconds or ISO 8601; one without a UTC offset is in the
hall's zone (`[detection] utc_offset`). Every problem of every row is listed with its line number,
and nothing is stored from a file with problems unless `--partial` asks for its good rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from collector.cli.common import load, now_ms, setup_logging
from collector.db import connect
from collector.errors import InputFileError
from collector.protocol import feed_message

__all__ = ["add_parsers", "csv_to_feed", "read_text"]


CSV_COLUMNS = ("id", "window", "txn", "staff_id", "staff_name", "staff_badge", "service_code",
               "service_name", "started", "completed", "outcome")
_EPOCH_MS = re.compile(r"[0-9]{1,16}")  # ASCII digits only: str.isdigit takes any script's
_OFFSET = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")


def read_text(path: Path) -> tuple[str, str]:
    """(text, encoding): UTF-8 (BOM or not) first, then GB18030 (a superset of GBK/GB2312)."""
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise InputFileError(f"{path}: neither UTF-8 nor GB18030/GBK text; save it from Excel as "
                         "'CSV UTF-8' and import again")


def _zone(offset: str) -> timezone:
    m = _OFFSET.fullmatch(offset)
    if not m:
        raise InputFileError(f"[detection] utc_offset {offset!r}: expected e.g. +08:00")
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return timezone(timedelta(minutes=-minutes if m.group(1) == "-" else minutes))


def _csv_time(value: str, column: str, zone: timezone) -> tuple[int | None, str]:
    """(epoch ms, "") or (None, the problem)."""
    value = value.strip()
    if _EPOCH_MS.fullmatch(value):
        return int(value), ""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None, f"{column} {value!r} is neither epoch ms nor an ISO 8601 time"
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return int(dt.timestamp() * 1000), ""


def csv_to_feed(path: Path, utc_offset: str = "+08:00"
                ) -> list[tuple[int, bytes | list[str]]]:
    """Rows of a backfill CSV as (line, feed message) or (line, its problems)."""
    from collector.protocol import ProtocolError, decode_feed_message

    text, _encoding = read_text(path)
    zone = _zone(utc_offset)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputFileError(f"{path}: missing columns {', '.join(missing)} (the first line "
                             f"must name the columns: {','.join(CSV_COLUMNS)})")
    out: list[tuple[int, bytes | list[str]]] = []
    for row in reader:
        n = reader.line_num
        problems = []
        short = [c for c in CSV_COLUMNS if row.get(c) is None]
        if short:
            problems.append(f"{len(short)} of {len(CSV_COLUMNS)} columns missing "
                            f"({', '.join(short)})")
        if None in row:
            problems.append(f"{len(row[None])} values more than the header has columns")  # type: ignore[index]
        started, why_s = _csv_time(row.get("started") or "", "started", zone)
        completed, why_c = _csv_time(row.get("completed") or "", "completed", zone)
        problems += [w for w in (why_s, why_c) if w and not short]
        if problems:
            out.append((n, problems))
            continue
        payload = feed_message(
            "txn_completed", id=row["id"], window=row["window"], ts=completed, txn=row["txn"],
            staff={"id": row["staff_id"], "name": row["staff_name"], "badge": row["staff_badge"]},
            service={"code": row["service_code"], "name": row["service_name"]},
            started=started, completed=completed, outcome=row["outcome"])
        try:  # the same checks the collector applies, so a bad row is found before storing
            decode_feed_message(payload)
        except ProtocolError as exc:
            out.append((n, [f"{exc.reason.value}: {exc.detail}"]))
            continue
        out.append((n, payload))
    return out


def cmd_txn_import(args: argparse.Namespace) -> int:
    from collector.ingest import Inbound, Ingest
    from collector.protocol import feed_topic

    cfg = load(args)
    setup_logging("WARNING")
    rows = csv_to_feed(Path(args.file), cfg.detection.utc_offset)
    bad = [(n, problems) for n, problems in rows if isinstance(problems, list)]
    for n, problems in bad:
        for problem in problems:
            print(f"error: line {n}: {problem}", file=sys.stderr)
    if bad and not args.partial:
        print(f"{args.file}: {len(bad)} of {len(rows)} rows have problems; nothing was "
              "imported. Correct them and import again, or add --partial to import the good "
              "rows only", file=sys.stderr)
        return 1
    ingest = Ingest(connect(cfg.state_target), cfg)
    topic = feed_topic(cfg.mqtt.topic_prefix, args.hall)
    counts: dict[str, int] = {}
    errors = len(bad)
    good = [(n, msg) for n, msg in rows if isinstance(msg, bytes)]
    for start in range(0, len(good), 500):
        chunk = good[start:start + 500]
        items = [Inbound("import", topic, msg, now_ms()) for _, msg in chunk]
        for (n, _), outcome in zip(chunk, ingest.process_batch(items, now_ms()), strict=True):
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
    imp = txn_sub.add_parser("import", help="backfill completed transactions from a CSV file "
                             "(UTF-8 or GB18030/GBK)")
    imp.add_argument("file")
    imp.add_argument("--hall", required=True)
    imp.add_argument("--partial", action="store_true",
                     help="import the good rows of a file that has problems")
    imp.set_defaults(func=cmd_txn_import)
