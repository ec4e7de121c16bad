"""Message builders shared by the tests."""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from collector.config import Config
from collector.influx import influxql
from collector.protocol import (
    device_topic,
    event_message,
    feed_message,
    feed_topic,
    heartbeat_message,
    rating_message,
    status_message,
)
from collector.sim.servers import MosquittoServer, PostgresServer

T0 = 1_764_201_600_000  # 2025-11-27 00:00 UTC, a fixed clock for deterministic tests


def txn_msg(txn: str, window: str = "w1", completed: int = T0, staff: str = "s1",
            service: str = "sfz", event_id: str | None = None) -> dict[str, Any]:
    return json.loads(feed_message(
        "txn_completed", id=event_id or f"ev-{txn}", window=window, ts=completed, txn=txn,
        staff={"id": staff, "name": "张伟", "badge": "010233"},
        service={"code": service, "name": "居民身份证换领"},
        started=completed - 300_000, completed=completed, outcome="completed"))


def feed_bytes(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, ensure_ascii=False).encode()


def feed(prefix: str, hall: str = "h1") -> str:
    return feed_topic(prefix, hall)


class Dev:
    """A device identity that builds correctly signed messages."""

    def __init__(self, prefix: str, device: str, key: bytes, hall: str = "h1", window: str = "w1",
                 boot: int = 1) -> None:
        self.prefix, self.device, self.key = prefix, device, key
        self.hall, self.window, self.boot = hall, window, boot
        self.seq = 0

    def topic(self, kind: str) -> str:
        return device_topic(self.prefix, self.hall, self.window, self.device, kind)

    def envelope(self, ts: int | None = None) -> dict[str, Any]:
        """The next message's common members (dev, boot, seq, ts, up) as builder arguments."""
        self.seq += 1
        return {"dev": self.device, "boot": self.boot, "seq": self.seq, "ts": ts,
                "up": 1000 + self.seq}

    def rating(self, level: int, txn: str | None = None, ts: int | None = None,
               reason: str | None = None, **extra: Any) -> tuple[str, bytes]:
        if level <= 2 and reason is None:
            reason = "wait"
        fields: dict[str, Any] = {"level": level, "txn": txn, "reason": reason,
                                  "rt": 3000 if txn else None,
                                  "mode": "invited" if txn else "standalone", **extra}
        topic = self.topic("rating")
        return topic, rating_message(self.key, topic, **self.envelope(ts), **fields)

    def heartbeat(self, keys: list[int], ts: int | None = None) -> tuple[str, bytes]:
        topic = self.topic("event")
        return topic, heartbeat_message(
            self.key, topic, **self.envelope(ts), fw="1.0.0", rssi=-60, heap_free=50000,
            outbox=0, discards=0, reconnects=0, keys=keys, uninvited=0, state="idle")

    def event(self, type_: str, data: dict[str, Any], ts: int | None = None) -> tuple[str, bytes]:
        topic = self.topic("event")
        return topic, event_message(self.key, topic, **self.envelope(ts), type=type_, data=data)

    def status(self, state: str) -> tuple[str, bytes]:
        topic = self.topic("status")
        return topic, status_message(self.key, topic, **self.envelope(), state=state, fw="1.0.0")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}")


def query(cfg: Config, q: str) -> list[dict[str, Any]]:
    """Rows of an InfluxQL query as dicts (all series concatenated, tags merged in)."""
    try:
        series = influxql(cfg.influx.url, cfg.influx.database, q)
    except ValueError as exc:
        if "database not found" in str(exc):
            return []
        raise
    rows = []
    for s in series:
        for values in s["values"]:
            row = dict(zip(s["columns"], values, strict=True))
            row.update(s.get("tags") or {})
            rows.append(row)
    return rows


class Publisher:
    """A plain MQTT client that publishes with QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.received: list[mqtt.MQTTMessage] = []
        self.client.on_message = lambda _c, _u, m: self.received.append(m)

    def publish(self, topic: str, payload: bytes | str | dict[str, Any]) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"broker did not acknowledge publish on {topic}"

    def subscribe(self, topic: str) -> None:
        result, _ = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class DebianLikeMosquitto(MosquittoServer):
    """Mosquitto with a main config shaped like Debian's /etc/mosquitto/mosquitto.conf, which
    includes conf.d/, where the rendered evalterm.conf is linked. No listener of its own."""

    def __init__(self, root: Path, rendered: Path, local_port: int) -> None:
        super().__init__(root, port=local_port)
        self.rendered = rendered

    def write_conf(self) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        confd = self.root / "conf.d"
        confd.mkdir(exist_ok=True)
        link = confd / "evalterm.conf"
        link.unlink(missing_ok=True)
        link.symlink_to(self.rendered)
        self.conf.write_text(
            f"pid_file {self.root}/mosquitto.pid\n"
            "persistence true\n"
            f"persistence_location {self.root}/data/\n"
            "log_dest stdout\n"
            f"user {getpass.getuser()}\n"
            f"include_dir {confd}\n")


class PgPair:
    """A primary with one synchronous streaming standby (`synchronous_commit = on`: a commit
    returns once the standby has flushed it). `promote_standby()` makes the standby the primary
    and clears its synchronous_standby_names, which it copied from the old primary: otherwise
    every commit there would wait for a standby it no longer has."""

    def __init__(self) -> None:
        self.primary = PostgresServer("primary").init()
        with open(self.primary.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("synchronous_commit = on\n")
        self.primary.start()
        # Before the base backup, so the standby inherits it (postgresql.auto.conf) as a real
        # standby would: promote_standby() has to clear it.
        self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.primary.sql("SELECT pg_reload_conf()")
        self.standby = PostgresServer("standby")
        self.standby.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port),
                         "-U", "postgres", "-D", str(self.standby.data), "-R", "-X", "stream",
                         "--no-sync")
        with open(self.standby.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(f"\nport = {self.standby.port}\nunix_socket_directories = "
                    f"'{self.standby.root}'\ncluster_name = 'standby'\n")
        self.standby.start()
        wait_for(lambda: self.primary.sql(
            "SELECT sync_state FROM pg_stat_replication") == [("sync",)], timeout=60)

    def url(self, db: str = "postgres") -> str:
        """Both servers, the writable one chosen (as [state] url would name them)."""
        return (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:"
                f"{self.standby.port}/{db}?target_session_attrs=read-write")

    def promote_standby(self) -> None:
        self.primary.stop("immediate")
        self.standby.run("pg_ctl", "-D", str(self.standby.data), "-w", "-t", "60", "promote")
        self.standby.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        self.standby.sql("SELECT pg_reload_conf()")
        wait_for(lambda: self.standby.sql("SHOW synchronous_standby_names") == [("",)])

    def destroy(self) -> None:
        self.standby.destroy()
        self.primary.destroy()
