"""The whole device on fakes, in operation: offline ratings across a reboot, heartbeats."""

import json

from fwfakes import tmpdir
from fwnet import Broker
from fwrig import Rig


def _rate_offline(flash, broker):
    # Its own function: when it returns, nothing of this boot is left (on MicroPython a
    # dead local can linger in the caller's value stack and keep the whole device alive).
    r = Rig(flash, broker, standalone=True, min_interval_ms=1000)
    r.run(100)
    broker.up = False
    for k in (5, 4, 3):
        r.press(k)
        r.run(1500)
    assert len(r.dev.outbox) == 3


def test_offline_ratings_kept_and_sent_in_order_after_reconnect():
    fs = tmpdir()
    b = Broker()
    _rate_offline(fs, b)
    # Power cut while offline: a new boot finds the ratings on flash.
    r2 = Rig(fs, b, standalone=True)
    b.up = True
    r2.run(3000)
    levels = [m["level"] for m in b.messages("rating")]
    assert levels == [5, 4, 3]
    boots = {m["boot"] for m in b.messages("rating")}
    assert boots == {1}
    ids = [(m["boot"], m["seq"]) for t, p, _ in b.each()
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
