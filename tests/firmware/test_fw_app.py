"""The whole device on fakes: invite -> press -> signed rating on the (fake) broker.
(The whole-device tests are split over several small modules: under MicroPython each
module's code shares the 64 KiB heap with the firmware and a running device.)"""

from etfw.sign import Signer
from fwfakes import KEY, tmpdir
from fwrig import Rig


def test_boot_sequence_and_counter():
    fs = tmpdir()
    r = Rig(fs)
    assert r.dev.boot == 1
    r.run(100)
    assert "boot" in [m["type"] for m in r.broker.messages("event")]
    assert r.broker.messages("status")[0]["state"] == "online"
    assert r.shown[0] == "欢迎评价"
    r = None  # power off: the next boot finds only what is on flash
    r2 = Rig(fs)
    assert r2.dev.boot == 2


def test_invited_rating_end_to_end():
    r = Rig()
    r.run(100)
    r.cmd(7, "invite", txn="BJ-1", staff={"name": "张伟", "badge": "010233"},
          service="居民身份证换领", ttl=120)
    r.run(50)
    assert r.dev.term.state == "invited"
    assert "张伟" in r.shown[1]
    assert [p.level for p in r.leds] == [1, 1, 1, 1, 1]
    r.press(4)
    r.run(100)
    ratings = r.broker.messages("rating")
    assert len(ratings) == 1
    m = ratings[0]
    assert (m["level"], m["txn"], m["reason"], m["mode"]) == (4, "BJ-1", None, "invited")
    assert 0 < m["rt"] < 1000
    raw = r.broker.payloads("rating")[0]
    from etfw.receipt import verify  # here: a running device loads it only for a command

    assert verify(Signer(KEY), r.dev.msgs.t_rating, raw)
    assert r.dev.keys.counts == [0, 0, 0, 1, 0]
    assert len(r.dev.outbox) == 0
