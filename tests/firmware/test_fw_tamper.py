"""The tamper inputs (etfw/tamper.py) on the whole device: the key ladder against the key
GPIOs (honest presses, a rewired key, a dead key), the enclosure switch, the last gasp.
Runs under CPython and on the MicroPython unix port (test_micropython.MODULES)."""

import gc
import json

from etfw.tamper import LADDER_MV, classify
from fwfakes import FIGURES, FakePin
from fwrig import Rig

ALL = ["enclosure", "power", "ladder"]


class Ladder:
    """The ADC on the keys' resistor ladder: reads the level of the key physically down
    (`phys`, 0: none), in µV as ADC.read_uv does, with a little noise."""

    def __init__(self):
        self.phys = 0
        self._n = 0

    def read_uv(self):
        self._n += 1
        mv = LADDER_MV[self.phys - 1] if self.phys else LADDER_MV[5]
        return (mv + (self._n % 7) * 6 - 18) * 1000


def _rig(**cfg):
    hw = {"enclosure": FakePin(0), "power": FakePin(1), "ladder": Ladder()}
    r = Rig(more_hw=hw, tamper=cfg.pop("tamper", ALL), **cfg)
    r.hw = hw
    return r


def _press(r, phys, gpio=-1, hold=120):
    """The citizen presses physical key `phys`; its GPIO wire leads to key `gpio` (the same
    key when honest, another when rewired, None when cut)."""
    if gpio < 0:
        gpio = phys
    r.hw["ladder"].phys = phys
    if gpio:
        r.keys[gpio - 1].set(0)
    r.run(hold)
    r.hw["ladder"].phys = 0
    if gpio:
        r.keys[gpio - 1].set(1)
    r.run(300)


def _events(r, kind):
    return [m["data"] for m in r.broker.messages("event") if m["type"] == kind]


def test_classify_reference_levels():
    for k in range(5):
        assert classify(LADDER_MV[k], LADDER_MV) == k + 1
    assert classify(LADDER_MV[5], LADDER_MV) == 0
    assert classify(3300, LADDER_MV) == 0
    assert classify(20, LADDER_MV) == -1  # shorted to GND: no key makes that
    mid = (LADDER_MV[3] + LADDER_MV[4]) // 2
    assert classify(mid, LADDER_MV) == -1


def test_honest_presses_report_nothing():
    r = _rig()
    r.run(200)
    for k in (1, 2, 3, 4, 5, 5, 1):
        _press(r, k)
    assert _events(r, "key_selftest_failed") == []
    assert _events(r, "enclosure_opened") == [] and _events(r, "power_lost") == []
    assert r.dev.tamper.mismatches == 0


def test_rewired_key_reported_on_its_second_press():
    r = _rig()
    r.run(200)
    _press(r, 1, gpio=4)  # key 1's button wired to key 4's input: a 差评 becomes a 4
    assert _events(r, "key_selftest_failed") == []  # one occurrence accuses nobody
    _press(r, 1, gpio=4)
    ev = _events(r, "key_selftest_failed")
    assert len(ev) == 1 and ev[0]["keys"] == [1, 4], ev
    assert abs(ev[0]["adc"][0] - LADDER_MV[0]) < 30
    _press(r, 1, gpio=4)
    assert len(_events(r, "key_selftest_failed")) == 1  # at most once per key per hour


def test_dead_key_reported():
    r = _rig()
    r.run(200)
    _press(r, 2, gpio=0)  # key 2's input cut: pressing it does nothing on the GPIO
    _press(r, 2, gpio=0)
    ev = _events(r, "key_selftest_failed")
    assert len(ev) == 1 and ev[0]["keys"] == [2], ev


def test_a_short_glitch_and_two_keys_are_not_judged():
    r = _rig()
    r.run(200)
    for _ in range(3):  # the ladder alone, for less than the hold time
        r.hw["ladder"].phys = 3
        r.run(30)
        r.hw["ladder"].phys = 0
        r.run(100)
    r.keys[0].set(0)
    r.keys[1].set(0)  # two keys at once: resistors in parallel, read as neither
    r.hw["ladder"].phys = 4
    r.run(200)
    r.keys[0].set(1)
    r.keys[1].set(1)
    r.hw["ladder"].phys = 0
    r.run(200)
    assert _events(r, "key_selftest_failed") == [] and r.dev.tamper.mismatches == 0


def test_enclosure_opened_and_shut():
    r = _rig()
    r.run(200)
    r.hw["enclosure"].set(1)
    r.run(100)
    r.hw["enclosure"].set(0)  # a knock: shorter than the settle time
    r.run(400)
    assert _events(r, "enclosure_opened") == []
    r.hw["enclosure"].set(1)
    r.run(400)
    r.hw["enclosure"].set(0)
    r.run(400)
    assert _events(r, "enclosure_opened") == [{"closed": False, "state": "opened"},
                                              {"closed": True, "state": "shut"}]


def test_open_at_boot_is_reported():
    hw = {"enclosure": FakePin(1)}
    r = Rig(more_hw=hw, tamper=["enclosure"])
    r.run(200)
    assert _events(r, "enclosure_opened") == [{"closed": False, "state": "boot"}]


def test_last_gasp_goes_ahead_of_the_outbox():
    r = _rig()
    r.run(200)
    r.wlan.up = False
    r.run(100)
    for k in (5, 4):
        _press(r, k)  # uninvited presses: events waiting in the outbox while offline
    waiting = len(r.dev.outbox)
    assert waiting >= 1
    r.hw["power"].set(0)  # the supply is gone; the capacitor holds
    r.run(20)
    assert _events(r, "power_lost") == []  # offline: kept on flash instead
    assert len(r.dev.outbox) == waiting + 1
    r.hw["power"].set(1)
    r.wlan.up = True
    r.run(3000)
    assert len(_events(r, "power_lost")) == 1
    # Online: published in the step the supply fell, first of what that step sends.
    before = r.broker.count
    r.hw["power"].set(0)
    r.run(10)
    assert r.broker.count > before
    sent = [json.loads(p) for _, p, _ in r.broker.each()][before:]
    assert sent[0]["type"] == "power_lost", sent
    r.run(100)
    assert len(_events(r, "power_lost")) == 2  # once per loss


def test_not_fitted_means_not_read():
    r = Rig(more_hw={"enclosure": FakePin(1), "ladder": Ladder()})
    r.run(300)
    assert r.dev.tamper is None and _events(r, "enclosure_opened") == []


def _live():
    gc.collect()
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0


def test_tamper_heap_on_a_running_device():
    before = _live()
    r = Rig()
    r.run(200)
    plain = _live() - before
    r = None
    before = _live()
    r = _rig()
    r.run(200)
    FIGURES["device_tamper_extra_heap_bytes"] = _live() - before - plain
    assert r.dev.link.up and r.dev.tamper is not None
