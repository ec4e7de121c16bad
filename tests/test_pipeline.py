"""The ingest pipeline in process (SQLite on disk, or PostgreSQL; no other servers): batches, dead
letters, outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import T0, Dev, feed, feed_bytes, txn_msg

from collector.config import load_config
from collector.db import connect
from collector.ingest import Inbound, Ingest
from collector.linking import Linker, TxnIn
from collector.points import render


class BuggyLinker(Linker):
    """A linking engine with a bug that strikes one case number (after it wrote something)."""

    def txn_completed(self, t: TxnIn, now_ms: int) -> list:
        out = super().txn_completed(t, now_ms)
        if t.txn == "BOOM":
            raise KeyError("a bug")
        return out


def _ingest(state_target: str, linker: type[Linker] | None = None
            ) -> tuple[sqlite3.Connection, Ingest, Dev]:
    """A connection to `state_target`, an ingest on it (with the linking engine `linker` if
    given) and keypad kp1 registered at h1/w1."""
    cfg = load_config(None, env={}).with_overrides(linking__grace_s=0)
    conn = connect(state_target)
    ingest = Ingest(conn, cfg, linker=None if linker is None
                    else linker(conn, rating_window_ms=600_000, grace_ms=0))
    conn.execute("BEGIN")
    key = ingest.registry.add("kp1", "h1", "w1", T0).key
    conn.execute("COMMIT")
    return conn, ingest, Dev("evalterm", "kp1", key)


def test_unexpected_error_dead_letters_only_that_message(state_target: str) -> None:
    conn, ingest, dev = _ingest(state_target, BuggyLinker)
    items = [
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T1", completed=T0)), T0),
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("BOOM", completed=T0)), T0),
        Inbound("mqtt", *dev.rating(5, "T1"), T0 + 1000),
        Inbound("mqtt", "evalterm/dev/h1/w1/kp1/rating", b"junk", T0 + 1000),
    ]
    outcomes = ingest.process_batch(items, T0 + 1000)
    assert [o.status for o in outcomes] == ["accepted", "error", "accepted", "rejected"]
    assert conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0] == 1
    assert conn.execute("SELECT txn FROM txn ORDER BY txn").fetchall() == [("T1",)]  # BOOM undone
    assert conn.execute("SELECT state FROM txn WHERE txn='T1'").fetchone() == ("rated",)
    lines = [render(line) if spec else line
             for line, spec in conn.execute("SELECT line, spec FROM influx_outbox ORDER BY id")]
    # T1 awaiting, then rated in the same batch: only the rated point is written (it overwrites
    # the other in InfluxDB: same series and time, every field of it and more).
    txn_lines = [x for x in lines if x.startswith("transaction,")]
    assert len(txn_lines) == 1 and 'state="rated"' in txn_lines[0]
    assert sum(x.startswith("rating,") for x in lines) == 1
    assert sum(x.startswith("rejection,") for x in lines) == 1
    assert not any("BOOM" in x for x in lines)
    conn.close()


def test_queue_calls_and_the_hardwares_tamper_events_are_accepted_and_kept(
        state_target: str) -> None:
    from collector.detection.facts import load_hall_facts

    conn, ingest, dev = _ingest(state_target)

    def event(kind: str, data: dict, ts: int) -> tuple[str, bytes]:
        return dev.event(kind, data, ts)

    call = {"v": 1, "kind": "queue_called", "id": "q1", "window": "w1", "ts": T0 + 5000,
            "ticket": "A017"}
    no_ticket = {k: v for k, v in call.items() if k != "ticket"} | {"id": "q2"}
    items = [
        Inbound("mqtt", feed("evalterm"), feed_bytes(call), T0 + 5000),
        Inbound("mqtt", feed("evalterm"), feed_bytes(no_ticket), T0 + 5000),
        Inbound("mqtt", *event("key_selftest_failed", {"keys": [1], "adc": [4095]}, T0 + 6000),
                T0 + 6000),
        Inbound("mqtt", *event("enclosure_opened", {"closed": False}, T0 + 7000), T0 + 7000),
        Inbound("mqtt", *event("power_lost", {"vcc_mv": 2900}, T0 + 8000), T0 + 8000),
        Inbound("mqtt", *event("key_selftest_failed", {"keys": [9]}, T0 + 9000), T0 + 9000),
    ]
    outcomes = ingest.process_batch(items, T0 + 9000)
    assert [o.status for o in outcomes] == ["accepted", "rejected", "accepted", "accepted",
                                            "accepted", "rejected"]
    facts = load_hall_facts(conn, "h1", T0, T0 + 10_000, T0 - 86_400_000)
    (unit,) = facts.units
    assert [(e.kind, e.staff_id) for e in unit.window_log] == [("queue_called", None)]
    assert [d.kind for d in unit.device_log] == ["key_selftest_failed", "enclosure_opened",
                                                 "power_lost"]
    assert unit.device_log[0].data == {"keys": [1], "adc": [4095]}
    conn.close()


def test_a_transactions_point_is_written_once_per_batch_unless_an_earlier_one_has_more(
        tmp_path: Path) -> None:
    """A transaction rated in the batch that brought it: its awaiting point is not written (the
    rated point overwrites it in InfluxDB). Rated in a later batch: both are written, since the
    awaiting point was committed with the first batch. Points of different transactions are
    never merged, and a point with a field the later one lacks is kept."""
    from collector.ingest import _last_states
    from collector.linking import TxnRecorded

    cfg = load_config(None, env={}).with_overrides(linking__grace_s=0)
    conn = connect(tmp_path / "state.db")
    ingest = Ingest(conn, cfg)
    conn.execute("BEGIN")
    key = ingest.registry.add("kp1", "h1", "w1", T0).key
    conn.execute("COMMIT")
    dev = Dev("evalterm", "kp1", key)

    def txn_points() -> list[str]:
        rows = conn.execute("SELECT line, spec FROM influx_outbox ORDER BY id").fetchall()
        return [x for x in (render(line) if spec else line for line, spec in rows)
                if x.startswith("transaction,")]

    ingest.process_batch([
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T1", completed=T0)), T0),
        Inbound("mqtt", *dev.rating(5, "T1"), T0 + 1000),
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T2", completed=T0 + 2000)),
                T0 + 2000),
    ], T0 + 2000)
    assert [('txn="T1"' in x, 'state="rated"' in x) for x in txn_points()] == [
        (True, True), (False, False)]  # T1 rated only; T2 awaiting
    ingest.process_batch([Inbound("mqtt", *dev.rating(4, "T2"), T0 + 3000)], T0 + 3000)
    # T2's awaiting point of the first batch stays; the second batch adds its rated point.
    assert [('txn="T2"' in x, 'state="rated"' in x) for x in txn_points()[1:]] == [
        (True, False), (True, True)]
    conn.close()

    t = TxnIn("h1", "w1", "T9", "s1", "", "", "sfz", "", T0, T0, "completed")
    with_level = TxnRecorded(t, "unrated", 3, True, None)
    rated = TxnRecorded(t, "rated", 4, False, "kp1:1:1")
    awaiting = TxnRecorded(t, "awaiting", None, False, None)
    assert len(_last_states([awaiting, with_level, rated])) == 1
    # Had the later point fewer optional fields, the earlier would be kept.
    assert len(_last_states([rated, awaiting])) == 2
    assert len(_last_states(["x", awaiting, "y"])) == 3


class StoreFailingLinker(Linker):
    """A linking engine whose write for one case number fails in the database (a duplicate key)
    and whose result nobody reads: on PostgreSQL, pipelined, the error comes at a later read."""

    def txn_completed(self, t: TxnIn, now_ms: int) -> list:
        out = super().txn_completed(t, now_ms)
        if t.txn.startswith("DUP"):
            self._db.execute("INSERT INTO seen_feed (hall, id) VALUES (?, 'dup'), (?, 'dup')",
                             (t.hall, t.hall))
        return out


def test_a_failed_write_not_read_dead_letters_only_its_message(state_target: str) -> None:
    """Its error surfaces at the next message's first read, or (the last message) before the
    batch's timer and outbox: either way the batch is run again one savepoint per message."""
    conn, ingest, dev = _ingest(state_target, StoreFailingLinker)
    items = [
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T1", completed=T0)), T0),
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("DUP1", completed=T0)), T0),
        Inbound("mqtt", *dev.rating(5, "T1"), T0 + 1000),
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("DUP2", completed=T0)), T0),
    ]
    outcomes = ingest.process_batch(items, T0 + 1000)
    assert [o.status for o in outcomes] == ["accepted", "error", "accepted", "error"]
    assert [o.reason for o in outcomes if o.status == "error"] == ["internal", "internal"]
    assert conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0] == 2
    assert conn.execute("SELECT txn, state FROM txn ORDER BY txn").fetchall() == [
        ("T1", "rated")]
    assert conn.execute("SELECT count(*) FROM seen_feed WHERE id = 'dup'").fetchone() == (0,)
    assert not conn.in_transaction
    # the connection goes on as before (on PostgreSQL: out of pipeline mode)
    outcomes = ingest.process_batch(
        [Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T2", completed=T0)), T0)],
        T0 + 2000)
    assert [o.status for o in outcomes] == ["accepted"]
    conn.close()


def test_a_replayed_rating_is_refused_and_the_batch_goes_on(state_target: str) -> None:
    """The linker's read is asked with the replay check (one round trip on PostgreSQL) and
    dropped when the check says replay: the messages after it are handled as usual."""
    conn, ingest, dev = _ingest(state_target)
    first = dev.rating(5, "T1")
    items = [
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T1", completed=T0)), T0),
        Inbound("mqtt", *first, T0 + 1000),
        Inbound("mqtt", *first, T0 + 1001),
        Inbound("mqtt", feed("evalterm"), feed_bytes(txn_msg("T2", completed=T0)), T0 + 1002),
        Inbound("mqtt", *dev.rating(4, "T2"), T0 + 1003),
    ]
    outcomes = ingest.process_batch(items, T0 + 1003)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", ""), ("accepted", ""), ("rejected", "replay"), ("accepted", ""),
        ("accepted", "")]
    assert outcomes[2].receipt == outcomes[1].receipt  # answered again
    again = ingest.process_batch([Inbound("mqtt", *first, T0 + 2000)], T0 + 2000)
    assert [(o.status, o.reason) for o in again] == [("rejected", "replay")]
    assert conn.execute("SELECT txn, state, level FROM txn ORDER BY txn").fetchall() == [
        ("T1", "rated", 5), ("T2", "rated", 4)]
    assert conn.execute("SELECT count(*) FROM rating").fetchone() == (2,)
    conn.close()
