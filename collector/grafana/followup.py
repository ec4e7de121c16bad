"""差评 follow-up (差评整改): open and overdue cases, 整改率, 按期整改率, 回访率 and 回访满意率
per window and staff member, and the open cases with links into the collector's web UI.

Reads the `followup` (one point per case, at its opening) and `followup_open` (cases open and
overdue now, per hall, window and staff member, written every `[manager] interval_s`)
measurements that the service writes from the state database (docs/storage.md, "Follow-up").
The rates are over the cases opened in the time range; "open" and "overdue" are the latest
count in the range (today: now). Definitions: collector/manager/report.py (`case_flags`).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, table
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from collector.grafana.common import (
    DS,
    Influx,
    T,
    base_dashboard,
    names,
    organize,
    thresholds,
    transformation,
    variables,
)

UID = "evalterm-followup"
UI_DEFAULT = "http://127.0.0.1:8480"  # the collector's HTTP port ([http] listen)
OPEN_LOOKBACK = "400d"  # how far back the list of open cases looks (cases are at their opening)

NAMED: dict[str, tuple[str, ...]] = {
    "per_window": ("window",),
    "per_staff": ("staff",),
    "open_cases": ("window", "staff"),
}


ONE_STAFF = "\"staff\" != '*'"  # per staff member (`*` points are the window's totals)
IS_OPEN = '"open" = 1'


def _match(tag: str) -> str:
    return f'"{tag}" =~ /^${{{tag}:regex}}$/'


def _where(*extra: str, time: str = "$timeFilter") -> str:
    return "WHERE " + " AND ".join([time, _match("hall"), _match("window"), _match("staff"),
                                    *extra])


def _now(fields: tuple[str, ...], by: str = "") -> str:
    """The latest count per staff member in the range, summed (over `by`, or all): the
    staff filter applies; the `*` points (window totals) are for the alert rule."""
    inner = ", ".join(f'last("{f}") AS "{f}"' for f in fields)
    outer = ", ".join(f'sum("{f}") AS "{f}"' for f in fields)
    group = f" GROUP BY {by}" if by else ""
    return (f'SELECT {outer} FROM (SELECT {inner} FROM "followup_open" {_where(ONE_STAFF)} '
            f'GROUP BY "hall", "window", "staff"){group}')


# name -> (the 0/1 field whose mean is the rate, the cases it is over): a rate over no case
# has no value (a ratio of sums would show 0/0 as 0 in InfluxQL).
COUNTED = '"cases" = 1'  # the cases opened in the range, not voided by an appeal
RATES = {"rect": ("rectified", COUNTED), "ontime": ("on_time", COUNTED),
         "callback": ("called", COUNTED), "callsat": ("called_good", '"called" = 1')}


def _rate(key: str) -> str:
    return f'mean("{RATES[key][0]}") AS "{key}"'


def _links(t: T, path: str = "") -> list[db.DashboardLink]:
    return [db.DashboardLink(t("在管理界面中处理", "Open in the web UI"))
            .type(dm.DashboardLinkType.LINK).url(f"${{ui}}/ui/cases{path}").target_blank(True)]


def _stat(title: str, description: str, query: str, unit: str,
          steps: db.ThresholdsConfig) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DS).unit(unit)
            .with_target(Influx(query)).thresholds(steps).height(5).span(4)
            .decimals(1 if unit == "percentunit" else 0)
            .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.NONE)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"])))


def open_now(t: T) -> stat.Panel:
    return _stat(t("未办结", "Open cases"), t("尚未办结的差评案件数（所选时间末）",
                                            "差评 cases not closed (at the end of the range)"),
                 _now(("open",)), "none", thresholds((None, "green"), (1, "orange"))
                 ).links(_links(t))


def overdue_now(t: T) -> stat.Panel:
    return _stat(t("已逾期", "Overdue"), t("超过整改期限仍未办结的案件数",
                                         "Cases past their deadline and not closed"),
                 _now(("overdue",)), "none", thresholds((None, "green"), (1, "red"))
                 ).links(_links(t))


def _rate_stat(key: str, title: str, description: str) -> stat.Panel:
    return _stat(title, description,
                 f'SELECT {_rate(key)} FROM "followup" {_where(RATES[key][1])}', "percentunit",
                 thresholds((None, "red"), (0.9, "orange"), (1, "green"))).min(0).max(1)


def rectified_rate(t: T) -> stat.Panel:
    return _rate_stat("rect", t("整改率", "Rectified"),
                      t("所选时间内新开的案件中已整改（或已回访、办结）的比例",
                        "Share of the cases opened in the range that were rectified"))


def on_time_rate(t: T) -> stat.Panel:
    return _rate_stat("ontime", t("按期整改率", "Closed on time"),
                      t("在期限内办结的比例", "Share closed on or before the deadline"))


def callback_rate(t: T) -> stat.Panel:
    return _rate_stat("callback", t("回访率", "Called back"),
                      t("回访联系上群众的比例", "Share where the citizen was reached"))


def callback_satisfaction(t: T) -> stat.Panel:
    return _rate_stat("callsat", t("回访满意率", "Satisfied at callback"),
                      t("回访联系上的群众中对整改表示满意（非常满意、满意、基本满意）的比例",
                        "Of the citizens reached, the share satisfied with the fix"))


def _rates_table(t: T, title: str, description: str, by: str) -> table.Panel:
    rename = {"window": t("窗口", "window"), "staff": t("工作人员", "staff"),
              "cases": t("案件数", "cases"), "open": t("未办结", "open"),
              "overdue": t("逾期", "overdue"), "rect": t("整改率", "rectified"),
              "ontime": t("按期整改率", "on time"), "callback": t("回访率", "called back"),
              "callsat": t("回访满意率", "satisfied")}
    key = "window" if by == '"hall", "window"' else "staff"
    del rename["staff" if key == "window" else "window"]
    rates = ", ".join(_rate(k) for k in ("rect", "ontime", "callback"))
    p = (table.Panel().title(title).description(description).datasource(DS)
         .with_target(Influx(f'SELECT count("case_id") AS "cases", {rates} FROM "followup" '
                             f'{_where(COUNTED)} GROUP BY {by}', table=True))
         .with_target(Influx(_now(("open", "overdue"), by), "B", table=True))
         .with_target(Influx(f'SELECT {_rate("callsat")} FROM "followup" '
                             f'{_where(RATES["callsat"][1])} GROUP BY {by}', "C", table=True))
         .with_transformation(transformation("joinByField", {"byField": key, "mode": "outer"}))
         .with_transformation(organize(rename, ("Time", "Time 1", "Time 2", "Time 3", "hall",
                                                "hall 1", "hall 2", "hall 3"), list(rename)))
         .height(9).span(12))
    for k in RATES:
        p = p.override_by_name(rename[k], [
            dm.DynamicConfigValue(id_val="unit", value="percentunit"),
            dm.DynamicConfigValue(id_val="decimals", value=1)])
    if key == "window":  # the web UI's case list filters by window (?window=<id>)
        p = p.override_by_name(rename["window"], [
            dm.DynamicConfigValue(id_val="links", value=[{
                "title": t("该窗口的案件", "This window's cases"),
                "url": "${ui}/ui/cases?window=${__value.raw}", "targetBlank": True}])])
    return p.override_by_name(rename["overdue"], [
        dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
        dm.DynamicConfigValue(id_val="thresholds", value={"mode": "absolute", "steps": [
            {"value": None, "color": "green"}, {"value": 1, "color": "red"}]})])


def per_window(t: T) -> table.Panel:
    return _rates_table(t, t("各窗口整改情况", "Follow-up per window"),
                        t("所选时间内新开案件的整改、回访比例，以及当前未办结、逾期件数",
                          "Rates over the cases opened in the range; open and overdue now"),
                        '"hall", "window"')


def per_staff(t: T) -> table.Panel:
    return _rates_table(t, t("各工作人员整改情况", "Follow-up per staff member"),
                        t("同上，按被评价的工作人员", "The same, per staff member rated"),
                        '"hall", "staff"')


def open_cases(t: T) -> table.Panel:
    rename = {"case_id": t("案件", "case"), "due": t("期限", "due"),
              "overdue": t("逾期", "overdue"), "window": t("窗口", "window"),
              "staff": t("工作人员", "staff"), "txn": t("办件编号", "case number"),
              "level": t("等级", "level"), "reason": t("原因", "reason"),
              "state": t("进度", "step"), "Time": t("差评时间", "rated at")}
    steps = {"open": ("待核实", "to verify"), "verified": ("已核实", "verified"),
             "rectified": ("已整改", "rectified"), "called": ("已回访", "called back")}
    return (table.Panel().title(t("未办结案件（逾期在前）", "Open cases (overdue first)"))
            .description(t("每条未办结的差评案件；点击案件号在管理界面中核实、整改、回访、办结",
                           "Every open case; click its number to handle it in the web UI"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "case_id", "due", "overdue", "txn", "level", "reason", '
                                f'"state" FROM "followup" '
                                f'{_where(IS_OPEN, time=f"time > now() - {OPEN_LOOKBACK}")} '
                                'GROUP BY "hall", "window", "staff"', table=True))
            .with_transformation(transformation("sortBy", {"sort": [
                {"field": "overdue", "desc": True}, {"field": "due"}]}))
            .with_transformation(organize(rename, ("hall",), list(rename)))
            .override_by_name(rename["case_id"], [
                dm.DynamicConfigValue(id_val="links", value=[{
                    "title": t("打开案件", "Open the case"),
                    "url": "${ui}/ui/cases/${__value.raw}", "targetBlank": True}])])
            .override_by_name(rename["overdue"], [
                dm.DynamicConfigValue(id_val="mappings", value=[dm.ValueMap(options={
                    "1": dm.ValueMappingResult(text=t("逾期", "overdue"), color="red", index=0),
                    "0": dm.ValueMappingResult(text="", index=1)})]),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "color-text"})])
            .override_by_name(rename["state"], [
                dm.DynamicConfigValue(id_val="mappings", value=[dm.ValueMap(options={
                    k: dm.ValueMappingResult(text=t(*v), index=i)
                    for i, (k, v) in enumerate(steps.items())})])])
            .filterable(True).height(10).span(24))


def _ui_variable(t: T) -> db.TextBoxVariable:
    return (db.TextBoxVariable("ui").label(t("管理界面地址", "Web UI address"))
            .description(t("采集器 HTTP 端口上的管理界面（[http] listen），例如 "
                           "https://evalterm.example:8480",
                           "The collector's web UI ([http] listen), e.g. "
                           "https://evalterm.example:8480"))
            .default_value(UI_DEFAULT)
            .current(dm.VariableOption(selected=True, text=UI_DEFAULT, value=UI_DEFAULT)))


def build(lang: str = "zh") -> db.Dashboard:
    t = T(lang)
    d = base_dashboard(t, UID, t("评价器 · 差评整改", "evalterm · Follow-up"),
                       t("差评核实、整改、回访与办结：未办结、逾期、整改率、按期整改率、回访率、"
                         "回访满意率", "差评 follow-up: open, overdue, rectified, on time, "
                         "called back, satisfied at callback"))
    for v in variables(t, ("hall", "window", "staff")):
        d = d.with_variable(v)
    d = d.with_variable(_ui_variable(t))
    for fn in (open_now, overdue_now, rectified_rate, on_time_rate, callback_rate,
               callback_satisfaction, open_cases, per_window, per_staff):
        d = d.with_panel(names(fn(t), *NAMED.get(fn.__name__, ())))
    return d
