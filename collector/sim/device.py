"""The simulated keypad: the firmware's own code (firmware/etfw: `terminal.Terminal`, the rating
state machine; `message.Messages`, the signed envelope; `command.check`, the command checks) run
under CPython as the firmware tests run it, inside a simulated board (key counters, the flash
outbox, power and network), with what a tampered device changes around it.

No rule of the terminal is written here. What the board adds is what etfw/app.py and keys.py add
around the terminal: a debounced press is counted before the terminal sees it, the count of
presses outside an invitation and the key counters survive a reboot, a 差评 held for its reason
is on flash (sent after a power cut), heartbeats go out only while connected, everything else
waits in the outbox while the network is down.

A manipulation is applied where a tampered device would apply it, never by changing a rule:
 * input side: a dead key (the press never reaches the terminal; counted or not, depending on
   whether the firmware still sees the physical key), a key publishing another level (the
   terminal is given the other key; the counter counts the physical key or, with the keypad
   rewired, the other one), a pause command that never reaches the terminal;
 * output side: 差评 the terminal produces (held and published) that never leave the device.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from collector.protocol import device_topic
from collector.sim.profiles import FW, WindowPlan

try:  # the firmware package, installed with the collector or run from the repository
    from etfw import command as fw_command  # type: ignore[import-not-found, unused-ignore]
    from etfw import config as fw_config  # type: ignore[import-not-found, unused-ignore]
    from etfw import message as fw_message  # type: ignore[import-not-found, unused-ignore]
    from etfw import tamper as fw_tamper  # type: ignore[import-not-found, unused-ignore]
    from etfw import terminal as fw_terminal  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # a checkout: firmware/ beside collector/, as the firmware tests use it
    sys.path.append(str(Path(__file__).resolve().parents[2] / "firmware"))
    from etfw import command as fw_command  # type: ignore[import-not-found, unused-ignore]
    from etfw import config as fw_config  # type: ignore[import-not-found, unused-ignore]
    from etfw import message as fw_message  # type: ignore[import-not-found, unused-ignore]
    from etfw import tamper as fw_tamper  # type: ignore[import-not-found, unused-ignore]
    from etfw import terminal as fw_terminal  # type: ignore[import-not-found, unused-ignore]

__all__ = ["REFERENCE_TAMPER", "THANKS_MS", "SimTerminal", "Tamper", "device_tamper"]

# The reference board's tamper inputs (docs/firmware.md, "Wiring"), all fitted.
REFERENCE_TAMPER = ("enclosure", "power", "ladder")
# How long a simulated press holds its key down, and when the loop samples the ladder (the
# firmware samples every loop step; a mismatch counts once held for etfw.tamper._HOLD_MS).
_PRESS_SAMPLES_MS = (0, 70, 140)
_RELEASE_MS = 200

# The terminal's settings: the firmware's defaults (etfw/config.py), as a device ships.
_FW = fw_config.DEFAULTS
THANKS_MS = int(_FW["thanks_ms"])


class _Clock:
    """The firmware's clock interface (etfw.clock.Clock: up(), ts()) on simulated time: the
    board sets `now` (epoch ms) before every call into the firmware; NTP is synced."""

    def __init__(self, boot_at: int) -> None:
        self.boot_at = boot_at
        self.now = boot_at
        self.synced = True

    def up(self) -> int:
        return max(0, self.now - self.boot_at)

    def ts(self) -> int:
        return self.now


class _Screen:
    """The terminal's ui: nothing is drawn."""

    def show(self, state: str, now: int, info: Any = None) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class Tamper:
    """What a tampered keypad does to the keys, before the firmware's terminal sees them.

    `dead`: keys that produce nothing; `remap`: physical key -> the key the terminal is given;
    `seen`: whether the firmware's key counter still counts the physical key (tampered
    firmware that ignores or rewrites a press it saw) or not (the keypad itself altered: a cut
    wire counts nothing, a rewired key counts as the key it now closes); `share`: the share of
    presses affected (an intermittent fault, a switch the staff flip); `ladder_sees`: the
    keypad's alteration is in a key's GPIO wire (cut, or moved to another key's line) while its
    switch still switches its own resistor on the key ladder, so the firmware's self-test
    (etfw/tamper.py) sees the physical key; False when the switch itself was rewired along with
    its resistor, blocked, or its cap moved (the ladder agrees with the GPIOs)."""

    def __init__(self, dead: set[int] | None = None, remap: dict[int, int] | None = None,
                 seen: bool = False, share: float = 1.0, ladder_sees: bool = False) -> None:
        self.dead = set(dead or ())
        self.remap = dict(remap or {})
        self.seen = seen
        self.share = share
        self.ladder_sees = ladder_sees and not seen

    def apply(self, key: int, rng: random.Random) -> tuple[int | None, int | None]:
        """(the key the counter counts or None, the key the terminal gets or None)."""
        if key not in self.dead and key not in self.remap:
            return key, key
        if self.share < 1.0 and rng.random() >= self.share:
            return key, key
        if key in self.dead:
            return (key if self.seen else None), None
        other = self.remap[key]
        return (key if self.seen else other), other


class _Pin:
    """A board input as the firmware reads it (value(); read_uv() for the ladder's ADC)."""

    def __init__(self, v: int = 0) -> None:
        self.v = v

    def value(self) -> int:
        return self.v


class _Ladder:
    """The ADC on the key ladder: the level of the key whose resistor is switched (0: none)."""

    def __init__(self) -> None:
        self.key = 0

    def read_uv(self) -> int:
        return int(fw_tamper.LADDER_MV[self.key - 1 if self.key else 5]) * 1000


class SimTerminal:
    """A simulated board running the firmware's terminal, emitting the firmware's signed
    messages. Shared by the simulated-time device (collector/sim/hall.py) and the real-time one
    (collector/sim/realtime.py); a subclass supplies `rng`, `note` and `_send`, and calls every
    method with the time in epoch ms. `fitted`: the tamper inputs the board has (the config's
    `tamper`), read by the firmware's own etfw/tamper.py: the key ladder sampled around every
    press, the enclosure switch, the supply sense at a power cut (`last_gasp`)."""

    rng: random.Random

    def __init__(self, plan: WindowPlan, key: bytes, prefix: str, hall: str,
                 fitted: tuple[str, ...] = ()) -> None:
        self.plan, self.key, self.prefix, self.hall = plan, key, prefix, hall
        self.fitted = tuple(fitted)
        self._pins = {"keys": [_Pin() for _ in range(5)], "enclosure": _Pin(0),
                      "power": _Pin(1), "ladder": _Ladder()}
        self.boot = 0
        self.keys = [0, 0, 0, 0, 0]  # physical counters, persisted (etfw/keys.py, app.py)
        self.uninvited = 0           # presses outside an invitation, persisted (app.py)
        self.tamper = Tamper()
        self.drop_negatives = 0.0
        self.ignore_pause = False
        self.powered = True
        self.connected = True
        self.outbox: list[tuple[str, bytes]] = []
        self._standalone = False
        self._held: tuple[str, bytes] | None = None
        self._dropping = False  # the 差评 now held is one the tampered firmware swallows
        self._boot_firmware(0)

    # -- the firmware's objects, one set per boot (as etfw/app.py builds them) --
    def _boot_firmware(self, t: int) -> None:
        self.boot += 1
        self.clock = _Clock(t)
        p = self.plan
        self.msgs = fw_message.Messages(self.prefix, self.hall, p.window, p.device, self.key,
                                        self.boot, self.clock)
        self.term = fw_terminal.Terminal(self, _Screen(), self._standalone,
                                         _FW["min_interval_ms"], _FW["reason_ms"],
                                         _FW["thanks_ms"], _FW["reason_keys"])
        self.term.start(t)
        self._held, self._dropping = None, False
        self._pins["power"].v = 1
        # The firmware's tamper module on the board's inputs (key GPIOs read 1 when down);
        # None without fitted parts, as etfw/app.py builds it.
        self.hw_tamper = (fw_tamper.Tamper(self._pins, self.fitted, 1) if self.fitted
                          else None)

    @property
    def state(self) -> str:
        return str(self.term.state)

    @property
    def filtered(self) -> int:
        return int(self.term.filtered)

    @property
    def standalone(self) -> bool:
        return self._standalone

    @standalone.setter
    def standalone(self, on: bool) -> None:
        self._standalone = on
        self.term.standalone = on  # the device's config switch

    def note(self, what: str, n: int = 1) -> None:
        """Ground truth: what the manipulation did (never shown to the detector)."""

    def _send(self, topic: str, payload: bytes, t: int) -> None:
        raise NotImplementedError

    def apply_profile(self, active: bool) -> None:
        """The device side of the window's profile, on or off."""
        profile = self.plan.profile if active else "honest"
        self.tamper = device_tamper(self.plan, profile)
        self.drop_negatives = self.plan.params["drop"] if profile == "suppressed_negatives" else 0.0
        self.ignore_pause = profile == "rating_during_pause"

    def topic(self, kind: str) -> str:
        return device_topic(self.prefix, self.hall, self.plan.window, self.plan.device, kind)

    def _at(self, t: int) -> None:
        self.clock.now = t

    def _signed(self, kind: str, fields: dict[str, Any], t: int) -> bytes:
        """A status message (the online status, the last will) of this boot, signed at `t`."""
        self._at(t)
        return self.msgs.status(str(fields["state"]), str(fields.get("fw", FW)))

    def _emit_bytes(self, topic: str, payload: bytes) -> None:
        if not self.powered:
            return
        if self.connected:
            self._send(topic, payload, self.clock.now)
        else:
            self.outbox.append((topic, payload))  # flash outbox: sent after the reconnect

    # -- the terminal's sink (etfw/app.py: hold, rating, event) --
    def hold(self, level: int, txn: Any, rt: Any, mode: str) -> None:
        self._dropping = bool(self.drop_negatives) and self.rng.random() < self.drop_negatives
        if self._dropping:
            return  # tampered firmware: not even the held record is written
        self._held = (self.topic("rating"), self.msgs.rating(level, txn, "none", rt, mode))

    def rating(self, level: int, txn: Any, reason: Any, rt: Any, mode: str) -> None:
        if level <= 2:  # the rating takes the held one's place
            self._held = None
            if self._dropping:
                self._dropping = False
                self.note("negatives_dropped")
                if reason not in (None, "none"):
                    self.note("negatives_dropped_with_reason")
                return
        self._emit_bytes(self.topic("rating"), self.msgs.rating(level, txn, reason, rt, mode))

    def event(self, etype: str, data: dict[str, Any]) -> None:
        self._emit_bytes(self.topic("event"), self.msgs.event(etype, data))

    def urgent_event(self, etype: str, data: dict[str, Any]) -> None:
        """etfw/app.py: published now, ahead of the outbox (the last gasp); kept on flash
        when the link is down."""
        self._emit_bytes(self.topic("event"), self.msgs.event(etype, data))

    # -- the board's tamper inputs (etfw/tamper.py) --
    def _poll_tamper(self, t: int) -> None:
        if self.hw_tamper is not None and self.powered:
            self._at(t)
            self.hw_tamper.poll(t, self)

    def last_gasp(self, t: int) -> None:
        """The supply is gone: the firmware's power sense reads 0 (`power_lost`, sent from
        the hold-up capacitor while the link still stands); call before the power goes."""
        self._pins["power"].v = 0
        self._poll_tamper(t)

    def enclosure(self, opened: bool, t: int) -> None:
        """The lid opened or shut (the switch settles for etfw.tamper._SETTLE_MS)."""
        self._pins["enclosure"].v = 1 if opened else 0
        self._poll_tamper(t)
        self._poll_tamper(t + 250)

    # -- power (unplugging) --
    def _keep_held(self) -> None:
        """A power cut while a 差评 waits for its reason: the held record is on flash and is
        sent after the reboot (firmware/etfw/outbox.py)."""
        if self._held is not None and self.powered:
            self.outbox.append(self._held)
            self._held = None

    def _power_down(self) -> None:
        self.powered = False

    def _power_up(self, t: int) -> None:
        self.powered = True
        self._boot_firmware(t)
        self._at(t)
        self.event("boot", {"fw": FW, "reset_cause": "power_on"})
        if self.hw_tamper is not None:
            self.hw_tamper.start(t, self)  # a lid open at boot is reported

    def heartbeat(self, t: int) -> None:
        """Sent directly, only while connected (etfw/app.py: link.send, not the outbox)."""
        if not (self.powered and self.connected):
            return
        self._at(t)
        data = {"fw": FW, "rssi": -60, "heap_free": 60000, "outbox": len(self.outbox),
                "discards": 0, "reconnects": 0, "keys": list(self.keys),
                "uninvited": self.uninvited, "state": self.term.state,
                "filtered": self.term.filtered, "unconfirmed": 0}
        self._send(self.topic("event"), self.msgs.event("heartbeat", data), t)

    # -- commands --
    def command(self, payload: bytes, topic: str, t: int) -> str | None:
        """A command from the collector, checked by the firmware's own checks and given to its
        terminal; returns the transaction of an invitation now showing."""
        if not (self.powered and self.connected):
            return None
        self.tick(t)
        try:
            c = fw_command.check(self.msgs, topic.encode(), payload)
        except fw_message.CommandError:
            return None
        if c["cmd"] == "pause" and self.ignore_pause:
            return None  # tampered: the pause never reaches the terminal
        self.term.command(c, t)
        if c["cmd"] == "invite" and self.term.state == fw_terminal.INVITED:
            return str(c["txn"])
        return None

    # -- keys --
    def tick(self, t: int) -> None:
        """Time passes: an invitation expires, a reason prompt times out, thanks ends."""
        if self.powered:
            self._at(t)
            self.term.tick(t)

    def press(self, key: int, t: int) -> None:
        """A physical press of `key` (a citizen's, the staff's, a passer-by's)."""
        if not self.powered:
            return
        self.tick(t)
        counted, given = self.tamper.apply(key, self.rng)
        if (counted, given) != (key, key):
            self.note("tampered_press")
        if self.hw_tamper is not None:
            self._ladder_press(key, counted, given, t)
        if counted is not None:
            self.keys[counted - 1] += 1
        if given is None:
            return
        before = self.term.uninvited
        self.term.press(given, t)
        self.uninvited += self.term.uninvited - before

    def _ladder_press(self, key: int, counted: int | None, given: int | None, t: int) -> None:
        """The press as the board's inputs see it, sampled by the firmware's self-test: the
        GPIO down is the one the firmware counts (the physical key's when tampered firmware
        rewrites it afterwards: `seen`), the ladder's resistor the physical key's when the
        alteration is in the GPIO wiring only (Tamper.ladder_sees), else the GPIO's."""
        gpio = counted  # the key the firmware counts is the GPIO it saw down
        ladder = key if (self.tamper.ladder_sees and (counted, given) != (key, key)) else gpio
        pins, lad = self._pins["keys"], self._pins["ladder"]
        if gpio:
            pins[gpio - 1].v = 1
        lad.key = ladder or 0
        for dt in _PRESS_SAMPLES_MS:
            self._poll_tamper(t + dt)
        if gpio:
            pins[gpio - 1].v = 0
        lad.key = 0
        self._poll_tamper(t + _RELEASE_MS)
        self._at(t)

    def deadlines(self, t: int, ttl_s: int = 0) -> list[int]:
        """When the terminal may next need a tick after an input at `t` (the firmware's loop
        ticks it every few ms; the simulated-time hall only at these times)."""
        out = [t + THANKS_MS, t + int(_FW["reason_ms"])]
        if ttl_s:
            out.append(t + ttl_s * 1000)
        return out


def device_tamper(plan: WindowPlan, profile: str) -> Tamper:
    """The keypad tampering of a window's profile (none for the others)."""
    p = plan.params
    if profile == "bad_key_disabled":
        return Tamper(dead={1, 2})
    if profile == "tampering":
        keys = set(p["keys"])
        wire = p.get("how") == "wire"
        if p["mode"] == "dead":
            return Tamper(dead=keys, seen=p["seen"], share=p["dose"], ladder_sees=wire)
        return Tamper(remap={k: p["to"] for k in keys}, seen=p["seen"], share=p["dose"],
                      ladder_sees=wire)
    return Tamper()
