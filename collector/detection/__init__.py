"""Integrity detection: indicators of manipulated ratings per window and staff member.

Pure core (facts -> indicators -> verdicts -> points) with one reading adapter (facts.py) and one
entry point for the service (`run_detection`). docs/detection.md explains the statistics.
"""

from collector.detection.facts import HallFacts, RatingFact, TxnFact, Unit, load_hall_facts
from collector.detection.indicators import INDICATORS, Indicator, compute_indicators
from collector.detection.run import detect_hall, flagged_windows, run_detection
from collector.detection.settings import DetectionSettings, Period
from collector.detection.verdict import Verdict, judge

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
