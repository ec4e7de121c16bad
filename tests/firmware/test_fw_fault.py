"""An invalid config whose identity, key, Wi-Fi and broker parts are usable: the device
connects and publishes a signed config_error event (protocol section 4.2), rates nothing."""

import json

from fwfakes import KEY, Ticks, cmd_payload, config_error, tmpdir

# Parsed first, before the firmware is imported: under MicroPython the config module (the
# largest) then loads into an empty heap, as on the device at boot (main.py drops it again).
# Bad board, lang and reason_ms; identity, key, Wi-Fi and broker are usable.
BAD = config_error(board={"keys": [32, 33, 25, 26], "leds": None, "rgb": None, "buzzer": 23},
                   lang="fr", reason_ms=5)

from etfw.fault import DETAIL_MAX, ConfigFault, clean_detail  # noqa: E402
from etfw.receipt import verify  # noqa: E402
from etfw.sign import Signer  # noqa: E402
from etfw.store import RealFS, Store  # noqa: E402
from fwnet import Broker, FakeWLAN  # noqa: E402


class FaultRig:
    """The fault device on fakes; the rig is also its UI (main.py passes Indicators, whose
    "error" view is tested with the terminal): it records what it is asked to show."""

    def __init__(self, detail, link, flash=None, broker=None):
        self.flash = flash or tmpdir()
        self.broker = broker or Broker()
        self.ticks = Ticks(5000)
        self.shown = []
        self.ui_ticks = 0
        self.dev = ConfigFault(link, detail, self, RealFS(), FakeWLAN(), self.broker.factory,
                               data_dir=self.flash, ticks=self.ticks)

    def show(self, state, now, info=None):
        self.shown.append((state, info))

    def tick(self, now):
        self.ui_ticks += 1

    def run(self, ms, step=10):
        for _ in range(ms // step):
            self.ticks.advance(step)
            self.dev.step()


def test_config_error_published_after_connect():
    detail, link = BAD
    assert link is not None
    for part in ("board.keys", "needs leds or rgb", "lang", "reason_ms"):
        assert part in detail, part
    r = FaultRig(detail, link)
    assert r.broker.count == 0  # nothing before the link is up
    r.run(100)
    assert r.broker.messages("status")[0]["state"] == "online"
    ev = r.broker.messages("event")
    assert [m["type"] for m in ev] == ["config_error"]
    m = ev[0]
    assert m["data"] == {"detail": detail}
    assert (m["dev"], m["boot"], m["seq"]) == ("kp-0007", 1, 2)  # 0, 1: last will, online
    raw = r.broker.payloads("event")[0]
    assert raw.startswith(b'{"v":1,"kind":"event","dev":"kp-0007","boot":1,')
    assert verify(Signer(KEY), r.dev.msgs.t_event, raw)
    assert r.broker.messages("rating") == []
    assert r.shown == [("error", detail)] and r.ui_ticks == 10


def test_boot_counter_advances_and_is_kept():
    flash = tmpdir()
    Store(RealFS(), flash + "state").save({"boot": 6, "keys": [1, 2, 3, 4, 5], "discards": 2,
                                           "uninvited": 9})
    detail, link = BAD
    r = FaultRig(detail, link, flash)
    assert r.dev.boot == 7
    st = Store(RealFS(), flash + "state").load()
    assert st == {"boot": 7, "keys": [1, 2, 3, 4, 5], "discards": 2, "uninvited": 9}
    r.run(100)
    assert r.broker.messages("event")[0]["boot"] == 7


def test_sent_again_after_every_reconnect_and_commands_dropped():
    detail, link = BAD
    r = FaultRig(detail, link)
    r.run(100)
    b = r.broker
    t_cmd = r.dev.msgs.t_cmd
    b.pending_in.append((t_cmd, cmd_payload(Signer(KEY), t_cmd, [
        ("v", 1), ("kind", "cmd"), ("cmd", "pause"), ("cseq", 1), ("ts", 1)])))
    r.run(100)
    assert r.dev.link.inbox == [] and r.dev.sent == 1
    b.up = False  # broker restarts
    r.run(100)
    assert not r.dev.link.up
    b.up = True
    r.run(5000)  # back-off is at most a few seconds here
    assert r.dev.link.up and r.dev.link.connects == 2
    ev = b.messages("event")
    assert [m["type"] for m in ev] == ["config_error", "config_error"]
    assert ev[0]["seq"] < ev[1]["seq"] and r.dev.sent == 2


def test_detail_is_printable_ascii_and_bounded():
    assert clean_detail('board: unknown profile "a\\b"\n') == "board: unknown profile ?a?b??"
    assert clean_detail("board: unknown profile 板式") == "board: unknown profile ??"
    assert clean_detail("lang: zh or en") == "lang: zh or en"
    r = FaultRig("x" * (DETAIL_MAX + 200), BAD[1])
    r.run(100)
    raw = r.broker.payloads("event")[0]
    assert len(raw) <= 1024 and verify(Signer(KEY), r.dev.msgs.t_event, raw)
    assert json.loads(raw)["data"]["detail"] == "x" * DETAIL_MAX
