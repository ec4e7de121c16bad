"""Integrity (评价真实性): which windows the detector flags, why, and the evidence over time.

Reads the detector's `integrity_verdict` and `integrity` points (collector/detection/points.py,
docs/storage.md): one verdict per hall, window, staff (`*` = the whole window) and period (`day`,
`rolling`) per local business day, overwritten by every run, one point per indicator, and one
`integrity_evidence` point per observation behind a flag (the evidence list).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, table, timeseries, xychart
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import xychart as xm

from collector.grafana.common import (
    DS,
    Influx,
    T,
    _match,
    base_dashboard,
    names,
    organize,
    rating_where,
    thresholds,
    transformation,
    variables,
)

UID = "evalterm-integrity"

# Columns that show the directory's names instead of ids (common.names).
NAMED: dict[str, tuple[str, ...]] = {
    "flagged_windows": ("window",),
    "flagged_staff": ("window", "staff"),
    "evidence": ("window",),
    "evidence_list": ("window",),
    "satisfaction_vs_coverage": ("window",),
}
SEVERITY = {0: ("正常", "ok", "green"), 1: ("关注", "notice", "yellow"),
            2: ("可疑", "suspect", "orange"), 3: ("严重", "serious", "red")}
INDICATORS = {
    "unmatched": ("无办件评价", "ratings without a transaction"),
    "out_of_service": ("暂停或离岗时评价", "ratings while paused or signed off"),
    "uninvited_presses": ("未邀请按键", "uninvited presses"),
    "key_counters": ("按键计数不符", "key counters disagree"),
    "fast_response": ("按键过快", "too-fast presses"),
    "regular_response": ("节奏过于整齐", "machine-like regularity"),
    "response_shift": ("响应快于以往", "faster than its own past"),
    "late_response": ("邀请后很久才评价", "later than its own past"),
    "after_next_start": ("下一位已开始办理后评价", "rated after the next service began"),
    "burst": ("集中突击评价", "bursts"),
    "missing_negatives": ("差评缺失", "missing negatives"),
    "satisfaction_high": ("满意率偏高", "satisfaction above peers"),
    "selective_invitation": ("选择性邀请", "selective invitation"),
    "coverage_up": ("参评率异常上升", "coverage rising"),
    "duration_selection": ("复杂业务未邀请", "long services not rated"),
    "device_offline": ("设备离线异常", "device offline"),
    "device_interrupted": ("差评后设备离线", "device cut off after 差评"),
    "tamper": ("设备防拆与自检", "tamper and self-test"),
}
KINDS = {"rating": ("评价", "rating"), "txn": ("办件", "transaction"),
         "event": ("设备事件", "device event")}


WHOLE_WINDOW = "\"staff\" = '*'"      # verdicts of the whole window, not of one staff member
ONE_STAFF = "\"staff\" != '*'"
FLAGGED = '"flagged" = 1'
DAY = "\"period\" = 'day'"
EVIDENT = "\"strength\" != 'none'"


def _where(*extra: str) -> str:
    return "WHERE " + " AND ".join(["$timeFilter", _match("hall"), _match("window"), *extra])


def _severity_mappings(t: T) -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={str(k): dm.ValueMappingResult(text=t(zh, en), color=c, index=k)
                                 for k, (zh, en, c) in SEVERITY.items()})]


def _indicator_mappings(t: T) -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={k: dm.ValueMappingResult(text=t(*v), index=i)
                                 for i, (k, v) in enumerate(INDICATORS.items())})]


def _period_mappings(t: T) -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={
        "day": dm.ValueMappingResult(text=t("当日", "day"), index=0),
        "rolling": dm.ValueMappingResult(text=t("近期滚动", "rolling"), index=1)})]


def flagged_windows(t: T) -> table.Panel:
    rename = {"Time": t("日期", "day"), "window": t("窗口", "window"),
              "period": t("统计期", "period"), "severity": t("严重程度", "severity"),
              t.reason_field: t("原因", "reasons"), "strong": t("强证据指标", "strong indicators")}
    panel = (table.Panel().title(t("被标记的窗口", "Flagged windows"))
            .description(t("检测器判定为可疑（2）或严重（3）的窗口，以及判定的全部理由；"
                           "单一指标偏高（如满意率高）不会单独触发标记",
                           "Windows the detector judged suspect (2) or serious (3), with every "
                           "reason; satisfaction alone never flags a window"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "period", "severity", "{t.reason_field}", '
                                f'"strong" FROM "integrity_verdict" '
                                f'{_where(WHOLE_WINDOW, FLAGGED)} '
                                'ORDER BY time DESC LIMIT 200', table=True))
             .with_transformation(organize(rename, (), list(rename))))
    return (_verdict_columns(panel, t)
            .override_by_name(t("原因", "reasons"), [
                dm.DynamicConfigValue(id_val="custom.width", value=700),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "auto", "wrapText": True})])
            .height(10).span(24))


def _verdict_columns(panel: table.Panel, t: T) -> table.Panel:
    """Severity as a coloured label and the period by name, in a verdicts table."""
    return (panel
            .override_by_name(t("严重程度", "severity"), [
                dm.DynamicConfigValue(id_val="mappings", value=_severity_mappings(t)),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "color-background"})])
            .override_by_name(t("统计期", "period"), [
                dm.DynamicConfigValue(id_val="mappings", value=_period_mappings(t))]))


def flagged_staff(t: T) -> table.Panel:
    rename = {"Time": t("日期", "day"), "window": t("窗口", "window"),
              "staff": t("工号", "staff"), "period": t("统计期", "period"),
              "severity": t("严重程度", "severity"), t.reason_field: t("原因", "reasons")}
    panel = (table.Panel().title(t("被标记的工作人员", "Flagged staff members"))
            .description(t("按工作人员单独判定的结果（同一窗口 A/B 岗分别统计）",
                           "Verdicts per staff member (A/B roles of a window judged apart)"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "staff", "period", "severity", '
                                f'"{t.reason_field}" FROM "integrity_verdict" '
                                f'{_where(ONE_STAFF, FLAGGED)} '
                                'ORDER BY time DESC LIMIT 200', table=True))
             .with_transformation(organize(rename, (), list(rename))))
    return _verdict_columns(panel, t).height(8).span(24)


def severity_timeline(t: T) -> statetimeline.Panel:
    return (statetimeline.Panel().title(t("每日判定", "Daily verdicts"))
            .description(t("每个窗口每天的判定等级（当日统计期）", "Each window's verdict per day"))
            .datasource(DS)
            .with_target(Influx(f'SELECT max("severity") FROM "integrity_verdict" '
                                f'{_where(WHOLE_WINDOW, DAY)} '
                                'GROUP BY time(1d), "window" fill(none)', alias="$tag_window"))
            .mappings(_severity_mappings(t))
            .thresholds(thresholds((None, "green"), (1, "yellow"), (2, "orange"), (3, "red")))
            .height(8).span(24))


def indicator_over_time(t: T) -> timeseries.Panel:
    return (timeseries.Panel().title(t("指标：${indicator}", "Indicator: ${indicator}"))
            .description(t("每个窗口该指标每天的值（当日统计期；值的含义见 docs/detection.md）",
                           "The indicator's daily value per window (see docs/detection.md)"))
            .datasource(DS)
            .with_target(Influx(f'SELECT last("value") FROM "integrity" '
                                f'{_where(WHOLE_WINDOW, DAY, _match("indicator"))} '
                                'GROUP BY time(1d), "window" fill(none)', alias="$tag_window"))
            .show_points(cm.VisibilityMode.ALWAYS).point_size(7)
            .repeat("indicator").repeat_direction("h").max_per_row(3)
            .height(7).span(8))


def evidence(t: T) -> table.Panel:
    rename = {"Time": t("日期", "day"), "window": t("窗口", "window"),
              "indicator": t("指标", "indicator"), "strength": t("证据强度", "strength"),
              "value": t("值", "value"), "q": t("q 值", "q-value"),
              t.indicator_reason_field: t("说明", "explanation")}
    return (table.Panel().title(t("指标证据", "Indicator evidence"))
            .description(t("强/弱证据的指标及其 q 值（多窗口比较后的错误发现率）",
                           "Indicators with weak or strong evidence and their q-values"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "indicator", "strength", "value", "q", '
                                f'"{t.indicator_reason_field}" FROM "integrity" '
                                f'{_where(WHOLE_WINDOW, EVIDENT)} '
                                'ORDER BY time DESC LIMIT 300', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .override_by_name(t("指标", "indicator"), [
                dm.DynamicConfigValue(id_val="mappings", value=_indicator_mappings(t))])
            .height(9).span(24))


def evidence_list(t: T) -> table.Panel:
    """Every observation behind a flag: the rating, transaction or device event, with what
    identifies it in the queue log or on CCTV (case number, time, level, device and sequence)."""
    rename = {"Time": t("时间", "time"), "window": t("窗口", "window"),
              "indicator": t("指标", "indicator"), "kind": t("类型", "kind"),
              "txn": t("办件编号", "case number"), "level": t("评价等级", "level"),
              "rt_ms": t("邀请后毫秒", "ms after invitation"), "device": t("设备", "device"),
              "boot": t("启动次数", "boot"), "seq": t("序号", "seq"),
              "note": t("说明", "note"), "severity": t("严重程度", "severity")}
    return (table.Panel().title(t("证据清单（可核对排队记录与监控）",
                                  "Evidence list (check against the queue log and CCTV)"))
            .description(t("被标记窗口的每条依据：评价（办件编号、按键时间、等级、设备与序号）、"
                           "未评价的办件、设备事件。时间为评价或事件发生的时间",
                           "Every observation behind a flagged window: ratings (case number, "
                           "press time, level, device and sequence number), unrated "
                           "transactions, device events, at the time they happened"))
            .datasource(DS)
            .with_target(Influx('SELECT "window", "indicator", "kind", "txn", "level", "rt_ms", '
                                '"device", "boot", "seq", "note", "severity" '
                                f'FROM "integrity_evidence" {_where(WHOLE_WINDOW)} '
                                'ORDER BY time DESC LIMIT 500', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .override_by_name(t("指标", "indicator"), [
                dm.DynamicConfigValue(id_val="mappings", value=_indicator_mappings(t))])
            .override_by_name(t("类型", "kind"), [
                dm.DynamicConfigValue(id_val="mappings", value=[dm.ValueMap(options={
                    k: dm.ValueMappingResult(text=t(*v), index=i)
                    for i, (k, v) in enumerate(KINDS.items())})])])
            .override_by_name(t("严重程度", "severity"), [
                dm.DynamicConfigValue(id_val="mappings", value=_severity_mappings(t)),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "color-background"})])
            .height(10).span(24))


def funnel(t: T) -> xychart.Panel:
    """满意率 against volume with 95% / 99.8% control limits around the `$target` rate."""
    p0 = "$target"
    sd = f'sqrt({p0} * (1 - {p0}) / count("value"))'
    q = (f'SELECT count("value") AS "n", mean("satisfied") AS "rate", '
         f'{p0} - 3.09 * {sd} AS "lo998", {p0} - 1.96 * {sd} AS "lo95", '
         f'{p0} + 1.96 * {sd} AS "hi95", {p0} + 3.09 * {sd} AS "hi998" '
         f'FROM "rating" {rating_where()} GROUP BY "window"')
    limit = [dm.DynamicConfigValue(id_val="custom.show", value="lines"),
             dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash",
                                                                     "dash": [10, 10]})]
    return (xychart.Panel()
            .title(t("漏斗图：满意率与评价量", "Funnel plot: satisfaction vs volume"))
            .description(t("每个点是一个窗口；虚线为按对照满意率 $target 计算的 "
                           "95% 与 99.8% 控制限，"
                           "评价量越大越窄。控制限外的窗口值得关注"
                           "（检测器另以同厅数据并考虑过度离散）",
                           "Each point is a window; dashed lines are 95% and 99.8% control limits "
                           "around $target, narrowing with volume"))
            .datasource(DS).with_target(Influx(q, table=True))
            .with_transformation(transformation("sortBy", {"sort": [{"field": "n"}]}))
            .mapping(xm.SeriesMapping.AUTO).show(xm.XYShowMode.POINTS)
            .unit("percentunit").min(0).max(1)
            .override_by_name("lo998", limit).override_by_name("hi998", limit)
            .override_by_name("lo95", limit).override_by_name("hi95", limit)
            .override_by_name("rate", [dm.DynamicConfigValue(id_val="displayName",
                                                             value=t("满意率", "satisfaction"))])
            .height(10).span(12))


def satisfaction_vs_coverage(t: T) -> table.Panel:
    rename = {"window": t("窗口", "window"), "sat": t("满意率", "satisfaction"),
              "coverage": t("参评率", "coverage"), "n": t("评价数", "ratings"),
              "completed": t("办结数", "completed")}
    return (table.Panel().title(t("参评率与满意率", "Coverage and satisfaction"))
            .description(t("参评率远低于同厅而满意率偏高：可能只邀请满意的群众",
                           "Low coverage with high satisfaction: selective invitation?"))
            .datasource(DS)
            .with_target(Influx(f'SELECT count("value") AS "n", mean("satisfied") AS "sat" '
                                f'FROM "rating" {rating_where()} GROUP BY "window"', table=True))
            .with_target(Influx('SELECT sum("completed_n") AS "completed", '
                                'sum("rated") / sum("completed_n") AS "coverage" '
                                f'FROM "transaction" {rating_where()} GROUP BY "window"', "B",
                                table=True))
            .with_transformation(transformation("merge"))
            .with_transformation(organize(rename, ("Time",), list(rename)))
            .override_by_name(t("满意率", "satisfaction"), [
                dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_name(t("参评率", "coverage"), [
                dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .height(10).span(12))


def _extra_variables(t: T) -> list[db.VariableModel]:
    indicator = (db.QueryVariable("indicator").label(t("指标", "Indicator"))
                 .query('SHOW TAG VALUES FROM "integrity" WITH KEY = "indicator"').datasource(DS)
                 .multi(True).include_all(True)
                 .current(dm.VariableOption(selected=True, text="All", value="$__all"))
                 .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                 .sort(dm.VariableSort.ALPHABETICAL_ASC))
    target = (db.CustomVariable("target").label(t("对照满意率", "Reference rate"))
              .values("0.95,0.9,0.98,0.99")
              .current(dm.VariableOption(selected=True, text="0.95", value="0.95")))
    return [indicator, target]


def build(lang: str = "zh") -> db.Dashboard:
    t = T(lang)
    d = base_dashboard(t, UID, t("评价器 · 评价真实性", "evalterm · Integrity"),
                       t("检测器标记的窗口与理由、各项指标、漏斗图",
                         "Flagged windows and why, each indicator over time, funnel plot"))
    d = d.time("now-7d", "now")
    for v in variables(t, ("hall", "window", "staff", "service")) + _extra_variables(t):
        d = d.with_variable(v)
    for fn in (flagged_windows, evidence_list, flagged_staff, severity_timeline, funnel,
               satisfaction_vs_coverage, evidence, indicator_over_time):
        d = d.with_panel(names(fn(t), *NAMED.get(fn.__name__, ())))
    return d
