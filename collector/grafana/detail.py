"""Window and staff detail (窗口与人员): levels over time, bad ratings with reasons, timing,
gaps."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import histogram, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from collector.grafana.common import (
    DS,
    LEVEL_COLORS,
    LEVELS,
    Influx,
    T,
    base_dashboard,
    level_mappings,
    names,
    organize,
    rating_where,
    reason_mappings,
    transformation,
    txn_where,
    variables,
)
from collector.grafana.overview import INDEX

UID = "evalterm-detail"

# Columns that show the directory's names instead of ids (common.names).
NAMED: dict[str, tuple[str, ...]] = {
    "bad_ratings": ("window", "staff", "service"),
    "unrated": ("window",),
    "unlinked": ("window",),
}


def _pct(name: str, decimals: int = 1) -> list[dm.DynamicConfigValue]:
    return [dm.DynamicConfigValue(id_val="unit", value="percentunit"),
            dm.DynamicConfigValue(id_val="decimals", value=decimals)]


def levels_over_time(t: T) -> timeseries.Panel:
    p = (timeseries.Panel().title(t("评价等级分布随时间变化", "Levels over time"))
         .description(t("每个时间段各等级的评价条数（堆叠）",
                        "Ratings per level and interval, stacked"))
         .datasource(DS)
         .with_target(Influx(f'SELECT count("value") FROM "rating" {rating_where()} '
                             'GROUP BY time($__interval), "level" fill(0)', alias="$tag_level"))
         .draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80).decimals(0)
         .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
         .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                 .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
         .height(9).span(12))
    for k, level_names in LEVELS.items():
        p = p.override_by_name(str(k), [
            dm.DynamicConfigValue(id_val="displayName", value=f"{k} {t(*level_names)}"),
            dm.DynamicConfigValue(id_val="color", value={"mode": "fixed",
                                                         "fixedColor": LEVEL_COLORS[k]})])
    return p


def staff_table(t: T) -> table.Panel:
    rename = {"staff": t("工号", "staff id"), "name": t("姓名", "name"),
              "window": t("窗口", "window"), "n": t("评价数", "ratings"),
              "sat": t("满意率", "satisfaction"), "bad": t("差评", "bad"),
              "idx": t("满意指数", "index"), "completed": t("办结数", "completed"),
              "coverage": t("参评率", "coverage")}
    return (table.Panel().title(t("工作人员满意度", "Satisfaction per staff member"))
            .description(t("每位工作人员（按办件关联）的评价与参评情况",
                           "Ratings and coverage per staff member "
                           "(linked through the transaction)"))
            .datasource(DS)
            .with_target(Influx(f'SELECT count("value") AS "n", mean("satisfied") AS "sat", '
                                f'sum("bad") AS "bad", {INDEX} AS "idx" FROM "rating" '
                                f'{rating_where()} GROUP BY "staff"', table=True))
            .with_target(Influx(f'SELECT sum("completed_n") AS "completed", '
                                'sum("rated") / sum("completed_n") AS "coverage", '
                                f'last("staff_name") AS "name" FROM "transaction" {txn_where()} '
                                'GROUP BY "staff"', "B", table=True))
            .with_transformation(transformation("joinByField", {"byField": "staff",
                                                                "mode": "outer"}))
            .with_transformation(organize(rename, ("Time", "Time 1", "Time 2"), list(rename)))
            .sort_by([cb.TableSortByFieldState().display_name(t("满意率", "satisfaction"))])
            .override_by_name(t("满意率", "satisfaction"), _pct(""))
            .override_by_name(t("参评率", "coverage"), _pct("", 0))
            .height(9).span(12))


def bad_ratings(t: T) -> table.Panel:
    rename = {"Time": t("时间", "time"), "window": t("窗口", "window"),
              "staff": t("工作人员", "staff"), "level": t("等级", "level"),
              "reason": t("原因", "reason"), "txn": t("办件编号", "case number"),
              "service": t("事项", "service"), "link": t("关联", "link")}
    return (table.Panel().title(t("差评明细", "Bad ratings"))
            .description(t("每条 1-2 级评价：原因标签、办件编号、工作人员；须逐条回访核实",
                           "Every rating 1-2 with its reason, case number and staff member"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "staff", "level", "reason", "txn", "service", '
                                f'"link" FROM "rating" {rating_where()} AND "bad" = 1 '
                                'ORDER BY time DESC LIMIT 500', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .override_by_name(t("等级", "level"), [
                dm.DynamicConfigValue(id_val="mappings", value=level_mappings(t)),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "color-text"})])
            .override_by_name(t("原因", "reason"), [
                dm.DynamicConfigValue(id_val="mappings", value=reason_mappings(t))])
            .filterable(True).height(10).span(24))


def response_time(t: T) -> histogram.Panel:
    return (histogram.Panel().title(t("邀请到按键用时分布", "Invitation-to-press time"))
            .description(t("评价器显示邀请到群众按键的秒数；极短且整齐的用时可能并非群众本人按键",
                           "Seconds from invitation to key press; very short, regular times are "
                           "unlikely to be citizens"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "rt_ms" / 1000 AS "rt" FROM "rating" {rating_where()} '
                                'AND "mode" = \'invited\'', alias=t("用时", "time to press")))
            .bucket_size(1).unit("s").height(9).span(12))


def unrated(t: T) -> table.Panel:
    rename = {"Time": t("办结时间", "completed"), "window": t("窗口", "window"),
              "staff_name": t("工作人员", "staff"), "txn": t("办件编号", "case number"),
              "service_name": t("事项", "service"), "level": t("默认等级", "default level")}
    return (table.Panel().title(t("未评价办件", "Unrated transactions"))
            .description(t("办结后评价期内未获评价的办件（一事一评须登记）",
                           "Transactions not rated within the rating window"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "staff_name", "txn", "service_name", "level" '
                                f'FROM "transaction" {txn_where()} AND "state" = \'unrated\' '
                                'ORDER BY time DESC LIMIT 500', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .filterable(True).height(9).span(12))


def unlinked(t: T) -> table.Panel:
    rename = {"Time": t("时间", "time"), "window": t("窗口", "window"),
              "level": t("等级", "level"), "unlinked_reason": t("未关联原因", "why unlinked"),
              "txn_claimed": t("设备上报办件", "case number sent")}
    return (table.Panel().title(t("未关联办件的评价", "Ratings without a transaction"))
            .description(t("无法关联到办结办件的评价：重复、过期、窗口不符或无办件",
                           "Ratings that matched no completed transaction"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "level", "unlinked_reason", "txn_claimed" '
                                f'FROM "rating" {rating_where()} AND "link" = \'unlinked\' '
                                'ORDER BY time DESC LIMIT 500', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .override_by_name(t("等级", "level"), [
                dm.DynamicConfigValue(id_val="mappings", value=level_mappings(t))])
            .height(9).span(12))


def build(lang: str = "zh") -> db.Dashboard:
    t = T(lang)
    d = base_dashboard(t, UID, t("评价器 · 窗口与人员", "evalterm · Windows and staff"),
                       t("窗口与工作人员的评价明细：等级、差评原因、按键用时、未评价办件",
                         "Per window and staff member: levels, bad ratings, timing, unrated"))
    for v in variables(t):
        d = d.with_variable(v)
    for fn in (levels_over_time, staff_table, bad_ratings, response_time, unrated, unlinked):
        d = d.with_panel(names(fn(t), *NAMED.get(fn.__name__, ())))
    return d
