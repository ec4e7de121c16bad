"""The whole device on fakes: invite -> press -> signed rating on the (fake) broker."""

import gc
import json

from fwfakes import FIGURES, KEY, FakePin, MemFS, Ticks, cmd_payload, config
from fwnet import Broker, FakeWLAN

from etfw.app import Device
from etfw.sign import Signer


class Rig:
    def __init__(self, fs=None, broker=None, **cfg):
        self.fs = fs or MemFS()
        self.broker = broker or Broker()
        self.ticks = Ticks(5000)
        self.keys = [FakePin(1) for _ in range(5)]
        self.leds = [FakePin(0) for _ in range(5)]
        self.lines = []
        hw = {"keys": self.keys, "leds": self.leds, "rgb": None, "buzzer": FakePin(0),
              "display": lambda a, b: self.lines.append((a, b))}
        self.wlan = FakeWLAN()
        cfg.setdefault("outbox_records", 16)
        self.dev = Device(config(**cfg), hw, self.fs, self.wlan, self.broker.factory,
                          ticks=self.ticks, heap_free=lambda: 12345)

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


def test_boot_sequence_and_counter():
    fs = MemFS()
    r = Rig(fs)
    assert r.dev.boot == 1
    r.run(100)
    assert "boot" in [m["type"] for m in r.broker.messages("event")]
    assert r.broker.messages("status")[0]["state"] == "online"
    assert r.lines[0][0] == "欢迎评价"
    r2 = Rig(fs)
    assert r2.dev.boot == 2


def test_invited_rating_end_to_end():
    r = Rig()
    r.run(100)
    r.cmd(7, "invite", txn="BJ-1", staff={"name": "张伟", "badge": "010233"},
          service="居民身份证换领", ttl=120)
    r.run(50)
    assert r.dev.term.state == "invited"
    assert "张伟" in r.lines[-1][1]
    assert [p.level for p in r.leds] == [1, 1, 1, 1, 1]
    r.press(4)
    r.run(100)
    ratings = r.broker.messages("rating")
    assert len(ratings) == 1
    m = ratings[0]
    assert (m["level"], m["txn"], m["reason"], m["mode"]) == (4, "BJ-1", None, "invited")
    assert 0 < m["rt"] < 1000
    raw = r.broker.payloads("rating")[0]
    assert Signer(KEY).verify(r.dev.msgs.t_rating, raw)
    assert r.dev.keys.counts == [0, 0, 0, 1, 0]
    assert len(r.dev.outbox) == 0


def test_bad_rating_with_reason_and_uninvited_count():
    r = Rig()
    r.run(100)
    r.press(5)  # not invited: never a rating
    r.cmd(1, "invite", txn="T9", staff={"name": "李", "badge": "1"}, ttl=60)
    r.run(50)
    r.press(1)
    r.press(3)  # reason key 3 = notice
    r.run(100)
    ms = r.broker.messages("rating")
    assert [(m["level"], m["reason"]) for m in ms] == [(1, "notice")]
    ev = [m for m in r.broker.messages("event") if m["type"] == "key_uninvited"]
    assert ev[0]["data"] == {"key": 5, "state": "idle"}
    assert r.dev.uninvited_total == 1


def test_forged_and_replayed_commands_ignored():
    r = Rig()
    r.run(100)
    m = r.dev.msgs
    forged = cmd_payload(Signer(bytes(32)), m.t_cmd,
                         [("v", 1), ("kind", "cmd"), ("cmd", "pause"), ("cseq", 1), ("ts", 1)])
    r.broker.pending_in.append((m.t_cmd, forged))
    r.run(50)
    assert r.dev.term.state == "idle" and r.dev.cmd_bad == 1
    r.cmd(5, "pause")
    r.run(50)
    assert r.dev.term.state == "paused"
    r.cmd(6, "resume")
    r.cmd(6, "pause")  # same cseq again: ignored
    r.run(50)
    assert r.dev.term.state == "idle" and r.dev.cmd_bad == 2 and r.dev.cmd_error == "cseq"


def test_offline_ratings_kept_and_sent_in_order_after_reconnect():
    fs = MemFS()
    b = Broker()
    r = Rig(fs, b, standalone=True, min_interval_ms=1000)
    r.run(100)
    b.up = False
    for k in (5, 4, 3):
        r.press(k)
        r.run(1500)
    assert len(r.dev.outbox) == 3
    # Power cut while offline: a new boot finds the ratings on flash.
    r2 = Rig(fs, b, standalone=True)
    b.up = True
    r2.run(3000)
    levels = [m["level"] for m in b.messages("rating")]
    assert levels == [5, 4, 3]
    boots = {m["boot"] for m in b.messages("rating")}
    assert boots == {1}
    ids = [(m["boot"], m["seq"]) for t, p, _ in b.published
           for m in [json.loads(p)] if "seq" in m]
    assert len(ids) == len(set(ids))


def test_heartbeat_telemetry():
    r = Rig(heartbeat_s=10)
    r.run(100)
    r.press(2)
    r.run(10000)
    hb = [m for m in r.broker.messages("event") if m["type"] == "heartbeat"]
    assert len(hb) >= 2
    d = hb[-1]["data"]
    assert d["keys"] == [0, 1, 0, 0, 0] and d["uninvited"] == 1 and d["rssi"] == -61
    assert d["heap_free"] == 12345 and d["outbox"] == 0 and d["state"] == "idle"
    assert d["fw"] == "1.0.0" and len(d) <= 16


def test_stuck_key_reported():
    r = Rig(stuck_ms=3000)
    r.run(100)
    r.keys[2].set(0)
    r.run(3500)
    r.keys[2].set(1)
    r.run(100)
    types = [m["type"] for m in r.broker.messages("event")]
    assert "key_stuck" in types and "key_released" in types


def test_device_heap_footprint():
    gc.collect()
    before = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    r = Rig()
    r.run(200)
    gc.collect()
    after = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    FIGURES["device_live_heap_bytes"] = after - before
    assert r.dev.link.up
