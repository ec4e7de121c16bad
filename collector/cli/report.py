"""`evalterm report`: per-window summary from InfluxDB."""

from __future__ import annotations

import argparse
import re
from typing import Any

from collector.cli.common import load
from collector.cli.table import render_table
from collector.config import Config
from collector.errors import UsageError

__all__ = ["add_parsers", "report", "summary"]

HEADERS = {
    "zh": ("窗口", "办结", "已评", "参评率", "满意率", "差评", "未关联评价"),
    "en": ("window", "done", "rated", "coverage", "satisfied", "bad", "unlinked ratings"),
}

# An InfluxQL duration literal (1h, 7d, 1h30m): the only text of the user's put into the queries.
_DURATION = re.compile(r"(?:[0-9]+(?:ns|u|µ|ms|s|m|h|d|w))+")


def summary(cfg: Config, since: str = "1d") -> dict[str, dict[str, Any]]:
    """{hall/window: {completed, rated, ratings, unlinked, satisfied, bad}} over the last
    `since` (validated: it is spliced into the query)."""
    from collector.influx import influxql

    if not _DURATION.fullmatch(since):
        raise UsageError(f"--since {since!r}: expected an InfluxQL duration such as 1h, 1d, 7d")
    i = cfg.influx
    db = i.database if i.version == 1 else i.bucket
    where = f"WHERE time > now() - {since}"
    rows: dict[str, dict[str, Any]] = {}

    def add(q: str, names: tuple[str, ...]) -> None:
        for s in influxql(i.url, db, q, username=i.username, password=i.password):
            tags = s.get("tags") or {}
            name = f"{tags.get('hall', '?')}/{tags.get('window', '?')}"  # type: ignore[union-attr]
            vals = s["values"][0]  # type: ignore[index]
            for key, v in zip(names, vals[1:], strict=True):  # type: ignore[arg-type]
                rows.setdefault(name, {})[key] = v

    add('SELECT sum("completed_n"), sum("rated") FROM "transaction" '
        f'{where} GROUP BY "hall", "window"', ("completed", "rated"))
    add(f'SELECT count("value"), mean("satisfied"), sum("bad") FROM "rating" {where} '
        'GROUP BY "hall", "window"', ("ratings", "satisfied", "bad"))
    add(f'SELECT count("value") FROM "rating" {where} AND "link"=\'unlinked\' '
        'GROUP BY "hall", "window"', ("unlinked",))
    return rows


def _share(part: Any, whole: Any) -> str:
    return f"{part / whole:.1%}" if part is not None and whole else ""


def report(cfg: Config, since: str = "1d", lang: str = "zh") -> str:
    rows = summary(cfg, since)
    table = []
    for name in sorted(rows):
        r = rows[name]
        sat = r.get("satisfied")
        table.append((name, r.get("completed") or 0, r.get("rated") or 0,
                      _share(r.get("rated") or 0, r.get("completed")),
                      "" if sat is None else f"{sat:.1%}", r.get("bad") or 0,
                      r.get("unlinked") or 0))
    if not table:
        empty = "（最近 {0} 没有数据）" if lang == "zh" else "(no data in the last {0})"
        return empty.format(since)
    return render_table(HEADERS[lang], table)


def cmd_report(args: argparse.Namespace) -> int:
    print(report(load(args), args.since, args.lang))
    return 0


def add_parsers(sub: Any) -> Any:
    """Register `report` on the main parser's subparsers; returns its own subparsers, where
    other report kinds register (`report month`, collector/manager/cli.py). Without a
    subcommand, `report` prints the per-window summary."""
    rep = sub.add_parser("report", help="per-window summary from InfluxDB (or: report month)")
    rep.add_argument("--since", default="1d", help="a duration, e.g. 1h, 1d, 7d")
    rep.add_argument("--lang", choices=("zh", "en"), default="zh")
    rep.set_defaults(func=cmd_report)
    return rep.add_subparsers(dest="report_cmd", required=False)
