"""Each indicator fires on its manipulation and stays silent on honest windows, including an
honest window that is simply excellent. Facts are built directly (no database, no pipeline)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import date

import pytest

from collector.detection import DetectionSettings, Period, detect_hall
from collector.detection.facts import (
    DeviceRecord,
    HallFacts,
    RatingFact,
    TxnFact,
    Unit,
    WindowRecord,
)
from collector.detection.indicators import compute_indicators

S = DetectionSettings.defaults()
DAY = date(2026, 3, 2)  # a Monday
MIDNIGHT = S.midnight_ms(DAY)
NOW = MIDNIGHT + 19 * 3600_000  # after closing: the whole day is in
PERIOD = S.periods(NOW)[0]
assert PERIOD.kind == "day"


def hm(hhmm: str) -> int:
    h, m = map(int, hhmm.split(":"))
    return MIDNIGHT + (h * 60 + m) * 60_000


def honest(name: str, seed: int, *, n_txn: int = 60, bad: float = 0.04, top: float = 0.55,
           coverage: float = 0.85, rt_median: float = 4000, rt_sigma: float = 0.5,
           history: int = 0) -> Unit:
    """A window served honestly all day: transactions, ratings linked to them, a device whose
    key counters agree, heartbeats every 2 minutes, sign-on/off around the two shifts."""
    rng = random.Random(seed)
    shifts = [(hm("08:30"), hm("12:00")), (hm("13:30"), hm("17:30"))]
    txns, ratings = [], []
    keys = [0, 0, 0, 0, 0]
    presses: list[tuple[int, int]] = []  # (time, key) for the counters
    for i in range(n_txn):
        a, b = shifts[i % 2]
        done = a + (b - a - 600_000) * (i // 2 + 0.5) // (n_txn // 2 + 1)
        rated = rng.random() < coverage
        txns.append(TxnFact(done, "rated" if rated else "unrated", f"{name}-s"))
        if not rated:
            continue
        u = rng.random()
        if u < bad:
            level = 1 if u < bad / 2 else 2
        else:
            level = 5 if u < bad + top else rng.choice((3, 4, 4))
        rt = max(450, int(rt_median * math.exp(rng.gauss(0, rt_sigma))))
        press = done + 2000 + rt
        reason = "wait" if level <= 2 else None
        ratings.append(RatingFact(press, level, reason, "invited", rt, "linked", None, f"{name}-s",
                                  done, f"d-{name}", press))
        presses.append((press, level))
        if reason:
            presses.append((press - 1, 4))  # "wait" is the 4th reason key
    wlog = []
    for a, b in shifts:
        wlog += [WindowRecord(a - 60_000, "staff_signon", f"{name}-s"),
                 WindowRecord(b + 60_000, "staff_signoff", f"{name}-s")]
    dlog = [DeviceRecord(hm("07:50"), hm("07:50"), "status", {"state": "online"}, f"d-{name}")]
    presses.sort()
    j = 0
    for t in range(hm("07:50"), hm("18:10"), 120_000):
        while j < len(presses) and presses[j][0] <= t:
            keys[presses[j][1] - 1] += 1
            j += 1
        dlog.append(DeviceRecord(t, t + 200, "heartbeat",
                                 {"keys": list(keys), "uninvited": 0, "filtered": 0}, f"d-{name}"))
    past = tuple(rng.choices((1, 2, 3, 4, 5), weights=(bad / 2, bad / 2, 0.1, 0.9 - top - bad, top),
                             k=history))
    return Unit(name, None, tuple(ratings), tuple(txns), tuple(wlog), tuple(dlog), past,
                history_rated=int(history * coverage), history_decided=history)


def excellent(name: str = "exc", seed: int = 99, **kw: object) -> Unit:
    base = {"n_txn": 90, "bad": 0.0, "top": 0.93, "coverage": 0.96, "rt_median": 3000.0}
    base.update(kw)
    return honest(name, seed, **base)  # type: ignore[arg-type]


def hall(*units: Unit) -> HallFacts:
    peers = [honest(f"p{i}", i, n_txn=30 + 12 * i, bad=0.02 + 0.01 * i, top=0.4 + 0.04 * i,
                    coverage=0.75 + 0.03 * i, rt_median=2500 + 500 * i) for i in range(7)]
    return HallFacts("h1", tuple(peers) + units, has_feed=True, has_signons=True)


def indicator(h: HallFacts, window: str, name: str):
    found = compute_indicators(h, h.units, PERIOD, S)[window]
    return next(i for i in found if i.name == name)


def verdict(h: HallFacts, window: str):
    return next(v for v in detect_hall(h, PERIOD, S, per_staff=False) if v.window == window)


def with_ratings(u: Unit, extra: list[RatingFact]) -> Unit:
    return replace(u, ratings=tuple(sorted(u.ratings + tuple(extra), key=lambda r: r.press_ms)))


# -- an honest hall is quiet ---------------------------------------------------------------------


def test_honest_hall_with_an_excellent_window_flags_nothing():
    h = hall(excellent(), honest("plain", 5))
    flagged = [v for v in detect_hall(h, PERIOD, S, per_staff=True) if v.flagged]
    assert flagged == []
    exc = verdict(h, "exc")
    assert exc.severity <= 1  # at most a notice: excellent is not evidence


# -- unmatched ratings ---------------------------------------------------------------------------


def test_unmatched_fires_on_ratings_without_transactions():
    target = honest("t", 1)
    fake = [RatingFact(hm("10:00") + i * 600_000, 5, None, "standalone", None, "unlinked",
                       "no_transaction", "t-s", None, "d-t") for i in range(8)]
    h = hall(with_ratings(target, fake), excellent())
    ind = indicator(h, "t", "unmatched")
    assert ind.strength == "strong" and ind.value == 8
    assert "8 条评价未匹配" in ind.reason_zh and "8 ratings matched no" in ind.reason_en
    assert indicator(h, "exc", "unmatched").strength == "none"


def test_unmatched_quiet_for_one_late_rating():
    target = honest("t", 1)
    late = [RatingFact(hm("10:00"), 4, None, "invited", 3000, "unlinked", "expired", "t-s")]
    h = hall(with_ratings(target, late), excellent())
    assert indicator(h, "t", "unmatched").strength != "strong"
    assert not verdict(h, "t").flagged


# -- out of service ------------------------------------------------------------------------------


def test_ratings_while_paused_fire():
    target = honest("t", 2)
    # Nobody is served during the pause: drop what the generator put there.
    lo, hi = hm("15:00"), hm("15:45")
    target = replace(target, txns=tuple(t for t in target.txns if not lo <= t.completed_ms < hi),
                     ratings=tuple(r for r in target.ratings if not lo <= r.press_ms < hi))
    pause = [WindowRecord(lo, "window_paused"), WindowRecord(hm("15:40"), "window_resumed")]
    during = [RatingFact(hm("15:05") + i * 480_000, 5, None, "standalone", None, "unlinked",
                         "no_transaction", "t-s", None, "d-t") for i in range(4)]
    target = replace(with_ratings(target, during),
                     window_log=tuple(sorted(target.window_log + tuple(pause),
                                             key=lambda e: e.at_ms)))
    h = hall(target, excellent())
    ind = indicator(h, "t", "out_of_service")
    assert ind.strength == "strong" and ind.evidence["paused"] == 4
    assert "暂停服务期间 4 条" in ind.reason_zh


def test_last_citizen_rating_after_signoff_and_after_hours_is_not_out_of_service():
    target = honest("t", 2)
    # Served at 17:29:30, rated at 17:31:40: after closing and after the staff signed off.
    last = [RatingFact(hm("17:31") + 40_000, 5, None, "invited", 4000, "linked", None, "t-s",
                       hm("17:29") + 30_000, "d-t")]
    h = hall(with_ratings(target, last), excellent())
    ind = indicator(h, "t", "out_of_service")
    assert ind.value == 0 and ind.strength == "none"
    assert indicator(h, "exc", "out_of_service").strength == "none"


# -- key presses outside an invitation -----------------------------------------------------------


def _uninvited(u: Unit, keys: list[int]) -> Unit:
    events = tuple(DeviceRecord(hm("09:00") + i * 900_000, hm("09:00") + i * 900_000,
                                "key_uninvited", {"key": k, "state": "idle"}, f"d-{u.window}")
                   for i, k in enumerate(keys))
    return replace(u, device_log=tuple(sorted(u.device_log + events, key=lambda d: d.received_ms)))


def test_uninvited_good_key_presses_fire():
    h = hall(_uninvited(honest("t", 3), [5] * 12 + [4] * 2), excellent())
    ind = indicator(h, "t", "uninvited_presses")
    assert ind.strength == "strong" and ind.evidence["good_keys"] == 14
    assert "keys 4-5" in ind.reason_en


def test_stray_presses_of_any_key_do_not_fire():
    h = hall(_uninvited(honest("t", 3), [1, 3, 5]), _uninvited(excellent(), [2, 5]))
    assert indicator(h, "t", "uninvited_presses").strength == "none"
    assert indicator(h, "exc", "uninvited_presses").strength == "none"


# -- physical key counters -----------------------------------------------------------------------


def _hidden_bad_presses(u: Unit, n: int) -> Unit:
    """Key 1 pressed n times in the afternoon, no rating published (tampered firmware)."""
    out = []
    for d in u.device_log:
        if d.kind == "heartbeat" and d.at_ms > hm("14:00"):
            keys = list(d.data["keys"])
            keys[0] += min(n, (d.at_ms - hm("14:00")) // 600_000)
            d = replace(d, data={**d.data, "keys": keys})
        out.append(d)
    return replace(u, device_log=tuple(out))


def test_key_counters_fire_when_bad_key_presses_vanish():
    h = hall(_hidden_bad_presses(honest("t", 4), 6), excellent())
    ind = indicator(h, "t", "key_counters")
    assert ind.strength == "strong" and ind.evidence["bad_keys_unexplained"] == 6
    assert "差评键" in ind.reason_zh


def test_key_counters_agree_for_honest_devices():
    h = hall(honest("t", 4), excellent())
    for w in ("t", "exc", "p3"):
        ind = indicator(h, w, "key_counters")
        assert ind.strength == "none" and ind.value == 0


# -- timing --------------------------------------------------------------------------------------


def _staff_presses(u: Unit, rt_mean: float, rt_sd: float, n: int, seed: int = 7,
                   every_ms: int = 700_000) -> Unit:
    """Staff answer n more invitations themselves with a practised rhythm, one every
    `every_ms` from 09:00."""
    rng = random.Random(seed)
    extra, txns = [], []
    for i in range(n):
        done = hm("09:00") + i * every_ms
        rt = max(150, int(rng.gauss(rt_mean, rt_sd)))
        extra.append(RatingFact(done + 2000 + rt, 5, None, "invited", rt, "linked", None,
                                f"{u.window}-s", done, f"d-{u.window}"))
        txns.append(TxnFact(done, "rated", f"{u.window}-s"))
    u = with_ratings(u, extra)
    return replace(u, txns=tuple(sorted(u.txns + tuple(txns), key=lambda t: t.completed_ms)))


def test_fast_responses_without_a_past_are_weak_and_the_rhythm_still_flags():
    # A new window (no past of its own): 18+ of its ratings under 0.8 s against peers alone
    # is at most weak; the staff member's rhythm flags the window.
    h = hall(_staff_presses(honest("t", 5), 450, 60, 20), excellent())
    ind = indicator(h, "t", "fast_response")
    assert ind.strength == "weak" and ind.value >= 18
    assert indicator(h, "t", "regular_response").strength == "strong"
    assert verdict(h, "t").flagged


def test_fast_citizens_of_an_honest_window_do_not_fire():
    # Citizens already standing at the device: median 2.2 s, a few under 0.8 s.
    h = hall(honest("t", 5, rt_median=2200, rt_sigma=0.7), excellent(rt_median=2000))
    assert indicator(h, "t", "fast_response").strength != "strong"
    assert indicator(h, "exc", "fast_response").strength == "none"


def test_fast_responses_fire_against_the_windows_own_past_too():
    # Its citizens took about 4 s before; staff now answer in 0.45 s.
    t = with_past_rts(_staff_presses(honest("t", 5), 450, 60, 20), 4000, 0.5)
    h = hall(t, excellent())
    ind = indicator(h, "t", "fast_response")
    assert ind.strength == "strong" and ind.evidence["past_fast"] <= 1
    assert "本窗口以往仅" in ind.reason_zh and "its own past" in ind.reason_en


def test_fast_citizens_are_not_accused_when_they_always_were():
    # Citizens who wait at the device: 15 % under 0.8 s, in a hall of slower peers. Against the
    # peers alone that is an outlier; this window's own past had as many.
    t = honest("t", 5, n_txn=110, rt_median=1200, rt_sigma=0.45)
    h = hall(t, excellent())
    # Peers only: an outlier, but without a past of its own at most weak.
    assert indicator(h, "t", "fast_response").strength == "weak"
    assert not verdict(h, "t").flagged
    h = hall(with_past_rts(t, 1200, 0.45, n=300), excellent())
    ind = indicator(h, "t", "fast_response")
    assert ind.strength == "none" and ind.evidence["past_fast"] > 10
    assert not verdict(h, "t").flagged


def test_machine_like_regular_responses_fire():
    h = hall(_staff_presses(honest("t", 6), 1500, 25, 20), excellent())
    ind = indicator(h, "t", "regular_response")
    assert ind.strength == "strong" and ind.value >= 15
    assert indicator(h, "t", "fast_response").strength == "none"  # not fast, only regular


def test_human_response_times_are_not_regular():
    h = hall(honest("t", 6, rt_sigma=0.35), excellent())
    assert indicator(h, "t", "regular_response").strength != "strong"
    assert indicator(h, "exc", "regular_response").strength == "none"


def test_end_of_day_burst_fires():
    fill = [RatingFact(hm("17:40") + i * 6000, 5, None, "standalone", None, "unlinked",
                       "no_transaction", "t-s", None, "d-t") for i in range(9)]
    h = hall(with_ratings(honest("t", 7), fill), excellent())
    ind = indicator(h, "t", "burst")
    assert ind.strength == "strong" and ind.value == 9
    assert ind.evidence["outside_hours"] == 9 and ind.evidence["unmatched"] == 9
    assert ind.reason_en.startswith("9 ratings within 48 s outside opening hours")


def test_busy_honest_window_has_no_burst():
    h = hall(honest("t", 7, n_txn=110), excellent(n_txn=120))
    assert indicator(h, "t", "burst").strength == "none"
    assert indicator(h, "exc", "burst").strength == "none"


# -- negatives and satisfaction ------------------------------------------------------------------


def test_missing_negatives_fire_when_a_windows_bad_ratings_stop():
    # 5 % 差评 over its past 400 ratings, then 300 ratings without one.
    past = tuple(([4] * 19 + [1]) * 20)
    target = replace(honest("t", 8, n_txn=340, bad=0.0, coverage=0.9), history=past)
    h = hall(target, excellent())
    ind = indicator(h, "t", "missing_negatives")
    assert ind.strength == "strong" and ind.value >= 300


def test_excellent_window_without_negatives_is_not_accused():
    # Always excellent: its own past has almost no 差评 either.
    past = tuple([1] + [5] * 399)
    exc = replace(excellent(n_txn=200), history=past)
    h = hall(exc)
    assert indicator(h, "exc", "missing_negatives").strength != "strong"
    assert not verdict(h, "exc").flagged


def test_a_run_without_negatives_and_without_a_past_does_not_join_the_combination():
    # Never a 差评 (an excellent window): the run is its whole record, so it is no evidence
    # that 差评 stopped, alone or together with a few presses outside an invitation.
    exc = _uninvited(replace(excellent(n_txn=200), history=tuple([5] * 300)), [5, 5, 4])
    h = hall(exc)
    ind = indicator(h, "exc", "missing_negatives")
    assert ind.events == 0 and ind.strength != "strong"
    assert not verdict(h, "exc").flagged
    # A window whose 差评 stopped has a past before its run: its events count.
    past = tuple(([4] * 19 + [1]) * 20)
    stopped = replace(honest("t", 8, n_txn=340, bad=0.0, coverage=0.9), history=past)
    assert indicator(hall(stopped, excellent()), "t", "missing_negatives").events >= 300


def test_high_satisfaction_alone_never_flags():
    exc = excellent(n_txn=200, top=0.99)
    h = hall(exc)
    ind = indicator(h, "exc", "satisfaction_high")
    assert ind.strength in ("weak", "strong") and not ind.decisive
    assert not verdict(h, "exc").flagged


def test_selective_invitation_fires():
    # Its own past: 85 % coverage, 78 % satisfied. Today: under half rated, nearly all 5s.
    past = tuple(([5] * 10 + [4] * 5 + [3] * 3 + [2, 1]) * 20)
    target = replace(honest("t", 9, n_txn=120, bad=0.0, top=0.97, coverage=0.45), history=past,
                     history_rated=340, history_decided=400)
    h = hall(target, excellent())
    ind = indicator(h, "t", "selective_invitation")
    assert ind.strength == "strong"
    assert ind.evidence["coverage"] < 0.55 and "its own past" in ind.reason_en


def test_low_coverage_with_ordinary_satisfaction_is_not_selective():
    target = honest("t", 9, n_txn=120, coverage=0.45, bad=0.06, top=0.35)
    h = hall(target, excellent())
    assert indicator(h, "t", "selective_invitation").strength != "strong"
    assert indicator(h, "exc", "selective_invitation").strength == "none"


def test_an_excellent_window_on_a_rush_day_among_fill_in_windows_is_not_selective():
    # Always 99 % satisfied and 94 % rated (its own past); today, a rush, 60 % rated. Three
    # peers have every transaction rated (their staff fill in): the pooled coverage rises.
    past = tuple([5] * 396 + [4] * 4)
    exc = replace(excellent("exc", 21, n_txn=120, top=0.99, coverage=0.6), history=past,
                  history_rated=376, history_decided=400)
    peers = [honest(f"p{i}", i, n_txn=80, bad=0.06, top=0.45, coverage=0.92) for i in range(4)]
    fillers = [honest(f"f{i}", 30 + i, n_txn=90, bad=0.05, coverage=1.0) for i in range(3)]
    h = HallFacts("h1", (*peers, *fillers, exc), has_feed=True, has_signons=True)
    ind = indicator(h, "exc", "selective_invitation")
    assert ind.strength != "strong", ind.reason_en
    assert not verdict(h, "exc").flagged


def test_a_window_selective_all_along_is_still_selective_against_the_hall():
    # Its past as today: under half its citizens rated, all of them happy; the peers alike
    # (so that the hall's satisfaction is a clear reference).
    past = tuple([5] * 190 + [4] * 10)
    t = replace(honest("t", 9, n_txn=160, bad=0.0, top=0.97, coverage=0.45), history=past,
                history_rated=200, history_decided=420)
    peers = [honest(f"p{i}", i, n_txn=80, bad=0.08, top=0.4, coverage=0.85) for i in range(7)]
    h = HallFacts("h1", (*peers, t), has_feed=True, has_signons=True)
    ind = indicator(h, "t", "selective_invitation")
    assert ind.strength == "strong" and "the hall's" in ind.reason_en


# -- device offline ------------------------------------------------------------------------------


def _offline(u: Unit, spans: list[tuple[str, str]], restart: bool = True,
             boots: bool = True) -> Unit:
    """The unit's device offline over `spans`: its last will, then online again, with the next
    boot counter if it `restart`ed (unplugged) or the same (a network outage). Without `boots`
    the rows carry no boot counter (stored before schema 2) and a restart is a boot event."""
    dev = f"d-{u.window}"
    log = list(u.device_log)
    boot = 7
    for a, b in spans:
        lo, hi = hm(a), hm(b)
        log = [d for d in log if not (d.kind == "heartbeat" and lo <= d.received_ms < hi)]
        log.append(DeviceRecord(lo, lo + 45_000, "status", {"state": "offline"}, dev,
                                boot if boots else None))
        boot += restart
        log.append(DeviceRecord(hi, hi, "status", {"state": "online"}, dev,
                                boot if boots else None))
        if restart and not boots:
            log.append(DeviceRecord(hi + 2000, hi + 2000, "boot", {"reset": "power_on"}, dev))
    return replace(u, device_log=tuple(sorted(log, key=lambda d: d.received_ms)))


UNPLUGGED = [("09:10", "09:40"), ("10:30", "10:55"), ("15:00", "15:35")]


def test_repeated_unplugging_fires():
    h = hall(_offline(honest("t", 10), UNPLUGGED), excellent())
    ind = indicator(h, "t", "device_offline")
    assert ind.strength == "strong" and ind.evidence["long_episodes"] == 3
    assert ind.evidence["restarted_episodes"] == 3
    assert "离线" in ind.reason_zh and "重新启动" in ind.reason_zh
    # Rows stored before the boot counter was kept: the boot events tell the restarts.
    h = hall(_offline(honest("t", 10), UNPLUGGED, boots=False), excellent())
    assert indicator(h, "t", "device_offline").strength == "strong"


def test_network_outages_without_a_restart_are_at_most_weak():
    # The same stretches, but the device kept running (same boot): a network or broker fault.
    for boots in (True, False):
        h = hall(_offline(honest("t", 10), UNPLUGGED, restart=False, boots=boots), excellent())
        ind = indicator(h, "t", "device_offline")
        assert ind.strength == "weak" and ind.evidence["restarted_episodes"] == 0
        assert not verdict(h, "t").flagged


def test_one_long_fault_or_a_hall_outage_does_not_fire():
    one = _offline(honest("t", 10), [("09:00", "10:40")])
    h = hall(one, excellent())
    assert indicator(h, "t", "device_offline").strength != "strong"
    outage = [("11:00", "11:40"), ("14:00", "14:30")]
    everyone = HallFacts("h1", tuple(_offline(u, outage) for u in hall(excellent()).units),
                         True, True)
    assert indicator(everyone, "exc", "device_offline").strength == "none"


@pytest.mark.parametrize("language", ["zh", "en"])
def test_flag_reasons_are_human_readable_in_both_languages(language):
    fill = [RatingFact(hm("17:40") + i * 6000, 5, None, "standalone", None, "unlinked",
                       "no_transaction", "t-s", None, "d-t") for i in range(12)]
    v = verdict(hall(with_ratings(honest("t", 11), fill), excellent()), "t")
    assert v.flagged and v.severity == 3  # burst, unmatched, out of service agree
    reasons = v.reasons(language)
    assert len(reasons) >= 3
    assert any(("12 ratings" if language == "en" else "12 条") in r for r in reasons)


# -- response times against the window's own past ------------------------------------------------


def with_past_rts(u: Unit, rt_median: float, rt_sigma: float, n: int = 150, seed: int = 3,
                  days: int = 3) -> Unit:
    """The window's own past invited response times, drawn like its citizens' today, pressed
    over the `days` business days before (its citizens as steady from day to day as the
    hall's: `hall`)."""
    rng = random.Random(seed)
    return replace(u, history_rts=tuple(
        max(450, int(rt_median * math.exp(rng.gauss(0, rt_sigma)))) for _ in range(n)),
        history_rt_press=tuple(hm("09:00") - (days - i * days // n) * 86_400_000 + i * 1000
                               for i in range(n)))


def test_response_shift_fires_on_staff_pressing_at_a_human_pace():
    # 1.2 s +- 150 ms: neither too fast for a human nor a sharp rhythm, but faster than this
    # window's citizens ever answered. (20 presses among 52 citizens: 15 were strong evidence
    # before the test allowed for the hall's honest day-to-day shift; now weak.)
    t = with_past_rts(_staff_presses(honest("t", 8), 1200, 150, 20), 4000, 0.5)
    h = hall(t, with_past_rts(excellent(), 3000, 0.5, seed=4))
    ind = indicator(h, "t", "response_shift")
    assert ind.strength == "strong" and ind.value >= 20
    assert ind.evidence["very_satisfied"] >= 20
    assert "快于本窗口以往" in ind.reason_zh and "own fastest" in ind.reason_en
    assert indicator(h, "t", "fast_response").strength == "none"
    assert verdict(h, "t").flagged


@pytest.mark.parametrize("median,sigma", [(2200, 0.7), (4000, 0.5), (6000, 0.35)])
def test_response_shift_quiet_when_citizens_answer_as_before(median, sigma):
    t = with_past_rts(honest("t", 9, rt_median=median, rt_sigma=sigma), median, sigma)
    exc = with_past_rts(excellent(), 3000, 0.5, seed=5)
    h = hall(t, exc)
    assert indicator(h, "t", "response_shift").strength == "none"
    assert indicator(h, "exc", "response_shift").strength == "none"
    assert not verdict(h, "exc").flagged


def test_response_shift_needs_a_past_of_its_own():
    h = hall(_staff_presses(honest("t", 8), 1200, 150, 15), excellent())
    found = compute_indicators(h, h.units, PERIOD, S)["t"]
    assert "response_shift" not in {i.name for i in found}  # no past: not judged


def _counted(u: Unit) -> Unit:
    """The device's key counters also count the presses of ratings added after `honest`."""
    for r in u.ratings:
        if r.device_ts is None:  # added by _staff_presses
            ms = r.press_ms - MIDNIGHT
            u = _counter_change(u, f"{ms // 3600_000:02d}:{ms // 60_000 % 60:02d}", r.level)
    return u


def _past_levels(u: Unit, top: float, seed: int = 3) -> Unit:
    """Levels of the window's past invited ratings (in the order of its past response times):
    非常满意 with probability `top`."""
    rng = random.Random(seed)
    return replace(u, history_rt_levels=tuple(
        5 if rng.random() < top else rng.choice((3, 4, 4)) for _ in u.history_rts))


@pytest.mark.parametrize(("top", "strong"), [(0.3, True), (0.9, False)])
def test_response_shift_weighs_whether_the_fast_ones_are_newly_all_very_satisfied(top, strong):
    # Ten staff presses at 1.3 s among 34 citizens: a pile below the window's fast tail too
    # small for strong evidence on its own. All ten are 非常满意; before, the faster half of the
    # window's ratings were so 30 % of the time (fires) or 90 % of the time (does not).
    t = with_past_rts(_counted(_staff_presses(honest("t", 8, n_txn=40), 1300, 150, 10)),
                      4000, 0.5)
    h = hall(_past_levels(t, top), with_past_rts(excellent(), 3000, 0.5, seed=4))
    ind = indicator(h, "t", "response_shift")
    assert ind.evidence["p_times"] > 1e-3  # the response times alone: not strong evidence
    assert (ind.strength == "strong") == strong
    assert verdict(h, "t").flagged == strong
    if strong:
        assert ind.evidence["p_levels"] < 0.001
        assert "此前较快的一半评价中“非常满意”仅占" in ind.reason_zh
        assert "of its faster half were 非常满意" in ind.reason_en


def test_citizens_answering_faster_with_the_usual_levels_are_no_shift():
    # A day on which the window's citizens answer twice as fast (a rush, a colleague asking
    # them to rate): a pile below its past fast tail, but the whole distribution moved (its
    # upper quartile too) and the fast ones are as often 非常满意 as its fast ones before.
    # Neither the response times (allowing for a day faster as a whole) nor the levels accuse.
    t = with_past_rts(honest("t", 13, n_txn=70, rt_median=2000, rt_sigma=0.5), 4000, 0.5)
    for u in (t, _past_levels(t, 0.55)):
        h = hall(u, excellent())
        ind = indicator(h, "t", "response_shift")
        assert ind.value >= 4 * ind.evidence["expected"]
        assert ind.strength != "strong" and ind.evidence["p_times"] > 1e-3
        assert not verdict(h, "t").flagged


def _two_staff_past(u: Unit, seed: int = 6) -> Unit:
    """The window's past: 150 ratings served by a colleague whose citizens took about 4 s, 60 by
    today's staff member ("t-s") whose citizens take about 2 s (they ask them to rate)."""
    rng = random.Random(seed)
    past = ([(max(450, int(4000 * math.exp(rng.gauss(0, 0.45)))), "t-a") for _ in range(150)]
            + [(max(450, int(2000 * math.exp(rng.gauss(0, 0.45)))), "t-s") for _ in range(60)])
    rng.shuffle(past)
    return replace(u, history_rts=tuple(x for x, _ in past),
                   history_rt_staff=tuple(w for _, w in past),
                   history_rt_press=tuple(hm("09:00") - (3 - i * 3 // len(past)) * 86_400_000
                                          + i * 1000 for i in range(len(past))))


def test_response_shift_compares_each_staff_member_with_their_own_past():
    # Today only the staff member whose citizens always answered in about 2 s: against the
    # window's whole past (mostly the colleague's slower citizens) a shift, against the same
    # staff member's past none. (The past's levels are left out: with them, the fast ones not
    # being newly 非常满意 would already keep it quiet.)
    today = honest("t", 12, n_txn=70, rt_median=2000, rt_sigma=0.45)
    pooled = replace(_two_staff_past(today), history_rt_staff=())  # who served unknown
    # Against the pooled past the pile is there, but the body of today's response times moved
    # as much (a day faster as a whole, `_body_shift`): not strong either.
    ind = indicator(hall(pooled, excellent()), "t", "response_shift")
    assert ind.value >= 2 * ind.evidence["expected"] and ind.strength != "strong"
    h = hall(_two_staff_past(today), excellent())
    ind = indicator(h, "t", "response_shift")
    assert ind.strength == "none" and ind.evidence["by_staff"]
    assert not verdict(h, "t").flagged
    # The same staff member rating for citizens at 1.1 s is still a shift against their past.
    staff = _two_staff_past(_counted(_staff_presses(today, 1100, 100, 20)))
    h = hall(staff, excellent())
    ind = indicator(h, "t", "response_shift")
    # Weak since the test allows for a day faster as a whole (the pile moves the upper quartile
    # of this staff member's 80 response times, and their past holds only 60).
    assert ind.strength in ("weak", "strong") and ind.evidence["by_staff"]
    assert "同一工作人员当班时" in ind.reason_zh and "same staff member's" in ind.reason_en


def test_regular_response_compares_with_the_windows_own_past():
    # Citizens answering at a narrow pace every day: peaked now and before, not a rhythm.
    peaked = with_past_rts(honest("t", 6, rt_median=2000, rt_sigma=0.12), 2000, 0.12)
    h = hall(peaked, excellent())
    assert indicator(h, "t", "regular_response").strength != "strong"
    staff = with_past_rts(_staff_presses(honest("s", 6), 1500, 25, 20), 4000, 0.5)
    assert indicator(hall(staff, excellent()), "s", "regular_response").strength == "strong"


# -- exact key accounting: one suppressed 差评 ---------------------------------------------------


def _counter_change(u: Unit, after: str, key: int, n: int = 1, state: str | None = None) -> Unit:
    """Key `key` counted n more times from `after` on; optionally the last heartbeat's state."""
    out = []
    beats = [d for d in u.device_log if d.kind == "heartbeat"]
    for d in u.device_log:
        if d.kind == "heartbeat" and d.at_ms > hm(after):
            keys = list(d.data["keys"])
            keys[key - 1] += n
            data = {**d.data, "keys": keys}
            if state is not None and d is beats[-1]:
                data["state"] = state
            d = replace(d, data=data)
        out.append(d)
    return replace(u, device_log=tuple(out))


def test_one_suppressed_negative_with_its_reason_tag_fires():
    # Key 1 pressed, then the reason key 4: no 差评 published.
    t = _counter_change(_counter_change(honest("t", 4), "15:00", 1), "15:00", 4)
    ind = indicator(hall(t, excellent()), "t", "key_counters")
    assert ind.strength == "strong" and ind.evidence["negatives_hidden"] == 2
    assert "差评键" in ind.reason_zh and "keys 1-2" in ind.reason_en


def test_a_negative_awaiting_its_reason_or_a_lone_press_does_not_fire():
    # The device reports it is waiting for the reason tag of a 差评 pressed before the heartbeat.
    pending = _counter_change(honest("t", 4), "17:50", 2, state="reason")
    assert indicator(hall(pending, excellent()), "t", "key_counters").strength == "none"
    # One unexplained press only (a power cut while the 差评 waited): not enough.
    lone = _counter_change(honest("u", 4), "15:00", 1)
    assert indicator(hall(lone, excellent()), "u", "key_counters").strength == "none"
    # Losses the device reports excuse presses.
    lost = _counter_change(_counter_change(honest("v", 4), "15:00", 1), "15:00", 4)
    lost = replace(lost, device_log=tuple(
        replace(d, data={**d.data, "discards": 2 if d.at_ms > hm("15:00") else 0})
        if d.kind == "heartbeat" else d for d in lost.device_log))
    assert indicator(hall(lost, excellent()), "v", "key_counters").strength == "none"


# -- selective invitation beginning within the rolling period -------------------------------------

ROLLING = S.periods(NOW)[1]
assert ROLLING.kind == "rolling" and len(ROLLING.days) == S.lookback_days


def _days(name: str, seed: int, per_day: list[tuple[int, float, float]]) -> Unit:
    """A window over the rolling period's days: (transactions, coverage, satisfied share) per
    day; an unsatisfied rating is a 3 or a 2."""
    rng = random.Random(seed)
    txns, ratings = [], []
    for day, (n, coverage, happy) in zip(ROLLING.days, per_day, strict=True):
        base = S.midnight_ms(day) + 9 * 3600_000
        for i in range(n):
            done = base + i * 300_000
            rated = rng.random() < coverage
            txns.append(TxnFact(done, "rated" if rated else "unrated", f"{name}-s"))
            if rated:
                level = 5 if rng.random() < happy else rng.choice((3, 3, 2))
                ratings.append(RatingFact(done + 5000, level, None, "invited", 4000, "linked",
                                          None, f"{name}-s", done, f"d-{name}", done + 5000))
    return Unit(name, None, tuple(ratings), tuple(txns), has_device=False)


def _rolling_indicator(h: HallFacts, window: str, name: str):
    found = compute_indicators(h, h.units, ROLLING, S)[window]
    return next(i for i in found if i.name == name)


def _rolling_hall(*units: Unit) -> HallFacts:
    peers = [_days(f"p{i}", i, [(50 + 5 * i, 0.8 + 0.02 * i, 0.75 + 0.02 * i)] * 5)
             for i in range(7)]
    return HallFacts("h1", tuple(peers) + units, has_feed=True, has_signons=True)


def test_selective_invitation_beginning_within_the_rolling_period_fires():
    # Three honest days (85 % coverage, 75 % satisfied), then two days of only happy citizens.
    t = _days("t", 11, [(60, 0.85, 0.75)] * 3 + [(60, 0.5, 0.97)] * 2)
    ind = _rolling_indicator(_rolling_hall(t), "t", "selective_invitation")
    assert ind.strength == "strong" and ind.evidence["since"] == str(ROLLING.days[-2])
    assert "起参评率" in ind.reason_zh and "since" in ind.reason_en


def test_steady_or_merely_happier_windows_are_not_selective_over_the_rolling_period():
    steady = _days("s", 12, [(60, 0.6, 0.97)] * 5)            # always low coverage, happy
    happier = _days("h", 13, [(60, 0.85, 0.75)] * 3 + [(60, 0.85, 0.95)] * 2)  # coverage kept
    rush = _days("r", 14, [(60, 0.85, 0.75)] * 3 + [(60, 0.55, 0.75)] * 2)     # fewer rate
    h = _rolling_hall(steady, happier, rush)
    for w in ("s", "h", "r"):
        assert _rolling_indicator(h, w, "selective_invitation").strength != "strong", w


# -- key counters: exact between two heartbeats of one boot ----------------------------------------


def _exact(u: Unit, *, boot_at: str | None = None, outbox_at_end: int = 0,
           receipts: bool = True) -> Unit:
    """The firmware's heartbeats (their outbox size; `unconfirmed` when it keeps records until
    the collector's receipt), and a reboot at `boot_at` if given."""
    beats = [d for d in u.device_log if d.kind == "heartbeat"]
    more = {"unconfirmed": 0} if receipts else {}
    out = [replace(d, data={**d.data, **more, "outbox": outbox_at_end if d is beats[-1] else 0})
           if d.kind == "heartbeat" else d for d in u.device_log]
    if boot_at is not None:
        t = hm(boot_at)
        out.append(DeviceRecord(t, t + 300, "boot", {"fw": "x", "reset_cause": "power_on"},
                                beats[0].device))
    return replace(u, device_log=tuple(sorted(out, key=lambda d: d.received_ms)))


def test_one_hidden_negative_fires_when_the_device_did_not_restart():
    # One press of key 1 that became nothing, no reason tag (the timeout), no restart.
    u = _exact(_counter_change(honest("u", 4), "15:00", 1))
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.strength == "strong" and ind.evidence["negatives_hidden"] == 1
    assert ind.evidence["negative_tolerance"] == 0 and not ind.evidence["restart"]
    assert "差评键" in ind.reason_zh


def test_one_hidden_negative_across_a_restart_or_in_flight_does_not_fire():
    # A reboot between the press and the next heartbeat (the boot event says so) ...
    rebooted = _exact(_counter_change(honest("u", 4), "15:00", 1), boot_at="15:01")
    ind = indicator(hall(rebooted, excellent()), "u", "key_counters")
    assert ind.strength == "none" and ind.evidence["restart"]
    # ... or a RAM counter that started again from 0, the boot event lost ...
    reset = _exact(_counter_change(honest("v", 4), "15:00", 1))
    reset = replace(reset, device_log=tuple(
        replace(d, data={**d.data, "reconnects": 0 if d.at_ms > hm("15:00") else 3})
        if d.kind == "heartbeat" else d for d in reset.device_log))
    assert indicator(hall(reset, excellent()), "v", "key_counters").strength == "none"
    # ... or messages still in the outbox at the last heartbeat (the rating may follow it).
    flight = _exact(_counter_change(honest("w", 4), "15:00", 1), outbox_at_end=1)
    assert indicator(hall(flight, excellent()), "w", "key_counters").strength == "none"
    # Honest devices agree exactly, with or without a restart.
    for u in (_exact(honest("x", 4)), _exact(honest("y", 5), boot_at="12:30")):
        assert indicator(hall(u, excellent()), u.window, "key_counters").strength == "none"


def test_negatives_a_broker_lost_after_its_puback_are_not_hidden_while_the_device_holds_them():
    # A broker (a client taking the collector's id, a fake one) acknowledged three 差评 and
    # lost them; the device keeps them until the collector's receipt: its heartbeat says 3.
    held = _exact(_counter_change(honest("u", 4), "15:00", 1, 3), outbox_at_end=3)
    ind = indicator(hall(held, excellent()), "u", "key_counters")
    assert ind.strength == "none" and ind.evidence["negatives_hidden"] == 0
    assert ind.evidence["lost"] >= 3
    # The same with nothing held: three presses that became nothing.
    gone = _exact(_counter_change(honest("v", 4), "15:00", 1, 3))
    assert indicator(hall(gone, excellent()), "v", "key_counters").strength == "strong"
    # A firmware that deletes on the broker's PUBACK (no `unconfirmed`): an outbox of 0 does
    # not say the collector has it, so one such press is within the tolerance.
    old = _exact(_counter_change(honest("w", 4), "15:00", 1), receipts=False)
    ind = indicator(hall(old, excellent()), "w", "key_counters")
    assert ind.strength == "none" and ind.evidence["negative_tolerance"] == 1


def test_a_restart_in_the_morning_does_not_excuse_the_afternoon():
    # The stretch after the reboot is one boot: its accounting is exact again.
    u = _exact(_counter_change(honest("u", 4), "15:00", 1), boot_at="09:10")
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.strength == "strong" and ind.evidence["negative_tolerance"] == 0


def _boots(u: Unit, first: int, second: int | None = None, at: str = "15:01") -> Unit:
    """Every heartbeat carries boot counter `first`, or `second` from `at` on (a restart)."""
    return replace(u, device_log=tuple(
        replace(d, boot=second if second is not None and d.at_ms > hm(at) else first)
        if d.kind == "heartbeat" else d for d in u.device_log))


def test_a_restart_seen_only_in_the_boot_counter_excuses_one_hidden_negative():
    # The boot counter changes between the press and the next heartbeat; no boot event (it was
    # lost) and no RAM counter went back: only the stored boot counter shows the restart.
    u = _boots(_exact(_counter_change(honest("u", 4), "15:00", 1)), 7, 8)
    assert not any(d.kind == "boot" for d in u.device_log)
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.strength == "none" and ind.evidence["restart"]
    assert ind.evidence["negatives_hidden"] == 1 and ind.evidence["negative_tolerance"] == 1
    # The same press after the restart, within the new boot: exact again, it fires.
    after = _boots(_exact(_counter_change(honest("v", 4), "15:00", 1)), 7, 8, at="09:10")
    ind = indicator(hall(after, excellent()), "v", "key_counters")
    assert ind.strength == "strong" and ind.evidence["negative_tolerance"] == 0


def test_one_boot_counter_keeps_the_accounting_exact_whatever_else_looks_like_a_restart():
    # Every heartbeat of one boot: a RAM counter that went back and a boot event in between
    # (both would suggest a restart by inference) do not excuse the hidden 差评 press.
    u = _exact(_counter_change(honest("u", 4), "15:00", 1), boot_at="15:01")
    u = _boots(replace(u, device_log=tuple(
        replace(d, data={**d.data, "reconnects": 0 if d.at_ms > hm("15:00") else 3})
        if d.kind == "heartbeat" else d for d in u.device_log)), 7)
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.strength == "strong" and ind.evidence["negatives_hidden"] == 1
    assert ind.evidence["negative_tolerance"] == 0 and not ind.evidence["restart"]
    # An honest device of one boot agrees exactly: nothing to flag.
    honest_one_boot = _boots(_exact(honest("x", 4)), 7)
    assert indicator(hall(honest_one_boot, excellent()), "x", "key_counters").strength == "none"


def test_heartbeats_stored_before_the_boot_counter_fall_back_to_inference():
    # Heartbeats before 15:01 were stored without it (before the upgrade), those after carry
    # it: the restart between them is inferred from the boot event, as before.
    u = _exact(_counter_change(honest("u", 4), "15:00", 1), boot_at="15:01")
    u = replace(u, device_log=tuple(
        replace(d, boot=8) if d.kind == "heartbeat" and d.at_ms > hm("15:01") else d
        for d in u.device_log))
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.strength == "none" and ind.evidence["restart"]
    # Without the boot event nothing shows a restart: exact, it fires.
    lost = replace(u, device_log=tuple(d for d in u.device_log if d.kind != "boot"))
    assert indicator(hall(lost, excellent()), "u", "key_counters").strength == "strong"


def test_a_negative_the_linking_engine_still_holds_is_accounted_for():
    # A stand-alone 差评 waits for a transaction (linking grace): published, not judged yet.
    u = _exact(_counter_change(honest("u", 4), "15:00", 1))
    held = RatingFact(hm("15:00") + 1, 1, "none", "standalone", None, "held", device="d-u")
    u = replace(u, held=(held,))
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.strength == "none" and ind.value == 0


# -- the combination of weak signals: enough evidence behind each -----------------------------


def _until(u: Unit, hhmm: str) -> Unit:
    """The window as the detector sees it at `hhmm`: what happened up to then."""
    at = hm(hhmm)
    return replace(u, ratings=tuple(r for r in u.ratings if r.press_ms <= at),
                   txns=tuple(t for t in u.txns if t.completed_ms <= at),
                   window_log=tuple(w for w in u.window_log if w.at_ms <= at),
                   device_log=tuple(d for d in u.device_log if d.received_ms <= at))


def _early_hall(at: str) -> tuple[HallFacts, Period]:
    """A small hall on its first morning (no window has a past yet), as in the demo: a quiet
    excellent window whose one rating so far came 0.6 s after the invitation and whose device
    saw one stray press of 5; a window whose staff rate at a 1.5 s rhythm and add stand-alone
    5s; an ordinary window."""
    exc = excellent(n_txn=4)
    first = exc.ratings[0]
    exc = replace(exc, ratings=(replace(first, rt_ms=600,
                                        press_ms=first.txn_completed_ms + 2600),
                                *exc.ratings[1:]))
    exc = replace(exc, device_log=tuple(sorted((*exc.device_log, DeviceRecord(
        hm("09:05"), hm("09:05"), "key_uninvited", {"key": 5, "state": "idle"}, "d-exc")),
        key=lambda d: d.received_ms)))
    fake = [RatingFact(hm(x), 5, None, "standalone", None, "unlinked", "no_transaction", "t-s",
                       None, "d-t") for x in ("09:15", "09:30", "09:45")]
    staff = _counted(with_ratings(_staff_presses(honest("t", 21, n_txn=40), 1500, 25, 8), fake))
    units = tuple(_until(u, at) for u in (exc, staff, honest("plain", 5, n_txn=40)))
    return HallFacts("h1", units, has_feed=True, has_signons=True), S.periods(hm(at))[0]


def test_one_fast_rating_and_one_stray_press_do_not_flag_an_honest_window():
    # 10:00 on the hall's first day: the excellent window has one rating, 0.6 s after its
    # invitation, and one stray press of 5. Each is a weak signal against the hall's rate
    # floor (p = 0.005: the assumed base rate itself), and with the manipulated window's
    # overwhelming evidence first in line, Benjamini-Hochberg let the two together through.
    h, period = _early_hall("10:00")
    exc = next(u for u in h.units if u.window == "exc")
    assert len(exc.ratings) == 1
    found = {i.name: i for i in compute_indicators(h, h.units, period, S)["exc"]}
    for name in ("fast_response", "uninvited_presses"):
        assert found[name].strength == "weak" and found[name].events == 1
    old = DetectionSettings.defaults(combine_min_count=1)  # the rule before: any p joined
    before = next(v for v in detect_hall(h, period, old, per_staff=False) if v.window == "exc")
    assert before.flagged and before.combined is not None and before.combined.strong
    verdicts = detect_hall(h, period, S, per_staff=True)
    v = next(v for v in verdicts if v.window == "exc" and v.staff is None)
    assert not v.flagged and v.severity == 1 and v.combined is None  # a notice, no accusation
    assert {x.window for x in verdicts if x.flagged} == {"t"}  # the manipulated one still is


def test_weak_signals_of_a_self_rating_window_still_flag_together():
    # Staff press 5 at 1.3 s for 24 citizens of a window whose citizens were mostly 非常满意
    # anyway (the levels do not single the fast ones out: response_shift stays weak), and 3
    # citizens press 5 after the staff have rated (weak alone). Together: strong. (18 were
    # enough before response_shift allowed for the hall's honest day-to-day shift.)
    t = with_past_rts(_counted(_staff_presses(honest("t", 8, n_txn=40), 1300, 150, 24,
                                              every_ms=500_000)), 4000, 0.5)
    t = _uninvited(_past_levels(t, 0.9), [5, 5, 5])
    h = hall(t, with_past_rts(excellent(), 3000, 0.5, seed=4))
    v = verdict(h, "t")
    assert v.strong == ()  # no indicator is strong evidence on its own
    assert v.flagged and v.combined is not None and v.combined.strong
    assert {i.name: i.events for i in v.combined.agreeing} == {
        "response_shift": 23, "uninvited_presses": 3}
    assert "2 independent kinds of signal agree" in v.reasons_en[0]
    assert not verdict(h, "exc").flagged


def test_every_indicator_with_a_p_value_says_how_many_observations_it_rests_on():
    h, period = _early_hall("17:30")
    found = [i for inds in compute_indicators(h, h.units, period, S).values() for i in inds]
    assert any(i.p is not None for i in found) and any(i.p is None for i in found)
    for i in found:
        assert (i.events is None) == (i.p is None), i.name


# -- issue 15: every observation the system has ----------------------------------------------------


def _timeline(u: Unit, seed: int = 21) -> Unit:
    """The business system's timeline of the window: each service begins 30-90 s after the
    previous one was completed and lasts what it lasted; case numbers on transactions and
    ratings."""
    rng = random.Random(seed)
    txns = sorted(u.txns, key=lambda t: t.completed_ms)
    starts, prev = [], None
    for t in txns:
        lo = t.completed_ms - rng.randint(120_000, 600_000)
        starts.append(max(lo, prev + rng.randint(30_000, 90_000)) if prev is not None else lo)
        prev = t.completed_ms
    by_done = {t.completed_ms: (f"{u.window}-{i:04d}", s)
               for i, (t, s) in enumerate(zip(txns, starts, strict=True))}
    new_txns = tuple(replace(t, started_ms=by_done[t.completed_ms][1],
                             txn=by_done[t.completed_ms][0]) for t in txns)
    new_ratings = tuple(replace(r, txn=by_done[r.txn_completed_ms][0],
                                txn_started_ms=by_done[r.txn_completed_ms][1], seq=i, boot=3)
                        if r.txn_completed_ms in by_done else r
                        for i, r in enumerate(u.ratings))
    return replace(u, txns=new_txns, ratings=new_ratings)


def _timeline_hall(*units: Unit) -> HallFacts:
    h = hall(*units)
    return replace(h, units=tuple(_timeline(x, i) if not x.txns or x.txns[0].started_ms is None
                                  else x for i, x in enumerate(h.units)))


def _fill_in(u: Unit, share: float, delay: tuple[int, int], seed: int = 5,
             levels: tuple[int, ...] = (5, 5, 5, 4, 3)) -> Unit:
    """Staff rate `share` of the unrated invitations themselves, `delay` ms after the invitation
    (which shows 2 s after completion), with a mix of levels."""
    rng = random.Random(seed)
    txns, extra = [], []
    for t in u.txns:
        if t.state == "unrated" and rng.random() < share:
            rt = rng.randint(*delay)
            press = t.completed_ms + 2000 + rt
            extra.append(RatingFact(press, rng.choice(levels), None, "invited", rt, "linked",
                                    None, t.staff_id, t.completed_ms, f"d-{u.window}", press,
                                    t.txn or None, None, t.started_ms, 3))
            t = replace(t, state="rated")
        txns.append(t)
    return with_ratings(replace(u, txns=tuple(txns)), extra)


def test_late_responses_fire_on_a_human_paced_fill_in():
    # 60 % of the unrated invitations rated 20-70 s late with a mix of levels: neither fast nor
    # regular, but far slower than this window's citizens ever answered.
    t = with_past_rts(_fill_in(honest("t", 31, n_txn=70, coverage=0.6), 0.6, (20_000, 70_000)),
                      4000, 0.5)
    h = hall(t, with_past_rts(excellent(), 3000, 0.5, seed=4))
    ind = indicator(h, "t", "late_response")
    assert ind.strength == "strong" and ind.evidence["late"] >= 5
    assert "补评" in ind.reason_zh and "filled in" in ind.reason_en
    assert len(ind.items) == ind.evidence["late"]
    assert all(x["rt_ms"] > ind.evidence["threshold_ms"] > 8000 for x in ind.items)
    assert verdict(h, "t").flagged


@pytest.mark.parametrize("median,sigma", [(4000, 0.5), (6000, 0.7), (2500, 0.35)])
def test_late_responses_quiet_when_citizens_answer_as_before(median, sigma):
    t = with_past_rts(honest("t", 32, rt_median=median, rt_sigma=sigma), median, sigma)
    h = hall(t, with_past_rts(excellent(), 3000, 0.5, seed=4))
    assert indicator(h, "t", "late_response").strength == "none"
    assert indicator(h, "exc", "late_response").strength == "none"


@pytest.mark.parametrize("seed", [40, 41, 42])
def test_a_day_on_which_every_citizen_answers_slower_is_no_fill_in(seed):
    # The whole distribution twice as slow as before (a staff member who lets citizens read
    # the prompt, elderly citizens): every response time moved, none was added.
    t = with_past_rts(honest("t", seed, n_txn=40, rt_median=8000), 4000, 0.5)
    h = hall(t, with_past_rts(excellent(), 3000, 0.5, seed=4))
    assert indicator(h, "t", "late_response").strength != "strong"


def _hall_with_pasts(*units: Unit) -> HallFacts:
    """`hall`'s peers, each with a past of its own (citizens answering in 3-5 s)."""
    peers = [with_past_rts(honest(f"p{i}", i, rt_median=3000 + 300 * i), 3000 + 300 * i, 0.5,
                           seed=50 + i) for i in range(7)]
    return HallFacts("h1", (*peers, *units), has_feed=True, has_signons=True)


def test_a_quick_windows_slower_day_is_not_late_against_the_hall():
    # Citizens who answer in 1.5 s (their slow tail: 2-3 s) take 3 s today (a new staff member,
    # elderly citizens): slower than this window's past, not later than the hall's citizens.
    t = with_past_rts(honest("t", 34, n_txn=80, rt_median=3000, rt_sigma=0.35), 1500, 0.35)
    ind = indicator(_hall_with_pasts(t), "t", "late_response")
    assert ind.strength != "strong", ind.reason_en
    assert ind.evidence["hall_floor_ms"] > 3000


def test_a_fill_in_at_a_quick_window_is_late_against_the_hall_too():
    t = with_past_rts(_fill_in(honest("t", 35, n_txn=80, coverage=0.6, rt_median=1500,
                                      rt_sigma=0.35), 0.7, (20_000, 70_000)), 1500, 0.35)
    ind = indicator(_hall_with_pasts(t), "t", "late_response")
    assert ind.strength == "strong"
    assert ind.evidence["threshold_ms"] == ind.evidence["hall_floor_ms"]
    assert all(x["rt_ms"] > ind.evidence["hall_floor_ms"] for x in ind.items)


def test_ratings_after_the_next_service_began_fire():
    t = _timeline(honest("t", 33, n_txn=60))
    starts = sorted(x.started_ms for x in t.txns)  # type: ignore[type-var]
    moved = []
    for i, r in enumerate(t.ratings):
        nxt = next((s for s in starts if s > r.txn_started_ms), None)  # type: ignore[operator]
        if i % 6 == 0 and nxt is not None and nxt > r.txn_completed_ms:  # type: ignore[operator]
            r = replace(r, press_ms=nxt + 60_000, rt_ms=nxt + 60_000 - r.txn_completed_ms)  # type: ignore[operator]
        moved.append(r)
    h = _timeline_hall(replace(t, ratings=tuple(sorted(moved, key=lambda r: r.press_ms))),
                       excellent())
    ind = indicator(h, "t", "after_next_start")
    assert ind.strength == "strong" and ind.value >= 5
    assert all(x["txn"].startswith("t-") for x in ind.items)
    assert indicator(h, "exc", "after_next_start").strength == "none"


def test_ratings_after_the_next_ticket_was_called_fire():
    # No service start times, only the queue system's calls (叫号), 40 s after each completion.
    t = honest("t", 38, n_txn=60)
    calls = tuple(WindowRecord(x.completed_ms + 40_000, "queue_called") for x in t.txns)
    moved = tuple(replace(r, press_ms=r.txn_completed_ms + 90_000)  # type: ignore[operator]
                  if i % 5 == 0 else r for i, r in enumerate(t.ratings))
    t = replace(t, ratings=tuple(sorted(moved, key=lambda r: r.press_ms)),
                window_log=tuple(sorted(t.window_log + calls, key=lambda e: e.at_ms)))
    ex = excellent()
    ex = replace(ex, window_log=tuple(sorted(
        ex.window_log + tuple(WindowRecord(x.completed_ms + 40_000, "queue_called")
                              for x in ex.txns), key=lambda e: e.at_ms)))
    h = hall(t, ex)
    ind = indicator(h, "t", "after_next_start")
    assert ind.strength == "strong" and ind.evidence["judged"] >= 40
    assert indicator(h, "exc", "after_next_start").value == 0


def test_ratings_within_their_citizens_time_are_not_after_the_next_service():
    h = _timeline_hall(honest("t", 33, n_txn=60), excellent())
    ind = indicator(h, "t", "after_next_start")
    assert ind.value == 0 and ind.strength == "none"


def test_coverage_rising_with_satisfaction_fires_over_the_rolling_period():
    t = _days("t", 15, [(60, 0.7, 0.7)] * 3 + [(60, 0.95, 0.9)] * 2)
    ind = _rolling_indicator(_rolling_hall(t), "t", "coverage_up")
    assert ind.strength == "strong" and ind.evidence["since"] is not None
    assert "参评率" in ind.reason_zh and "coverage" in ind.reason_en


def test_steady_or_merely_more_covered_windows_are_not_filled_in():
    steady = _days("s", 16, [(60, 0.95, 0.9)] * 5)                            # always so
    covered = _days("c", 17, [(60, 0.7, 0.7)] * 3 + [(60, 0.92, 0.7)] * 2)   # no happier
    h = _rolling_hall(steady, covered)
    for w in ("s", "c"):
        assert _rolling_indicator(h, w, "coverage_up").strength == "none", w


def _long_unasked(u: Unit, share: float, seed: int = 8) -> Unit:
    """The citizens of the longest services are not asked: their ratings vanish."""
    rng = random.Random(seed)
    by_len = sorted(u.txns, key=lambda t: t.completed_ms - t.started_ms)  # type: ignore[operator]
    longest = {t.completed_ms for t in by_len[len(by_len) // 2:] if rng.random() < share}
    return replace(u, txns=tuple(replace(t, state="unrated") if t.completed_ms in longest else t
                                 for t in u.txns),
                   ratings=tuple(r for r in u.ratings if r.txn_completed_ms not in longest))


def test_long_services_left_unrated_fire():
    t = _long_unasked(_timeline(honest("t", 34, n_txn=80, coverage=0.9)), 0.7)
    h = _timeline_hall(t, excellent())
    ind = indicator(h, "t", "duration_selection")
    assert ind.strength == "strong" and ind.evidence["missing"] >= 5
    assert all(x["kind"] == "txn" and x["state"] == "unrated" for x in ind.items)


def test_the_longest_few_services_left_unrated_fire_too():
    # Only the longest eighth (the really difficult cases) are not asked.
    t = _timeline(honest("t", 39, n_txn=100, coverage=0.9))
    by_len = sorted(t.txns, key=lambda x: x.completed_ms - x.started_ms)  # type: ignore[operator]
    longest = {x.completed_ms for x in by_len[-12:]}
    t = replace(t, txns=tuple(replace(x, state="unrated") if x.completed_ms in longest else x
                              for x in t.txns),
                ratings=tuple(r for r in t.ratings if r.txn_completed_ms not in longest))
    ind = indicator(_timeline_hall(t, excellent()), "t", "duration_selection")
    assert ind.strength == "strong" and ind.evidence["longest_share"] == 0.125


def test_a_handful_of_long_services_left_unrated_by_chance_is_not_strong():
    # The honest false flag of the frontier (seed 2): 5 of a window's 6 longest services
    # unrated at a coverage of 85 %; under the exact law that is about 1 in 1 000 per cut,
    # not proof (the normal approximation gave z = 4.5).
    t = _timeline(honest("t", 41, n_txn=50, coverage=0.85))
    by_len = sorted(t.txns, key=lambda x: x.completed_ms - x.started_ms)  # type: ignore[operator]
    longest = {x.completed_ms for x in by_len[-6:][:5]}
    t = replace(t, txns=tuple(replace(x, state="unrated") if x.completed_ms in longest
                              else replace(x, state="rated") for x in t.txns),
                ratings=tuple(r for r in t.ratings if r.txn_completed_ms not in longest))
    ind = indicator(_timeline_hall(t, excellent()), "t", "duration_selection")
    assert ind.strength != "strong" and ind.p > 1e-4


def test_other_windows_leaving_long_services_unrated_do_not_excuse_one():
    # Five windows of a hall do it: the hall's gap is the median window's, not their pool.
    units = [_long_unasked(_timeline(honest(f"t{i}", 34 + i, n_txn=80, coverage=0.9), i), 0.9,
                           seed=i) for i in range(5)]
    h = _timeline_hall(*units, excellent())
    for i in range(5):
        assert indicator(h, f"t{i}", "duration_selection").strength == "strong", i
    assert indicator(h, "exc", "duration_selection").strength == "none"


def _with_durations(u: Unit, seed: int, skip_longest: float = 0.0,
                    from_day: int = 0) -> Unit:
    """Service durations (log-normal, median 6 min) on a `_days` window; from the rolling
    period's day `from_day` on, the citizens of its longest `skip_longest` share are not asked."""
    rng = random.Random(seed)
    txns = [replace(t, started_ms=t.completed_ms - int(360_000 * math.exp(rng.gauss(0, 0.65))))
            for t in u.txns]
    since = S.midnight_ms(ROLLING.days[from_day])
    recent = sorted((t for t in txns if t.completed_ms >= since),
                    key=lambda t: t.completed_ms - t.started_ms)  # type: ignore[operator]
    skipped = {t.completed_ms for t in recent[len(recent) - int(len(recent) * skip_longest):]}
    return replace(u, txns=tuple(replace(t, state="unrated") if t.completed_ms in skipped else t
                                 for t in txns),
                   ratings=tuple(r for r in u.ratings if r.txn_completed_ms not in skipped))


def test_long_services_unasked_from_some_day_on_fire_over_the_rolling_period():
    # Three honest days, then two on which the longest 30 % of the citizens are not asked: over
    # the whole period the long ones' coverage is diluted; the last two days alone show it.
    t = _with_durations(_days("t", 12, [(40, 0.85, 0.75)] * 5), 5, 0.3, from_day=3)
    h = _rolling_hall(t, _with_durations(_days("q", 13, [(40, 0.85, 0.75)] * 5), 6))
    ind = _rolling_indicator(h, "t", "duration_selection")
    assert ind.strength == "strong" and ind.evidence["since"] == str(ROLLING.days[3])
    assert _rolling_indicator(h, "q", "duration_selection").strength == "none"


def test_coverage_alike_over_service_durations_does_not_fire():
    h = _timeline_hall(honest("t", 34, n_txn=80, coverage=0.7), excellent())
    assert indicator(h, "t", "duration_selection").strength == "none"
    assert indicator(h, "exc", "duration_selection").strength == "none"


def _offline_after(u: Unit, every: int, minutes: int = 3) -> Unit:
    """The device cut off 40 s after every `every`-th 差评, back `minutes` later, restarted."""
    bad = [r for r in u.ratings if r.level <= 2][::every]
    spans = []
    for r in bad:
        a = r.press_ms + 40_000
        spans.append((a, a + minutes * 60_000))
    dev = f"d-{u.window}"
    log = list(u.device_log)
    for i, (a, b) in enumerate(spans):
        log.append(DeviceRecord(a, a + 45_000, "status", {"state": "offline"}, dev, 7 + i))
        log.append(DeviceRecord(b, b, "status", {"state": "online"}, dev, 8 + i))
    return replace(u, device_log=tuple(sorted(log, key=lambda d: d.received_ms)))


def test_device_cut_off_after_bad_ratings_fires():
    t = _offline_after(honest("t", 35, n_txn=80, bad=0.12), 1)
    assert sum(1 for r in t.ratings if r.level <= 2) >= 3
    ind = indicator(hall(t, excellent()), "t", "device_interrupted")
    assert ind.strength == "strong" and ind.value >= 3
    assert {x["kind"] for x in ind.items} == {"rating", "event"}
    assert all(x["level"] <= 2 for x in ind.items if x["kind"] == "rating")


def test_two_bad_ratings_each_followed_by_the_devices_own_power_loss_report_fire():
    u = honest("t", 35, n_txn=80, bad=0.12)
    bad = [r for r in u.ratings if r.level <= 2][:2]
    u = replace(u, ratings=tuple(r for r in u.ratings if r.level > 2 or r in bad))  # 2 差评
    lost = tuple(DeviceRecord(r.press_ms + 30_000, r.press_ms + 31_000, "power_lost",
                              {"vcc_mv": 3000}, "d-t", 3) for r in bad)
    t = replace(u, device_log=tuple(sorted(u.device_log + lost, key=lambda d: d.received_ms)))
    ind = indicator(hall(t, excellent()), "t", "device_interrupted")
    assert ind.strength == "strong" and ind.evidence["kinds"] == ["power_lost"]
    assert [x["after_s"] for x in ind.items if x["kind"] == "event"] == [30, 30]
    # The same two coincidences seen only as offline stretches 40 s after the 差评: strong
    # where the device does not drop otherwise; not where it drops every hour or so anyway
    # (its own rate away from its 差评 is the chance then).
    two = _offline_after(u, 1)
    assert indicator(hall(two, excellent()), "t", "device_interrupted").strength == "strong"
    drops = [(f"{h:02d}:{m:02d}", f"{h:02d}:{m + 2:02d}") for h in (9, 10, 11, 14, 15, 16)
             for m in (10, 40)]
    flaky = _offline_after(_offline(u, drops, restart=False), 1)
    ind = indicator(hall(flaky, excellent()), "t", "device_interrupted")
    assert ind.strength != "strong" and ind.evidence["own_rate_per_h"] > 1


def test_the_halls_own_outage_after_a_bad_rating_is_no_interruption():
    # The device goes offline 40 s after each of its 差评, and so do the others' every time:
    # the hall's network failed (changes shared by at least 2 other devices).
    t = _offline_after(honest("t", 35, n_txn=80, bad=0.12), 1)
    spans = [(d.at_ms, d.at_ms + 180_000) for d in t.device_log
             if d.kind == "status" and d.data.get("state") == "offline"]
    others = []
    for u in (excellent(), honest("o", 36)):
        log = list(u.device_log)
        for a, b in spans:
            log += [DeviceRecord(a + 5000, a + 50_000, "status", {"state": "offline"},
                                 f"d-{u.window}", 3),
                    DeviceRecord(b, b, "status", {"state": "online"}, f"d-{u.window}", 3)]
        others.append(replace(u, device_log=tuple(sorted(log, key=lambda d: d.received_ms))))
    ind = indicator(hall(t, *others), "t", "device_interrupted")
    assert ind.value == 0 and ind.strength == "none"
    # Alone, the same stretches are the window's own.
    assert indicator(hall(t, excellent()), "t", "device_interrupted").strength == "strong"


def test_a_single_power_loss_after_a_bad_rating_is_weak_at_most():
    u = honest("t", 35, n_txn=80, bad=0.12)
    r = next(r for r in u.ratings if r.level <= 2)
    lost = DeviceRecord(r.press_ms + 8000, r.press_ms + 8200, "power_lost", {}, "d-t", 3)
    t = replace(u, device_log=tuple(sorted((*u.device_log, lost), key=lambda d: d.received_ms)))
    ind = indicator(hall(t, excellent()), "t", "device_interrupted")
    assert ind.value == 1 and ind.strength != "strong"
    assert ind.items[0]["kind"] == "rating" and ind.items[1]["note"] == "power_lost"


def test_wifi_drops_at_random_times_are_no_interruption():
    # Drops at fixed times of day, unrelated to the 差评.
    t = _offline(honest("t", 35, n_txn=80, bad=0.12), [("09:05", "09:08"), ("11:02", "11:04"),
                                                       ("14:40", "14:43")], restart=False)
    h = hall(t, excellent())
    ind = indicator(h, "t", "device_interrupted")
    assert ind.strength == "none" and ind.value <= 1


def _event(u: Unit, kind: str, at: str, **data: object) -> Unit:
    t = hm(at)
    e = DeviceRecord(t, t + 200, kind, dict(data), f"d-{u.window}", 3)
    return replace(u, device_log=tuple(sorted((*u.device_log, e), key=lambda d: d.received_ms)))


def test_a_failed_key_self_test_is_strong_and_an_opened_enclosure_a_notice():
    h = hall(_event(honest("t", 36), "key_selftest_failed", "10:00", keys=[1, 2]),
             _event(excellent(), "enclosure_opened", "12:30"), honest("plain", 37))
    ind = indicator(h, "t", "tamper")
    assert ind.strength == "strong" and ind.evidence["keys"] == [1, 2]
    assert ind.items[0]["note"] == "key_selftest_failed"
    assert verdict(h, "t").flagged
    assert indicator(h, "exc", "tamper").strength == "weak"
    assert not verdict(h, "exc").flagged
    found = compute_indicators(h, h.units, PERIOD, S)["plain"]
    assert not [i for i in found if i.name == "tamper"]  # nothing reported: nothing judged


def test_an_enclosure_shut_again_is_not_a_second_opening():
    # The firmware reports both edges of the lid switch (etfw/tamper.py).
    h = hall(_event(_event(excellent(), "enclosure_opened", "12:30", closed=False,
                           state="opened"), "enclosure_opened", "12:40", closed=True,
                    state="shut"), honest("plain", 37))
    ind = indicator(h, "exc", "tamper")
    assert ind.strength == "weak" and ind.evidence["enclosure_opened"] == 1
    assert len(ind.items) == 2  # both edges listed for the manager
    assert not verdict(h, "exc").flagged


def test_a_bad_key_press_published_as_another_level_fires_when_the_accounting_is_exact():
    # Key 1 counted, the rating published as a 4 (a key rewired to publish 4): every press
    # produced some rating, so the net surplus is 0, and still a 差评 never left the device.
    u = _exact(_counter_change(honest("u", 4), "15:00", 1))
    fake = RatingFact(hm("15:00") + 30_000, 4, None, "invited", 3000, "linked", None, "u-s",
                      hm("15:00"), "d-u", hm("15:00") + 30_000)
    u = _exact(with_ratings(u, [fake]))
    ind = indicator(hall(u, excellent()), "u", "key_counters")
    assert ind.evidence["unexplained"] == 0 and ind.evidence["became_other_level"] == 1
    assert ind.strength == "strong" and "其他等级" in ind.reason_zh
    honest_u = _exact(honest("v", 4))
    assert indicator(hall(honest_u, excellent()), "v", "key_counters").strength == "none"


def test_a_burst_every_rating_of_which_answers_a_completed_transaction_is_not_decisive():
    # A clerk closes nine cases at 10:00 and invites each citizen in turn.
    u = honest("t", 7)
    done = [hm("10:00") + i * 4000 for i in range(9)]
    txns = [TxnFact(d, "rated", "t-s") for d in done]
    rs = [RatingFact(d + 5000, 5, None, "invited", 3000, "linked", None, "t-s", d, "d-t", d + 5000)
          for d in done]
    u = with_ratings(replace(u, txns=tuple(sorted(u.txns + tuple(txns),
                                                  key=lambda t: t.completed_ms))), rs)
    ind = indicator(hall(u, excellent()), "t", "burst")
    assert ind.value >= 9 and ind.evidence["explained_by_transactions"]
    assert ind.strength != "strong"
    fill = [RatingFact(hm("17:40") + i * 6000, 5, None, "standalone", None, "unlinked",
                       "no_transaction", "t-s", None, "d-t") for i in range(9)]
    assert indicator(hall(with_ratings(honest("t", 7), fill), excellent()), "t",
                     "burst").evidence["explained_by_transactions"] is False


def test_a_flag_lists_the_ratings_behind_it_and_stores_them():
    from collector.detection.points import evidence_points
    t = with_past_rts(_fill_in(honest("t", 31, n_txn=70, coverage=0.6), 0.6, (20_000, 70_000)),
                      4000, 0.5)
    t = _timeline(t)
    h = hall(t, with_past_rts(excellent(), 3000, 0.5, seed=4))
    v = verdict(h, "t")
    assert v.flagged
    ev = v.evidence()
    late = [x for name, x in ev if name == "late_response"]
    assert late and all(x["kind"] == "rating" and x["txn"].startswith("t-") for x in late)
    assert all({"at_ms", "level", "device", "seq"} <= set(x) for x in late)
    lines = evidence_points(v, NOW)
    assert len(lines) == len(ev)
    assert all(x.startswith("integrity_evidence,") for x in lines)
    assert any(f'txn="{late[0]["txn"]}"' in x and "indicator=late_response" in x for x in lines)
    honest_v = verdict(h, "exc")
    assert evidence_points(honest_v, NOW) == []


# -- response shift against the hall's honest day-to-day variation -------------------------------


def _days_past(u: Unit, rt_median: float, rt_sigma: float, day_sd: float, days: int = 4,
               per_day: int = 50, seed: int = 3) -> Unit:
    """The window's own past over `days` earlier business days, each day's citizens answering
    e^N(0, day_sd) times faster or slower as a whole, with when each rating was pressed."""
    rng = random.Random(seed)
    rts, press = [], []
    for d in range(days, 0, -1):
        f = math.exp(rng.gauss(0, day_sd))
        for i in range(per_day):
            rts.append(max(450, int(rt_median * f * math.exp(rng.gauss(0, rt_sigma)))))
            press.append(hm("09:00") - d * 86_400_000 + i * 400_000)
    return replace(u, history_rts=tuple(rts), history_rt_press=tuple(press))


def _spread_hall(day_sd: float, *units: Unit) -> HallFacts:
    peers = [_days_past(honest(f"p{i}", i, n_txn=30 + 12 * i, rt_median=2500 + 500 * i),
                        2500 + 500 * i, 0.5, day_sd, seed=20 + i) for i in range(7)]
    return HallFacts("h1", tuple(peers) + units, has_feed=True, has_signons=True)


@pytest.mark.parametrize("day_sd", [0.0, 0.15, 0.3])
def test_honest_spread_estimates_the_halls_day_to_day_variation(day_sd):
    from collector.detection.indicators.base import _Ctx
    from collector.detection.indicators.timing import DAY_SD_MIN, _honest_spread

    h = _spread_hall(day_sd)
    tau_day, _ = _honest_spread(_Ctx(S, PERIOD, h, h.units))
    # 7 windows x 4 days: 28 deviations, each day's median known to about 0.09.
    assert tau_day == pytest.approx(max(DAY_SD_MIN, day_sd), abs=0.08)


def test_response_shift_allows_for_a_day_faster_as_a_whole():
    # Honest citizens answering 40 % faster today, all of them (a rush): before, the count
    # below the window's own fast tail alone was strong evidence; the whole distribution moved,
    # so it is not. A staff member's presses at 1.2 s among the same citizens still are.
    t = _days_past(honest("t", 13, n_txn=80, rt_median=2400, rt_sigma=0.5), 4000, 0.5, 0.15)
    h = _spread_hall(0.15, t, excellent())
    ind = indicator(h, "t", "response_shift")
    assert ind.value >= 3 * ind.evidence["expected"]  # a pile below the fast tail ...
    assert ind.strength != "strong"  # ... that the body's shift explains
    assert not verdict(h, "t").flagged
    staff = _days_past(_counted(_staff_presses(honest("t", 13, n_txn=60), 1200, 150, 25)),
                       4000, 0.5, 0.15)
    h = _spread_hall(0.15, staff, excellent())
    ind = indicator(h, "t", "response_shift")
    assert ind.strength == "strong" and ind.value >= 25
    assert verdict(h, "t").flagged


def test_response_shift_with_two_staff_strata_allows_for_a_faster_day():
    # Two staff members today, each with a past of their own at the window (two strata, one
    # shared day shift): both shifts' citizens 40 % faster as a whole is no shift; one of them
    # rating 40 citizens at 1.1 s still is (25 are weak: the pile moves the upper quartiles
    # the day's shift is read from, and the hall's days vary by 15 %).
    def two(u: Unit) -> Unit:
        rs = [replace(r, staff_id="t-a" if i % 2 else "t-s") for i, r in enumerate(u.ratings)]
        u = replace(u, ratings=tuple(rs))
        rng = random.Random(8)
        past = [(max(450, int(4000 * math.exp(rng.gauss(0, 0.45)))), ("t-a", "t-s")[i % 2])
                for i in range(200)]
        return replace(u, history_rts=tuple(x for x, _ in past),
                       history_rt_staff=tuple(w for _, w in past),
                       history_rt_press=tuple(hm("09:00") - (4 - i * 4 // 200) * 86_400_000
                                              + i * 1000 for i in range(200)))

    faster = two(honest("t", 21, n_txn=90, rt_median=2400, rt_sigma=0.45))
    h = _spread_hall(0.15, faster, excellent())
    ind = indicator(h, "t", "response_shift")
    assert len(ind.evidence["honest_shift_sd"]) == 2 and ind.evidence["by_staff"]
    assert ind.value >= 3 * ind.evidence["expected"] and ind.strength != "strong"
    assert not verdict(h, "t").flagged
    staff = two(_counted(_staff_presses(honest("t", 21, n_txn=60), 1100, 120, 40,
                                        every_ms=250_000)))
    h = _spread_hall(0.15, staff, excellent())
    ind = indicator(h, "t", "response_shift")
    assert len(ind.evidence["honest_shift_sd"]) == 2
    assert ind.strength == "strong" and verdict(h, "t").flagged


def test_late_responses_against_a_single_past_day_are_weak_at_most():
    # The same fill-in as above, but the window's past is one business day: its slow tail is
    # not established (a quick first day), so the late ones are a weak signal, not a flag.
    def case(days: int) -> Unit:
        return with_past_rts(_fill_in(honest("t", 31, n_txn=70, coverage=0.6), 0.6,
                                      (20_000, 70_000)), 4000, 0.5, days=days)
    for days, strength in ((1, "weak"), (3, "strong")):
        h = hall(case(days), with_past_rts(excellent(), 3000, 0.5, seed=4))
        ind = indicator(h, "t", "late_response")
        assert ind.strength == strength and ind.evidence["past_days"] == days
