"""The whole device on fakes: a stuck key, the device's own heap."""

import gc

from fwfakes import FIGURES
from fwrig import Rig


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
