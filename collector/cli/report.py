"""`evalterm report`: per-window summary from InfluxDB."""

from __future__ import annotations

import argparse
import re
from typing import Any

from collector.cli.common import load
from collector.config import Config
from collector.errors import UsageError

__all__ = ['add_parsers', 'report']

# An InfluxQL duration literal (1h, 7d, 1h30m): the only text of the user's put into the queries.
_DURATION = re.compile(r"(?:[0-9]+(?:ns|u|µ|ms|s|m|h|d|w))+")


def report(cfg: Config, since: str = "1d") -> str:
    from collector.influx import influxql

    if not _DURATION.fullmatch(since):
        raise UsageError(f"--since {since!r}: expected an InfluxQL duration such as 1h, 1d, 7d")
    i = cfg.influx
    db = i.database if i.version == 1 else i.bucket
    where = f"WHERE time > now() - {since}"
    rows: dict[str, dict[str, Any]] = {}

    def add(q: str, key: str) -> None:
        for s in influxql(i.url, db, q, username=i.username, password=i.password):
            tags = s.get("tags") or {}
            name = f"{tags.get('hall', '?')}/{tags.get('window', '?')}"
            cols, vals = s["columns"], s["values"][0]  # type: ignore[index]
            for c, v in zip(cols[1:], vals[1:], strict=True):  # type: ignore[arg-type]
                rows.setdefault(name, {})[f"{key}{c}"] = v

    add(f'SELECT sum("completed_n") AS completed, sum("rated") AS rated, sum("unrated") AS unrated '
        f'FROM "transaction" {where} GROUP BY "hall", "window"', "t_")
    add(f'SELECT count("value") AS ratings, mean("satisfied") AS sat, sum("bad") AS bad '
        f'FROM "rating" {where} GROUP BY "hall", "window"', "r_")
    add(f'SELECT count("value") AS unlinked FROM "rating" {where} AND "link"=\'unlinked\' '
        f'GROUP BY "hall", "window"', "u_")
    lines = [f"{'window':<16}{'办结 done':>10}{'已评 rated':>11}{'未评 unrated':>13}"
             f"{'评价 ratings':>13}{'未关联 unlinked':>16}{'满意率 sat.':>12}{'差评 bad':>9}"]
    for name in sorted(rows):
        r = rows[name]
        sat = r.get("r_sat")
        lines.append(
            f"{name:<16}{r.get('t_completed') or 0:>10}{r.get('t_rated') or 0:>11}"
            f"{r.get('t_unrated') or 0:>13}{r.get('r_ratings') or 0:>13}"
            f"{r.get('u_unlinked') or 0:>16}{'' if sat is None else f'{sat:.1%}':>12}"
            f"{r.get('r_bad') or 0:>9}"
        )
    return "\n".join(lines)

def cmd_report(args: argparse.Namespace) -> int:
    print(report(load(args), args.since))
    return 0

def add_parsers(sub: Any) -> None:
    """Register `report` on the main parser's subparsers."""
    rep = sub.add_parser("report", help="per-window summary from InfluxDB")
    rep.add_argument("--since", default="1d", help="InfluxQL duration, e.g. 1h, 1d, 7d")
    rep.set_defaults(func=cmd_report)
