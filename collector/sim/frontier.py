"""`evalterm detect frontier`: detection probability of each manipulation family as a function of
its dose, within 1 and 2 business days, and the honest false-flag rate.

For each family (collector.sim.profiles.FAMILIES) and each dose of its grid, `runs` simulated halls
each carry `per_run` windows of that family at that dose (cooperation: one group of 2-3 windows)
and honest windows with the honest variation on (profiles.HONEST_TRAITS), through the real
pipeline and the real detector (collector.sim.evaluate.run_once). A window counts as detected
within k days when the detector flagged it before the end of its k-th manipulated business day.
Honest window-days: every day of the honest windows, and the manipulated windows' days before
their family started.

Cheap by design: a few halls per dose, small halls, 4 business days, the detector every hour;
at most 2 processes.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.errors import UsageError
from collector.sim.evaluate import WindowOutcome, run_once
from collector.sim.profiles import FAMILIES

__all__ = ["FrontierPoint", "format_frontier", "frontier", "plot_frontier"]


@dataclass
class FrontierPoint:
    family: str
    dose: float
    windows: int
    acted: int
    day1: int  # detected within 1 manipulated business day
    day2: int  # within 2
    variants: dict[str, tuple[int, int]]  # variant -> (windows, detected within 2 days)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _job(args: tuple[Any, ...]) -> tuple[str, float, list[WindowOutcome]]:
    family, dose, seed, days, start_day, per_run, every, windows, delay_ms = args
    profiles = [family] if family == "cooperation" else [family] * per_run
    out = run_once(seed, days, start_day, profiles, every, None, False, doses={family: dose},
                   variation=True, windows=windows, delay_ms=delay_ms)
    return family, dose, out


def frontier(families: list[str] | None = None, runs: int = 2, days: int = 4,
             start_day: int = 2, per_run: int = 3, windows: tuple[int, int] = (6, 8),
             every_min: int = 60, workers: int = 2, seed: int = 1,
             doses: dict[str, tuple[float, ...]] | None = None,
             delay_s: tuple[float, float] | None = None,
             ) -> tuple[list[FrontierPoint], list[WindowOutcome]]:
    """The frontier points of each family, and every window's outcome (for the false flags);
    `delay_s`: the range of the staff's typical delay (s) instead of each family's own."""
    fams = list(families or FAMILIES)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise UsageError(f"--family {', '.join(unknown)}: not a family; families: "
                         f"{', '.join(FAMILIES)}")
    if days - start_day < 2 or start_day < 1:
        raise UsageError("--days must leave 2 manipulated days after --start-day (>= 1): "
                         "e.g. --days 4 --start-day 2")
    delay_ms = None
    if delay_s is not None:
        lo, hi = delay_s
        if not 0.5 <= lo <= hi <= 120:
            raise UsageError("--delay-s: LO-HI in seconds, 0.5 <= LO <= HI <= 120 (the "
                             "invitation's lifetime), e.g. --delay-s 15-60")
        delay_ms = (lo * 1000, hi * 1000)
    if not 1 <= workers <= 2:
        raise UsageError("--workers: 1 or 2 (the machine is shared)")
    jobs = []
    for fi, fam in enumerate(fams):
        for di, dose in enumerate((doses or {}).get(fam) or FAMILIES[fam].grid):
            for r in range(runs):
                jobs.append((fam, float(dose), seed * 1_000_003 + fi * 10_007 + di * 101 + r,
                             days, start_day, per_run, every_min, windows, delay_ms))
    if workers == 1:
        results = [_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_job, jobs))
    points: dict[tuple[str, float], FrontierPoint] = {}
    everything: list[WindowOutcome] = []
    for fam, dose, outs in results:
        everything += outs
        pt = points.setdefault((fam, dose), FrontierPoint(fam, dose, 0, 0, 0, 0, {}))
        for o in outs:
            if o.profile != fam:
                continue
            pt.windows += 1
            pt.acted += o.acted(2)
            d1 = o.first_flag_day is not None and o.first_flag_day <= 1
            d2 = o.first_flag_day is not None and o.first_flag_day <= 2
            pt.day1 += d1
            pt.day2 += d2
            n, k = pt.variants.get(o.variant, (0, 0))
            pt.variants[o.variant] = (n + 1, k + d2)
    return sorted(points.values(), key=lambda p: (fams.index(p.family), p.dose)), everything


def honest_rate(outcomes: list[WindowOutcome]) -> tuple[int, int, int, int]:
    """(honest window-days flagged, honest window-days, the same for excellent windows)."""
    flagged = total = exc_f = exc_t = 0
    for o in outcomes:
        span = range(o.days) if o.profile == "honest" else range(min(o.start_day, o.days))
        for d in span:
            hit = d in o.flagged_days
            total += 1
            flagged += hit
            if o.excellent:
                exc_t += 1
                exc_f += hit
    return flagged, total, exc_f, exc_t


def format_frontier(points: list[FrontierPoint], outcomes: list[WindowOutcome],
                    elapsed_s: float | None = None) -> str:
    lines = [f"{'family':<13}{'dose':>6}  {'windows':>7}{'acted':>7}{'<=1d':>7}{'<=2d':>7}"
             f"  {'<=2d 95% CI':<13} dose is"]
    for p in points:
        lo, hi = _wilson(p.day2, p.windows)
        lines.append(f"{p.family:<13}{p.dose:>6.2f}  {p.windows:>7}"
                     f"{p.acted / max(p.windows, 1):>7.0%}{p.day1 / max(p.windows, 1):>7.0%}"
                     f"{p.day2 / max(p.windows, 1):>7.0%}  {lo:>4.0%}-{hi:<7.0%}"
                     f"  {FAMILIES[p.family].dose}")
    by_variant: dict[tuple[str, str], list[int]] = {}
    for o in outcomes:
        if o.variant and o.profile in {p.family for p in points}:
            v = by_variant.setdefault((o.profile, o.variant), [0, 0, 0, 0])
            d2 = o.first_flag_day is not None and o.first_flag_day <= 2
            v[0] += 1
            v[1] += d2
            v[2] += o.acted(2)
            v[3] += d2 and o.acted(2)
    if by_variant:
        lines.append("")
        lines.append("by variant, all doses (<=2d of windows; of the windows that acted):")
        lines += [f"  {fam:<13}{var:<36}{v[1]:>3}/{v[0]:<3}  acted {v[3]:>3}/{v[2]}"
                  for (fam, var), v in sorted(by_variant.items())]
    f, t, ef, et = honest_rate(outcomes)
    lines.append("")
    lines.append(f"honest window-days falsely flagged (honest variation on): {f}/{t} = "
                 f"{f / max(t, 1):.2%}   excellent windows: {ef}/{et} = {ef / max(et, 1):.2%}")
    traits: dict[str, list[int]] = {}
    for o in outcomes:
        if o.profile != "honest":
            continue
        for tr in o.traits or ["(none)"]:
            c = traits.setdefault(tr, [0, 0])
            c[0] += sum(1 for d in range(o.days) if d in o.flagged_days)
            c[1] += o.days
    lines.append("by honest trait (window-days flagged/total; a window may have several): "
                 + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(traits.items())))
    examples = [f"  run {o.run} {o.window} ({o.profile}): {o.honest_flag_reasons[0]}"
                for o in outcomes if o.honest_flag_reasons][:5]
    if examples:
        lines.append("examples of false flags:")
        lines += examples
    halls = len({o.run for o in outcomes})
    lines.append(f"{halls} simulated halls, {len(outcomes)} windows"
                 + (f", {elapsed_s:.0f} s" if elapsed_s is not None else ""))
    return "\n".join(lines)


def plot_frontier(points: list[FrontierPoint], outcomes: list[WindowOutcome],
                  out_dir: Path) -> list[Path]:
    """One PNG per family: detection within 1 and 2 days against the dose (95 % Wilson band
    for 2 days), per variant where the family has several, and the honest false-flag rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    f, t, _, _ = honest_rate(outcomes)
    files = []
    for fam in dict.fromkeys(p.family for p in points):
        pts = [p for p in points if p.family == fam]
        x = [p.dose for p in pts]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(x, [p.day1 / max(p.windows, 1) for p in pts], "o-", label="within 1 day")
        ax.plot(x, [p.day2 / max(p.windows, 1) for p in pts], "s-", label="within 2 days")
        band = [_wilson(p.day2, p.windows) for p in pts]
        ax.fill_between(x, [b[0] for b in band], [b[1] for b in band], alpha=0.15,
                        label="2 days, 95 % interval")
        variants = sorted({v for p in pts for v in p.variants if v})
        for v in variants if len(variants) > 1 else []:
            ys = [p.variants[v][1] / p.variants[v][0] if v in p.variants else math.nan
                  for p in pts]
            n = sum(p.variants[v][0] for p in pts if v in p.variants)
            ax.plot(x, ys, ":", marker=".", label=f"2 days: {v} ({n} windows in all)")
        ax.axhline(0.95, color="grey", lw=0.8, ls="--", label="target 95 %")
        ax.set_ylim(-0.03, 1.03)
        # The plots' font has no CJK glyphs: the labels are in English.
        ax.set_xlabel(FAMILIES[fam].dose.replace("差评", "bad rating"))
        ax.set_ylabel("windows flagged")
        ax.set_title(f"{fam}: {sum(p.windows for p in pts)} windows; honest false flags "
                     f"{f}/{t} window-days", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out_dir / f"frontier_{fam}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files


def main_frontier(families: list[str] | None, runs: int, days: int, start_day: int,
                  per_run: int, windows: tuple[int, int], every_min: int, workers: int,
                  seed: int, plot_dir: str | None,
                  delay_s: tuple[float, float] | None = None) -> str:
    t0 = time.monotonic()
    points, outcomes = frontier(families, runs, days, start_day, per_run, windows, every_min,
                                workers, seed, delay_s=delay_s)
    text = format_frontier(points, outcomes, time.monotonic() - t0)
    if delay_s is not None:
        text += (f"\nthe staff's typical delay: {delay_s[0]:g}-{delay_s[1]:g} s after the "
                 "invitation (log-uniform; fill_in, drip, cooperation)")
    if plot_dir:
        files = plot_frontier(points, outcomes, Path(plot_dir))
        text += "\n" + "\n".join(f"wrote {p}" for p in files)
    return text
