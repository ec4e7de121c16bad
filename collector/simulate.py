"""A simulated service hall that speaks the real protocol over the real broker.

Both sides of a hall: the business system (staff sign on, transactions complete and are published on
the feed topic) and one evaluation device per window (a paho client with its own key and last will,
that answers invitations the way citizens do: after a human delay, not always, with a level drawn
from the window's true satisfaction). It is the demo and the load generator.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from .protocol import REASON_TAGS, build_signed, device_topic, feed_topic, verify

__all__ = ["HallSpec", "SimDevice", "SimHall", "WindowSpec", "default_hall"]

_LOG = logging.getLogger(__name__)
FW = "sim-1.0"


@dataclass
class WindowSpec:
    window: str
    device: str
    staff: list[tuple[str, str, str]]  # (id, name, badge)
    # True satisfaction: probability of each level 1..5 for a citizen of this window.
    levels: tuple[float, float, float, float, float] = (0.02, 0.03, 0.10, 0.30, 0.55)
    rate_per_min: float = 6.0  # completed transactions per minute
    coverage: float = 0.9  # share of citizens who rate when invited


@dataclass
class HallSpec:
    hall: str
    windows: list[WindowSpec] = field(default_factory=list)
    services: list[tuple[str, str]] = field(default_factory=lambda: [
        ("sfz-hl", "居民身份证换领"), ("hk-qy", "户口迁移"), ("jz-bl", "居住证办理"),
        ("cr-qz", "出入境证件签注"), ("wfcl", "交通违法处理"),
    ])


_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平"


def default_hall(hall: str = "hall01", windows: int = 6, rate_per_min: float = 6.0,
                 seed: int = 1) -> HallSpec:
    """A hall of windows with different staff and different true quality."""
    rng = random.Random(seed)
    spec = HallSpec(hall)
    for i in range(1, windows + 1):
        w = f"w{i:02d}"
        staff = []
        for j in range(2):  # A/B roles
            sid = f"s{i:02d}{'ab'[j]}"
            name = rng.choice(_SURNAMES) + rng.choice(_GIVEN) + rng.choice(_GIVEN)
            staff.append((sid, name, f"{100000 + i * 10 + j}"))
        good = rng.uniform(0.35, 0.75)
        bad = rng.uniform(0.01, 0.08)
        rest = 1 - good - bad
        levels = (bad * 0.4, bad * 0.6, rest * 0.3, rest * 0.7, good)
        spec.windows.append(WindowSpec(w, f"sim-{hall}-{w}", staff, levels, rate_per_min,
                                       rng.uniform(0.8, 0.97)))
    return spec


class SimDevice:
    """A device answering invitations. Thread-safe; its paho loop runs in the background."""

    def __init__(self, prefix: str, hall: str, spec: WindowSpec, key: bytes, host: str, port: int,
                 rng: random.Random, *, boot: int = 1, delay_s: tuple[float, float] = (2.0, 8.0),
                 username: str = "", password: str = "") -> None:
        self.prefix, self.hall, self.spec, self.key = prefix, hall, spec, key
        self.rng = rng
        self.boot = boot
        self.seq = 0
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []  # ratings published (for tests and the demo summary)
        self.acked = 0
        self.invites = 0
        self.last_cseq = 0
        self.keys = [0, 0, 0, 0, 0]
        self._timers: list[threading.Timer] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=spec.device,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if username:
            self.client.username_pw_set(username, password)
        will = self._signed("status", {"state": "offline", "fw": FW})
        self.client.will_set(self.topic("status"), will, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.host, self.port = host, port

    def topic(self, kind: str) -> str:
        return device_topic(self.prefix, self.hall, self.spec.window, self.spec.device, kind)

    def _signed(self, kind: str, fields: dict[str, Any]) -> bytes:
        with self.lock:
            self.seq += 1
            seq = self.seq
        body = {"v": 1, "kind": kind, "dev": self.spec.device, "boot": self.boot, "seq": seq,
                "ts": int(time.time() * 1000), "up": int(time.monotonic() * 1000) % 2**31}
        body.update(fields)
        return build_signed(self.key, self.topic(kind), body)

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _LOG.error("device %s refused by broker: %s", self.spec.device, reason)
            return
        client.subscribe(self.topic("cmd"), qos=1)
        client.publish(self.topic("status"), self._signed("status", {"state": "online", "fw": FW}),
                       qos=1, retain=True)

    def _on_publish(self, *_a: Any) -> None:
        with self.lock:
            self.acked += 1

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if not verify(self.key, msg.topic, payload):
            _LOG.warning("device %s: command with a bad signature ignored", self.spec.device)
            return
        cmd = json.loads(payload)
        if cmd["cseq"] <= self.last_cseq:
            return
        self.last_cseq = cmd["cseq"]
        if cmd["cmd"] != "invite":
            return
        self.invites += 1
        if self.rng.random() > self.spec.coverage:
            return  # this citizen walks away without rating
        delay = self.rng.uniform(*self.delay_s)
        t = threading.Timer(delay, self.rate, args=(cmd["txn"], int(delay * 1000)))
        t.daemon = True
        self._timers = [x for x in self._timers if x.is_alive()] + [t]
        t.start()

    def draw_level(self) -> int:
        return self.rng.choices((1, 2, 3, 4, 5), weights=self.spec.levels)[0]

    def rate(self, txn: str | None, rt_ms: int | None, level: int | None = None) -> dict[str, Any]:
        level = level or self.draw_level()
        reason = self.rng.choice(REASON_TAGS[:-1]) if level <= 2 else None
        fields = {"level": level, "txn": txn, "reason": reason, "rt": rt_ms,
                  "mode": "invited" if txn else "standalone"}
        payload = self._signed("rating", fields)
        self.keys[level - 1] += 1
        self.client.publish(self.topic("rating"), payload, qos=1)
        record = json.loads(payload)
        with self.lock:
            self.sent.append(record)
        return record

    def heartbeat(self) -> None:
        data = {"fw": FW, "rssi": self.rng.randint(-75, -45), "heap_free": 61000, "outbox": 0,
                "discards": 0, "reconnects": 0, "keys": list(self.keys), "uninvited": 0,
                "state": "idle"}
        self.client.publish(self.topic("event"), self._signed("event", {"type": "heartbeat",
                                                                         "data": data}), qos=1)


class SimHall:
    """Runs the business system and the devices of one hall in real time."""

    def __init__(self, spec: HallSpec, keys: dict[str, bytes], host: str, port: int, *,
                 prefix: str = "evalterm", seed: int = 7, delay_s: tuple[float, float] = (2.0, 8.0),
                 feed_username: str = "", feed_password: str = "") -> None:
        self.spec = spec
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.devices = [
            SimDevice(prefix, spec.hall, w, keys[w.device], host, port,
                      random.Random(self.rng.random()), delay_s=delay_s)
            for w in spec.windows
        ]
        self.feed = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                client_id=f"sim-business-{spec.hall}", protocol=mqtt.MQTTv311)
        if feed_username:
            self.feed.username_pw_set(feed_username, feed_password)
        self.host, self.port = host, port
        self.completed = 0
        self._serial = 0
        self._stop = threading.Event()

    def _feed(self, msg: dict[str, Any]) -> None:
        self._serial += 1
        msg = {"v": 1, "id": f"sim-{int(time.time() * 1000)}-{self._serial}", **msg}
        self.feed.publish(feed_topic(self.prefix, self.spec.hall),
                          json.dumps(msg, ensure_ascii=False), qos=1)

    def start(self) -> None:
        self.feed.connect(self.host, self.port, keepalive=30)
        self.feed.loop_start()
        for d in self.devices:
            d.start()
        now = int(time.time() * 1000)
        for w in self.spec.windows:
            sid, name, badge = w.staff[0]
            self._feed({"kind": "staff_signon", "window": w.window, "ts": now,
                        "staff": {"id": sid, "name": name, "badge": badge}})

    def complete_transaction(self, w: WindowSpec) -> str:
        now = int(time.time() * 1000)
        self.completed += 1
        txn = f"{self.spec.hall.upper()}-{time.strftime('%Y%m%d')}-{self.completed:06d}"
        sid, name, badge = w.staff[0]
        code, sname = self.rng.choice(self.spec.services)
        self._feed({"kind": "txn_completed", "window": w.window, "ts": now, "txn": txn,
                    "staff": {"id": sid, "name": name, "badge": badge},
                    "service": {"code": code, "name": sname},
                    "started": now - self.rng.randint(120_000, 900_000), "completed": now,
                    "outcome": "completed"})
        return txn

    def run(self, duration_s: float, heartbeat_s: float = 60.0) -> None:
        """Complete transactions at each window's rate until `duration_s` passes or `stop()`."""
        start = time.monotonic()
        nxt = {w.window: start + self.rng.expovariate(w.rate_per_min / 60) for w in self.spec.windows}
        next_hb = start
        while not self._stop.is_set() and time.monotonic() - start < duration_s:
            now = time.monotonic()
            if now >= next_hb:
                for d in self.devices:
                    d.heartbeat()
                next_hb = now + heartbeat_s
            for w in self.spec.windows:
                if now >= nxt[w.window]:
                    self.complete_transaction(w)
                    nxt[w.window] = now + self.rng.expovariate(w.rate_per_min / 60)
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        for d in self.devices:
            d.stop()
        self.feed.disconnect()
        self.feed.loop_stop()

    def ratings_sent(self) -> int:
        return sum(len(d.sent) for d in self.devices)
