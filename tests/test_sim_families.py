"""The red team's manipulation families (collector/sim/profiles.py FAMILIES): each one's dose
changes what reaches the collector as the family says, through the real pipeline and the
firmware's own terminal (collector/sim/device.py)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from collector.config import load_config
from collector.sim.device import SimTerminal
from collector.sim.hall import VirtualHall
from collector.sim.profiles import FAMILIES, HONEST_TRAITS, draw_hall, draw_window

TARGET = "w01"


def _hall(tmp_path: Path, profile: str, dose: float, params: dict[str, Any] | None = None,
          days: int = 1, bad: float = 0.05, coverage: float = 0.7, seed: int = 3,
          group: int = 1, hardware: tuple[str, ...] | None = None) -> VirtualHall:
    """A busy target window (14 transactions an hour) with the family at `dose` from the first
    day, `group` windows of it (cooperation), and two honest windows."""
    cfg = load_config(None, env={}).with_overrides(
        collector__data_dir=str(tmp_path / f"{profile}-{dose}-{seed}-{hardware}"))
    rng = random.Random(seed)
    plans = []
    for i in range(group + 2):
        prof = profile if i < group else "honest"
        plan = draw_window(rng, "h", i + 1, profile=prof, dose=dose if prof != "honest" else None)
        if prof != "honest":
            plan.params.update(params or {})
            plan.txn_per_hour, plan.coverage, plan.pauses_per_day = 14.0, coverage, 0.0
            plan.blips_per_day = 0.0
            plan.levels = (bad * 0.4, bad * 0.6, 0.15, 0.25, 0.6 - bad)
        plans.append(plan)
    hall = (VirtualHall(cfg, plans, hall="h", seed=seed) if hardware is None
            else VirtualHall(cfg, plans, hall="h", seed=seed, hardware=hardware))
    for d in range(days):
        hall.schedule_day(d)
        hall.run_until(hall.day_bounds(d)[1] - 1)
    return hall


def _q(hall: VirtualHall, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return hall.conn.execute(sql, args).fetchall()


def _expired(hall: VirtualHall, window: str = TARGET) -> int:
    return _q(hall, "SELECT COUNT(*) FROM device_log WHERE window=? AND kind='invite_expired'",
              window)[0][0]


def _truth(hall: VirtualHall, what: str, window: str = TARGET) -> int:
    return sum(c.get(what, 0) for (w, _), c in hall.truth.items() if w == window)


def _last_keys(hall: VirtualHall, window: str = TARGET) -> list[int]:
    rows = _q(hall, "SELECT data FROM device_log WHERE window=? AND kind='heartbeat' "
              "ORDER BY at_ms DESC LIMIT 1", window)
    return list(json.loads(rows[0][0])["keys"])


def test_the_device_runs_the_firmwares_terminal(tmp_path: Path) -> None:
    from etfw.terminal import Terminal

    hall = _hall(tmp_path, "fill_in", 0.5)
    dev = hall.devices[TARGET]
    assert isinstance(dev, SimTerminal) and isinstance(dev.term, Terminal)
    assert type(dev.term).__module__ == "etfw.terminal"
    assert hall.rejected == 0  # every message the firmware's code signed was accepted


def test_the_profiles_timing_is_the_firmwares_default_config() -> None:
    from etfw.config import DEFAULTS

    from collector.sim import profiles

    assert profiles.MIN_INTERVAL_MS == DEFAULTS["min_interval_ms"]
    assert profiles.REASON_TIMEOUT_MS == DEFAULTS["reason_ms"]
    assert list(profiles.REASON_KEYS) == DEFAULTS["reason_keys"]


def test_every_family_has_a_dose_grid_within_its_range() -> None:
    for fam in FAMILIES.values():
        assert fam.grid and all(fam.lo <= d <= fam.hi for d in fam.grid)


@pytest.mark.parametrize("profile", ["fill_in", "cooperation"])
def test_fill_in_dose_is_the_share_of_unrated_invitations_rated_by_staff(
        tmp_path: Path, profile: str) -> None:
    group = 2 if profile == "cooperation" else 1
    low = _hall(tmp_path, profile, 0.1, {"delay_ms": 20_000.0}, group=group)
    full = _hall(tmp_path, profile, 1.0, {"delay_ms": 20_000.0}, group=group)
    # At dose 1 no invitation expires (each one left by its citizen is rated within its
    # lifetime); at 0.1 most of those left do.
    assert _expired(full) == 0 and _truth(full, "filled_in" if group == 1 else "cooperated") > 5
    assert _expired(low) > 5
    rts = [r[0] for r in _q(full, "SELECT rt_ms FROM rating WHERE window=? AND mode='invited'",
                            TARGET)]
    assert max(rts) < 120_000  # within the invitation's lifetime


def test_a_long_fill_in_delay_reaches_the_invitations_lifetime(tmp_path: Path) -> None:
    hall = _hall(tmp_path, "fill_in", 1.0, {"delay_ms": 110_000.0})
    rts = sorted(r[0] for r in _q(hall, "SELECT rt_ms FROM rating WHERE window=? AND "
                                  "mode='invited'", TARGET))
    assert rts[-1] > 100_000 and rts[-1] < 120_000


def test_drip_adds_at_most_k_ratings_a_day_spread_over_the_hours(tmp_path: Path) -> None:
    hall = _hall(tmp_path, "drip", 6, {"delay_ms": 4000.0}, days=2, coverage=0.5)
    for day in (0, 1):
        n = hall.truth.get((TARGET, day), {}).get("dripped", 0)
        assert 1 <= n <= 6
    none = _hall(tmp_path, "drip", 0, {"delay_ms": 4000.0}, days=2, coverage=0.5)
    assert _truth(none, "dripped") == 0


@pytest.mark.parametrize("mode", ["power", "network"])
def test_interruption_cuts_after_bad_ratings_with_the_dosed_probability(
        tmp_path: Path, mode: str) -> None:
    hall = _hall(tmp_path, "interruption", 1.0, {"mode": mode, "minutes": 3.0}, bad=0.3)
    cuts = _truth(hall, "interrupted")
    assert cuts >= 5
    boots = _q(hall, "SELECT COUNT(*) FROM device_log WHERE window=? AND kind='boot'",
               TARGET)[0][0]
    offline = _q(hall, "SELECT COUNT(*) FROM device_log WHERE window=? AND kind='status' "
                 "AND data LIKE '%offline%'", TARGET)[0][0]
    if mode == "power":
        assert boots >= cuts - 1  # a cut during a cut changes nothing
    else:
        assert boots == 0 and offline >= 1
    none = _hall(tmp_path, "interruption", 0.0, {"mode": mode}, bad=0.3)
    assert _truth(none, "interrupted") == 0


def test_selection_by_outcome_leaves_no_rating_below_4(tmp_path: Path) -> None:
    # The window's levels 1-3 are 35 % of its citizens: a dose of 0.35 is all of them.
    full = _hall(tmp_path, "selection", 0.35, {"by": "outcome", "misjudged": 0.0}, bad=0.2,
                 coverage=0.95)
    levels = [r[0] for r in _q(full, "SELECT level FROM rating WHERE window=? AND "
                               "mode='invited'", TARGET)]
    assert levels and min(levels) >= 4
    asked = len(levels) / (len(levels) + _truth(full, "not_asked")
                           + _truth(full, "unhappy_not_asked"))
    assert 0.5 < asked < 0.8  # about 65 % still asked
    part = _hall(tmp_path, "selection", 0.1, {"by": "outcome", "misjudged": 0.0}, bad=0.2,
                 coverage=0.95)
    assert min(r[0] for r in _q(part, "SELECT level FROM rating WHERE window=?", TARGET)) <= 3


def test_selection_by_duration_spares_short_cases(tmp_path: Path) -> None:
    # 15 % of the citizens not asked: those whose service took longer than about 12 minutes.
    hall = _hall(tmp_path, "selection", 0.15, {"by": "duration", "misjudged": 0.0},
                 coverage=0.95)
    rows = _q(hall, "SELECT completed_ms - started_ms, state FROM txn WHERE window=?", TARGET)
    long = [s for d, s in rows if d > 840_000]
    short = [s for d, s in rows if d <= 600_000]
    # A long case may still be rated by the previous citizen's late press on its invitation.
    assert long and long.count("rated") <= 0.15 * len(long)
    assert short.count("rated") >= 0.8 * len(short)
    not_asked = _truth(hall, "not_asked") + _truth(hall, "unhappy_not_asked")
    assert 0.08 < not_asked / len(rows) < 0.25


@pytest.mark.parametrize(("mode", "seen"), [("dead", False), ("dead", True),
                                             ("remap", False), ("remap", True)])
def test_tampering_with_and_without_the_firmware_seeing_the_key(
        tmp_path: Path, mode: str, seen: bool) -> None:
    hall = _hall(tmp_path, "tampering", 1.0, {"mode": mode, "keys": (1, 2), "to": 5,
                                              "seen": seen, "how": "switch"}, bad=0.3)
    assert _truth(hall, "tampered_press") > 5
    levels = [r[0] for r in _q(hall, "SELECT level FROM rating WHERE window=? AND "
                               "mode='invited'", TARGET)]
    assert min(levels) >= 3  # no 差评 is ever published
    keys = _last_keys(hall)
    if seen:
        assert keys[0] + keys[1] > 5  # the firmware counted the physical presses
    else:
        # a cut wire counts nothing; a rewired key counts as 5 (reason tags aside, the
        # counters of 1-2 only hold stray presses and reason tags)
        assert keys[0] + keys[1] < _truth(hall, "tampered_press")


def _events(hall: VirtualHall, kind: str, window: str = TARGET) -> list[tuple[int, Any]]:
    return [(t, json.loads(d)) for t, d in _q(
        hall, "SELECT at_ms, data FROM device_log WHERE window=? AND kind=? ORDER BY at_ms",
        window, kind)]


@pytest.mark.parametrize("mode", ["dead", "remap"])
def test_a_keypad_altered_in_its_wiring_fails_the_firmwares_key_self_test(
        tmp_path: Path, mode: str) -> None:
    # A key's GPIO wire cut or moved while its switch still switches its ladder resistor:
    # the firmware's own etfw/tamper.py compares the two and reports the key.
    hall = _hall(tmp_path, "tampering", 1.0, {"mode": mode, "keys": (1,), "to": 5,
                                              "seen": False, "how": "wire",
                                              "opened": "powered"}, bad=0.3)
    failed = _events(hall, "key_selftest_failed")
    assert len(failed) >= 2 and all(1 in d["keys"] for _, d in failed)
    assert all(d["keys"] == ([1] if mode == "dead" else [1, 5]) for _, d in failed)
    opened = _events(hall, "enclosure_opened")  # opened with the device running, then shut
    assert [d["closed"] for _, d in opened] == [False, True]
    assert opened[0][0] < failed[0][0]
    for w in ("w02", "w03"):  # honest keypads pass their self-test
        assert not _events(hall, "key_selftest_failed", w)


def test_a_keypad_altered_at_its_switches_passes_the_self_test(tmp_path: Path) -> None:
    # The switch rewired along with its resistor (or blocked, or its cap moved): the ladder
    # agrees with the GPIOs; unplugged before the lid was opened: a power loss and a restart
    # before opening hours, no lid event (open and shut while the board had no power).
    hall = _hall(tmp_path, "tampering", 1.0, {"mode": "remap", "keys": (1, 2), "to": 4,
                                              "seen": False, "how": "switch",
                                              "opened": "unplugged"}, bad=0.3)
    assert _truth(hall, "tampered_press") > 5
    assert not _events(hall, "key_selftest_failed")
    assert not _events(hall, "enclosure_opened")
    lost, boots = _events(hall, "power_lost"), _events(hall, "boot")
    assert len(lost) == 1 and len(boots) == 1 and lost[0][0] < boots[0][0]
    assert lost[0][0] < hall.local_ms(hall.business_day(0), "08:30")


def test_a_power_cut_after_a_bad_rating_sends_the_last_gasp(tmp_path: Path) -> None:
    hall = _hall(tmp_path, "interruption", 1.0, {"mode": "power", "minutes": 3.0,
                                                 "after_ms": 5000}, bad=0.3)
    lost = [t for t, _ in _events(hall, "power_lost")]
    assert len(lost) >= _truth(hall, "interrupted") - 1 >= 4
    bad = [t for (t,) in _q(hall, "SELECT press_ms FROM rating WHERE window=? AND level<=2",
                            TARGET)]
    # each power loss a few seconds after a 差评 was pressed (5-8 s: the family's delay)
    assert all(any(0 < t - b <= 9000 for b in bad) for t in lost)
    net = _hall(tmp_path, "interruption", 1.0, {"mode": "network", "minutes": 3.0}, bad=0.3,
                seed=4)
    assert not _events(net, "power_lost")  # the Wi-Fi gone, the power there


def test_honest_hardware_incidents_are_reported_as_they_happen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collector.sim.hall as sim_hall

    monkeypatch.setattr(sim_hall, "DEVICE_POWER_CUT", 1.0)
    monkeypatch.setattr(sim_hall, "TECHNICIAN_VISIT", 1.0)
    hall = _hall(tmp_path, "fill_in", 0.0)
    for w in ("w01", "w02", "w03"):
        assert len(_events(hall, "power_lost", w)) == 1
        # opened, shut again (and, when the power cut fell within the visit, open at boot)
        closed = [d["closed"] for _, d in _events(hall, "enclosure_opened", w)]
        assert closed[0] is False and closed[-1] is True and closed.count(True) == 1
        assert not _events(hall, "key_selftest_failed", w)
    bare = _hall(tmp_path, "fill_in", 0.0, hardware=())  # a board without the parts
    assert not _events(bare, "power_lost") and not _events(bare, "enclosure_opened")


def test_honest_variation_draws_every_trait_and_batch_closes_are_bursts(tmp_path: Path) -> None:
    rng = random.Random(1)
    plans = draw_hall(rng, "h", 200, [], 0, variation=True, days=5)
    seen = {t for p in plans for t in p.traits}
    assert set(HONEST_TRAITS) <= seen
    assert any(p.levels[4] >= 0.99 for p in plans if p.excellent)
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path / "b"))
    plan = draw_window(random.Random(2), "h", 1)
    plan.traits = {"batch_close": 6.0}
    plan.txn_per_hour = 2.0
    hall = VirtualHall(cfg, [plan], hall="h", seed=2)
    hall.schedule_day(0)
    hall.run_until(hall.day_bounds(0)[1] - 1)
    done = sorted(r[0] for r in _q(hall, "SELECT completed_ms FROM txn"))
    assert sum(1 for a, b in itertools.pairwise(done) if b - a <= 40_000) >= 3


def test_response_times_have_no_spike_at_a_floor(tmp_path: Path) -> None:
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp_path / "rt"))
    plan = draw_window(random.Random(4), "h", 1)
    plan.rt_median_ms, plan.rt_sigma = 900.0, 0.7  # many citizens near the floor
    hall = VirtualHall(cfg, [plan], hall="h", seed=4)
    rts = [hall._rt(plan) for _ in range(5000)]
    assert min(rts) >= 350
    # no value repeats as a floor would: the most common 10 ms band holds under 3 %
    bands: dict[int, int] = {}
    for r in rts:
        bands[r // 10] = bands.get(r // 10, 0) + 1
    assert max(bands.values()) < 150


def test_frontier_counts_each_dose_and_draws_a_png(tmp_path: Path) -> None:
    from collector.errors import UsageError
    from collector.sim.frontier import format_frontier, frontier, plot_frontier

    points, outcomes = frontier(["fill_in"], runs=1, days=3, start_day=1, per_run=2,
                                windows=(4, 4), every_min=120, workers=1, seed=3,
                                doses={"fill_in": (0.2, 1.0)})
    assert [(p.family, p.dose, p.windows) for p in points] == [("fill_in", 0.2, 2),
                                                              ("fill_in", 1.0, 2)]
    assert all(p.day1 <= p.day2 <= p.windows for p in points)
    assert sum(o.profile == "honest" for o in outcomes) == 4
    text = format_frontier(points, outcomes)
    assert "fill_in" in text and "honest window-days falsely flagged" in text
    files = plot_frontier(points, outcomes, tmp_path / "img")
    assert [f.name for f in files] == ["frontier_fill_in.png"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in ({"families": ["nope"]}, {"days": 2, "start_day": 1}, {"workers": 3}):
        with pytest.raises(UsageError):
            frontier(**bad)  # type: ignore[arg-type]


def test_the_staffs_delay_range_replaces_the_familys_with_the_same_draws() -> None:
    from collector.errors import UsageError
    from collector.sim.frontier import frontier
    from collector.sim.profiles import STAFF_DELAY_MS

    for fam, (lo, hi) in STAFF_DELAY_MS.items():
        own = draw_window(random.Random(5), "h", 1, profile=fam, start_day=1, dose=1.0)
        assert lo <= own.params["delay_ms"] <= hi
        set_ = draw_window(random.Random(5), "h", 1, profile=fam, start_day=1, dose=1.0,
                           delay_ms=(15_000, 60_000))
        assert 15_000 <= set_.params["delay_ms"] <= 60_000
        # Only the delay differs: every other draw of the window is the same.
        assert {k: v for k, v in set_.params.items() if k != "delay_ms"} == \
            {k: v for k, v in own.params.items() if k != "delay_ms"}
        assert set_.txn_per_hour == own.txn_per_hour and set_.traits == own.traits
    for bad in ((0.1, 10.0), (60.0, 15.0), (10.0, 200.0)):
        with pytest.raises(UsageError, match="--delay-s"):
            frontier(["fill_in"], delay_s=bad)
