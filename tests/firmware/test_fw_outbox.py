"""The flash outbox: order, bounds, and power cuts at every byte and every step."""

from etfw.outbox import Outbox
from fwmemfs import MemFS, PowerCut

T = b"evalterm/dev/hall01/w03/kp-0007/rating"


def _payload(i, size=60):
    body = b'{"v":1,"seq":%d,"pad":"' % i
    return body + b"x" * max(0, size - len(body) - 2) + b'"}'


def _drain(ob):
    out = []
    while True:
        rec = ob.peek()
        if rec is None:
            return out
        rid, topic, payload = rec
        assert topic == T
        out.append(payload)
        ob.ack(rid)


def _pending(ob):
    """Pending payloads without acking (reads by offset, as the link does)."""
    out = []
    for k in range(ob.count):
        i = (ob._head + k) % ob.cap
        f = ob._fs.open(ob.path, "rb")
        f.seek(ob._offs[i])
        rec = f.read(ob._lens[i])
        f.close()
        tlen = rec[6]
        out.append(rec[13 + tlen:])
    return out


def test_fifo_and_ack_then_delete():
    fs = MemFS()
    ob = Outbox(fs, "ob", 10, 8192)
    for i in range(3):
        ob.put(T, _payload(i))
    assert len(ob) == 3
    rid, _topic, p = ob.peek()
    assert p == _payload(0)
    ob.ack(rid + 1)  # not the head: ignored
    assert len(ob) == 3
    ob.ack(rid)
    assert _drain(ob) == [_payload(1), _payload(2)]
    assert fs.size("ob") == -1  # nothing pending: the log is gone


def test_survives_reboot_byte_identical():
    fs = MemFS()
    ob = Outbox(fs, "ob", 10, 8192)
    for i in range(4):
        ob.put(T, _payload(i))
    rid, _, _ = ob.peek()
    ob.ack(rid)
    ob2 = Outbox(fs, "ob", 10, 8192)
    assert ob2.recovered == 3 and ob2.damaged == 0
    assert _drain(ob2) == [_payload(i) for i in (1, 2, 3)]


def test_bounded_discards_oldest_and_counts():
    fs = MemFS()
    ob = Outbox(fs, "ob", 4, 8192)
    for i in range(7):
        ob.put(T, _payload(i))
    assert ob.discards == 3 and len(ob) == 4
    ob2 = Outbox(fs, "ob", 4, 8192)
    assert _drain(ob2) == [_payload(i) for i in (3, 4, 5, 6)]


def test_byte_bound_and_compaction():
    fs = MemFS()
    ob = Outbox(fs, "ob", 100, 1500)
    for i in range(120):
        ob.put(T, _payload(i, 120))
        if i % 3 == 0:
            rid, _, _ = ob.peek()
            ob.ack(rid)
        assert fs.size("ob") <= 1500 + 2048 + 200
    assert ob.compactions > 0 and ob.discards > 0
    left = _drain(Outbox(fs, "ob", 100, 1500))
    seqs = [int(p.split(b'"seq":')[1].split(b",")[0]) for p in left]
    assert seqs == sorted(seqs) and seqs[-1] == 119 and len(set(seqs)) == len(seqs)


def _build(n_acked=2, n_pending=3):
    """Log: R0 .. R(n_acked), acks of the first n_acked, then the other pending records,
    so the file holds acked records, acks, and ends with a rating record."""
    fs = MemFS()
    ob = Outbox(fs, "ob", 16, 16384)
    for i in range(n_acked + 1):
        ob.put(T, _payload(i))
    for _ in range(n_acked):
        ob.ack(ob.peek()[0])
    for i in range(n_acked + 1, n_acked + n_pending):
        ob.put(T, _payload(i))
    return fs, ob


def test_power_cut_truncation_at_every_byte_of_last_record():
    fs, ob = _build()
    full = fs.snapshot()["ob"]
    start = ob._offs[(ob._head + ob.count - 1) % ob.cap]
    expect_all = [_payload(i) for i in (2, 3, 4)]
    for cut in range(start, len(full)):
        fs.restore({"ob": full[:cut]})
        got = _drain(Outbox(fs, "ob", 16, 16384))
        assert got == expect_all[:2], cut  # the torn record is lost, nothing else
    fs.restore({"ob": full})
    assert _drain(Outbox(fs, "ob", 16, 16384)) == expect_all


def test_corruption_at_every_byte_of_last_record():
    fs, ob = _build()
    full = fs.snapshot()["ob"]
    start = ob._offs[(ob._head + ob.count - 1) % ob.cap]
    expect = [_payload(i) for i in (2, 3)]
    for pos in range(start, len(full)):
        for flip in (0x01, 0x80):
            bad = bytearray(full)
            bad[pos] ^= flip
            fs.restore({"ob": bytes(bad)})
            ob2 = Outbox(fs, "ob", 16, 16384)
            assert ob2.damaged == 1, pos
            assert _drain(ob2) == expect, pos


def test_power_cut_in_an_ack_means_resend_not_loss():
    fs, ob = _build(n_acked=0, n_pending=3)
    before = fs.snapshot()["ob"]
    rid, _, _ = ob.peek()
    ob.ack(rid)
    full = fs.snapshot()["ob"]
    for cut in range(len(before), len(full)):
        fs.restore({"ob": full[:cut]})
        got = _drain(Outbox(fs, "ob", 16, 16384))
        # The torn ack is dropped: record 0 comes again (same bytes), once.
        assert got == [_payload(0), _payload(1), _payload(2)], cut


def test_damage_in_the_middle_loses_only_that_record():
    fs, ob = _build(n_acked=0, n_pending=5)
    full = bytearray(fs.snapshot()["ob"])
    mid = ob._offs[(ob._head + 2) % ob.cap] + 20
    full[mid] ^= 0xFF
    fs.restore({"ob": bytes(full)})
    ob2 = Outbox(fs, "ob", 16, 16384)
    assert ob2.damaged == 1
    assert _drain(ob2) == [_payload(i) for i in (0, 1, 3, 4)]


def _scenario(fs, log):
    """Puts, acks, discards and compactions, logging each step before and after."""
    ob = Outbox(fs, "ob", 4, 800)
    for i in range(9):
        p = _payload(i, 160)
        # The oldest records this put must push out (the bound's rule, predicted).
        pend = _pending(ob)
        n = 13 + len(T) + len(p)
        count, size, victims = ob.count, ob._pending_bytes, []
        while count and (count >= ob.cap or size + n > ob.max_bytes):
            victims.append(pend[len(victims)])
            size -= 13 + len(T) + len(victims[-1])
            count -= 1
        log.append(("try", p, victims))
        ob.put(T, p)
        log.append(("put", p, None))
        for v in victims:
            log.append(("discard", v, None))
        if i % 2:
            rec = ob.peek()
            if rec is not None:
                log.append(("acking", rec[2], None))
                ob.ack(rec[0])
                log.append(("ack", rec[2], None))
    return ob


def _seq(p):
    return int(p.split(b'"seq":')[1].split(b",")[0])


def test_power_cut_at_any_moment():
    """Cut the power after every possible number of written bytes (and atomic steps);
    after reboot the outbox holds only whole records, in order, each at most once; every
    record that was durably stored and not yet retired is still there."""
    fs = MemFS()
    fs.budget = 10 ** 9
    full = _scenario(fs, [])
    assert full.compactions > 0 and full.discards > 0  # the cuts cover both
    total = 10 ** 9 - fs.budget
    checked = 0
    for budget in range(total + 1):  # every byte
        fs = MemFS()
        fs.budget = budget
        log = []
        try:
            _scenario(fs, log)
        except PowerCut:
            pass
        fs.budget = None
        got = _drain(Outbox(fs, "ob", 4, 800))
        assert len(set(got)) == len(got), budget
        assert [_seq(p) for p in got] == sorted(_seq(p) for p in got), budget
        stored = [e[1] for e in log if e[0] == "put"]
        gone = [e[1] for e in log if e[0] in ("ack", "discard")]
        maybe = set()  # the step in flight may or may not have completed
        if log and log[-1][0] == "try":
            maybe.add(log[-1][1])
            for v in log[-1][2]:
                maybe.add(v)
        if log and log[-1][0] == "acking":
            maybe.add(log[-1][1])
        for p in got:
            assert p in stored or p in maybe, (budget, _seq(p))
            assert p not in gone, (budget, _seq(p))
        for p in stored:
            if p not in gone and p not in maybe:
                assert p in got, (budget, _seq(p))
        checked += 1
    assert checked > 100


def test_unfinished_compaction_is_discarded():
    fs, _ob = _build(n_acked=1, n_pending=3)
    fs.files["ob.tmp"] = bytearray(b"\xe5R garbage")
    got = _drain(Outbox(fs, "ob", 16, 16384))
    assert got == [_payload(i) for i in (1, 2, 3)] and "ob.tmp" not in fs.files


def test_finished_compaction_whose_rename_was_cut_is_adopted():
    fs, ob = _build(n_acked=1, n_pending=3)
    ob._compact()
    fs.files["ob.tmp"] = fs.files.pop("ob")  # as if cut between remove and rename
    got = _drain(Outbox(fs, "ob", 16, 16384))
    assert got == [_payload(i) for i in (1, 2, 3)]


def test_flash_full_raises_and_keeps_earlier_records():
    fs = MemFS()
    ob = Outbox(fs, "ob", 16, 16384)
    ob.put(T, _payload(0))
    fs.full_at = fs.used() + 30
    try:
        ob.put(T, _payload(1))
        raise AssertionError("no error")
    except OSError:
        pass
    assert ob.write_errors >= 1
    fs.full_at = None
    ob.put(T, _payload(2))
    assert _drain(Outbox(fs, "ob", 16, 16384)) == [_payload(0), _payload(2)]


# --- a 1-2 rating held while its reason is chosen (power cuts at every byte) -------------

R = b"evalterm/dev/hall01/w03/kp-0007/rating"


def _rating(seq, reason):
    return b'{"v":1,"seq":%d,"level":1,"reason":"' % seq + reason + b'","pad":"xxxxxxxx"}'


def _held_setup():
    """Two pending records, then a held rating (reason "none"), then an event after it."""
    fs = MemFS()
    ob = Outbox(fs, "ob", 16, 16384)
    ob.put(T, _payload(0))
    ob.put(T, _payload(1))
    before = fs.snapshot()
    ob.hold(R, _rating(2, b"none"))
    ob.put(T, _payload(3))
    return fs, ob, before


def _drain_all(ob):
    out = []
    while True:
        rec = ob.peek()
        if rec is None:
            return out
        out.append(rec[2])
        ob.ack(rec[0])


def test_held_rating_is_not_sent_until_replaced():
    fs, ob, _ = _held_setup()
    assert ob.held and len(ob) == 3
    assert _drain_all(ob) == [_payload(0), _payload(1), _payload(3)]  # the held one waits
    assert fs.size("ob") > 0  # the log stays: it holds the held rating
    ob.put(R, _rating(4, b"wait"), replace=True)
    assert not ob.held
    assert _drain_all(ob) == [_rating(4, b"wait")]
    assert fs.size("ob") == -1
    assert _drain_all(Outbox(fs, "ob", 16, 16384)) == []


def test_replacement_survives_reboot_and_the_held_one_does_not():
    fs, ob, _ = _held_setup()
    ob.put(R, _rating(4, b"wait"), replace=True)
    ob2 = Outbox(fs, "ob", 16, 16384)
    assert not ob2.held and ob2.damaged == 0
    assert _drain_all(ob2) == [_payload(0), _payload(1), _payload(3), _rating(4, b"wait")]


def test_held_rating_is_sent_once_after_a_reboot():
    fs, ob, _ = _held_setup()
    del ob  # power cut while the reason prompt is up
    ob2 = Outbox(fs, "ob", 16, 16384)
    assert not ob2.held and ob2.recovered == 4
    got = _drain_all(ob2)
    assert got == [_payload(0), _payload(1), _rating(2, b"none"), _payload(3)]
    assert _drain_all(Outbox(fs, "ob", 16, 16384)) == []  # acked: never again
    ob3 = Outbox(fs, "ob", 16, 16384)
    ob3.put(T, _payload(5))  # a later boot's records get new ids, the rule cannot misfire
    assert _drain_all(Outbox(fs, "ob", 16, 16384)) == [_payload(5)]


def test_power_cut_at_every_byte_of_the_held_record():
    """The hold is torn (the press is lost, as any record being written) or whole (the
    rating is sent once, reason "none"); nothing else changes."""
    _, ob, before = _held_setup()
    size = len(R) + len(_rating(2, b"none")) + 13
    seen = set()
    for budget in range(size + 1):
        fs = MemFS()
        fs.restore(before)
        ob = Outbox(fs, "ob", 16, 16384)
        fs.budget = budget
        try:
            ob.hold(R, _rating(2, b"none"))
            done = True
        except PowerCut:
            done = False
        fs.budget = None
        got = _drain_all(Outbox(fs, "ob", 16, 16384))
        if done or budget == size:
            assert got == [_payload(0), _payload(1), _rating(2, b"none")], budget
        else:
            assert got in ([_payload(0), _payload(1)],
                           [_payload(0), _payload(1), _rating(2, b"none")]), budget
        seen.add(len(got))
    assert seen == {2, 3}


def test_power_cut_at_every_byte_of_the_replacement():
    """Choosing the reason replaces the held rating in ONE append: after a cut at any byte
    exactly one of the two is sent, never both, never neither."""
    final = _rating(4, b"wait")
    size = len(R) + len(final) + 13
    seen = set()
    for budget in range(size + 1):
        fs = MemFS()
        ob = _running_with_held(fs)
        fs.budget = budget
        try:
            ob.put(R, final, replace=True)
        except PowerCut:
            pass
        fs.budget = None
        got = _drain_all(Outbox(fs, "ob", 16, 16384))
        ratings = [p for p in got if p in (_rating(2, b"none"), final)]
        assert len(ratings) == 1, budget
        assert [p for p in got if p not in ratings] == [_payload(0), _payload(1), _payload(3)]
        seen.add(ratings[0])
    assert seen == {_rating(2, b"none"), final}


def _running_with_held(fs):
    """The outbox of a running device whose reason prompt is up (as _held_setup, on an
    empty `fs`): a new Outbox on a log would recover the held record as pending."""
    fs.files = {}
    ob = Outbox(fs, "ob", 16, 16384)
    ob.put(T, _payload(0))
    ob.put(T, _payload(1))
    ob.hold(R, _rating(2, b"none"))
    ob.put(T, _payload(3))
    return ob


def test_compaction_keeps_the_held_record():
    fs = MemFS()
    ob = Outbox(fs, "ob", 4, 2000)
    ob.hold(R, _rating(0, b"none"))
    for i in range(30):  # puts and acks until the log is compacted several times
        ob.put(T, _payload(i + 1, 120))
        rec = ob.peek()
        ob.ack(rec[0])
    assert ob.compactions > 0 and ob.held
    assert _drain_all(Outbox(fs, "ob", 4, 2000)) == [_rating(0, b"none")]  # after a cut
    ob.put(R, _rating(31, b"other"), replace=True)
    assert _drain_all(Outbox(fs, "ob", 4, 2000)) == [_rating(31, b"other")]


def test_flash_failure_while_replacing_sends_the_held_rating():
    """If flash refuses the replacement, the held rating (reason "none") is sent instead:
    the reason is lost, the rating is not, and it is sent once (never both versions)."""
    fs = MemFS()
    ob = _running_with_held(fs)
    fs.full_at = fs.used() + 20
    ob.put(R, _rating(4, b"wait"), replace=True)  # no error: the app sends nothing itself
    assert not ob.held and ob.write_errors >= 1
    snap = fs.snapshot()
    fs.full_at = None
    want = [_payload(0), _payload(1), _rating(2, b"none"), _payload(3)]
    assert sorted(_drain_all(ob)) == sorted(want)
    fs.restore(snap)  # or a power cut before any of it was sent
    assert _drain_all(Outbox(fs, "ob", 16, 16384)) == want
