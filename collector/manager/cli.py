"""`evalterm audit verify`, `case open|list|user-add`, `directory import`, `export day`,
`report month` (issue 17).

Register with `add_parsers(subparsers)`; each command gets `args.func(args) -> int`.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from pathlib import Path
from typing import Any

from collector.clock import now_ms
from collector.manager import ManagerError, audit
from collector.manager.cases import CaseService
from collector.manager.deadlines import Calendar, DeadlineRule, load_calendar

__all__ = ["add_parsers"]


def _conn(args: argparse.Namespace) -> sqlite3.Connection:
    from collector.cli.common import load
    from collector.db import connect
    from collector.manager import ManagerError

    path = Path(args.state_db) if args.state_db else load(args).state_db
    if not path.exists():
        raise ManagerError("not_found", f"no state database at {path}: give the collector's "
                           "(--state-db, or -c with its configuration)")
    return connect(path)


def _service(args: argparse.Namespace) -> CaseService:
    cal = load_calendar(args.holidays) if getattr(args, "holidays", None) else Calendar()
    return CaseService(_conn(args), DeadlineRule(default_days=args.days, calendar=cal), now_ms)


def _audit_verify(args: argparse.Namespace) -> int:
    res = audit.verify(_conn(args), expect_head=args.head)
    if not res.ok:
        print(f"audit log BROKEN at record {res.seq}: {res.problem} "
              f"({res.records} records verified before it)", file=sys.stderr)
        return 1
    print(f"audit log ok: {res.records} records, head {res.head}")
    return 0


def _case_open(args: argparse.Namespace) -> int:
    ids = _service(args).open_cases(args.hall)
    print(f"opened {len(ids)} case(s)")
    return 0


def _case_list(args: argparse.Namespace) -> int:
    svc = _service(args)
    today = svc._local_date(now_ms())
    for c in svc.list(args.user, open_only=args.open):
        flag = "逾期" if c.overdue(today) else ""
        print(f"{c.case_id}\t{c.hall}\t{c.window}\t{c.txn}\t{c.level}\t{c.state}\t{c.due}\t{flag}")
    return 0


def _user_add(args: argparse.Namespace) -> int:
    pw = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    _service(args).add_user("admin", args.username, args.role, args.hall, pw, args.staff_id)
    print(f"user {args.username} added")
    return 0


def _dir_import(args: argparse.Namespace) -> int:
    from collector.manager.directory import import_csv

    n = import_csv(_conn(args), args.kind, args.file)
    print(f"imported {n} {args.kind} row(s)")
    return 0


def _export_day(args: argparse.Namespace) -> int:
    from datetime import date

    from collector.manager.export import day_rows, render

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        raise ManagerError("bad_date", f"--date must be YYYY-MM-DD, not {args.date!r}") from None
    text = render(day_rows(_conn(args), args.hall, day), args.format)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _report_month(args: argparse.Namespace) -> int:
    from pathlib import Path

    from collector.manager.report import month_figures, write_pdf, write_xlsx

    figs = month_figures(_conn(args), args.hall, args.month)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pdf, xlsx = out / f"{args.hall}-{args.month}.pdf", out / f"{args.hall}-{args.month}.xlsx"
    pages = write_pdf(figs, args.hall, args.month, pdf)
    write_xlsx(figs, args.hall, args.month, xlsx)
    print(f"wrote {pdf} ({pages} page(s)) and {xlsx}")
    return 0


def _wrap(fn: object) -> object:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)  # type: ignore[operator, no-any-return]
        except ManagerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (OSError, sqlite3.Error, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


def add_parsers(sub: argparse._SubParsersAction, report_sub: Any = None) -> None:  # type: ignore[type-arg]
    """Register audit, case, directory and export; `report month` under `report_sub` (the
    subcommands of `evalterm report`), or a `report` group of its own without it."""
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-db", help="the collector's state database (default: the one "
                       "of the configuration, -c)")

    a = sub.add_parser("audit", help="the hash-chained audit log").add_subparsers(dest="audit_cmd",
                                                                                required=True)
    v = a.add_parser("verify", help="check the chain; report the first broken record")
    common(v)
    v.add_argument("--head", help="a head hash kept earlier: detects a removed tail")
    v.set_defaults(func=_wrap(_audit_verify))

    c = sub.add_parser("case", help="差评 follow-up cases").add_subparsers(dest="case_cmd",
                                                                         required=True)
    for name, fn in (("open", _case_open), ("list", _case_list)):
        p = c.add_parser(name)
        common(p)
        p.add_argument("--days", type=int, default=5, help="working days to close a case")
        p.add_argument("--holidays", help="holiday calendar CSV (date,off|work)")
        if name == "open":
            p.add_argument("--hall")
        else:
            p.add_argument("--user", required=True)
            p.add_argument("--open", action="store_true")
        p.set_defaults(func=_wrap(fn))
    u = c.add_parser("user-add", help="add a user (password on stdin)")
    common(u)
    u.add_argument("username")
    u.add_argument("--role", required=True, choices=("manager", "lead", "inspector"))
    u.add_argument("--hall", required=True)
    u.add_argument("--staff-id")
    u.set_defaults(func=_wrap(_user_add), days=5, holidays=None)

    d = sub.add_parser("directory", help="names of services, windows, staff").add_subparsers(
        dest="dir_cmd", required=True)
    i = d.add_parser("import", help="import a CSV from the business system")
    common(i)
    i.add_argument("kind", choices=("service", "window", "staff"))
    i.add_argument("file")
    i.set_defaults(func=_wrap(_dir_import))

    e = sub.add_parser("export", help="upward export").add_subparsers(dest="export_cmd",
                                                                     required=True)
    x = e.add_parser("day", help="one day's ratings and follow-up, national fields")
    common(x)
    x.add_argument("--hall", required=True)
    x.add_argument("--date", required=True)
    x.add_argument("--format", choices=("csv", "json"), default="csv")
    x.add_argument("--out", help="file to write (default: stdout)")
    x.set_defaults(func=_wrap(_export_day))

    r = report_sub if report_sub is not None else sub.add_parser(
        "report", help="assessment reports").add_subparsers(dest="report_cmd", required=True)
    m = r.add_parser("month", help="monthly assessment: PDF and XLSX")
    common(m)
    m.add_argument("--hall", required=True)
    m.add_argument("--month", required=True, help="YYYY-MM")
    m.add_argument("--out-dir", default=".")
    m.set_defaults(func=_wrap(_report_month))

    from collector.manager import users  # evalterm user add|list|passwd (the web UI's accounts)

    users.add_parsers(sub, common, _wrap)
