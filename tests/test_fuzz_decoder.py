"""Property-based tests of the inbound path: arbitrary input never crashes it, every refusal has a
reason, and only correctly signed, schema-valid, never-seen messages take effect.

`EVALTERM_FUZZ_EXAMPLES` raises the number of examples per property for a long fuzz run
(see docs/performance.md); the default keeps the suite fast.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import T0
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import load_config
from collector.db import connect
from collector.ingest import Inbound, Ingest
from collector.points import EVENT_FIELDS, device_event_point, render
from collector.protocol import (
    DeviceTopic,
    KnownDevice,
    ProtocolError,
    Rejection,
    build_signed,
    command_message,
    decode_feed_message,
    device_topic,
    event_message,
    feed_topic,
    open_device_message,
    parse_device_payload,
    parse_topic,
    validate_device_message,
    verify,
)

EXAMPLES = int(os.environ.get("EVALTERM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEY = bytes(range(32))
TOPIC = device_topic("evalterm", "h1", "w1", "kp1", "rating")
REASONS = {r.value for r in Rejection}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=6),
    max_leaves=30,
)


def _decode_device(payload: bytes) -> dict[str, Any]:
    obj = parse_device_payload(payload)
    if not verify(KEY, TOPIC, payload):
        raise ProtocolError(Rejection.BAD_SIGNATURE, "x")
    return validate_device_message(DeviceTopic("h1", "w1", "kp1", "rating"), obj)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_with_a_reason(payload: bytes) -> None:
    for decode in (_decode_device, decode_feed_message):
        try:
            decode(payload)
        except ProtocolError as exc:
            assert exc.reason.value in REASONS and exc.detail
        else:  # pragma: no cover - random bytes forming a signed message would be a miracle
            pytest.fail("random bytes accepted")


@FUZZ
@given(json_values)
def test_arbitrary_json_is_refused_or_valid(value: Any) -> None:
    payload = json.dumps(value).encode()
    try:
        msg = decode_feed_message(payload)
    except ProtocolError as exc:
        assert exc.reason.value in REASONS
    else:
        assert msg["v"] == 1 and msg["kind"] in ("txn_completed", "staff_signon", "staff_signoff",
                                                 "window_paused", "window_resumed")


rating_fields = st.fixed_dictionaries({
    "v": st.just(1), "kind": st.just("rating"), "dev": st.just("kp1"),
    "boot": st.integers(1, 2**31 - 1), "seq": st.integers(0, 2**31 - 1),
    "ts": st.none() | st.integers(0, 9_223_372_036_853), "up": st.integers(0, 2**31),
    "level": st.integers(1, 5), "txn": st.none() | st.text(min_size=1, max_size=64),
    "rt": st.none() | st.integers(0, 600_000), "mode": st.sampled_from(["invited", "standalone"]),
}).map(lambda m: {**m, "reason": "wait" if m["level"] <= 2 else None})


@FUZZ
@given(rating_fields, st.data())
def test_signed_valid_ratings_pass_and_any_mutation_fails(fields: dict[str, Any],
                                                          data: st.DataObject) -> None:
    payload = build_signed(KEY, TOPIC, fields)
    if len(payload) > 1024:
        with pytest.raises(ProtocolError):
            _decode_device(payload)
        return
    assert _decode_device(payload)["level"] == fields["level"]
    i = data.draw(st.integers(0, len(payload) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(payload)
    tampered[i] ^= flip
    with pytest.raises(ProtocolError):
        _decode_device(bytes(tampered))


@FUZZ
@given(st.text(max_size=80))
def test_arbitrary_topics(topic: str) -> None:
    try:
        where = parse_topic("evalterm", topic)
    except ProtocolError as exc:
        assert exc.reason is Rejection.BAD_TOPIC
    else:
        assert topic.startswith("evalterm/")
        assert isinstance(where, DeviceTopic | tuple)


# -- the whole pipeline: reordered, replayed, forged and garbage messages -------------------------


@pytest.fixture
def pipeline(tmp_path: Any) -> Iterator[tuple[Ingest, sqlite3.Connection, bytes]]:
    cfg = load_config(None, env={}).with_overrides(linking__grace_s=0)
    conn = connect(tmp_path / "state.db")
    ingest = Ingest(conn, cfg)
    conn.execute("BEGIN")
    key = ingest.registry.add("kp1", "h1", "w1", T0).key
    conn.execute("COMMIT")
    yield ingest, conn, key
    conn.close()


def _message_strategy(key: bytes) -> st.SearchStrategy[tuple[str, str, bytes]]:
    """(label, topic, payload): good ratings (by seq), their replays, forgeries, garbage, feed."""
    good = st.integers(1, 30).map(lambda seq: ("good", TOPIC, build_signed(key, TOPIC, {
        "v": 1, "kind": "rating", "dev": "kp1", "boot": 1, "seq": seq, "ts": None, "up": seq,
        "level": 1 + seq % 5, "txn": None, "reason": "wait" if seq % 5 < 2 else None,
        "rt": None, "mode": "standalone"})))
    forged = st.integers(1, 30).map(lambda seq: ("forged", TOPIC, build_signed(bytes(32), TOPIC, {
        "v": 1, "kind": "rating", "dev": "kp1", "boot": 1, "seq": seq + 1000, "ts": None,
        "up": 1, "level": 5, "txn": None, "reason": None, "rt": None, "mode": "standalone"})))
    garbage = st.binary(max_size=300).map(lambda b: ("garbage", TOPIC, b))
    feed = st.integers(1, 10).map(lambda i: ("feed", feed_topic("evalterm", "h1"), json.dumps({
        "v": 1, "kind": "txn_completed", "id": f"e{i}", "window": "w1", "ts": T0, "txn": f"T{i}",
        "staff": {"id": "s1"}, "service": {"code": "c"}, "started": T0 - 1, "completed": T0 + i,
        "outcome": "completed"}).encode()))
    return st.one_of(good, good, forged, garbage, feed)


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_pipeline_under_reordering_replay_and_forgery(
        pipeline: tuple[Ingest, sqlite3.Connection, bytes], data: st.DataObject) -> None:
    ingest, conn, key = pipeline
    conn.execute("DELETE FROM seen_msg")
    conn.execute("DELETE FROM rating")
    msgs = data.draw(st.lists(_message_strategy(key), max_size=40))
    seen_good: set[bytes] = set()
    outcomes = []
    for start in range(0, len(msgs), 7):  # batches of varying content
        chunk = msgs[start:start + 7]
        items = [Inbound("mqtt", t, p, T0 + start) for _, t, p in chunk]
        outcomes += list(zip(chunk, ingest.process_batch(items, T0 + start), strict=True))
    for (label, _topic, payload), outcome in outcomes:
        assert outcome.status in ("accepted", "rejected", "duplicate"), outcome
        if outcome.status == "rejected":
            assert outcome.reason in REASONS
        if label == "good":
            expect = "rejected" if payload in seen_good else "accepted"
            assert outcome.status == expect
            if expect == "rejected":
                assert outcome.reason == "replay"
            seen_good.add(payload)
        elif label in ("forged", "garbage"):
            assert outcome.status == "rejected"
    stored = conn.execute("SELECT count(*) FROM rating").fetchone()[0]
    assert stored == len(seen_good)
    assert conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0] == 0


# -- every message kind: events of each type with arbitrary data, commands, text edges -----------

TRIED: dict[str, int] = {}
"""Inputs tried per property of this section, printed at the end of the module's run."""

EVENT_TOPIC = device_topic("evalterm", "h1", "w1", "kp1", "event")


class _Kp1:
    hall, window, state, key = "h1", "w1", "active", KEY


def _lookup(device: str) -> KnownDevice | None:
    return _Kp1() if device == "kp1" else None


@pytest.fixture(scope="module", autouse=True)
def _report_tried() -> Iterator[None]:
    yield
    print(f"\nfuzz inputs tried (new message kinds): {TRIED} = {sum(TRIED.values())}")


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


scalars = (st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.text(max_size=12)
           | st.sampled_from(["5", "x\\", "\ud800", "１２", "1e3"]))
data_objects = st.dictionaries(
    st.sampled_from(sorted({k for f in EVENT_FIELDS.values() for k in f} | {"keys", "zz\\"}))
    | st.text(max_size=6), scalars | st.lists(st.integers(0, 9), max_size=6), max_size=16)


@FUZZ
@given(st.sampled_from(sorted(EVENT_FIELDS)), data_objects, st.integers(1, 2**31 - 1),
       st.integers(0, 2**31 - 1))
def test_events_of_every_type_never_poison_a_field_type(kind: str, data: dict[str, Any],
                                                         boot: int, seq: int) -> None:
    """Any data object of any event type: refused with a reason, or accepted and turned into a
    point whose fields have exactly the declared types (so InfluxDB can never see a conflict)."""
    _count("event")
    try:
        payload = event_message(KEY, EVENT_TOPIC, dev="kp1", boot=boot, seq=seq, ts=T0, up=1,
                                type=kind, data=data)
    except UnicodeEncodeError:  # a raw lone surrogate is not UTF-8: no device can send it
        return
    try:
        _, msg = open_device_message("evalterm", EVENT_TOPIC, payload, _lookup)
    except ProtocolError as exc:
        assert exc.reason.value in REASONS and exc.detail
        return
    line = render(device_event_point("h1", "w1", msg, T0))
    declared = EVENT_FIELDS[kind]
    for name, jtype in declared.items():
        value = msg["data"].get(name)
        if value is None or isinstance(value, list):
            assert f"d_{name}=" not in line
        elif jtype == "string":
            assert f'd_{name}="' in line
        else:
            assert f"d_{name}={int(value)}i" in line, line
    for name in set(msg["data"]) - set(declared):  # undeclared members never become fields
        assert f",d_{name}=" not in line and f" d_{name}=" not in line, line


@FUZZ
@given(st.sampled_from(["invite", "cancel", "pause", "resume", "display"]),
       st.dictionaries(st.sampled_from(["txn", "staff", "service", "ttl", "text", "x"]),
                       json_values, max_size=5),
       st.integers(0, 2**31 - 1))
def test_commands_verify_and_any_mutation_fails(cmd: str, fields: dict[str, Any],
                                                cseq: int) -> None:
    """The command builder's output verifies with the device key; any one changed byte does not
    (what the keypad relies on, etfw/command.py)."""
    _count("cmd")
    topic = device_topic("evalterm", "h1", "w1", "kp1", "cmd")
    try:
        payload = command_message(KEY, topic, cmd=cmd, cseq=cseq, ts=T0, **fields)
    except ValueError:  # NaN or Infinity in json_values: not JSON at all
        return
    assert verify(KEY, topic, payload)
    assert not verify(bytes(32), topic, payload)
    body = payload[:-2]
    for i in range(0, len(body), max(1, len(body) // 8)):
        tampered = bytearray(payload)
        tampered[i] ^= 0x01
        assert not verify(KEY, topic, bytes(tampered))


@FUZZ
@given(st.lists(st.characters(codec="utf-8") | st.sampled_from(
    ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\\", '"']), max_size=30).map("".join))
def test_string_escapes_never_escape_the_protocol(text: str) -> None:
    """Any string content (lone-surrogate escapes included) in a feed message: decoded or refused
    with a reason, never an exception of another kind."""
    _count("feed_text")
    raw = ('{"v":1,"kind":"window_paused","id":"e1","window":"w1","ts":1,"reason":"'
           + text + '"}').encode("utf-8", "surrogatepass")
    try:
        msg = decode_feed_message(raw)
    except ProtocolError as exc:
        assert exc.reason.value in REASONS
    else:
        msg["reason"].encode("utf-8")  # what went in is storable text


@FUZZ
@given(st.dictionaries(st.sampled_from(["boot", "seqs", "ts", "kind", "v", "x"]), json_values,
                       max_size=5),
       st.integers(0, 200), st.integers(0, 255))
def test_receipts_any_content_or_changed_byte_is_refused_or_taken_never_a_crash(
        fields: dict[str, Any], at: int, xor: int) -> None:
    """The firmware's receipt check (etfw/message.py Messages.command, what decides that a
    rating leaves the device's flash) on a signed receipt of any content, and on one changed
    byte of a real one: it either takes a well-formed receipt or raises CommandError, nothing
    else; a changed byte is never taken."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
    from etfw.message import CommandError, Messages

    from collector.protocol import receipt_message

    _count("receipt")
    topic = device_topic("evalterm", "h1", "w1", "kp1", "cmd")
    msgs = Messages("evalterm", "h1", "w1", "kp1", KEY, 1, None, 256)
    body = {"v": 1, "kind": "receipt", **fields}
    try:
        payload = build_signed(KEY, topic, body)
    except ValueError:  # NaN or Infinity in json_values: not JSON at all
        return
    try:
        msgs.command(topic.encode(), payload)  # a receipt (None), a command, or refused
    except CommandError:
        pass
    good = receipt_message(KEY, topic, boot=1 + at, seqs=[at, at + 1], ts=T0)
    tampered = bytearray(good)
    tampered[at % (len(good) - 2)] ^= xor or 1
    with pytest.raises(CommandError):
        msgs.command(topic.encode(), bytes(tampered))
