"""Integrity detection: indicators of manipulated ratings per window and staff member.

Pure core (facts -> indicators -> verdicts -> points) with one reading adapter (facts.py) and one
entry point for the service (`run_detection`). docs/detection.md explains the statistics.
"""

from .facts import HallFacts, RatingFact, TxnFact, Unit, load_hall_facts
from .indicators import INDICATORS, Indicator, compute_indicators
from .run import detect_hall, flagged_windows, run_detection
from .settings import DetectionSettings, Period
from .verdict import Verdict, judge

__all__ = [
    "INDICATORS",
    "DetectionSettings",
    "HallFacts",
    "Indicator",
    "Period",
    "RatingFact",
    "TxnFact",
    "Unit",
    "Verdict",
    "compute_indicators",
    "detect_hall",
    "flagged_windows",
    "judge",
    "load_hall_facts",
    "run_detection",
]
