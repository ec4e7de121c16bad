"""The rating state machine, transition by transition."""

from etfw.terminal import Terminal


class Rec:
    def __init__(self):
        self.ratings = []
        self.holds = []
        self.events = []
        self.shown = []
        self.texts = []

    def hold(self, level, txn, rt, mode):
        self.holds.append((level, txn, rt, mode))

    def rating(self, level, txn, reason, rt, mode):
        self.ratings.append((level, txn, reason, rt, mode))

    def event(self, etype, data):
        self.events.append((etype, data))

    def show(self, state, now, info):
        self.shown.append(state)

    def message(self, text):
        self.texts.append(text)


def _term(**kw):
    r = Rec()
    t = Terminal(r, r, **kw)
    t.start(0)
    return t, r


def _invite(txn="T1", ttl=60, cseq=1):
    return {"cmd": "invite", "cseq": cseq, "txn": txn, "ttl": ttl,
            "staff": {"name": "张伟", "badge": "010233"}}


def test_invited_good_rating_then_thanks_then_idle():
    t, r = _term(thanks_ms=3000)
    t.command(_invite(), 1000)
    assert t.state == "invited"
    t.press(5, 3350)
    assert r.ratings == [(5, "T1", None, 2350, "invited")]
    assert t.state == "thanks"
    t.press(4, 3400)  # a second press is not a second rating (一次一评)
    assert len(r.ratings) == 1 and t.uninvited == 1
    t.tick(6349)
    assert t.state == "thanks"
    t.tick(6350)
    assert t.state == "idle"


def test_bad_rating_asks_reason_with_same_keys():
    t, r = _term()
    t.command(_invite("T2"), 0)
    t.press(2, 4000)
    assert t.state == "reason" and r.ratings == []
    t.press(4, 6000)
    assert r.ratings == [(2, "T2", "wait", 4000, "invited")]
    t2, r2 = _term(reason_keys=("other", "facility", "notice", "wait", "attitude"))
    t2.command(_invite("T3"), 0)
    t2.press(1, 10)
    t2.press(2, 20)
    assert r2.ratings == [(1, "T3", "facility", 10, "invited")]


def test_reason_timeout_records_none():
    t, r = _term(reason_ms=20000)
    t.command(_invite("T4"), 0)
    t.press(1, 500)
    t.tick(20499)
    assert r.ratings == []
    t.tick(20500)
    assert r.ratings == [(1, "T4", "none", 500, "invited")]
    assert t.state == "thanks"


def test_invite_expires():
    t, r = _term()
    t.command(_invite("T5", ttl=10), 1000)
    t.tick(10999)
    assert t.state == "invited"
    t.tick(11000)
    assert t.state == "idle"
    assert r.events == [("invite_expired", {"txn": "T5"})]
    t.press(5, 11500)
    assert r.ratings == [] and t.uninvited == 1


def test_uninvited_presses_are_counted_and_reported_not_rated():
    t, r = _term()
    for i in range(5):
        t.press(5, 100 + i * 10)
    assert r.ratings == []
    assert t.uninvited == 5
    # Reported, but rate-limited so a hammered key cannot flood the outbox.
    assert r.events == [("key_uninvited", {"key": 5, "state": "idle"})]
    t.press(3, 1200)
    assert r.events[-1] == ("key_uninvited", {"key": 3, "state": "idle"})


def test_paused_refuses_ratings_and_invites():
    t, r = _term()
    t.command({"cmd": "pause", "cseq": 1}, 0)
    assert t.state == "paused" and r.shown[-1] == "paused"
    t.command(_invite(), 10)
    assert t.state == "paused" and t.refused_invites == 1
    t.press(5, 20)
    assert r.ratings == [] and r.events[-1] == ("key_uninvited", {"key": 5, "state": "paused"})
    t.command({"cmd": "resume", "cseq": 2}, 30)
    assert t.state == "idle"


def test_pause_during_reason_keeps_the_rating():
    t, r = _term()
    t.command(_invite("T6"), 0)
    t.press(2, 100)
    t.command({"cmd": "pause", "cseq": 2}, 200)
    assert r.ratings == [(2, "T6", "none", 100, "invited")]
    assert t.state == "paused"


def test_new_invite_during_reason_flushes_pending():
    t, r = _term()
    t.command(_invite("A"), 0)
    t.press(1, 100)
    t.command(_invite("B", cseq=2), 200)
    assert r.ratings == [(1, "A", "none", 100, "invited")]
    assert t.state == "invited" and t.invite is not None and t.invite["txn"] == "B"
    t.press(4, 700)
    assert r.ratings[-1] == (4, "B", None, 500, "invited")


def test_cancel_only_matching_txn():
    t, r = _term()
    t.command(_invite("C1"), 0)
    t.command({"cmd": "cancel", "cseq": 2, "txn": "OTHER"}, 10)
    assert t.state == "invited"
    t.command({"cmd": "cancel", "cseq": 3, "txn": "C1"}, 20)
    assert t.state == "idle" and r.events == []


def test_display_text():
    t, r = _term()
    t.command({"cmd": "display", "cseq": 1, "text": "请稍候"}, 0)
    assert r.texts == ["请稍候"] and t.state == "idle"


def test_standalone_min_interval():
    t, r = _term(standalone=True, min_interval_ms=5000, thanks_ms=1000)
    t.press(4, 1000)
    t.press(5, 3000)  # inside the repeat interval: filtered
    t.tick(3000)
    t.press(5, 5999)
    t.press(3, 6000)
    assert r.ratings == [(4, None, None, None, "standalone"), (3, None, None, None, "standalone")]
    assert t.filtered == 2 and t.uninvited == 0


def test_standalone_bad_rating_reason():
    t, r = _term(standalone=True)
    t.press(1, 0)
    t.press(1, 100)
    assert r.ratings == [(1, None, "attitude", None, "standalone")]


def test_standalone_still_refuses_when_paused():
    t, r = _term(standalone=True)
    t.command({"cmd": "pause", "cseq": 1}, 0)
    t.press(5, 100)
    assert r.ratings == [] and t.uninvited == 1


def test_bad_rating_is_held_until_its_reason():
    # A 1-2 press goes to the sink at once (held on flash, so a power cut cannot lose it);
    # the rating proper follows with the reason, or with "none" on timeout or a command.
    t, r = _term(reason_ms=20000)
    t.command(_invite("H1"), 0)
    t.press(2, 300)
    assert r.holds == [(2, "H1", 300, "invited")] and r.ratings == []
    t.press(5, 900)
    assert r.ratings == [(2, "H1", "other", 300, "invited")] and len(r.holds) == 1
    t.tick(5000)
    t.command(_invite("H2", cseq=2), 5000)
    t.press(1, 5100)
    t.tick(25100)
    assert r.holds[-1] == (1, "H2", 100, "invited")
    assert r.ratings[-1] == (1, "H2", "none", 100, "invited")
    t.press(4, 28200)  # still the thanks screen: no rating
    t.command(_invite("H3", cseq=3), 30000)
    t.press(4, 30100)
    assert len(r.holds) == 2 and r.ratings[-1] == (4, "H3", None, 100, "invited")  # not held
