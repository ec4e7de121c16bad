"""The voice module: the exact bytes sent to the DFPlayer, under CPython and the MicroPython
unix port, through an injected UART; and confirm mode end to end through the terminal."""

import fwfakes
from etfw.indicators import Indicators
from etfw.outputs import Outputs
from etfw.terminal import Terminal
from etfw.voice import Voice, frame


class Uart:
    def __init__(self):
        self.sent = []

    def write(self, b):
        self.sent.append(bytes(b))


def _hex(b):
    return " ".join(f"{x:02X}" for x in b)


def _play(folder, n):
    return frame(0x0F, (folder << 8) | n)


def test_frame_matches_the_datasheet():
    # DFPlayer Mini datasheet, "play the first track": 7E FF 06 03 00 00 01 FE F7 EF.
    assert _hex(frame(0x03, 1)) == "7E FF 06 03 00 00 01 FE F7 EF"
    # checksum: the 16-bit two's complement of the six bytes after 7E
    b = frame(0x0F, 0x0203)
    assert (sum(b[1:7]) + ((b[7] << 8) | b[8])) & 0xFFFF == 0 and b[9] == 0xEF


def test_boot_selects_the_card_and_sets_the_volume():
    u = Uart()
    Voice(u, "zh", 17)
    assert [_hex(x) for x in u.sent] == [_hex(frame(0x09, 2)), "7E FF 06 06 00 00 11 FE E4 EF"]


def test_each_state_plays_its_prompt_in_the_language_folder():
    for lang, folder in (("zh", 1), ("en", 2)):
        u = Uart()
        v = Voice(u, lang)
        u.sent = []
        v.show("invited", 0, {"txn": "T"})
        v.show("reason", 0, ())
        v.show("thanks", 0, 5)
        v.show("paused", 0)
        assert u.sent == [_play(folder, 1), _play(folder, 2), _play(folder, 3),
                          _play(folder, 4)], lang
        assert _hex(u.sent[0]) == f"7E FF 06 0F 00 {folder:02X} 01 FE {0xEB - folder:02X} EF"


def test_idle_stops_only_what_is_playing():
    u = Uart()
    v = Voice(u)
    u.sent = []
    v.show("idle", 0)
    assert u.sent == []  # nothing was playing: nothing to stop
    v.show("invited", 0, {})
    v.show("idle", 10)  # invitation cancelled mid-prompt
    assert u.sent[-1] == frame(0x16) and _hex(frame(0x16)) == "7E FF 06 16 00 00 00 FE E5 EF"
    v.show("thanks", 20, 4)
    n = len(u.sent)
    v.show("idle", 3020)  # after thanks: the prompt may finish
    assert len(u.sent) == n


class Sink:
    def __init__(self):
        self.ratings = []

    def hold(self, level, txn, rt, mode):
        pass

    def rating(self, level, txn, reason, rt, mode):
        self.ratings.append((level, reason))

    def event(self, etype, data):
        pass


def _confirm_rig():
    u = Uart()
    leds = [fwfakes.FakePin() for _ in range(5)]
    ind = Indicators(leds)
    sink = Sink()
    t = Terminal(sink, Outputs([ind, Voice(u)]), confirm_ms=4000, reason_ms=30000)
    t.start(0)
    u.sent = []
    return t, sink, u, ind, leds


def _invite():
    return {"cmd": "invite", "cseq": 1, "txn": "T1", "ttl": 60,
            "staff": {"name": "x", "badge": "1"}}


def test_confirm_mode_reads_each_key_before_it_counts():
    t, sink, u, ind, leds = _confirm_rig()
    t.command(_invite(), 0)
    t.press(3, 1000)  # read out 基本满意 (file 13), nothing counted
    assert sink.ratings == [] and u.sent[-1] == _play(1, 13) and ind.mode == "preview"
    assert [p.level for p in leds] == [0, 0, 1, 0, 0]  # that key's LED alone (and blinking)
    t.press(5, 2000)  # another key: read out instead (file 15)
    assert sink.ratings == [] and u.sent[-1] == _play(1, 15)
    t.press(5, 3000)  # the same key again: it counts
    assert sink.ratings == [(5, None)] and t.state == "thanks" and u.sent[-1] == _play(1, 3)


def test_confirm_mode_forgets_an_unconfirmed_key():
    t, sink, u, ind, _leds = _confirm_rig()
    t.command(_invite(), 0)
    t.press(2, 1000)
    t.tick(4999)
    assert ind.mode == "preview"
    t.tick(5000)  # confirm_ms of silence: the invitation again, nothing counted
    assert sink.ratings == [] and t.state == "invited" and ind.mode == "invited"
    assert u.sent[-1] == _play(1, 1)
    t.press(2, 6000)  # a first press again, not a confirmation
    assert sink.ratings == [] and u.sent[-1] == _play(1, 12)


def test_confirm_mode_at_the_reason_step_reads_the_reason():
    t, sink, u, _ind, _leds = _confirm_rig()
    t.command(_invite(), 0)
    t.press(1, 100)
    t.press(1, 200)  # 非常不满意, confirmed: the reason step
    assert t.state == "reason" and u.sent[-1] == _play(1, 2)
    t.press(4, 300)  # reason key 4 = "wait" (config order): file 21 + 3
    assert u.sent[-1] == _play(1, 24) and sink.ratings == []
    t.press(4, 400)
    assert sink.ratings == [(1, "wait")]


def test_without_confirm_mode_a_key_counts_at_once():
    u = Uart()
    sink = Sink()
    t = Terminal(sink, Outputs([Indicators([fwfakes.FakePin() for _ in range(5)]), Voice(u)]))
    t.start(0)
    t.command(_invite(), 0)
    t.press(4, 500)
    assert sink.ratings == [(4, None)] and u.sent[-1] == _play(1, 3)


def test_confirm_mode_invitation_says_how_to_confirm():
    u = Uart()
    v = Voice(u, "en", confirm=True)
    v.show("invited", 0, {})
    assert u.sent[-1] == _play(2, 6)


class _Cfg:
    window = "w01"
    lang = "en"
    display = None
    voice = {"volume": 9}  # noqa: RUF012 (a stand-in Config)
    confirm_ms = 5000


def test_outputs_build_adds_the_voice_only_when_wired():
    from etfw.outputs import build

    ind = Indicators([fwfakes.FakePin() for _ in range(5)])
    assert build({}, _Cfg(), ind) is ind  # no voice module on the board: the indicators alone
    u = Uart()
    out = build({"voice": u}, _Cfg(), ind)
    assert len(out.parts) == 2 and u.sent[-1] == frame(0x06, 9)
    out.show("invited", 0, {})
    assert u.sent[-1] == _play(2, 6)  # en folder, the confirm-mode invitation
