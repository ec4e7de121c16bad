"""Shared fixtures: private Mosquitto and InfluxDB servers, configs, a running collector.

The servers are the real Debian binaries (installed by scripts/setup.sh), started once per test
session on free loopback ports under a temporary folder. Tests are isolated from each other by a
topic prefix, an MQTT client id and an InfluxDB database of their own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PgPair, PostgresServer, Publisher

from collector.config import Config, load_config
from collector.sim.servers import InfluxServer, MosquittoServer

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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the whole session; each test takes a database of its own
    (`state_target`, `pg_database`)."""
    server = PostgresServer("pg").init().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def state_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's state database is, once per backend: a file path, or a postgresql:// URL of
    a new database (collector.db.connect takes either)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture
def pg_pair() -> Iterator[PgPair]:
    """A primary with a synchronous standby, for this test alone (it may promote the standby)."""
    pair = PgPair()
    yield pair
    pair.destroy()


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


@pytest.fixture
def publisher(broker: MosquittoServer) -> Iterator[Publisher]:
    p = Publisher(broker.port, f"test-pub-{next(_COUNTER)}")
    yield p
    p.close()
