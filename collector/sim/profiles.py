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
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.reasons import DEFAULT_REASON_KEYS

__all__ = [
    "FAMILIES",
    "HONEST_TRAITS",
    "PROFILES",
    "TXN_PER_HOUR",
    "Action",
    "Family",
    "WindowPlan",
    "citizen_presses",
    "draw_hall",
    "draw_profile_params",
    "draw_traits",
    "draw_window",
    "family_dose",
    "family_variant",
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
    # The red team's families (issue 15), each with a dose (FAMILIES):
    "fill_in",               # staff rate the invitations their citizens walked away from
    "drip",                  # k fake ratings a day through ordinary invitations, spread
    "cooperation",           # staff of 2-3 windows rate each other's unrated citizens
    "interruption",          # power or network cut after a 差评
    "selection",             # citizens not asked, by service duration or by how it went
    "tampering",             # a dead key, or a key publishing another level
)


@dataclass(frozen=True)
class Family:
    """A manipulation family: what its dose is, the range a random draw takes it from, and the
    doses `detect frontier` measures."""

    dose: str
    lo: float
    hi: float
    grid: tuple[float, ...]
    unit: str = ""


FAMILIES: dict[str, Family] = {
    "fill_in": Family("share of unrated invitations filled in", 0.1, 1.0,
                      (0.1, 0.2, 0.4, 0.7, 1.0)),
    "drip": Family("fake ratings a day", 1, 8, (1, 2, 4, 8)),
    "cooperation": Family("share of the partners' unrated invitations filled in", 0.1, 1.0,
                          (0.1, 0.2, 0.5, 1.0)),
    "interruption": Family("probability of a cut after a 差评", 0.2, 1.0, (0.25, 0.5, 1.0)),
    "selection": Family("share of the window's citizens not asked", 0.1, 0.5,
                        (0.1, 0.2, 0.3, 0.5)),
    "tampering": Family("share of the tampered key's presses affected", 0.25, 1.0,
                        (0.25, 0.5, 1.0)),
}

# Honest variation (issue 15): each honest window has each trait with this probability
# (`draw_window(..., variation=True)`; VirtualHall applies them).
HONEST_TRAITS: dict[str, float] = {
    "bad_day": 0.15,         # one business day with 4x the 差评 and fewer 非常满意
    "rush_day": 0.15,        # one business day with 2.5x the volume, lower coverage, faster
    "tiny": 0.08,            # about 3 transactions a day
    "new_staff": 0.1,        # a new staff member from some day on, with citizens of their own
    "lunch_rotation": 0.15,  # a neighbour window's staff member covers some afternoons
    "wifi": 0.1,             # many Wi-Fi drops (1-15 minutes) without a power loss
    "linger": 0.2,           # 5-25 % of citizens rate 15-100 s after the invitation
    "far_device": 0.1,       # the keypad stands far from the citizen: slow, less coverage
    "batch_close": 0.25,     # the clerk closes 2-4 cases at once (families, groups)
}

FW = "sim-profile-1.0"
REASON_KEYS = DEFAULT_REASON_KEYS  # the firmware's default order
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
    traits: dict[str, Any] = field(default_factory=dict)  # honest variation (HONEST_TRAITS)

    def active(self, day_index: int) -> bool:
        return self.profile != "honest" and day_index >= self.start_day

# A window's volume, transactions an hour (log-uniform between the two).
TXN_PER_HOUR = (2.0, 14.0)

def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))

def draw_window(rng: random.Random, hall: str, index: int, *, excellent: bool = False,
                profile: str = "honest", start_day: int = 0, dose: float | None = None,
                variation: bool = False, days: int = 5,
                delay_ms: tuple[float, float] | None = None) -> WindowPlan:
    """An honest window drawn from wide ranges, then the profile's own parameters (`dose`: the
    family's dose, else drawn; `delay_ms`: the range of a staff member's typical delay for the
    families that have one, else the family's own), then, with `variation`, its honest traits
    (HONEST_TRAITS)."""
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
    plan.params.update(draw_profile_params(rng, profile, dose, delay_ms))
    if variation:
        plan.traits = draw_traits(rng, plan, days)
    return plan


def draw_traits(rng: random.Random, plan: WindowPlan, days: int) -> dict[str, Any]:
    """The honest variations of one window (every window may have them, manipulated or not)."""
    t: dict[str, Any] = {}
    for name, chance in HONEST_TRAITS.items():
        if rng.random() >= chance:
            continue
        if name in ("bad_day", "rush_day", "new_staff"):
            t[name] = rng.randrange(max(1, days))
        elif name == "lunch_rotation":
            t[name] = rng.uniform(0.3, 1.0)  # share of afternoons covered by the neighbour
        elif name == "linger":
            t[name] = rng.uniform(0.05, 0.25)
        elif name == "far_device":
            t[name] = (rng.uniform(1.6, 3.0), rng.uniform(0.1, 0.25))  # rt factor, coverage
        elif name == "batch_close":
            t[name] = rng.uniform(0.5, 2.5)  # batches a day
        else:
            t[name] = True
    if "tiny" in t:
        plan.txn_per_hour = 3 / 7.5
    if "wifi" in t:
        plan.blips_per_day = rng.uniform(3, 8)
    if plan.excellent and rng.random() < 0.4:  # 99 % 非常满意
        plan.levels = (0.0005, 0.0005, 0.002, 0.007, 0.99)
        t["excellent99"] = True
    return t


def family_variant(plan: WindowPlan) -> str:
    """The variant of the window's family that the frontier shows apart ("" if none)."""
    p = plan.params
    if plan.profile == "tampering":
        if p["seen"]:
            return f"{p['mode']}, seen by the firmware"
        return f"{p['mode']}, keypad altered ({p.get('how', 'switch')})"
    if plan.profile == "interruption":
        return f"{p['mode']} cut"
    if plan.profile == "selection":
        return f"by {p['by']}"
    return ""


def family_dose(plan: WindowPlan) -> float | None:
    """The dose of the window's family (None for the other profiles)."""
    v = plan.params.get("dose")
    return float(v) if v is not None else None


def draw_profile_params(rng: random.Random, profile: str, dose: float | None = None,
                        delay_ms: tuple[float, float] | None = None) -> dict[str, Any]:
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
    elif profile in FAMILIES:
        fam = FAMILIES[profile]
        d = dose if dose is not None else rng.uniform(fam.lo, fam.hi)
        p["dose"] = round(d) if profile == "drip" else d
        p.update(_family_params(rng, profile, delay_ms))
    elif profile != "honest":
        raise ValueError(f"unknown profile {profile!r}")
    return p


# The range of a staff member's typical delay after the invitation, per family that has one.
STAFF_DELAY_MS = {"fill_in": (1000, 120_000), "drip": (1500, 30_000), "cooperation": (8000, 90_000)}


def _family_params(rng: random.Random, profile: str,
                   delay_ms: tuple[float, float] | None = None) -> dict[str, Any]:
    """A family's parameters besides its dose, drawn over the whole space the family covers
    (`delay_ms`: another range for the staff's typical delay; the same draws either way)."""
    if profile in STAFF_DELAY_MS:
        # fill_in: the staff member's habit, a typical delay from 1 s to the invitation's
        # lifetime (the upper end is capped by the actual ttl), jittered per press; the level
        # mix. drip: through ordinary invitations; cooperation: the partners' invitations.
        lo, hi = delay_ms or STAFF_DELAY_MS[profile]
        return {"delay_ms": _loguniform(rng, lo, hi),
                "five": rng.uniform(0.5 if profile == "fill_in" else 0.6, 1.0)}
    if profile == "interruption":
        return {"mode": rng.choice(("power", "network")), "minutes": rng.uniform(1, 15),
                "after_ms": rng.randint(1500, 15_000)}
    if profile == "selection":
        # The staff member's judgement is imperfect: a share `misjudged` (0-30 %) of the
        # citizens not asked are not the targeted ones (by_duration: a long case taken for a
        # short one; by outcome: a satisfied citizen taken for an unhappy one).
        return {"by": rng.choice(("duration", "outcome")), "misjudged": rng.uniform(0.0, 0.3)}
    if profile == "tampering":
        mode = rng.choice(("dead", "remap"))
        keys = rng.choice(((1,), (2,), (1, 2)))
        # `seen`: tampered firmware (its counter counts the physical key); else the keypad was
        # altered inside its case: `how` "wire" (a key's GPIO wire cut or moved, its switch
        # still on the key ladder: the self-test sees it) or "switch" (the switch rewired
        # with its ladder resistor, blocked, or its cap moved: nothing sees it); `opened`
        # "powered" (the lid opened with the device running: the enclosure switch reports
        # it) or "unplugged" (power cut first: a restart before opening hours, nothing else).
        return {"mode": mode, "keys": keys, "to": rng.choice((3, 4, 5)),
                "seen": rng.random() < 0.5, "how": rng.choice(("wire", "switch")),
                "opened": rng.choice(("powered", "unplugged"))}
    return {}


Note = Callable[[str, int], None]  # (what the manipulation did, how many times): ground truth


Action = tuple[int, str, int]  # (ms, "press" | "standalone" | "pause" | "power" | "network" |
#                                 "token", key or 0/1)


def _staff_level(rng: random.Random, p: dict[str, Any]) -> int:
    return 5 if rng.random() < p.get("five", 1.0) else 4


def _staff_delay(rng: random.Random, p: dict[str, Any], ttl_ms: int) -> int:
    """A staff member's delay after the invitation showed: their habit, jittered, always
    within the invitation's lifetime."""
    d = p["delay_ms"] * math.exp(rng.gauss(0, 0.3))
    return int(min(max(800.0, d), ttl_ms - 500))


def citizen_presses(rng: random.Random, plan: WindowPlan, active: bool, level: int, rate: bool,
                    rt: Callable[[], int], note: Note, *, long_service: bool = False,
                    service_ms: int | None = None,
                    tokens: list[int] | None = None, ttl_ms: int = 120_000) -> list[Action]:
    """What follows one invitation, as (ms after it showed, action, arg): the citizen's presses
    (`level`, if they `rate`; `rt()` draws their response time) and, by profile, the staff's
    presses or power and network cuts. `long_service`: the citizen's case took long;
    `service_ms`: how long it took (selection by duration);
    `tokens`: the drip's fake ratings still due today (one is taken when used). Presses on a
    dead key or while nothing is asked are still presses: the device decides."""
    p = plan.params
    prof = plan.profile if active else "honest"
    if prof == "self_rating" and rng.random() < p["share"]:
        staff_at = max(150, int(rng.gauss(p["mu_ms"], p["sd_ms"])))
        note("staff_rated", 1)
        out: list[Action] = [(staff_at, "press", 5 if rng.random() < p["five"] else 4)]
        if rate and rng.random() < 0.3:  # the citizen tries anyway: a press with no invitation
            out.append((staff_at + rt(), "press", level))
        return out
    if prof == "selective_invitation":
        keep = p["happy"] if level >= 4 else 1 - p["dissuade"]
        if rate and rng.random() >= keep:
            note("not_invited" if level >= 4 else "unhappy_not_invited", 1)
            return []
    if prof == "selection" and rate and _not_asked(rng, plan, level, service_ms):
        note("not_asked" if level >= 3 else "unhappy_not_asked", 1)
        return []
    if not rate:
        if prof in ("fill_in", "cooperation") and rng.random() < p["dose"]:
            note("filled_in" if prof == "fill_in" else "cooperated", 1)
            return [(_staff_delay(rng, p, ttl_ms), "press", _staff_level(rng, p))]
        if prof == "drip" and tokens:
            tokens.pop(0)
            note("dripped", 1)
            return [(_staff_delay(rng, p, ttl_ms), "press", _staff_level(rng, p))]
        return []
    t = rt()
    if prof == "bad_key_disabled" and level <= 2:
        note("negatives_lost", 1)
        out = [(t, "press", level)]  # dead key: nothing happens
        if rng.random() < p["press_three"]:
            out.append((t + rng.randint(1500, 5000), "press", 3))
        return out
    out = [(t, "press", level)]
    if prof == "interruption" and level <= 2 and rng.random() < p["dose"]:
        cut = t + p["after_ms"] + rng.randint(0, 3000)
        note("interrupted", 1)
        out.append((cut, p["mode"], 0))
        out.append((cut + int(p["minutes"] * 60_000 * math.exp(rng.gauss(0, 0.3))),
                    p["mode"], 1))
    if level <= 2 and rng.random() < 0.8:
        t += rng.randint(2000, 9000)
        out.append((t, "press", rng.randint(1, 5)))  # the reason tag
    if rng.random() < plan.stray_press:
        out.append((t + rng.randint(1000, 4000), "press", rng.randint(1, 5)))
    return out




def _not_asked(rng: random.Random, plan: WindowPlan, level: int, service_ms: int | None) -> bool:
    """Selection: whether the staff member does not ask this citizen, so that about `dose` of
    the window's citizens are not asked, the ones whose service took longest (the duration's
    upper `dose` quantile: log-normal, median 6 minutes, σ 0.65, as VirtualHall draws them)
    or went worst (from level 1 up, by the window's level distribution); a share `misjudged`
    of them at random instead."""
    p = plan.params
    dose, miss = float(p["dose"]), float(p.get("misjudged", 0.0))
    if rng.random() < dose * miss:
        return True
    budget = dose * (1 - miss)  # the share of all citizens chosen by the target
    if p["by"] == "duration":
        if service_ms is None:
            return False
        z = statistics.NormalDist().inv_cdf(min(0.999, max(0.001, 1 - budget)))
        return service_ms * math.exp(rng.gauss(0, 0.15)) > 360_000 * math.exp(0.65 * z)
    below = sum(plan.levels[: level - 1]) / max(sum(plan.levels), 1e-9)
    share = plan.levels[level - 1] / max(sum(plan.levels), 1e-9)
    if below >= budget or share <= 0:
        return False
    return rng.random() < min(1.0, (budget - below) / share)


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
    elif plan.profile == "drip":
        # k fake ratings a day, spread over the opening hours: from each of these times on,
        # the next invitation a citizen leaves unrated is rated by the staff.
        for _ in range(int(p["dose"])):
            a, b = rng.choice(shifts)
            out.append((rng.randint(a, b - 10 * minute_ms), "token", 1))
    elif plan.profile == "uninvited_pressing":
        n = rng.randint(*p["per_day"])
        note("uninvited_presses", n)
        for _ in range(n):
            out.append((rng.randint(shifts[0][0], shifts[1][1]), "press",
                        5 if rng.random() < 0.85 else 4))
    return out

def draw_hall(rng: random.Random, hall: str, n_windows: int, profiles: list[str],
              start_day: int, *, doses: dict[str, float] | None = None,
              variation: bool = False, days: int = 5,
              delay_ms: tuple[float, float] | None = None) -> list[WindowPlan]:
    """`n_windows` windows: the given manipulated profiles, 1-3 honest excellent ones, the rest
    ordinary honest windows of very different quality and volume (positions shuffled). A
    `cooperation` entry is a group of 2-3 windows (the group counts as one entry per window it
    holds); `doses` fixes a family's dose; `variation` draws the honest traits."""
    expanded: list[str] = []
    for prof in profiles:
        expanded += [prof] * (rng.randint(2, 3) if prof == "cooperation" else 1)
    n_windows = max(n_windows, len(expanded))
    n_excellent = min(rng.randint(1, 3), n_windows - len(expanded))
    kinds = ([("honest", True)] * n_excellent + [(p, False) for p in expanded]
             + [("honest", False)] * (n_windows - n_excellent - len(expanded)))
    rng.shuffle(kinds)
    doses = doses or {}
    return [draw_window(rng, hall, i + 1, excellent=exc, profile=prof, start_day=start_day,
                        dose=doses.get(prof), variation=variation, days=days,
                        delay_ms=delay_ms)
            for i, (prof, exc) in enumerate(kinds)]
