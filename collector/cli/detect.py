"""`evalterm detect ...` subcommands (integrity detection, docs/detection.md).

    evalterm detect run        judge every window now (or --at a time) from the state database
    evalterm detect simulate   fill the state database with simulated business days, with
                               manipulation profiles, in simulated time (no broker needed)
    evalterm detect evaluate   many simulated halls through the real pipeline: detection rate,
                               time to first flag, false flags of honest windows
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from collector.clock import now_ms
from collector.errors import UsageError

__all__ = ["add_parsers"]


def _at_ms(text: str | None) -> int:
    if not text:
        return now_ms()
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise UsageError(f"--at {text!r}: give a UTC offset, e.g. 2026-03-02T17:45:00+08:00")
    return int(dt.timestamp() * 1000)


def cmd_run(args: argparse.Namespace) -> int:
    from collector.cli.common import load as _config
    from collector.db import connect
    from collector.detection import run_detection

    cfg = _config(args)
    conn = connect(cfg.state_target)
    verdicts = run_detection(conn, cfg, _at_ms(args.at), write_points=not args.dry_run,
                             per_staff=not args.windows_only)
    lang = args.lang or cfg.detection.language
    shown = [v for v in verdicts if args.all or v.severity > 0]
    if args.json:
        print(json.dumps([{
            "hall": v.hall, "window": v.window, "staff": v.staff, "period": v.period,
            "severity": v.severity, "flagged": v.flagged, "reasons": list(v.reasons(lang)),
            "indicators": {i.name: {"value": i.value, "strength": i.strength, "p": i.p, "q": i.q,
                                    "evidence": i.evidence} for i in v.indicators},
        } for v in shown], ensure_ascii=False, indent=2))
        return 0
    from collector.detection.verdict import SEVERITY_NAMES

    for v in sorted(shown, key=lambda v: (-v.severity, v.hall, v.window, v.staff or "", v.period)):
        who = v.window if v.staff is None else f"{v.window}/{v.staff}"
        name = SEVERITY_NAMES[v.severity][0 if lang == "zh" else 1]
        print(f"{v.hall}/{who} [{v.period}] {name} ({v.severity})")
        for r in v.reasons(lang):
            print(f"    - {r}")
    flagged = sum(1 for v in verdicts if v.flagged and v.staff is None)
    print(f"{len(verdicts)} verdicts, {flagged} window verdict(s) flagged"
          + ("" if args.dry_run else "; integrity points queued for InfluxDB"))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import random

    from collector.cli.common import load as _config
    from collector.detection import run_detection
    from collector.sim.hall import VirtualHall
    from collector.sim.profiles import draw_hall

    cfg = _config(args)
    rng = random.Random(args.seed)
    profiles = list(args.profile or [])
    plans = draw_hall(rng, args.hall, args.windows, profiles, args.start_day)
    hall = VirtualHall(cfg, plans, hall=args.hall, seed=rng.randrange(2**31))
    for index in range(args.days):
        hall.schedule_day(index)
        hall.run_until(hall.day_bounds(index)[1] - 1)
        close = hall.local_ms(hall.business_day(index), "19:00")
        flagged = [v for v in run_detection(hall.conn, cfg, close, per_staff=True)
                   if v.flagged and v.staff is None]
        print(f"day {index} ({hall.business_day(index)}): "
              + (", ".join(sorted({f'{v.window}' for v in flagged})) or "no window flagged"))
    for p in plans:
        kind = p.profile + (" (excellent)" if p.excellent else "")
        print(f"  {p.window}: {kind}, {p.txn_per_hour:.1f} transactions/h, "
              f"true 差评 rate {p.levels[0] + p.levels[1]:.1%}")
    print(f"state database {cfg.state_db}; `evalterm detect run --at ...` shows the reasons")
    hall.close()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from collector.sim.evaluate import main_evaluate

    print(main_evaluate(args.runs, args.days, args.start_day, args.per_run, args.workers,
                        args.seed, args.every, args.profile, args.honest_drift,
                        args.honest_variation))
    return 0


def _delay_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LO-HI in seconds, e.g. 15-60") from None
    return lo, hi


def cmd_frontier(args: argparse.Namespace) -> int:
    from collector.sim.frontier import main_frontier

    print(main_frontier(args.family, args.runs, args.days, args.start_day, args.per_run,
                        (args.windows_min, args.windows_max), args.every, args.workers,
                        args.seed, None if args.no_plots else args.plots, args.delay_s))
    return 0


def add_parsers(sub: Any) -> None:
    """Register the `detect` command group on the main parser's subparsers."""
    from collector.sim.profiles import PROFILES

    det = sub.add_parser("detect", help="integrity indicators and manipulation flags")
    det_sub = det.add_subparsers(dest="detect_command", required=True)

    run = det_sub.add_parser("run", help="judge every window and staff member from the state DB")
    run.add_argument("--at", help="evaluation time, ISO 8601 with offset (default: now)")
    run.add_argument("--dry-run", action="store_true", help="do not queue integrity points")
    run.add_argument("--windows-only", action="store_true", help="skip per-staff verdicts")
    run.add_argument("--all", action="store_true", help="also show verdicts with nothing notable")
    run.add_argument("--json", action="store_true")
    run.add_argument("--lang", choices=("zh", "en"), help="language of the reasons")
    run.set_defaults(func=cmd_run)

    sim = det_sub.add_parser(
        "simulate", help="simulated business days with manipulation profiles into the state DB")
    sim.add_argument("--hall", default="hall01")
    sim.add_argument("--windows", type=int, default=10)
    sim.add_argument("--days", type=int, default=5)
    sim.add_argument("--start-day", type=int, default=3,
                     help="first business day (0-based) the profiles are active")
    sim.add_argument("--profile", action="append", choices=PROFILES,
                     help="a manipulated window with this profile (repeatable)")
    sim.add_argument("--seed", type=int, default=1)
    sim.set_defaults(func=cmd_simulate)

    ev = det_sub.add_parser("evaluate", help="detection rate and false flags on simulated halls")
    ev.add_argument("--runs", type=int, default=24, help="simulated halls (default 24)")
    ev.add_argument("--days", type=int, default=5, help="business days per hall")
    ev.add_argument("--start-day", type=int, default=3,
                    help="first manipulated business day (0-based); earlier days are honest")
    ev.add_argument("--per-run", type=int, default=3, help="manipulated windows per hall")
    ev.add_argument("--workers", type=int, default=2, help="processes")
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--every", type=int, default=30, help="minutes between detector runs")
    ev.add_argument("--profile", action="append", choices=PROFILES,
                    help="evaluate only these profiles (repeatable)")
    ev.add_argument("--honest-drift", action="store_true",
                    help="honest windows vary by staff member and by day (response times, "
                         "coverage, satisfaction): a harder test of false flags")
    ev.add_argument("--honest-variation", action="store_true",
                    help="honest windows get the honest traits (bad and rush days, tiny volume, "
                         "new staff, lunch rotations, Wi-Fi drops, lingering citizens, far "
                         "keypads, batch closes; collector.sim.profiles.HONEST_TRAITS)")
    ev.set_defaults(func=cmd_evaluate)

    from collector.sim.profiles import FAMILIES

    fr = det_sub.add_parser("frontier", help="detection probability of each manipulation family "
                            "against its dose, within 1 and 2 business days, and false flags")
    fr.add_argument("--family", action="append", choices=list(FAMILIES),
                    help="only these families (repeatable; default all)")
    fr.add_argument("--runs", type=int, default=2, help="simulated halls per dose (default 2)")
    fr.add_argument("--per-run", type=int, default=3,
                    help="manipulated windows per hall (cooperation: one group of 2-3)")
    fr.add_argument("--windows-min", type=int, default=6, help="fewest windows in a hall")
    fr.add_argument("--windows-max", type=int, default=8, help="most windows in a hall")
    fr.add_argument("--days", type=int, default=4, help="business days per hall")
    fr.add_argument("--start-day", type=int, default=2,
                    help="first manipulated business day (0-based)")
    fr.add_argument("--every", type=int, default=60, help="minutes between detector runs")
    fr.add_argument("--workers", type=int, default=2, help="processes (1 or 2)")
    fr.add_argument("--seed", type=int, default=1)
    fr.add_argument("--plots", default="docs/img", help="folder for the PNGs (docs/img)")
    fr.add_argument("--no-plots", action="store_true", help="print the table only")
    fr.add_argument("--delay-s", type=_delay_range, default=None, metavar="LO-HI",
                    help="the staff's typical delay after the invitation, seconds, drawn "
                         "log-uniformly in LO-HI, for fill_in, drip and cooperation (default: "
                         "each family's own range)")
    fr.set_defaults(func=cmd_frontier)

