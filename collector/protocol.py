"""The evalterm wire protocol, version 1 (see docs/protocol.md, which this module implements).

Pure functions only: topic parsing, the signature scheme, decoding and schema validation.
Nothing here touches the network, the clock or a database, so the firmware, the simulator and
the collector can all share the same rules and the tests can check them byte for byte.

Errors raised while decoding a message form one small tree::

    ProtocolError (carries .reason, a Rejection)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Protocol

import fastjsonschema

from collector.reasons import REASON_TAGS

__all__ = [
    "DEVICE_BUILDERS",
    "DEVICE_KINDS",
    "FEED_KINDS",
    "MAX_DEVICE_PAYLOAD",
    "MAX_FEED_PAYLOAD",
    "PROTOCOL_VERSION",
    "REASON_TAGS",
    "SIG_SUFFIX_LEN",
    "DeviceTopic",
    "KnownDevice",
    "ProtocolError",
    "Rejection",
    "build_signed",
    "command_message",
    "compact_json",
    "decode_feed_message",
    "device_topic",
    "event_message",
    "feed_message",
    "feed_topic",
    "heartbeat_message",
    "invitation_message",
    "open_device_message",
    "parse_device_payload",
    "parse_topic",
    "rating_message",
    "receipt_message",
    "sign",
    "signed_bytes",
    "status_message",
    "validate_device_message",
    "verify",
]

PROTOCOL_VERSION = 1
MAX_DEVICE_PAYLOAD = 1024
MAX_FEED_PAYLOAD = 4096

# Topic suffixes a device publishes on, and the one it listens on.
DEVICE_KINDS = ("rating", "event", "status")
COMMAND_KIND = "cmd"
RECEIPT_KIND = "receipt"  # on the command topic too (§5.1)
MAX_RECEIPT_SEQS = 64  # seqs in one receipt (the firmware refuses more)
FEED_KINDS = (
    "txn_completed",
    "staff_signon",
    "staff_signoff",
    "window_paused",
    "window_resumed",
)

# Reason tags a citizen may choose after a 1-2 rating: collector/reasons.py.

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")  # use with fullmatch ($ passes a final "\n")

_SIG_HEAD = b',"sig":"'
_SIG_HEX_LEN = 64
SIG_SUFFIX_LEN = len(_SIG_HEAD) + _SIG_HEX_LEN + 2  # ,"sig":"<64 hex>"}
_HEX = frozenset(b"0123456789abcdef")


class Rejection(StrEnum):
    """Why an inbound message was refused. The value is the metrics/storage label."""

    OVERSIZED = "oversized"
    BAD_TOPIC = "bad_topic"
    MALFORMED = "malformed"
    UNKNOWN_VERSION = "unknown_version"
    INVALID = "invalid"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    WRONG_WINDOW = "wrong_window"
    DEVICE_MISMATCH = "device_mismatch"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    UNAUTHORIZED = "unauthorized"
    # The webhook's own refusals, before a body reaches the checks above (collector/web/app.py).
    FORBIDDEN_HALL = "forbidden_hall"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    LENGTH_REQUIRED = "length_required"
    BODY_TIMEOUT = "body_timeout"


class ProtocolError(Exception):
    """A message that breaks the protocol. `reason` says which rule; `detail` is safe to log."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    hall: str
    window: str
    device: str
    kind: str


def device_topic(prefix: str, hall: str, window: str, device: str, kind: str) -> str:
    return f"{prefix}/dev/{hall}/{window}/{device}/{kind}"


def feed_topic(prefix: str, hall: str) -> str:
    return f"{prefix}/feed/{hall}"


def parse_topic(prefix: str, topic: str) -> DeviceTopic | tuple[str, str]:
    """Split an inbound topic. Returns a DeviceTopic, or ("feed", hall) for the business feed."""
    parts = topic.split("/")
    plen = prefix.count("/") + 1
    if "/".join(parts[:plen]) != prefix:
        raise ProtocolError(Rejection.BAD_TOPIC, "topic outside the configured prefix")
    rest = parts[plen:]
    if len(rest) == 5 and rest[0] == "dev" and rest[4] in DEVICE_KINDS:
        hall, window, device = rest[1:4]
        if all(ID_PATTERN.fullmatch(x) for x in (hall, window, device)):
            return DeviceTopic(hall, window, device, rest[4])
    elif len(rest) == 2 and rest[0] == "feed" and ID_PATTERN.fullmatch(rest[1]):
        return ("feed", rest[1])
    raise ProtocolError(Rejection.BAD_TOPIC, "topic does not match the evalterm layout")


# --- signatures -------------------------------------------------------------------------------


def signed_bytes(topic: str, payload: bytes) -> bytes:
    """The exact bytes the HMAC covers: topic, LF, the payload with its signature member cut out.

    A signed payload ends with `,"sig":"<64 lowercase hex>"}`; the signed bytes are
    `topic + b"\\n" + payload[:-74] + b"}"`.
    """
    if len(payload) < SIG_SUFFIX_LEN + 1 or payload[-SIG_SUFFIX_LEN:-_SIG_HEX_LEN - 2] != _SIG_HEAD:
        raise ProtocolError(Rejection.BAD_SIGNATURE, "payload does not end with a sig member")
    if payload[-2:] != b'"}':
        raise ProtocolError(Rejection.BAD_SIGNATURE, "payload does not end with a sig member")
    return topic.encode() + b"\n" + payload[:-SIG_SUFFIX_LEN] + b"}"


def sign(key: bytes, topic: str, body: bytes) -> str:
    """HMAC-SHA256 (hex) of an unsigned JSON object `body` (`{...}`) published on `topic`."""
    return hmac.new(key, topic.encode() + b"\n" + body, hashlib.sha256).hexdigest()


# json.dumps with arguments builds a new encoder on every call: three times the cost of the
# encoding itself for the small objects of the hot path (points, invitations).
compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""`json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`, the same text."""


def build_signed(key: bytes, topic: str, fields: dict[str, Any]) -> bytes:
    """Serialise `fields` (in their order) and append the signature member."""
    body = compact_json(fields).encode()
    return body[:-1] + _SIG_HEAD + sign(key, topic, body).encode() + b'"}'


def verify(key: bytes, topic: str, payload: bytes) -> bool:
    try:
        data = signed_bytes(topic, payload)
    except ProtocolError:
        return False
    sig = payload[-_SIG_HEX_LEN - 2 : -2]
    if not _HEX.issuperset(sig):
        return False
    expected = hmac.new(key, data, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, sig)


# --- decoding and schemas ---------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)  # in C; only an object with a repeated key has fewer members
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _v in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard number {name}")


class _FloatSeen(Exception):
    pass


def _reject_float(text: str) -> Any:
    # No message of the protocol carries a fraction; refusing floats at parse time also keeps
    # 4.0 from passing as the integer 4.
    raise _FloatSeen(text[:20])


_INT64 = 2**63


class _HugeInt(Exception):
    pass


def _int64(text: str) -> int:
    # InfluxDB stores 64-bit integers: a larger one would make a point it refuses.
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise _HugeInt(text[:24])
    return value


_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys,
                                   parse_constant=_reject_constant, parse_float=_reject_float,
                                   parse_int=_int64)


def _strict_json(text: str) -> Any:
    # One decoder for every message, as compact_json is one encoder: json.loads with hooks
    # builds a new JSONDecoder on each call.
    return _STRICT_DECODER.decode(text)


def _parse_json_object(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise ProtocolError(Rejection.OVERSIZED, f"{len(payload)} bytes, limit {limit}")
    try:
        obj = _strict_json(payload.decode("utf-8"))
    except _HugeInt as exc:
        raise ProtocolError(Rejection.MALFORMED, f"integer beyond 64 bits: {exc}...") from None
    except _FloatSeen as exc:
        raise ProtocolError(Rejection.INVALID, f"numbers must be integers, got {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(Rejection.MALFORMED, f"not a JSON document: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Rejection.MALFORMED, "JSON document is not an object")
    if b"\\u" in payload:  # only an escape can make a lone surrogate (UTF-8 cannot carry one)
        try:
            compact_json(obj).encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(Rejection.MALFORMED, "a string holds a lone surrogate escape "
                                "(\\ud800-\\udfff)") from None
    v = obj.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        shown = v if isinstance(v, int | str) and len(str(v)) < 12 else type(v).__name__
        raise ProtocolError(Rejection.UNKNOWN_VERSION, f"protocol version {shown!r} not supported")
    return obj


@cache
def _schema(name: str) -> dict[str, Any]:
    text = resources.files("collector").joinpath(f"schemas/v1/{name}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(name: str) -> Any:
    """The compiled validator of a message kind's JSON Schema (collector/schemas/v1/)."""
    return fastjsonschema.compile(_schema(name))


@cache
def _discriminator(name: str) -> tuple[str, frozenset[str]] | None:
    """(member, its allowed values) when every `allOf` rule of the schema is "if `member` is one
    of these values, then ...", `member` being a required string of fixed values (feed: kind,
    event: type); else None."""
    schema = _schema(name)
    rules = schema.get("allOf")
    if not rules:
        return None
    members = set()
    for rule in rules:
        cond = rule.get("if", {})
        if set(rule) != {"if", "then"} or set(cond) != {"properties"} or len(
                cond["properties"]) != 1:
            return None
        (member, test), = cond["properties"].items()
        if set(test) not in ({"const"}, {"enum"}):
            return None
        members.add(member)
    if len(members) != 1:
        return None
    member = members.pop()
    allowed = schema["properties"].get(member, {}).get("enum")
    if member not in schema.get("required", ()) or not allowed:
        return None
    return member, frozenset(v for v in allowed if isinstance(v, str))


@cache
def _branch_validator(name: str, value: str) -> Any:
    """The validator of schema `name` for the messages whose discriminating member is `value`:
    the same schema with the `then` of each rule whose `if` holds for `value`, and no other
    rule, which is what the whole schema checks of such a message. fastjsonschema evaluates each
    `if` by raising and catching an exception: two thirds of a feed message's validation."""
    schema = dict(_schema(name))
    rules = schema.pop("allOf")
    thens = []
    for rule in rules:
        ((_member, test),) = rule["if"]["properties"].items()
        if value in (test["enum"] if "enum" in test else [test["const"]]):
            thens.append(rule["then"])
    if thens:
        schema["allOf"] = thens
    return fastjsonschema.compile(schema)


def _validate(name: str, obj: dict[str, Any]) -> None:
    branch = _discriminator(name)
    value = obj.get(branch[0]) if branch is not None else None
    validator = (_branch_validator(name, value) if branch is not None and type(value) is str
                 and value in branch[1] else _validator(name))
    try:
        validator(obj)
    except fastjsonschema.JsonSchemaValueException as err:
        raise ProtocolError(Rejection.INVALID, f"{name}: {err.message[:160]}") from None


def parse_device_payload(payload: bytes) -> dict[str, Any]:
    """Size, JSON and version checks of a device message (before the registry and signature)."""
    return _parse_json_object(payload, MAX_DEVICE_PAYLOAD)


def validate_device_message(topic: DeviceTopic, obj: dict[str, Any]) -> dict[str, Any]:
    """Schema and consistency checks of a parsed device message whose signature was verified."""
    _validate(topic.kind, obj)
    if obj["kind"] != topic.kind:
        raise ProtocolError(Rejection.INVALID, f"kind {obj['kind']!r} on a {topic.kind} topic")
    if obj["dev"] != topic.device:
        raise ProtocolError(Rejection.DEVICE_MISMATCH, "payload device differs from topic device")
    if topic.kind == "rating":
        level, reason = obj["level"], obj["reason"]
        if level <= 2 and reason is None:
            raise ProtocolError(Rejection.INVALID, "a 1-2 rating needs a reason tag")
        if level >= 3 and reason is not None:
            raise ProtocolError(Rejection.INVALID, "only a 1-2 rating carries a reason tag")
    return obj


class KnownDevice(Protocol):
    """What `open_device_message` needs to know of a registered device (registry.Device)."""

    @property
    def hall(self) -> str: ...
    @property
    def window(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def key(self) -> bytes: ...


def open_device_message(prefix: str, topic: str, payload: bytes,
                        lookup: Callable[[str], KnownDevice | None]
                        ) -> tuple[DeviceTopic, dict[str, Any]]:
    """Every check an inbound device message must pass, in the order of docs/protocol.md §7:
    size, topic, JSON, version, registry (known, active, at its place), signature, schema and
    identity. Returns the parsed topic and the verified message; raises ProtocolError.

    `lookup` maps a device id to its registry entry (None: not registered). The order keeps an
    unauthenticated message to one bounded JSON parse and one registry look-up."""
    if len(payload) > MAX_DEVICE_PAYLOAD:
        raise ProtocolError(Rejection.OVERSIZED,
                            f"{len(payload)} bytes, limit {MAX_DEVICE_PAYLOAD}")
    where = parse_topic(prefix, topic)
    if not isinstance(where, DeviceTopic):
        raise ProtocolError(Rejection.BAD_TOPIC, "not a device topic")
    msg = parse_device_payload(payload)
    dev = lookup(where.device)
    if dev is None:
        raise ProtocolError(Rejection.UNKNOWN_DEVICE, f"device {where.device} not registered")
    if dev.state != "active":
        raise ProtocolError(Rejection.REVOKED_DEVICE, f"device {where.device} is revoked")
    if (dev.hall, dev.window) != (where.hall, where.window):
        raise ProtocolError(
            Rejection.WRONG_WINDOW,
            f"device {where.device} is registered at {dev.hall}/{dev.window}, "
            f"published as {where.hall}/{where.window}",
        )
    if not verify(dev.key, topic, payload):
        raise ProtocolError(Rejection.BAD_SIGNATURE, f"signature of {where.device} does not verify")
    return where, validate_device_message(where, msg)


def decode_feed_message(payload: bytes) -> dict[str, Any]:
    obj = _parse_json_object(payload, MAX_FEED_PAYLOAD)
    _validate("feed", obj)
    if obj["kind"] == "txn_completed" and obj["completed"] < obj["started"]:
        raise ProtocolError(Rejection.INVALID, "completed before started")
    return obj


# --- builders ---------------------------------------------------------------------------------
# The one place outbound and test messages are put together, member order as in docs/protocol.md
# (the order is part of what a signature covers). They build what they are given: a caller may
# build an invalid message on purpose (tests), and the collector validates what it receives.


def _device_body(kind: str, dev: str, boot: int, seq: int, ts: int | None,
                 up: int) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "kind": kind, "dev": dev, "boot": boot, "seq": seq, "ts": ts,
            "up": up}


def rating_message(key: bytes, topic: str, *, dev: str, boot: int, seq: int, ts: int | None,
                   up: int, level: int, txn: str | None, reason: str | None, rt: int | None,
                   mode: str, **extra: Any) -> bytes:
    """A signed `rating` (§4.1)."""
    body = _device_body("rating", dev, boot, seq, ts, up)
    body.update(level=level, txn=txn, reason=reason, rt=rt, mode=mode, **extra)
    return build_signed(key, topic, body)


def event_message(key: bytes, topic: str, *, dev: str, boot: int, seq: int, ts: int | None,
                  up: int, type: str, data: dict[str, Any], **extra: Any) -> bytes:
    """A signed `event` of any type (§4.2); heartbeats: `heartbeat_message`."""
    body = _device_body("event", dev, boot, seq, ts, up)
    body.update(type=type, data=data, **extra)
    return build_signed(key, topic, body)


def heartbeat_message(key: bytes, topic: str, *, dev: str, boot: int, seq: int, ts: int | None,
                      up: int, fw: str, rssi: int | None, heap_free: int, outbox: int,
                      discards: int, reconnects: int, keys: list[int], uninvited: int,
                      state: str, **data: Any) -> bytes:
    """A signed heartbeat event; `data` adds members to its `data` object."""
    fields = {"fw": fw, "rssi": rssi, "heap_free": heap_free, "outbox": outbox,
              "discards": discards, "reconnects": reconnects, "keys": list(keys),
              "uninvited": uninvited, "state": state, **data}
    return event_message(key, topic, dev=dev, boot=boot, seq=seq, ts=ts, up=up, type="heartbeat",
                         data=fields)


def status_message(key: bytes, topic: str, *, dev: str, boot: int, seq: int, ts: int | None,
                   up: int, state: str, fw: str) -> bytes:
    """A signed `status` (§4.3: online, or the offline will)."""
    body = _device_body("status", dev, boot, seq, ts, up)
    body.update(state=state, fw=fw)
    return build_signed(key, topic, body)


DEVICE_BUILDERS: dict[str, Callable[..., bytes]] = {
    "rating": rating_message, "event": event_message, "status": status_message,
}
"""The builder of each device message kind: `DEVICE_BUILDERS[kind](key, topic, dev=..., ...)`."""


def command_message(key: bytes, topic: str, *, cmd: str, cseq: int, ts: int,
                    **fields: Any) -> bytes:
    """A signed command to a device (§5): `cmd` with its own members (`text` for display)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": COMMAND_KIND, "cmd": cmd, "cseq": cseq,
                            "ts": ts}
    body.update(fields)
    return build_signed(key, topic, body)


def receipt_message(key: bytes, topic: str, *, boot: int, seqs: list[int], ts: int) -> bytes:
    """A signed receipt (§5.1): the collector committed the messages `(boot, s)`, s in `seqs`,
    of the device whose command topic is `topic`; the device may delete them from flash."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": RECEIPT_KIND, "boot": boot,
                            "seqs": list(seqs), "ts": ts}
    return build_signed(key, topic, body)


def invitation_message(key: bytes, topic: str, *, cseq: int, ts: int, txn: str, staff_name: str,
                       staff_badge: str, service: str, ttl: int) -> bytes:
    """A signed invitation to rate transaction `txn` for `ttl` seconds."""
    return command_message(key, topic, cmd="invite", cseq=cseq, ts=ts, txn=txn,
                           staff={"name": staff_name, "badge": staff_badge}, service=service,
                           ttl=ttl)


def feed_message(kind: str, *, id: str, window: str, ts: int, **fields: Any) -> bytes:
    """A business-system feed message (§6, unsigned: the feed user's broker credentials or the
    webhook token authenticate it)."""
    msg = {"v": PROTOCOL_VERSION, "kind": kind, "id": id, "window": window, "ts": ts, **fields}
    return json.dumps(msg, ensure_ascii=False).encode()
