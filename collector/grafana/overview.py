"""Hall overview (大厅总览): how satisfied citizens are, and which windows lead or trail."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import piechart as pm

from collector.grafana.common import (
    DS,
    Influx,
    T,
    base_dashboard,
    level_mappings,
    names,
    organize,
    rating_where,
    reason_mappings,
    thresholds,
    transformation,
    txn_where,
    variables,
)

UID = "evalterm-overview"

# Columns that show the directory's names instead of ids (common.names).
NAMED: dict[str, tuple[str, ...]] = {
    "window_ranking": ("window",),
}
INDEX = '(mean("value") - 1) * 25'  # 0-100: level 1 -> 0, 5 -> 100 (HappyOrNot-style weights)


def _stat(title: str, description: str, query: str, unit: str, steps: db.ThresholdsConfig,
          decimals: int | None = None) -> stat.Panel:
    p = (stat.Panel().title(title).description(description).datasource(DS).unit(unit)
         .with_target(Influx(query)).thresholds(steps).height(5).span(4)
         .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.NONE)
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"])))
    return p.decimals(decimals) if decimals is not None else p


def satisfaction(t: T) -> stat.Panel:
    return _stat(t("满意率", "Satisfaction rate"),
                 t("评价为基本满意及以上（3-5 级）的比例", "Share of ratings at levels 3-5"),
                 f'SELECT mean("satisfied") FROM "rating" {rating_where()}', "percentunit",
                 thresholds((None, "red"), (0.9, "orange"), (0.95, "green")), 1).min(0).max(1)


def bad_count(t: T) -> stat.Panel:
    return _stat(t("差评数", "Bad ratings"),
                 t("1-2 级评价（不满意、非常不满意）的条数", "Ratings at levels 1-2"),
                 f'SELECT sum("bad") FROM "rating" {rating_where()}', "none",
                 thresholds((None, "green"), (1, "orange"), (10, "red")), 0)


def coverage(t: T) -> stat.Panel:
    return _stat(t("参评率", "Coverage"),
                 t("已评价办件 / 办结办件（一事一评）", "Rated / completed transactions"),
                 f'SELECT sum("rated") / sum("completed_n") FROM "transaction" {txn_where()}',
                 "percentunit", thresholds((None, "red"), (0.6, "orange"), (0.8, "green")), 1)


def index(t: T) -> stat.Panel:
    return _stat(t("满意指数", "Satisfaction index"),
                 t("0-100：非常满意 100、满意 75、基本满意 50、不满意 25、非常不满意 0 的平均",
                   "0-100: the mean of 100/75/50/25/0 for levels 5..1"),
                 f'SELECT {INDEX} FROM "rating" {rating_where()}', "none",
                 thresholds((None, "red"), (70, "orange"), (85, "green")), 1).min(0).max(100)


def ratings(t: T) -> stat.Panel:
    return _stat(t("评价数", "Ratings"), t("所选时间内的评价条数", "Ratings in the time range"),
                 f'SELECT count("value") FROM "rating" {rating_where()}', "none",
                 thresholds((None, "blue")), 0)


def completed(t: T) -> stat.Panel:
    return _stat(t("办结数", "Completed"), t("业务系统报送的办结办件数", "Completed transactions"),
                 f'SELECT sum("completed_n") FROM "transaction" {txn_where()}', "none",
                 thresholds((None, "blue")), 0)


def level_distribution(t: T) -> piechart.Panel:
    return (piechart.Panel().title(t("五级评价分布", "Five-level distribution"))
            .description(t("各评价等级的条数", "Ratings per level")).datasource(DS)
            .with_target(Influx(f'SELECT count("value") FROM "rating" {rating_where()} '
                                'GROUP BY "level"', alias="$tag_level"))
            .mappings(level_mappings(t)).pie_type(pm.PieChartType.DONUT)
            .reduce_options(cb.ReduceDataOptions().calcs(["sum"]).values(False))
            .display_labels([pm.PieChartLabels.PERCENT])
            .legend(piechart.PieChartLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                    .placement(cm.LegendPlacement.RIGHT).show_legend(True)
                    .values([pm.PieChartLegendValues.VALUE,
                             pm.PieChartLegendValues.PERCENT]))
            .height(9).span(8))


def trend(t: T) -> timeseries.Panel:
    return (timeseries.Panel().title(t("满意率与满意指数趋势", "Satisfaction trend"))
            .description(t("每个时间段的满意率（左轴）和满意指数（右轴）",
                           "Satisfaction rate (left) and index (right) per interval"))
            .datasource(DS)
            .with_target(Influx(f'SELECT mean("satisfied") AS "sat" FROM "rating" '
                                f'{rating_where()} GROUP BY time($__interval) fill(none)',
                                alias=t("满意率", "satisfaction")))
            .with_target(Influx(f'SELECT {INDEX} AS "idx" FROM "rating" {rating_where()} '
                                'GROUP BY time($__interval) fill(none)', "B",
                                alias=t("满意指数", "index")))
            .unit("percentunit").min(0).max(1).show_points(cm.VisibilityMode.ALWAYS)
            .override_by_name(t("满意指数", "index"), [
                dm.DynamicConfigValue(id_val="unit", value="none"),
                dm.DynamicConfigValue(id_val="min", value=0),
                dm.DynamicConfigValue(id_val="max", value=100),
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")])
            .height(9).span(8))


def bad_trend(t: T) -> timeseries.Panel:
    return (timeseries.Panel().title(t("评价量与差评趋势", "Ratings and bad ratings"))
            .description(t("每个时间段的评价条数与差评条数",
                           "Ratings and bad ratings per interval"))
            .datasource(DS)
            .with_target(Influx(f'SELECT count("value") FROM "rating" {rating_where()} '
                                'GROUP BY time($__interval) fill(0)', alias=t("评价", "ratings")))
            .with_target(Influx(f'SELECT sum("bad") FROM "rating" {rating_where()} '
                                'GROUP BY time($__interval) fill(0)', "B",
                                alias=t("差评", "bad")))
            .draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60).unit("none").decimals(0)
            .override_by_name(t("差评", "bad"), [
                dm.DynamicConfigValue(id_val="color",
                                      value={"mode": "fixed", "fixedColor": "red"})])
            .height(9).span(8))


def window_ranking(t: T) -> table.Panel:
    rename = {"window": t("窗口", "window"), "hall": t("大厅", "hall"),
              "idx": t("满意指数", "index"), "sat": t("满意率", "satisfaction"),
              "bad": t("差评", "bad"), "n": t("评价数", "ratings"),
              "coverage": t("参评率", "coverage"), "completed": t("办结数", "completed")}
    return (table.Panel().title(t("窗口排名", "Window ranking"))
            .description(t("按满意指数排序；参评率低而满意率高的窗口值得复核",
                           "Sorted by index; low coverage with high satisfaction deserves a look"))
            .datasource(DS)
            .with_target(Influx(f'SELECT count("value") AS "n", mean("satisfied") AS "sat", '
                                f'sum("bad") AS "bad", {INDEX} AS "idx" FROM "rating" '
                                f'{rating_where()} GROUP BY "hall", "window"', table=True))
            .with_target(Influx(f'SELECT sum("completed_n") AS "completed", '
                                f'sum("rated") / sum("completed_n") AS "coverage" '
                                f'FROM "transaction" {txn_where()} GROUP BY "hall", "window"', "B",
                                table=True))
            .with_transformation(transformation("merge"))
            .with_transformation(organize(rename, order=list(rename)))
            .sort_by([cb.TableSortByFieldState().display_name(t("满意指数", "index")).desc(True)])
            .override_by_name(t("满意率", "satisfaction"), [
                dm.DynamicConfigValue(id_val="unit", value="percentunit"),
                dm.DynamicConfigValue(id_val="decimals", value=1)])
            .override_by_name(t("参评率", "coverage"), [
                dm.DynamicConfigValue(id_val="unit", value="percentunit"),
                dm.DynamicConfigValue(id_val="decimals", value=0)])
            .override_by_name(t("满意指数", "index"), [
                dm.DynamicConfigValue(id_val="decimals", value=1),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "gauge", "mode": "basic"}),
                dm.DynamicConfigValue(id_val="min", value=0),
                dm.DynamicConfigValue(id_val="max", value=100)])
            .height(10).span(14))


def reasons(t: T) -> barchart.Panel:
    return (barchart.Panel().title(t("差评原因", "Reasons of bad ratings"))
            .description(t("1-2 级评价时群众选择的原因标签", "Reason tags chosen with ratings 1-2"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "reason", "bad" FROM "rating" {rating_where()} '
                                'AND "bad" = 1', table=True))
            .with_transformation(transformation("groupBy", {"fields": {
                "reason": {"aggregations": [], "operation": "groupby"},
                "bad": {"aggregations": ["sum"], "operation": "aggregate"}}}))
            .with_transformation(organize({"bad (sum)": t("差评数", "bad ratings")}, ()))
            .mappings(reason_mappings(t)).orientation(cm.VizOrientation.HORIZONTAL)
            .show_value(cm.VisibilityMode.ALWAYS).x_field("reason")
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.FIXED).fixed_color("red"))
            .height(10).span(10))


def build(lang: str = "zh") -> db.Dashboard:
    t = T(lang)
    d = base_dashboard(t, UID, t("评价器 · 大厅总览", "evalterm · Hall overview"),
                       t("群众满意度：满意率、差评、参评率、窗口排名与趋势",
                         "Citizen satisfaction: rate, bad ratings, coverage, ranking, trends"))
    for v in variables(t):
        d = d.with_variable(v)
    for fn in (satisfaction, index, bad_count, coverage, ratings, completed,
               level_distribution, trend, bad_trend, window_ranking, reasons):
        d = d.with_panel(names(fn(t), *NAMED.get(fn.__name__, ())))
    return d
