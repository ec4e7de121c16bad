"""The monthly assessment report (月度考核): PDF (Chinese, charts) and XLSX, per window and staff.

Figures (from the state database's transactions and cases of the month, hall-local dates):
办结数 completed transactions; 参评率 rated / completed; 满意率 share of ratings at levels 3-5
(not a 差评); 满意指数 mean of 100/75/50/25/0 for levels 5..1. Standing against the hall's funnel
limits (binomial, 3 sigma around the hall's 满意率, narrowing with the unit's ratings): 正常 inside,
偏高/偏低 outside; there is no ranking. Follow-up: 整改率 cases rectified or further / cases not
voided; 按期整改率 closed on or before the due date / same; 回访率 called back (reached) / same;
回访满意率 citizens reached whose view is 满意 (非常满意/满意/基本满意) / reached (`case_flags`,
also used for the `followup` points in InfluxDB). Integrity flags: the detector's day verdicts of
severity >= 2 (可疑/严重) in the month, with their reasons, as kept in the state database's
`integrity_flag` (collector/detection/run.py); a window's own flags and each staff member's.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

from collector.detection.verdict import SEVERITY_NAMES
from collector.manager import ManagerError
from collector.manager.directory import lookup
from collector.reasons import REASON_LABELS, TIMEOUT_TAG

__all__ = ["FONT", "Flag", "Unit", "case_flags", "month_figures", "write_pdf", "write_xlsx"]

FONT = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
_WEIGHT = {5: 100.0, 4: 75.0, 3: 50.0, 2: 25.0, 1: 0.0}
_GOOD_VIEW = ("非常满意", "满意", "基本满意")


def case_flags(state: str, due: date, closed_local: date | None, reached: bool | None,
               citizen_view: str | None, today: date) -> dict[str, int]:
    """One case's part in the follow-up figures (the one definition of them): cases, open,
    overdue, rectified, on_time, called, called_good (a voided case counts nowhere)."""
    if state == "voided":
        return dict.fromkeys(("cases", "open", "overdue", "rectified", "on_time", "called",
                              "called_good"), 0)
    is_open = state != "closed"
    called = bool(reached)
    return {"cases": 1, "open": int(is_open), "overdue": int(is_open and today > due),
            "rectified": int(state in ("rectified", "called", "closed")),
            "on_time": int(state == "closed" and closed_local is not None and closed_local <= due),
            "called": int(called),
            "called_good": int(called and (citizen_view or "").strip() in _GOOD_VIEW)}


@dataclass(frozen=True)
class Flag:
    """An integrity flag of a day: severity 2 可疑 or 3 严重, and the detector's reasons."""

    day: str
    window: str
    severity: int
    reasons: str

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES[self.severity][0]


@dataclass
class Unit:
    key: str
    name: str
    completed: int = 0
    rated: int = 0
    good: int = 0
    weight_sum: float = 0.0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    cases: int = 0
    rectified: int = 0
    on_time: int = 0
    called: int = 0
    called_good: int = 0
    standing: str = ""
    flags: list[Flag] = field(default_factory=list)

    @staticmethod
    def _r(a: float, b: float) -> float | None:
        return None if b == 0 else a / b

    @property
    def coverage(self) -> float | None:
        return self._r(self.rated, self.completed)

    @property
    def satisfaction(self) -> float | None:
        return self._r(self.good, self.rated)

    @property
    def index(self) -> float | None:
        return self._r(self.weight_sum, self.rated)

    @property
    def bad(self) -> int:
        return self.rated - self.good

    def follow(self) -> tuple[float | None, float | None, float | None, float | None]:
        return (self._r(self.rectified, self.cases), self._r(self.on_time, self.cases),
                self._r(self.called, self.cases), self._r(self.called_good, self.called))


def _bounds(month: str, tz: timezone) -> tuple[int, int]:
    try:
        y, m = (int(x) for x in month.split("-"))
        lo = datetime(y, m, 1, tzinfo=tz)
    except ValueError:
        raise ManagerError("bad_month", f"month must be YYYY-MM, not {month!r}") from None
    hi = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=tz)
    return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)


def month_figures(conn: sqlite3.Connection, hall: str, month: str,
                  tz: timezone = timezone(timedelta(hours=8))) -> dict[str, list[Unit] | Unit]:
    """{'hall': Unit, 'windows': [...], 'staff': [...]} for the hall's month."""
    lo, hi = _bounds(month, tz)
    total = Unit(hall, hall)
    units: dict[str, dict[str, Unit]] = {"windows": {}, "staff": {}}

    def get(kind: str, key: str) -> Unit:
        if key not in units[kind]:
            n = lookup(conn, hall, window=key) if kind == "windows" else lookup(
                conn, hall, staff_id=key)
            units[kind][key] = Unit(key, n.window if kind == "windows" else n.staff)
        return units[kind][key]

    for window, staff, state, level, reason in conn.execute(
            "SELECT t.window, t.staff_id, t.state, t.level, r.reason FROM txn t "
            "LEFT JOIN rating r ON r.rating_id = t.rating_id WHERE t.hall=? "
            "AND t.completed_ms >= ? AND t.completed_ms < ?", (hall, lo, hi)):
        for u in (total, get("windows", window), get("staff", staff)):
            u.completed += 1
            if state == "rated" and level is not None:
                u.rated += 1
                u.weight_sum += _WEIGHT.get(int(level), 0.0)
                if level >= 3:
                    u.good += 1
                else:
                    k = reason or TIMEOUT_TAG
                    u.bad_reasons[k] = u.bad_reasons.get(k, 0) + 1
    for window, staff, state, due, closed_ms, reached, view in conn.execute(
            "SELECT window, staff_id, state, due, closed_ms, reached, citizen_view FROM mgr_case "
            "WHERE hall=? AND opened_ms >= ? AND opened_ms < ? AND state != 'voided'",
            (hall, lo, hi)):
        closed = None if closed_ms is None else datetime.fromtimestamp(
            closed_ms / 1000, UTC).astimezone(tz).date()
        # (`today` only decides `overdue`, which is not a monthly figure)
        f = case_flags(state, date.fromisoformat(due), closed, reached, view, date.min)
        for u in (total, get("windows", window), get("staff", staff)):
            u.cases += f["cases"]
            u.rectified += f["rectified"]
            u.on_time += f["on_time"]
            u.called += f["called"]
            u.called_good += f["called_good"]
    first, last = (datetime.fromtimestamp(x / 1000, tz).date().isoformat() for x in (lo, hi - 1))
    for window, staff, day, severity, reasons in conn.execute(
            "SELECT window, staff, day, severity, reasons_zh FROM integrity_flag WHERE hall=? "
            "AND period='day' AND day >= ? AND day <= ? ORDER BY day, window, staff",
            (hall, first, last)):
        flag = Flag(day, window, int(severity), reasons)
        total.flags.append(flag)
        (get("windows", window) if staff == "*" else get("staff", staff)).flags.append(flag)
    p = total.satisfaction
    for kind in units.values():
        for u in kind.values():
            if p is None or u.rated == 0:
                u.standing = "无评价"
                continue
            half = 3 * math.sqrt(max(p * (1 - p), 1e-9) / u.rated)
            s = u.satisfaction or 0.0
            u.standing = "偏高" if s > p + half else "偏低" if s < p - half else "正常"
    return {"hall": total, "windows": sorted(units["windows"].values(), key=lambda u: u.key),
            "staff": sorted(units["staff"].values(), key=lambda u: u.key)}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


HEAD = ("名称", "办结数", "参评率", "满意率", "满意指数", "漏斗限内", "差评数", "差评原因",
        "整改率", "按期整改率", "回访率", "回访满意率", "诚信标记")


def _row(u: Unit) -> list[str]:
    # The citizens' reasons in words (服务态度2), never the protocol's tags.
    reasons = "、".join(f"{REASON_LABELS.get(k, (k, k))[0]}{v}"
                       for k, v in sorted(u.bad_reasons.items())) or "—"
    return [u.name, str(u.completed), _pct(u.coverage), _pct(u.satisfaction), _num(u.index),
            u.standing, str(u.bad), reasons, *(_pct(x) for x in u.follow()),
            f"{len(u.flags)}天" if u.flags else "—"]


FLAG_HEAD = ("日期", "对象", "级别", "理由")


def flag_rows(figs: dict[str, list[Unit] | Unit]) -> list[list[str]]:
    """Every integrity flag of the month: day, window or staff member, severity, reasons."""
    rows = []
    for kind in ("windows", "staff"):
        units = figs[kind]
        assert isinstance(units, list)
        for u in units:
            for f in u.flags:
                who = f"窗口 {u.name}" if kind == "windows" else f"人员 {u.name}（{f.window}）"
                rows.append([f.day, who, f.severity_name, f.reasons])
    return sorted(rows)


def write_xlsx(figs: dict[str, list[Unit] | Unit], hall: str, month: str, path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "窗口"
    for title, kind in (("窗口", "windows"), ("人员", "staff")):
        sheet = ws if title == "窗口" else wb.create_sheet(title)
        sheet.append([f"{hall} {month} 月度考核（{title}）"])
        sheet.append(list(HEAD))
        units = figs[kind]
        assert isinstance(units, list)
        for u in units:
            sheet.append(_row(u))
    flags = wb.create_sheet("诚信标记")
    flags.append([f"{hall} {month} 评价真实性检测标记（可疑/严重）"])
    flags.append(list(FLAG_HEAD))
    for r in flag_rows(figs):
        flags.append(r)
    wb.save(path)


def _chart(units: list[Unit], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager
    from matplotlib import pyplot as plt

    # The font has one weight; matplotlib says so on stderr at every chart ("findfont: Failed
    # to find font weight normal"), which a user running `report month` need not read.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    font_manager.fontManager.addfont(FONT)
    plt.rcParams["font.family"] = font_manager.FontProperties(fname=FONT).get_name()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([u.name for u in units], [100 * (u.satisfaction or 0) for u in units])
    ax.set_ylabel("满意率 %")
    ax.set_title("各窗口满意率")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_pdf(figs: dict[str, list[Unit] | Unit], hall: str, month: str, path: Path,
              audit_head: tuple[int, str] | None = None) -> int:
    """Write the PDF; returns its page count. `audit_head` (records, head hash of the audit log,
    `audit.head`) is printed at the end, so the paper copy can check the log later."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    if not Path(FONT).exists():
        raise ManagerError("no_font", f"CJK font {FONT} missing: apt-get install fonts-wqy-zenhei")
    if "WQY" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("WQY", FONT, subfontIndex=0))
    h = ParagraphStyle("h", fontName="WQY", fontSize=16, leading=22)
    body = ParagraphStyle("b", fontName="WQY", fontSize=9, leading=13)
    total = figs["hall"]
    assert isinstance(total, Unit)
    story: list[object] = [
        Paragraph(f"{hall} 政务服务“好差评”月度考核报告 {month}", h), Spacer(1, 6),
        Paragraph(f"全厅：办结 {total.completed} 件，参评率 {_pct(total.coverage)}，满意率 "
                  f"{_pct(total.satisfaction)}，满意指数 {_num(total.index)}，差评 {total.bad} 件，"
                  f"整改率 {_pct(total.follow()[0])}，回访率 {_pct(total.follow()[2])}。"
                  "“漏斗限内”为正常表示与全厅水平一致（不作排名）。", body), Spacer(1, 8)]
    chart = path.with_suffix(".chart.png")
    windows = figs["windows"]
    assert isinstance(windows, list)
    _chart(windows, chart)
    for title, kind in (("窗口", "windows"), ("人员", "staff")):
        units = figs[kind]
        assert isinstance(units, list)
        t = Table([list(HEAD), *(_row(u) for u in units)], repeatRows=1)
        t.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), "WQY"),
                               ("FONTSIZE", (0, 0), (-1, -1), 8),
                               ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey)]))
        story += [Paragraph(f"按{title}", h), t, Spacer(1, 10)]
        if kind == "windows":
            story += [Image(str(chart), width=480, height=205), Spacer(1, 10)]
    flags = flag_rows(figs)
    story.append(Paragraph("评价真实性检测标记", h))
    if flags:
        cell = ParagraphStyle("c", fontName="WQY", fontSize=8, leading=11)
        ft = Table([list(FLAG_HEAD), *([*r[:3], Paragraph(r[3], cell)] for r in flags)],
                   colWidths=[70, 150, 40, 500], repeatRows=1)
        ft.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), "WQY"),
                                ("FONTSIZE", (0, 0), (-1, -1), 8),
                                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                                ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                                ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey)]))
        story += [Paragraph(f"本月共 {len(flags)} 条（按日的检测结论，可疑或严重）；"
                            "标记是复核的线索，不是处分的依据。", body), Spacer(1, 4), ft]
    else:
        story.append(Paragraph("本月没有被标记（可疑或严重）的窗口或人员。", body))
    if audit_head is not None:
        n, head = audit_head
        story += [Spacer(1, 10), Paragraph(
            f"审计日志：生成本报告时最后一条记录为第 {n} 条，头哈希 {head}。日后核对记录未被删改："
            f"evalterm audit verify --head {head}", body)]
    pages: list[int] = []
    doc = SimpleDocTemplate(str(path), pagesize=landscape(A4), title=f"{hall} {month} 月度考核")
    doc.build(story, onLaterPages=lambda c, d: pages.append(d.page),
              onFirstPage=lambda c, d: pages.append(d.page))
    chart.unlink(missing_ok=True)
    return len(pages)
