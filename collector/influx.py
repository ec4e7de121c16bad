"""Writing points to InfluxDB from the durable outbox.

Points reach InfluxDB only through the `influx_outbox` table: the ingest path inserts them in the
same transaction as the linking state, `OutboxDrainer` writes them in order and records how far
InfluxDB confirmed, and only then does the collector delete them (`prune_outbox`). While InfluxDB
is down the outbox grows and nothing is lost; when it returns the outbox drains. A batch InfluxDB
rejects as invalid (HTTP 400) is split until the offending points are isolated; they are kept in
the drainer's `influx_target_dead` table and counted, never silently dropped.

Two writers: `V1Writer` speaks the 1.x `/write` API (the Debian `influxdb` server), `V2Writer` uses
`influxdb-client` for 2.x and 3.x (token, org, bucket).
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol
from urllib.parse import urlencode

import urllib3

from collector.clock import now_ms
from collector.config import Config
from collector.db import drained_up_to, state_instance, transaction
from collector.errors import ServiceUnavailable
from collector.outbox import points_depth as outbox_depth
from collector.outbox import prune_points as prune_outbox
from collector.outbox import read_points

__all__ = [
    "InvalidPoints", "OutboxDrainer", "QueryFailed", "QueryRefused", "V1Writer", "V2Writer",
    "WriteFailed", "influxql", "make_writer", "outbox_depth", "prune_outbox",
]

_LOG = logging.getLogger(__name__)


class WriteFailed(Exception):
    """A write that may succeed later (InfluxDB down, timeout, 5xx, auth): retried."""


class InvalidPoints(Exception):
    """InfluxDB refused the points themselves (HTTP 400): retrying the same batch cannot help."""


class QueryFailed(ServiceUnavailable):
    """An InfluxQL query could not be answered: InfluxDB unreachable or the credentials refused."""


class QueryRefused(QueryFailed, ValueError):
    """InfluxDB answered the query with an error (a bad query, an unknown database)."""


class Writer(Protocol):
    def write(self, lines: list[str]) -> None: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class V1Writer:
    def __init__(self, url: str, database: str, username: str = "", password: str = "",
                 timeout_s: float = 10.0, setup: Callable[[], object] | None = None) -> None:
        """`setup`: called once the database exists (the drainer's: retention policies and
        continuous queries, collector/retention.py)."""
        self._base = url.rstrip("/")
        self._setup = setup
        self._db = database
        self._http = urllib3.PoolManager(
            maxsize=2, timeout=urllib3.Timeout(total=timeout_s), retries=False
        )
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._db_ready = False

    def _request(self, method: str, path: str,
                 body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        try:
            return self._http.request(method, self._base + path, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise WriteFailed(f"InfluxDB unreachable: {type(exc).__name__}") from None

    def ensure_database(self) -> None:
        q = urlencode({"q": f'CREATE DATABASE "{self._db}"'})
        resp = self._request("POST", f"/query?{q}")
        if resp.status != 200:
            raise WriteFailed(f"CREATE DATABASE answered HTTP {resp.status}")
        if self._setup is not None:
            try:
                self._setup()
            except QueryRefused as exc:
                # Retention is not worth a single rating: write on, and say so.
                _LOG.error("InfluxDB refused the retention policies or continuous queries; "
                           "points are written to the default policy: %s", exc)
            except QueryFailed as exc:
                raise WriteFailed(str(exc)) from None
        self._db_ready = True

    def write(self, lines: list[str]) -> None:
        if not self._db_ready:
            self.ensure_database()
        q = urlencode({"db": self._db, "precision": "ns"})
        resp = self._request("POST", f"/write?{q}", "\n".join(lines).encode())
        if resp.status == 204:
            return
        text = resp.data[:300].decode("utf-8", "replace")
        if resp.status == 400:
            raise InvalidPoints(text)
        if resp.status == 404 and "database not found" in text:
            self._db_ready = False
        raise WriteFailed(f"InfluxDB answered HTTP {resp.status}: {text}")

    def ping(self) -> bool:
        try:
            return self._request("GET", "/ping").status == 204
        except WriteFailed:
            return False

    def close(self) -> None:
        self._http.clear()


class V2Writer:
    def __init__(self, url: str, token: str, org: str, bucket: str,
                 timeout_s: float = 10.0) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000))
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = bucket
        self._org = org

    def write(self, lines: list[str]) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            # WritePrecision.NS is the plain string "ns", which write() takes although its
            # annotation names the WritePrecision class.
            self._api.write(bucket=self._bucket, org=self._org, record="\n".join(lines),
                            write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status == 400:
                raise InvalidPoints(str(exc.body)[:300]) from None
            raise WriteFailed(f"InfluxDB answered HTTP {exc.status}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise WriteFailed(f"InfluxDB unreachable: {type(exc).__name__}") from None

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._client.close()


def make_writer(cfg: Config, setup: Callable[[], object] | None = None) -> Writer:
    """The writer for `[influx] version`; `setup` as in `V1Writer` (1.x only)."""
    i = cfg.influx
    if i.version == 1:
        return V1Writer(i.url, i.database, i.username, i.password, i.timeout_s, setup)
    return V2Writer(i.url, i.token, i.org, i.bucket, i.timeout_s)


_PING_FAILED = "InfluxDB does not answer its /ping"


class OutboxDrainer:
    """influx_outbox -> InfluxDB, in order, at least once.

    Runs in a process of its own (`collector.drainer`), so that rendering and writing points
    do not compete with ingestion for the interpreter; one per InfluxDB target (`target`). It only
    reads the state database: how far InfluxDB has confirmed, what it has done
    (`drainer_target_status`) and the points InfluxDB refused (`influx_target_dead`), each keyed
    by the target, go to the drainer's own database (`collector.db.connect_drained`), and the
    collector deletes the rows every target confirmed (`prune_outbox`). A crash between a write
    and the record of it rewrites those points, which overwrites them (points are idempotent,
    collector/points.py).
    `state` is read from a second thread (read-ahead), one thread at a time: open it with
    `check_same_thread=False`. While there is nothing to write, InfluxDB is pinged every
    `probe_s`, so that `healthy` (the collector's /healthz) follows an outage without traffic.
    """

    def __init__(self, state: sqlite3.Connection, drained: sqlite3.Connection, writer: Writer, *,
                 batch_size: int = 5000, flush_interval_s: float = 0.05,
                 retry_max_s: float = 30.0, probe_s: float = 5.0, target: str = "main") -> None:
        """`target`: the name of the InfluxDB target ([influx] targets) whose progress this is."""
        self.target = target
        self._probe_s = probe_s
        self._db = state
        self._drained = drained
        self._writer = writer
        self._batch = batch_size
        self._flush = flush_interval_s
        self._retry_max = retry_max_s
        self._instance = state_instance(state)
        self._done = drained_up_to(state, drained, target)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="render")
        self._ahead: Future[list[tuple[int, str]]] | None = None
        self.healthy = True
        self.last_error = ""
        self.points_written = 0
        self.errors = {"unavailable": 0, "internal": 0}
        self.dead_points = 0

    def run(self, stop: threading.Event, idle_poll_s: float = 0.05) -> None:
        backoff = 0.0
        probed = time.monotonic()  # the last write, or the last ping while idle
        self._save_status()
        while not stop.is_set():
            try:
                wrote = self.drain_once()
            except WriteFailed as exc:
                self.healthy = False
                self.last_error = str(exc)
                self.errors["unavailable"] += 1
                backoff = min(self._retry_max, max(0.25, backoff * 2))
                _LOG.warning("InfluxDB target %r: write failed, retrying in %.1fs: %s",
                             self.target, backoff, exc)
                self._save_status()
                stop.wait(backoff)
                continue
            except Exception as exc:
                self.errors["internal"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                _LOG.exception("outbox drainer error; retrying")
                self._save_status()
                stop.wait(1.0)
                continue
            if wrote:
                probed = time.monotonic()
                if backoff or not self.healthy:
                    self.healthy, self.last_error, backoff = True, "", 0.0
                    self._save_status()
            elif time.monotonic() - probed >= self._probe_s:
                probed = time.monotonic()
                if self._writer.ping():
                    if backoff or not self.healthy:
                        self.healthy, self.last_error, backoff = True, "", 0.0
                        self._save_status()
                elif self.healthy or self.last_error != _PING_FAILED:
                    self.healthy, self.last_error = False, _PING_FAILED
                    _LOG.warning("InfluxDB target %r does not answer its ping (nothing to write "
                                 "meanwhile)", self.target)
                    self._save_status()
            if wrote == 0:
                stop.wait(idle_poll_s)
            elif wrote < self._batch and self._flush > 0:
                # Let a burst gather into the next write instead of many small ones.
                stop.wait(self._flush)

    def depth(self) -> int:
        return outbox_depth(self._db, self._drained, (self.target,))

    def drain_once(self) -> int:
        """Write one batch from the outbox. Returns how many points it took.

        While InfluxDB works on a full batch, the next is read and rendered in a thread: rendering
        holds the interpreter, waiting for InfluxDB does not, so the two overlap. (After a partial
        batch the next is read when it is due, so that it is not older than it needs to be.)"""
        batch = self._take_ahead()
        if not batch:
            batch = self._load(self._done)
        if not batch:
            return 0
        if len(batch) == self._batch:  # a backlog: the next batch is there already
            self._ahead = self._pool.submit(self._load, batch[-1][0])
        started = time.monotonic()
        try:
            self._write_rows(batch)
        except BaseException:
            self._take_ahead()  # start again from the last confirmed point
            raise
        self.points_written += len(batch)
        self._done = batch[-1][0]
        with transaction(self._drained):
            self._drained.execute(
                "INSERT OR REPLACE INTO drained_target (target, instance, outbox_id) "
                "VALUES (?, ?, ?)", (self.target, self._instance, self._done),
            )
            self._save_status()
        _LOG.debug("wrote %d points up to outbox id %d in %.0f ms", len(batch), self._done,
                   (time.monotonic() - started) * 1000)
        return len(batch)

    def _load(self, after: int) -> list[tuple[int, str]]:
        """The next batch after outbox id `after`, rendered to line protocol."""
        return read_points(self._db, after, self._batch)

    def _take_ahead(self) -> list[tuple[int, str]]:
        ahead, self._ahead = self._ahead, None
        return ahead.result() if ahead is not None else []

    def close(self) -> None:
        self._take_ahead()
        self._pool.shutdown()

    def _save_status(self) -> None:
        self._drained.execute(
            "INSERT OR REPLACE INTO drainer_target_status (target, pid, healthy, last_error, "
            "updated_ms, points_written, errors_unavailable, errors_internal, dead_points) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.target, os.getpid(), int(self.healthy), self.last_error, now_ms(),
             self.points_written, self.errors["unavailable"], self.errors["internal"],
             self.dead_points),
        )

    def _write_rows(self, rows: list[tuple[int, str]]) -> None:
        try:
            self._writer.write([line for _, line in rows])
        except InvalidPoints as exc:
            if len(rows) == 1:
                self._bury(rows[0], str(exc))
                return
            mid = len(rows) // 2
            self._write_rows(rows[:mid])
            self._write_rows(rows[mid:])

    def _bury(self, row: tuple[int, str], error: str) -> None:
        _LOG.error("InfluxDB target %r refused point %d as invalid; kept in influx_target_dead: "
                   "%s", self.target, row[0], error)
        self._drained.execute(
            "INSERT OR REPLACE INTO influx_target_dead (target, id, line, error, at_ms) "
            "VALUES (?, ?, ?, ?, ?)", (self.target, row[0], row[1], error, now_ms()),
        )
        self.dead_points += 1
        self.points_written -= 1


def influxql(url: str, database: str, q: str, *, username: str = "", password: str = "",
             epoch: str = "ms", timeout_s: float = 10.0) -> list[dict[str, object]]:
    """Run an InfluxQL query (1.x `/query`, also served by 2.x/3.x) and return its series:
    `[{"name", "tags", "columns", "values"}]`. Raises QueryFailed if InfluxDB is unreachable or
    refuses the credentials, QueryRefused (a ValueError too) with InfluxDB's message if it refuses
    the query."""
    import json

    params = {"db": database, "q": q, "epoch": epoch}
    if username:
        params.update(u=username, p=password)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False)
    try:
        resp = http.request("POST", url.rstrip("/") + "/query", fields=params,
                            encode_multipart=False)
    except urllib3.exceptions.HTTPError as exc:
        raise QueryFailed(f"InfluxDB at {url} is unreachable ({type(exc).__name__}): start it, "
                          "or correct [influx] url") from None
    if resp.status in (401, 403):
        raise QueryFailed(f"InfluxDB at {url} refused the credentials (HTTP {resp.status}): "
                          "check [influx] username and password (or token)")
    try:
        body = json.loads(resp.data or b"{}")
    except ValueError:
        raise QueryFailed(f"{url} answered HTTP {resp.status} with something that is not "
                          "InfluxDB's JSON: is [influx] url the InfluxDB server?") from None
    if resp.status != 200 or "error" in body:
        why = body.get("error", f"HTTP {resp.status}")
        raise QueryRefused(f"InfluxDB refused the query: {why}")
    series: list[dict[str, object]] = []
    for result in body.get("results", []):
        if "error" in result:
            raise QueryRefused(f"InfluxDB refused the query: {result['error']}")
        series.extend(result.get("series", []))
    return series
