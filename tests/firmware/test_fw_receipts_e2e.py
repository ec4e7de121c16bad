"""End-to-end receipts (docs/protocol.md §5.1), tested whole: the firmware on the MicroPython
unix port, the real collector service, and Mosquitto running the files `evalterm broker
render` writes (started like Debian's, tests/helpers.py). In front of the broker's loopback
listener sits `Proxy`, a small MQTT-speaking man in the middle for the device's connection: it
forwards packets, or acknowledges a rating itself and drops it (a fake broker, a client that
took the collector's place), or drops the collector's receipts, or is down (the device
offline). Whatever it does, every rating is stored exactly once, and a device offline during a
pause and a resume ends up in the window's real state."""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import DebianLikeMosquitto, feed, feed_bytes, query, wait_for
from test_fw_e2e import Sim, device_config, mpy_dir, sims  # noqa: F401

from collector.config import Config
from collector.db import connect
from collector.provision import pki
from collector.provision.broker import Listeners, render_broker
from collector.provision.runner import ToolRunner
from collector.registry import Registry
from collector.service import Collector
from collector.sim.servers import free_port

pytestmark = pytest.mark.servers
COLLECTOR = ("evalterm-collector", "collector-secret-0123")


class Proxy:
    """An MQTT 3.1.1 man in the middle on 127.0.0.1 for the device: whole packets both ways.

    mode "forward": packets pass; "drop_ratings": a PUBLISH from the device on a rating topic
    is acknowledged here (PUBACK) and never forwarded; "drop_receipts": a receipt from the
    broker is acknowledged to the broker and never forwarded; "down": connections are refused.
    `cut()` closes every connection (the device sees its link die)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.mode = "forward"
        self.dropped: list[bytes] = []  # payloads kept from their destination
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        try:
            self._loop.run_until_complete(serve())
        except RuntimeError:  # stop(): the loop stopped under the server
            pass

    @staticmethod
    async def _packet(r: asyncio.StreamReader) -> bytes:
        head = await r.readexactly(1)
        n, shift, raw = 0, 0, b""
        while True:
            b = await r.readexactly(1)
            raw += b
            n |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        return head + raw + await r.readexactly(n)

    @staticmethod
    def _publish(p: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """(topic, payload, packet id or None) of a PUBLISH packet, else None."""
        if p[0] >> 4 != 3:
            return None
        i = 1
        while p[i] & 0x80:
            i += 1
        i += 1
        tlen = int.from_bytes(p[i:i + 2], "big")
        topic = p[i + 2:i + 2 + tlen]
        j = i + 2 + tlen
        pid = None
        if (p[0] >> 1) & 3:
            pid, j = p[j:j + 2], j + 2
        return topic, p[j:], pid

    async def _client(self, dr: asyncio.StreamReader, dw: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            dw.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            dw.close()
            return
        self._writers += [dw, uw]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       back: asyncio.StreamWriter, upward: bool) -> None:
            try:
                while True:
                    p = await self._packet(src)
                    pub = self._publish(p)
                    if pub is not None:
                        topic, payload, pid = pub
                        drop = (self.mode == "drop_ratings" and upward
                                and topic.endswith(b"/rating")) or \
                               (self.mode == "drop_receipts" and not upward
                                and b'"kind":"receipt"' in payload)
                        if drop:
                            self.dropped.append(payload)
                            if pid is not None:
                                back.write(b"\x40\x02" + pid)  # PUBACK, as the broker would
                            continue
                    dst.write(p)
                    await dst.drain()
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                for w in (dst, back):
                    w.close()

        await asyncio.gather(pump(dr, uw, dw, True), pump(ur, dw, uw, False))

    def cut(self) -> None:
        def close() -> None:
            for w in self._writers:
                w.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close)

    def stop(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def stack(tmp_path: pathlib.Path, make_config: Callable[..., Config]
          ) -> Iterator[dict[str, Any]]:
    """The rendered broker with device kp-r1 (window w1) registered; start_collector() starts
    the collector's service on its loopback listener; a Proxy in front of that listener."""
    cfg = make_config(mqtt__username=COLLECTOR[0], mqtt__password=COLLECTOR[1],
                      mqtt__client_id=COLLECTOR[0])
    conn = connect(cfg.state_db)
    dev = Registry(conn).add("kp-r1", "h1", "w1", int(time.time() * 1000))
    registered = Registry(conn).list()
    conn.close()
    pki_dir = tmp_path / "pki"
    pki.init_ca(pki_dir)
    pki.issue_server(pki_dir, ["localhost", "127.0.0.1"])
    # No autosave during the test: what the broker holds in memory when it is killed is lost
    # (docs/security.md, "Broker crash").
    lst = Listeners(local_port=free_port(), hall_port=free_port(), pki_dir=pki_dir,
                    autosave_s=3600)
    files = render_broker(ToolRunner(), tmp_path / "broker", cfg.mqtt.topic_prefix, registered,
                          *COLLECTOR, listeners=lst)
    server = DebianLikeMosquitto(tmp_path / "mosq", files.conf, lst.local_port).start()
    cfg = cfg.with_overrides(mqtt__port=lst.local_port)
    proxy = Proxy(lst.local_port)
    collectors: list[Collector] = []

    def start_collector() -> Collector:
        c = Collector(cfg)
        c.start()
        wait_for(lambda: c.health()["mqtt_connected"], what="collector connected")
        time.sleep(0.3)
        collectors.append(c)
        return c

    def stop_collector() -> None:
        collectors.pop().stop()

    yield {"cfg": cfg, "key": dev.key, "server": server, "proxy": proxy,
           "start_collector": start_collector, "stop_collector": stop_collector,
           "feed_password": _service_password(files.service_users, "feed-h1")}
    for c in collectors:
        c.stop()
    proxy.stop()
    server.stop()


def _service_password(path: pathlib.Path, user: str) -> str:
    for line in path.read_text().splitlines():
        name, _, password = line.partition(":")
        if name == user:
            return password
    raise AssertionError(f"no {user} in {path}")


def _device(stack: dict[str, Any], make: Callable[..., Sim], port: int | None = None,
            **over: Any) -> Sim:
    cfg = stack["cfg"]
    return make(device_config(cfg, "kp-r1", stack["key"], port or stack["proxy"].port,
                              standalone=True, min_interval_ms=0, thanks_ms=500, **over))


def _outbox(sim: Sim, n: int, after: int = 0, timeout: float = 60) -> int:
    try:
        return sim.wait_line(f"OUTBOX {n}", after, timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; device said: {sim.lines[-15:]}") from None


def _kept(sim: Sim) -> int:
    """What the device's outbox holds now (its last OUTBOX line)."""
    return int([ln for ln in sim.lines if ln.startswith("OUTBOX ")][-1].split()[1])


def _stored(cfg: Config) -> list[tuple[str, int, int, int]]:
    conn = connect(cfg.state_db)
    try:
        return conn.execute("SELECT device, boot, seq, level FROM rating ORDER BY seq").fetchall()
    finally:
        conn.close()


def _rated_once(cfg: Config, levels: list[int]) -> None:
    rows = wait_for(lambda: (r if len(r := _stored(cfg)) >= len(levels) else []), timeout=60,
                    what=f"{len(levels)} ratings in the state database")
    time.sleep(1.5)  # a second copy, if any, would land meanwhile
    rows = _stored(cfg)
    assert [r[3] for r in rows] == levels, rows
    assert len({(r[1], r[2]) for r in rows}) == len(rows)
    influx = wait_for(lambda: (r if len(r := query(cfg, 'SELECT * FROM "rating"')) >= len(levels)
                               else []), timeout=60, what="the ratings in InfluxDB")
    assert sorted(int(r["level"]) for r in influx) == sorted(levels)


def _rejected(c: Collector, reason: str) -> float:
    v = c.metrics.registry.get_sample_value("evalterm_rejected_total", {"reason": reason})
    return v or 0.0


def test_a_fake_broker_that_acknowledges_and_drops_a_rating_loses_nothing(
        stack: dict[str, Any], sims: Callable[..., Sim]) -> None:  # noqa: F811
    proxy: Proxy = stack["proxy"]
    collector = stack["start_collector"]()
    sim = _device(stack, sims)
    n = sim.wait_line("LINK 1")
    n = _outbox(sim, 0, n)  # the boot event: committed, receipted, gone from flash
    proxy.mode = "drop_ratings"
    sim.press(2)
    time.sleep(0.3)
    sim.press(4)  # its reason: "wait"
    n = sim.wait_line("STATE thanks", n)
    n = sim.wait_line("PUBLISHED", n)  # the 差评 went out; the fake broker sent its PUBACK
    wait_for(lambda: len(proxy.dropped) >= 1, what="the rating dropped")
    time.sleep(2)
    assert _stored(stack["cfg"]) == []  # nothing reached the collector...
    assert _kept(sim) == 1  # ...but the device still keeps it
    proxy.mode = "forward"  # the real broker again: the device reconnects and sends it again
    proxy.cut()
    sim.wait_line("LINK 0", n)
    n = sim.wait_line("LINK 1", n)
    _outbox(sim, 0, n)
    _rated_once(stack["cfg"], [2])
    dropped = json.loads(proxy.dropped[0])
    assert (dropped["level"], dropped["reason"]) == (2, "wait")
    assert _stored(stack["cfg"])[0][1:3] == (dropped["boot"], dropped["seq"])  # that one
    assert _rejected(collector, "replay") == 0  # the first copy never arrived


def test_a_lost_receipt_makes_a_duplicate_that_is_stored_once_and_confirmed_again(
        stack: dict[str, Any], sims: Callable[..., Sim]) -> None:  # noqa: F811
    proxy: Proxy = stack["proxy"]
    collector = stack["start_collector"]()
    sim = _device(stack, sims)
    n = sim.wait_line("LINK 1")
    n = _outbox(sim, 0, n)
    proxy.mode = "drop_receipts"
    for level in (5, 3):
        sim.press(level)
        n = sim.wait_line("STATE thanks", n)
        n = sim.wait_line("STATE idle", n)
    wait_for(lambda: len(_stored(stack["cfg"])) == 2, what="both committed")
    wait_for(lambda: len(proxy.dropped) >= 2, what="their receipts dropped")
    assert _kept(sim) == 2  # still kept: no receipt came
    proxy.mode = "forward"
    proxy.cut()
    n = sim.wait_line("LINK 1", n + 1)
    _outbox(sim, 0, n)
    _rated_once(stack["cfg"], [5, 3])
    assert _rejected(collector, "replay") >= 2  # the copies, refused and confirmed again


def test_a_broker_killed_between_its_puback_and_the_collectors_commit_loses_nothing(
        stack: dict[str, Any], sims: Callable[..., Sim]) -> None:  # noqa: F811
    server: DebianLikeMosquitto = stack["server"]
    stack["start_collector"]()
    stack["stop_collector"]()  # its session stays on the broker, which queues for it
    sim = _device(stack, sims, port=server.port)  # straight to the broker
    n = sim.wait_line("LINK 1")
    sim.press(4)
    n = sim.wait_line("STATE thanks", n)
    n = sim.wait_line("PUBLISHED 2", n)  # the boot event and the rating, acknowledged
    time.sleep(0.5)
    assert _kept(sim) == 2  # no receipt: the collector has committed nothing
    server.kill()  # SIGKILL: the queue for the collector was in memory only
    n = sim.wait_line("LINK 0", n)
    server.start()
    collector = stack["start_collector"]()
    # The device reconnects and sends both again (at once, or after its 30 s wait for a
    # receipt if it came back before the collector had subscribed again).
    _outbox(sim, 0, n, timeout=90)
    _rated_once(stack["cfg"], [4])
    assert _rejected(collector, "replay") == 0  # the broker really had lost them


def test_a_device_offline_during_pause_and_resume_ends_in_the_windows_real_state(
        stack: dict[str, Any], sims: Callable[..., Sim]) -> None:  # noqa: F811
    import paho.mqtt.client as mqtt

    proxy: Proxy = stack["proxy"]
    cfg = stack["cfg"]
    stack["start_collector"]()
    feeder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="feed-h1")
    feeder.username_pw_set("feed-h1", stack["feed_password"])
    feeder.connect("127.0.0.1", stack["server"].port)
    feeder.loop_start()
    events = iter(range(1, 100))

    def window(kind: str) -> None:
        msg = {"v": 1, "kind": kind, "id": f"ev-{next(events)}", "window": "w1",
               "ts": int(time.time() * 1000)}
        if kind == "window_paused":
            msg["reason"] = "lunch"
        feeder.publish(feed(cfg.mqtt.topic_prefix), feed_bytes(msg), qos=1).wait_for_publish(10)

    try:
        sim = sims(device_config(cfg, "kp-r1", stack["key"], proxy.port))
        n = sim.wait_line("LINK 1")
        # Paused while offline: paused when it comes back.
        proxy.mode = "down"
        proxy.cut()
        n = sim.wait_line("LINK 0", n)
        window("window_paused")
        time.sleep(1)
        proxy.mode = "forward"
        n = sim.wait_line("LINK 1", n)
        n = sim.wait_line("STATE paused", n)
        # Paused, then offline through the resume (and a pause and resume more): in service
        # when it comes back, as the window is.
        proxy.mode = "down"
        proxy.cut()
        n = sim.wait_line("LINK 0", n)
        for kind in ("window_resumed", "window_paused", "window_resumed"):
            window(kind)
        time.sleep(1)
        assert sim.lines[-1] != "STATE idle" and "STATE idle" not in sim.lines[n:]
        proxy.mode = "forward"
        n = sim.wait_line("LINK 1", n)
        sim.wait_line("STATE idle", n)
    finally:
        feeder.loop_stop()
        feeder.disconnect()
