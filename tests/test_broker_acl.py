"""The broker files of `evalterm broker render`, on a real Mosquitto (2.0): who may connect,
publish and subscribe where; a reload keeps sessions and drops revoked devices."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import DebianLikeMosquitto, Dev, wait_for

from collector.db import connect
from collector.provision import pki
from collector.provision.broker import Listeners, render_broker
from collector.provision.devconfig import mqtt_password
from collector.provision.runner import ToolRunner
from collector.registry import Registry
from collector.sim.servers import free_port

P = "evalterm"
COLLECTOR = ("collector", "collector-secret-0123")
NOT_AUTHORIZED = 135  # MQTT v5 reason codes below 128 are successes (16: no subscribers)


class Client:
    """A paho client that records CONNACK, PUBACK and SUBACK reason codes and messages."""

    def __init__(self, port: int, user: str | None, password: str | None, *, v5: bool = True,
                 client_id: str | None = None) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connack: Any = None
        self.connects = 0
        self.disconnects = 0
        self.pubacks: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: setattr(self, "disconnects", self.disconnects + 1)
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, rcs)
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(lambda: self.connack is not None, 10, what="CONNACK")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.connects += 1

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> Any:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        return wait_for(lambda: self.pubacks.get(info.mid), 10, what=f"PUBACK on {topic}")

    def subscribe(self, *topics: str) -> list[int]:
        _, mid = self.c.subscribe([(t, 1) for t in topics])
        codes = wait_for(lambda: self.subacks.get(mid), 10, what="SUBACK")
        return [int(getattr(rc, "value", rc)) for rc in codes]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def hall(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A registry with kp-a (h1/w1), kp-b (h1/w2), kp-r (revoked), a broker on its files."""
    reg = Registry(connect(tmp_path / "state.db"))
    devs = {name: reg.add(name, "h1", window, 1) for name, window in
            (("kp-a", "w1"), ("kp-b", "w2"), ("kp-r", "w3"))}
    reg.revoke("kp-r", 2)
    out = tmp_path / "broker"
    runner = ToolRunner()
    pki.init_ca(tmp_path / "pki")
    pki.issue_server(tmp_path / "pki", ["localhost", "127.0.0.1"])
    lst = Listeners(local_port=free_port(), hall_port=free_port(), pki_dir=tmp_path / "pki")
    files = render_broker(runner, out, P, reg.list(), *COLLECTOR, halls=["h2"], listeners=lst)
    assert runner.calls == [("mosquitto_passwd", "-U", str(out / "passwd.tmp"))]
    server = DebianLikeMosquitto(tmp_path / "mosq", files.conf, lst.local_port).start()
    clients: list[Client] = []

    def client(user: str | None, password: str | None = None, **kw: Any) -> Client:
        if password is None and user in devs:
            password = mqtt_password(devs[user].key)
        c = Client(server.port, user, password, **kw)
        clients.append(c)
        return c

    yield {"reg": reg, "devs": devs, "server": server, "client": client, "out": out,
           "files": files, "tmp": tmp_path, "listeners": lst}
    for c in clients:
        c.close()
    server.stop()


def _dev(hall: dict[str, Any], name: str) -> Dev:
    d = hall["devs"][name]
    return Dev(P, d.device, d.key, hall=d.hall, window=d.window)


def test_rendered_files_list_active_devices_only(hall: dict[str, Any]) -> None:
    passwd = (hall["out"] / "passwd").read_text()
    users = sorted(line.split(":")[0] for line in passwd.splitlines())
    assert users == ["collector", "feed-h1", "feed-h2", "kp-a", "kp-b", "monitor", "ota"]
    assert "$7$" in passwd and mqtt_password(hall["devs"]["kp-a"].key) not in passwd  # hashed
    acl = (hall["out"] / "acl").read_text()
    assert "user kp-r" not in acl and "kp-r" not in acl
    assert "topic write evalterm/dev/h1/w1/kp-a/rating" in acl
    assert "topic read evalterm/dev/h1/w1/kp-a/cmd" in acl
    assert oct((hall["out"] / "passwd").stat().st_mode & 0o777) == "0o600"
    assert oct((hall["out"] / "service-users").stat().st_mode & 0o777) == "0o600"


def test_device_publishes_its_own_topics_and_the_collector_reads_them(
        hall: dict[str, Any]) -> None:
    collector = hall["client"](*COLLECTOR)
    # Exactly the collector's subscriptions (collector/service.py) are granted.
    granted = collector.subscribe(f"{P}/dev/+/+/+/rating", f"{P}/dev/+/+/+/event",
                                  f"{P}/dev/+/+/+/status", f"{P}/feed/+")
    assert granted == [1, 1, 1, 1]
    a = hall["client"]("kp-a")
    assert a.accepted
    dev = _dev(hall, "kp-a")
    for topic, payload in (dev.rating(5), dev.heartbeat([0] * 5), dev.status("online")):
        assert a.publish(topic, payload).value < 128
    wait_for(lambda: len(collector.messages) == 3, 10, what="three device messages")
    assert [t.rsplit("/", 1)[1] for t, _ in collector.messages] == ["rating", "event", "status"]


def test_publishing_as_another_device_is_refused_v5(hall: dict[str, Any]) -> None:
    collector = hall["client"](*COLLECTOR)
    collector.subscribe(f"{P}/dev/#")
    a = hall["client"]("kp-a")
    b = _dev(hall, "kp-b")
    forged_topic, forged = b.rating(5)  # well signed with b's key, but sent by a's login
    assert a.publish(forged_topic, forged).value == NOT_AUTHORIZED
    # Also refused: a's own id at another window, and the feed.
    assert a.publish(f"{P}/dev/h1/w2/kp-a/rating", b"{}").value == NOT_AUTHORIZED
    assert a.publish(f"{P}/feed/h1", b"{}").value == NOT_AUTHORIZED
    own_topic, own = _dev(hall, "kp-a").rating(4)
    assert a.publish(own_topic, own).value < 128
    wait_for(lambda: collector.messages, 10, what="kp-a's own rating")
    time.sleep(0.2)
    assert collector.messages == [(own_topic, own)]


def test_publishing_as_another_device_is_dropped_on_311(hall: dict[str, Any]) -> None:
    # MQTT 3.1.1 (what the firmware speaks) has no refusal in PUBACK: the broker acknowledges
    # and drops. A message sent after it on the same connection arrives; the forged one never
    # does, since the broker handles one connection's messages in order.
    collector = hall["client"](*COLLECTOR)
    collector.subscribe(f"{P}/dev/#")
    a = hall["client"]("kp-a", v5=False)
    forged_topic, forged = _dev(hall, "kp-b").rating(5)
    a.publish(forged_topic, forged)
    own_topic, own = _dev(hall, "kp-a").rating(4)
    a.publish(own_topic, own)
    wait_for(lambda: collector.messages, 10, what="the own rating")
    time.sleep(0.2)
    assert collector.messages == [(own_topic, own)]


@pytest.mark.parametrize("v5", [True, False])
def test_device_reads_only_its_own_commands(hall: dict[str, Any], v5: bool) -> None:
    a = hall["client"]("kp-a", v5=v5)
    assert a.subscribe(f"{P}/dev/h1/w1/kp-a/cmd") == [1]
    # Mosquitto 2.0 grants a subscription the ACL does not cover (SUBACK QoS 1) and then
    # checks read access per message: nothing of kp-b's reaches kp-a. A broker that refuses
    # the subscription outright (135 / 0x80) is just as good.
    refused = NOT_AUTHORIZED if v5 else 0x80
    assert a.subscribe(f"{P}/dev/h1/w2/kp-b/cmd") in ([1], [refused])
    assert a.subscribe(f"{P}/dev/#") in ([1], [refused])
    collector = hall["client"](*COLLECTOR)
    assert collector.publish(f"{P}/dev/h1/w2/kp-b/cmd", b"for b").value < 128
    assert collector.publish(f"{P}/dev/h1/w1/kp-a/cmd", b"for a").value < 128
    wait_for(lambda: a.messages, 10, what="a's command")
    time.sleep(0.2)
    # (v5 delivers once per matching subscription: own cmd and dev/# both match)
    assert set(a.messages) == {(f"{P}/dev/h1/w1/kp-a/cmd", b"for a")}


def test_revoked_wrong_password_and_anonymous_cannot_connect(hall: dict[str, Any]) -> None:
    revoked = hall["client"]("kp-r")  # the right password of a revoked device
    assert revoked.connack.is_failure and revoked.connack.value in (134, 135)
    stranger = hall["client"]("kp-a", "not-the-derived-password")
    assert stranger.connack.is_failure
    anonymous = hall["client"](None)
    assert anonymous.connack.is_failure
    old311 = hall["client"]("kp-r", v5=False)
    assert not old311.accepted


def test_update_user_serves_chunks_and_reads_progress_only(hall: dict[str, Any]) -> None:
    """`evalterm device update` (collector/ota) connects as `ota`: it reads the devices' chunk
    requests, events and status, writes their cmd topics, and reads no ratings."""
    users = dict(line.split(":", 1) for line in
                 (hall["out"] / "service-users").read_text().splitlines()
                 if not line.startswith("#"))
    ota = hall["client"]("ota", users["ota"])
    assert ota.accepted
    assert ota.subscribe(f"{P}/dev/+/+/+/ota", f"{P}/dev/+/+/+/event") == [1, 1]
    ota.subscribe(f"{P}/dev/+/+/+/rating")  # granted or not, nothing may arrive (below)
    a = hall["client"]("kp-a")
    base = f"{P}/dev/h1/w1/kp-a"
    assert a.publish(f"{base}/ota", b'{"id":1}').value < 128  # a chunk request
    assert a.publish(f"{P}/dev/h1/w2/kp-b/ota", b"{}").value == NOT_AUTHORIZED
    topic, payload = _dev(hall, "kp-a").rating(5)
    assert a.publish(topic, payload).value < 128
    wait_for(lambda: len(ota.messages) == 1, 10, what="the chunk request")
    time.sleep(0.3)
    assert [t for t, _ in ota.messages] == [f"{base}/ota"]
    a.subscribe(f"{base}/cmd")
    assert ota.publish(f"{base}/cmd", b"\xe7chunk").value < 128
    wait_for(lambda: a.messages, 10, what="the chunk at the device")
    assert ota.publish(f"{P}/feed/h1", b"{}").value == NOT_AUTHORIZED


def test_business_system_writes_only_its_halls_feed(hall: dict[str, Any]) -> None:
    users = dict(line.split(":", 1) for line in
                 (hall["out"] / "service-users").read_text().splitlines()
                 if not line.startswith("#"))
    feed = hall["client"]("feed-h1", users["feed-h1"])
    assert feed.accepted
    assert feed.publish(f"{P}/feed/h1", b"{}").value < 128
    assert feed.publish(f"{P}/feed/h2", b"{}").value == NOT_AUTHORIZED
    assert feed.publish(f"{P}/dev/h1/w1/kp-a/cmd", b"{}").value == NOT_AUTHORIZED
    feed.subscribe(f"{P}/dev/+/+/+/rating")  # granted or not, nothing may arrive (below)
    a = hall["client"]("kp-a")
    topic, payload = _dev(hall, "kp-a").rating(5)
    assert a.publish(topic, payload).value < 128
    time.sleep(0.3)
    assert feed.messages == []


def test_rendering_again_keeps_the_feed_passwords(hall: dict[str, Any]) -> None:
    before = (hall["out"] / "service-users").read_text()
    files = render_broker(ToolRunner(), hall["out"], P, hall["reg"].list(), *COLLECTOR,
                          halls=["h2"], listeners=hall["listeners"])
    assert files.new_service_users == []
    assert (hall["out"] / "service-users").read_text() == before


def test_reload_keeps_sessions_admits_new_and_drops_revoked(hall: dict[str, Any]) -> None:
    reg: Registry = hall["reg"]
    collector = hall["client"](*COLLECTOR, client_id="collector-1")
    collector.subscribe(f"{P}/dev/#")
    a = hall["client"]("kp-a", v5=False)
    b = hall["client"]("kp-b", v5=False)
    new = reg.add("kp-c", "h1", "w1", 3)
    cfail = hall["client"]("kp-c", mqtt_password(new.key))
    assert cfail.connack.is_failure  # not in the broker's files yet

    reg.revoke("kp-a", 4)
    render_broker(ToolRunner(), hall["out"], P, reg.list(), *COLLECTOR, halls=["h2"],
                  listeners=hall["listeners"])
    os.kill(hall["server"].proc.pid, signal.SIGHUP)

    # The revoked device's open connection is closed by the reload...
    wait_for(lambda: a.disconnects >= 1, 10, what="kp-a disconnected by the reload")
    # ...while the others keep their sessions: no reconnect, and messages keep flowing.
    topic, payload = Dev(P, "kp-b", hall["devs"]["kp-b"].key, hall="h1", window="w2").rating(3)
    b.publish(topic, payload)
    wait_for(lambda: (topic, payload) in collector.messages, 10, what="kp-b after the reload")
    assert collector.connects == 1 and collector.disconnects == 0
    assert b.connects == 1 and b.disconnects == 0
    c = hall["client"]("kp-c", mqtt_password(new.key))
    assert c.accepted
    again = hall["client"]("kp-a")
    assert again.connack.is_failure


def test_partition_users_have_the_collectors_password_and_rights(tmp_path: Path) -> None:
    """[partitions] count = 2: `collector-p0` and `collector-p1` connect with the collector's
    password, subscribe their halls' explicit filters and read the devices' messages; a
    partition user the count does not have is refused, and rendering with count 1 drops them."""
    reg = Registry(connect(tmp_path / "state.db"))
    kp = reg.add("kp-a", "h1", "w1", 1)
    runner = ToolRunner()
    pki.init_ca(tmp_path / "pki")
    pki.issue_server(tmp_path / "pki", ["localhost", "127.0.0.1"])
    lst = Listeners(local_port=free_port(), hall_port=free_port(), pki_dir=tmp_path / "pki")
    out = tmp_path / "broker"
    files = render_broker(runner, out, P, reg.list(), *COLLECTOR, listeners=lst, partitions=2)
    users = sorted(line.split(":")[0] for line in (out / "passwd").read_text().splitlines())
    assert users == ["collector", "collector-p0", "collector-p1", "feed-h1", "kp-a", "monitor",
                     "ota"]
    acl = (out / "acl").read_text()
    assert "user collector-p1\ntopic read evalterm/dev/+/+/+/rating" in acl
    server = DebianLikeMosquitto(tmp_path / "mosq", files.conf, lst.local_port).start()
    clients: list[Client] = []
    try:
        p1 = Client(server.port, "collector-p1", COLLECTOR[1], client_id="collector-p1")
        clients.append(p1)
        assert p1.accepted
        assert p1.subscribe(f"{P}/dev/h1/+/+/rating", f"{P}/feed/h1") == [1, 1]
        wrong = Client(server.port, "collector-p0", "not-the-password")
        clients.append(wrong)
        assert not wrong.accepted
        none = Client(server.port, "collector-p2", COLLECTOR[1])
        clients.append(none)
        assert not none.accepted
        a = Client(server.port, "kp-a", mqtt_password(kp.key))
        clients.append(a)
        dev = Dev(P, "kp-a", kp.key, "h1", "w1")
        assert a.publish(*dev.rating(5)).value < 128
        wait_for(lambda: len(p1.messages) == 1, 10, what="the rating at partition 1's client")
        render_broker(runner, out, P, reg.list(), *COLLECTOR, listeners=lst, partitions=1)
        assert "collector-p" not in (out / "passwd").read_text()
        assert "collector-p" not in (out / "service-users").read_text()
    finally:
        for c in clients:
            c.close()
        server.stop()
