"""Shared fixtures: private Mosquitto and InfluxDB servers, configs, a running collector.

The servers are the real Debian binaries (installed by scripts/setup.sh), started once per test
session on free loopback ports under a temporary folder. Tests are isolated from each other by a
topic prefix, an MQTT client id and an InfluxDB database of their own.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from collector.config import Config, load_config
from collector.devservers import InfluxServer, MosquittoServer
from collector.influx import influxql

_COUNTER = itertools.count(1)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path_factory.mktemp("influxd")).start()
    yield server
    server.stop()


@pytest.fixture
def make_config(tmp_path: Path, broker: MosquittoServer, influx: InfluxServer
                ) -> Callable[..., Config]:
    """A config of this test's own: prefix, client id, database, state folder."""
    n = next(_COUNTER)

    def make(**overrides: Any) -> Config:
        base = load_config(None, env={}).with_overrides(
            collector__data_dir=str(tmp_path / "collector"),
            mqtt__port=broker.port,
            mqtt__topic_prefix=f"t{n}",
            mqtt__client_id=f"collector-t{n}",
            influx__url=influx.url,
            influx__database=f"t{n}",
            influx__flush_interval_ms=20,
            influx__retry_max_s=1.0,
            http__listen="127.0.0.1:0",
            http__feed_token="test-feed-token-0123456789",
        )
        return base.with_overrides(**overrides) if overrides else base

    return make


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


@pytest.fixture
def publisher(broker: MosquittoServer) -> Iterator[Publisher]:
    p = Publisher(broker.port, f"test-pub-{next(_COUNTER)}")
    yield p
    p.close()
