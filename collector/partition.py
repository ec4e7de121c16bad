"""Hall partitions: which partition a hall belongs to, and what a partition's MQTT client is.

Pure functions (no I/O), used by the service (collector/service.py), `evalterm broker render`
(collector/provision/broker.py) and the tests.

* `partition_of(hall, count)`: crc32 of the hall id's UTF-8 bytes, mod `count`. Stable across
  processes, machines and Python versions (Python's `hash()` of a str is salted per process, so
  it must never be used here). A hall never moves while `count` stays the same.
* Every message of one hall (its devices' rating/event/status topics and its business-system
  feed) goes to the owner of the hall's partition: linking needs them together. Plain `$share`
  subscriptions spread messages by message, not by hall, so they are not used.
* Partition k is served by one MQTT client with a fixed id, `client_id(base, k)`; the broker binds
  client ids to user names (`use_username_as_clientid`), so that is also its broker user. A
  process that takes partition k over connects with the same id and so inherits the session and
  everything unacknowledged in it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

__all__ = ["MAX_PARTITIONS", "SINGLETONS_LOCK", "client_id", "hall_filters", "hall_of_topic",
           "parse_own", "partition_of", "partition_users", "wildcard_filters"]

# Partitions are 0 .. MAX_PARTITIONS-1 ([partitions] count at most this).
MAX_PARTITIONS = 4096
# The lock (collector/db.py `try_lock_partition`, in the same number space, above every
# partition) of the work that runs in one process of a partitioned deployment: the InfluxDB
# drainer, the detector and the manager.
SINGLETONS_LOCK = MAX_PARTITIONS

DEVICE_KINDS = ("rating", "event", "status")


def partition_of(hall: str, count: int) -> int:
    """The partition (0 .. count-1) of `hall`."""
    if count < 1:
        raise ValueError(f"partition count must be at least 1, got {count}")
    return zlib.crc32(hall.encode("utf-8")) % count


def client_id(base: str, k: int) -> str:
    """Partition k's MQTT client id (and broker user): `<base>-p<k>`."""
    return f"{base}-p{k}"


def partition_users(base: str, count: int) -> list[str]:
    """The broker users of a partitioned deployment (none when `count` is 1: the collector's
    own user serves everything)."""
    return [] if count <= 1 else [client_id(base, k) for k in range(count)]


def parse_own(text: str, count: int) -> tuple[int, ...]:
    """`[partitions] own` ("0,1", "2-3", "" for every partition) as sorted partition numbers;
    ValueError (one line) for anything else."""
    if not text.strip():
        return tuple(range(count))
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"{part!r} is not a partition number or a range like 2-3")
        first, last = int(lo), int(hi) if sep else int(lo)
        if first > last:
            raise ValueError(f"{part!r}: the range is empty")
        if last >= count:
            raise ValueError(f"partition {last} does not exist (count = {count}: 0-{count - 1})")
        out.update(range(first, last + 1))
    return tuple(sorted(out))


def wildcard_filters(prefix: str) -> list[str]:
    """The subscriptions of an unpartitioned collector: every hall."""
    return [*(f"{prefix}/dev/+/+/+/{kind}" for kind in DEVICE_KINDS), f"{prefix}/feed/+"]


def hall_filters(prefix: str, halls: Iterable[str]) -> list[str]:
    """Explicit topic filters for exactly `halls`: their device topics and their feed."""
    out: list[str] = []
    for hall in sorted(set(halls)):
        out += [f"{prefix}/dev/{hall}/+/+/{kind}" for kind in DEVICE_KINDS]
        out.append(f"{prefix}/feed/{hall}")
    return out


def hall_of_topic(prefix: str, topic: str) -> str | None:
    """The hall a topic of the protocol belongs to (`{prefix}/dev/{hall}/...`, `{prefix}/feed/
    {hall}`); None for anything else."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) >= 2 and parts[0] in ("dev", "feed") and parts[1]:
        return parts[1]
    return None
