"""Time the detector on synthetic halls of many windows (docs/detection.md, "Performance").

    .venv/bin/python -m collector.detection.bench --windows 40 400 2000

Each window gets two business days of honest facts (transactions, linked ratings, response
times, heartbeats with key counters every 9 minutes, sign-on/off) and 200 ratings of history
(160 response times with their levels and staff members);
`detect_hall` then judges the day and the rolling period, windows and staff members, as the
service does. Only the detector is timed, not building the facts.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from datetime import date

from collector.detection.facts import (
    DeviceRecord,
    HallFacts,
    RatingFact,
    TxnFact,
    Unit,
    WindowRecord,
)
from collector.detection.run import detect_hall, restrict
from collector.detection.settings import DetectionSettings

__all__ = ["synthetic_hall", "time_hall"]

_DAY = "2026-03-03"


def _window(s: DetectionSettings, name: str, rng: random.Random, days: list[date]) -> Unit:
    per_hour = math.exp(rng.uniform(math.log(2), math.log(14)))
    bad, coverage = rng.uniform(0.01, 0.08), rng.uniform(0.65, 0.97)
    rt_median, rt_sigma = rng.uniform(2200, 6000), rng.uniform(0.35, 0.7)
    staff = (f"{name}a", f"{name}b")
    txns, ratings, wlog, dlog = [], [], [], []
    keys = [0, 0, 0, 0, 0]
    for d in days:
        presses: list[tuple[int, int]] = []
        for (a, b), who in zip(s.open_intervals(d), staff, strict=False):
            wlog += [WindowRecord(a - 60_000, "staff_signon", who),
                     WindowRecord(b + 60_000, "staff_signoff", who)]
            t = a + int(rng.expovariate(per_hour / 3600_000))
            while t < b:
                rated = rng.random() < coverage
                txns.append(TxnFact(t, "rated" if rated else "unrated", who))
                if rated:
                    u = rng.random()
                    level = (1 if u < bad / 2 else 2) if u < bad else rng.choice((3, 4, 5, 5))
                    rt = max(450, int(rt_median * math.exp(rng.gauss(0, rt_sigma))))
                    press = t + 2000 + rt
                    ratings.append(RatingFact(press, level, "wait" if level <= 2 else None,
                                              "invited", rt, "linked", None, who, t, f"d-{name}",
                                              press))
                    presses.append((press, level))
                t += int(rng.expovariate(per_hour / 3600_000))
        presses.sort()
        j = 0
        start, end = s.midnight_ms(d) + 7 * 3600_000, s.midnight_ms(d) + 19 * 3600_000
        for t in range(start, end, 540_000):
            while j < len(presses) and presses[j][0] <= t:
                keys[presses[j][1] - 1] += 1
                j += 1
            dlog.append(DeviceRecord(t, t + 200, "heartbeat",
                                     {"keys": list(keys), "uninvited": 0, "filtered": 0},
                                     f"d-{name}"))
    history = tuple(rng.choice((1, 3, 4, 5, 5, 5, 5)) for _ in range(200))
    history_rts = tuple(max(450, int(rt_median * math.exp(rng.gauss(0, rt_sigma))))
                        for _ in range(160))
    return Unit(name, None, tuple(ratings), tuple(txns), tuple(wlog), tuple(dlog), history,
                160, 200, True, history_rts,
                tuple(rng.choice((3, 4, 5, 5)) for _ in history_rts),
                tuple(staff[i % 2] for i in range(len(history_rts))))


def synthetic_hall(s: DetectionSettings, windows: int, seed: int = 1, days: int = 2
                   ) -> tuple[HallFacts, int]:
    """A hall of `windows` honest windows over the last `days` business days before the
    evaluation time (returned: after closing on the last day)."""
    from datetime import date

    last = date.fromisoformat(_DAY)
    now = s.midnight_ms(last) + 19 * 3600_000
    ds = s.business_days_back(last, days)
    rng = random.Random(seed)
    units = tuple(_window(s, f"w{i:04d}", rng, ds) for i in range(windows))
    return HallFacts("bench", units, has_feed=True, has_signons=True), now


def time_hall(s: DetectionSettings, hall: HallFacts, now: int, per_staff: bool = True) -> float:
    t0 = time.perf_counter()
    for period in s.periods(now):
        detect_hall(restrict(hall, period.start_ms), period, s, per_staff=per_staff)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[40, 400, 2000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--windows-only", action="store_true", help="skip per-staff verdicts")
    args = ap.parse_args(argv)
    s = DetectionSettings.defaults()
    print(f"{'windows':>8}{'ratings':>9}{'detect s':>10}{'ms/window':>11}")
    for n in args.windows:
        hall, now = synthetic_hall(s, n, args.seed)
        ratings = sum(len(u.ratings) for u in hall.units)
        elapsed = time_hall(s, hall, now, per_staff=not args.windows_only)
        print(f"{n:>8}{ratings:>9}{elapsed:>10.2f}{1000 * elapsed / n:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
