"""End-to-end receipts on the device side (docs/protocol.md 5.1): the outbox keeps every
record until the collector's receipt names it, whatever the broker acknowledged; the link
sends the unconfirmed ones again on every connect (and after a long wait), in order, at most
8 (link._WINDOW) at a time. (A module of its own: under MicroPython the test code shares
the heap with the firmware.)"""

from etfw.link import Link
from etfw.message import Messages
from etfw.outbox import Outbox
from fwfakes import KEY
from fwmemfs import MemFS
from fwnet import Broker, FakeClient, FakeWLAN

T = b"p/dev/h/w/d/rating"
BROKER = {"host": "h", "port": 1883, "user": None, "password": None, "keepalive": 30,
          "timeout_s": 5}


class Lossy(Broker):
    """A broker that acknowledges every rating and event and loses it while `lossy`."""

    lossy = True

    def factory(self, *args, **kw):
        Broker.factory(self, *args, **kw)
        return _LossyClient(self)


class _LossyClient(FakeClient):
    def publish(self, topic, msg, retain=False, qos=0):
        if self.b.lossy and not retain:
            self._check()  # as a broker that answers with a PUBACK, and forgets it
            return
        FakeClient.publish(self, topic, msg, retain, qos)


def _link(broker):
    def status(state):
        return ('{"state":"' + state + '"}').encode()

    return Link(BROKER, {"ssid": "s", "password": "p"}, "d", (b"p/status", b"p/cmd"),
                FakeWLAN(), broker.factory, status, lambda k: k - 1)


def _drain(ob):
    out = []
    while True:
        rec = ob.peek()
        if rec is None:
            return out
        out.append(rec[2])
        ob.ack(rec[0])


def _m(i, boot=1):
    return b'{"v":1,"boot":%d,"seq":%d}' % (boot, i)


# The device's messages (commands and receipts are checked against its key and topic);
# made once, at import, while the heap is still in one piece.
_M = Messages("p", "h", "w", "d", KEY, 1, None, 256)


def _msgs():
    return _M


def _receipts(ln, ob, now=0):
    """What the app does with the receipts the link queued (app.Device.command)."""
    while ln.inbox:
        t, p = ln.inbox.pop(0)
        _msgs().command(t, p, ob, now)


def confirm(ob, boot, seqs, now):
    """A receipt signed as the collector signs it, handled as the app does; how many
    records it retired."""
    from etfw.sign import Signer
    from fwfakes import cmd_payload

    m = _msgs()
    before = len(ob)
    fields = [("v", 1), ("kind", "receipt"), ("boot", boot), ("seqs", seqs), ("ts", 1)]
    p = cmd_payload(Signer(KEY), m.t_cmd, fields)
    m.command(m.t_cmd, p, ob, now)
    return before - len(ob)


def _poll(ln, ob, t):
    ln.poll(t, ob)
    _receipts(ln, ob, t)


def test_drains_in_order_one_per_poll_and_keeps_until_the_receipt():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    for i in range(3):
        ob.put(T, _m(i))
    ln.poll(0, ob)  # connect
    for t in (10, 20, 30, 40):
        ln.poll(t, ob)
    assert [p for t, p, r in b.each() if t == T] == [_m(0), _m(1), _m(2)]
    assert len(ob) == 3 and ob.unconfirmed == 3  # the broker's PUBACK retires nothing
    ln.poll(50, ob)  # check_msg delivers the receipts
    _receipts(ln, ob, 50)
    assert len(ob) == 0 and ob.unconfirmed == 0


def test_a_broker_that_acknowledges_and_drops_loses_nothing():
    b = Lossy()  # PUBACKs, forwards nothing: no receipt ever comes
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    for i in range(3):
        ob.put(T, _m(i))
    for t in range(0, 100, 10):
        _poll(ln, ob, t)
    assert b.count == 1 and len(ob) == 3 and ob.unconfirmed == 3  # the status only
    # The next connection (a real broker) gets them all again, in order.
    b.lossy = False
    ln.client.sock.close()
    _poll(ln, ob, 100)  # the dead connection is noticed
    t = ln._next_try
    for k in range(6):
        _poll(ln, ob, t + 10 * k)
    assert [p for t, p, r in b.each() if t == T] == [_m(0), _m(1), _m(2)]
    assert len(ob) == 0 and ob.count == 0


def test_at_most_a_window_waits_for_receipts_and_a_late_one_sends_again():
    window, resend_ms = 8, 30000  # link._WINDOW, _RESEND_MS

    b = Lossy()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob", 50, 8192)
    for i in range(window + 3):
        ob.put(T, _m(i))
    for t in range(0, 300, 10):
        _poll(ln, ob, t)
    assert ob.unconfirmed == window  # then it waits
    _poll(ln, ob, 10 + resend_ms - 1)
    assert ob.unconfirmed == window
    b.lossy = False  # (the same connection: the collector is back, say)
    _poll(ln, ob, 10 + resend_ms)  # no receipt for RESEND_MS: the oldest go again
    t = 20 + resend_ms
    for k in range(40):
        _poll(ln, ob, t + 10 * k)
    assert len(ob) == 0
    sent = [p for t, p, r in b.each() if t == T]
    assert sent == [_m(i) for i in range(window + 3)]


def test_a_receipt_out_of_order_keeps_the_others_in_order_across_a_reboot():
    fs = MemFS()
    b = Lossy()
    ln = _link(b)
    ob = Outbox(fs, "ob", 10, 8192)
    for i in range(4):
        ob.put(T, _m(i))
    for t in range(0, 60, 10):
        _poll(ln, ob, t)
    assert confirm(ob, 1, [2, 9], 60) == 1  # seq 2 only (9 is not in flight)
    assert confirm(ob, 2, [1], 60) == 0  # another boot's seq 1: not this record
    assert len(ob) == 3 and ob.unconfirmed == 3
    fs2 = MemFS()  # a reboot (on a copy of the flash): seq 2 stays confirmed
    fs2.files = {k: bytearray(v) for k, v in fs.files.items()}
    ob2 = Outbox(fs2, "ob", 10, 8192)
    got = []
    while ob2.peek() is not None:
        rid, _t, p = ob2.peek()
        got.append(p)
        ob2.ack(rid)
    assert got == [_m(0), _m(1), _m(3)]
    ob.unconfirmed = 0  # a new connection: this boot sends the rest again, in order, skipping seq 2
    out = []
    while True:
        rec = ln.next(70, ob)
        if rec is None:
            break
        out.append(rec[2])
    assert out == [_m(0), _m(1), _m(3)]
    assert confirm(ob, 1, [0, 1, 3], 80) == 3 and len(ob) == 0 and ob.count == 0


def _sent(ob, now=0):
    """Publish (as the link does) every record Link.next gives; their seqs."""
    ln = _link(Broker())
    out = []
    while True:
        rec = ln.next(now, ob)
        if rec is None:
            return out
        out.append(rec[2])


def _rated(i):
    return b'{"v":1,"boot":3,"seq":%d,"pad":"xxxxxxxxxxxxxxxxxxxx"}' % i


def test_receipts_out_of_order_survive_compaction_and_reboot():
    fs = MemFS()
    ob = Outbox(fs, "ob", 20, 1200)
    for i in range(6):
        ob.put(T, _rated(i))
    assert _sent(ob) == [_rated(i) for i in range(6)]
    assert confirm(ob, 3, [1, 4], 0) == 2 and len(ob) == 4 and ob.unconfirmed == 4
    ob._compact()  # the ack records of 1 and 4 leave the log
    assert ob.count == 4 and ob.unconfirmed == 4
    assert confirm(ob, 3, [0], 0) == 1 and ob.unconfirmed == 3
    fs2 = MemFS()
    fs2.files = {k: bytearray(v) for k, v in fs.files.items()}
    assert _drain(Outbox(fs2, "ob", 20, 1200)) == [_rated(i) for i in (2, 3, 5)]
    ob.unconfirmed = 0
    assert _sent(ob) == [_rated(i) for i in (2, 3, 5)]
    assert confirm(ob, 3, [2, 3, 5], 0) == 3 and len(ob) == 0
    assert fs.size("ob") == -1  # nothing kept: the log is gone
