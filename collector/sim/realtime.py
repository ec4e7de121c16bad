"""A simulated service hall that speaks the real protocol over the real broker, in real time.

Both sides of a hall: the business system (staff sign on, transactions complete and are published
on the feed topic, windows pause) and one evaluation device per window: a paho client with its
own key and last will, running the firmware's own terminal (`collector.sim.device.SimTerminal`
runs etfw.terminal, etfw.message and etfw.command). Citizens answer invitations the way they do
in `detect evaluate` (`collector.sim.profiles.citizen_presses`): after a human delay, not always,
with a level drawn from the window's true satisfaction.

Windows are drawn like the evaluation's (`collector.sim.profiles.draw_window`): very different
true quality and volume, some of them honest and excellent. A window may carry a manipulation
profile (`collector.sim.profiles.PROFILES`) with its parameters drawn from the same ranges; what
the device does is then done through the protocol: a self-rating is a rating published ~0.35-1.5 s
after the invitation, unplugging drops the connection without a goodbye (the broker publishes the
last will) and reboots with the next boot counter, a disabled bad-rating key produces and counts
nothing, suppressed 差评 are counted by the keys and never published, fill-ins and ratings during
a pause are stand-alone ratings, presses with nothing asked are `key_uninvited` events. The
profile's day (bursts, unplugging, pauses) is compressed into `cycle_s` seconds of real time.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from collector.clock import now_ms
from collector.errors import UsageError
from collector.protocol import feed_message, feed_topic
from collector.sim.device import SimTerminal
from collector.sim.profiles import (
    FW,
    PROFILES,
    TXN_PER_HOUR,
    WindowPlan,
    citizen_presses,
    draw_window,
    profile_episodes,
)

__all__ = ["HallSpec", "SimDevice", "SimHall", "WindowSpec", "default_hall", "parse_profiles"]

_LOG = logging.getLogger(__name__)
_MEAN_TXN_PER_HOUR = math.sqrt(TXN_PER_HOUR[0] * TXN_PER_HOUR[1])  # geometric mean


@dataclass
class WindowSpec:
    window: str
    device: str
    staff: list[tuple[str, str, str]]  # (id, name, badge)
    plan: WindowPlan  # true quality, coverage, response times, profile and its parameters
    rate_per_min: float = 6.0  # completed transactions per minute

    @property
    def levels(self) -> tuple[float, float, float, float, float]:
        return self.plan.levels

    @property
    def coverage(self) -> float:
        return self.plan.coverage


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


def parse_profiles(items: list[str] | None) -> dict[str, str]:
    """`["self_rating:w03", "fill_in_burst:w05"]` -> {"w03": "self_rating", ...}."""
    out: dict[str, str] = {}
    for item in items or []:
        profile, _, window = item.partition(":")
        if profile not in PROFILES or not window:
            raise UsageError(f"--profile {item!r}: give PROFILE:WINDOW, e.g. self_rating:w03; "
                             f"profiles: {', '.join(PROFILES)}")
        if window in out:
            raise UsageError(f"--profile {item!r}: window {window} already has a profile")
        out[window] = profile
    return out


def default_hall(hall: str = "hall01", windows: int = 6, rate_per_min: float = 6.0,
                 seed: int = 1, profiles: dict[str, str] | None = None,
                 busy: tuple[str, ...] = ()) -> HallSpec:
    """A hall of windows of very different true quality and volume (volume 2-14 transactions an
    hour in the evaluation, scaled so that the hall's windows average `rate_per_min` a minute),
    one or two of them honest and excellent, and the manipulation profiles given per window.
    The `busy` windows then run at the pace of the busiest one (the draw is unchanged)."""
    rng = random.Random(seed)
    profiles = dict(profiles or {})
    names = [f"w{i:02d}" for i in range(1, windows + 1)]
    unknown = set(profiles) - set(names)
    if unknown:
        raise UsageError(f"--profile: no window {', '.join(sorted(unknown))} in a hall of "
                         f"{windows} windows (w01..w{windows:02d})")
    honest = [w for w in names if w not in profiles]
    excellent = set(rng.sample(honest, min(len(honest), 1 + (windows >= 6))))
    spec = HallSpec(hall)
    for i, w in enumerate(names, 1):
        plan = draw_window(rng, hall, i, excellent=w in excellent,
                           profile=profiles.get(w, "honest"))
        plan.device = f"sim-{hall}-{w}"
        plan.staff = [(sid, rng.choice(_SURNAMES) + rng.choice(_GIVEN) + rng.choice(_GIVEN),
                       badge) for sid, _, badge in plan.staff]  # A/B roles
        rate = rate_per_min * plan.txn_per_hour / _MEAN_TXN_PER_HOUR
        spec.windows.append(WindowSpec(w, plan.device, plan.staff, plan, rate))
    top = max(w.rate_per_min for w in spec.windows)
    for ws in spec.windows:
        if ws.window in busy:
            ws.rate_per_min = top
    return spec


class SimDevice(SimTerminal):
    """A device over the real broker. Thread-safe: presses come from timers, commands from
    paho's thread, ticks and heartbeats from the hall's loop."""

    def __init__(self, prefix: str, hall: str, spec: WindowSpec, key: bytes, host: str, port: int,
                 rng: random.Random, *, username: str = "", password: str = "") -> None:
        self.rng = rng
        super().__init__(spec.plan, key, prefix, hall)
        self.spec = spec
        self.host, self.port, self.username, self.password = host, port, username, password
        self.lock = threading.RLock()
        self.sent: list[dict[str, Any]] = []  # ratings published (for tests and the demo)
        self.acked = 0
        self._acked_lock = threading.Lock()
        self.invites = 0
        self.truth: dict[str, int] = {}  # what the profile did (ground truth)
        self.on_invite: Any = None  # callback(device, shown_ms)
        self.tokens: list[int] = []  # drip: fake ratings due
        self.connected = False
        self._timers: list[threading.Timer] = []
        self.refused = ""  # the broker's reason when it refused the connection
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.plan.device,
                             protocol=mqtt.MQTTv311, clean_session=True)
        if self.username:
            client.username_pw_set(self.username, self.password)
        # The last will is this boot's offline status, signed now (as the firmware does).
        will = self._signed("status", {"state": "offline", "fw": FW}, now_ms())
        client.will_set(self.topic("status"), will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def note(self, what: str, n: int = 1) -> None:
        self.truth[what] = self.truth.get(what, 0) + n

    def _send(self, topic: str, payload: bytes, t: int) -> None:
        if topic.endswith("/rating"):
            self.sent.append(json.loads(payload))
        self.client.publish(topic, payload, qos=1)

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        if self.powered:
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            _LOG.error("device %s refused by broker: %s", self.plan.device, reason)
            self.refused = str(reason)
            return
        client.subscribe(self.topic("cmd"), qos=1)
        with self.lock:
            self.connected = True
            client.publish(self.topic("status"), self._signed(
                "status", {"state": "online", "fw": FW}, now_ms()), qos=1, retain=True)
            for topic, payload in self.outbox:  # flash outbox: original stamps
                self._send(topic, payload, 0)
            self.outbox.clear()

    def _on_disconnect(self, *_a: Any) -> None:
        with self.lock:
            self.connected = False

    def _on_publish(self, *_a: Any) -> None:
        # Not under self.lock: paho calls this holding its outgoing-message mutex, which a
        # publish() from another thread holding self.lock waits for (a lock-order deadlock
        # that hung test_simulated_hall_links_ratings). Its own lock, taken by nothing else.
        with self._acked_lock:
            self.acked += 1

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = now_ms()
        with self.lock:
            txn = self.command(bytes(msg.payload), msg.topic, now)
            if txn is not None:
                self.invites += 1
        if txn is not None and self.on_invite is not None:
            self.on_invite(self, now)

    def press_at(self, delay_ms: int, key: int) -> None:
        """A key pressed `delay_ms` from now (by a citizen or by staff)."""
        t = threading.Timer(delay_ms / 1000, self.press_now, args=(key,))
        t.daemon = True
        with self.lock:
            self._timers = [x for x in self._timers if x.is_alive()] + [t]
        t.start()

    def press_now(self, key: int) -> None:
        with self.lock:
            self.press(key, now_ms())

    def tick_now(self) -> None:
        with self.lock:
            self.tick(now_ms())

    def heartbeat_now(self) -> None:
        with self.lock:
            self.heartbeat(now_ms())

    def set_standalone(self, on: bool) -> None:
        with self.lock:
            self.standalone = on

    def unplug(self) -> None:
        """Power cut: the connection drops without a DISCONNECT, so the broker publishes the
        last will; nothing is pressed or sent until `plug_in`."""
        with self.lock:
            if not self.powered:
                return
            self.connected = False
            self._keep_held()
            self._power_down()
            client = self.client
        client.loop_stop()
        sock = client.socket()
        if sock is not None:
            sock.close()

    def network(self, up: bool) -> None:
        """Wi-Fi lost (the connection drops without a goodbye) or back; powered throughout."""
        with self.lock:
            if not self.powered or up == (self.client is not None and self.connected):
                return
            if up:
                self.client = self._new_client()
            else:
                self.connected = False
                client = self.client
        if up:
            self.start()
            return
        client.loop_stop()
        sock = client.socket()
        if sock is not None:
            sock.close()

    def plug_in(self) -> None:
        """Power back: the next boot counter, a boot event, a new connection."""
        with self.lock:
            if self.powered:
                return
            self._power_up(now_ms())
            self.client = self._new_client()
        self.start()

    def ratings_sent(self) -> int:
        with self.lock:
            return len(self.sent)


class SimHall:
    """Runs the business system and the devices of one hall in real time."""

    def __init__(self, spec: HallSpec, keys: dict[str, bytes], host: str, port: int, *,
                 prefix: str = "evalterm", seed: int = 7,
                 delay_s: tuple[float, float] | None = None, cycle_s: float = 600.0,
                 feed_username: str = "", feed_password: str = "",
                 device_password: Callable[[bytes], str] | None = None) -> None:
        """`device_password`: a secured broker's password for a device from its key (each
        device then authenticates as itself); none for an open broker."""
        self.spec = spec
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.delay_s = delay_s  # citizens' response time range (default: each window's own)
        self.cycle_s = cycle_s  # one business day of the profiles, compressed
        self.devices = [
            SimDevice(prefix, spec.hall, w, keys[w.device], host, port,
                      random.Random(self.rng.random()),
                      username=w.device if device_password else "",
                      password=device_password(keys[w.device]) if device_password else "")
            for w in spec.windows
        ]
        for d in self.devices:
            d.apply_profile(True)
            d.on_invite = self._citizen
        self.feed = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                client_id=f"sim-business-{spec.hall}", protocol=mqtt.MQTTv311)
        if feed_username:
            self.feed.username_pw_set(feed_username, feed_password)
        self._feed_user, self._feed_refused = feed_username, ""
        self.started = False
        self.host, self.port = host, port
        self.completed = 0
        self._serial = 0
        self._feed_lock = threading.Lock()
        self._actions: list[tuple[int, int, SimDevice, str, int]] = []
        self.paused: set[str] = set()  # windows showing 暂停服务: no transactions complete
        self._stop = threading.Event()

    def _feed(self, msg: dict[str, Any]) -> None:
        with self._feed_lock:
            self._serial += 1
            payload = feed_message(id=f"sim-{now_ms()}-{self._serial}", **msg)
            self.feed.publish(feed_topic(self.prefix, self.spec.hall), payload, qos=1)

    def refusals(self, timeout_s: float = 5.0) -> list[str]:
        """After `start`: who the broker refused (or did not answer) within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._feed_refused or all(d.connected or d.refused for d in self.devices):
                break
            time.sleep(0.05)
        out = [f"business system ({self._feed_user or 'anonymous'}): {self._feed_refused}"
               ] if self._feed_refused else []
        for d in self.devices:
            if d.refused:
                out.append(f"device {d.plan.device}: {d.refused}")
            elif not d.connected:
                out.append(f"device {d.plan.device}: no answer from the broker")
        return out

    def _on_feed_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._feed_refused = str(reason)

    def start(self) -> None:
        self.feed.on_connect = self._on_feed_connect
        self.feed.connect(self.host, self.port, keepalive=30)
        self.started = True
        self.feed.loop_start()
        for d in self.devices:
            d.start()
        now = now_ms()
        for w in self.spec.windows:
            sid, name, badge = w.staff[0]
            self._feed({"kind": "staff_signon", "window": w.window, "ts": now,
                        "staff": {"id": sid, "name": name, "badge": badge}})

    def complete_transaction(self, w: WindowSpec) -> str:
        now = now_ms()
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

    def _citizen(self, dev: SimDevice, shown: int) -> None:
        """An invitation showed at `dev`: the citizen (and staff, by profile) press keys."""
        plan, rng = dev.plan, dev.rng  # this device's generator: paho calls in its own thread

        def rt() -> int:
            if self.delay_s:
                return int(rng.uniform(*self.delay_s) * 1000)
            return int(350 + max(100.0, plan.rt_median_ms - 350)
                       * math.exp(rng.gauss(0, plan.rt_sigma)))  # as collector/sim/hall.py

        with dev.lock:
            level = rng.choices((1, 2, 3, 4, 5), weights=plan.levels)[0]
            rate = rng.random() < plan.coverage
            acts = citizen_presses(rng, plan, True, level, rate, rt, dev.note, tokens=dev.tokens)
        late = now_ms() - shown
        for after, action, arg in acts:
            if action == "press":
                dev.press_at(max(0, after - late), arg)
            else:
                with self._feed_lock:
                    self._serial += 1
                    heapq.heappush(self._actions, (shown + after, self._serial, dev, action, arg))

    def _plan_cycle(self, start_ms: int) -> None:
        """The profiles' episodes of one compressed business day from `start_ms`."""
        cycle_ms = int(self.cycle_s * 1000)
        half = cycle_ms // 2
        shifts = [(start_ms, start_ms + half), (start_ms + half, start_ms + cycle_ms)]
        minute_ms = max(1, cycle_ms // 450)  # 7.5 opening hours a day
        for d in self.devices:
            if d.plan.profile == "honest":
                continue
            for t, action, arg in profile_episodes(self.rng, d.plan, shifts, d.note, minute_ms):
                self._serial += 1
                heapq.heappush(self._actions, (t, self._serial, d, action, arg))

    def _do(self, d: SimDevice, action: str, arg: int) -> None:
        if action == "press":
            d.press_now(arg)
        elif action == "standalone":
            d.set_standalone(bool(arg))
        elif action == "token":
            d.tokens.append(now_ms())
        elif action == "network":
            d.network(bool(arg))
        elif action == "pause":
            (self.paused.add if arg else self.paused.discard)(d.plan.window)
            self._feed({"kind": "window_paused" if arg else "window_resumed",
                        "window": d.plan.window, "ts": now_ms(),
                        **({"reason": "休息"} if arg else {})})
        elif arg:
            d.plug_in()
        else:
            d.unplug()

    def run(self, duration_s: float, heartbeat_s: float = 60.0) -> None:
        """Complete transactions at each window's rate until `duration_s` passes or `stop()`."""
        start = time.monotonic()
        nxt = {w.window: start + self.rng.expovariate(w.rate_per_min / 60)
               for w in self.spec.windows}
        next_hb = start
        next_cycle = start
        while not self._stop.is_set() and time.monotonic() - start < duration_s:
            now = time.monotonic()
            if now >= next_cycle:
                self._plan_cycle(now_ms())
                next_cycle = now + self.cycle_s
            while self._actions and self._actions[0][0] <= now_ms():
                _, _, d, action, arg = heapq.heappop(self._actions)
                self._do(d, action, arg)
            for d in self.devices:
                d.tick_now()
            if now >= next_hb:
                for d in self.devices:
                    d.heartbeat_now()
                next_hb = now + heartbeat_s
            for w in self.spec.windows:
                if now >= nxt[w.window]:
                    if w.window not in self.paused:
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
        return sum(d.ratings_sent() for d in self.devices)

    def truth(self) -> dict[str, dict[str, int]]:
        """What each manipulated window's profile did (the simulator's ground truth)."""
        return {d.plan.window: dict(d.truth) for d in self.devices if d.plan.profile != "honest"}

    def describe(self) -> list[str]:
        """One line per window: its profile (or honest, excellent), volume and true quality."""
        out = []
        for w in self.spec.windows:
            p = w.plan
            kind = p.profile + (" (excellent)" if p.excellent else "")
            out.append(f"{w.window}: {kind}, {w.rate_per_min:.1f} transactions/min, true 差评 "
                       f"{p.levels[0] + p.levels[1]:.1%}, 非常满意 {p.levels[4]:.0%}, "
                       f"coverage {p.coverage:.0%}")
        return out
