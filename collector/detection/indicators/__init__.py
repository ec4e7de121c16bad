"""Integrity indicators: facts of a hall in, one `Indicator` per unit and indicator out.

Each indicator compares a unit (a window, or one staff member) with its peers (the other units
of the same hall and scope) over one period, yields a statistic, a p-value where one makes sense,
the evidence behind it, and a human-readable reason in Chinese and English. p-values of one
indicator are adjusted across the hall's units with Benjamini-Hochberg; an indicator is `strong`
when its q-value is below `q_strong` AND its effect-size guard holds (a minimum count, a minimum
gap), `weak` below `q_weak`. Some indicators are deterministic (key counters, offline time) and
set their strength directly. docs/detection.md documents every statistic and why it was chosen.

`decisive` indicators may flag a window on their own when strong; the others (satisfaction above
peers) only support a flag raised by something else, so an honest excellent window is never
accused for being excellent.
"""

from __future__ import annotations

from collections.abc import Sequence

import collector.detection.stats as stats
from collector.detection.facts import HallFacts, Unit
from collector.detection.indicators.base import NONE, STRONG, WEAK, Indicator, _Ctx, _Fn, _Raw
from collector.detection.indicators.excess import _unmatched
from collector.detection.indicators.keys import _key_counters, _uninvited
from collector.detection.indicators.offline import _interrupted, _offline
from collector.detection.indicators.outcomes import (
    _coverage_up,
    _duration_selection,
    _missing_negatives,
    _satisfaction_high,
    _selective,
)
from collector.detection.indicators.service import _out_of_service
from collector.detection.indicators.tamper import _tamper
from collector.detection.indicators.timeline import _after_next_start
from collector.detection.indicators.timing import (
    _burst,
    _fast,
    _late_response,
    _regular,
    _response_shift,
)
from collector.detection.settings import DetectionSettings, Period

__all__ = ["INDICATORS", "NONE", "STRONG", "WEAK", "Indicator", "compute_indicators"]

# The indicators live one module per kind of evidence: excess (ratings matching no
# transaction), service (ratings out of service), keys (key counters and stray presses), timing
# (response times, bursts), timeline (ratings against the business system's timeline),
# outcomes (negatives, satisfaction, coverage, coverage by service duration), offline (device
# reachability, state changes after 差评), tamper (the hardware's own reports).
# A new indicator is a function (Unit, _Ctx) -> _Raw | None in the module of its kind, added
# to this table, with a fire and a no-fire test.

# -- the table ---------------------------------------------------------------------------------

# name -> (function, decisive)
INDICATORS: dict[str, tuple[_Fn, bool]] = {
    "unmatched": (_unmatched, True),
    "out_of_service": (_out_of_service, True),
    "uninvited_presses": (_uninvited, True),
    "key_counters": (_key_counters, True),
    "fast_response": (_fast, True),
    "regular_response": (_regular, True),
    "response_shift": (_response_shift, True),
    "late_response": (_late_response, True),
    "after_next_start": (_after_next_start, True),
    "burst": (_burst, True),
    "missing_negatives": (_missing_negatives, True),
    "satisfaction_high": (_satisfaction_high, False),
    "selective_invitation": (_selective, True),
    "coverage_up": (_coverage_up, True),
    "duration_selection": (_duration_selection, True),
    "device_offline": (_offline, True),
    "device_interrupted": (_interrupted, True),
    "tamper": (_tamper, True),
}


def compute_indicators(hall: HallFacts, units: Sequence[Unit], period: Period,
                       settings: DetectionSettings) -> dict[str, list[Indicator]]:
    """Every indicator for every unit (keyed by `Unit.label`), peers being the other units."""
    ctx = _Ctx(settings, period, hall, tuple(units))
    out: dict[str, list[Indicator]] = {u.label: [] for u in units}
    for name, (fn, decisive) in INDICATORS.items():
        raws: dict[str, _Raw] = {}
        for u in units:
            raw = fn(u, ctx)
            if raw is not None:
                raws[u.label] = raw
        tested = [(label, r.p) for label, r in raws.items()
                  if r.p is not None and r.strength is None]
        qs = dict(zip([label for label, _ in tested],
                      stats.benjamini_hochberg([p for _, p in tested]), strict=True))
        for label, r in raws.items():
            q = qs.get(label)
            if r.strength is not None:
                strength = r.strength
            elif q is not None and q < settings.q_strong and r.guard:
                strength = STRONG
            elif q is not None and q < settings.q_weak:
                strength = WEAK
            else:
                strength = NONE
            # A reason is kept for weak evidence, and for a p-value that may join others of
            # independent kinds in the verdict (verdict.combine).
            keep = strength != NONE or (r.p is not None and r.p <= settings.q_weak)
            zh, en = r.reason if keep else ("", "")
            out[label].append(Indicator(name, float(r.value), strength, decisive, r.p, q,
                                        r.evidence, zh, en, r.events,
                                        tuple(r.items) if keep else ()))
    return out
