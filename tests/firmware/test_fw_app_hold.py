"""The whole device on fakes: a 1-2 rating waiting for its reason survives a power cut.

It is on flash from the press on (signed with reason "none", not sent while the prompt is
up); after a reboot it is sent once, with its own (boot, seq), never twice. The power cut
at every byte of those writes is tested on the outbox itself (test_fw_outbox.py)."""

import json

from fwfakes import tmpdir
from fwnet import Broker
from fwrig import Rig


def _press_bad(flash, broker, reason=None):
    # Its own function: when it returns, nothing of this boot is left (see test_fw_app_ops).
    r = Rig(flash, broker)
    r.run(100)
    r.cmd(3, "invite", txn="BJ-9", staff={"name": "王", "badge": "7"}, ttl=120)
    r.run(50)
    r.press(2)
    assert r.dev.term.state == "reason" and r.dev.outbox.held
    if reason is not None:
        r.press(reason)
        r.run(100)
    # Power cut here (the Rig is dropped with all its RAM).


def _ids(broker):
    return [(m["boot"], m["seq"]) for t, p, _ in broker.each() for m in [json.loads(p)]]


def test_pending_rating_sent_once_after_a_power_cut():
    flash, b = tmpdir(), Broker()
    _press_bad(flash, b)
    assert b.messages("rating") == []  # the prompt was up: nothing sent yet
    r = Rig(flash, b)
    r.run(200)
    ms = b.messages("rating")
    assert [(m["level"], m["txn"], m["reason"], m["mode"]) for m in ms] == [
        (2, "BJ-9", "none", "invited")]
    assert ms[0]["boot"] == 1 and r.dev.boot == 2  # signed in the boot that saw the press
    assert len(r.dev.outbox) == 0
    r = None
    r3 = Rig(flash, b)  # and once only: a later boot sends it no more
    r3.run(200)
    assert len(b.messages("rating")) == 1
    ids = _ids(b)
    assert len(ids) == len(set(ids))


def test_chosen_reason_replaces_the_held_rating():
    flash, b = tmpdir(), Broker()
    _press_bad(flash, b, reason=4)
    ms = b.messages("rating")
    assert [(m["level"], m["reason"]) for m in ms] == [(2, "wait")]
    r = Rig(flash, b)  # power cut after the reason: the held copy must not come back
    r.run(200)
    assert [(m["level"], m["reason"]) for m in b.messages("rating")] == [(2, "wait")]
    ids = _ids(b)
    assert len(ids) == len(set(ids))
