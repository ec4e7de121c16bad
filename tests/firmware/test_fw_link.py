"""The link: connect sequence, in-order drain, one reconnect path with back-off."""

from etfw.link import Link
from etfw.outbox import Outbox
from fwmemfs import MemFS
from fwnet import Broker, FakeWLAN

T = b"p/dev/h/w/d/rating"
BROKER = {"host": "h", "port": 1883, "user": None, "password": None, "keepalive": 30,
          "timeout_s": 5}


def _link(broker, wlan=None, rand=None):
    n = [0]

    def status(state):
        n[0] += 1
        return ('{"state":"' + state + '","n":' + str(n[0]) + '}').encode()

    return Link(BROKER, {"ssid": "s", "password": "p"}, "d", (b"p/status", b"p/cmd"),
                wlan or FakeWLAN(), broker.factory, status, rand or (lambda k: k - 1))


def test_connect_sequence():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    assert ln.up and ln.connects == 1 and ln.reconnects == 0
    topic, will, retain, qos = b.will
    assert topic == b"p/status" and b'"offline"' in will and retain and qos == 1
    assert b.subs == [(b"p/cmd", 1)]
    assert list(b.each()) == [(b"p/status", b'{"state":"online","n":2}', True)]
    assert ln.client.sock._s.opts == [(6, 1, 1)]  # TCP_NODELAY
    assert ln.client.sock._s.timeout == 5


def _m(i, boot=1):
    return b'{"v":1,"boot":%d,"seq":%d}' % (boot, i)


def _poll(ln, ob, t):
    """A poll, and the receipts it brought handled as the app does (test_fw_receipts)."""
    from etfw.message import Messages
    from fwfakes import KEY

    ln.poll(t, ob)
    m = Messages("p", "h", "w", "d", KEY, 1, None, 256)
    while ln.inbox:
        topic, payload = ln.inbox.pop(0)
        m.command(topic, payload, ob, t)


def test_drains_in_order_one_per_poll():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    for i in range(3):
        ob.put(T, _m(i))
    ln.poll(0, ob)  # connect
    for t in (10, 20, 30, 40):
        ln.poll(t, ob)
    assert [p for t, p, r in b.each() if t == T] == [_m(0), _m(1), _m(2)]


def test_broker_loss_keeps_record_and_backs_off():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    ob.put(T, _m(0))
    ob.put(T, _m(1))
    b.fail_after = 1  # m0 gets through, the connection dies on m1
    _poll(ln, ob, 10)
    _poll(ln, ob, 20)
    assert not ln.up and len(ob) == 1 and ln.failures == 1
    delays = []
    t = 20
    for _ in range(8):
        nxt = ln._next_try
        delays.append(nxt - t)
        ln.poll(nxt - 1, ob)
        assert ln.client is None  # not before its time
        t = nxt
        ln.poll(t, ob)  # broker still down: fails, backs off further
    assert delays[0] == 1000 and delays[1] == 2000 and delays[2] == 4000
    assert max(delays) == 60000
    b.up = True
    b.fail_after = None
    ln.poll(ln._next_try, ob)
    ln.poll(ln._next_try + 10, ob)
    assert ln.up and ln.reconnects == 1
    assert [p for t, p, r in b.each() if t == T] == [_m(0), _m(1)]


def test_jitter_stays_in_range():
    import random

    ln = _link(Broker(), rand=lambda n: random.getrandbits(20) % n)
    for attempt in range(10):
        full = min(1000 << min(attempt, 6), 60000)
        for _ in range(20):
            d = ln.backoff_ms(attempt)
            assert full // 2 <= d <= full


def test_wifi_down_joins_once_then_waits():
    b = Broker()
    w = FakeWLAN(up=False)
    ln = _link(b, wlan=w)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    ln.poll(ln._next_try, ob)
    assert w.joins == 1 and not ln.up and b.clients == 0
    w.up = True
    ln.poll(ln._next_try, ob)
    assert ln.up


def test_commands_are_queued_not_handled_inside_publish():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    ob.put(T, b"m0")
    for i in range(6):
        b.pending_in.append((b"p/cmd", b"c%d" % i))
    ln.poll(10, ob)
    assert ln.inbox == [(b"p/cmd", b"c%d" % i) for i in range(4)]
    assert ln.drops_inbox == 2


def test_keepalive_ping_when_idle():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    ln.poll(14999, ob)
    assert b.pings == 0
    ln.poll(15000, ob)
    assert b.pings == 1


def test_drop_is_safe_twice():
    b = Broker()
    ln = _link(b)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    ln._drop(5, OSError(1))
    ln._drop(6, OSError(2))
    assert ln.client is None and ln.failures == 2


def test_tls_ca_file_missing_is_a_counted_tls_failure():
    try:
        import ssl  # noqa: F401
    except ImportError:  # the WebAssembly port has no TLS: a board without it never gets here
        return
    b = Broker()
    ln = Link(dict(BROKER, tls=["/nonexistent/ca.der"]), {"ssid": "s", "password": "p"}, "d",
              (b"p/status", b"p/cmd"), FakeWLAN(), b.factory, lambda s: b"x", lambda k: k - 1)
    ob = Outbox(MemFS(), "ob")
    ln.poll(0, ob)
    assert not ln.up and b.clients == 0 and ln.failures == 1 and ln.tls_failures == 1
    assert ln.last_error.startswith("tls: CA file: ")
    b2 = Broker()
    plain = _link(b2)
    plain.poll(0, ob)
    assert plain.up and b2.tls is None and plain.tls_failures == 0
