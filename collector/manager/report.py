"""The monthly assessment report (月度考核): PDF (Chinese, charts) and XLSX, per window and staff.

Figures (from the state database's transactions and cases of the month, hall-local dates):
办结数 completed transactions; 参评率 rated / completed; 满意率 share of ratings at levels 3-5
(not a 差评); 满意指数 mean of 100/75/50/25/0 for levels 5..1. Standing against the hall's funnel
limits (binomial, 3 sigma around the hall's 满意率, narrowing with the unit's ratings): 正常 inside,
偏高/偏低 outside; there is no ranking. Follow-up: 整改率 cases rectified or further / cases not
voided; 按期整改率 closed on or before the due date / same; 回访率 called back (reached) / same;
回访满意率 citizens reached whose view is 满意 (非常满意/满意/基本满意) / reached.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

from collector.manager import ManagerError
from collector.manager.directory import lookup

__all__ = ["FONT", "Unit", "month_figures", "write_pdf", "write_xlsx"]

FONT = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
_WEIGHT = {5: 100.0, 4: 75.0, 3: 50.0, 2: 25.0, 1: 0.0}
_GOOD_VIEW = ("非常满意", "满意", "基本满意")


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
                    k = reason or "未选原因"
                    u.bad_reasons[k] = u.bad_reasons.get(k, 0) + 1
    for window, staff, state, due, closed_ms, reached, view in conn.execute(
            "SELECT window, staff_id, state, due, closed_ms, reached, citizen_view FROM mgr_case "
            "WHERE hall=? AND opened_ms >= ? AND opened_ms < ? AND state != 'voided'",
            (hall, lo, hi)):
        for u in (total, get("windows", window), get("staff", staff)):
            u.cases += 1
            if state in ("rectified", "called", "closed"):
                u.rectified += 1
            if state == "closed" and closed_ms is not None and datetime.fromtimestamp(
                    closed_ms / 1000, UTC).astimezone(tz).date() <= date.fromisoformat(due):
                u.on_time += 1
            if reached:
                u.called += 1
                if (view or "").strip() in _GOOD_VIEW:
                    u.called_good += 1
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
        "整改率", "按期整改率", "回访率", "回访满意率")


def _row(u: Unit) -> list[str]:
    reasons = "、".join(f"{k}{v}" for k, v in sorted(u.bad_reasons.items())) or "—"
    return [u.name, str(u.completed), _pct(u.coverage), _pct(u.satisfaction), _num(u.index),
            u.standing, str(u.bad), reasons, *(_pct(x) for x in u.follow())]


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
    wb.save(path)


def _chart(units: list[Unit], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager
    from matplotlib import pyplot as plt

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


def write_pdf(figs: dict[str, list[Unit] | Unit], hall: str, month: str, path: Path) -> int:
    """Write the PDF; returns its page count."""
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
    story.append(Paragraph("诚信检测标记：本版本尚未接入（见 docs）。", body))
    pages: list[int] = []
    doc = SimpleDocTemplate(str(path), pagesize=landscape(A4), title=f"{hall} {month} 月度考核")
    doc.build(story, onLaterPages=lambda c, d: pages.append(d.page),
              onFirstPage=lambda c, d: pages.append(d.page))
    chart.unlink(missing_ok=True)
    return len(pages)
