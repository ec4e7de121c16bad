"""A simulated hall in simulated time, with manipulation profiles, driving the real pipeline.

Unlike collector/simulate.py (real time, over a real broker), `VirtualHall` runs business days in
seconds: an event queue in simulated milliseconds, devices that build real signed messages
(`build_signed`) and follow the firmware's terminal rules (docs/protocol.md, firmware/etfw/
terminal.py), a business system that publishes transactions and staff events, and delivery into
`Ingest.process_batch(items, now_ms)`. Invitations come back from the collector's `cmd_outbox`,
signed, exactly as a device would receive them.

Every window has an honest behaviour drawn from wide ranges (volume, true quality, coverage,
reaction times, stray presses, pauses, network blips), and optionally one manipulation profile
from `PROFILES`, active from a given day on, with its own parameters drawn from ranges too.

The profiles are defined once, here, for both simulators: their parameter draws
(`draw_profile_params`), what a citizen and the staff press after an invitation
(`citizen_presses`), a profile's day besides invitations (`profile_episodes`) and the device's
terminal rules with what a manipulation changes in it (`SimTerminal`). collector/simulate.py runs
the same definitions in real time over the broker.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from .config import Config
from .db import connect
from .pipeline import Inbound, Ingest
from .protocol import build_signed, device_topic, feed_topic, verify
from .registry import Registry

__all__ = [
    "PROFILES",
    "TXN_PER_HOUR",
    "SimTerminal",
    "VirtualHall",
    "WindowPlan",
    "citizen_presses",
    "draw_hall",
    "draw_profile_params",
    "draw_window",
    "profile_episodes",
]

PROFILES = (
    "self_rating",           # staff press 5 themselves, right after the invitation
    "fill_in_burst",         # end-of-day fill-in: a run of stand-alone 5s after closing
    "selective_invitation",  # unhappy-looking citizens are talked out of rating
    "unplugging",            # device unplugged for stretches of opening hours
    "bad_key_disabled",      # keys 1-2 physically dead
    "rating_during_pause",   # window shown 暂停服务 while ratings are pressed
    "uninvited_pressing",    # staff keep pressing 5 with no invitation showing
    "suppressed_negatives",  # tampered firmware drops 1-2 ratings (keys still count)
)
FW = "sim-profile-1.0"
REASON_KEYS = ("attitude", "efficiency", "notice", "wait", "other")  # firmware default order
WILL_DELAY_MS = 45_000  # broker publishes the last will after 1.5 x keepalive (30 s)
MIN_INTERVAL_MS = 5_000  # firmware stand-alone repeat filter
REASON_TIMEOUT_MS = 20_000


@dataclass
class WindowPlan:
    window: str
    device: str
    staff: list[tuple[str, str, str]]
    levels: tuple[float, float, float, float, float]  # true level distribution 1..5
    txn_per_hour: float
    coverage: float
    rt_median_ms: float
    rt_sigma: float
    stray_press: float       # chance a citizen presses again after rating (outside invitation)
    pauses_per_day: float
    blips_per_day: float
    heartbeat_s: int
    excellent: bool = False
    profile: str = "honest"
    start_day: int = 0       # index of the first business day the profile is active
    params: dict[str, Any] = field(default_factory=dict)

    def active(self, day_index: int) -> bool:
        return self.profile != "honest" and day_index >= self.start_day


# A window's volume, transactions an hour (log-uniform between the two).
TXN_PER_HOUR = (2.0, 14.0)


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_window(rng: random.Random, hall: str, index: int, *, excellent: bool = False,
                profile: str = "honest", start_day: int = 0) -> WindowPlan:
    """An honest window drawn from wide ranges, then the profile's own parameters."""
    w = f"w{index:02d}"
    staff = [(f"s{index:02d}{x}", f"员工{index}{x}", f"{100000 + index * 10 + j}")
             for j, x in enumerate("ab")]
    if excellent:
        bad = rng.uniform(0.002, 0.01)
        top = rng.uniform(0.8, 0.95)
        coverage = rng.uniform(0.85, 0.98)
    else:
        bad = _loguniform(rng, 0.01, 0.10)
        top = rng.uniform(0.35, 0.8)
        coverage = rng.uniform(0.65, 0.97)
    rest = max(0.0, 1 - bad - top)
    levels = (bad * 0.4, bad * 0.6, rest * rng.uniform(0.2, 0.5), 0.0, top)
    levels = (levels[0], levels[1], levels[2], max(0.0, 1 - sum(levels)), top)
    plan = WindowPlan(
        window=w, device=f"vd-{hall}-{w}", staff=staff, levels=levels,
        txn_per_hour=_loguniform(rng, *TXN_PER_HOUR), coverage=coverage,
        rt_median_ms=rng.uniform(2200, 6000), rt_sigma=rng.uniform(0.35, 0.7),
        stray_press=rng.uniform(0.0, 0.04), pauses_per_day=rng.uniform(0.0, 2.0),
        blips_per_day=rng.uniform(0.0, 1.5), heartbeat_s=rng.randint(120, 200),
        excellent=excellent, profile=profile, start_day=start_day,
    )
    plan.params.update(draw_profile_params(rng, profile))
    return plan


def draw_profile_params(rng: random.Random, profile: str) -> dict[str, Any]:
    """The manipulation's own parameters, drawn from wide ranges (never shown to the detector).
    The one definition both simulators use (this module's `VirtualHall`, in simulated time, and
    collector/simulate.py, in real time over the broker)."""
    p: dict[str, Any] = {}
    if profile == "self_rating":
        p.update(share=rng.uniform(0.3, 0.8), mu_ms=rng.uniform(350, 1500),
                 sd_ms=rng.uniform(30, 250), five=rng.uniform(0.8, 1.0))
    elif profile == "fill_in_burst":
        p.update(presses=(rng.randint(5, 9), rng.randint(10, 20)), lunch=rng.uniform(0, 0.5))
    elif profile == "selective_invitation":
        p.update(dissuade=rng.uniform(0.7, 0.95), happy=rng.uniform(0.6, 0.95))
    elif profile == "unplugging":
        p.update(episodes=(rng.randint(2, 3), rng.randint(4, 6)), minutes=(10, rng.randint(25, 45)))
    elif profile == "bad_key_disabled":
        p.update(press_three=rng.uniform(0.2, 0.6))
    elif profile == "rating_during_pause":
        p.update(pauses=(1, 2), presses=(rng.randint(3, 4), rng.randint(5, 9)))
    elif profile == "uninvited_pressing":
        p.update(per_day=(rng.randint(6, 10), rng.randint(12, 25)))
    elif profile == "suppressed_negatives":
        p.update(drop=rng.uniform(0.7, 1.0))
    elif profile != "honest":
        raise ValueError(f"unknown profile {profile!r}")
    return p


Note = Callable[[str, int], None]  # (what the manipulation did, how many times): ground truth


def citizen_presses(rng: random.Random, plan: WindowPlan, active: bool, level: int, rate: bool,
                    rt: Callable[[], int], note: Note) -> list[tuple[int, int]]:
    """The key presses that follow one invitation, as (ms after it showed, key): the citizen's
    (`level`, if they `rate`; `rt()` draws their response time) and, by profile, the staff's.
    Presses on a dead key or while nothing is asked are still presses: the device decides."""
    p = plan.params
    if active and plan.profile == "self_rating" and rng.random() < p["share"]:
        staff_at = max(150, int(rng.gauss(p["mu_ms"], p["sd_ms"])))
        note("staff_rated", 1)
        out = [(staff_at, 5 if rng.random() < p["five"] else 4)]
        if rate and rng.random() < 0.3:  # the citizen tries anyway: a press with no invitation
            out.append((staff_at + rt(), level))
        return out
    if active and plan.profile == "selective_invitation":
        keep = p["happy"] if level >= 4 else 1 - p["dissuade"]
        if rate and rng.random() >= keep:
            note("not_invited" if level >= 4 else "unhappy_not_invited", 1)
            return []
    if not rate:
        return []
    t = rt()
    if active and plan.profile == "bad_key_disabled" and level <= 2:
        note("negatives_lost", 1)
        out = [(t, level)]  # dead key: nothing happens
        if rng.random() < p["press_three"]:
            out.append((t + rng.randint(1500, 5000), 3))
        return out
    out = [(t, level)]
    if level <= 2 and rng.random() < 0.8:
        t += rng.randint(2000, 9000)
        out.append((t, rng.randint(1, 5)))  # the reason tag
    if rng.random() < plan.stray_press:
        out.append((t + rng.randint(1000, 4000), rng.randint(1, 5)))
    return out


Action = tuple[int, str, int]  # (ms, "press" | "standalone" | "pause" | "power", key or 0/1)


def _standalone(times: list[int], key: int = 5) -> list[Action]:
    """Stand-alone mode switched on around a run of presses (the device rates each one)."""
    return ([(times[0] - 1000, "standalone", 1)] + [(t, "press", key) for t in times]
            + [(times[-1] + 1000, "standalone", 0)])


def profile_episodes(rng: random.Random, plan: WindowPlan, shifts: list[tuple[int, int]],
                     note: Note, minute_ms: int = 60_000) -> list[Action]:
    """What the profile does on one business day besides invitations, as timed actions:
    fill-in bursts, unplugging, ratings while paused, presses with nothing asked. `shifts` are
    the day's (morning, afternoon) opening stretches in ms; `minute_ms` how long a minute of
    the profile lasts (60 000; shorter in a compressed real-time day)."""
    p, out = plan.params, []
    if plan.profile == "fill_in_burst":
        at = (shifts[0][1] if rng.random() < p["lunch"] else shifts[1][1]) + rng.randint(
            1, 15) * minute_ms
        n = rng.randint(*p["presses"])
        note("filled_in", n)
        times = [at]
        for _ in range(n - 1):
            times.append(times[-1] + rng.randint(5200, 9000))  # the repeat filter is 5 s
        out += _standalone(times)
    elif plan.profile == "unplugging":
        for _ in range(rng.randint(*p["episodes"])):
            a, b = rng.choice(shifts)
            start = rng.randint(a, b - 10 * minute_ms)
            note("unplugged", 1)
            out.append((start, "power", 0))
            out.append((start + rng.randint(*p["minutes"]) * minute_ms, "power", 1))
    elif plan.profile == "rating_during_pause":
        second = minute_ms // 60
        for _ in range(rng.randint(*p["pauses"])):
            a, b = rng.choice(shifts)
            start = rng.randint(a, b - 60 * minute_ms)
            n = rng.randint(*p["presses"])
            note("rated_while_paused", n)
            times = [start + max(MIN_INTERVAL_MS, rng.randint(60, 180) * second)]
            for _ in range(n - 1):
                times.append(times[-1] + max(MIN_INTERVAL_MS + 200,
                                             rng.randint(60, 300) * second))
            out.append((start, "pause", 1))
            out += _standalone(times)
            out.append((times[-1] + max(MIN_INTERVAL_MS, rng.randint(60, 300) * second),
                        "pause", 0))
    elif plan.profile == "uninvited_pressing":
        n = rng.randint(*p["per_day"])
        note("uninvited_presses", n)
        for _ in range(n):
            out.append((rng.randint(shifts[0][0], shifts[1][1]), "press",
                        5 if rng.random() < 0.85 else 4))
    return out


def draw_hall(rng: random.Random, hall: str, n_windows: int, profiles: list[str],
              start_day: int) -> list[WindowPlan]:
    """`n_windows` windows: the given manipulated profiles, 1-3 honest excellent ones, the rest
    ordinary honest windows of very different quality and volume (positions shuffled)."""
    n_excellent = min(rng.randint(1, 3), n_windows - len(profiles))
    kinds = ([("honest", True)] * n_excellent + [(p, False) for p in profiles]
             + [("honest", False)] * (n_windows - n_excellent - len(profiles)))
    rng.shuffle(kinds)
    return [draw_window(rng, hall, i + 1, excellent=exc, profile=prof, start_day=start_day)
            for i, (prof, exc) in enumerate(kinds)]


# -- the device -----------------------------------------------------------------------------------


class SimTerminal:
    """The firmware's terminal rules (firmware/etfw/terminal.py and app.py: states, key
    counters, the 差评 held for its reason, stray presses counted and reported, stand-alone
    mode), emitting real signed messages, and what a manipulation changes in the device (dead
    keys, dropped 差评, a pause ignored). Shared by the simulated-time device below and by the
    real-time one (collector/simulate.py); a subclass supplies `rng`, `note` and `_send`, and
    calls every method with the time in ms."""

    prefix = hall = ""
    rng: random.Random

    def __init__(self, plan: WindowPlan, key: bytes) -> None:
        self.plan, self.key = plan, key
        self.boot, self.seq, self.boot_at = 1, 0, 0
        self.keys = [0, 0, 0, 0, 0]
        self.uninvited = self.filtered = 0
        self.state = "idle"          # idle, invited, reason, paused
        self.invite: tuple[str, int, int] | None = None  # txn, shown_at, expires_at
        self.pending: tuple[int, str | None, int | None, str] | None = None
        self.reason_until = 0
        self.last_accept: int | None = None
        self.last_uninvited_event: int | None = None
        self.standalone = False
        self.dead_keys: set[int] = set()
        self.drop_negatives = 0.0
        self.ignore_pause = False
        self.powered = True
        self.connected = True
        self.outbox: list[tuple[str, bytes]] = []
        self.last_cseq = 0

    def note(self, what: str, n: int = 1) -> None:
        """Ground truth: what the manipulation did (never shown to the detector)."""

    def _send(self, topic: str, payload: bytes, t: int) -> None:
        raise NotImplementedError

    def apply_profile(self, active: bool) -> None:
        """The device side of the window's profile, on or off."""
        profile = self.plan.profile if active else "honest"
        self.dead_keys = {1, 2} if profile == "bad_key_disabled" else set()
        self.drop_negatives = self.plan.params["drop"] if profile == "suppressed_negatives" else 0.0
        self.ignore_pause = profile == "rating_during_pause"

    def topic(self, kind: str) -> str:
        return device_topic(self.prefix, self.hall, self.plan.window, self.plan.device, kind)

    def _signed(self, kind: str, fields: dict[str, Any], t: int) -> bytes:
        self.seq += 1
        body = {"v": 1, "kind": kind, "dev": self.plan.device, "boot": self.boot, "seq": self.seq,
                "ts": t, "up": max(0, t - self.boot_at)}
        body.update(fields)
        return build_signed(self.key, self.topic(kind), body)

    def _emit(self, kind: str, fields: dict[str, Any], t: int) -> None:
        if not self.powered:
            return
        msg = (self.topic(kind), self._signed(kind, fields, t))
        if self.connected:
            self._send(*msg, t)
        else:
            self.outbox.append(msg)  # flash outbox: sent after the reconnect, original stamps

    # -- power (unplugging) --
    def _keep_held(self) -> None:
        """A power cut while a 差评 waits for its reason: the firmware has it on flash (an H
        record, reason "none", signed at the press) and sends it after the reboot."""
        if self.pending is not None and self.powered:
            level, txn, rt, mode = self.pending
            self.pending = None
            self._rating(level, txn, "none", rt, mode, self.reason_until - REASON_TIMEOUT_MS)

    def _power_down(self) -> None:
        self.powered = False
        self.state, self.invite, self.pending = "idle", None, None

    def _power_up(self, t: int) -> None:
        self.powered = True
        self.boot += 1
        self.seq, self.boot_at = 0, t
        self._emit("event", {"type": "boot", "data": {"fw": FW, "reset_cause": "power_on"}}, t)

    def heartbeat(self, t: int) -> None:
        data = {"fw": FW, "rssi": -60, "heap_free": 60000, "outbox": len(self.outbox),
                "discards": 0, "reconnects": 0, "keys": list(self.keys),
                "uninvited": self.uninvited, "state": self.state, "filtered": self.filtered}
        self._emit("event", {"type": "heartbeat", "data": data}, t)

    # -- commands --
    def command(self, payload: bytes, topic: str, t: int) -> str | None:
        """A command from the collector; returns the transaction of an invitation shown."""
        if not (self.powered and self.connected) or not verify(self.key, topic, payload):
            return None
        cmd = json.loads(payload)
        if cmd["cseq"] <= self.last_cseq:
            return None
        self.last_cseq = cmd["cseq"]
        self.tick(t)
        name = cmd["cmd"]
        if name == "invite":
            if self.state == "paused":
                return None
            self._flush_pending(t)
            self.invite = (cmd["txn"], t, t + cmd["ttl"] * 1000)
            self.state = "invited"
            return str(cmd["txn"])
        if name == "pause" and not self.ignore_pause:
            self._flush_pending(t)
            self.state, self.invite = "paused", None
        elif name == "resume" and self.state == "paused":
            self.state = "idle"
        return None

    # -- keys --
    def tick(self, t: int) -> None:
        """Time passes: an invitation expires, a reason prompt times out."""
        if self.state == "invited" and self.invite and t >= self.invite[2]:
            self._emit("event", {"type": "invite_expired", "data": {"txn": self.invite[0]}},
                       self.invite[2])
            self.state, self.invite = "idle", None
        elif self.state == "reason" and t >= self.reason_until:
            self._flush_pending(self.reason_until)

    def _rating(self, level: int, txn: str | None, reason: str | None, rt: int | None, mode: str,
                t: int) -> None:
        self.last_accept = t
        if level <= 2 and self.drop_negatives and self.rng.random() < self.drop_negatives:
            # tampered firmware: the 差评 never leaves the device
            self.note("negatives_dropped")
            if reason not in (None, "none"):
                self.note("negatives_dropped_with_reason")
            return
        self._emit("rating", {"level": level, "txn": txn, "reason": reason, "rt": rt,
                              "mode": mode}, t)

    def _flush_pending(self, t: int) -> None:
        if self.pending is not None:
            level, txn, rt, mode = self.pending
            self.pending = None
            self._rating(level, txn, "none", rt, mode, t)
        if self.state == "reason":
            self.state = "idle"

    def _accept(self, level: int, txn: str | None, rt: int | None, mode: str, t: int) -> None:
        if level <= 2:
            self.pending = (level, txn, rt, mode)
            self.reason_until = t + REASON_TIMEOUT_MS
            self.state = "reason"
        else:
            self._rating(level, txn, None, rt, mode, t)
            self.state = "idle"

    def press(self, key: int, t: int) -> None:
        if not self.powered or key in self.dead_keys:
            return
        self.tick(t)
        self.keys[key - 1] += 1
        if self.state == "invited" and self.invite:
            txn, shown, _ = self.invite
            self.invite = None
            self._accept(key, txn, t - shown, "invited", t)
        elif self.state == "reason" and self.pending:
            level, txn, rt, mode = self.pending
            self.pending = None
            self.state = "idle"
            self._rating(level, txn, REASON_KEYS[key - 1], rt, mode, t)
        elif self.standalone and self.state == "idle":
            if self.last_accept is not None and t - self.last_accept < MIN_INTERVAL_MS:
                self.filtered += 1
                return
            self._accept(key, None, None, "standalone", t)
        else:
            self.uninvited += 1
            last = self.last_uninvited_event
            if last is None or t - last >= 1000:
                self.last_uninvited_event = t
                self._emit("event", {"type": "key_uninvited",
                                     "data": {"key": key, "state": self.state}}, t)


class _Device(SimTerminal):
    """The terminal in simulated time: messages reach the hall's event queue after a delay, the
    broker's last will after 1.5 x keepalive."""

    def __init__(self, hall: VirtualHall, plan: WindowPlan, key: bytes) -> None:
        super().__init__(plan, key)
        self.h = hall
        self.prefix, self.hall, self.rng = hall.prefix, hall.hall, hall.rng
        self.will: bytes | None = None

    def note(self, what: str, n: int = 1) -> None:
        self.h.note(self.plan.window, what, n)

    def _send(self, topic: str, payload: bytes, t: int) -> None:
        self.h.deliver(t + self.rng.randint(20, 400), topic, payload)

    # -- connectivity --
    def connect(self, t: int) -> None:
        self.connected = True
        self.will = self._signed("status", {"state": "offline", "fw": FW}, t)
        self.h.deliver(t + 50, self.topic("status"), self._signed("status", {"state": "online",
                                                                              "fw": FW}, t))
        for i, (topic, payload) in enumerate(self.outbox):
            self.h.deliver(t + 100 + i * 20, topic, payload)
        self.outbox.clear()

    def disconnect(self, t: int) -> None:
        if self.connected and self.will is not None:
            self.h.deliver(t + WILL_DELAY_MS, self.topic("status"), self.will)
        self.connected = False

    def power_off(self, t: int) -> None:
        self.disconnect(t)
        self._keep_held()
        self._power_down()

    def power_on(self, t: int) -> None:
        self._power_up(t)
        self.connected = False
        self.connect(t + 3000)


# -- the hall -------------------------------------------------------------------------------------


class VirtualHall:
    """Business days of one hall, in simulated time, through `Ingest.process_batch`."""

    def __init__(self, cfg: Config, plans: list[WindowPlan], *, hall: str = "vhall",
                 seed: int = 1, first_day: date = date(2026, 3, 2),
                 honest_drift: bool = False) -> None:
        self.cfg = cfg
        # Honest drift (off by default): each staff member, and each day, shifts the window's
        # citizens' response times, coverage and satisfaction a little (staff A lets citizens
        # wait at the device, staff B invites less insistently, a rush day), so an honest
        # window's own past is not a perfect reference. Drawn from a generator of its own: the
        # rest of the simulation stays the same.
        self.honest_drift = honest_drift
        self._drift_rng = random.Random(seed ^ 0x5EED)
        self._drift: dict[tuple[str, Any], tuple[float, float, float, float]] = {}
        self.hall = hall
        self.prefix = cfg.mqtt.topic_prefix
        self.rng = random.Random(seed)
        self.plans = plans
        self.first_day = first_day
        self.conn: sqlite3.Connection = connect(cfg.state_db)
        self.conn.execute("PRAGMA synchronous=OFF")  # a throw-away evaluation database
        self.ingest = Ingest(self.conn, cfg)
        reg = Registry(self.conn)
        keys = {}
        for p in plans:
            dev = reg.get(p.device) or reg.add(p.device, hall, p.window, 0,
                                                key=self.rng.randbytes(32))
            keys[p.window] = dev.key
        self.devices = {p.window: _Device(self, p, keys[p.window]) for p in plans}
        self._queue: list[tuple[int, int, Callable[..., None], tuple]] = []
        self._serial = 0
        self.now = 0
        self.day_index = 0
        self.rejected = 0
        self.txn_count = 0
        self.staff_on: dict[str, tuple[str, str, str] | None] = {p.window: None for p in plans}
        # What each manipulation actually did, per (window, business day index): the ground
        # truth the evaluation reports beside the detection rate (a profile that had nothing
        # to act on, e.g. no 差评 to suppress, leaves nothing to detect).
        self.truth: dict[tuple[str, int], dict[str, int]] = {}
        self.paused: dict[str, bool] = {p.window: False for p in plans}
        tz_min = int(cfg.get("detection", "utc_offset")[1:3]) * 60 + int(
            cfg.get("detection", "utc_offset")[4:6])
        self._tz_ms = (-1 if cfg.get("detection", "utc_offset")[0] == "-" else 1) * tz_min * 60_000

    def note(self, window: str, what: str, n: int = 1) -> None:
        counts = self.truth.setdefault((window, self.day_index), {})
        counts[what] = counts.get(what, 0) + n

    # -- time and delivery --
    def at(self, t: int, fn: Callable[..., None], *args: Any) -> None:
        self._serial += 1
        heapq.heappush(self._queue, (t, self._serial, fn, args))

    def deliver(self, t: int, topic: str, payload: bytes) -> None:
        self.at(t, self._arrive, topic, payload)

    def _arrive(self, topic: str, payload: bytes) -> None:
        outcomes = self.ingest.process_batch([Inbound("mqtt", topic, payload, self.now)], self.now)
        if outcomes[0].status != "accepted":
            self.rejected += 1
        rows = self.conn.execute("SELECT id, topic, payload FROM cmd_outbox ORDER BY id").fetchall()
        if rows:
            self.conn.executemany("DELETE FROM cmd_outbox WHERE id=?", [(r[0],) for r in rows])
            for _, ctopic, cpayload in rows:
                window = ctopic.split("/")[-3]
                self.at(self.now + self.rng.randint(30, 300), self._command, window, ctopic,
                        bytes(cpayload))

    def run_until(self, t_end: int, on_time: Callable[[int], None] | None = None,
                  every_ms: int = 0, first_check: int = 0) -> None:
        """Process events up to `t_end`; call `on_time(t)` every `every_ms` from `first_check`."""
        next_check = first_check if on_time and every_ms else None
        while self._queue and self._queue[0][0] <= t_end:
            t = self._queue[0][0]
            while next_check is not None and next_check <= t:
                self.now = next_check
                on_time(next_check)  # type: ignore[misc]
                next_check += every_ms
            t, _, fn, args = heapq.heappop(self._queue)
            self.now = max(self.now, t)
            fn(*args)
        while next_check is not None and next_check <= t_end:
            self.now = next_check
            on_time(next_check)  # type: ignore[misc]
            next_check += every_ms
        self.now = max(self.now, t_end)
        self.ingest.tick(self.now)

    # -- the business system --
    def _feed(self, window: str, kind: str, **fields: Any) -> None:
        self._serial += 1
        msg = {"v": 1, "kind": kind, "id": f"ev-{self._serial}", "window": window,
               "ts": self.now, **fields}
        self.deliver(self.now + self.rng.randint(10, 200), feed_topic(self.prefix, self.hall),
                     json.dumps(msg, ensure_ascii=False).encode())

    def _signon(self, window: str, who: tuple[str, str, str]) -> None:
        self.staff_on[window] = who
        self._feed(window, "staff_signon", staff={"id": who[0], "name": who[1], "badge": who[2]})

    def _signoff(self, window: str) -> None:
        who = self.staff_on[window]
        self.staff_on[window] = None
        if who:
            self._feed(window, "staff_signoff", staff={"id": who[0], "name": who[1],
                                                       "badge": who[2]})

    def _pause(self, window: str, on: bool) -> None:
        self.paused[window] = on
        self._feed(window, "window_paused" if on else "window_resumed",
                   **({"reason": "休息"} if on else {}))

    def _complete(self, window: str, day_index: int) -> None:
        who = self.staff_on[window]
        if who is None or self.paused[window]:
            return
        self.txn_count += 1
        txn = f"{self.hall.upper()}-{self.txn_count:07d}"
        self._feed(window, "txn_completed", txn=txn,
                   staff={"id": who[0], "name": who[1], "badge": who[2]},
                   service={"code": "sfz-hl", "name": "居民身份证换领"},
                   started=self.now - self.rng.randint(120_000, 900_000), completed=self.now,
                   outcome="completed")

    # -- citizens and staff at the device --
    def _command(self, window: str, topic: str, payload: bytes) -> None:
        dev = self.devices[window]
        txn = dev.command(payload, topic, self.now)
        if txn is not None:
            self._citizen(dev, self.now)

    def _press(self, dev: _Device, key: int) -> None:
        dev.press(key, self.now)

    def _drift_of(self, plan: WindowPlan) -> tuple[float, float, float, float]:
        """(response time factor, coverage change, 差评 factor, 非常满意 factor) of the staff
        member at the window today, times the day's; all neutral without honest drift."""
        if not self.honest_drift:
            return 1.0, 0.0, 1.0, 1.0
        g = self._drift_rng
        who = self.staff_on.get(plan.window)
        out = [1.0, 0.0, 1.0, 1.0]
        for key, scale in (((plan.window, who[0] if who else None), 1.0),
                           ((plan.window, self.day_index), 0.5)):
            if key not in self._drift:
                self._drift[key] = (math.exp(g.gauss(0, 0.25 * scale)), g.gauss(0, 0.07 * scale),
                                    math.exp(g.gauss(0, 0.4 * scale)),
                                    math.exp(g.gauss(0, 0.15 * scale)))
            rt, cov, bad, top = self._drift[key]
            out = [out[0] * rt, out[1] + cov, out[2] * bad, out[3] * top]
        return out[0], out[1], out[2], out[3]

    def _rt(self, plan: WindowPlan) -> int:
        factor = self._drift_of(plan)[0]
        return max(450, int(plan.rt_median_ms * factor
                            * math.exp(self.rng.gauss(0, plan.rt_sigma))))

    def _citizen(self, dev: _Device, shown: int) -> None:
        """A citizen is invited to rate (and staff may interfere, by profile)."""
        plan, rng = dev.plan, self.rng
        _, d_cov, d_bad, d_top = self._drift_of(plan)
        weights = plan.levels
        if self.honest_drift:
            weights = (weights[0] * d_bad, weights[1] * d_bad, weights[2], weights[3],
                       weights[4] * d_top)
        level = rng.choices((1, 2, 3, 4, 5), weights=weights)[0]
        rate = rng.random() < min(0.99, max(0.3, plan.coverage + d_cov))
        for after, key in citizen_presses(rng, plan, plan.active(self.day_index), level, rate,
                                          lambda: self._rt(plan), dev.note):
            self.at(shown + after, self._press, dev, key)

    # -- one business day --
    def local_ms(self, day: date, hhmm: str) -> int:
        h, m = map(int, hhmm.split(":"))
        midnight = (day - date(1970, 1, 1)).days * 86_400_000 - self._tz_ms
        return midnight + (h * 60 + m) * 60_000

    def business_day(self, index: int) -> date:
        d, n = self.first_day, 0
        while True:
            if d.isoweekday() <= 5:
                if n == index:
                    return d
                n += 1
            d += timedelta(days=1)

    def schedule_day(self, index: int) -> None:
        """Queue everything that happens on business day `index` at every window."""
        self.day_index = index
        day = self.business_day(index)
        rng = self.rng
        shifts = [(self.local_ms(day, "08:30"), self.local_ms(day, "12:00")),
                  (self.local_ms(day, "13:30"), self.local_ms(day, "17:30"))]
        wake, sleep = self.local_ms(day, "07:50"), self.local_ms(day, "18:10")
        hall_outage = None
        if rng.random() < 0.05:  # the hall's network fails for everyone
            start = rng.randint(shifts[0][0], shifts[1][1] - 3600_000)
            hall_outage = (start, start + rng.randint(10, 40) * 60_000)
        for plan in self.plans:
            dev = self.devices[plan.window]
            active = plan.active(index)
            dev.apply_profile(active)
            t = wake
            while t < sleep:
                self.at(t + rng.randint(0, 2000), lambda d=dev: d.heartbeat(self.now))
                t += plan.heartbeat_s * 1000
            morning, afternoon = plan.staff[0], plan.staff[rng.random() < 0.5]
            for (a, b), who in zip(shifts, (morning, afternoon), strict=True):
                on_at = a + rng.randint(-120, 300) * 1000
                self.at(on_at, self._signon, plan.window, who)
                self.at(b + rng.randint(0, 300) * 1000, self._signoff, plan.window)
                t = on_at + int(rng.expovariate(plan.txn_per_hour / 3600_000))
                while t < b:
                    self.at(t, self._complete, plan.window, index)
                    t += int(rng.expovariate(plan.txn_per_hour / 3600_000))
            # Honest pauses: a break, a colleague's question.
            for _ in range(_poisson(rng, plan.pauses_per_day)):
                a, b = rng.choice(shifts)
                start = rng.randint(a, b - 1800_000)
                self.at(start, self._pause, plan.window, True)
                self.at(start + rng.randint(5, 20) * 60_000, self._pause, plan.window, False)
            # Network: short blips, a rare device fault, the hall outage.
            outages = [(s, s + rng.randint(60, 300) * 1000)
                       for s in (rng.randint(wake, sleep - 600_000)
                                 for _ in range(_poisson(rng, plan.blips_per_day)))]
            if rng.random() < 0.01:
                s = rng.randint(shifts[0][0], shifts[1][1] - 7200_000)
                outages.append((s, s + rng.randint(30, 120) * 60_000))
            if hall_outage:
                outages.append(hall_outage)
            for s, e in outages:
                self.at(s, lambda d=dev: d.powered and d.disconnect(self.now))
                self.at(e, lambda d=dev: d.powered and not d.connected and d.connect(self.now))
            # Stray presses of passers-by, with no invitation showing.
            for _ in range(_poisson(rng, 0.5)):
                self.at(rng.randint(shifts[0][0], shifts[1][1]), self._press, dev,
                        rng.randint(1, 5))
            if active:
                self._schedule_profile(plan, dev, day, shifts)

    def _schedule_profile(self, plan: WindowPlan, dev: _Device, day: date,
                          shifts: list[tuple[int, int]]) -> None:
        for t, action, arg in profile_episodes(self.rng, plan, shifts, dev.note):
            if action == "press":
                self.at(t, self._press, dev, arg)
            elif action == "pause":
                self.at(t, self._pause, plan.window, bool(arg))
            elif action == "standalone":
                self.at(t, setattr, dev, "standalone", bool(arg))
            elif arg:
                self.at(t, lambda d=dev: (not d.powered) and d.power_on(self.now))
            else:
                self.at(t, lambda d=dev: d.powered and d.power_off(self.now))

    def day_bounds(self, index: int) -> tuple[int, int]:
        day = self.business_day(index)
        return self.local_ms(day, "00:00"), self.local_ms(day, "00:00") + 86_400_000

    def close(self) -> None:
        self.conn.close()


def _poisson(rng: random.Random, mu: float) -> int:
    n, t = 0, rng.expovariate(1.0)
    while t < mu:
        n += 1
        t += rng.expovariate(1.0)
    return n
