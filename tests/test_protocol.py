"""The wire protocol: the doc's test vectors, the signature's coverage, decoding and schemas."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest
from helpers import T0, feed_bytes, txn_msg

from collector.protocol import (
    DEVICE_BUILDERS,
    DeviceTopic,
    ProtocolError,
    Rejection,
    build_signed,
    command_message,
    decode_feed_message,
    device_topic,
    event_message,
    feed_message,
    heartbeat_message,
    invitation_message,
    open_device_message,
    parse_device_payload,
    parse_topic,
    rating_message,
    receipt_message,
    signed_bytes,
    status_message,
    validate_device_message,
    verify,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
KEY = bytes(range(32))


def doc_vectors() -> list[dict[str, str]]:
    text = DOC.read_text("utf-8")
    blocks = re.findall(r"```vector\n(.*?)```", text, re.S)
    vectors = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        vectors.append(fields)
    return vectors


def test_doc_has_vectors_for_every_signed_kind() -> None:
    kinds = {json.loads(v["payload"])["kind"] for v in doc_vectors()}
    assert kinds == {"rating", "status", "cmd", "receipt"}


@pytest.mark.parametrize("vector", doc_vectors(), ids=lambda v: v["topic"].rsplit("/", 1)[1])
def test_doc_vectors(vector: dict[str, str]) -> None:
    assert "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" in DOC.read_text()
    topic, payload = vector["topic"], vector["payload"].encode()
    # Independent of collector.protocol: HMAC over topic, LF, payload minus its sig member.
    assert payload.endswith(b'"}') and payload[-74:-66] == b',"sig":"'
    data = topic.encode() + b"\n" + payload[:-74] + b"}"
    assert hmac.new(KEY, data, hashlib.sha256).hexdigest() == vector["sig"]
    assert signed_bytes(topic, payload) == data
    assert verify(KEY, topic, payload)
    # Rebuilding from the fields reproduces the exact bytes.
    fields = json.loads(payload)
    del fields["sig"]
    assert build_signed(KEY, topic, fields) == payload


def _rating_vector() -> tuple[str, bytes]:
    v = doc_vectors()[0]
    return v["topic"], v["payload"].encode()


def test_signature_binds_the_topic() -> None:
    topic, payload = _rating_vector()
    for other in (topic.replace("w03", "w04"), topic.replace("kp-0007", "kp-0008"),
                  topic.replace("rating", "event"), topic.replace("evalterm", "other")):
        assert not verify(KEY, other, payload)


def test_signature_binds_every_byte_of_the_fields() -> None:
    topic, payload = _rating_vector()
    body_len = len(payload) - 74
    for i in range(body_len):
        tampered = bytearray(payload)
        tampered[i] = (tampered[i] + 1) % 256
        assert not verify(KEY, topic, bytes(tampered)), f"byte {i} not covered"


def test_signature_rejects_wrong_key_and_malformed_suffix() -> None:
    topic, payload = _rating_vector()
    assert not verify(bytes(32), topic, payload)
    assert not verify(KEY, topic, payload.replace(b'"sig":"', b'"sig": "'))
    assert not verify(KEY, topic, payload[:-1])
    assert not verify(KEY, topic, payload[:-3] + b'X"}')  # not lowercase hex
    assert not verify(KEY, topic, payload.upper())
    assert not verify(KEY, topic, b"{}")


def test_parse_topic() -> None:
    assert parse_topic("evalterm", "evalterm/dev/h1/w1/d1/rating") == DeviceTopic("h1", "w1", "d1",
                                                                                 "rating")
    assert parse_topic("a/b", "a/b/feed/h1") == ("feed", "h1")
    for bad in ("evalterm/dev/h1/w1/d1/cmd", "evalterm/dev/h1/w1/rating", "other/dev/h/w/d/rating",
                "evalterm/dev/h 1/w1/d1/rating", "evalterm/feed", "evalterm/feed/h1/x",
                "evalterm/dev/h1/w1/" + "d" * 33 + "/rating"):
        with pytest.raises(ProtocolError) as err:
            parse_topic("evalterm", bad)
        assert err.value.reason is Rejection.BAD_TOPIC


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"x" * 1025, Rejection.OVERSIZED),
        (b"\xff\xfe", Rejection.MALFORMED),
        (b"not json", Rejection.MALFORMED),
        (b"[1, 2]", Rejection.MALFORMED),
        (b'{"v": 1, "v": 1}', Rejection.MALFORMED),
        (b'{"v": NaN}', Rejection.MALFORMED),
        (b"[" * 500 + b"]" * 500, Rejection.MALFORMED),
        (b'{"kind": "rating"}', Rejection.UNKNOWN_VERSION),
        (b'{"v": 2}', Rejection.UNKNOWN_VERSION),
        (b'{"v": "1"}', Rejection.UNKNOWN_VERSION),
        (b'{"v": true}', Rejection.UNKNOWN_VERSION),
    ],
)
def test_parse_rejections(payload: bytes, reason: Rejection) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_device_payload(payload)
    assert err.value.reason is reason


def _rating(**over: object) -> dict[str, object]:
    msg: dict[str, object] = {"v": 1, "kind": "rating", "dev": "d1", "boot": 1, "seq": 0,
                              "ts": None, "up": 5, "level": 4, "txn": "T1", "reason": None,
                              "rt": 100, "mode": "invited", "sig": "0" * 64}
    msg.update(over)
    return msg


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({}, None),
        ({"level": 0}, Rejection.INVALID),
        ({"level": 6}, Rejection.INVALID),
        ({"level": "5"}, Rejection.INVALID),
        ({"level": 4.0}, Rejection.INVALID),
        ({"level": 1}, Rejection.INVALID),  # 1-2 needs a reason
        ({"level": 5, "reason": "wait"}, Rejection.INVALID),
        ({"level": 2, "reason": "rude"}, Rejection.INVALID),
        ({"level": 2, "reason": "attitude"}, None),
        ({"boot": 0}, Rejection.INVALID),
        ({"seq": -1}, Rejection.INVALID),
        ({"extra": 1}, Rejection.INVALID),
        ({"kind": "event"}, Rejection.INVALID),
        ({"dev": "d2"}, Rejection.DEVICE_MISMATCH),
        ({"txn": ""}, Rejection.INVALID),
        ({"mode": "auto"}, Rejection.INVALID),
    ],
)
def test_rating_schema(over: dict[str, object], reason: Rejection | None) -> None:
    topic = DeviceTopic("h1", "w1", "d1", "rating")
    payload = json.dumps(_rating(**over)).encode()
    if reason is None:
        validate_device_message(topic, parse_device_payload(payload))
        return
    with pytest.raises(ProtocolError) as err:
        validate_device_message(topic, parse_device_payload(payload))
    assert err.value.reason is reason


def test_schema_files_are_valid_json_schemas() -> None:
    import jsonschema

    folder = Path(__file__).resolve().parents[1] / "collector" / "schemas" / "v1"
    names = sorted(p.stem for p in folder.glob("*.json"))
    assert names == ["cmd", "event", "feed", "rating", "receipt", "status"]
    for name in names:
        schema = json.loads((folder / f"{name}.json").read_text())
        jsonschema.Draft7Validator.check_schema(schema)


def test_feed_schema() -> None:
    assert decode_feed_message(feed_bytes(txn_msg("T1")))["txn"] == "T1"
    bad = [
        {**txn_msg("T1"), "completed": T0 - 10**6},
        {k: v for k, v in txn_msg("T1").items() if k != "staff"},
        {**txn_msg("T1"), "outcome": "maybe"},
        {**txn_msg("T1"), "staff": {"id": "has space"}},
        {**txn_msg("T1"), "window": "w/1"},
        {"v": 1, "kind": "staff_signon", "id": "e", "window": "w1", "ts": T0},
    ]
    for msg in bad:
        with pytest.raises(ProtocolError) as err:
            decode_feed_message(feed_bytes(msg))
        assert err.value.reason is Rejection.INVALID
    with pytest.raises(ProtocolError) as err:
        decode_feed_message(b" " * 4097)
    assert err.value.reason is Rejection.OVERSIZED


def _rebuilt(payload: bytes, topic: str) -> bytes:
    """The doc vector's message rebuilt with its kind's builder from its members."""
    f = json.loads(payload)
    del f["sig"], f["v"]
    kind = f.pop("kind")
    if kind == "cmd":
        if f["cmd"] == "invite":
            staff = f.pop("staff")
            del f["cmd"]
            return invitation_message(KEY, topic, staff_name=staff["name"],
                                      staff_badge=staff["badge"], **f)
        return command_message(KEY, topic, **f)
    if kind == "receipt":
        return receipt_message(KEY, topic, **f)
    return DEVICE_BUILDERS[kind](KEY, topic, **f)


@pytest.mark.parametrize("vector", doc_vectors(), ids=lambda v: v["topic"].rsplit("/", 1)[1])
def test_builders_reproduce_the_doc_vectors(vector: dict[str, str]) -> None:
    assert _rebuilt(vector["payload"].encode(), vector["topic"]) == vector["payload"].encode()


def test_builders_build_valid_messages_of_every_kind() -> None:
    prefix, env = "evalterm", {"dev": "kp1", "boot": 3, "seq": 9, "ts": T0, "up": 5}
    t = {k: device_topic(prefix, "h1", "w1", "kp1", k) for k in ("rating", "event", "status")}
    built = [
        (t["rating"], rating_message(KEY, t["rating"], **env, level=2, txn=None, reason="wait",
                                     rt=None, mode="standalone")),
        (t["event"], heartbeat_message(KEY, t["event"], **env, fw="1.0.0", rssi=None,
                                       heap_free=1, outbox=0, discards=0, reconnects=0,
                                       keys=[0, 1, 2, 3, 4], uninvited=0, state="idle")),
        (t["event"], event_message(KEY, t["event"], **env, type="key_stuck",
                                   data={"key": 3, "held_ms": 12_000})),
        (t["status"], status_message(KEY, t["status"], **env, state="online", fw="1.0.0")),
    ]
    dev = _Known()
    for topic, payload in built:
        where, msg = open_device_message(prefix, topic, payload, {"kp1": dev}.get)
        assert (where.kind, msg["seq"]) == (topic.rsplit("/", 1)[1], 9)
    feed = feed_message("window_paused", id="e1", window="w1", ts=T0)
    assert decode_feed_message(feed)["id"] == "e1"


class _Known:
    hall, window, state, key = "h1", "w1", "active", KEY


def test_open_device_message_checks_in_the_documented_order() -> None:
    """Each case breaks two rules; the one earlier in docs/protocol.md §7 is reported."""
    prefix = "evalterm"
    topic = device_topic(prefix, "h1", "w1", "kp1", "rating")
    env = {"dev": "kp1", "boot": 1, "seq": 1, "ts": None, "up": 1}
    good = {"level": 5, "txn": None, "reason": None, "rt": None, "mode": "standalone"}
    revoked, elsewhere = _Known(), _Known()
    revoked.state, elsewhere.window = "revoked", "w9"
    invalid = rating_message(KEY, topic, **env, **{**good, "level": 9})
    forged_invalid = rating_message(bytes(32), topic, **env, **{**good, "level": 9})
    cases = [
        (b"{" + b" " * 2000 + b"}", "bad/topic", {}, Rejection.OVERSIZED),
        (invalid, "evalterm/dev/h1/w1/kp1/nope", {"kp1": _Known()}, Rejection.BAD_TOPIC),
        (b"{]", topic, {}, Rejection.MALFORMED),
        (invalid.replace(b'"v":1', b'"v":2'), topic, {}, Rejection.UNKNOWN_VERSION),
        (forged_invalid, topic, {}, Rejection.UNKNOWN_DEVICE),
        (forged_invalid, topic, {"kp1": revoked}, Rejection.REVOKED_DEVICE),
        (forged_invalid, topic, {"kp1": elsewhere}, Rejection.WRONG_WINDOW),
        (forged_invalid, topic, {"kp1": _Known()}, Rejection.BAD_SIGNATURE),
        (invalid, topic, {"kp1": _Known()}, Rejection.INVALID),
    ]
    for payload, where, known, reason in cases:
        with pytest.raises(ProtocolError) as err:
            open_device_message(prefix, where, payload, known.get)
        assert err.value.reason is reason, (reason, err.value)


def test_the_validator_of_a_kind_agrees_with_the_whole_schema() -> None:
    """_validate checks a feed message (an event) with the schema's branch for its kind (type):
    for valid messages of every kind and each of them with a member removed or of another type
    or value, it accepts and refuses exactly what the whole schema does, with the same message."""
    import fastjsonschema

    from collector.protocol import _validate, _validator

    feed_samples: list[dict[str, object]] = [txn_msg("T1")] + [
        {"v": 1, "kind": k, "id": f"e-{k}", "window": "w1", "ts": T0,
         "staff": {"id": "s1", "name": "张伟"}, "reason": "lunch"}
        for k in ("staff_signon", "staff_signoff", "window_paused", "window_resumed")] + [
        {"v": 1, "kind": "queue_called", "id": "e-q", "window": "w1", "ts": T0, "ticket": "A12"}]
    event_samples: list[dict[str, object]] = [
        {"v": 1, "kind": "event", "dev": "kp1", "boot": 1, "seq": 1, "ts": T0, "up": 5,
         "type": t, "data": d, "sig": "0" * 64}
        for t, d in (("heartbeat", {"fw": "1.0", "rssi": None, "heap_free": 1, "outbox": 0,
                                    "discards": 0, "reconnects": 0, "keys": [0, 0, 0, 0, 0],
                                    "uninvited": 0, "state": "idle"}),
                     ("key_stuck", {"key": 2}), ("boot", {"fw": "1.0"}), ("power_lost", {}),
                     ("nonsense", {}))]
    odd_values: list[object] = [None, 7, "x", [], {}, "txn_completed", "heartbeat"]
    checked = 0
    for name, samples in (("feed", feed_samples), ("event", event_samples)):
        for sample in samples:
            variants = [sample]
            for member in sample:
                variants.append({k: v for k, v in sample.items() if k != member})
                variants += [{**sample, member: odd} for odd in odd_values]
            for obj in variants:
                try:
                    _validator(name)(obj)
                    whole = ""
                except fastjsonschema.JsonSchemaValueException as err:
                    whole = err.message[:160]
                try:
                    _validate(name, obj)
                    branch = ""
                except ProtocolError as err:
                    branch = err.detail.removeprefix(f"{name}: ")
                assert branch == whole, (name, obj)
                checked += 1
    assert checked > 300
