"""The real-time simulator's manipulation profiles over the real broker, into the real collector.

A short run of a hall with honest windows of different quality and volume (one of them excellent)
and manipulated ones; every manipulation must leave its trace in the collector's state through the
protocol (ratings, key counters, events, last will, boot counter), and the detector must flag the
manipulated windows whose evidence a short run can hold, with the expected reason, and none of the
honest ones.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

import pytest
from helpers import wait_for

from collector.cli.sim import sim_keys as _sim_keys
from collector.config import Config
from collector.db import connect
from collector.detection import run_detection
from collector.service import Collector
from collector.sim.profiles import PROFILES
from collector.sim.realtime import SimHall, default_hall, parse_profiles

PROFILED = {"w02": "suppressed_negatives", "w03": "self_rating", "w05": "uninvited_pressing",
            "w06": "unplugging", "w07": "bad_key_disabled", "w08": "rating_during_pause"}


def test_parse_profiles() -> None:
    assert parse_profiles(["self_rating:w03", "fill_in_burst:w05"]) == {
        "w03": "self_rating", "w05": "fill_in_burst"}
    for bad in (["self_rating"], ["nope:w01"], ["self_rating:w01", "unplugging:w01"]):
        with pytest.raises(ValueError):
            parse_profiles(bad)
    with pytest.raises(ValueError, match="no window w09"):
        default_hall("h", 8, profiles={"w09": "self_rating"})


def test_default_hall_differs_and_shares_the_profiles_draws() -> None:
    spec = default_hall("h", 10, 6.0, seed=4)
    rates = [w.rate_per_min for w in spec.windows]
    bad = [w.levels[0] + w.levels[1] for w in spec.windows]
    assert max(rates) > 2 * min(rates) and max(bad) > 3 * min(bad)
    assert sum(w.plan.excellent for w in spec.windows) == 2
    for i, profile in enumerate(PROFILES, 1):
        spec = default_hall("h", max(8, len(PROFILES)), profiles={f"w{i:02d}": profile})
        plan = spec.windows[i - 1].plan
        assert plan.profile == profile and plan.params and not plan.excellent


def test_busy_windows_run_at_the_busiest_pace_and_the_draw_is_unchanged() -> None:
    plain = default_hall("h", 6, 6.0, seed=1, profiles={"w05": "self_rating"})
    busy = default_hall("h", 6, 6.0, seed=1, profiles={"w05": "self_rating"}, busy=("w05",))
    top = max(w.rate_per_min for w in plain.windows)
    assert plain.windows[4].rate_per_min < top  # seed 1: a quiet window, as the demo had it
    assert busy.windows[4].rate_per_min == top
    for a, b in zip(plain.windows, busy.windows, strict=True):
        assert a.plan == b.plan
        assert a.window == "w05" or a.rate_per_min == b.rate_per_min


def _rows(conn: sqlite3.Connection, sql: str, *args: object) -> list[tuple]:
    return conn.execute(sql, args).fetchall()


@pytest.mark.servers
def test_profiles_reach_the_collector_and_the_detector(make_config: Callable[..., Config],
                                                      broker: object) -> None:
    cfg = make_config(linking__rating_window_s=30, linking__invite_ttl_s=20, linking__grace_s=2,
                      detection__enabled=False, detection__opening_hours="00:00-24:00",
                      detection__business_days="1-7",
                      # A hall 100x busier than a real one, open since midnight but simulated for
                      # 40 s: the pace-based burst scan would see bursts everywhere.
                      detection__burst_min=10_000)
    spec = default_hall("hall01", windows=8, rate_per_min=14, seed=2, profiles=PROFILED)
    plans = {w.window: w.plan for w in spec.windows}
    # Make each manipulation show within a short run (the ranges are the evaluation's).
    plans["w02"].levels = (0.15, 0.15, 0.2, 0.2, 0.3)   # 差评 to suppress ...
    plans["w02"].params["drop"] = 1.0                   # ... and every one suppressed
    plans["w03"].params.update(share=1.0, mu_ms=500, sd_ms=60, five=1.0)
    for i in (1, 2, 6):  # busy enough for a short run
        spec.windows[i].rate_per_min = 24
    # Self-rating (w03) with enough ratings in 40 s that its evidence is never at the threshold
    # (at 24 a minute, 8 ratings: flagged in most runs, not all).
    spec.windows[2].rate_per_min = 40
    spec.windows[4].rate_per_min = 4  # presses with nothing asked stand out at a quiet window
    plans["w07"].levels = (0.2, 0.2, 0.2, 0.2, 0.2)
    plans["w08"].params.update(presses=(4, 4))
    hall = SimHall(spec, _sim_keys(cfg, spec), "127.0.0.1",  # as `evalterm simulate` does
                   broker.port, prefix=cfg.mqtt.topic_prefix,  # type: ignore[attr-defined]
                   seed=5, cycle_s=24)
    collector = Collector(cfg)
    collector.start()
    try:
        wait_for(lambda: collector.health()["mqtt_connected"])
        hall.start()
        hall.run(40, heartbeat_s=3)
        for d in hall.devices:  # the last word of every device: its counters now
            d.plug_in()
        time.sleep(1.5)
        for d in hall.devices:
            d.heartbeat_now()
        sent = hall.ratings_sent()
        state = connect(cfg.state_db)
        wait_for(lambda: _rows(state, "SELECT count(*) FROM rating")[0][0] >= sent,
                 what="every published rating in the state database")
        time.sleep(1.0)
    finally:
        hall.stop()
        collector.stop()
    truth = hall.truth()
    dev = {w.window: w.device for w in spec.windows}

    def log(window: str, kind: str) -> list[dict]:
        return [json.loads(d) for (d,) in _rows(
            state, "SELECT data FROM device_log WHERE device=? AND kind=? ORDER BY id",
            dev[window], kind)]

    def ratings(window: str) -> list[tuple]:
        return _rows(state, "SELECT level, mode, rt_ms, boot, txn FROM rating WHERE device=?",
                     dev[window])

    # suppressed 差评: counted by the keys, never published
    assert truth["w02"].get("negatives_dropped", 0) >= 1
    keys_w02 = log("w02", "heartbeat")[-1]["keys"]
    assert keys_w02[0] + keys_w02[1] >= 1 and all(r[0] >= 3 for r in ratings("w02"))
    # self-rating: 5s published 0.35-0.8 s after the invitation (a citizen who presses anyway
    # may land on the next invitation)
    fast = [r for r in ratings("w03") if r[1] == "invited" and r[2] < 800]
    assert sum(r[0] == 5 for r in fast) >= 5
    # presses with nothing asked: key_uninvited events on keys 4-5 and the counter
    good = [e for e in log("w05", "key_uninvited") if e["key"] in (4, 5)]
    assert len(good) >= 5 and log("w05", "heartbeat")[-1]["uninvited"] >= len(good)
    # unplugging: the broker published the last will, the device came back with the next boot
    assert truth["w06"]["unplugged"] >= 1
    assert {"state": "offline", "fw": "sim-profile-1.0"} in log("w06", "status")
    assert log("w06", "boot") and max(r[3] for r in ratings("w06")) >= 2
    # dead bad-rating keys: no 差评 and no press counted on keys 1-2
    assert truth["w07"].get("negatives_lost", 0) >= 1
    assert log("w07", "heartbeat")[-1]["keys"][:2] == [0, 0]
    assert all(r[0] >= 3 for r in ratings("w07"))
    # ratings during a pause: stand-alone ratings while the window showed 暂停服务
    assert truth["w08"]["rated_while_paused"] >= 1
    paused = _rows(state, "SELECT count(*) FROM window_log WHERE window='w08' AND "
                   "kind='window_paused'")[0][0]
    assert paused >= 1 and any(r[1] == "standalone" for r in ratings("w08"))

    verdicts = {v.window: v for v in run_detection(state, cfg, int(time.time() * 1000),
                                                   write_points=False, per_staff=False)
                if v.staff is None and v.period == "day"}
    state.close()
    flagged = {w for w, v in verdicts.items() if v.flagged}
    strong = {w: {i.name for i in v.indicators if i.strength == "strong"}
              for w, v in verdicts.items()}
    signals = {w: {i.name for i in v.indicators if i.strength != "none"}
               for w, v in verdicts.items()}
    assert "key_counters" in strong["w02"], verdicts["w02"].reasons_en
    assert "w03" in flagged and signals["w03"] & {"fast_response", "regular_response"}, (
        verdicts["w03"].reasons_en)
    assert "w05" in flagged and "uninvited_presses" in signals["w05"], verdicts["w05"].reasons_en
    assert "out_of_service" in strong["w08"], verdicts["w08"].reasons_en
    honest = {w for w in verdicts if w not in PROFILED}
    assert honest and not flagged & honest, {w: verdicts[w].reasons_en for w in flagged & honest}
