"""Every query of every generated dashboard and alert rule, run against real data.

A real collector (real Mosquitto, real InfluxDB 1.x) receives deterministic traffic from a hall of
five windows, then the integrity detector runs on its state database. Each panel query is
interpolated as Grafana would and executed; the tests assert the rows that come back.

The hall (times relative to N = now):
  w1 honest   6 ratings 5,5,4,4,3,2 (one 差评, reason attitude) and one unrated transaction
  w2 honest   6 ratings 5,4,4,5,3,5
  w3 cheats   8 ratings of 5, each pressed 0.3 s after its invitation (no citizen is that fast)
  w4 surge    ratings 5,1,2 at N-10..N-8 min, then 1 at N-5 min: 3 of 4 bad within 15 minutes
  w5 device   one stand-alone press matching no transaction; the device comes online, then goes
              offline (last will); its outbox grows 2 -> 9 -> 14
Follow-up (the service's manager thread opens a case for each 差评): w1's case is closed on time
after a callback (满意), one of w4's three is rectified; w2 has an old case (a 差评 30 days ago,
stored before the start), overdue. The directory names the five windows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from grafana_eval import ALL, evaluate_rule, firing, interpolate, run
from helpers import Dev, Publisher, feed, feed_bytes, query, txn_msg, wait_for

from collector.config import Config, load_config
from collector.db import connect
from collector.detection.run import run_detection
from collector.grafana import alerts
from collector.grafana.export import dashboards
from collector.manager.cases import CaseService
from collector.manager.deadlines import DeadlineRule
from collector.protocol import rating_message
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import InfluxServer, MosquittoServer

pytestmark = pytest.mark.servers

MIN = 60_000
WINDOWS = ("w1", "w2", "w3", "w4", "w5")
WINDOW_NAMES = {"w1": "一号窗口", "w2": "二号窗口", "w3": "三号窗口", "w4": "四号窗口",
                "w5": "五号窗口"}
DAY = 86_400_000


@dataclass
class Hall:
    cfg: Config
    now: int
    devs: dict[str, Dev]
    txns: dict[str, list[str]] = field(default_factory=dict)  # window -> case numbers rated
    unrated: list[str] = field(default_factory=list)

    def q(self, text: str, days: float = 1, **variables: Any) -> list[dict[str, Any]]:
        """A dashboard query over the last `days` (a dashboard's default range), variables All."""
        values = {"hall": ALL, "window": ALL, "staff": ALL, "service": ALL, "indicator": ALL,
                  "target": "0.95", **variables}
        return run(self.cfg, interpolate(text, values, int(self.now - days * 1440 * MIN),
                                         int(time.time() * 1000) + MIN))


def _event(dev: Dev, kind: str, data: dict[str, Any], ts: int) -> tuple[str, bytes]:
    return dev.event(kind, data, ts)


def _heartbeat(dev: Dev, ts: int, outbox: int, rssi: int, reconnects: int = 0) -> tuple[str, bytes]:
    return _event(dev, "heartbeat", {
        "fw": "1.0.0", "rssi": rssi, "heap_free": 50_000 - outbox * 100, "outbox": outbox,
        "discards": 0, "reconnects": reconnects, "keys": [0, 0, 0, 0, 0], "uninvited": 0,
        "state": "idle"}, ts)


def _rate(pub: Publisher, hall: Hall, window: str, n: int, completed: int, level: int,
          rt: int, reason: str | None = None) -> None:
    txn = f"H1-{window}-{n:03d}"
    prefix = hall.cfg.mqtt.topic_prefix
    pub.publish(feed(prefix), feed_bytes(txn_msg(txn, window=window, completed=completed,
                                                 staff=f"s-{window}",
                                                 service="sfz" if n % 2 else "hk")))
    pub.publish(*hall.devs[window].rating(level, txn, ts=completed + rt, reason=reason, rt=rt))
    hall.txns.setdefault(window, []).append(txn)


def _traffic(pub: Publisher, hall: Hall) -> None:
    n0 = hall.now
    for i, level in enumerate((5, 5, 4, 4, 3, 2)):
        _rate(pub, hall, "w1", i, n0 - 120 * MIN + i * 5 * MIN, level, 2500 + 900 * i,
              "attitude" if level <= 2 else None)
    for i, level in enumerate((5, 4, 4, 5, 3, 5)):
        _rate(pub, hall, "w2", i, n0 - 118 * MIN + i * 5 * MIN, level, 3100 + 1100 * i)
    for i in range(8):
        _rate(pub, hall, "w3", i, n0 - 100 * MIN + i * 20_000, 5, 300 + 15 * i)
    for i, (minute, level, reason) in enumerate(((10, 5, None), (9, 1, "efficiency"),
                                                 (8, 2, "wait"))):
        _rate(pub, hall, "w4", i, n0 - minute * MIN - 40_000, level, 40_000, reason)
    # w1: a transaction nobody rated (its rating window passed long ago).
    unrated = "H1-w1-UNRATED"
    pub.publish(feed(hall.cfg.mqtt.topic_prefix),
                feed_bytes(txn_msg(unrated, window="w1", completed=n0 - 60 * MIN, staff="s-w1")))
    hall.unrated.append(unrated)
    # Devices: all online; w5 goes offline; heartbeats; a reboot; a stuck key.
    for w in WINDOWS:
        pub.publish(*hall.devs[w].status("online"))
    for w in WINDOWS[:4]:
        pub.publish(*_heartbeat(hall.devs[w], n0 - 20 * MIN, 0, -55))
    for minutes, depth in ((25, 2), (15, 9), (5, 14)):
        pub.publish(*_heartbeat(hall.devs["w5"], n0 - minutes * MIN, depth, -82, reconnects=3))
    pub.publish(*_event(hall.devs["w1"], "boot", {"fw": "1.0.0", "reset_cause": "power_on"},
                        n0 - 130 * MIN))
    pub.publish(*_event(hall.devs["w2"], "key_stuck", {"key": 3, "held_ms": 12_000},
                        n0 - 50 * MIN))
    # w5: a stand-alone press that matches no transaction (unlinked, no_transaction).
    pub.publish(*hall.devs["w5"].rating(4, None, ts=n0 - 90 * MIN))
    # A message signed with another device's key: refused (bad_signature).
    topic, _ = hall.devs["w1"].rating(4, None)
    pub.publish(topic, rating_message(hall.devs["w2"].key, topic, **hall.devs["w1"].envelope(n0),
                                      level=4, txn=None, reason=None, rt=None, mode="standalone"))
    time.sleep(0.05)
    pub.publish(*hall.devs["w5"].status("offline"))


def _old_bad_rating(conn: Any, ms: int) -> None:
    """A 差评 at w2 30 days ago, in the state database before the service starts."""
    conn.execute("INSERT INTO txn (hall, txn, window, staff_id, service_code, started_ms, "
                 "completed_ms, outcome, deadline_ms, state, rating_id, level) VALUES ('h1', "
                 "'H1-w2-OLD', 'w2', 's-w2', 'sfz', ?, ?, 'completed', ?, 'rated', 'old:1:1', 1)",
                 (ms - MIN, ms, ms + MIN))
    conn.execute("INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, reason, "
                 "mode, press_ms, received_ms, state, txn) VALUES ('old:1:1', 'h1', 'w2', "
                 "'kp-w2', 1, 1, 1, 'attitude', 'invited', ?, ?, 'linked', 'H1-w2-OLD')",
                 (ms + 1000, ms + 1000))


def _follow_up(cfg: Config) -> None:
    """Once the service has opened the cases: w1's closed after a callback, one of w4's
    rectified; then wait for the figures in InfluxDB."""
    conn = connect(cfg.state_db)
    svc = CaseService(conn, DeadlineRule(5), lambda: int(time.time() * 1000))
    svc.add_user("admin", "mgr", "manager", "h1", "secret-password")

    def cases() -> dict[str, int]:
        return dict(conn.execute("SELECT txn, case_id FROM mgr_case").fetchall())

    ids = wait_for(lambda: len(cases()) == 5 and cases(), what="5 cases opened by the service")
    w1 = ids["H1-w1-005"]
    svc.verify("mgr", w1, "态度生硬属实")
    svc.rectify("mgr", w1, "批评教育")
    svc.callback("mgr", w1, True, "满意")
    svc.close("mgr", w1)
    w4 = ids["H1-w4-001"]
    svc.verify("mgr", w4, "办理慢")
    svc.rectify("mgr", w4, "增派人手")
    conn.close()
    wait_for(lambda: len(query(cfg, 'SELECT * FROM "followup" WHERE "state" = \'closed\'')) == 1
             and query(cfg, 'SELECT * FROM "followup" WHERE "state" = \'rectified\''),
             what="the steps in InfluxDB")
    wait_for(lambda: _last_open(cfg, "w1") == (0, 0), what="w1's open count after the steps")
    wait_for(lambda: len(query(cfg, 'SELECT "name" FROM "directory"')) >= 7, what="names")


def _last_open(cfg: Config, window: str) -> tuple[int, int] | None:
    rows = query(cfg, 'SELECT last("open") AS "open", last("overdue") AS "overdue" FROM '
                      f'"followup_open" WHERE "window" = \'{window}\' AND "staff" = \'*\'')
    return (rows[0]["open"], rows[0]["overdue"]) if rows else None


def _surge_last(pub: Publisher, hall: Hall) -> None:
    _rate(pub, hall, "w4", 3, hall.now - 5 * MIN - 40_000, 1, 40_000, "attitude")


def _noon_offset() -> str:
    """The UTC offset (whole hours, -12..+14) at which it is about noon now."""
    t = time.gmtime()
    hours = round(12 - t.tm_hour - t.tm_min / 60)
    hours = hours + 24 if hours < -12 else hours - 24 if hours > 14 else hours
    return f"{'+' if hours >= 0 else '-'}{abs(hours):02d}:00"


@pytest.fixture(scope="module")
def hall(broker: MosquittoServer, influx: InfluxServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hall]:
    root: Path = tmp_path_factory.mktemp("dash")
    cfg = load_config(None, env={}).with_overrides(
        collector__data_dir=str(root / "collector"), mqtt__port=broker.port,
        mqtt__topic_prefix="dash", mqtt__client_id="collector-dash", influx__url=influx.url,
        influx__database="dash", influx__flush_interval_ms=20, influx__retry_max_s=1.0,
        http__listen="127.0.0.1:0", detection__enabled=False, linking__grace_s=0,
        manager__interval_s=1, manager__followup_days=5,
        # Open around the clock, and local noon now, so that the verdicts do not depend on when
        # the tests run (near local midnight, the day's verdict would hold only a few minutes
        # of the 200 minutes of traffic).
        detection__opening_hours="00:00-24:00", detection__business_days="1-7",
        detection__utc_offset=_noon_offset())
    conn = connect(cfg.state_db)
    reg = Registry(conn)
    now = int(time.time() * 1000)
    devs = {w: Dev("dash", f"kp-{w}", reg.add(f"kp-{w}", "h1", w, now - 200 * MIN).key, "h1", w)
            for w in WINDOWS}
    conn.executemany("INSERT INTO dir_window VALUES ('h1', ?, ?, '')", WINDOW_NAMES.items())
    _old_bad_rating(conn, now - 30 * DAY)
    conn.close()
    collector = Collector(cfg)
    collector.start()
    pub = Publisher(broker.port, "dash-pub")
    try:
        wait_for(lambda: collector.health()["mqtt_connected"], what="collector connected")
        time.sleep(0.3)
        h = Hall(cfg, now, devs)
        _traffic(pub, h)
        _surge_last(pub, h)
        wait_for(lambda: len(query(cfg, 'SELECT "value" FROM "rating"')) == 25, what="25 ratings")
        wait_for(lambda: query(cfg, 'SELECT * FROM "transaction" WHERE "state" = \'unrated\''),
                 what="the unrated transaction")
        wait_for(lambda: len(query(cfg, 'SELECT "online" FROM "device_status"')) == 6,
                 what="device statuses")
        conn = connect(cfg.state_db)
        verdicts = run_detection(conn, cfg, int(time.time() * 1000))
        conn.close()
        assert {v.window for v in verdicts if v.flagged and v.staff is None} == {"w3"}, [
            (v.window, v.period, v.reasons_en) for v in verdicts if v.flagged and v.window == "w4"]
        wait_for(lambda: query(cfg, 'SELECT * FROM "integrity_verdict"'), what="verdict points")
        _follow_up(cfg)
        wait_for(lambda: collector.health()["outbox_depth"] == 0, what="outbox drained")
        yield h
    finally:
        pub.close()
        collector.stop()


def _days(d: dict[str, Any]) -> float:
    # "Today" (now/d): the hall's local time is noon now (_noon_offset), so its day started 12
    # hours ago; the traffic of the last 200 minutes lies inside it.
    return {"now/d": 0.5, "now-24h": 1, "now-7d": 7}[d["time"]["from"]]


def _all_queries() -> list[tuple[str, str, str, float]]:
    """(dashboard uid, panel or variable, query, days of its default range) for every query."""
    out = []
    for lang in ("zh", "en"):
        for d in dashboards(lang).values():
            for v in d["templating"]["list"]:
                if v["type"] == "query":
                    out.append((d["uid"], f"${v['name']}", v["query"], _days(d)))
            for p in d["panels"]:
                for target in p.get("targets", []):
                    out.append((d["uid"], p["title"], target["query"], _days(d)))
    return out


def _panel(uid: str, title: str) -> dict[str, Any]:
    lang = "en" if uid.endswith("-en") else "zh"
    for d in dashboards(lang).values():
        if d["uid"] == uid:
            return next(p for p in d["panels"] if p["title"] == title)
    raise KeyError(uid)


def _target(uid: str, title: str, ref: str = "A") -> str:
    return next(t["query"] for t in _panel(uid, title)["targets"] if t["refId"] == ref)


@pytest.mark.parametrize("uid,title,text,days", _all_queries(),
                         ids=[f"{u}:{t}:{i}" for i, (u, t, _, _) in enumerate(_all_queries())])
def test_every_dashboard_query_runs_and_returns_rows(hall: Hall, uid: str, title: str,
                                                     text: str, days: float) -> None:
    rows = hall.q(text, days)
    assert rows, f"{uid} / {title}: no rows for {text}"


def test_overview_numbers(hall: Hall) -> None:
    o = "evalterm-overview"
    assert hall.q(_target(o, "满意率"))[0]["mean"] == pytest.approx(21 / 25)
    assert hall.q(_target(o, "差评数"))[0]["sum"] == 4
    assert hall.q(_target(o, "参评率"))[0]["sum_sum"] == pytest.approx(24 / 25)
    assert hall.q(_target(o, "评价数"))[0]["count"] == 25
    assert hall.q(_target(o, "办结数"))[0]["sum"] == 25
    levels = {r["level"]: r["count"] for r in hall.q(_target(o, "五级评价分布"))}
    assert levels == {"5": 14, "4": 5, "3": 2, "2": 2, "1": 2}
    index = hall.q(_target(o, "满意指数"))[0]
    assert list(index.values())[1] == pytest.approx((102 / 25 - 1) * 25)


def test_overview_filters_by_window_and_staff(hall: Hall) -> None:
    q = _target("evalterm-overview", "满意率")
    assert hall.q(q, window="w1")[0]["mean"] == pytest.approx(5 / 6)
    assert hall.q(q, window=["w1", "w4"])[0]["mean"] == pytest.approx(6 / 10)
    assert hall.q(q, staff="s-w2")[0]["mean"] == 1.0
    assert hall.q(q, hall="other") == []
    assert hall.q(q, service="sfz", window="w3")[0]["mean"] == 1.0


def test_ranking_merges_ratings_and_coverage_per_window(hall: Hall) -> None:
    o = "evalterm-overview"
    ratings = {r["window"]: r for r in hall.q(_target(o, "窗口排名", "A"))}
    cover = {r["window"]: r for r in hall.q(_target(o, "窗口排名", "B"))}
    assert set(ratings) == {"w1", "w2", "w3", "w4", "w5"}
    assert ratings["w3"]["idx"] == 100 and ratings["w4"]["idx"] == pytest.approx(31.25)
    assert ratings["w4"]["bad"] == 3 and ratings["w1"]["bad"] == 1
    assert cover["w1"]["coverage"] == pytest.approx(6 / 7) and cover["w1"]["completed"] == 7
    assert cover["w3"]["coverage"] == 1
    reasons = sorted(r["reason"] for r in hall.q(_target(o, "差评原因")))
    assert reasons == ["attitude", "attitude", "efficiency", "wait"]


def test_detail_bad_ratings_unrated_and_timing(hall: Hall) -> None:
    d = "evalterm-detail"
    bad = hall.q(_target(d, "差评明细"))
    assert sorted((r["window"], r["level"], r["reason"], r["txn"]) for r in bad) == [
        ("w1", "2", "attitude", "H1-w1-005"), ("w4", "1", "attitude", "H1-w4-003"),
        ("w4", "1", "efficiency", "H1-w4-001"), ("w4", "2", "wait", "H1-w4-002")]
    assert all(r["link"] == "linked" and r["staff"] == f"s-{r['window']}" for r in bad)
    unrated = hall.q(_target(d, "未评价办件"))
    assert [(r["txn"], r["window"]) for r in unrated] == [("H1-w1-UNRATED", "w1")]
    rts = sorted(r["rt"] for r in hall.q(_target(d, "邀请到按键用时分布")))
    assert len(rts) == 24 and rts[0] == pytest.approx(0.3) and rts[-1] == 40
    staff = {r["staff"]: r for r in hall.q(_target(d, "工作人员满意度", "A"))}
    assert staff["s-w1"]["n"] == 6 and staff["s-w1"]["bad"] == 1
    names = {r["staff"]: r for r in hall.q(_target(d, "工作人员满意度", "B"))}
    assert names["s-w1"]["name"] == "张伟" and names["s-w1"]["completed"] == 7
    levels = hall.q(_target(d, "评价等级分布随时间变化"), window="w4")
    assert sum(r["count"] for r in levels) == 4
    assert [(r["window"], r["level"], r["unlinked_reason"]) for r in
            hall.q(_target(d, "未关联办件的评价"))] == [("w5", "4", "no_transaction")]


def test_integrity_flags_the_cheating_window_with_its_reason(hall: Hall) -> None:
    i = "evalterm-integrity"
    flagged = hall.q(days=7, text=_target(i, "被标记的窗口"))
    assert {r["window"] for r in flagged} == {"w3"}
    assert all(r["severity"] >= 2 for r in flagged)
    assert any("秒内完成" in r["reasons_zh"] for r in flagged)
    # The fixture hall has no past: fast responses against peers alone are weak (they still
    # give the reason), the staff member's rhythm is the strong evidence.
    assert "regular_response" in flagged[0]["strong"].split(",")
    en = hall.q(_target("evalterm-integrity-en", "Flagged windows"), 7)
    assert any("faster than a citizen" in r["reasons_en"] for r in en)
    evidence = hall.q(days=7, text=_target(i, "指标证据"))
    assert {(r["window"], r["indicator"], r["strength"]) for r in evidence} >= {
        ("w3", "regular_response", "strong"), ("w3", "fast_response", "weak")}
    assert not [r for r in evidence if r["window"] in ("w1", "w2") and r["strength"] == "strong"]
    timeline = hall.q(days=7, text=_target(i, "每日判定"))
    assert {r["window"]: r["max"] for r in timeline}["w3"] >= 2
    assert {r["window"]: r["max"] for r in timeline}["w1"] < 2
    fast = hall.q(days=7, text=_target(i, "指标：${indicator}"), indicator="fast_response")
    assert {r["window"]: r["last"] for r in fast}["w3"] == 8


def test_evidence_list_names_the_flagged_windows_ratings(hall: Hall) -> None:
    rows = hall.q(days=7, text=_target("evalterm-integrity", "证据清单（可核对排队记录与监控）"))
    assert {r["window"] for r in rows} == {"w3"}  # only flagged windows have an evidence list
    ratings = [r for r in rows if r["kind"] == "rating"]
    # w3's rhythm is the strong evidence: its ratings, by case number, level, device, seq.
    regular = [r for r in ratings if r["indicator"] == "regular_response"]
    assert len(regular) >= 6
    assert {r["txn"] for r in regular} <= set(hall.txns["w3"])
    assert all(r["level"] == 5 and r["device"] == "kp-w3" and r["seq"] is not None
               and r["rt_ms"] < 800 and r["severity"] >= 2 for r in regular)
    en = hall.q(days=7, text=_target("evalterm-integrity-en",
                                     "Evidence list (check against the queue log and CCTV)"))
    assert len(en) == len(rows)


def test_funnel_plot_limits_narrow_with_volume(hall: Hall) -> None:
    rows = {r["window"]: r for r in hall.q(_target("evalterm-integrity", "漏斗图：满意率与评价量"))}
    assert rows["w3"]["n"] == 8 and rows["w3"]["rate"] == 1
    for r in rows.values():
        assert r["lo998"] < r["lo95"] < 0.95 < r["hi95"] < r["hi998"]
    assert rows["w3"]["hi95"] - 0.95 < rows["w4"]["hi95"] - 0.95  # 8 ratings vs 4


def test_devices(hall: Hall) -> None:
    d = "evalterm-devices"
    assert hall.q(_target(d, "离线设备"))[0]["count"] == 1
    assert hall.q(_target(d, "在线设备"))[0]["count"] == 4
    status = {r["device"]: r["online"] for r in hall.q(_target(d, "设备状态"))}
    assert status == {"kp-w1": 1, "kp-w2": 1, "kp-w3": 1, "kp-w4": 1, "kp-w5": 0}
    seen = {r["device"] for r in hall.q(_target(d, "最后上报时间"))}
    assert seen == {f"kp-{w}" for w in WINDOWS}
    assert [r["device"] for r in hall.q(_target(d, "重启次数"))] == ["kp-w1"]
    stuck = hall.q(_target(d, "按键卡住"))
    assert [(r["device"], r["d_key"], r["d_held_ms"]) for r in stuck] == [("kp-w2", 3, 12000)]
    outbox = hall.q(_target(d, "设备待发队列"), window="w5")
    assert [r["mean"] for r in outbox] == [2, 9, 14]
    reconnects = {r["device"]: r["reconnects"] for r in hall.q(_target(d, "重连与丢弃"))}
    assert reconnects["kp-w5"] == 0  # the counter did not move within the range


def test_followup_figures_per_window_and_staff(hall: Hall) -> None:
    f = "evalterm-followup"
    today = 0.5  # the dashboard's default range (see _days)
    # Today's 4 cases (w1: 1, w4: 3): w1's closed on time and called back (满意), one of w4's
    # rectified; w2's old case lies before today.
    assert hall.q(_target(f, "整改率"), today)[0]["rect"] == pytest.approx(2 / 4)
    assert hall.q(_target(f, "按期整改率"), today)[0]["ontime"] == pytest.approx(1 / 4)
    assert hall.q(_target(f, "回访率"), today)[0]["callback"] == pytest.approx(1 / 4)
    assert hall.q(_target(f, "回访满意率"), today)[0]["callsat"] == 1
    # Open and overdue now, whenever the case was opened: w4's three and w2's old one.
    assert hall.q(_target(f, "未办结"), today)[0]["open"] == 4
    assert hall.q(_target(f, "已逾期"), today)[0]["overdue"] == 1
    assert hall.q(_target(f, "已逾期"), today, window="w4")[0]["overdue"] == 0
    rates = {r["window"]: r for r in hall.q(_target(f, "各窗口整改情况"), today)}
    assert set(rates) == {"w1", "w4"}
    assert (rates["w1"]["cases"], rates["w1"]["rect"], rates["w1"]["callback"]) == (1, 1, 1)
    assert (rates["w4"]["cases"], rates["w4"]["rect"], rates["w4"]["ontime"]) == (
        3, pytest.approx(1 / 3), 0)
    called = {r["window"]: r["callsat"] for r in hall.q(_target(f, "各窗口整改情况", "C"), today)}
    assert called == {"w1": 1}  # nobody called back at w4: no rate, not 0 %
    now = {r["window"]: (r["open"], r["overdue"])
           for r in hall.q(_target(f, "各窗口整改情况", "B"), today)}
    assert now == {"w1": (0, 0), "w2": (1, 1), "w4": (3, 0)}
    staff = {r["staff"]: r for r in hall.q(_target(f, "各工作人员整改情况"), today)}
    assert staff["s-w4"]["cases"] == 3 and staff["s-w1"]["ontime"] == 1
    assert {r["staff"]: r["overdue"] for r in hall.q(_target(f, "各工作人员整改情况", "B"),
                                                     today)}["s-w2"] == 1
    listed = hall.q(_target(f, "未办结案件（逾期在前）"), today)
    assert sorted((r["window"], r["txn"], r["overdue"]) for r in listed) == [
        ("w2", "H1-w2-OLD", 1), ("w4", "H1-w4-001", 0), ("w4", "H1-w4-002", 0),
        ("w4", "H1-w4-003", 0)]
    assert {r["state"] for r in listed} == {"open", "rectified"}
    assert all(isinstance(r["case_id"], int) for r in listed)  # the UI link's /ui/cases/<id>


def test_names_from_the_directory(hall: Hall) -> None:
    q = _target("evalterm-followup", "未办结案件（逾期在前）", "names_window")
    assert {r["window"]: r["name"] for r in hall.q(q)} == WINDOW_NAMES
    assert {r["window"]: r["name"] for r in hall.q(q, hall="other")} == {}
    staff = _target("evalterm-detail", "差评明细", "names_staff")
    assert {r["staff"]: r["name"] for r in hall.q(staff)}["s-w4"] == "张伟"  # from the feed
    service = _target("evalterm-detail", "差评明细", "names_service")
    assert {r["service"]: r["name"] for r in hall.q(service)} == {"sfz": "居民身份证换领",
                                                               "hk": "居民身份证换领"}


def _rule(uid: str) -> dict[str, Any]:
    return next(r for r in alerts.rules() if r["uid"] == uid)


def _windows(values: dict[tuple, float]) -> set[str]:
    return {dict(k)["window"] for k in firing(values)}


def test_alert_window_flagged(hall: Hall) -> None:
    values = evaluate_rule(hall.cfg, _rule("evalterm-window-flagged"), hall.now + MIN)
    assert _windows(values) == {"w3"}
    assert {dict(k)["window"] for k in values} >= {"w1", "w2", "w3", "w4"}


def test_alert_bad_surge_fires_only_once_the_threshold_is_crossed(hall: Hall) -> None:
    rule = _rule("evalterm-bad-surge")
    # 6 minutes ago w4 had 3 ratings in 15 minutes (2 bad): not yet 4 ratings.
    before = evaluate_rule(hall.cfg, rule, hall.now - 6 * MIN)
    assert dict(next(iter(before)))["window"] == "w4" and _windows(before) == set()
    after = evaluate_rule(hall.cfg, rule, hall.now + MIN)
    assert _windows(after) == {"w4"}
    # 11 minutes later the first ratings have left the 15-minute window again.
    assert _windows(evaluate_rule(hall.cfg, rule, hall.now + 11 * MIN)) == set()


def test_alert_device_offline_and_outbox(hall: Hall) -> None:
    offline = evaluate_rule(hall.cfg, _rule("evalterm-device-offline"), hall.now + MIN)
    assert {dict(k)["device"] for k in firing(offline)} == {"kp-w5"}
    assert len(offline) == 5
    outbox = evaluate_rule(hall.cfg, _rule("evalterm-outbox-growing"), hall.now + MIN)
    assert {dict(k)["device"] for k in firing(outbox)} == {"kp-w5"}
    # 20 minutes ago the queue had only just started growing.
    assert firing(evaluate_rule(hall.cfg, _rule("evalterm-outbox-growing"),
                                hall.now - 14 * MIN)) == set()


def test_alert_cases_overdue_fires_and_stops_once_closed(hall: Hall) -> None:
    rule = _rule("evalterm-cases-overdue")
    values = evaluate_rule(hall.cfg, rule, int(time.time() * 1000) + MIN)
    assert _windows(values) == {"w2"}
    assert {dict(k)["window"] for k in values} == {"w1", "w2", "w4"}  # 0: not firing
    conn = connect(hall.cfg.state_db)
    svc = CaseService(conn, DeadlineRule(5), lambda: int(time.time() * 1000))
    old = conn.execute("SELECT case_id FROM mgr_case WHERE txn = 'H1-w2-OLD'").fetchone()[0]
    svc.verify("mgr", old, "f")
    svc.rectify("mgr", old, "a")
    svc.callback("mgr", old, False, "")
    svc.close("mgr", old)
    conn.close()
    wait_for(lambda: _last_open(hall.cfg, "w2") == (0, 0), what="w2 counted again")
    values = evaluate_rule(hall.cfg, rule, int(time.time() * 1000) + MIN)
    assert _windows(values) == set() and dict(values)  # still evaluated, no longer firing


def test_indicator_names_match_the_detector() -> None:
    from collector.detection.indicators import INDICATORS
    from collector.grafana.integrity import INDICATORS as LABELS

    assert set(LABELS) == set(INDICATORS)


def test_every_alert_query_is_exercised() -> None:
    tested = {"evalterm-window-flagged", "evalterm-bad-surge", "evalterm-device-offline",
              "evalterm-outbox-growing", "evalterm-cases-overdue"}
    assert {r["uid"] for r in alerts.rules()} == tested
    assert json.dumps(alerts.rules()).count('"query"') == 7
