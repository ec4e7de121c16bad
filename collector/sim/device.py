"""The simulated keypad: the firmware's terminal rules emitting real signed messages, and what a
manipulation changes in the device (collector/sim/profiles.py defines the manipulations)."""

from __future__ import annotations

import json
import random
from typing import Any

from collector.protocol import DEVICE_BUILDERS, device_topic, verify
from collector.sim.profiles import (
    FW,
    MIN_INTERVAL_MS,
    REASON_KEYS,
    REASON_TIMEOUT_MS,
    WindowPlan,
)

__all__ = ["SimTerminal"]



class SimTerminal:
    """The firmware's terminal rules (firmware/etfw/terminal.py and app.py: states, key
    counters, the 差评 held for its reason, stray presses counted and reported, stand-alone
    mode), emitting real signed messages, and what a manipulation changes in the device (dead
    keys, dropped 差评, a pause ignored). Shared by the simulated-time device below and by the
    real-time one (collector/sim/realtime.py); a subclass supplies `rng`, `note` and `_send`, and
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
        return DEVICE_BUILDERS[kind](self.key, self.topic(kind), dev=self.plan.device,
                                     boot=self.boot, seq=self.seq, ts=t,
                                     up=max(0, t - self.boot_at), **fields)

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
