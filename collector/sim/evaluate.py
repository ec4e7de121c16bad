"""Evaluation: simulated halls through the real pipeline, judged by the real detector.

Each run draws a hall (8-14 windows of very different volume and true quality, 1-3 of them
honest and excellent), gives some windows a manipulation profile that starts after a few honest
days, and runs every business day in simulated time through `Ingest.process_batch`, calling
`run_detection` every `every_min` minutes of the opening day and once after closing. It records,
per window, the days it was flagged and when it was first flagged after its profile started.

Nothing here feeds back into the detector: the simulator's parameters are drawn afresh in each
run (seeded), and the detector only sees the state database.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from collector.config import load_config
from collector.detection.run import run_detection
from collector.detection.settings import DetectionSettings
from collector.outbox import discard_points
from collector.sim.hall import VirtualHall
from collector.sim.profiles import PROFILES, draw_hall, family_dose, family_variant

__all__ = ["WindowOutcome", "evaluate", "format_report", "run_once"]

OPEN_HOURS_PER_DAY = 7.5


@dataclass
class WindowOutcome:
    run: int
    window: str
    profile: str
    excellent: bool
    start_day: int
    days: int
    flagged_days: list[int] = field(default_factory=list)
    first_flag_hours: float | None = None  # business hours after the profile started
    first_flag_day: int | None = None      # 1 = the profile's first day
    first_reasons: list[str] = field(default_factory=list)
    honest_flag_reasons: list[str] = field(default_factory=list)
    # What the manipulation actually did on each business day (the simulator's ground truth,
    # e.g. {"negatives_dropped": 2}); never shown to the detector.
    truth: dict[int, dict[str, int]] = field(default_factory=dict)
    dose: float | None = None  # the family's dose (None for the other profiles)
    traits: list[str] = field(default_factory=list)  # honest variations of the window
    variant: str = ""  # the family's variant (profiles.family_variant)

    def acted(self, within_days: int) -> bool:
        """Whether the profile did anything within its first `within_days` days (a window
        whose citizens gave no 差评 has none to suppress)."""
        return any(self.truth.get(d) for d in range(self.start_day, self.start_day + within_days))


def _business_hours(settings: DetectionSettings, start_ms: int, at_ms: int, days: list) -> float:
    """Opening hours elapsed between `start_ms` and `at_ms` over the given local days."""
    total = 0
    for d in days:
        for a, b in settings.open_intervals(d):
            lo, hi = max(a, start_ms), min(b, at_ms)
            if hi > lo:
                total += hi - lo
    return total / 3600_000


def run_once(seed: int, days: int = 5, start_day: int = 3, profiles: Iterable[str] = (),
             every_min: int = 30, workdir: str | None = None,
             honest_drift: bool = False, *, doses: dict[str, float] | None = None,
             variation: bool = False,
             windows: tuple[int, int] = (8, 14),
             delay_ms: tuple[float, float] | None = None) -> list[WindowOutcome]:
    """One simulated hall; `doses` fixes the families' doses, `variation` turns on the honest
    traits (profiles.HONEST_TRAITS), `windows` is the range of its number of windows,
    `delay_ms` the range of the staff's typical delay (profiles.STAFF_DELAY_MS)."""
    rng = random.Random(seed)
    profiles = list(profiles)
    n_windows = rng.randint(*windows)
    plans = draw_hall(rng, "vhall", n_windows, profiles, start_day, doses=doses,
                      variation=variation, days=days, delay_ms=delay_ms)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(Path(tmp)))
        settings = DetectionSettings.from_config(cfg)
        hall = VirtualHall(cfg, plans, seed=rng.randrange(2**31), honest_drift=honest_drift)
        outcomes = {p.window: WindowOutcome(seed, p.window, p.profile, p.excellent,
                                            p.start_day, days, dose=family_dose(p),
                                            variant=family_variant(p),
                                            traits=sorted(p.traits)) for p in plans}
        local_days = [hall.business_day(i) for i in range(days)]
        profile_start = {p.window: hall.local_ms(local_days[min(start_day, days - 1)], "08:30")
                         for p in plans}
        for index in range(days):
            hall.schedule_day(index)
            _day_start, day_end = hall.day_bounds(index)
            first = hall.local_ms(local_days[index], "08:30")
            checks = 0

            def check(now: int, index: int = index) -> None:
                nonlocal checks
                checks += 1
                verdicts = run_detection(hall.conn, settings, now, write_points=False,
                                         per_staff=False)
                # The integrity points are what production writes; here they only pile up.
                discard_points(hall.conn)
                for v in verdicts:
                    if v.staff is not None or not v.flagged:
                        continue
                    o = outcomes[v.window]
                    if index not in o.flagged_days:
                        o.flagged_days.append(index)
                    manipulated = o.profile != "honest" and index >= o.start_day
                    if manipulated and o.first_flag_hours is None:
                        o.first_flag_hours = _business_hours(
                            settings, profile_start[v.window], now, local_days)
                        o.first_flag_day = index - o.start_day + 1
                        o.first_reasons = list(v.reasons_en)
                    elif not manipulated and not o.honest_flag_reasons:
                        o.honest_flag_reasons = [f"day {index} {v.period}: {r}"
                                                 for r in v.reasons_en]

            last_check = hall.local_ms(local_days[index], "19:00")
            hall.run_until(last_check, check, every_min * 60_000, first)
            hall.run_until(day_end - 1)
            discard_points(hall.conn)
        for (window, day), counts in hall.truth.items():
            outcomes[window].truth[day] = dict(counts)
        hall.close()
    return list(outcomes.values())


def _assign(runs: int, per_run: int, chosen: list[str]) -> list[list[str]]:
    """Profiles per run, round-robin, so every profile gets the same number of windows."""
    k = 0
    out = []
    for _ in range(runs):
        out.append([chosen[(k + j) % len(chosen)] for j in range(per_run)])
        k += per_run
    return out


def evaluate(runs: int = 24, days: int = 5, start_day: int = 3, per_run: int = 3,
             workers: int = 2, seed: int = 1, every_min: int = 30,
             profiles: list[str] | None = None,
             honest_drift: bool = False, variation: bool = False) -> list[WindowOutcome]:
    chosen = list(profiles or PROFILES)
    assignments = _assign(runs, min(per_run, len(chosen)), chosen)
    seeds = [seed * 100_003 + i for i in range(runs)]
    args = [(s, days, start_day, a, every_min, None, honest_drift, {"variation": variation})
            for s, a in zip(seeds, assignments, strict=True)]
    if workers <= 1:
        results = [_run_star(a) for a in args]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_run_star, args))
    return [o for r in results for o in r]


def _run_star(args: tuple) -> list[WindowOutcome]:
    *pos, kw = args
    return run_once(*pos, **kw)


def format_report(outcomes: list[WindowOutcome], within_days: int = 2,
                  elapsed_s: float | None = None) -> str:
    lines = []
    by_profile: dict[str, list[WindowOutcome]] = {}
    for o in outcomes:
        if o.profile != "honest":
            by_profile.setdefault(o.profile, []).append(o)
    lines.append(f"{'profile':<22}{'windows':>8}{'detected':>10}"
                 f"{'<=' + str(within_days) + 'd':>9}{'median h':>10}{'max h':>8}{'acted':>7}"
                 f"{'<=' + str(within_days) + 'd|acted':>12}"
                 "   first reason (example)")
    for profile in sorted(by_profile):
        group = by_profile[profile]
        detected = [o for o in group if o.first_flag_hours is not None]
        in_time = [o for o in detected if o.first_flag_day is not None
                   and o.first_flag_day <= within_days]
        hours = [o.first_flag_hours for o in detected if o.first_flag_hours is not None]
        example = detected[0].first_reasons[0] if detected and detected[0].first_reasons else "-"
        acted = [o for o in group if o.acted(within_days)]
        acted_in_time = [o for o in in_time if o.acted(within_days)]
        lines.append(
            f"{profile:<22}{len(group):>8}{len(detected) / len(group):>10.0%}"
            f"{len(in_time) / len(group):>9.0%}"
            f"{statistics.median(hours) if hours else float('nan'):>10.1f}"
            f"{max(hours) if hours else float('nan'):>8.1f}"
            f"{len(acted) / len(group):>7.0%}"
            f"{len(acted_in_time) / max(len(acted), 1):>12.0%}   {example[:90]}"
        )
    # Honest window-days: honest windows, and manipulated ones before their profile started.
    honest_days = flagged = exc_days = exc_flagged = 0
    examples: list[str] = []
    for o in outcomes:
        honest_range = range(o.days) if o.profile == "honest" else range(min(o.start_day, o.days))
        for d in honest_range:
            honest_days += 1
            hit = d in o.flagged_days
            flagged += hit
            if o.excellent:
                exc_days += 1
                exc_flagged += hit
        if o.honest_flag_reasons and len(examples) < 5:
            examples.append(f"  run {o.run} {o.window} ({o.profile}"
                            f"{', excellent' if o.excellent else ''}): {o.honest_flag_reasons[0]}")
    lines.append("")
    lines.append(f"honest window-days falsely flagged: {flagged}/{honest_days} "
                 f"= {flagged / max(honest_days, 1):.2%}   (of them excellent windows: "
                 f"{exc_flagged}/{exc_days} = {exc_flagged / max(exc_days, 1):.2%})")
    if examples:
        lines.append("examples of false flags:")
        lines += examples
    lines.append(f"acted: windows whose profile did anything within {within_days} days (the "
                 "simulator's ground truth: a window that received no 差评 had none to suppress); "
                 f"<={within_days}d|acted: of those, detected in time")
    runs = len({o.run for o in outcomes})
    lines.append(f"{runs} simulated halls, {len(outcomes)} windows"
                 + (f", {elapsed_s:.0f} s" if elapsed_s is not None else ""))
    return "\n".join(lines)


def main_evaluate(runs: int, days: int, start_day: int, per_run: int, workers: int, seed: int,
                  every_min: int, profiles: list[str] | None, honest_drift: bool = False,
                  variation: bool = False) -> str:
    t0 = time.monotonic()
    outcomes = evaluate(runs, days, start_day, per_run, workers, seed, every_min, profiles,
                        honest_drift, variation)
    return format_report(outcomes, days - start_day, time.monotonic() - t0)
