"""InfluxDB 1.x retention and downsampling: how long points are kept, and the hourly rollups.

Raw points (every rating, transaction, device event) live in the database's default retention
policy, the one the collector writes to and every dashboard and report queries; its duration is
`[influx] retention_days` (0: forever). The hourly rollups live in the retention policy `rollup`
(`[influx] rollup_days`): per hour and per hall, window, staff member and service, the counts of
ratings by level, 差评 and transactions, and the devices' hourly health. They are tiny, so they
can outlive the raw points and keep the monthly and yearly figures.

InfluxDB computes the rollups of the last two hours itself, every `[influx] rollup_every_s`, by
one continuous query per rollup. A rating can reach InfluxDB days late (a device's flash outbox
after an outage, the collector's outbox after an InfluxDB outage): `evalterm influx rollup
--days N` recomputes older hours with the very same query (`rollup_query`), which overwrites
the hour's rollup points (same series, same time), so running it twice changes nothing.

The statements are built here from the configuration alone (`plan`); `apply` compares them with
what InfluxDB has and runs only the differences, so it is safe at every start of the drainer.
2.x/3.x buckets have a retention of their own and no continuous queries: not handled here.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from collector.config import Config
from collector.influx import influxql

__all__ = ["ROLLUPS", "ROLLUP_RP", "Rollup", "apply", "cq_name", "cq_statement",
           "default_rp", "rollup", "rollup_query"]

_LOG = logging.getLogger(__name__)

ROLLUP_RP = "rollup"
_CQ_PREFIX = "evalterm_"
_HOUR_NS = 3600 * 10**9


@dataclass(frozen=True)
class Rollup:
    """One hourly rollup: `select` (aggregates AS names) of raw `source`, per `tags`."""

    name: str
    source: str
    select: str
    tags: tuple[str, ...]


ROLLUPS: tuple[Rollup, ...] = (
    Rollup("rating_1h", "rating",
           'count("value") AS "n", sum("value") AS "value_sum", sum("satisfied") AS "satisfied", '
           'sum("bad") AS "bad", sum("implicit") AS "implicit"',
           ("hall", "window", "staff", "service", "level", "link", "mode")),
    Rollup("transaction_1h", "transaction",
           'sum("completed_n") AS "completed", sum("rated") AS "rated", '
           'sum("unrated") AS "unrated", sum("defaulted") AS "defaulted", '
           'mean("duration_ms") AS "duration_ms_mean"',
           ("hall", "window", "staff", "service", "outcome")),
    Rollup("telemetry_1h", "telemetry",
           'count("seq") AS "heartbeats", mean("rssi") AS "rssi_mean", '
           'min("heap_free") AS "heap_free_min", max("outbox") AS "outbox_max", '
           'max("discards") AS "discards_max", max("reconnects") AS "reconnects_max"',
           ("hall", "window", "device")),
)


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rollup_query(db: str, raw_rp: str, r: Rollup, where: str = "") -> str:
    """The SELECT ... INTO of one rollup; `where` (a time range) for the recomputing job, empty
    inside a continuous query (which adds its own)."""
    tags = ", ".join(_q(t) for t in r.tags)
    return (f"SELECT {r.select} INTO {_q(db)}.{_q(ROLLUP_RP)}.{_q(r.name)} "
            f"FROM {_q(db)}.{_q(raw_rp)}.{_q(r.source)} {where + ' ' if where else ''}"
            f"GROUP BY time(1h), {tags} fill(none)")


def cq_name(db: str, raw_rp: str, r: Rollup, every_s: int) -> str:
    """A name that changes with the definition, so a changed query replaces the old one."""
    digest = hashlib.sha256(f"{rollup_query(db, raw_rp, r)}|{every_s}".encode()).hexdigest()
    return f"{_CQ_PREFIX}{r.name}_{digest[:8]}"


def cq_statement(db: str, raw_rp: str, r: Rollup, every_s: int) -> str:
    return (f"CREATE CONTINUOUS QUERY {_q(cq_name(db, raw_rp, r, every_s))} ON {_q(db)} "
            f"RESAMPLE EVERY {every_s}s FOR 2h BEGIN {rollup_query(db, raw_rp, r)} END")


_GO_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def _hours(duration: str) -> float:
    """InfluxDB's duration text (`43920h0m0s`, `0s` for forever) in hours (0: forever)."""
    m = _GO_DURATION.fullmatch(duration)
    if not m:
        raise ValueError(f"unexpected retention duration {duration!r}")
    h, mi, s = (int(x or 0) for x in m.groups())
    return h + mi / 60 + s / 3600


def _duration(days: int) -> str:
    return "INF" if days == 0 else f"{days}d"


def _shard(days: int) -> str:
    # Hourly rollups are small: few, long shard groups (a shard may not outlast its policy).
    return "52w" if days == 0 or days >= 364 else "1d"


class _Influx:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.db = cfg.influx.database

    def q(self, text: str) -> list[dict[str, object]]:
        i = self.cfg.influx
        return influxql(i.url, self.db, text, username=i.username, password=i.password,
                        timeout_s=max(i.timeout_s, 60.0))

    def rows(self, text: str) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for s in self.q(text):
            cols = s["columns"]
            for v in s.get("values") or []:  # type: ignore[attr-defined]
                out.append(dict(zip(cols, v, strict=True)))  # type: ignore[call-overload]
        return out

    def cqs(self) -> set[str]:
        names: set[str] = set()
        for s in self.q("SHOW CONTINUOUS QUERIES"):
            if s.get("name") == self.db:
                names.update(str(v[0]) for v in s.get("values") or [])  # type: ignore[attr-defined]
        return names


def default_rp(cfg: Config) -> str:
    """The name of the database's default retention policy (where the collector writes)."""
    for row in _Influx(cfg).rows(f"SHOW RETENTION POLICIES ON {_q(cfg.influx.database)}"):
        if row.get("default"):
            return str(row["name"])
    return "autogen"


def apply(cfg: Config) -> list[str]:
    """Bring the database's retention policies and continuous queries to the configuration
    (creating the database if missing). Returns the statements it ran (empty: all was in place).
    Raises QueryFailed (InfluxDB down, credentials) or QueryRefused."""
    i = cfg.influx
    db = _Influx(cfg)
    ran: list[str] = []

    def run(stmt: str) -> None:
        db.q(stmt)
        ran.append(stmt)
        _LOG.info("InfluxDB: %s", stmt)

    if i.database not in {str(r["name"]) for r in db.rows("SHOW DATABASES")}:
        run(f"CREATE DATABASE {_q(i.database)}")
    rps = {str(r["name"]): r for r in db.rows(f"SHOW RETENTION POLICIES ON {_q(i.database)}")}
    raw = next((n for n, r in rps.items() if r.get("default")), None)
    if raw is None:  # a database without a default policy: make one, as CREATE DATABASE does
        raw = "autogen"
        run(f"CREATE RETENTION POLICY {_q(raw)} ON {_q(i.database)} DURATION "
            f"{_duration(i.retention_days)} REPLICATION 1 DEFAULT")
    elif _hours(str(rps[raw]["duration"])) != i.retention_days * 24:
        run(f"ALTER RETENTION POLICY {_q(raw)} ON {_q(i.database)} DURATION "
            f"{_duration(i.retention_days)}")
    if ROLLUP_RP not in rps:
        run(f"CREATE RETENTION POLICY {_q(ROLLUP_RP)} ON {_q(i.database)} DURATION "
            f"{_duration(i.rollup_days)} REPLICATION 1 SHARD DURATION {_shard(i.rollup_days)}")
    elif _hours(str(rps[ROLLUP_RP]["duration"])) != i.rollup_days * 24:
        run(f"ALTER RETENTION POLICY {_q(ROLLUP_RP)} ON {_q(i.database)} DURATION "
            f"{_duration(i.rollup_days)} SHARD DURATION {_shard(i.rollup_days)}")
    wanted = {cq_name(i.database, raw, r, i.rollup_every_s): r for r in ROLLUPS}
    have = db.cqs()
    for name in sorted(have - wanted.keys()):
        if name.startswith(_CQ_PREFIX):  # ours, from an older definition
            run(f"DROP CONTINUOUS QUERY {_q(name)} ON {_q(i.database)}")
    for name, r in wanted.items():
        if name not in have:
            run(cq_statement(i.database, raw, r, i.rollup_every_s))
    return ran


def rollup(cfg: Config, start_ns: int, end_ns: int) -> dict[str, int]:
    """Recompute the hourly rollups of [start, end) (widened to whole hours), one day per query.
    Returns the points written per rollup."""
    db = _Influx(cfg)
    raw = default_rp(cfg)
    start = start_ns - start_ns % _HOUR_NS
    end = end_ns + (-end_ns) % _HOUR_NS
    written = {r.name: 0 for r in ROLLUPS}
    day = 24 * _HOUR_NS
    for lo in range(start, end, day):
        hi = min(lo + day, end)
        for r in ROLLUPS:
            where = f"WHERE time >= {lo} AND time < {hi}"
            for row in db.rows(rollup_query(cfg.influx.database, raw, r, where)):
                written[r.name] += int(row.get("written") or 0)  # type: ignore[call-overload]
    return written
