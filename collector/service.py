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
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from starlette.routing import BaseRoute

from collector import outbox
from collector.clock import now_ms
from collector.config import Config
from collector.db import connect
from collector.drainer import DrainerMetrics, DrainerProcess
from collector.health import Part, PartsMetrics, health_document
from collector.ingest import Inbound, Ingest, Outcome
from collector.manager.run import ManagerRun
from collector.metrics import Metrics
from collector.mqttclient import BufferedClient
from collector.pgstate import redacted_url
from collector.protocol import feed_topic
from collector.web.app import COMMIT_TIMEOUT_S, build_app
from collector.web.server import WebServer

__all__ = ["Collector"]

_LOG = logging.getLogger(__name__)


class _Waiter:
    """An HTTP request waiting for its message to be committed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Outcome | None = None


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
        self._client = self._make_client()
        self._inflight_cmds: dict[int, int] = {}  # paho mid -> cmd_outbox id
        self._last_published_cmd = 0  # paho holds what it was given and resends until the PUBACK
        self._cmd_lock = threading.Lock()
        self._acked_cmds: queue.SimpleQueue[int] = queue.SimpleQueue()  # from paho's thread
        self._worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        self._mounts = tuple(mounts)
        self._http: WebServer | None = None
        self._mqtt_error = "not connected yet"  # why the broker link is down, while it is
        self._detector_error = ""  # why the last detection run failed, until one succeeds
        self.last_batch_ms = 0
        self.stalled = ""  # why the ingest worker cannot commit, while it cannot
        self._pruned_at = 0.0
        self._detector = threading.Thread(target=self._detect, name="detector", daemon=True)
        self._manager = threading.Thread(target=self._manage, name="manager", daemon=True)

    # -- MQTT ------------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client = BufferedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=m.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if m.username:
            client.username_pw_set(m.username, m.password or None)
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

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            _LOG.error("broker refused the connection: %s", reason)
            self._mqtt_error = f"the broker refused the connection: {reason}"
            return
        self._mqtt_error = ""
        _LOG.info("connected to the broker (session present: %s)", flags.session_present)
        self.metrics.mqtt_connected.set(1)
        prefix = self.cfg.mqtt.topic_prefix
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([
            (f"{prefix}/dev/+/+/+/rating", opts),
            (f"{prefix}/dev/+/+/+/event", opts),
            (f"{prefix}/dev/+/+/+/status", opts),
            (f"{prefix}/feed/+", opts),
        ])

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.metrics.mqtt_connected.set(0)
        self._mqtt_error = f"disconnected from the broker: {reason}"
        if not self._stop.is_set():
            _LOG.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        while not self._unacked.acquire(timeout=0.5):
            if self._stop.is_set():
                return  # not acknowledged: the broker delivers it again to the next run
        self._queue.put(Inbound("mqtt", msg.topic, bytes(msg.payload), self.clock(),
                                (msg.mid, msg.qos)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cmd_lock:
            row = self._inflight_cmds.pop(mid, None)
        if row is not None:
            # The ingest worker deletes it; this thread must not touch its connection. Not
            # through the message queue: an acknowledgement is not an inbound message.
            self._acked_cmds.put(row)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        m = self.cfg.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        props.ReceiveMaximum = m.receive_maximum
        if self.cfg.http.listen:  # first: a port in use stops the start-up before anything runs
            self._start_http()
        self._drainer.start()
        self._worker.start()
        if self.cfg.detection.enabled:
            self._detector.start()
        if self.cfg.manager.enabled:
            self._manager.start()
        self._client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                   properties=props)
        self._client.loop_start()
        _LOG.info("collector started (state %s)", redacted_url(str(self.cfg.state_target)))

    def stop(self) -> None:
        # The HTTP server first: requests in progress still get their commit from the worker.
        if self._http is not None:
            self._http.stop()
        self._stop.set()
        self._queue.put(None)
        self._worker.join(10)
        if self._detector.is_alive():
            self._detector.join(30)
        if self._manager.is_alive():
            self._manager.join(30)
        self._client.disconnect()
        self._client.loop_stop()
        self._drainer.stop()

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
                self._work_once()
                self._drainer.watch()
                self._prune_outbox()
            except Exception:  # never let the worker die: log, wait, go on
                _LOG.exception("ingest worker error")
                time.sleep(1)

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
            while not self._stop.is_set():
                started = self.clock()
                try:
                    run_detection(conn, self.cfg, started)
                    self._detector_error = ""
                except Exception as exc:
                    self._detector_error = f"{type(exc).__name__}: {exc}"[:200]
                    _LOG.exception("integrity detection failed; ingestion goes on")
                self._stop.wait(self.cfg.detection.interval_s)
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
            while not self._stop.is_set():
                try:
                    run.run_once()
                except Exception:
                    _LOG.exception("follow-up cases or the monthly report failed; "
                                   "ingestion goes on")
                self._stop.wait(self.cfg.manager.interval_s)
        finally:
            conn.close()

    def _work_once(self) -> None:
        """Take the queued messages (up to batch_max), or run the timer when nothing comes."""
        due = self.ingest.linker.next_due_ms()
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
            self._run(outbox.delete_commands, self._db, acked)
            self.metrics.commands_sent.inc(len(acked))

    def _process(self, items: list[Inbound]) -> None:
        self._forget_acked_commands()
        if items:
            started = time.monotonic()
            outcomes = self._run(self.ingest.process_batch, items, self.clock())
            _LOG.debug("committed a batch of %d messages in %.1f ms (%d waiting)", len(items),
                       (time.monotonic() - started) * 1000, self._queue.qsize())
            self.last_batch_ms = self.clock()
            for item, outcome in zip(items, outcomes, strict=True):
                if item.source == "mqtt":
                    mid, qos = item.token
                    self._client.ack(mid, qos)  # only now: its effects are committed
                    self._unacked.release()
                elif isinstance(item.token, _Waiter):
                    item.token.outcome = outcome
                    item.token.done.set()
            self._send_receipts(outcomes)
        self._run(self._publish_commands)

    def _send_receipts(self, outcomes: list[Outcome]) -> None:
        """Tell the devices what is committed, so they delete it from flash (protocol §5.1).
        Fire and forget: a receipt that is lost makes the device send the message again, and
        the replay is answered with a receipt again."""
        try:
            receipts = self.ingest.receipts(outcomes, self.clock())
        except Exception:  # a registry read failing: the devices resend, nothing is lost
            _LOG.exception("building receipts failed")
            return
        for topic, payload in receipts:
            self._client.publish(topic, payload, qos=1)
        self.metrics.receipts_sent.inc(len(receipts))

    def _publish_commands(self) -> None:
        now = self.clock()
        expired = []
        for row_id, topic, payload, expires in outbox.commands_after(self._db,
                                                                     self._last_published_cmd):
            if expires <= now:
                expired.append(row_id)
                self._last_published_cmd = row_id
                continue
            info = self._client.publish(topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                _LOG.warning("publishing a command failed (%s); retrying later", info.rc)
                break  # (NO_CONN: paho keeps a QoS 1 message and sends it on reconnect)
            self._last_published_cmd = row_id
            with self._cmd_lock:
                self._inflight_cmds[info.mid] = row_id
        if expired:
            outbox.delete_commands(self._db, expired)

    # -- HTTP --------------------------------------------------------------------------------------

    def submit_feed(self, hall: str, body: bytes, timeout: float = COMMIT_TIMEOUT_S
                    ) -> Outcome | None:
        waiter = _Waiter()
        topic = feed_topic(self.cfg.mqtt.topic_prefix, hall)
        self._queue.put(Inbound("http", topic, body, self.clock(), waiter))
        return waiter.outcome if waiter.done.wait(timeout) else None

    def parts(self) -> list[Part]:
        """Each part of the running service, up or down with the reason (collector/health.py
        turns them into /healthz and evalterm_part_up)."""
        mqtt_ok = self._client.is_connected()
        worker_ok = self._worker.is_alive()
        detector_on = self.cfg.detection.enabled
        detector_ok = self._detector.is_alive() and not self._detector_error
        return [
            Part("broker", mqtt_ok, "" if mqtt_ok else self._mqtt_error or "not connected"),
            Part("ingest", worker_ok and not self.stalled,
                 f"cannot commit: {self.stalled}" if self.stalled
                 else "" if worker_ok else "the ingest worker is not running"),
            *self._drainer.parts(),  # "drainer" and "influx", every target's
            Part("detector", detector_ok, "" if detector_ok else
                 self._detector_error or "the detector thread is not running", detector_on),
        ]

    def health(self) -> dict[str, Any]:
        parts = self.parts()
        up = {p.name: p.up for p in parts}
        influx = next(p for p in parts if p.name == "influx")
        return health_document(parts, {
            "ingest_stalled": self.stalled,
            "mqtt_connected": up["broker"],
            "influx_ok": up["influx"],
            "influx_error": influx.reason,
            "outbox_depth": self._drainer.depth(),
            "influx_targets": self._drainer.targets_health(),
            "queue_depth": self._queue.qsize(),
        })

    def _start_http(self) -> None:
        app = build_app(self.cfg.http, self, self.health, self.metrics, self._mounts)
        self._http = WebServer(app, self.cfg.http)
        self._http.start()

    @property
    def http_port(self) -> int | None:
        return None if self._http is None else self._http.port
