"""`evalterm backup`, `evalterm restore` (collector/backup.py), `evalterm state copy` (SQLite
state into PostgreSQL, collector/statecopy.py) and `evalterm influx setup|rollup` (InfluxDB
retention policies and hourly rollups, collector/retention.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from collector.cli.common import load, setup_logging
from collector.errors import UsageError

__all__ = ["add_parsers"]


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_backup(args: argparse.Namespace) -> int:
    from collector.backup import backup

    cfg = load(args)
    if args.keep and not args.dated:
        raise UsageError("--keep deletes older dated backups: use it with --dated")
    result = backup(cfg, Path(args.dir), influx=not args.no_influx, dated=args.dated,
                    keep=args.keep)
    c = result.manifest["state"]["counts"]
    influx = result.manifest["influx"]
    print(f"backup written to {result.folder}: state database ({c['device']} devices, "
          f"{c['txn']} transactions, {c['rating']} ratings)"
          + (f", InfluxDB database {influx['database']!r}" if influx else ", no InfluxDB"))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from collector.backup import restore

    cfg = load(args)
    if args.no_state and args.no_influx:
        raise UsageError("--no-state and --no-influx together restore nothing: drop one")
    restore(cfg, Path(args.dir), influx=not args.no_influx, state=not args.no_state,
            live=args.live, replace=args.replace, say=_say)
    if args.live and not args.no_state:
        print("restored; restart the collector now (systemctl restart evalterm-collector): it "
              "still holds the replaced state in memory")
    else:
        print("restored; start the collector (systemctl start evalterm-collector): its drainer "
              "writes the restored outbox to InfluxDB again")
    return 0


def cmd_state_copy(args: argparse.Namespace) -> int:
    from collector.cli.table import render_table
    from collector.statecopy import copy_state

    cfg = load(args)
    url = args.url or cfg.state.url
    if not url:
        raise UsageError("give the PostgreSQL database's URL (postgresql://user@host/db), or set "
                         "[state] url")
    counts = copy_state(cfg, url, say=_say)
    print(render_table(["table", "rows"], sorted(counts.items())))
    print(f"{sum(counts.values())} rows in {len(counts)} tables copied and counted on both "
          f"sides; {cfg.state_db} is unchanged. Now set [state] url to this database "
          "(collector.toml) and start the collector")
    return 0


def _influx_v1(args: argparse.Namespace) -> Any:
    cfg = load(args)
    if cfg.influx.version != 1:
        raise UsageError("retention policies and continuous queries are InfluxDB 1.x features; "
                         "with 2.x set the bucket's retention (influx bucket update --retention)")
    return cfg


def cmd_influx_setup(args: argparse.Namespace) -> int:
    from collector import retention

    cfg = _influx_v1(args)
    setup_logging("WARNING")
    ran = retention.apply(cfg)
    for stmt in ran:
        print(stmt)
    print(f"InfluxDB database {cfg.influx.database!r}: retention policies and continuous queries "
          + ("updated" if ran else "already as configured"))
    return 0


def cmd_influx_rollup(args: argparse.Namespace) -> int:
    from collector import retention

    cfg = _influx_v1(args)
    end = time.time_ns()
    written = retention.rollup(cfg, end - args.days * 86400 * 10**9, end)
    print(", ".join(f"{k}: {v}" for k, v in written.items())
          + f" (hourly rollup points of the last {args.days} days rewritten)")
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def add_parsers(sub: Any) -> None:
    """Register `backup`, `restore`, `state` and `influx` on the main parser's subparsers."""
    b = sub.add_parser("backup", help="back up the state database and InfluxDB into a folder")
    b.add_argument("dir", help="a new or empty folder (with --dated: the folder of the backups)")
    b.add_argument("--dated", action="store_true",
                   help="write a new folder YYYYmmddTHHMMSSZ under DIR (for a timer)")
    b.add_argument("--keep", type=_positive, default=0,
                   help="with --dated: then delete all but the newest KEEP backups in DIR")
    b.add_argument("--no-influx", action="store_true", help="the state database only")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", help="restore a backup made by `evalterm backup`")
    r.add_argument("dir", help="the backup folder (the one holding manifest.json)")
    r.add_argument("--no-influx", action="store_true", help="the state database only")
    r.add_argument("--no-state", action="store_true", help="InfluxDB only")
    r.add_argument("--live", action="store_true",
                   help="replace the state database although a running collector has it open "
                        "(restart the collector right after; SQLite only)")
    r.add_argument("--replace", action="store_true",
                   help="with [state] url: restore into a PostgreSQL database that is not empty "
                        "(its content is first dumped to the data folder)")
    r.set_defaults(func=cmd_restore)
    st = sub.add_parser("state", help="the state database: move it from SQLite to PostgreSQL")
    st_sub = st.add_subparsers(dest="state_command", required=True)
    sc = st_sub.add_parser("copy", help="copy the stopped collector's SQLite state database into "
                           "a new, empty PostgreSQL database, and count the rows on both sides")
    sc.add_argument("url", nargs="?", default="",
                    help="postgresql://user@host:port/db (no password: PGPASSWORD or "
                         "PGPASSFILE); default: [state] url")
    sc.set_defaults(func=cmd_state_copy)
    i = sub.add_parser("influx", help="InfluxDB 1.x retention policies and hourly rollups")
    i_sub = i.add_subparsers(dest="influx_command", required=True)
    i_sub.add_parser("setup", help="create or update the retention policies and continuous "
                     "queries now (the drainer does it when it creates the database)"
                     ).set_defaults(func=cmd_influx_setup)
    ru = i_sub.add_parser("rollup", help="recompute the hourly rollups of the last days (late "
                          "ratings; the continuous queries cover the last two hours)")
    ru.add_argument("--days", type=_positive, default=8,
                    help="how many days back (default 8: a device's week-old outbox, and a day)")
    ru.set_defaults(func=cmd_influx_rollup)
