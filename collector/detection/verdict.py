"""Combine one unit's indicators into a verdict: a severity and the reasons, strongest first.

Severity (docs/detection.md):

    0 正常 ok        nothing notable
    1 关注 notice    weak signals or supporting ones only; shown, never a flag
    2 可疑 suspect   one decisive indicator is strong evidence            -> flagged
    3 严重 serious   two or more strong decisive indicators, or one with
                     other signals pointing the same way                   -> flagged

A supporting indicator (satisfaction above peers) never raises a unit above 关注 on its own:
an honest excellent window is not accused for being excellent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .indicators import STRONG, WEAK, Indicator

__all__ = ["SEVERITY_NAMES", "Verdict", "judge"]

SEVERITY_NAMES = {0: ("正常", "ok"), 1: ("关注", "notice"), 2: ("可疑", "suspect"),
                  3: ("严重", "serious")}
FLAG_SEVERITY = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    hall: str
    window: str
    staff: str | None
    period: str
    severity: int
    reasons_zh: tuple[str, ...]
    reasons_en: tuple[str, ...]
    strong: tuple[str, ...]          # names of the strong indicators
    weak: tuple[str, ...]
    indicators: tuple[Indicator, ...]

    @property
    def flagged(self) -> bool:
        return self.severity >= FLAG_SEVERITY

    def reasons(self, language: str = "zh") -> tuple[str, ...]:
        return self.reasons_zh if language == "zh" else self.reasons_en


def judge(hall: str, window: str, staff: str | None, period: str,
          indicators: Sequence[Indicator]) -> Verdict:
    strong_decisive = [i for i in indicators if i.strength == STRONG and i.decisive]
    others = [i for i in indicators if i.strength in (STRONG, WEAK) and i not in strong_decisive]
    if len(strong_decisive) >= 2 or (strong_decisive and others):
        severity = 3
    elif strong_decisive:
        severity = 2
    elif others:
        severity = 1
    else:
        severity = 0
    # Strong first, then by how unlikely each is under honest operation.
    ordered = sorted(strong_decisive + others,
                     key=lambda i: (i.strength != STRONG, not i.decisive,
                                    i.q if i.q is not None else 0.0))
    return Verdict(
        hall, window, staff, period, severity,
        tuple(i.reason_zh for i in ordered), tuple(i.reason_en for i in ordered),
        tuple(i.name for i in indicators if i.strength == STRONG),
        tuple(i.name for i in indicators if i.strength == WEAK),
        tuple(indicators),
    )
