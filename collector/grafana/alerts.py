"""Grafana unified-alerting rules, contact point, notification policy and mute timing.

Every threshold is here, commented (kubernetes-mixin style). Rules are built with the SDK's
alerting builders (the shape of Grafana's provisioning HTTP API, used by `evalterm grafana deploy`);
`file_groups` turns them into the file-provisioning format (`provisioning/alerting/*.yaml`).
Alert queries use `$timeFilter` over each rule's relative time range, like the panels do.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from grafana_foundation_sdk.builders import alerting as al
from grafana_foundation_sdk.builders import expr
from grafana_foundation_sdk.models import alerting as am
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import expr as em

from collector.grafana.common import DS_UID, FOLDER_UID, Influx, T, to_dict

__all__ = ["CONFIG", "GROUP", "contact_points", "file_groups", "mute_timings", "policies", "rules"]

GROUP = "evalterm"
RECEIVER = "evalterm-hall-managers"
CLOSED = "evalterm-closed-hours"

CONFIG = {
    "interval": "1m",              # how often the rule group is evaluated
    # A window flagged (severity >= 2) by the integrity detector today or in the rolling period.
    "flagged_range_s": 86_400,     # verdict points sit at the local midnight of their day
    # Device offline: its last status message is `offline`, for this long.
    "offline_for": "5m",
    "offline_range_s": 7 * 86_400,  # how far back a device's last status is looked up
    # Surge of bad ratings at a window: in the last 15 minutes, at least 4 ratings, half or more
    # 1-2.
    "surge_range_s": 15 * 60,
    "surge_min_ratings": 4,
    "surge_bad_share": 0.5,
    # Device outbox backlog growing: queue grew by at least 5 over 30 minutes and holds >= 10.
    "outbox_range_s": 30 * 60,
    "outbox_growth": 5,
    "outbox_depth": 10,
    # 差评 follow-up cases past their deadline: the latest count the service wrote per window
    # (`followup_open`, every [manager] interval_s) in the last hour.
    "overdue_range_s": 3600,
    # Opening hours (local, Asia/Shanghai) outside which device-offline alerts are muted.
    "timezone": "Asia/Shanghai",
    "open_times": [("08:30", "12:00"), ("13:30", "17:30")],
    "open_weekdays": ["monday:friday"],
}


def _q(ref: str, query: str, range_s: int) -> al.Query:
    return (al.Query(ref).datasource_uid(DS_UID)
            .relative_time_range(am.RelativeTimeRange(from_val=range_s, to=0))
            .model(Influx(query, ref)))


def _ds_expr() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val="__expr__", uid="__expr__")


def _reduce(ref: str, of: str, how: str = "last") -> al.Query:
    return (al.Query(ref).datasource_uid("__expr__")
            .model(expr.TypeReduce().ref_id(ref).expression(of).reducer(how)  # type: ignore[arg-type]
                   .datasource(_ds_expr())))


def _math(ref: str, expression: str) -> al.Query:
    return (al.Query(ref).datasource_uid("__expr__")
            .model(expr.TypeMath().ref_id(ref).expression(expression).datasource(_ds_expr())))


def _threshold(ref: str, of: str, kind: str, value: float) -> al.Query:
    cond = em.ExprTypeThresholdConditions(
        evaluator=em.ExprTypeThresholdConditionsEvaluator(params=[value], type_val=kind))  # type: ignore[arg-type]
    return (al.Query(ref).datasource_uid("__expr__")
            .model(expr.TypeThreshold().ref_id(ref).expression(of).datasource(_ds_expr())
                   .conditions([_Fixed(cond)])))


class _Fixed:
    """Wrap a built model so that SDK methods expecting a builder accept it."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def build(self) -> Any:
        return self.obj


def _rule(t: T, uid: str, title: str, summary: str, description: str, kind: str,
          queries: list[al.Query], condition: str, for_: str, no_data: str = "OK") -> al.Rule:
    return (al.Rule(title).uid(uid).folder_uid(FOLDER_UID).rule_group(GROUP).org_id(1)
            .queries(queries).condition(condition).for_val(for_)
            .no_data_state(no_data).exec_err_state("Error")  # type: ignore[arg-type]
            .labels({"evalterm": kind, "severity": "critical" if kind == "flagged" else "warning"})
            .annotations({"summary": summary, "description": description}))


def window_flagged(t: T) -> al.Rule:
    q = ('SELECT max("flagged") FROM "integrity_verdict" WHERE $timeFilter AND "staff" = \'*\' '
         'GROUP BY "hall", "window"')
    return _rule(t, "evalterm-window-flagged",
                 t("窗口评价疑似造假", "Window flagged by the detector"),
                 t("{{ $labels.hall }} {{ $labels.window }} 窗口被检测器标记",
                   "{{ $labels.hall }} {{ $labels.window }} is flagged"),
                 t("打开“评价真实性”看板查看理由与证据",
                   "See the Integrity dashboard for the reasons"),
                 "flagged",
                 [_q("A", q, CONFIG["flagged_range_s"]), _reduce("B", "A", "max"),
                  _threshold("C", "B", "gt", 0)], "C", "0s")


def device_offline(t: T) -> al.Rule:
    q = ('SELECT last("online") FROM "device_status" WHERE $timeFilter '
         'GROUP BY "hall", "window", "device"')
    return _rule(t, "evalterm-device-offline", t("评价器离线", "Device offline"),
                 t("{{ $labels.hall }} {{ $labels.window }} 的评价器 {{ $labels.device }} 离线",
                   "Device {{ $labels.device }} at {{ $labels.hall }} {{ $labels.window }} "
                   "offline"),
                 t("营业时间内评价器离线：请检查电源与网络；离线期间群众无法评价",
                   "A device is offline during opening hours: check power and network"),
                 "device_offline",
                 [_q("A", q, CONFIG["offline_range_s"]), _reduce("B", "A", "last"),
                  _threshold("C", "B", "lt", 1)], "C", CONFIG["offline_for"])


def bad_surge(t: T) -> al.Rule:
    bad = 'SELECT sum("bad") FROM "rating" WHERE $timeFilter GROUP BY "hall", "window"'
    n = 'SELECT count("value") FROM "rating" WHERE $timeFilter GROUP BY "hall", "window"'
    share, least = CONFIG["surge_bad_share"], CONFIG["surge_min_ratings"]
    return _rule(t, "evalterm-bad-surge", t("差评集中出现", "Surge of bad ratings"),
                 t("{{ $labels.hall }} {{ $labels.window }} 15 分钟内差评过半",
                   "{{ $labels.hall }} {{ $labels.window }}: half the ratings in 15 min are bad"),
                 t(f"最近 15 分钟至少 {least} 条评价且一半以上为不满意/非常不满意，请现场了解情况",
                   f"At least {least} ratings in 15 minutes, {share:.0%} or more at levels 1-2"),
                 "bad_surge",
                 [_q("A", bad, CONFIG["surge_range_s"]), _q("B", n, CONFIG["surge_range_s"]),
                  _reduce("C", "A", "sum"), _reduce("D", "B", "sum"),
                  _math("E", f"($D >= {least}) && ($C / $D >= {share})"),
                  _threshold("F", "E", "gt", 0)], "F", "0s")


def outbox_growing(t: T) -> al.Rule:
    growth = 'SELECT last("outbox") - first("outbox") FROM "telemetry" WHERE $timeFilter ' \
             'GROUP BY "hall", "window", "device"'
    depth = 'SELECT last("outbox") FROM "telemetry" WHERE $timeFilter ' \
            'GROUP BY "hall", "window", "device"'
    g, d = CONFIG["outbox_growth"], CONFIG["outbox_depth"]
    return _rule(t, "evalterm-outbox-growing",
                 t("设备待发队列积压", "Device outbox backlog growing"),
                 t("{{ $labels.window }} 的评价器 {{ $labels.device }} 待发消息持续增加",
                   "Device {{ $labels.device }} at {{ $labels.window }}: outbox growing"),
                 t(f"30 分钟内待发消息增加至少 {g} 条且积压 {d} 条以上：设备连不上采集器",
                   f"Outbox grew by {g}+ in 30 minutes and holds {d}+: the device cannot deliver"),
                 "outbox_growing",
                 [_q("A", growth, CONFIG["outbox_range_s"]),
                  _q("B", depth, CONFIG["outbox_range_s"]),
                  _reduce("C", "A", "last"), _reduce("D", "B", "last"),
                  _math("E", f"($C >= {g}) && ($D >= {d})"),
                  _threshold("F", "E", "gt", 0)], "F", "0s")


def cases_overdue(t: T) -> al.Rule:
    q = ('SELECT last("overdue") FROM "followup_open" WHERE $timeFilter AND "staff" = \'*\' '
         'GROUP BY "hall", "window"')
    return _rule(t, "evalterm-cases-overdue", t("差评整改逾期", "差评 follow-up overdue"),
                 t("{{ $labels.hall }} {{ $labels.window }} 有逾期未办结的差评案件",
                   "{{ $labels.hall }} {{ $labels.window }} has overdue 差评 cases"),
                 t("差评须在期限内核实、整改、回访并办结：打开“差评整改”看板或管理界面处理",
                   "Every 差评 must be verified, rectified, called back and closed by its "
                   "deadline: see the Follow-up dashboard or the web UI"),
                 "overdue",
                 [_q("A", q, CONFIG["overdue_range_s"]), _reduce("B", "A", "last"),
                  _threshold("C", "B", "gt", 0)], "C", "0s")


def rules(lang: str = "zh") -> list[dict[str, Any]]:
    """The alert rules in the provisioning HTTP API shape."""
    t = T(lang)
    return [to_dict(fn(t).build()) for fn in (window_flagged, device_offline, bad_surge,
                                              outbox_growing, cases_overdue)]


def file_groups(lang: str = "zh", folder_title: str = "评价器") -> dict[str, Any]:
    """`provisioning/alerting/evalterm-rules.yaml`."""
    keep = ("uid", "title", "condition", "data", "noDataState", "execErrState", "for",
            "annotations", "labels", "isPaused")
    return {"apiVersion": 1, "groups": [{
        "orgId": 1, "name": GROUP, "folder": folder_title, "interval": CONFIG["interval"],
        "rules": [{k: r[k] for k in keep if k in r} for r in rules(lang)],
    }]}


def contact_points() -> dict[str, Any]:
    """A template: e-mail to the hall managers; set EVALTERM_ALERT_EMAILS in Grafana's env."""
    cp = to_dict(al.ContactPoint().uid("evalterm-email").name(RECEIVER).type("email")
                 .settings({"addresses": "${EVALTERM_ALERT_EMAILS}", "singleEmail": False})
                 .build())
    return {"apiVersion": 1, "contactPoints": [{"orgId": 1, "name": RECEIVER, "receivers": [
        {"uid": cp["uid"], "type": cp["type"], "settings": cp["settings"],
         "disableResolveMessage": False}]}]}


def mute_timings() -> dict[str, Any]:
    """Outside opening hours (weekends, nights, lunch) device-offline alerts are muted."""
    open_ = CONFIG["open_times"]
    closed_times = [("00:00", open_[0][0]), *((a[1], b[0]) for a, b in pairwise(open_))]
    closed_times.append((open_[-1][1], "24:00"))
    loc = CONFIG["timezone"]
    return {"apiVersion": 1, "muteTimes": [{"orgId": 1, "name": CLOSED, "time_intervals": [
        {"weekdays": ["saturday", "sunday"], "location": loc},
        {"weekdays": CONFIG["open_weekdays"], "location": loc,
         "times": [{"start_time": a, "end_time": b} for a, b in closed_times]},
    ]}]}


def policy_tree() -> dict[str, Any]:
    return {
        "receiver": RECEIVER, "group_by": ["grafana_folder", "alertname", "hall", "window"],
        "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
        "routes": [
            {"receiver": RECEIVER, "object_matchers": [["evalterm", "=", "device_offline"]],
             "mute_time_intervals": [CLOSED],
             "group_by": ["alertname", "hall", "window", "device"]},
            {"receiver": RECEIVER, "object_matchers": [["evalterm", "=~", "flagged|bad_surge"]],
             "repeat_interval": "12h"},
            {"receiver": RECEIVER, "object_matchers": [["evalterm", "=", "outbox_growing"]]},
            {"receiver": RECEIVER, "object_matchers": [["evalterm", "=", "overdue"]],
             "repeat_interval": "24h"},
        ],
    }


def policies() -> dict[str, Any]:
    """A template: replaces the organisation's notification policy tree when provisioned."""
    return {"apiVersion": 1, "policies": [{"orgId": 1, **policy_tree()}]}
