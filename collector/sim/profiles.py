"""Windows and manipulations for both simulators: who the citizens are, what staff do.

The windows' honest behaviour is drawn from wide ranges (volume, true quality, coverage, response
times, stray presses, pauses, network blips, and the honest variations of `HONEST_TRAITS`), and
optionally one manipulation from `PROFILES` (today's profiles and the red team's families,
`FAMILIES`, each with a dose), active from a given day on, with its own parameters drawn too.

Defined once, here: the parameter draws (`draw_profile_params`), what a citizen and the staff
press after an invitation (`citizen_presses`) and a profile's day besides invitations
(`profile_episodes`). The device is the firmware's own terminal (collector/sim/device.py); the
simulated-time hall (collector/sim/hall.py) and the real-time one (collector/sim/realtime.py)
run the same definitions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PROFILES",
    "TXN_PER_HOUR",
    "WindowPlan",
    "citizen_presses",
    "draw_hall",
    "draw_profile_params",
    "draw_window",
    "profile_episodes",
]

PROFILES = (
    "self_rating",           # staff press 5 themselves, right after the invitation
    "fill_in_burst",         # end-of-day fill-in: a run of stand-alone 5s after closing
    "selective_invitation",  # unhappy-looking citizens are talked out of rating
    "unplugging",            # device unplugged for stretches of opening hours
    "bad_key_disabled",      # keys 1-2 physically dead
    "rating_during_pause",   # window shown 暂停服务 while ratings are pressed
    "uninvited_pressing",    # staff keep pressing 5 with no invitation showing
    "suppressed_negatives",  # tampered firmware drops 1-2 ratings (keys still count)
)
FW = "sim-profile-1.0"
REASON_KEYS = ("attitude", "efficiency", "notice", "wait", "other")  # firmware default order
WILL_DELAY_MS = 45_000  # broker publishes the last will after 1.5 x keepalive (30 s)
MIN_INTERVAL_MS = 5_000  # firmware stand-alone repeat filter
REASON_TIMEOUT_MS = 20_000


@dataclass
class WindowPlan:
    window: str
    device: str
    staff: list[tuple[str, str, str]]
    levels: tuple[float, float, float, float, float]  # true level distribution 1..5
    txn_per_hour: float
    coverage: float
    rt_median_ms: float
    rt_sigma: float
    stray_press: float       # chance a citizen presses again after rating (outside invitation)
    pauses_per_day: float
    blips_per_day: float
    heartbeat_s: int
    excellent: bool = False
    profile: str = "honest"
    start_day: int = 0       # index of the first business day the profile is active
    params: dict[str, Any] = field(default_factory=dict)

    def active(self, day_index: int) -> bool:
        return self.profile != "honest" and day_index >= self.start_day


# A window's volume, transactions an hour (log-uniform between the two).
TXN_PER_HOUR = (2.0, 14.0)


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_window(rng: random.Random, hall: str, index: int, *, excellent: bool = False,
                profile: str = "honest", start_day: int = 0) -> WindowPlan:
    """An honest window drawn from wide ranges, then the profile's own parameters."""
    w = f"w{index:02d}"
    staff = [(f"s{index:02d}{x}", f"员工{index}{x}", f"{100000 + index * 10 + j}")
             for j, x in enumerate("ab")]
    if excellent:
        bad = rng.uniform(0.002, 0.01)
        top = rng.uniform(0.8, 0.95)
        coverage = rng.uniform(0.85, 0.98)
    else:
        bad = _loguniform(rng, 0.01, 0.10)
        top = rng.uniform(0.35, 0.8)
        coverage = rng.uniform(0.65, 0.97)
    rest = max(0.0, 1 - bad - top)
    levels = (bad * 0.4, bad * 0.6, rest * rng.uniform(0.2, 0.5), 0.0, top)
    levels = (levels[0], levels[1], levels[2], max(0.0, 1 - sum(levels)), top)
    plan = WindowPlan(
        window=w, device=f"vd-{hall}-{w}", staff=staff, levels=levels,
        txn_per_hour=_loguniform(rng, *TXN_PER_HOUR), coverage=coverage,
        rt_median_ms=rng.uniform(2200, 6000), rt_sigma=rng.uniform(0.35, 0.7),
        stray_press=rng.uniform(0.0, 0.04), pauses_per_day=rng.uniform(0.0, 2.0),
        blips_per_day=rng.uniform(0.0, 1.5), heartbeat_s=rng.randint(120, 200),
        excellent=excellent, profile=profile, start_day=start_day,
    )
    plan.params.update(draw_profile_params(rng, profile))
    return plan


def draw_profile_params(rng: random.Random, profile: str) -> dict[str, Any]:
    """The manipulation's own parameters, drawn from wide ranges (never shown to the detector).
    The one definition both simulators use (this module's `VirtualHall`, in simulated time, and
    collector/sim/realtime.py, in real time over the broker)."""
    p: dict[str, Any] = {}
    if profile == "self_rating":
        p.update(share=rng.uniform(0.3, 0.8), mu_ms=rng.uniform(350, 1500),
                 sd_ms=rng.uniform(30, 250), five=rng.uniform(0.8, 1.0))
    elif profile == "fill_in_burst":
        p.update(presses=(rng.randint(5, 9), rng.randint(10, 20)), lunch=rng.uniform(0, 0.5))
    elif profile == "selective_invitation":
        p.update(dissuade=rng.uniform(0.7, 0.95), happy=rng.uniform(0.6, 0.95))
    elif profile == "unplugging":
        p.update(episodes=(rng.randint(2, 3), rng.randint(4, 6)), minutes=(10, rng.randint(25, 45)))
    elif profile == "bad_key_disabled":
        p.update(press_three=rng.uniform(0.2, 0.6))
    elif profile == "rating_during_pause":
        p.update(pauses=(1, 2), presses=(rng.randint(3, 4), rng.randint(5, 9)))
    elif profile == "uninvited_pressing":
        p.update(per_day=(rng.randint(6, 10), rng.randint(12, 25)))
    elif profile == "suppressed_negatives":
        p.update(drop=rng.uniform(0.7, 1.0))
    elif profile != "honest":
        raise ValueError(f"unknown profile {profile!r}")
    return p


Note = Callable[[str, int], None]  # (what the manipulation did, how many times): ground truth


def citizen_presses(rng: random.Random, plan: WindowPlan, active: bool, level: int, rate: bool,
                    rt: Callable[[], int], note: Note) -> list[tuple[int, int]]:
    """The key presses that follow one invitation, as (ms after it showed, key): the citizen's
    (`level`, if they `rate`; `rt()` draws their response time) and, by profile, the staff's.
    Presses on a dead key or while nothing is asked are still presses: the device decides."""
    p = plan.params
    if active and plan.profile == "self_rating" and rng.random() < p["share"]:
        staff_at = max(150, int(rng.gauss(p["mu_ms"], p["sd_ms"])))
        note("staff_rated", 1)
        out = [(staff_at, 5 if rng.random() < p["five"] else 4)]
        if rate and rng.random() < 0.3:  # the citizen tries anyway: a press with no invitation
            out.append((staff_at + rt(), level))
        return out
    if active and plan.profile == "selective_invitation":
        keep = p["happy"] if level >= 4 else 1 - p["dissuade"]
        if rate and rng.random() >= keep:
            note("not_invited" if level >= 4 else "unhappy_not_invited", 1)
            return []
    if not rate:
        return []
    t = rt()
    if active and plan.profile == "bad_key_disabled" and level <= 2:
        note("negatives_lost", 1)
        out = [(t, level)]  # dead key: nothing happens
        if rng.random() < p["press_three"]:
            out.append((t + rng.randint(1500, 5000), 3))
        return out
    out = [(t, level)]
    if level <= 2 and rng.random() < 0.8:
        t += rng.randint(2000, 9000)
        out.append((t, rng.randint(1, 5)))  # the reason tag
    if rng.random() < plan.stray_press:
        out.append((t + rng.randint(1000, 4000), rng.randint(1, 5)))
    return out


Action = tuple[int, str, int]  # (ms, "press" | "standalone" | "pause" | "power", key or 0/1)


def _standalone(times: list[int], key: int = 5) -> list[Action]:
    """Stand-alone mode switched on around a run of presses (the device rates each one)."""
    return ([(times[0] - 1000, "standalone", 1)] + [(t, "press", key) for t in times]
            + [(times[-1] + 1000, "standalone", 0)])


def profile_episodes(rng: random.Random, plan: WindowPlan, shifts: list[tuple[int, int]],
                     note: Note, minute_ms: int = 60_000) -> list[Action]:
    """What the profile does on one business day besides invitations, as timed actions:
    fill-in bursts, unplugging, ratings while paused, presses with nothing asked. `shifts` are
    the day's (morning, afternoon) opening stretches in ms; `minute_ms` how long a minute of
    the profile lasts (60 000; shorter in a compressed real-time day)."""
    p, out = plan.params, []
    if plan.profile == "fill_in_burst":
        at = (shifts[0][1] if rng.random() < p["lunch"] else shifts[1][1]) + rng.randint(
            1, 15) * minute_ms
        n = rng.randint(*p["presses"])
        note("filled_in", n)
        times = [at]
        for _ in range(n - 1):
            times.append(times[-1] + rng.randint(5200, 9000))  # the repeat filter is 5 s
        out += _standalone(times)
    elif plan.profile == "unplugging":
        for _ in range(rng.randint(*p["episodes"])):
            a, b = rng.choice(shifts)
            start = rng.randint(a, b - 10 * minute_ms)
            note("unplugged", 1)
            out.append((start, "power", 0))
            out.append((start + rng.randint(*p["minutes"]) * minute_ms, "power", 1))
    elif plan.profile == "rating_during_pause":
        second = minute_ms // 60
        for _ in range(rng.randint(*p["pauses"])):
            a, b = rng.choice(shifts)
            start = rng.randint(a, b - 60 * minute_ms)
            n = rng.randint(*p["presses"])
            note("rated_while_paused", n)
            times = [start + max(MIN_INTERVAL_MS, rng.randint(60, 180) * second)]
            for _ in range(n - 1):
                times.append(times[-1] + max(MIN_INTERVAL_MS + 200,
                                             rng.randint(60, 300) * second))
            out.append((start, "pause", 1))
            out += _standalone(times)
            out.append((times[-1] + max(MIN_INTERVAL_MS, rng.randint(60, 300) * second),
                        "pause", 0))
    elif plan.profile == "uninvited_pressing":
        n = rng.randint(*p["per_day"])
        note("uninvited_presses", n)
        for _ in range(n):
            out.append((rng.randint(shifts[0][0], shifts[1][1]), "press",
                        5 if rng.random() < 0.85 else 4))
    return out


def draw_hall(rng: random.Random, hall: str, n_windows: int, profiles: list[str],
              start_day: int) -> list[WindowPlan]:
    """`n_windows` windows: the given manipulated profiles, 1-3 honest excellent ones, the rest
    ordinary honest windows of very different quality and volume (positions shuffled)."""
    n_excellent = min(rng.randint(1, 3), n_windows - len(profiles))
    kinds = ([("honest", True)] * n_excellent + [(p, False) for p in profiles]
             + [("honest", False)] * (n_windows - n_excellent - len(profiles)))
    rng.shuffle(kinds)
    return [draw_window(rng, hall, i + 1, excellent=exc, profile=prof, start_day=start_day)
            for i, (prof, exc) in enumerate(kinds)]


