"""The running collector: MQTT in, HTTP in, one ingest worker, the InfluxDB drainer, commands out.

Threads and who owns what:

* paho's network thread receives PUBLISH packets and only queues them (`_on_message`);
* the ingest worker owns the main SQLite connection: it takes queued messages in order, commits a
  batch through `Ingest.process_batch`, and only then acknowledges each message to the broker
  (paho manual ack) or answers the waiting HTTP request and sends the devices their receipts
  (docs/protocol.md §5.1); it also publishes queued commands;
* the drainer owns a second connection and moves points from the outbox to InfluxDB;
* the HTTP server thread (uvicorn, collector/web/) serves /healthz, /metrics, the feed webhook
  and any mounted application; blocking calls run in its bounded worker threads.

Partitioned ([partitions] count > 1, docs/scale.md "Hall partitions"): the worker also takes the
partition locks on its own connection (collector/db.py `try_lock_partition`), and serves
partition k, with an MQTT client of k's fixed client id subscribed to k's halls only, while it
holds k's lock; the drainer, the detector and the manager run only while it holds the
singletons' lock. Every commit then happens on the session that holds the locks: when that
session breaks (a PostgreSQL failover), the locks are gone, so the worker stops serving
everything (its clients disconnect without acknowledging) before it opens a new session and
takes the locks again.

A kill at any moment loses nothing: an unacknowledged message is delivered again by the broker
(persistent session), a committed one is in SQLite, and its replay is refused harmlessly (and
answered with a receipt). A message the broker acknowledged and then lost is still on the
device's flash, which keeps it until a receipt comes and sends it again.
"""

from __future__ import annotations

import logging
import queue
import signal
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as MetricsCollector
from starlette.routing import BaseRoute

from collector import outbox
from collector.clock import now_ms
from collector.config import Config, feed_tokens
from collector.db import (
    connect,
    partition_locks_lost,
    release_partition_locks,
    transaction,
    try_lock_partition,
)
from collector.drainer import DrainerMetrics, DrainerProcess
from collector.health import Part, PartsMetrics, health_document
from collector.ingest import Inbound, Ingest, Outcome
from collector.manager.run import ManagerRun
from collector.metrics import Metrics
from collector.mqttclient import BufferedClient
from collector.partition import (
    SINGLETONS_LOCK,
    client_id,
    hall_filters,
    hall_of_topic,
    parse_own,
    partition_of,
    wildcard_filters,
)
from collector.pgstate import redacted_url
from collector.protocol import feed_topic
from collector.web.app import COMMIT_TIMEOUT_S, build_app
from collector.web.server import WebServer

__all__ = ["Collector"]

_LOG = logging.getLogger(__name__)

REGISTRY_REFRESH_S = 2.0  # how often a partitioned service looks for halls new to the registry


class _Waiter:
    """An HTTP request waiting for its message to be committed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Outcome | None = None


class _LocksLost(Exception):
    """The state database session that held the partition locks broke: they are gone."""


class _Served:
    """A partition this process serves: its MQTT client and the halls it subscribed. `active`
    turns False (never back) when the process stops serving it; a later takeover makes a new
    one. Messages received through an inactive one are dropped unacknowledged."""

    def __init__(self, k: int, client: mqtt.Client) -> None:
        self.k = k
        self.client = client
        self.active = True
        self.halls: frozenset[str] = frozenset()
        self.error = "not connected yet"


class Collector:
    def __init__(self, cfg: Config, *, clock: Any = now_ms,
                 mounts: Sequence[BaseRoute] = ()) -> None:
        """`mounts`: routes served beside /healthz, /metrics and the webhook (the UI)."""
        self.cfg = cfg
        self.clock = clock
        self.metrics = Metrics()
        self._db = connect(cfg.state_target, check_same_thread=False,
                           max_mb=cfg.collector.max_db_mb)
        self.ingest = Ingest(self._db, cfg, self.metrics)
        self._queue: queue.Queue[Inbound | None] = queue.Queue()
        # MQTT messages received but not yet committed and acknowledged, at most two batches:
        # past that, paho's thread waits and TCP holds the broker back. Without a bound, a
        # backlog is read into memory as fast as the socket delivers it, and the network thread
        # takes the interpreter from the ingest worker at each SQLite statement.
        self._unacked = threading.BoundedSemaphore(2 * cfg.collector.batch_max)
        self._stop = threading.Event()
        self._drainer = DrainerProcess(cfg, connect(cfg.state_target, check_same_thread=False))
        self.metrics.registry.register(DrainerMetrics(self._drainer))
        self.metrics.registry.register(PartsMetrics(self.parts))
        pc = cfg.partitions
        self._partitioned = pc.count > 1
        self._own = parse_own(pc.own, pc.count)
        self._session = True  # self._db is open (partitioned: it holds the locks taken)
        self._served: dict[int, _Served] = {}  # partition -> its client; the worker's to change
        self._locks_at = -1e9  # monotonic time of the last lock step
        self._session_at = time.monotonic()  # when the lock-holding session was opened
        self._halls_at = -1e9
        self._known_halls: frozenset[str] = frozenset()
        self._singletons = not self._partitioned  # drainer, detector, manager run here
        self._singletons_stop = threading.Event() if self._partitioned else self._stop
        if self._partitioned:
            self.ingest.owns = self._owns
            self.metrics.registry.register(_PartitionMetrics(self))
        else:  # one client, every hall, as before partitions existed
            self._served[0] = _Served(0, self._make_client(cfg.mqtt.client_id))
        self._inflight_cmds: dict[tuple[int, int], int] = {}  # (partition, paho mid) -> cmd id
        self._last_published_cmd = 0  # paho holds what it was given and resends until the PUBACK
        self._cmd_lock = threading.Lock()
        self._acked_cmds: queue.SimpleQueue[int] = queue.SimpleQueue()  # from paho's thread
        self._worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        self._mounts = tuple(mounts)
        self._http: WebServer | None = None
        self._detector_error = ""  # why the last detection run failed, until one succeeds
        self.last_batch_ms = 0
        self.stalled = ""  # why the ingest worker cannot commit, while it cannot
        self._pruned_at = 0.0
        self._detector = threading.Thread(target=self._detect, name="detector", daemon=True)
        self._manager = threading.Thread(target=self._manage, name="manager", daemon=True)

    # -- MQTT ------------------------------------------------------------------------------------

    def _make_client(self, cid: str) -> mqtt.Client:
        """A client with id `cid`; with [mqtt] username, `cid` is also its user name (the broker
        binds the two: a partition's user is `<username>-p<k>`, with the collector's password)."""
        m = self.cfg.mqtt
        client = BufferedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if m.username:
            client.username_pw_set(cid, m.password or None)
        if m.tls_ca_file:
            client.tls_set(ca_certs=m.tls_ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect(self, served: _Served) -> None:
        m = self.cfg.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        props.ReceiveMaximum = m.receive_maximum
        served.client.user_data_set(served)
        served.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                    properties=props)
        served.client.loop_start()

    def _on_connect(self, client: mqtt.Client, served: _Served, flags: Any, reason: Any,
                    props: Any) -> None:
        where = f" (partition {served.k})" if self._partitioned else ""
        if reason.is_failure:
            _LOG.error("broker refused the connection%s: %s", where, reason)
            served.error = f"the broker refused the connection{where}: {reason}"
            return
        served.error = ""
        _LOG.info("connected to the broker%s (session present: %s)", where,
                  flags.session_present)
        self._note_connected()
        self._subscribe(served, served.halls, everything=True)

    def _subscribe(self, served: _Served, halls: frozenset[str], *, everything: bool = False
                   ) -> None:
        """Subscribe `served`'s client: every hall (unpartitioned), else exactly `halls`."""
        prefix = self.cfg.mqtt.topic_prefix
        if not self._partitioned:
            filters = wildcard_filters(prefix) if everything else []
        else:
            filters = hall_filters(prefix, halls)
        if not filters:
            return
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        served.client.subscribe([(f, opts) for f in filters])

    def _note_connected(self) -> None:
        up = [s for s in list(self._served.values()) if s.active]
        self.metrics.mqtt_connected.set(1 if up and all(s.client.is_connected() for s in up)
                                        else 0)

    def _on_disconnect(self, _c: Any, served: _Served, _f: Any, reason: Any, _p: Any) -> None:
        self.metrics.mqtt_connected.set(0)
        served.error = f"disconnected from the broker: {reason}"
        if not self._stop.is_set() and served.active:
            _LOG.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: Any, served: _Served, msg: mqtt.MQTTMessage) -> None:
        # Checked before waiting too: on a stop, or when the partition is given up, paho may
        # still hold up to receive_maximum messages read from the socket, and 0.5 s each kept
        # the worker's loop_stop() waiting for minutes (the failover test, once, in CI).
        while (self._stop.is_set() or not served.active
               or not self._unacked.acquire(timeout=0.5)):
            if self._stop.is_set() or not served.active:
                return  # not acknowledged: the broker delivers it again to the next owner
        self._queue.put(Inbound("mqtt", msg.topic, bytes(msg.payload), self.clock(),
                                (served, msg.mid, msg.qos)))

    def _on_publish(self, _c: Any, served: _Served, mid: int, reason: Any, _p: Any) -> None:
        with self._cmd_lock:
            row = self._inflight_cmds.pop((served.k, mid), None)
        if row is not None:
            # The ingest worker deletes it; this thread must not touch its connection. Not
            # through the message queue: an acknowledgement is not an inbound message.
            self._acked_cmds.put(row)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.http.listen:  # first: a port in use stops the start-up before anything runs
            self._start_http()
        if self._singletons:
            self._start_singletons()
        self._worker.start()
        for served in self._served.values():  # unpartitioned: the one client (else: none yet)
            self._connect(served)
        _LOG.info("collector started (state %s)", redacted_url(str(self.cfg.state_target)))

    def _start_singletons(self) -> None:
        """The work that runs in one process: the drainer, the detector, the manager."""
        self._singletons = True
        # Unpartitioned: they stop with the service, as before partitions existed.
        self._singletons_stop = threading.Event() if self._partitioned else self._stop
        self._drainer.start()
        if self.cfg.detection.enabled:
            if self._detector.ident is not None:  # a thread runs once: a new one
                self._detector = threading.Thread(target=self._detect, name="detector",
                                                  daemon=True)
            self._detector.start()
        if self.cfg.manager.enabled:
            if self._manager.ident is not None:
                self._manager = threading.Thread(target=self._manage, name="manager",
                                                 daemon=True)
            self._manager.start()

    def _stop_singletons(self) -> None:
        self._singletons = False
        self._singletons_stop.set()
        if self._detector.is_alive():
            self._detector.join(30)
        if self._manager.is_alive():
            self._manager.join(30)
        self._drainer.stop()

    def stop(self) -> None:
        # The HTTP server first: requests in progress still get their commit from the worker.
        if self._http is not None:
            self._http.stop()
        self._stop.set()
        self._queue.put(None)
        self._worker.join(10)
        for served in list(self._served.values()):
            self._stop_serving(served, why="stopping")
        if self._singletons:
            self._stop_singletons()
        if self._partitioned and self._session:  # the locks go with the session: free them now
            self._session = False
            release_partition_locks(self._db)
            self._db.close()

    def run_forever(self) -> None:
        done = threading.Event()

        def _term(_sig: int, _frame: Any) -> None:
            done.set()

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        self.start()
        done.wait()
        _LOG.info("stopping")
        self.stop()

    # -- the ingest worker -----------------------------------------------------------------------

    def _work(self) -> None:
        self._run(self._publish_commands)  # what a previous run left queued
        while not self._stop.is_set():
            try:
                if self._partitioned:
                    self._step_locks()
                    if not self._session:  # no session holding locks: wait for a new one
                        self._drop_unserved(block=True)
                        continue
                self._work_once()
                if self._singletons:
                    self._drainer.watch()
                    self._prune_outbox()
            except _LocksLost:
                self._lose_everything()
            except Exception:  # never let the worker die: log, wait, go on
                if self._partitioned and self._session and partition_locks_lost(self._db):
                    self._lose_everything()
                    continue
                _LOG.exception("ingest worker error")
                time.sleep(1)

    # -- partitions (the worker's) ---------------------------------------------------------------

    def _owns(self, hall: str) -> bool:
        served = self._served.get(partition_of(hall, self.cfg.partitions.count))
        return served is not None and served.active

    def _step_locks(self) -> None:
        """Every [partitions] lock_interval_s: check the lock-holding session, open a new one if
        it broke, take the free locks this process wants, subscribe halls new to the registry."""
        pc = self.cfg.partitions
        now = time.monotonic()
        if now - self._locks_at < pc.lock_interval_s:
            return
        self._locks_at = now
        if not self._session:
            try:
                db = connect(self.cfg.state_target, check_same_thread=False,
                             max_mb=self.cfg.collector.max_db_mb)
            except Exception as exc:
                self.stalled = f"{type(exc).__name__}: {exc}"[:200]
                _LOG.warning("no state database session for the partition locks yet: %s",
                             self.stalled)
                return
            self._db, self._session = db, True
            self.ingest = Ingest(db, self.cfg, self.metrics)
            self.ingest.owns = self._owns
            self._session_at = now
            self._last_published_cmd = 0
            self.stalled = ""
            _LOG.info("state database session opened for the partition locks")
        db = self._db
        try:
            db.execute("SELECT 1").fetchone()  # a broken session (its locks gone) raises here
            wanted = list(self._own)
            if pc.takeover and now - self._session_at >= pc.takeover_delay_s:
                wanted += [k for k in range(pc.count) if k not in self._own]
            halls = self._halls(now)
            for k in wanted:
                if k not in self._served and try_lock_partition(db, k):
                    self._serve(k, halls)
            if not self._singletons and try_lock_partition(db, SINGLETONS_LOCK):
                _LOG.info("singletons: running from %.3f (lock held): drainer, detector, "
                          "manager", time.time())
                self._start_singletons()
        except Exception:
            if partition_locks_lost(db):
                raise _LocksLost from None
            raise
        for served in list(self._served.values()):
            mine = frozenset(h for h in halls if partition_of(h, pc.count) == served.k)
            new = mine - served.halls
            if new:
                served.halls = served.halls | new
                if served.client.is_connected():
                    self._subscribe(served, new)
                _LOG.info("partition %d: subscribed %d new hall(s)", served.k, len(new))

    def _halls(self, now: float) -> frozenset[str]:
        """Every hall known: the device registry's and those named by [http] feed tokens (read
        again every few seconds: `evalterm device add` runs in another process)."""
        if now - self._halls_at >= REGISTRY_REFRESH_S or not self._known_halls:
            rows = self._db.execute("SELECT DISTINCT hall FROM device").fetchall()
            halls = {str(r[0]) for r in rows}
            for t in feed_tokens(self.cfg.http):
                halls |= t.halls or set()
            self._known_halls = frozenset(halls)
            self._halls_at = now
        return self._known_halls

    def _serve(self, k: int, halls: frozenset[str]) -> None:
        """Partition k's lock is held: serve it with its client (the same id as every owner's,
        so the broker hands this one the session and everything unacknowledged in it)."""
        pc = self.cfg.partitions
        served = _Served(k, self._make_client(client_id(self.cfg.mqtt.client_id, k)))
        served.halls = frozenset(h for h in halls if partition_of(h, pc.count) == k)
        self._served[k] = served
        self._last_published_cmd = 0  # its commands that a previous owner left
        _LOG.info("partition %d: serving from %.3f (lock held; %d halls)", k, time.time(),
                  len(served.halls))
        self._connect(served)

    def _stop_serving(self, served: _Served, why: str) -> None:
        """Stop serving a partition: disconnect its client without acknowledging what it has
        queued (the session keeps it for the next owner)."""
        served.active = False
        served.client.disconnect()
        served.client.loop_stop()
        self._served.pop(served.k, None)
        if self._partitioned:
            _LOG.warning("partition %d: stopped serving at %.3f (%s)", served.k, time.time(), why)
        self._drop_unserved(block=False)

    def _drop_unserved(self, *, block: bool) -> None:
        """Take out of the queue what inactive partitions received (never acknowledged) and what
        HTTP requests wait for while there is no session (answered "busy")."""
        keep: list[Inbound | None] = []
        try:
            first = self._queue.get(timeout=0.2) if block else self._queue.get_nowait()
        except queue.Empty:
            return
        items: list[Inbound | None] = [first]
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is None:
                self._stop.set()
            elif item.source == "mqtt" and not item.token[0].active:
                self._unacked.release()
            elif item.source != "mqtt" and not self._session and isinstance(item.token, _Waiter):
                item.token.done.set()  # outcome None: 503, the sender retries
            else:
                keep.append(item)
        for item in keep:
            self._queue.put(item)

    def _lose_everything(self) -> None:
        """The session holding the locks broke: serve nothing until a new one holds them."""
        _LOG.error("the state database session holding the partition locks is lost: stopping "
                   "every partition and the singletons until the locks are taken again")
        for served in list(self._served.values()):
            self._stop_serving(served, why="state database session lost")
        if self._singletons:
            _LOG.warning("singletons: stopped at %.3f (state database session lost)",
                         time.time())
            self._stop_singletons()
        if self._session:
            self._session = False
            release_partition_locks(self._db)
            try:
                self._db.close()
            except Exception:  # already broken
                _LOG.debug("closing the broken session failed", exc_info=True)
        self._locks_at = -1e9

    def _prune_outbox(self, every_s: float = 0.25) -> None:
        if time.monotonic() - self._pruned_at >= every_s:
            self._pruned_at = time.monotonic()
            self._drainer.prune(self._db)

    def _detect(self) -> None:
        """Recompute integrity indicators every `[detection] interval_s`, in a thread and on a
        connection of its own so that a large hall's computation never holds up ingestion or
        acknowledgements. Each run rewrites the day's points, so the runs after closing leave
        the day's final values."""
        from collector.detection import run_detection
        from collector.detection.run import connect_detector

        try:
            conn = connect_detector(self.cfg)
        except Exception as exc:
            self._detector_error = f"cannot open the state database: {exc}"[:200]
            raise
        try:
            while not self._singletons_stop.is_set():
                started = self.clock()
                try:
                    run_detection(conn, self.cfg, started)
                    self._detector_error = ""
                except Exception as exc:
                    self._detector_error = f"{type(exc).__name__}: {exc}"[:200]
                    _LOG.exception("integrity detection failed; ingestion goes on")
                self._singletons_stop.wait(self.cfg.detection.interval_s)
        finally:
            conn.close()

    def _manage(self) -> None:
        """Every `[manager] interval_s`: open the 差评 follow-up cases, queue the follow-up
        figures and names for InfluxDB, write last month's reports (collector/manager/run.py);
        in a thread and on a connection of its own, like the detector. (ManagerRun is imported
        at the top: imported here, it would race the detector thread's import of
        collector.detection, which it also needs, and one could see it half-initialised.)"""
        conn = connect(self.cfg.state_target, max_mb=self.cfg.collector.max_db_mb)
        try:
            try:
                run = ManagerRun(self.cfg, conn, self.clock)
            except Exception:  # e.g. a holiday calendar with a bad line
                _LOG.exception("no follow-up cases: the [manager] settings cannot be used")
                return
            while not self._singletons_stop.is_set():
                try:
                    run.run_once()
                except Exception:
                    _LOG.exception("follow-up cases or the monthly report failed; "
                                   "ingestion goes on")
                self._singletons_stop.wait(self.cfg.manager.interval_s)
        finally:
            conn.close()

    def _work_once(self) -> None:
        """Take the queued messages (up to batch_max), or run the timer when nothing comes."""
        due = self.ingest.linker.next_due_ms(self.ingest.owns)
        timeout = 1.0 if due is None else max(0.0, min(1.0, (due - self.clock()) / 1000))
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            if due is not None and due <= self.clock():
                self._run(self.ingest.tick, self.clock())
                self._run(self._publish_commands)
            self._forget_acked_commands()
            return
        if first is None:
            self._stop.set()
            return
        batch = [first]
        while len(batch) < self.cfg.collector.batch_max:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._stop.set()
                break
            batch.append(nxt)
        self._process(batch)

    def _run(self, fn: Any, *args: Any) -> Any:
        """Run a database step; on an unexpected failure wait and retry (never drop the batch)."""
        delay = 0.5
        while True:
            try:
                result = fn(*args)
                self.stalled = ""
                return result
            except Exception as exc:
                if self._stop.is_set():
                    raise
                if self._partitioned and partition_locks_lost(self._db):
                    raise _LocksLost from exc  # nothing of the step is served any more
                self.stalled = f"{type(exc).__name__}: {exc}"[:200]
                self.metrics.stalls.inc()
                _LOG.exception("ingest step failed; nothing acknowledged; retrying in %.1fs", delay)
                time.sleep(delay)
                try:  # a full database (max_db_mb) needs the drained points gone to go on
                    self._prune_outbox(every_s=0)
                except Exception:
                    _LOG.exception("pruning the outbox failed")
                delay = min(delay * 2, 10)

    def _forget_acked_commands(self) -> None:
        """Delete the commands the broker acknowledged since the last call (worker thread)."""
        acked: list[int] = []
        while True:
            try:
                acked.append(self._acked_cmds.get_nowait())
            except queue.Empty:
                break
        if acked:
            self._run(self._delete_commands, acked)
            self.metrics.commands_sent.inc(len(acked))

    def _process(self, items: list[Inbound]) -> None:
        self._forget_acked_commands()
        mine = []
        for item in items:  # what a partition received before this process stopped serving it
            if item.source == "mqtt" and not item.token[0].active:
                self._unacked.release()  # never acknowledged: its next owner gets it again
            else:
                mine.append(item)
        items = mine
        if items:
            started = time.monotonic()
            outcomes = self._run(self.ingest.process_batch, items, self.clock())
            _LOG.debug("committed a batch of %d messages in %.1f ms (%d waiting)", len(items),
                       (time.monotonic() - started) * 1000, self._queue.qsize())
            self.last_batch_ms = self.clock()
            for item, outcome in zip(items, outcomes, strict=True):
                if item.source == "mqtt":
                    served, mid, qos = item.token
                    if served.active:
                        served.client.ack(mid, qos)  # only now: its effects are committed
                    self._unacked.release()
                elif isinstance(item.token, _Waiter):
                    item.token.outcome = outcome
                    item.token.done.set()
            self._send_receipts(outcomes)
        self._run(self._publish_commands)

    def _client_for(self, topic: str) -> _Served | None:
        """The served partition whose client publishes to `topic` (None: not served here)."""
        if not self._partitioned:
            return self._served.get(0)
        hall = hall_of_topic(self.cfg.mqtt.topic_prefix, topic)
        if hall is None:
            return None
        served = self._served.get(partition_of(hall, self.cfg.partitions.count))
        return served if served is not None and served.active else None

    def _send_receipts(self, outcomes: list[Outcome]) -> None:
        """Tell the devices what is committed, so they delete it from flash (protocol §5.1).
        Fire and forget: a receipt that is lost makes the device send the message again, and
        the replay is answered with a receipt again."""
        try:
            receipts = self.ingest.receipts(outcomes, self.clock())
        except Exception:  # a registry read failing: the devices resend, nothing is lost
            _LOG.exception("building receipts failed")
            return
        sent = 0
        for topic, payload in receipts:
            served = self._client_for(topic)
            if served is not None:
                served.client.publish(topic, payload, qos=1)
                sent += 1
        self.metrics.receipts_sent.inc(sent)

    def _publish_commands(self) -> None:
        now = self.clock()
        expired = []
        with self._cmd_lock:
            inflight = set(self._inflight_cmds.values())
        for row_id, topic, payload, expires in outbox.commands_after(self._db,
                                                                     self._last_published_cmd):
            served = self._client_for(topic)
            if served is None or row_id in inflight:  # another partition's, or sent already
                self._last_published_cmd = row_id
                continue
            if expires <= now:
                expired.append(row_id)
                self._last_published_cmd = row_id
                continue
            info = served.client.publish(topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                _LOG.warning("publishing a command failed (%s); retrying later", info.rc)
                break  # (NO_CONN: paho keeps a QoS 1 message and sends it on reconnect)
            self._last_published_cmd = row_id
            with self._cmd_lock:
                self._inflight_cmds[(served.k, info.mid)] = row_id
        if expired:
            self._delete_commands(expired)

    def _delete_commands(self, ids: list[int]) -> None:
        # One transaction: in autocommit each DELETE was a commit of its own (an fsync each,
        # synchronous=FULL), 12 % of the ingest worker's time in a backlog drain.
        with transaction(self._db):
            outbox.delete_commands(self._db, ids)

    # -- HTTP --------------------------------------------------------------------------------------

    def submit_feed(self, hall: str, body: bytes, timeout: float = COMMIT_TIMEOUT_S
                    ) -> Outcome | None:
        """None (503, the sender retries): not committed in time, or (partitioned) the hall is
        not served by this process."""
        if self._partitioned and not self._owns(hall):
            return None
        waiter = _Waiter()
        topic = feed_topic(self.cfg.mqtt.topic_prefix, hall)
        self._queue.put(Inbound("http", topic, body, self.clock(), waiter))
        return waiter.outcome if waiter.done.wait(timeout) else None

    def served_partitions(self) -> list[int]:
        """The partitions this process serves now (unpartitioned: [0], every hall)."""
        return sorted(k for k, s in list(self._served.items()) if s.active)

    @property
    def serves_singletons(self) -> bool:
        return self._singletons

    def parts(self) -> list[Part]:
        """Each part of the running service, up or down with the reason (collector/health.py
        turns them into /healthz and evalterm_part_up). Partitioned: the broker part is up when
        every served partition's client is connected (serving none is not a fault: a standby);
        the singletons are "off" in a process that does not hold their lock."""
        served = [s for s in list(self._served.values()) if s.active]
        down = [s for s in served if not s.client.is_connected()]
        if self._partitioned:
            mqtt_ok = not down
            mqtt_why = "; ".join(f"partition {s.k}: {s.error or 'not connected'}" for s in down)
        else:
            mqtt_ok = bool(served) and not down
            mqtt_why = (served[0].error if served else "") or "not connected"
        worker_ok = self._worker.is_alive()
        here = self._singletons
        detector_on = self.cfg.detection.enabled and here
        detector_ok = self._detector.is_alive() and not self._detector_error
        elsewhere = "runs in the process holding the singletons lock"
        drainer = self._drainer.parts() if here else [Part("drainer", True, elsewhere, False),
                                                      Part("influx", True, elsewhere, False)]
        return [
            Part("broker", mqtt_ok, "" if mqtt_ok else mqtt_why),
            Part("ingest", worker_ok and not self.stalled,
                 f"cannot commit: {self.stalled}" if self.stalled
                 else "" if worker_ok else "the ingest worker is not running"),
            *drainer,  # "drainer" and "influx", every target's
            Part("detector", detector_ok, "" if detector_ok else
                 self._detector_error or "the detector thread is not running", detector_on),
        ]

    def health(self) -> dict[str, Any]:
        parts = self.parts()
        up = {p.name: p.up for p in parts}
        influx = next(p for p in parts if p.name == "influx")
        doc = health_document(parts, {
            "ingest_stalled": self.stalled,
            "mqtt_connected": up["broker"],
            "influx_ok": up["influx"],
            "influx_error": influx.reason if influx.on else "",
            "outbox_depth": self._drainer.depth(),
            "influx_targets": self._drainer.targets_health() if self._singletons else {},
            "queue_depth": self._queue.qsize(),
        })
        if self._partitioned:
            doc["partitions"] = {"count": self.cfg.partitions.count,
                                 "own": list(self._own),
                                 "served": self.served_partitions(),
                                 "singletons": self._singletons}
        return doc

    def _start_http(self) -> None:
        app = build_app(self.cfg.http, self, self.health, self.metrics, self._mounts)
        self._http = WebServer(app, self.cfg.http)
        self._http.start()

    @property
    def http_port(self) -> int | None:
        return None if self._http is None else self._http.port


class _PartitionMetrics(MetricsCollector):
    """`evalterm_partition_served{partition}` (1 served here, 0 not) and
    `evalterm_singletons_held`, read from the service at scrape time."""

    def __init__(self, collector: Collector) -> None:
        self._c = collector

    def collect(self) -> Iterator[GaugeMetricFamily]:
        served = set(self._c.served_partitions())
        gauge = GaugeMetricFamily("evalterm_partition_served", "1 while this process serves the "
                                  "hall partition ([partitions])", labels=["partition"])
        for k in range(self._c.cfg.partitions.count):
            gauge.add_metric([str(k)], 1.0 if k in served else 0.0)
        yield gauge
        yield GaugeMetricFamily("evalterm_singletons_held", "1 while this process runs the "
                                "drainer, the detector and the manager (their lock held)",
                                value=1.0 if self._c.serves_singletons else 0.0)
