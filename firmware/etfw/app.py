"""Wiring and the main loop. Hardware, filesystem, network and time come in from outside
(main.py on the ESP32, the simulator or the tests elsewhere), so this runs anywhere.

Main loop step: feed the watchdog, debounce keys, advance the state machine, handle queued
commands and receipts, one link step (connect, or read + send one outbox record +
keep-alive), heartbeat,
NTP, indicators. No step blocks longer than the socket timeout (broker.timeout_s), so the
watchdog period (etfw.WDT_MS) is chosen well above it.
"""

import gc

from . import FW_VERSION, unload
from .clock import Clock, ticks_ms
from .indicators import Indicators
from .keys import PRESS, RELEASED, STUCK, Keys
from .link import Link
from .message import CommandError, Messages
from .outbox import Outbox
from .store import Store
from .terminal import Terminal

try:
    from micropython import const
except ImportError:  # CPython
    const = int

_NTP_EVERY_MS = const(21600000)  # 6 h
_NTP_RETRY_MS = const(60000)


def _heap_free() -> int:
    return gc.mem_free() if hasattr(gc, "mem_free") else 0


class Device:
    def __init__(self, cfg, hw: dict, fs, wlan, factory, data_dir: str = "",
                 rand=None, ntp=None, wdt=None, heap_free=_heap_free,
                 reset_cause: str = "unknown", ticks=ticks_ms) -> None:
        # The Config is not kept: each part takes the values it uses (memory budget).
        self.clock = Clock(ticks)
        self._wdt = wdt
        self._ntp = ntp
        self._heap_free = heap_free
        self._next_ntp = 0
        self.lost = 0  # messages neither stored nor sent (flash failure while offline)
        self.cmd_bad = 0
        self.cmd_error = ""

        # The boot counter is on flash before anything of this boot is signed.
        self.store = Store(fs, data_dir + "state")
        st = self.store.load()
        self.boot = st.get("boot", 0) + 1
        self.discards = st.get("discards", 0)
        self.uninvited_total = st.get("uninvited", 0)
        keys0 = st.get("keys") or [0, 0, 0, 0, 0]
        self._persisted = None
        self.keys = Keys(hw["keys"], ticks, cfg.board.get("key_active_low", True),
                         cfg.debounce_ms, cfg.stuck_ms)
        self.keys.counts = list(keys0)
        self.persist()
        self.tamper = None
        if cfg.tamper:  # the fitted tamper inputs only (a floating pin must accuse nobody)
            from .tamper import Tamper

            active = 0 if cfg.board.get("key_active_low", True) else 1
            self.tamper = Tamper(hw, cfg.tamper, active, cfg.board.get("ladder_mv"))

        b = cfg.broker
        self.msgs = Messages(b["topic_prefix"], cfg.hall, cfg.window, cfg.device, cfg.key,
                             self.boot, self.clock)
        self.outbox = Outbox(fs, data_dir + "outbox", cfg.outbox_records, cfg.outbox_bytes)
        unload("recover")  # the outbox's recovery code runs once per boot
        if self.outbox.discards:
            self.discards += self.outbox.discards
            self.persist()
        self.ui = Indicators(hw.get("leds"), hw.get("rgb"), hw.get("buzzer"),
                             hw.get("display"), cfg.lang, cfg.board.get("led_active_high", True))
        from .outputs import build

        self.out = build(hw, cfg, self.ui)  # the display and the voice, when the board has them
        self.term = Terminal(self, self.out, cfg.standalone, cfg.min_interval_ms, cfg.reason_ms,
                             cfg.thanks_ms, cfg.reason_keys, cfg.confirm_ms)
        self.link = Link(b, cfg.wifi, cfg.device, (self.msgs.t_status, self.msgs.t_cmd),
                         wlan, factory, self._status, rand or (lambda n: 0))
        self._wlan = wlan
        self._hb_every = cfg.heartbeat_s * 1000
        self._next_hb = 0
        self._reset_cause = reset_cause
        # Over-the-air updates (etfw/update.py, loaded only while it has work): None (not
        # supported), otaboot's (data_dir, reset, slot, on trial, note), or the loaded Ota.
        # One name for all three, and one MicroPython has built in: an interned name costs
        # heap on every boot, and a new one can grow the name pool (memory budget).
        self.update = hw.get("update")

    def start(self) -> None:
        """The first screen and the signed boot event; run() starts with it. Not part of
        __init__, so that the Config the device was built from is gone by then (main.py
        drops it): the boot event is the boot's heap peak (docs/firmware.md)."""
        self.term.start(self.clock.up())
        self.event("boot", {"fw": FW_VERSION, "reset_cause": self._reset_cause})
        if self.tamper is not None:
            self.tamper.start(self.clock.up(), self)
        u = self.update
        if u is not None and (u[3] or u[4]):  # on trial, or a trial's outcome to report
            self.command(b"", b"", 0)  # loads etfw.update

    # --- persistence ------------------------------------------------------------------------

    def persist(self) -> None:
        state = {"boot": self.boot, "keys": self.keys.counts, "discards": self.discards,
                 "uninvited": self.uninvited_total}
        if state != self._persisted:
            self.store.save(state)
            self._persisted = {"boot": self.boot, "keys": list(self.keys.counts),
                               "discards": self.discards, "uninvited": self.uninvited_total}

    # --- the terminal's sink ------------------------------------------------------------------

    def _keep(self, topic: bytes, payload: bytes, replace: bool = False) -> None:
        before = self.outbox.discards
        try:
            self.outbox.put(topic, payload, replace)
        except (OSError, ValueError):
            # Flash refused it: better sent now than lost; counted if that fails too.
            if not self.link.send(self.clock.up(), topic, payload):
                self.lost += 1
        if self.outbox.discards != before:
            self.discards += self.outbox.discards - before
            self.persist()

    def hold(self, level: int, txn, rt, mode: str) -> None:
        # On flash as it would be sent if the reason never came (a power cut): signed now,
        # with this boot's identity and the next seq, reason "none". Not sent while held.
        try:
            self.outbox.hold(self.msgs.t_rating, self.msgs.rating(level, txn, "none", rt, mode))
        except (OSError, ValueError):
            pass  # flash refused it: the rating waits in RAM only, as the terminal has it

    def rating(self, level: int, txn, reason, rt, mode: str) -> None:
        # A 1-2 rating takes the held one's place in the outbox (one append: a power cut
        # leaves one of the two, never both).
        self._keep(self.msgs.t_rating, self.msgs.rating(level, txn, reason, rt, mode), True)

    def event(self, etype: str, data: dict) -> None:
        self._keep(self.msgs.t_event, self.msgs.event(etype, data))

    def urgent_event(self, etype: str, data: dict) -> None:
        """Published now, ahead of what waits in the outbox (the last gasp: the hold-up
        capacitor lasts for one publish); kept on flash when the link is down."""
        payload = self.msgs.event(etype, data)
        if not self.link.send(self.clock.up(), self.msgs.t_event, payload):
            self._keep(self.msgs.t_event, payload)

    def _status(self, state: str) -> bytes:
        return self.msgs.status(state, FW_VERSION)

    # --- the loop -----------------------------------------------------------------------------

    def _on_key(self, kind: int, key: int, held: int) -> None:
        now = self.clock.up()
        if kind == PRESS:
            before = self.term.uninvited
            self.term.press(key, now)
            self.uninvited_total += self.term.uninvited - before
            self.persist()  # physical counters survive a power cut
        elif kind == STUCK:
            self.event("key_stuck", {"key": key, "held_ms": held})
        elif kind == RELEASED:
            self.event("key_released", {"key": key, "held_ms": held})

    def command(self, topic: bytes, payload: bytes, now: int) -> None:
        u = self.update
        if u is not None and (type(u) is not tuple or payload[:1] in (b"\xe7", b"")
                              or b'"update"' in payload):
            # An update's chunk or command, or any command while one is under way:
            # etfw.update takes it (and hands an ordinary command on to the terminal).
            gc.collect()  # loaded on a collected heap: a few KiB (memory budget)
            try:
                from .update import update

                update(self, topic, payload, now)
            except MemoryError:  # dropped (the collector asks again); the device rates on
                u = self.update
                if u is not None and type(u) is not tuple:
                    self.update = u.hw
                unload("update")
            return
        try:
            c = self.msgs.command(topic, payload, self.outbox, now)
        except CommandError as e:
            self.cmd_bad += 1
            self.cmd_error = e.args[0]
            return
        if c is None:  # a receipt: the records it names left the outbox
            return
        self.term.command(c, now)

    def heartbeat_data(self) -> dict:
        rssi = None
        try:
            rssi = self._wlan.status("rssi")
        except Exception:  # not associated, or no radio (simulator)
            rssi = None
        return {
            "fw": FW_VERSION, "rssi": rssi, "heap_free": self._heap_free(),
            "outbox": len(self.outbox), "discards": self.discards,
            "reconnects": self.link.reconnects, "keys": list(self.keys.counts),
            "uninvited": self.uninvited_total, "state": self.term.state,
            "filtered": self.term.filtered, "stuck": self.keys.stuck_now,
            "lost": self.lost, "cmd_bad": self.cmd_bad,
            "damaged": self.outbox.damaged, "ntp": self.clock.synced,
            "unconfirmed": self.outbox.unconfirmed,  # of `outbox`: out, no receipt yet
        }

    def step(self) -> None:
        now = self.clock.up()
        if self._wdt is not None:
            self._wdt.feed()
        self.keys.poll(now, self._on_key)
        if self.tamper is not None:
            self.tamper.poll(now, self)
        self.term.tick(now)
        inbox = self.link.inbox
        while inbox:
            topic, payload = inbox.pop(0)
            self.command(topic, payload, now)
        self.link.poll(now, self.outbox)
        if self.link.up:
            if self._ntp is not None and now >= self._next_ntp:
                try:
                    self.clock.sync(self._ntp())
                    self._next_ntp = now + _NTP_EVERY_MS
                except Exception:  # no NTP server reachable: uptime only, ts null
                    self._next_ntp = now + _NTP_RETRY_MS
            if now >= self._next_hb:
                self._next_hb = now + self._hb_every
                gc.collect()
                payload = self.msgs.event("heartbeat", self.heartbeat_data())
                self.link.send(now, self.msgs.t_event, payload)
        u = self.update
        if u is not None and type(u) is not tuple and u.tick(now):  # done: the module goes
            self.update = u.hw
            unload("update")
        self.out.tick(now)

    def run(self, sleep_ms, should_stop=None) -> None:
        self.start()
        while should_stop is None or not should_stop():
            self.step()
            sleep_ms(10)
