"""Combine one unit's indicators into a verdict: a severity and the reasons, strongest first.

Severity (docs/detection.md):

    0 正常 ok        nothing notable
    1 关注 notice    weak signals or supporting ones only; shown, never a flag
    2 可疑 suspect   one decisive indicator is strong evidence, or weak     -> flagged
                     signals of independent kinds that are strong together
    3 严重 serious   two or more strong decisive indicators, or one with
                     other signals pointing the same way                   -> flagged

Weak signals combined: the decisive indicators fall into groups whose data are independent of
each other's under honest operation (`GROUPS`: response times; key presses outside an
invitation; levels and coverage; ratings against transactions and the service state). Each
group's p-value is its smallest indicator p-value times the number of its indicators
(Bonferroni); the groups' p-values are combined by the truncated product method (Zaykin 2002,
`stats.truncated_product_p`, tau = q_weak), and only when at least two groups are at or below
tau. An indicator joins only when its evidence rests on at least `min_count` observations
(`Indicator.events`, `[detection] combine_min_count`): the p-value of a single event is the
assumed base rate itself, P(X >= 1) = E[theta] whatever the spread of honest windows, so two
accidents at a quiet window early in the day would otherwise add up to "strong". The combined
p-values are adjusted across the hall's units (Benjamini-Hochberg) like an indicator's, and are
strong evidence below q_strong (`detect_hall`). Satisfaction above peers
is not in any group (it measures excellence, not manipulation), nor are the burst scan (its
p-value is approximate for small counts), the state changes after 差评 (a binomial against a
floored rate: strong on its own or not at all) and the deterministic indicators.

A supporting indicator (satisfaction above peers) never raises a unit above 关注 on its own:
an honest excellent window is not accused for being excellent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import collector.detection.stats as stats
from collector.detection.indicators import STRONG, WEAK, Indicator

__all__ = ["GROUPS", "SEVERITY_NAMES", "Combined", "Verdict", "combine", "judge"]

SEVERITY_NAMES = {0: ("正常", "ok"), 1: ("关注", "notice"), 2: ("可疑", "suspect"),
                  3: ("严重", "serious")}
FLAG_SEVERITY = 2

# Groups of decisive indicators whose data do not overlap (see the module docstring).
GROUPS: dict[str, tuple[str, ...]] = {
    "timing": ("fast_response", "regular_response", "response_shift", "late_response"),
    "keys": ("uninvited_presses",),
    "levels": ("missing_negatives", "selective_invitation", "coverage_up", "duration_selection"),
    "linking": ("unmatched", "out_of_service", "after_next_start"),
}


@dataclass(frozen=True, slots=True)
class Combined:
    """Weak signals of independent kinds, combined: p before and q after the hall's
    adjustment, whether that is strong evidence, and the indicators that agree (the most
    significant of each group at or below tau)."""

    p: float
    q: float
    strong: bool
    agreeing: tuple[Indicator, ...]


def combine(indicators: Sequence[Indicator], tau: float, min_count: int = 1
            ) -> tuple[float, tuple[Indicator, ...]]:
    """The combined p-value of a unit's groups (1.0 unless two or more groups are at or below
    tau) and the agreeing indicators. An indicator resting on fewer than `min_count`
    observations counts as p = 1 (still in its group's Bonferroni factor and the number of
    groups): leaving it out can only raise the combined p-value."""
    group_ps: list[float] = []
    agreeing: list[Indicator] = []
    for names in GROUPS.values():
        with_p = [i for i in indicators if i.name in names and i.p is not None]
        if not with_p:
            continue
        enough = [i for i in with_p if i.events is None or i.events >= min_count]
        if not enough:
            group_ps.append(1.0)
            continue
        best = min(enough, key=lambda i: i.p)  # type: ignore[arg-type, return-value]
        p = min(1.0, best.p * len(with_p))  # type: ignore[operator]
        group_ps.append(p)
        if p <= tau:
            agreeing.append(best)
    if len(agreeing) < 2:
        return 1.0, ()
    return stats.truncated_product_p(group_ps, tau), tuple(agreeing)


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
    combined: Combined | None = None

    @property
    def flagged(self) -> bool:
        return self.severity >= FLAG_SEVERITY

    def reasons(self, language: str = "zh") -> tuple[str, ...]:
        return self.reasons_zh if language == "zh" else self.reasons_en

    def evidence(self) -> list[tuple[str, dict[str, Any]]]:
        """(indicator, observation) behind the verdict: the items of every indicator its reasons
        name (strong, weak, or agreeing in the combination), strongest first, each observation
        once per indicator."""
        named = set(self.strong) | set(self.weak)
        if self.combined is not None and self.combined.strong:
            named |= {i.name for i in self.combined.agreeing}
        ordered = sorted((i for i in self.indicators if i.name in named and i.items),
                         key=lambda i: (i.strength != STRONG, not i.decisive,
                                        i.q if i.q is not None else 0.0))
        return [(i.name, x) for i in ordered for x in i.items]


def judge(hall: str, window: str, staff: str | None, period: str,
          indicators: Sequence[Indicator], combined: Combined | None = None) -> Verdict:
    strong_decisive = [i for i in indicators if i.strength == STRONG and i.decisive]
    others = [i for i in indicators if i.strength in (STRONG, WEAK) and i not in strong_decisive]
    together = combined is not None and combined.strong
    if together:
        # The agreeing weak signals are one piece of strong evidence, not "other signals".
        assert combined is not None
        joined = [i for i in combined.agreeing if i not in strong_decisive]
        others = [i for i in others if i not in joined]
    evidence = len(strong_decisive) + together
    if evidence >= 2 or (evidence and others):
        severity = 3
    elif evidence:
        severity = 2
    elif others:
        severity = 1
    else:
        severity = 0
    # Strong first, then by how unlikely each is under honest operation.
    ordered = sorted(strong_decisive + others,
                     key=lambda i: (i.strength != STRONG, not i.decisive,
                                    i.q if i.q is not None else 0.0))
    zh = [i.reason_zh for i in ordered]
    en = [i.reason_en for i in ordered]
    if together:
        assert combined is not None
        names_zh = "、".join(GROUP_NAMES[_group(i.name)][0] for i in joined)
        names_en = ", ".join(GROUP_NAMES[_group(i.name)][1] for i in joined)
        at = len(strong_decisive)
        zh[at:at] = [f"{len(joined)} 类相互独立的迹象同时出现（{names_zh}），合计偶然出现的概率约 "
                     f"{combined.p:.1g}："
                     + "；".join(i.reason_zh for i in joined)]
        en[at:at] = [f"{len(joined)} independent kinds of signal agree ({names_en}); together "
                     f"their chance under honest operation is about {combined.p:.1g}: "
                     + "; ".join(i.reason_en for i in joined)]
    return Verdict(
        hall, window, staff, period, severity, tuple(zh), tuple(en),
        tuple(i.name for i in indicators if i.strength == STRONG),
        tuple(i.name for i in indicators if i.strength == WEAK),
        tuple(indicators), combined,
    )


GROUP_NAMES = {"timing": ("响应时间", "response times"),
               "keys": ("邀请外按键", "presses outside an invitation"),
               "levels": ("评价等级与参评率", "levels and coverage"),
               "linking": ("评价与办件、服务状态不符", "ratings against transactions and service")}


def _group(name: str) -> str:
    return next(g for g, names in GROUPS.items() if name in names)
