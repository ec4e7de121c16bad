"""Devices (评价器设备): which devices are offline, since when, and their health."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from collector.grafana.common import (
    DS,
    Influx,
    T,
    base_dashboard,
    device_where,
    names,
    organize,
    thresholds,
    variables,
)

UID = "evalterm-devices"

# Columns that show the directory's names instead of ids (common.names).
NAMED: dict[str, tuple[str, ...]] = {
    "status": ("window",),
    "last_seen": ("window",),
    "reboots": ("window",),
    "reconnects": ("window",),
    "stuck_keys": ("window",),
}
BY_DEVICE = 'GROUP BY "hall", "window", "device"'


def _online_mappings(t: T) -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={
        "1": dm.ValueMappingResult(text=t("在线", "online"), color="green", index=0),
        "0": dm.ValueMappingResult(text=t("离线", "offline"), color="red", index=1)})]


def offline_count(t: T) -> stat.Panel:
    return (stat.Panel().title(t("离线设备", "Devices offline"))
            .description(t("最近一次状态为离线的设备数", "Devices whose last status is offline"))
            .datasource(DS)
            .with_target(Influx('SELECT count("online") FROM (SELECT last("online") AS "online" '
                                f'FROM "device_status" {device_where()} {BY_DEVICE}) '
                                'WHERE "online" = 0'))
            .no_value("0").thresholds(thresholds((None, "green"), (1, "red")))
            .color_mode(cm.BigValueColorMode.BACKGROUND).graph_mode(cm.BigValueGraphMode.NONE)
            .height(5).span(6))


def online_count(t: T) -> stat.Panel:
    return (stat.Panel().title(t("在线设备", "Devices online"))
            .description(t("最近一次状态为在线的设备数", "Devices whose last status is online"))
            .datasource(DS)
            .with_target(Influx('SELECT count("online") FROM (SELECT last("online") AS "online" '
                                f'FROM "device_status" {device_where()} {BY_DEVICE}) '
                                'WHERE "online" = 1'))
            .no_value("0").thresholds(thresholds((None, "green")))
            .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.NONE)
            .height(5).span(6))


def status(t: T) -> table.Panel:
    rename = {"Time": t("状态变化时间", "since"), "hall": t("大厅", "hall"),
              "window": t("窗口", "window"), "device": t("设备", "device"),
              "online": t("状态", "status"), "fw": t("固件", "firmware")}
    return (table.Panel().title(t("设备状态", "Device status"))
            .description(t("每台设备最近一次上线/离线（含遗嘱消息）及其时间",
                           "Each device's last online/offline status (last will included)"))
            .datasource(DS)
            .with_target(Influx(f'SELECT last("online") AS "online", "fw" FROM "device_status" '
                                f'{device_where()} {BY_DEVICE}', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .override_by_name(t("状态", "status"), [
                dm.DynamicConfigValue(id_val="mappings", value=_online_mappings(t)),
                dm.DynamicConfigValue(id_val="custom.cellOptions",
                                      value={"type": "color-background"})])
            .sort_by([])
            .height(8).span(12))


def last_seen(t: T) -> table.Panel:
    rename = {"Time": t("最后上报", "last seen"), "window": t("窗口", "window"),
              "device": t("设备", "device"), "type": t("最后事件", "last event")}
    return (table.Panel().title(t("最后上报时间", "Last seen"))
            .description(t("每台设备最后一条事件（心跳、按键等）的时间",
                           "Time of each device's last event (heartbeat, key, ...)"))
            .datasource(DS)
            .with_target(Influx(f'SELECT last("n") AS "n" FROM "device_event" {device_where()} '
                                f'{BY_DEVICE}', table=True))
            .with_transformation(organize(rename, ("hall", "n"), list(rename)))
            .override_by_name(t("最后上报", "last seen"), [
                dm.DynamicConfigValue(id_val="unit", value="dateTimeFromNow")])
            .height(8).span(12))


def online_timeline(t: T) -> statetimeline.Panel:
    return (statetimeline.Panel().title(t("在线时间线", "Online timeline"))
            .description(t("每台设备在线（绿）/离线（红）的时段", "Online (green) / offline (red)"))
            .datasource(DS)
            .with_target(Influx(f'SELECT last("online") FROM "device_status" {device_where()} '
                                'GROUP BY time($__interval), "device" fill(previous)',
                                alias="$tag_device"))
            .mappings(_online_mappings(t))
            .thresholds(thresholds((None, "red"), (1, "green")))
            .height(7).span(24))


def _telemetry(title: str, description: str, field: str, unit: str) -> timeseries.Panel:
    return (timeseries.Panel().title(title).description(description).datasource(DS)
            .with_target(Influx(f'SELECT mean("{field}") FROM "telemetry" {device_where()} '
                                'GROUP BY time($__interval), "device" fill(none)',
                                alias="$tag_device"))
            .unit(unit).show_points(cm.VisibilityMode.AUTO).height(8).span(8))


def rssi(t: T) -> timeseries.Panel:
    return _telemetry(t("信号强度 RSSI", "RSSI"),
                      t("Wi-Fi 信号强度（dBm），低于 -80 易掉线",
                        "Wi-Fi signal; below -80 dBm drops"),
                      "rssi", "dBm")


def heap(t: T) -> timeseries.Panel:
    return _telemetry(t("空闲内存", "Free heap"),
                      t("设备空闲堆内存，持续下降提示内存泄漏", "A steady fall suggests a leak"),
                      "heap_free", "bytes")


def outbox(t: T) -> timeseries.Panel:
    return _telemetry(t("设备待发队列", "Device outbox"),
                      t("设备闪存中尚未送达的消息数，持续增长说明无法上报",
                        "Messages waiting in the device's flash; growth means it cannot deliver"),
                      "outbox", "none")


def reboots(t: T) -> table.Panel:
    rename = {"window": t("窗口", "window"), "device": t("设备", "device"),
              "boots": t("重启次数", "reboots")}
    return (table.Panel().title(t("重启次数", "Reboots"))
            .description(t("所选时间内设备的启动次数", "Device starts in the time range"))
            .datasource(DS)
            .with_target(Influx(f'SELECT sum("n") AS "boots" FROM "device_event" '
                                f'{device_where()} AND "type" = \'boot\' {BY_DEVICE}', table=True))
            .with_transformation(organize(rename, ("Time", "hall"), list(rename)))
            .height(8).span(8))


def reconnects(t: T) -> table.Panel:
    rename = {"window": t("窗口", "window"), "device": t("设备", "device"),
              "reconnects": t("重连次数", "reconnects"), "discards": t("丢弃消息", "discarded")}
    return (table.Panel().title(t("重连与丢弃", "Reconnects and discards"))
            .description(t("所选时间内的重连次数与因队列满而丢弃的消息数（心跳计数器增量）",
                           "Reconnects and outbox discards in the range (counter increase)"))
            .datasource(DS)
            .with_target(Influx('SELECT spread("reconnects") AS "reconnects", '
                                f'spread("discards") AS "discards" FROM "telemetry" '
                                f'{device_where()} {BY_DEVICE}', table=True))
            .with_transformation(organize(rename, ("Time", "hall"), list(rename)))
            .height(8).span(8))


def stuck_keys(t: T) -> table.Panel:
    rename = {"Time": t("时间", "time"), "window": t("窗口", "window"),
              "device": t("设备", "device"), "type": t("事件", "event"),
              "d_key": t("按键", "key"), "d_held_ms": t("按住时长", "held")}
    return (table.Panel().title(t("按键卡住", "Stuck keys"))
            .description(t("按键卡住与恢复事件；卡住的键无法评价", "Stuck and released keys"))
            .datasource(DS)
            .with_target(Influx(f'SELECT "window", "device", "type", "d_key", "d_held_ms" '
                                f'FROM "device_event" {device_where()} '
                                "AND (\"type\" = 'key_stuck' OR \"type\" = 'key_released') "
                                'ORDER BY time DESC LIMIT 200', table=True))
            .with_transformation(organize(rename, (), list(rename)))
            .override_by_name(t("按住时长", "held"), [
                dm.DynamicConfigValue(id_val="unit", value="ms")])
            .height(8).span(8))


def rejections(t: T) -> timeseries.Panel:
    return (timeseries.Panel().title(t("被拒消息", "Refused messages"))
            .description(t("采集器拒收的消息（签名错误、重放、未知设备等）",
                           "Messages the collector refused (bad signature, replay, ...)"))
            .datasource(DS)
            .with_target(Influx('SELECT sum("n") FROM "rejection" WHERE $timeFilter '
                                'GROUP BY time($__interval), "reason" fill(none)',
                                alias="$tag_reason"))
            .draw_style(cm.GraphDrawStyle.BARS).decimals(0).height(8).span(16))


def build(lang: str = "zh") -> db.Dashboard:
    t = T(lang)
    d = base_dashboard(t, UID, t("评价器 · 设备", "evalterm · Devices"),
                       t("设备在线、最后上报、信号、内存、待发队列、重启、按键卡住",
                         "Online/offline, last seen, RSSI, heap, outbox, reboots, stuck keys"))
    d = d.time("now-24h", "now")  # the devices' recent past, not only today
    for v in variables(t, ("hall", "window")):
        d = d.with_variable(v)
    for fn in (offline_count, online_count, status, last_seen, online_timeline, rssi, heap,
               outbox, reboots, reconnects, stuck_keys, rejections):
        d = d.with_panel(names(fn(t), *NAMED.get(fn.__name__, ())))
    return d
