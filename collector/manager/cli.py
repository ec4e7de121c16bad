"""`evalterm audit verify`, `case open|list|show|verify|rectify|callback|close|appeal|decide|
user-add`, `directory import`, `export day`, `report month` (issue 17).

The case steps act as `--user` (a user of `case user-add`; the role and hall checks are
CaseService's): the CLI is run by the administrator on the collector's host, so it trusts the name.

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

    if not args.state_db and load(args).state.url:
        return connect(load(args).state.url)
    path = Path(args.state_db) if args.state_db else load(args).state_db
    if not path.exists():
        raise ManagerError("not_found", f"no state database at {path}: give the collector's "
                           "(--state-db, or -c with its configuration)")
    return connect(path)


def _service(args: argparse.Namespace) -> CaseService:
    """The deadline rule of `--days`/`--holidays`, else the configuration's [manager] rule."""
    if getattr(args, "days", None) is None:
        from collector.cli.common import load
        from collector.manager.run import case_service

        return case_service(load(args), _conn(args), now_ms)
    cal = load_calendar(args.holidays) if getattr(args, "holidays", None) else Calendar()
    return CaseService(_conn(args), DeadlineRule(default_days=args.days, calendar=cal), now_ms)


def _anchors(args: argparse.Namespace) -> list[tuple[int, str, int]]:
    """The audit heads the service wrote into InfluxDB (`audit_head`)."""
    from collector.cli.common import load
    from collector.influx import influxql

    i = load(args).influx
    out = []
    for s in influxql(i.url, i.database, 'SELECT "seq", "hash" FROM "audit_head"',
                      username=i.username, password=i.password):
        for at, seq, h in s.get("values") or []:  # type: ignore[attr-defined]
            if isinstance(seq, int | float) and isinstance(h, str):
                out.append((int(seq), h, int(at)))
    return out


def _audit_verify(args: argparse.Namespace) -> int:
    conn = _conn(args)
    res = audit.verify(conn, expect_head=args.head)
    if not res.ok:
        print(f"audit log BROKEN at record {res.seq}: {res.problem} "
              f"({res.records} records verified before it)", file=sys.stderr)
        return 1
    print(f"audit log ok: {res.records} records, head {res.head}")
    if args.anchors:
        anchors = _anchors(args)
        a = audit.check_anchors(conn, anchors)
        if not a.ok:
            print(f"audit log BROKEN at record {a.seq}: {a.problem} ({a.records} anchors held "
                  "before it)", file=sys.stderr)
            return 1
        if not anchors:
            print("no anchors in InfluxDB yet (the service writes them as the log grows)")
        else:
            print(f"anchors ok: {a.records} heads kept in InfluxDB are in the log")
    return 0


def _case_open(args: argparse.Namespace) -> int:
    ids = _service(args).open_cases(args.hall)
    print(f"opened {len(ids)} case(s)")
    return 0


_STATES = {"open": ("待核实", "open"), "verified": ("已核实", "verified"),
           "rectified": ("已整改", "rectified"), "called": ("已回访", "called back"),
           "closed": ("已办结", "closed"), "voided": ("已撤销（申诉通过）", "voided (appeal)")}
_APPEALS = {"pending": ("待审批", "pending"), "approved": ("已批准", "approved"),
            "refused": ("已驳回", "refused")}


def _tr(args: argparse.Namespace, zh: str, en: str) -> str:
    return en if getattr(args, "lang", "zh") == "en" else zh


def _case_list(args: argparse.Namespace) -> int:
    from collector.cli.table import render_table
    from collector.manager.directory import lookup

    svc = _service(args)
    today = svc._local_date(now_ms())
    en = args.lang == "en"
    rows = []
    for c in svc.list(args.user, open_only=args.open):
        n = lookup(svc.conn, c.hall, c.window, c.staff_id, c.service_code)
        rows.append([c.case_id, n.window, n.staff, c.txn, c.level, c.reason or "—",
                     _STATES[c.state][en], c.due.isoformat(),
                     _tr(args, "逾期", "OVERDUE") if c.overdue(today) else ""])
    if not rows:
        print(_tr(args, "没有案件", "no cases"))
        return 0
    head = (("case", "window", "staff", "txn", "level", "reason", "state", "due", "")
            if en else ("编号", "窗口", "工作人员", "办件编号", "等级", "原因", "状态", "期限", ""))
    print(render_table(head, rows, left=9))
    return 0


def _show(args: argparse.Namespace, svc: CaseService, case_id: int) -> None:
    from collector.cli.table import render_table
    from collector.manager.directory import lookup

    c = svc.get(args.user, case_id)
    n = lookup(svc.conn, c.hall, c.window, c.staff_id, c.service_code)
    en = args.lang == "en"
    today = svc._local_date(now_ms())
    due = c.due.isoformat() + (_tr(args, "（逾期）", " (overdue)") if c.overdue(today) else "")
    reached = None if c.reached is None else _tr(args, "是", "yes") if c.reached else _tr(
        args, "否", "no")
    fields = [
        (_tr(args, "案件", "case"), str(c.case_id)),
        (_tr(args, "状态", "state"), _STATES[c.state][en]),
        (_tr(args, "大厅/窗口", "hall/window"), f"{c.hall} / {n.window}"),
        (_tr(args, "工作人员", "staff"), n.staff + (f"（{n.badge}）" if n.badge else "")),
        (_tr(args, "事项", "service"), n.service or "—"),
        (_tr(args, "办件编号", "case number"), c.txn),
        (_tr(args, "等级/原因", "level/reason"), f"{c.level} / {c.reason or '—'}"),
        (_tr(args, "期限", "due"), due),
        (_tr(args, "核实", "finding"), c.finding or "—"),
        (_tr(args, "整改", "action"), c.action or "—"),
        (_tr(args, "回访", "callback"), "—" if reached is None else
         f"{_tr(args, '联系上', 'reached')}: {reached}; {c.citizen_view or '—'}"),
    ]
    print(render_table((_tr(args, "项目", "item"), _tr(args, "内容", "value")), fields, left=2))
    appeals = svc.conn.execute("SELECT appeal_id, filed_by, grounds, state, decided_by, note "
                               "FROM mgr_appeal WHERE case_id=? ORDER BY appeal_id",
                               (case_id,)).fetchall()
    if appeals:
        print()
        head = (("appeal", "filed by", "grounds", "state", "decided by", "note") if en else
                ("申诉", "申请人", "理由", "状态", "审批人", "意见"))
        print(render_table(head, [[a, b, g, _APPEALS[st][en], d or "—", note or "—"]
                                  for a, b, g, st, d, note in appeals], left=6))


def _case_show(args: argparse.Namespace) -> int:
    _show(args, _service(args), args.case_id)
    return 0


def _case_step(args: argparse.Namespace) -> int:
    """verify / rectify / callback / close, through CaseService as --user."""
    svc = _service(args)
    if args.step == "verify":
        c = svc.verify(args.user, args.case_id, args.finding)
    elif args.step == "rectify":
        c = svc.rectify(args.user, args.case_id, args.action)
    elif args.step == "callback":
        c = svc.callback(args.user, args.case_id, args.reached == "yes", args.view)
    else:
        c = svc.close(args.user, args.case_id)
    print(_tr(args, f"案件 {c.case_id}：{_STATES[c.state][0]}",
              f"case {c.case_id}: {_STATES[c.state][1]}"))
    return 0


def _case_appeal(args: argparse.Namespace) -> int:
    aid = _service(args).file_appeal(args.user, args.case_id, args.grounds)
    print(_tr(args, f"申诉 {aid} 已提交，等待另一位厅长审批（案件 {args.case_id}）",
              f"appeal {aid} filed for case {args.case_id}; another manager decides it"))
    return 0


def _case_decide(args: argparse.Namespace) -> int:
    c = _service(args).decide_appeal(args.user, args.appeal_id, args.decision == "approve",
                                     args.note)
    print(_tr(args, f"申诉 {args.appeal_id}：{'已批准' if args.decision == 'approve' else '已驳回'}"
                    f"；案件 {c.case_id}：{_STATES[c.state][0]}",
              f"appeal {args.appeal_id} {args.decision}d; case {c.case_id}: "
              f"{_STATES[c.state][1]}"))
    return 0


def _add_case_steps(c: Any, common: Any) -> None:
    """`case show|verify|rectify|callback|close|appeal|decide` (each as --user)."""
    def base(name: str, help_: str, fn: Any, id_name: str = "case_id") -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = c.add_parser(name, help=help_)
        common(p)
        p.add_argument(id_name, type=int)
        p.add_argument("--user", required=True, help="who acts (a user of case user-add)")
        p.add_argument("--lang", choices=("zh", "en"), default="zh")
        p.set_defaults(func=_wrap(fn), days=None, holidays=None)
        return p

    base("show", "one case, its steps and appeals", _case_show)
    base("verify", "核实: record the finding", _case_step).set_defaults(step="verify")
    c.choices["verify"].add_argument("--finding", required=True)
    base("rectify", "整改: record the action taken", _case_step).set_defaults(step="rectify")
    c.choices["rectify"].add_argument("--action", required=True)
    p = base("callback", "回访: record the callback", _case_step)
    p.set_defaults(step="callback")
    p.add_argument("--reached", required=True, choices=("yes", "no"),
                   help="whether the citizen was reached")
    p.add_argument("--view", default="", help="the citizen's view of the fix (e.g. 满意)")
    base("close", "办结 (hall manager)", _case_step).set_defaults(step="close")
    base("appeal", "申诉: ask to void a mistaken or malicious 差评", _case_appeal
         ).add_argument("--grounds", required=True)
    p = base("decide", "decide an appeal (a second manager)", _case_decide, "appeal_id")
    p.add_argument("decision", choices=("approve", "refuse"))
    p.add_argument("--note", default="")


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

    conn = _conn(args)
    figs = month_figures(conn, args.hall, args.month)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pdf, xlsx = out / f"{args.hall}-{args.month}.pdf", out / f"{args.hall}-{args.month}.xlsx"
    pages = write_pdf(figs, args.hall, args.month, pdf, audit.head(conn))
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
    v.add_argument("--anchors", action="store_true",
                   help="also hold the log against the heads the service kept in InfluxDB "
                        "(audit_head): detects a chain rewritten with new hashes")
    v.set_defaults(func=_wrap(_audit_verify))

    c = sub.add_parser("case", help="差评 follow-up cases").add_subparsers(dest="case_cmd",
                                                                         required=True)
    for name, fn in (("open", _case_open), ("list", _case_list)):
        p = c.add_parser(name, help="open a case for every 差评 without one" if name == "open"
                         else "the user's hall's cases, overdue first")
        common(p)
        p.add_argument("--days", type=int, help="working days to close a case (default: "
                       "[manager] followup_days and holidays_file of the configuration)")
        p.add_argument("--holidays", help="holiday calendar CSV (date,off|work)")
        if name == "open":
            p.add_argument("--hall")
        else:
            p.add_argument("--user", required=True)
            p.add_argument("--open", action="store_true", help="only cases not closed")
            p.add_argument("--lang", choices=("zh", "en"), default="zh")
        p.set_defaults(func=_wrap(fn))
    _add_case_steps(c, common)
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

    users.add_parsers(sub, common, _wrap, _service, _conn)
