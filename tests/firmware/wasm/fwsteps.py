"""A whole device driven one main-loop step per call from JavaScript (run.mjs --steps).

The WebAssembly port collects garbage only when control is back in JavaScript, never
inside a call (see run.mjs), so a test module cannot show its live peak there. Here every
call is one event of a device's life (a main-loop step, a key edge, a command, a power
cut, a boot), so the heap is measured after each, as a device's loop would leave it:
boot, an invitation, a 1-2 press held on flash during the reason prompt, its reason, a
rating while the broker is gone, a power cut, the next boot on the same flash, the
reconnect, the outbox draining, heartbeats. `check()` then asserts what the broker got."""

import json

import fwrig
from fwfakes import config, tmpdir
from fwnet import Broker

_S = {}


# The events, "op*n" for n of them (run.mjs expands it; "step" is 10 ms of the main loop).
# A key press is "key_K_0 step*8 key_K_1 step*6".
SCRIPT = ("parse boot step*10 invite_3_A-1 step*5 key_2_0 step*8 key_2_1 step*6 step*50"  # prompt
          " key_1_0 step*8 key_1_1 step*6 step*320"  # its reason, thanks, idle
          " invite_4_A-2 step*5 down key_4_0 step*8 key_4_1 step*6 step*320"  # offline
          " key_1_0 step*8 key_1_1 step*6 step*50"  # not invited
          " cut parse boot up step*1200")  # power cut, next boot, reconnect, drain, heartbeats


def do(op):
    a = op.split("_")
    r = _S.get("r")
    if a[0] == "step":
        r.ticks.advance(10)
        r.dev.step()
    elif a[0] == "key":
        r.keys[int(a[1]) - 1].set(int(a[2]))
    elif a[0] == "invite":
        r.cmd(int(a[1]), "invite", txn=a[2], staff={"name": "王", "badge": "7"}, ttl=120)
    elif a[0] in ("down", "up"):
        _S["b"].up = a[0] == "up"
    elif a[0] == "cut":
        del _S["r"]  # power cut: the device and all its RAM are gone
    elif a[0] == "parse":
        # A boot's first half, as main.py does it: parse the config (its module is
        # dropped again). fwrig.Rig then gets this Config instead of parsing its own.
        _S["c"] = config(outbox_records=16, heartbeat_s=10)
        fwrig.config = _config
    elif a[0] == "boot":
        if "b" not in _S:
            _S["flash"], _S["b"] = tmpdir(), Broker()
        _S["r"] = fwrig.Rig(_S["flash"], _S["b"])


def _config(**cfg):
    return _S.pop("c")


def check():
    b = _S["b"]
    ms = b.messages("rating")
    got = [(m["level"], m["txn"], m["reason"], m["boot"]) for m in ms]
    assert got == [(2, "A-1", "attitude", 1), (4, "A-2", None, 1)], got
    ids = [(m["boot"], m["seq"]) for _, p, _ in b.each() for m in [json.loads(p)] if "seq" in m]
    assert len(ids) == len(set(ids))
    hb = [m for m in b.messages("event") if m["type"] == "heartbeat"]
    assert hb and hb[-1]["boot"] == 2, hb
    return "ok"
