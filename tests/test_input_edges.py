"""Input edges (issue 14): lone surrogates, trailing newlines in ids, non-ASCII digits."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import T0, Dev, feed, feed_bytes, txn_msg

from collector.cli.txn import csv_to_feed
from collector.config import load_config
from collector.db import connect, transaction
from collector.ingest import Inbound, Ingest
from collector.protocol import (
    ProtocolError,
    Rejection,
    decode_feed_message,
    parse_device_payload,
    parse_topic,
)
from collector.registry import Registry, RegistryError

LONE = ['"\\ud800"', '"\\udfff"', '"a\\uDC00b"', '"\\ud83d x"']


@pytest.mark.parametrize("text", LONE)
def test_lone_surrogate_escapes_are_malformed(text: str) -> None:
    msg = feed_bytes(txn_msg("T1")).replace(b'"\\u5f20\\u4f1f"', text.encode())
    msg = msg.replace('"张伟"'.encode(), text.encode())
    assert text.encode() in msg
    for decode in (decode_feed_message, parse_device_payload):
        with pytest.raises(ProtocolError) as err:
            decode(msg)
        assert err.value.reason is Rejection.MALFORMED and "surrogate" in err.value.detail


def test_a_surrogate_pair_escape_is_a_character() -> None:
    msg = feed_bytes(txn_msg("T1")).replace('"张伟"'.encode(), b'"\\ud83d\\ude00"')
    assert decode_feed_message(msg)["staff"]["name"] == "\U0001f600"


def test_a_lone_surrogate_is_rejected_not_dead_lettered(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    ingest = Ingest(conn, load_config(None, env={}))
    body = feed_bytes(txn_msg("T1")).replace('"张伟"'.encode(), b'"\\ud800"')
    [out] = ingest.process_batch([Inbound("http", feed("evalterm"), body, T0)], T0)
    assert (out.status, out.reason) == ("rejected", "malformed")
    assert conn.execute("SELECT count(*) FROM dead_letter").fetchone() == (0,)


@pytest.mark.parametrize("topic", [
    "evalterm/dev/h1/w1/kp1\n/rating", "evalterm/dev/h1\n/w1/kp1/rating",
    "evalterm/dev/h1/w1\n/kp1/rating", "evalterm/feed/h1\n",
])
def test_ids_with_a_trailing_newline_are_refused(topic: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_topic("evalterm", topic)
    assert err.value.reason is Rejection.BAD_TOPIC


def test_a_device_id_with_a_trailing_newline_cannot_be_registered(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    with transaction(conn), pytest.raises(RegistryError):
        Registry(conn).add("kp1\n", "h1", "w1", T0)


def test_a_feed_window_with_a_trailing_newline_is_invalid() -> None:
    msg = txn_msg("T1")
    msg["window"] = "w1\n"
    with pytest.raises(ProtocolError) as err:
        decode_feed_message(feed_bytes(msg))
    assert err.value.reason is Rejection.INVALID


@pytest.mark.parametrize("digits", ["１７６４２０１６０００００", "١٧٦٤٢٠١٦٠٠٠٠٠", "¹²³"])
def test_csv_times_take_ascii_digits_only(tmp_path: Path, digits: str) -> None:
    csv = tmp_path / "t.csv"
    head = ("id,window,txn,staff_id,staff_name,staff_badge,service_code,service_name,started,"
            "completed,outcome")
    csv.write_text(f"{head}\ne1,w1,T1,s1,张伟,1,sfz,x,{T0 - 1000},{digits},completed\n"
                   f"e2,w1,T2,s1,张伟,1,sfz,x,{T0 - 1000},{T0},completed\n", "utf-8")
    (n1, bad), (n2, good) = csv_to_feed(csv)
    assert n1 == 2 and isinstance(bad, list) and "completed" in bad[0] and "epoch ms" in bad[0]
    assert n2 == 3 and decode_feed_message(good)["completed"] == T0  # type: ignore[arg-type]


def test_dev_helper_still_builds_accepted_messages(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    ingest = Ingest(conn, load_config(None, env={}))
    with transaction(conn):
        key = ingest.registry.add("kp1", "h1", "w1", T0).key
    dev = Dev("evalterm", "kp1", key)
    [out] = ingest.process_batch([Inbound("mqtt", *dev.rating(5, None, ts=T0), T0)], T0)
    assert out.status == "accepted"
