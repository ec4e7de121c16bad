"""End-to-end receipts, collector side (docs/protocol.md §5.1): after a batch commits, every
rating and non-heartbeat event of it, and every replay of one committed before, is named in a
receipt signed with the device's key, which the firmware's own check accepts; and a device that
comes online is sent its window's pause state again (§5, state commands)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from helpers import T0, Dev, feed, feed_bytes

from collector import outbox
from collector.config import load_config
from collector.db import connect
from collector.ingest import Inbound, Ingest
from collector.protocol import MAX_RECEIPT_SEQS, device_topic, receipt_message, verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
from etfw.message import CommandError, Messages


@pytest.fixture
def setup(tmp_path: Path) -> tuple[sqlite3.Connection, Ingest, Dev]:
    cfg = load_config(None, env={})
    conn = connect(tmp_path / "state.db")
    ingest = Ingest(conn, cfg)
    conn.execute("BEGIN")
    key = ingest.registry.add("kp1", "h1", "w1", T0).key
    conn.execute("COMMIT")
    return conn, ingest, Dev("evalterm", "kp1", key, boot=7)


def _receipts(ingest: Ingest, items: list[Inbound]) -> list[dict]:
    outcomes = ingest.process_batch(items, T0 + 5000)
    got = []
    for topic, payload in ingest.receipts(outcomes, T0 + 5000):
        assert topic == "evalterm/dev/h1/w1/kp1/cmd"
        assert verify(ingest.registry.get("kp1").key, topic, payload)  # type: ignore[union-attr]
        got.append(json.loads(payload))
    return got


def test_committed_ratings_and_events_get_one_receipt_per_boot(setup: tuple) -> None:
    _conn, ingest, dev = setup
    r1, hb, ev, st = dev.rating(5), dev.heartbeat([0] * 5), dev.event("key_stuck", {
        "key": 2, "held_ms": 9000}), dev.status("online")
    got = _receipts(ingest, [Inbound("mqtt", *m, T0) for m in (r1, hb, ev, st)])
    # The heartbeat and the status are not kept on the device's flash: no receipt names them.
    assert [(r["kind"], r["boot"], r["seqs"]) for r in got] == [("receipt", 7, [1, 3])]
    dev.boot = 8
    got = _receipts(ingest, [Inbound("mqtt", *dev.rating(4), T0)])
    assert [(r["boot"], r["seqs"]) for r in got] == [(8, [5])]


def test_a_replay_is_refused_and_answered_with_a_receipt_again(setup: tuple) -> None:
    conn, ingest, dev = setup
    msg = dev.rating(2, reason="wait")
    first = _receipts(ingest, [Inbound("mqtt", *msg, T0)])
    again = ingest.process_batch([Inbound("mqtt", *msg, T0 + 10)], T0 + 6000)
    assert [(o.status, o.reason) for o in again] == [("rejected", "replay")]
    assert [json.loads(p)["seqs"] for _t, p in ingest.receipts(again, T0)] == [first[0]["seqs"]]
    assert conn.execute("SELECT count(*) FROM rating").fetchone()[0] == 1  # stored once


def test_refused_messages_get_no_receipt(setup: tuple) -> None:
    _conn, ingest, dev = setup
    topic, payload = dev.rating(5)
    forged = payload[:-10] + b"0000000" + payload[-3:]
    other = Dev("evalterm", "kp1", bytes(32), boot=7)  # signed with another key
    got = _receipts(ingest, [Inbound("mqtt", topic, forged, T0),
                             Inbound("mqtt", *other.rating(5), T0)])
    assert got == []


def test_receipts_are_chunked_and_the_firmware_accepts_them(setup: tuple) -> None:
    _conn, ingest, dev = setup
    items = [Inbound("mqtt", *dev.rating(3), T0) for _ in range(MAX_RECEIPT_SEQS + 3)]
    got = ingest.receipts(ingest.process_batch(items, T0 + 5000), T0 + 5000)
    assert [len(json.loads(p)["seqs"]) for _t, p in got] == [MAX_RECEIPT_SEQS, 3]
    key = ingest.registry.get("kp1").key  # type: ignore[union-attr]
    msgs = Messages("evalterm", "h1", "w1", "kp1", key, 7, None)
    for topic, payload in got:
        assert msgs.command(topic.encode(), payload) is None  # a receipt, taken
    tampered = bytearray(got[1][1])
    tampered[30] ^= 1
    with pytest.raises(CommandError):
        msgs.command(got[1][0].encode(), bytes(tampered))
    other = device_topic("evalterm", "h1", "w1", "kp2", "cmd")  # another device's topic
    with pytest.raises(CommandError):
        msgs.command(other.encode(), receipt_message(key, other, boot=7, seqs=[1], ts=1))


def test_a_device_coming_online_is_sent_the_windows_pause_state(setup: tuple) -> None:
    conn, ingest, dev = setup

    def commands() -> list[str]:
        rows = outbox.commands_after(conn, 0)
        outbox.delete_commands(conn, [r[0] for r in rows])
        return [json.loads(r[2])["cmd"] for r in rows]

    ingest.process_batch([Inbound("mqtt", *dev.status("online"), T0)], T0)
    assert commands() == []  # no pause or staff event ever: no state to restore
    paused = {"v": 1, "kind": "window_paused", "id": "p1", "window": "w1", "ts": T0,
              "reason": "lunch"}
    ingest.process_batch([Inbound("mqtt", feed("evalterm"), feed_bytes(paused), T0)], T0)
    assert commands() == ["pause"]
    ingest.process_batch([Inbound("mqtt", *dev.status("online"), T0 + 1)], T0 + 1)
    assert commands() == ["pause"]  # sent again: it may have been offline for the first
    resumed = {**paused, "kind": "window_resumed", "id": "p2", "ts": T0 + 2}
    del resumed["reason"]
    ingest.process_batch([Inbound("mqtt", feed("evalterm"), feed_bytes(resumed), T0 + 2)], T0)
    assert commands() == ["resume"]
    ingest.process_batch([Inbound("mqtt", *dev.status("offline"), T0 + 3)], T0 + 3)
    assert commands() == []
    ingest.process_batch([Inbound("mqtt", *dev.status("online"), T0 + 4)], T0 + 4)
    assert commands() == ["resume"]


def test_the_receipt_builder_writes_what_the_schema_describes() -> None:
    import jsonschema

    folder = Path(__file__).resolve().parents[1] / "collector" / "schemas" / "v1"
    schema = json.loads((folder / "receipt.json").read_text())
    topic = device_topic("evalterm", "h1", "w1", "kp1", "cmd")
    payload = receipt_message(bytes(32), topic, boot=3, seqs=[0, 5, 9], ts=T0)
    assert payload.startswith(b'{"v":1,"kind":"receipt",')  # what the firmware dispatches on
    jsonschema.validate(json.loads(payload), schema)
