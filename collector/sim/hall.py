"""A simulated hall in simulated time (`VirtualHall`): business days in seconds, an event queue in
simulated milliseconds, the simulated devices (collector/sim/device.py) and a business system,
delivered into `Ingest.process_batch(items, now_ms)` (see collector/sim/profiles.py for the
windows' honest behaviour and the manipulation profiles)."""

from __future__ import annotations

import heapq
import math
import random
import sqlite3
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from collector import outbox
from collector.config import Config
from collector.db import connect, transaction
from collector.ingest import Inbound, Ingest
from collector.protocol import feed_message, feed_topic
from collector.registry import Registry
from collector.sim.device import REFERENCE_TAMPER, SimTerminal
from collector.sim.profiles import (
    FW,
    WILL_DELAY_MS,
    Action,
    WindowPlan,
    citizen_presses,
    profile_episodes,
)

__all__ = ["VirtualHall"]

# Honest hardware incidents (per business day): a device's power cut in opening hours (a cable
# pulled, a socket switched off by the cleaners), the hall's power failing, a technician
# opening a keypad's case. Assumptions (no published figures for service halls), kept so that
# a power loss or an opened lid is never in itself proof.
DEVICE_POWER_CUT = 0.02
HALL_POWER_FAILURE = 0.01
TECHNICIAN_VISIT = 0.005


class _Device(SimTerminal):
    """The terminal in simulated time: messages reach the hall's event queue after a delay, the
    broker's last will after 1.5 x keepalive."""

    def __init__(self, hall: VirtualHall, plan: WindowPlan, key: bytes) -> None:
        self.rng = hall.rng
        super().__init__(plan, key, hall.prefix, hall.hall, hall.hardware)
        self.h = hall
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
        self.last_gasp(t)  # the power sense, while the link still stands
        self.disconnect(t)
        self._keep_held()
        self._power_down()

    def power_on(self, t: int) -> None:
        self._power_up(t)
        self.connected = False
        self.connect(t + 3000)

    def network(self, up: bool, t: int) -> None:
        """Wi-Fi lost or back, the device powered throughout."""
        if not self.powered:
            return
        if up and not self.connected:
            self.connect(t)
        elif not up and self.connected:
            self.disconnect(t)


# -- the hall -------------------------------------------------------------------------------------


class VirtualHall:
    """Business days of one hall, in simulated time, through `Ingest.process_batch`."""

    def __init__(self, cfg: Config, plans: list[WindowPlan], *, hall: str = "vhall",
                 seed: int = 1, first_day: date = date(2026, 3, 2),
                 honest_drift: bool = False,
                 hardware: tuple[str, ...] = REFERENCE_TAMPER) -> None:
        self.cfg = cfg
        # The devices' tamper inputs (the reference board: all fitted), and the honest
        # hardware incidents they report (power cuts, a technician opening the case), drawn
        # from a generator of their own so the rest of the simulation's draws stay the same.
        self.hardware = tuple(hardware)
        self._hw_rng = random.Random(seed ^ 0xB0A2D)
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
        self.tokens: dict[str, list[int]] = {p.window: [] for p in plans}  # drip: fakes due
        self._long: dict[str, int] = {}  # transaction -> how long its service took (ms)

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
        rows = outbox.commands_after(self.conn, 0)
        if rows:
            with transaction(self.conn):
                outbox.delete_commands(self.conn, [r[0] for r in rows])
            for _, ctopic, cpayload, _expires in rows:
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
        msg = feed_message(kind, id=f"ev-{self._serial}", window=window, ts=self.now, **fields)
        self.deliver(self.now + self.rng.randint(10, 200), feed_topic(self.prefix, self.hall), msg)

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
        # Service durations: log-normal, median 6 minutes; a long case (over 12 minutes, about
        # a seventh of them) ends in a 差评 three times as often (see _citizen).
        dur = int(min(3600_000, max(60_000, 360_000 * math.exp(self.rng.gauss(0, 0.65)))))
        self._long[txn] = dur
        self._feed(window, "txn_completed", txn=txn,
                   staff={"id": who[0], "name": who[1], "badge": who[2]},
                   service={"code": "sfz-hl", "name": "居民身份证换领"},
                   started=self.now - dur, completed=self.now, outcome="completed")

    # -- citizens and staff at the device --
    def _command(self, window: str, topic: str, payload: bytes) -> None:
        dev = self.devices[window]
        txn = dev.command(payload, topic, self.now)
        if txn is not None:
            self._ticks(dev, self.cfg.linking.invite_ttl_s)
            self._citizen(dev, self.now, txn)

    def _press(self, dev: _Device, key: int) -> None:
        dev.press(key, self.now)
        self._ticks(dev)

    def _ticks(self, dev: _Device, ttl_s: int = 0) -> None:
        """The firmware's loop ticks its terminal every few ms; here, at the times it may
        change by itself (an invitation expiring, a reason prompt timing out, thanks ending)."""
        for t in dev.deadlines(self.now, ttl_s):
            self.at(t, self._tick, dev)

    def _tick(self, dev: _Device) -> None:
        dev.tick(self.now)

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
        """A citizen's response time: a shifted log-normal (no spike: a floor of 350 ms, about
        a choice reaction time among five keys, below which nobody reads and presses), the
        window's median, the staff member's and the day's drift; lingering citizens and a
        keypad standing far away (honest traits) take longer."""
        tr = plan.traits
        factor = self._drift_of(plan)[0]
        if "far_device" in tr:
            factor *= tr["far_device"][0]
        if tr.get("rush_day") == self.day_index:
            factor *= 0.8
        if "new_staff" in tr and self.day_index >= tr["new_staff"] and self._is_new_staff(plan):
            factor *= tr.setdefault("new_staff_rt", math.exp(self._drift_rng.gauss(0, 0.3)))
        if "linger" in tr and self.rng.random() < tr["linger"]:
            return self.rng.randint(15_000, 100_000)
        floor = 350.0
        return int(floor + max(100.0, plan.rt_median_ms * factor - floor)
                   * math.exp(self.rng.gauss(0, plan.rt_sigma)))

    def _is_new_staff(self, plan: WindowPlan) -> bool:
        who = self.staff_on.get(plan.window)
        return who is not None and who[0].endswith("n")

    def _citizen(self, dev: _Device, shown: int, txn: str = "") -> None:
        """A citizen is invited to rate (and staff may interfere, by profile)."""
        plan, rng, tr = dev.plan, self.rng, dev.plan.traits
        _, d_cov, d_bad, d_top = self._drift_of(plan)
        if not self.honest_drift:
            d_bad = d_top = 1.0
        service_ms = self._long.pop(txn, None)
        long_service = service_ms is not None and service_ms > 720_000
        if long_service:
            d_bad *= 3.0
        if tr.get("bad_day") == self.day_index:
            d_bad, d_top = d_bad * 4.0, d_top * 0.8
        if tr.get("rush_day") == self.day_index:
            d_cov -= 0.12
        if "far_device" in tr:
            d_cov -= tr["far_device"][1]
        w = plan.levels
        weights = (w[0] * d_bad, w[1] * d_bad, w[2], w[3], w[4] * d_top)
        level = rng.choices((1, 2, 3, 4, 5), weights=weights)[0]
        rate = rng.random() < min(0.99, max(0.3, plan.coverage + d_cov))
        acts = citizen_presses(rng, plan, plan.active(self.day_index), level, rate,
                               lambda: self._rt(plan), dev.note, long_service=long_service,
                               service_ms=service_ms,
                               tokens=self.tokens[plan.window],
                               ttl_ms=self.cfg.linking.invite_ttl_s * 1000)
        self._schedule_actions(plan, dev, [(shown + t, a, arg) for t, a, arg in acts])

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
            morning, afternoon = self._staff_of_day(plan, index)
            rate = plan.txn_per_hour * (2.5 if plan.traits.get("rush_day") == index else 1.0)
            for (a, b), who in zip(shifts, (morning, afternoon), strict=True):
                on_at = a + rng.randint(-120, 300) * 1000
                self.at(on_at, self._signon, plan.window, who)
                self.at(b + rng.randint(0, 300) * 1000, self._signoff, plan.window)
                t = on_at + int(rng.expovariate(rate / 3600_000))
                while t < b:
                    self.at(t, self._complete, plan.window, index)
                    t += int(rng.expovariate(rate / 3600_000))
            # A clerk closing several cases at once (a family, a group): 2-4 transactions
            # 10-40 s apart, each citizen rating in turn. Honest bursts.
            for _ in range(_poisson(rng, plan.traits.get("batch_close", 0.0))):
                a, b = rng.choice(shifts)
                t = rng.randint(a + 600_000, b - 600_000)
                for _ in range(rng.randint(2, 4)):
                    self.at(t, self._complete, plan.window, index)
                    t += rng.randint(10_000, 40_000)
            # Honest pauses: a break, a colleague's question.
            for _ in range(_poisson(rng, plan.pauses_per_day)):
                a, b = rng.choice(shifts)
                start = rng.randint(a, b - 1800_000)
                self.at(start, self._pause, plan.window, True)
                self.at(start + rng.randint(5, 20) * 60_000, self._pause, plan.window, False)
            # Network: short blips, a rare device fault, the hall outage.
            longest = 900 if "wifi" in plan.traits else 300
            outages = [(s, s + rng.randint(60, longest) * 1000)
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
            self._hardware_day(plan, dev, index, shifts, wake)
            if active:
                self._schedule_profile(plan, dev, day, shifts)
        if self._hw_rng.random() < HALL_POWER_FAILURE:  # the hall's power fails for everyone
            g = self._hw_rng
            s = g.randint(shifts[0][0], shifts[1][1] - 3600_000)
            e = s + g.randint(5, 40) * 60_000
            for plan in self.plans:
                self._schedule_actions(plan, self.devices[plan.window],
                                       [(s + g.randint(0, 500), "power", 0),
                                        (e + g.randint(0, 5000), "power", 1)])

    def _hardware_day(self, plan: WindowPlan, dev: _Device, index: int,
                      shifts: list[tuple[int, int]], wake: int) -> None:
        """Honest hardware incidents of one device-day (a cable pulled, a technician's visit)
        and, on its first day, the opening of a keypad altered inside its case (the tampering
        family): what the board's tamper inputs then report."""
        g = self._hw_rng
        acts: list[Action] = []
        if g.random() < DEVICE_POWER_CUT:
            s = g.randint(shifts[0][0], shifts[1][1] - 1800_000)
            acts += [(s, "power", 0), (s + g.randint(1, 20) * 60_000, "power", 1)]
        if g.random() < TECHNICIAN_VISIT:
            s = g.randint(shifts[0][0], shifts[1][1] - 3600_000)
            acts += [(s, "lid", 1), (s + g.randint(10, 30) * 60_000, "lid", 0)]
        p = plan.params
        if plan.profile == "tampering" and index == plan.start_day and not p["seen"]:
            s = wake - g.randint(10, 40) * 60_000  # before opening hours
            e = s + g.randint(4, 12) * 60_000
            kind = "lid" if p.get("opened") == "powered" else "power"
            acts += [(s, kind, 1 if kind == "lid" else 0), (e, kind, 0 if kind == "lid" else 1)]
        self._schedule_actions(plan, dev, acts)

    def _staff_of_day(self, plan: WindowPlan, index: int) -> tuple[tuple[str, str, str], ...]:
        """Who serves the morning and the afternoon: the window's two staff members; a new
        one (honest trait) in B's place from their first day on; a neighbour window's staff
        member on some afternoons (lunch rotation)."""
        rng, tr = self.rng, plan.traits
        staff = list(plan.staff)
        if "new_staff" in tr and index >= tr["new_staff"]:
            sid, name, badge = staff[1]
            staff[1] = (sid[:-1] + "n", name + "新", str(int(badge) + 5))
        morning, afternoon = staff[0], staff[rng.random() < 0.5]
        if "lunch_rotation" in tr and rng.random() < tr["lunch_rotation"]:
            others = [p for p in self.plans if p.window != plan.window]
            if others:
                afternoon = rng.choice(others).staff[1]
        return morning, afternoon

    def _schedule_profile(self, plan: WindowPlan, dev: _Device, day: date,
                          shifts: list[tuple[int, int]]) -> None:
        self.tokens[plan.window].clear()
        self._schedule_actions(plan, dev, profile_episodes(self.rng, plan, shifts, dev.note))

    def _schedule_actions(self, plan: WindowPlan, dev: _Device, actions: list[Action]) -> None:
        for t, action, arg in actions:
            if action == "press":
                self.at(t, self._press, dev, arg)
            elif action == "pause":
                self.at(t, self._pause, plan.window, bool(arg))
            elif action == "standalone":
                self.at(t, setattr, dev, "standalone", bool(arg))
            elif action == "token":
                self.at(t, self.tokens[plan.window].append, t)
            elif action == "network":
                self.at(t, lambda d=dev, up=bool(arg): d.network(up, self.now))
            elif action == "lid":
                self.at(t, lambda d=dev, up=bool(arg): d.powered and d.enclosure(up, self.now))
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
