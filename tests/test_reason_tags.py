"""The firmware keeps its own reason tags (it cannot import the collector): they must be the
collector's. CPython only (this imports both), so not in tests/firmware/, whose modules also run
under MicroPython."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import etfw.config as cfgmod


def test_reason_tags_agree_with_the_collector():
    """The firmware keeps its own reason tags (it cannot import the collector): they must be
    the collector's (collector/reasons.py), the protocol schema's, in the same default order."""
    import inspect
    from importlib import resources

    import etfw.indicators as fwind
    from etfw.terminal import Terminal

    from collector.reasons import DEFAULT_REASON_KEYS, REASON_LABELS, REASON_TAGS, TIMEOUT_TAG

    assert (*cfgmod.REASONS, TIMEOUT_TAG) == REASON_TAGS
    assert tuple(fwind.REASONS) == tuple(cfgmod.REASONS)
    assert tuple(cfgmod.DEFAULTS["reason_keys"]) == DEFAULT_REASON_KEYS
    default = inspect.signature(Terminal.__init__).parameters["reason_keys"].default
    assert tuple(default) == DEFAULT_REASON_KEYS
    schema = json.loads(resources.files("collector").joinpath("schemas/v1/rating.json")
                        .read_text("utf-8"))
    assert schema["properties"]["reason"]["enum"] == [*REASON_TAGS, None]
    assert set(REASON_LABELS) == set(REASON_TAGS)
