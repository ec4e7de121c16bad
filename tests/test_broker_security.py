"""Attacks on the broker as `evalterm broker render` configures it, one test each, against a real
Mosquitto (2.0) started like Debian's: its main config includes the rendered evalterm.conf, which
brings its own listeners (plain on 127.0.0.1, TLS with the `evalterm pki` certificates for the
hall). The attacker holds one keypad's credentials (docs/security.md)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import DebianLikeMosquitto, Dev, feed, feed_bytes, query, txn_msg, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import Config
from collector.db import connect
from collector.protocol import MAX_FEED_PAYLOAD
from collector.provision import pki
from collector.provision.broker import Listeners, max_packet_size, render_broker
from collector.provision.devconfig import mqtt_password
from collector.provision.runner import ToolRunner
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import free_port

P = "evalterm"
COLLECTOR = ("evalterm-collector", "collector-secret-0123")
HOSTS = ["localhost", "127.0.0.1", "127.0.0.2"]


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this host, if it has one."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None


class Client:
    """A paho client that records CONNACK, PUBACK reason codes, messages and disconnects."""

    def __init__(self, port: int, user: str | None, password: str | None, *,
                 client_id: str = "", host: str = "127.0.0.1", v5: bool = True,
                 ca: Path | None = None, cert: tuple[Path, Path] | None = None,
                 clean: bool = True, expiry: int = 0, wait: float = 10) -> None:
        kw: dict[str, Any] = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kw)
        if user is not None:
            self.c.username_pw_set(user, password)
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca), certfile=str(cert[1]) if cert else None,
                           keyfile=str(cert[0]) if cert else None,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.connack: Any = None
        self.session_present: bool | None = None
        self.connects = self.disconnects = 0
        self.disconnect_reasons: list[Any] = []
        self.pubacks: dict[int, Any] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
        self.c.reconnect_delay_set(60, 120)  # no automatic reconnect within a test
        if v5:
            self.c.connect(host, port, clean_start=clean, properties=props)
        else:
            self.c.connect(host, port)
        self.c.loop_start()
        wait_for(lambda: self.connack is not None, wait, what="CONNACK")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.session_present = flags.session_present
        self.connects += 1

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.disconnects += 1
        self.disconnect_reasons.append(reason)

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes) -> Any:
        info = self.c.publish(topic, payload, qos=1)
        return wait_for(lambda: self.pubacks.get(info.mid), 10, what=f"PUBACK on {topic}")

    def subscribe(self, *topics: str) -> None:
        done: list[Any] = []
        self.c.on_subscribe = lambda *_a: done.append(1)
        self.c.subscribe([(t, 1) for t in topics])
        wait_for(lambda: done, 10, what="SUBACK")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    reg = Registry(connect(tmp_path / "state.db"))
    devs = {name: reg.add(name, "h1", window, 1) for name, window in
            (("kp-a", "w1"), ("kp-b", "w2"))}
    pki_dir = tmp_path / "pki"
    pki.init_ca(pki_dir)
    other = _other_address()
    pki.issue_server(pki_dir, HOSTS + ([other] if other else []))
    state: dict[str, Any] = {"reg": reg, "devs": devs, "pki": pki_dir, "tmp": tmp_path,
                             "other": other, "clients": [], "server": None}

    def start(**kw: Any) -> DebianLikeMosquitto:
        lst = Listeners(local_port=free_port(), hall_port=free_port(), pki_dir=pki_dir, **kw)
        files = render_broker(ToolRunner(), tmp_path / "broker", P, reg.list(), *COLLECTOR,
                              listeners=lst)
        if state["server"] is not None:
            state["server"].stop()
        server = DebianLikeMosquitto(tmp_path / "mosq", files.conf, lst.local_port)
        server.hall_port = lst.hall_port  # type: ignore[attr-defined]
        state["server"] = server.start()
        _wait_tcp("127.0.0.1", lst.hall_port)
        return server

    def client(user: str | None, password: str | None = None, *, tls: bool = False,
               **kw: Any) -> Client:
        if password is None and user in devs:
            password = mqtt_password(devs[user].key)
        server = state["server"]
        port = server.hall_port if tls or "ca" in kw else server.port
        if tls and "ca" not in kw:
            kw["ca"] = pki_dir / "ca-bundle.crt"
        c = Client(port, user, password, **kw)
        state["clients"].append(c)
        return c

    state.update(start=start, client=client)
    yield state
    for c in state["clients"]:
        c.close()
    if state["server"] is not None:
        state["server"].stop()


def _wait_tcp(host: str, port: int) -> None:
    def up() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False
    wait_for(up, 10, what=f"{host}:{port} listening")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _refused(stack: dict[str, Any], user: str, **kw: Any) -> bool:
    """True if the connection fails: in the TLS handshake, by a TLS alert after it (TLS 1.3
    checks the client's certificate after the client's side of the handshake), or at CONNECT."""
    try:
        c = stack["client"](user, wait=3, **kw)
    except (ssl.SSLError, OSError):
        return True
    except AssertionError:  # no CONNACK: the broker closed the connection
        return True
    return not c.accepted


def _dev(stack: dict[str, Any], name: str) -> Dev:
    d = stack["devs"][name]
    return Dev(P, d.device, d.key, hall=d.hall, window=d.window)


def _collector(stack: dict[str, Any]) -> Client:
    """The collector as collector/service.py connects: MQTT 5, its client id, a persistent
    session, the four subscriptions."""
    c = stack["client"](*COLLECTOR, client_id=COLLECTOR[0], clean=False, expiry=3600)
    assert c.accepted
    c.subscribe(f"{P}/dev/+/+/+/rating", f"{P}/dev/+/+/+/event", f"{P}/dev/+/+/+/status",
                f"{P}/feed/+")
    return c


def test_plain_listener_is_on_loopback_only_and_the_hall_listener_everywhere(
        stack: dict[str, Any]) -> None:
    server = stack["start"]()
    conf = (stack["tmp"] / "broker" / "evalterm.conf").read_text()
    assert f"listener {server.port} 127.0.0.1\n" in conf
    assert f"listener {server.hall_port}\n" in conf  # no address: every interface
    assert _reachable("127.0.0.1", server.port)
    # 127.0.0.2 is loopback too, but not the address the plain listener is bound to: a socket
    # bound to 127.0.0.1 answers nothing else, so no other interface reaches it either.
    assert not _reachable("127.0.0.2", server.port)
    assert _reachable("127.0.0.2", server.hall_port)
    if stack["other"]:
        assert not _reachable(stack["other"], server.port)
        assert _reachable(stack["other"], server.hall_port)
        hall = stack["client"]("kp-a", host=stack["other"], tls=True)
        assert hall.accepted


def test_taking_over_the_collectors_client_id_with_device_credentials_is_refused(
        stack: dict[str, Any]) -> None:
    stack["start"]()
    collector = _collector(stack)
    # The attacker: kp-a's own password, the collector's client id, over the hall listener.
    attacker = stack["client"]("kp-a", client_id=COLLECTOR[0], tls=True, clean=True)
    assert attacker.accepted  # admitted as kp-a: the broker replaced its client id
    b = stack["client"]("kp-b", v5=False, client_id="kp-b", tls=True)
    topic, payload = _dev(stack, "kp-b").rating(1)
    b.publish(topic, payload)
    wait_for(lambda: (topic, payload) in collector.messages, 10, what="kp-b's rating")
    time.sleep(0.3)
    assert collector.connects == 1 and collector.disconnects == 0
    # Its session is its own still: away, it gets what was published meanwhile.
    collector.close()
    topic2, payload2 = _dev(stack, "kp-b").rating(2)
    b.publish(topic2, payload2)
    back = _collector(stack)
    assert back.session_present is True
    wait_for(lambda: (topic2, payload2) in back.messages, 10, what="the queued rating")


def test_taking_over_another_devices_client_id_is_refused(stack: dict[str, Any]) -> None:
    stack["start"]()
    collector = _collector(stack)
    b = stack["client"]("kp-b", v5=False, client_id="kp-b", tls=True)
    will_seen = []
    for _ in range(3):
        a = stack["client"]("kp-a", v5=False, client_id="kp-b", tls=True)
        assert a.accepted
        a.close()
    time.sleep(0.3)
    assert b.connects == 1 and b.disconnects == 0
    will_seen = [t for t, _ in collector.messages if t.endswith("/kp-b/status")]
    assert will_seen == []


def test_a_device_cannot_publish_on_another_devices_topics_over_tls(
        stack: dict[str, Any]) -> None:
    stack["start"]()
    collector = _collector(stack)
    a = stack["client"]("kp-a", tls=True)
    forged_topic, forged = _dev(stack, "kp-b").rating(5)
    assert a.publish(forged_topic, forged).value == 135  # not authorized
    own_topic, own = _dev(stack, "kp-a").rating(4)
    assert a.publish(own_topic, own).value < 128
    wait_for(lambda: collector.messages, 10, what="kp-a's own rating")
    time.sleep(0.2)
    assert collector.messages == [(own_topic, own)]


def test_messages_over_the_size_limit_are_refused(stack: dict[str, Any]) -> None:
    stack["start"]()
    collector = _collector(stack)
    # MQTT 3.1.1, as the firmware speaks: over the payload limit, the broker completes the QoS
    # flow (PUBACK) and drops the message. (Over MQTT 5 it answers with a failure reason code
    # that paho 2.2 cannot parse.)
    a = stack["client"]("kp-a", tls=True, v5=False)
    topic = _dev(stack, "kp-a").topic("rating")
    a.publish(topic, b"x" * (MAX_FEED_PAYLOAD + 1))
    # Over the packet limit (16 MiB): the sender is disconnected.
    big = stack["client"]("kp-b", tls=True)
    big.c.publish(_dev(stack, "kp-b").topic("rating"), b"y" * (16 << 20), qos=1)
    wait_for(lambda: big.disconnects >= 1, 30, what="the 16 MiB sender disconnected")
    own_topic, own = _dev(stack, "kp-a").rating(3)
    a.publish(own_topic, own)
    wait_for(lambda: collector.messages, 10, what="the normal rating")
    time.sleep(0.2)
    assert collector.messages == [(own_topic, own)]
    conf = (stack["tmp"] / "broker" / "evalterm.conf").read_text()
    assert f"max_packet_size {max_packet_size(P)}\n" in conf


def test_tls_with_the_project_ca_connects_and_another_ca_is_refused(
        stack: dict[str, Any]) -> None:
    stack["start"]()
    good = stack["client"]("kp-a", tls=True, ca=stack["pki"] / "ca.crt")
    assert good.accepted
    elsewhere = stack["tmp"] / "elsewhere"
    pki.init_ca(elsewhere, cn="someone else's CA")
    with pytest.raises(ssl.SSLCertVerificationError):
        stack["client"]("kp-a", ca=elsewhere / "ca.crt")
    # And a broker with another CA's certificate is refused by a client pinned to ours.
    pki.issue_server(elsewhere, HOSTS)
    for name in ("server.crt", "server.key"):
        shutil.copy(elsewhere / name, stack["pki"] / name)
    stack["start"]()
    with pytest.raises(ssl.SSLCertVerificationError):
        stack["client"]("kp-a", tls=True, ca=stack["pki"] / "ca.crt")


def test_clients_pinned_to_the_old_or_the_new_ca_connect_during_a_rotation(
        stack: dict[str, Any]) -> None:
    old_ca = stack["tmp"] / "old-ca.crt"
    shutil.copy(stack["pki"] / "ca.crt", old_ca)
    pki.rotate_ca(stack["pki"])
    pki.issue_server(stack["pki"], HOSTS)
    stack["start"]()
    assert stack["client"]("kp-a", tls=True, ca=old_ca).accepted
    assert stack["client"]("kp-b", tls=True, ca=stack["pki"] / "ca.crt").accepted
    # Finished: the server certificate no longer chains to the old CA.
    pki.finish_rotation(stack["pki"])
    pki.issue_server(stack["pki"], HOSTS)
    stack["start"]()
    assert stack["client"]("kp-b", tls=True, ca=stack["pki"] / "ca.crt").accepted
    with pytest.raises(ssl.SSLCertVerificationError):
        stack["client"]("kp-a", tls=True, ca=old_ca)


def test_mutual_tls_takes_the_identity_from_the_certificate_and_honours_the_crl(
        stack: dict[str, Any]) -> None:
    cert_a = pki.issue_client(stack["pki"], "kp-a")
    stack["start"](mtls=True)
    collector = _collector(stack)  # loopback: password as before
    # kp-a's certificate, whatever user name and client id it claims: it is kp-a.
    a = stack["client"]("kp-b", "wrong", tls=True, cert=cert_a, client_id="evalterm-collector")
    assert a.accepted
    forged_topic, forged = _dev(stack, "kp-b").rating(5)
    assert a.publish(forged_topic, forged).value == 135
    own_topic, own = _dev(stack, "kp-a").rating(4)
    assert a.publish(own_topic, own).value < 128
    wait_for(lambda: (own_topic, own) in collector.messages, 10, what="kp-a's rating")
    assert collector.disconnects == 0
    # Without a certificate, with the right password: refused on the hall listener.
    assert _refused(stack, "kp-a", tls=True)
    # Revoked: refused once the broker reloads (SIGHUP re-reads the CRL; a connection that is
    # already open stays until it reconnects: re-render and reload after `device revoke` too).
    pki.revoke(stack["pki"], "kp-a")
    os.kill(stack["server"].proc.pid, signal.SIGHUP)
    wait_for(lambda: _refused(stack, "kp-a", tls=True, cert=cert_a), 10,
             what="the revoked certificate refused")
    cert_b = pki.issue_client(stack["pki"], "kp-b")  # not revoked: still admitted
    assert stack["client"]("kp-b", tls=True, cert=cert_b).accepted



def test_the_monitor_user_reads_device_status_only(stack: dict[str, Any]) -> None:
    stack["start"]()
    password = _service_password(stack["tmp"] / "broker" / "service-users", "monitor")
    monitor = stack["client"]("monitor", password)
    monitor.subscribe(f"{P}/#", "$SYS/broker/uptime")
    a = stack["client"]("kp-a", tls=True)
    dev = _dev(stack, "kp-a")
    for topic, payload in (dev.rating(5), dev.heartbeat([0] * 5), dev.status("online")):
        assert a.publish(topic, payload).value < 128
    wait_for(lambda: any(t.endswith("/status") for t, _ in monitor.messages), 10,
             what="the status at the monitor")
    wait_for(lambda: any(t.startswith("$SYS/") for t, _ in monitor.messages), 15,
             what="$SYS at the monitor")
    time.sleep(0.3)
    assert {t.rsplit("/", 1)[1] for t, _ in monitor.messages if t.startswith(P)} == {"status"}
    assert monitor.publish(dev.topic("status"), b"{}").value == 135  # read-only


@pytest.mark.servers
def test_during_takeover_attempts_every_rating_is_stored_once_and_no_window_is_flagged(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    """The framing attack of issue 14, with the real collector: while kp-a's holder keeps
    connecting with the collector's and with kp-b's client id, kp-b's citizens press 差评 and
    kp-c's press 5; every rating is stored exactly once, and the detector, which compares the
    heartbeats' key counters with what was published, flags nobody."""
    cfg = make_config(mqtt__username=COLLECTOR[0], mqtt__password=COLLECTOR[1],
                      mqtt__client_id=COLLECTOR[0], linking__grace_s=1,
                      detection__interval_s=1, detection__opening_hours="00:00-24:00",
                      detection__business_days="1-7",
                      # The test's citizens are a loop: 8 ratings in seconds, each 3 s after
                      # its transaction. Bursts and regular timing would flag that, rightly;
                      # they are not what the takeover attacks.
                      detection__burst_min=1000, detection__regular_min=1000)
    conn = connect(cfg.state_db)
    reg = Registry(conn)
    now = int(time.time() * 1000)
    regs = {name: reg.add(name, "h1", window, now) for name, window in
            (("kp-a", "w1"), ("kp-b", "w2"), ("kp-c", "w3"))}
    registered = reg.list()
    conn.close()
    prefix = cfg.mqtt.topic_prefix
    pki_dir = tmp_path / "pki"
    pki.init_ca(pki_dir)
    pki.issue_server(pki_dir, HOSTS)
    lst = Listeners(local_port=free_port(), hall_port=free_port(), pki_dir=pki_dir)
    files = render_broker(ToolRunner(), tmp_path / "broker", prefix, registered, *COLLECTOR,
                          listeners=lst)
    server = DebianLikeMosquitto(tmp_path / "mosq", files.conf, lst.local_port).start()
    clients: list[Client] = []
    collector = Collector(cfg.with_overrides(mqtt__port=lst.local_port))
    stop = threading.Event()
    try:
        collector.start()
        wait_for(lambda: collector.health()["mqtt_connected"], what="collector connected")
        time.sleep(0.3)
        devs = {n: Dev(prefix, n, r.key, hall="h1", window=r.window) for n, r in regs.items()}
        for n in ("kp-b", "kp-c"):
            clients.append(Client(lst.hall_port, n, mqtt_password(regs[n].key), client_id=n,
                                  v5=False, ca=pki_dir / "ca.crt"))
        b, c = clients
        pw_a = mqtt_password(regs["kp-a"].key)
        attempts = [0]

        def attack() -> None:
            while not stop.is_set():
                for victim in (COLLECTOR[0], "kp-b"):
                    try:
                        x = Client(lst.hall_port, "kp-a", pw_a, client_id=victim, v5=False,
                                   ca=pki_dir / "ca.crt", wait=5)
                        x.close()
                        attempts[0] += 1
                    except (OSError, AssertionError):
                        pass
        b.publish(*devs["kp-b"].heartbeat([0] * 5, ts=int(time.time() * 1000)))
        c.publish(*devs["kp-c"].heartbeat([0] * 5, ts=int(time.time() * 1000)))
        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        n = 8
        feed_user = Client(lst.local_port, "feed-h1", _service_password(files.service_users,
                                                                         "feed-h1"))
        clients.append(feed_user)
        for i in range(n):
            t = int(time.time() * 1000)
            for window in ("w2", "w3"):
                feed_user.publish(feed(prefix), feed_bytes(txn_msg(f"T-{window}-{i}", window,
                                                                   completed=t)))
            b.publish(*devs["kp-b"].rating(1, f"T-w2-{i}", ts=t + 500, reason="none"))
            c.publish(*devs["kp-c"].rating(5, f"T-w3-{i}", ts=t + 500))
            time.sleep(0.15)
        stop.set()
        attacker.join(20)
        assert attempts[0] >= 4
        last = int(time.time() * 1000)
        b.publish(*devs["kp-b"].heartbeat([n, 0, 0, 0, 0], ts=last))
        c.publish(*devs["kp-c"].heartbeat([0, 0, 0, 0, n], ts=last))

        def stored() -> list[dict[str, Any]]:
            rows = query(cfg, 'SELECT * FROM "rating"')
            return rows if len(rows) >= 2 * n and all(r.get("rating_id") for r in rows) else []
        rows = wait_for(stored, 60, what=f"{2 * n} ratings stored")
        time.sleep(1)
        rows = query(cfg, 'SELECT * FROM "rating"')
        assert len(rows) == len({r["rating_id"] for r in rows}) == 2 * n
        assert sorted(int(r["level"]) for r in rows) == [1] * n + [5] * n
        # The collector and kp-b were never kicked off.
        assert b.connects == 1 and b.disconnects == 0
        assert "already connected" not in server.log.read_text()

        def fresh() -> list[dict[str, Any]]:
            got = query(cfg, 'SELECT * FROM "integrity_verdict"')
            mine = [r for r in got if r["window"] in ("w2", "w3") and r["computed_ms"] > last
                    and r["period"] == "day"]
            return mine if {r["window"] for r in mine} == {"w2", "w3"} else []
        verdicts = wait_for(fresh, 60, what="verdicts computed after the last heartbeat")
        assert all(r["flagged"] == 0 for r in verdicts), [r.get("reasons_en") for r in verdicts]
        assert not any("差评" in (r.get("reasons_en") or "") for r in verdicts)
    finally:
        stop.set()
        for cl in clients:
            cl.close()
        collector.stop()
        server.stop()


def _service_password(path: Path, user: str) -> str:
    for line in path.read_text().splitlines():
        name, _, password = line.partition(":")
        if name == user:
            return password
    raise AssertionError(f"no {user} in {path}")
