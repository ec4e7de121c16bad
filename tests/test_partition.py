"""Hall partitions, the pure part (collector/partition.py) and the [partitions] settings."""

from __future__ import annotations

import subprocess
import sys
import zlib

import pytest

from collector.config import ConfigError, load_config
from collector.partition import (
    SINGLETONS_LOCK,
    client_id,
    hall_filters,
    hall_of_topic,
    parse_own,
    partition_of,
    partition_users,
    wildcard_filters,
)


def test_partition_is_crc32_of_the_hall_mod_count_and_stable_across_processes() -> None:
    halls = [f"hall-{i:03d}" for i in range(200)] + ["市民中心", "h1"]
    got = {h: partition_of(h, 4) for h in halls}
    assert got == {h: zlib.crc32(h.encode()) % 4 for h in halls}
    assert set(got.values()) == {0, 1, 2, 3}  # every partition gets halls
    assert partition_of("h1", 1) == 0
    # Another interpreter (another hash seed) computes the same partitions.
    code = ("import json, sys; from collector.partition import partition_of; "
            "print(json.dumps({h: partition_of(h, 4) for h in json.load(sys.stdin)}))")
    import json
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(halls), text=True,
                         capture_output=True, check=True, env={"PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == got
    with pytest.raises(ValueError):
        partition_of("h1", 0)


def test_own_lists_and_ranges() -> None:
    assert parse_own("", 4) == (0, 1, 2, 3)
    assert parse_own("0, 1", 4) == (0, 1)
    assert parse_own("3,1-2", 4) == (1, 2, 3)
    for bad, why in (("4", "does not exist"), ("x", "not a partition"), ("3-1", "empty"),
                     ("1-", "not a partition")):
        with pytest.raises(ValueError, match=why):
            parse_own(bad, 4)


def test_client_ids_users_and_topic_filters() -> None:
    assert client_id("evalterm-collector", 3) == "evalterm-collector-p3"
    assert partition_users("c", 1) == []
    assert partition_users("c", 3) == ["c-p0", "c-p1", "c-p2"]
    assert SINGLETONS_LOCK >= 4096  # above every partition: never one of them
    assert hall_filters("P", ["h2", "h1", "h1"]) == [
        "P/dev/h1/+/+/rating", "P/dev/h1/+/+/event", "P/dev/h1/+/+/status", "P/feed/h1",
        "P/dev/h2/+/+/rating", "P/dev/h2/+/+/event", "P/dev/h2/+/+/status", "P/feed/h2"]
    assert wildcard_filters("P") == ["P/dev/+/+/+/rating", "P/dev/+/+/+/event",
                                     "P/dev/+/+/+/status", "P/feed/+"]


def test_the_hall_of_a_topic() -> None:
    assert hall_of_topic("a/b", "a/b/dev/h7/w1/kp1/cmd") == "h7"
    assert hall_of_topic("a/b", "a/b/feed/h7") == "h7"
    assert hall_of_topic("a/b", "a/c/feed/h7") is None
    assert hall_of_topic("a/b", "a/b/other/h7") is None
    assert hall_of_topic("a/b", "a/b/feed") is None


def test_partitions_config_defaults_and_problems() -> None:
    cfg = load_config(None, env={})
    assert (cfg.partitions.count, cfg.partitions.own, cfg.partitions.takeover) == (1, "", True)
    cfg = load_config(None, env={"EVALTERM_PARTITIONS__COUNT": "4",
                                 "EVALTERM_PARTITIONS__OWN": "0,1",
                                 "EVALTERM_PARTITIONS__TAKEOVER": "false"})
    assert (cfg.partitions.count, cfg.partitions.own, cfg.partitions.takeover) == (4, "0,1", False)
    with pytest.raises(ConfigError, match=r"\[partitions\] own = '5': partition 5 does not exist"):
        load_config(None, env={"EVALTERM_PARTITIONS__COUNT": "4", "EVALTERM_PARTITIONS__OWN": "5"})
    with pytest.raises(ConfigError, match=r"\[partitions\] count .*at most 4096"):
        load_config(None, env={"EVALTERM_PARTITIONS__COUNT": "5000"})
