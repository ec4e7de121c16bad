"""`evalterm report --since`: the one user text that goes into its InfluxQL is checked first."""

from __future__ import annotations

import pytest

from collector.cli.report import report
from collector.config import load_config
from collector.errors import UsageError


@pytest.mark.parametrize("since", ["1d; DROP DATABASE evalterm", "1d OR 1=1", "", "d", "1 d",
                                   "7days"])
def test_since_that_is_not_a_duration_is_refused_before_any_query(since: str) -> None:
    # Port 9 (discard) on a reserved address: a query would fail as unreachable, not as a usage
    # error, so the check must come first.
    cfg = load_config(None, env={}).with_overrides(influx__url="http://192.0.2.1:9")
    with pytest.raises(UsageError, match="expected an InfluxQL duration"):
        report(cfg, since)


@pytest.mark.parametrize("since", ["1d", "7d", "1h30m", "90s", "2w"])
def test_durations_pass_the_check(since: str) -> None:
    from collector.cli.report import _DURATION

    assert _DURATION.fullmatch(since)
