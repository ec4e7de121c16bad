"""The whole device on fakes, shared by the test_fw_app* modules (split in two so that
each module holds less test code next to the firmware)."""

from etfw.app import Device
from etfw.sign import Signer
from etfw.store import RealFS
from fwfakes import KEY, FakePin, Ticks, cmd_payload, config, scrub, tmpdir
from fwnet import Broker, FakeWLAN


class Rig:
    """One device on fakes. `flash` is its data folder on the real filesystem (the device
    uses RealFS on LittleFS): a second Rig on the same folder is the next boot."""

    def __init__(self, flash=None, broker=None, more_hw=None, **cfg):
        cfg.setdefault("outbox_records", 16)
        scrub()  # a new boot: nothing of an earlier Rig may stay reachable from the stack
        c = config(**cfg)  # first, as at boot: the config module needs the most heap at once
        scrub()  # and no stale word on the stack may keep the dropped config module alive
        self.flash = flash or tmpdir()
        self.broker = broker or Broker()
        self.ticks = Ticks(5000)
        self.keys = [FakePin(1) for _ in range(5)]
        self.leds = [FakePin(0) for _ in range(5)]
        self.shown = ("", "")  # the display's two lines (only the last: heap)
        hw = {"keys": self.keys, "leds": self.leds, "rgb": None, "buzzer": FakePin(0),
              "display": self._display}
        if more_hw:
            hw.update(more_hw)  # a display panel, its font, a voice UART (test_fw_app_av)
        self.wlan = FakeWLAN()
        self.dev = Device(c, hw, RealFS(), self.wlan, self.broker.factory,
                          data_dir=self.flash, ticks=self.ticks, heap_free=lambda: 12345)
        c = None  # as main.py does: the device keeps what it uses, not the Config
        scrub()
        self.dev.start()

    def _display(self, a, b):
        self.shown = (a, b)

    def run(self, ms, step=10):
        for _ in range(ms // step):
            self.ticks.advance(step)
            self.dev.step()

    def press(self, key, hold=80):
        self.keys[key - 1].set(0)
        self.run(hold)
        self.keys[key - 1].set(1)
        self.run(60)

    def cmd(self, cseq, name, **fields):
        f = [("v", 1), ("kind", "cmd"), ("cmd", name), ("cseq", cseq), ("ts", 1764201590000)]
        for k in ("txn", "staff", "service", "ttl", "text"):
            if k in fields:
                f.append((k, fields[k]))
        m = self.dev.msgs
        self.broker.pending_in.append((m.t_cmd, cmd_payload(Signer(KEY), m.t_cmd, f)))
