"""The reason tags a citizen may choose after a 1-2 rating (差评): the one home of the list.

The protocol (collector.protocol, schemas/v1/rating.json), the simulator, the dashboards and the
detector import it from here. The firmware (firmware/etfw/config.py) keeps its own copy, since it
cannot import the collector; tests/test_protocol.py checks that the two agree.
"""

from __future__ import annotations

__all__ = ["DEFAULT_REASON_KEYS", "REASON_LABELS", "REASON_TAGS", "TIMEOUT_TAG"]

TIMEOUT_TAG = "none"
"""Sent when the reason prompt timed out without a choice."""

REASON_TAGS = ("attitude", "efficiency", "notice", "wait", "facility", "other", TIMEOUT_TAG)
"""Every tag a rating may carry (the firmware's REASONS plus the timeout tag)."""

DEFAULT_REASON_KEYS = ("attitude", "efficiency", "notice", "wait", "other")
"""The tags on keys 1-5 of the reason prompt in the firmware's default configuration."""

REASON_LABELS = {
    "attitude": ("服务态度", "attitude"), "efficiency": ("办事效率", "efficiency"),
    "notice": ("一次性告知不到位", "not told everything at once"),
    "wait": ("等候时间长", "long wait"), "facility": ("环境设施", "facilities"),
    "other": ("其他", "other"), TIMEOUT_TAG: ("未选择", "not chosen"),
}
"""(Chinese, English) text of each tag for reports and dashboards."""
