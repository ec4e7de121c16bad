"""End to end over TLS: the firmware on the MicroPython unix port (real sockets, mbedTLS,
umqtt.simple) against a real Mosquitto TLS listener whose certificates the test makes
(tlscerts.py). The device pins its CA(s); a broker with a certificate from another CA is
refused; during a CA rotation (old and new CA pinned) either one is accepted."""

from __future__ import annotations

import os
import pathlib
import re
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import query, wait_for
from test_fw_e2e import Sim, collector_for, device_config, mpy_dir, register, sims  # noqa: F401
from test_micropython import mpy_cross
from tlscerts import Pki, make_pki, tls_listener

from collector.config import Config
from collector.service import Collector
from collector.sim.servers import MosquittoServer, free_port

pytestmark = pytest.mark.servers
HERE = pathlib.Path(__file__).resolve().parent
# The smallest cap that connects is 90K (88K fails in the handshake); like the plain-MQTT
# tests, the cap keeps a margin over it, so that a retry on a fragmented heap still connects
# (docs/firmware.md, "The TLS session").
TLS_HEAP = os.environ.get("FW_TLS_HEAP", "100K")


def der(pem: pathlib.Path) -> str:
    """The CA as the device keeps it in flash: DER (this port's mbedTLS parses no PEM)."""
    out = pem.with_suffix(".der")
    out.write_bytes(x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(Encoding.DER))
    return str(out)


@pytest.fixture
def tls_broker(tmp_path: pathlib.Path, mpy_dir: pathlib.Path  # noqa: F811
               ) -> Iterator[tuple[MosquittoServer, dict[str, tuple[int, Pki]]]]:
    """One Mosquitto: plain TCP on loopback for the collector, a TLS listener with the hall
    CA's certificate, and one with a certificate of an unrelated CA (the impostor)."""
    mpy_cross(HERE / "ussl.py", mpy_dir, pathlib.Path("ussl.py"))
    hall = make_pki(tmp_path / "pki", "hall")
    other = make_pki(tmp_path / "pki", "other")
    ports = {"hall": (free_port(), hall), "other": (free_port(), other)}
    conf = "".join(tls_listener(port, pki) for port, pki in ports.values())
    mq = MosquittoServer(tmp_path / "mq", extra_conf=conf).start()
    wait_for(lambda: all(_listening(p) for p, _ in ports.values()), what="TLS listeners")
    yield mq, ports
    mq.stop()


def _listening(port: int) -> bool:
    import socket

    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _wait(sim: Sim, prefix: str, timeout: float = 30) -> int:
    try:
        return sim.wait_line(prefix, timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; device said: {sim.lines[-12:]}") from None


def _heap(line: str) -> int:
    m = re.search(r" heap (\d+)$", line)
    assert m, line
    return int(m.group(1))


def test_keypad_over_tls_rates_end_to_end(
        make_config: Callable[..., Config], tls_broker: tuple[MosquittoServer, dict],
        collector_for: Callable[[Config], Collector],  # noqa: F811
        sims: Callable[[dict], Sim]) -> None:  # noqa: F811
    mq, ports = tls_broker
    port, hall = ports["hall"]
    cfg = make_config(mqtt__port=mq.port)  # the collector: plain TCP on loopback
    key = register(cfg, "kp-tls1")
    collector_for(cfg)
    sim = sims(device_config(cfg, "kp-tls1", key, port, standalone=True, min_interval_ms=0,
                             broker={"host": "127.0.0.1", "port": port, "keepalive": 10,
                                     "timeout_s": 3, "topic_prefix": cfg.mqtt.topic_prefix,
                                     "tls": {"ca": [der(hall.ca)]}}), TLS_HEAP)
    n = _wait(sim, "LINK 1")
    print(f"\nTLS device: live heap after connect {_heap(sim.lines[n - 1]) / 1024:.1f} KiB")
    sim.press(4)
    _wait(sim, "STATE thanks")
    _wait(sim, "PUBLISHED 2")  # the boot event, then the rating
    try:
        rows = wait_for(lambda: query(cfg, 'SELECT * FROM "rating"'), timeout=90,
                        what="rating in InfluxDB")
    except AssertionError as e:
        rejected = query(cfg, "SELECT * FROM rejection")
        raise AssertionError(f"{e}; rejected: {rejected}; device: {sim.lines[-8:]}") from None
    assert [int(r["level"]) for r in rows] == [4]
    assert not [ln for ln in sim.lines if ln.startswith("LINKFAIL")], sim.lines


def test_keypad_refuses_a_broker_certified_by_another_ca(
        make_config: Callable[..., Config], tls_broker: tuple[MosquittoServer, dict],
        sims: Callable[[dict], Sim]) -> None:  # noqa: F811
    mq, ports = tls_broker
    (good_port, hall), (bad_port, other) = ports["hall"], ports["other"]
    cfg = make_config(mqtt__port=mq.port)
    key = register(cfg, "kp-tls2")

    def broker(port: int, cas: list[str]) -> dict:
        return {"host": "127.0.0.1", "port": port, "keepalive": 10, "timeout_s": 3,
                "topic_prefix": cfg.mqtt.topic_prefix, "tls": {"ca": cas}}

    # Pinned to the hall CA, pointed at the impostor: refused, with the reason, never online.
    refused = sims(device_config(cfg, "kp-tls2", key, bad_port,
                                 broker=broker(bad_port, [der(hall.ca)])), TLS_HEAP)
    _wait(refused, "LINKFAIL 2")
    fails = [ln for ln in refused.lines if ln.startswith("LINKFAIL")]
    assert all("tls: " in ln and "not correctly signed" in ln for ln in fails), fails
    assert not [ln for ln in refused.lines if ln.startswith("LINK 1")]
    # Rotation: the old and the new CA pinned, each broker certificate is accepted.
    for port in (good_port, bad_port):
        both = sims(device_config(cfg, "kp-tls2", key, port,
                                  broker=broker(port, [der(other.ca), der(hall.ca)])), TLS_HEAP)
        _wait(both, "LINK 1")
        both.stop()
    time.sleep(0.1)
