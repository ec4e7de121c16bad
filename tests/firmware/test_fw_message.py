"""Command checks (protocol §5) and the envelope of device messages."""

import json

from etfw.clock import Clock
from etfw.message import CommandError, Messages
from etfw.receipt import verify
from fwfakes import KEY, cmd_payload


def _msgs(ts=None):
    c = Clock(lambda: 0)
    if ts is not None:
        c.sync(ts)
    return Messages("evalterm", "hall01", "w03", "kp-0007", KEY, 3, c)


def _invite(m, cseq, ts=1764201590000, ttl=120, **over):
    f = [("v", 1), ("kind", "cmd"), ("cmd", "invite"), ("cseq", cseq), ("ts", ts),
         ("txn", f"T-{cseq:d}"), ("staff", {"name": "张伟", "badge": "010233"}),
         ("service", "居民身份证换领"), ("ttl", ttl)]
    f = [(k, over.get(k, v)) for k, v in f]
    return cmd_payload(m.signer, m.t_cmd, f)


def _reason(m, topic, payload):
    try:
        m.command(topic, payload)
    except CommandError as e:
        return e.args[0]
    return "accepted"


def test_cseq_must_increase():
    m = _msgs()
    assert _reason(m, m.t_cmd, _invite(m, 5)) == "accepted"
    assert _reason(m, m.t_cmd, _invite(m, 5)) == "cseq"
    assert _reason(m, m.t_cmd, _invite(m, 4)) == "cseq"
    assert _reason(m, m.t_cmd, _invite(m, 6)) == "accepted"


def test_bad_signature_wrong_topic_and_malformed():
    m = _msgs()
    p = _invite(m, 1)
    bad = p.replace(b"T-1", b"T-2")
    assert _reason(m, m.t_cmd, bad) == "signature"
    assert _reason(m, m.t_event, p) == "topic"
    assert _reason(m, m.t_cmd, b"x" * 1100) == "oversized"
    assert _reason(m, m.t_cmd, _invite(m, 2, ttl=0)) == "malformed"
    assert _reason(m, m.t_cmd, _invite(m, 3, ttl=True)) == "malformed"
    assert _reason(m, m.t_cmd, _invite(m, 4, staff="x")) == "malformed"
    nocmd = cmd_payload(m.signer, m.t_cmd, [("v", 1), ("kind", "cmd"), ("cmd", "reboot"),
                                            ("cseq", 9), ("ts", 1)])
    assert _reason(m, m.t_cmd, nocmd) == "malformed"
    # A refused command does not move the cseq high-water mark.
    assert m.last_cseq == -1


def test_expired_invite_ignored_only_when_synced():
    late = 1764201590000 + 121000
    m = _msgs(ts=late)
    assert _reason(m, m.t_cmd, _invite(m, 1)) == "expired"
    m2 = _msgs(ts=late - 2000)
    assert _reason(m2, m2.t_cmd, _invite(m2, 1)) == "accepted"
    m3 = _msgs()
    assert _reason(m3, m3.t_cmd, _invite(m3, 1)) == "accepted"


def test_envelope_order_and_seq():
    m = _msgs()
    a = m.event("key_uninvited", {"key": 3, "state": "idle"})
    b = m.event("heartbeat", {"keys": [1, 2, 3, 4, 5], "rssi": None, "ntp": False})
    assert m.seq == 2
    ja = json.loads(a)
    jb = json.loads(b)
    assert (ja["seq"], jb["seq"]) == (0, 1)
    assert ja["boot"] == 3 and ja["ts"] is None and ja["data"]["key"] == 3
    assert jb["data"]["keys"] == [1, 2, 3, 4, 5] and jb["data"]["ntp"] is False
    head = b'{"v":1,"kind":"event","dev":"kp-0007","boot":3,"seq":0,"ts":null,"up":'
    assert a.startswith(head)
    assert verify(m.signer, m.t_event, a) and verify(m.signer, m.t_event, b)


def test_too_long_message_takes_no_seq():
    m = _msgs()
    try:
        m.event("config_error", {"detail": "x" * 2000})
        raise AssertionError("no error")
    except ValueError:
        pass
    assert m.seq == 0
