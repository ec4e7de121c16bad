"""Upward export: a day's ratings and follow-up in the national reporting fields (JSON or CSV).

One row per rated transaction completed on the hall's local date. A provincial platform adapter
maps these keys; nothing else needs to change.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from collector.manager.directory import lookup
from collector.reasons import REASON_LABELS

__all__ = ["FIELDS", "LEVEL_NAMES", "day_rows", "render"]

FIELDS = ("办件编号", "事项名称", "事项编码", "部门", "评价渠道", "评价时间", "等级", "等级名称",
          "差评原因", "整改情况", "回访结果")
LEVEL_NAMES = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}
_CASE_STATE = {"open": "待核实", "verified": "已核实", "rectified": "已整改", "called": "已回访",
               "closed": "已办结", "voided": "申诉成立，已撤销"}


def _ms(d: date, tz: timezone) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)


def day_rows(conn: sqlite3.Connection, hall: str, day: date,
             tz: timezone = timezone(timedelta(hours=8))) -> list[dict[str, Any]]:
    lo, hi = _ms(day, tz), _ms(day + timedelta(days=1), tz)
    rows = conn.execute(
        "SELECT t.txn, t.window, t.staff_id, t.service_code, t.service_name, t.level, r.reason, "
        "r.press_ms, t.completed_ms, m.state, m.action, m.reached, m.citizen_view FROM txn t "
        "LEFT JOIN rating r ON r.rating_id = t.rating_id "
        "LEFT JOIN mgr_case m ON m.hall = t.hall AND m.txn = t.txn "
        "WHERE t.hall = ? AND t.state = 'rated' AND t.completed_ms >= ? AND t.completed_ms < ? "
        "ORDER BY t.completed_ms, t.txn", (hall, lo, hi)).fetchall()
    out = []
    for (txn, window, staff, code, sname, level, reason, press_ms, done_ms, cstate, action,
         reached, view) in rows:
        n = lookup(conn, hall, window, staff, code)
        at = press_ms if press_ms is not None else done_ms
        callback = "" if reached is None else ("已联系：" + (view or "") if reached
                                               else "未联系上")
        out.append({
            "办件编号": txn, "事项名称": n.service if n.service != code else (sname or code),
            "事项编码": code, "部门": n.department or "", "评价渠道": "评价器",
            "评价时间": datetime.fromtimestamp(at / 1000, UTC).astimezone(tz).isoformat(),
            "等级": level, "等级名称": LEVEL_NAMES.get(level, ""),
            "差评原因": REASON_LABELS.get(reason, (reason,))[0] if reason else "",
            "整改情况": "" if cstate is None else (_CASE_STATE[cstate]
                                                + (("：" + action) if action else "")),
            "回访结果": callback,
        })
    return out


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
