"""The linking engine alone: events and a clock in, decisions out (SQLite in memory)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import T0

from collector.db import connect, transaction
from collector.linking import (
    Invite,
    Linker,
    RatingIn,
    RatingJudged,
    TxnIn,
    TxnRecorded,
    Unlinked,
    WindowEvent,
)

MIN = 60_000


@pytest.fixture
def db(state_target: str) -> Iterator[sqlite3.Connection]:
    """The state database, on SQLite and on PostgreSQL (conftest.py state_target)."""
    conn = connect(state_target)
    yield conn
    conn.close()


def make_linker(db: sqlite3.Connection, **kw: object) -> Linker:
    return Linker(db, rating_window_ms=10 * MIN, grace_ms=30_000, invite_ttl_ms=2 * MIN, **kw)


def txn(name: str, window: str = "w1", completed: int = T0, staff: str = "s1") -> TxnIn:
    return TxnIn("h1", window, name, staff, "张伟", "0102", "sfz", "身份证", completed - MIN,
                 completed, "completed")


_SEQ = iter(range(1, 10**6))


def rating(level: int, txn_id: str | None, at: int, window: str = "w1", device: str = "d1",
           received: int | None = None) -> RatingIn:
    return RatingIn("h1", window, device, 1, next(_SEQ), level, "wait" if level <= 2 else None,
                    "invited" if txn_id else "standalone", 2000, txn_id, at,
                    at if received is None else received, None)


def judged(decisions: list[object]) -> list[RatingJudged]:
    return [d for d in decisions if isinstance(d, RatingJudged)]


def step(db: sqlite3.Connection, call: Callable[..., list[Any]], *args: object) -> list[object]:
    """Run one engine call inside a transaction, as the pipeline does."""
    with transaction(db):
        return list(call(*args))


def test_completed_transaction_awaits_and_invites(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    out = step(db, lk.txn_completed, txn("T1"), T0 + 1000)
    assert TxnRecorded(txn("T1"), "awaiting", None, False, None) in out
    assert [d for d in out if isinstance(d, Invite)] == [
        Invite("h1", "w1", "T1", "张伟", "0102", "身份证", T0)]


def test_backfilled_old_transaction_is_not_invited(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    out = step(db, lk.txn_completed, txn("T1"), T0 + 5 * MIN)
    assert not [d for d in out if isinstance(d, Invite)]
    out = step(db, lk.txn_completed, txn("T2"), T0 + 20 * MIN)
    assert [d.state for d in out if isinstance(d, TxnRecorded)] == ["awaiting", "unrated"]


def test_explicit_link(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    step(db, lk.txn_completed, txn("T1"), T0)
    out = step(db, lk.rating, rating(5, "T1", T0 + 20_000), T0 + 20_000)
    [j] = judged(out)
    assert j.linked and j.txn == "T1" and j.staff_id == "s1" and j.service_code == "sfz"
    assert [d.state for d in out if isinstance(d, TxnRecorded)] == ["rated"]


@pytest.mark.parametrize(
    ("rating_window", "rating_txn", "press_after", "reason"),
    [
        ("w2", "T1", 10_000, Unlinked.WRONG_WINDOW),
        ("w1", "T1", 10 * MIN + 1, Unlinked.EXPIRED),
    ],
)
def test_explicit_unlinked(db: sqlite3.Connection, rating_window: str, rating_txn: str,
                           press_after: int, reason: Unlinked) -> None:
    lk = make_linker(db)
    step(db, lk.txn_completed, txn("T1"), T0)
    [j] = judged(step(db, lk.rating, rating(4, rating_txn, T0 + press_after, rating_window),
                      T0 + press_after))
    assert not j.linked and j.reason is reason


def test_one_rating_per_transaction(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    step(db, lk.txn_completed, txn("T1"), T0)
    assert judged(step(db, lk.rating, rating(5, "T1", T0 + 5000), T0 + 5000))[0].linked
    [second] = judged(step(db, lk.rating, rating(1, "T1", T0 + 9000), T0 + 9000))
    assert not second.linked and second.reason is Unlinked.ALREADY_RATED
    level = db.execute("SELECT level FROM txn WHERE txn='T1'").fetchone()[0]
    assert level == 5  # the first rating stands


def test_duplicate_transaction_event_changes_nothing(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    step(db, lk.txn_completed, txn("T1"), T0)
    step(db, lk.rating, rating(5, "T1", T0 + 5000), T0 + 5000)
    assert step(db, lk.txn_completed, txn("T1"), T0 + 6000) == []
    assert db.execute("SELECT state FROM txn").fetchall() == [("rated",)]


def test_out_of_order_rating_is_held_then_linked(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    out = step(db, lk.rating, rating(4, "T1", T0 + 3000), T0 + 3000)
    assert out == []  # held, not judged
    assert lk.next_due_ms() == T0 + 3000 + 30_000
    out = step(db, lk.txn_completed, txn("T1"), T0 + 10_000)
    [j] = judged(out)
    assert j.linked and j.txn == "T1"
    assert not [d for d in out if isinstance(d, Invite)]  # already rated: no invitation


def test_held_rating_unlinked_after_grace(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    step(db, lk.rating, rating(4, "T9", T0), T0)
    assert step(db, lk.tick, T0 + 29_999) == []
    [j] = judged(step(db, lk.tick, T0 + 30_000))
    assert not j.linked and j.reason is Unlinked.UNKNOWN


def test_implicit_links_most_recent_unrated(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    step(db, lk.txn_completed, txn("T1", completed=T0), T0)
    step(db, lk.txn_completed, txn("T2", completed=T0 + MIN), T0 + MIN)
    step(db, lk.txn_completed, txn("T3", window="w2", completed=T0 + 2 * MIN), T0 + 2 * MIN)
    [a] = judged(step(db, lk.rating, rating(5, None, T0 + 3 * MIN), T0 + 3 * MIN))
    assert a.linked and a.txn == "T2"
    [b] = judged(step(db, lk.rating, rating(3, None, T0 + 4 * MIN), T0 + 4 * MIN))
    assert b.linked and b.txn == "T1"
    c = judged(step(db, lk.rating, rating(2, None, T0 + 5 * MIN), T0 + 5 * MIN))
    assert c == []  # nothing left at w1: held for grace
    [c2] = judged(step(db, lk.tick, T0 + 6 * MIN))
    assert not c2.linked and c2.reason is Unlinked.NO_TRANSACTION


def test_implicit_held_rating_links_when_transaction_arrives(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    assert step(db, lk.rating, rating(5, None, T0 + 1000), T0 + 1000) == []
    [j] = judged(step(db, lk.txn_completed, txn("T1", completed=T0), T0 + 5000))
    assert j.linked and j.txn == "T1"


@pytest.mark.parametrize("policy", [None, 3, 4])
def test_expiry_records_unrated_with_policy(db: sqlite3.Connection, policy: int | None) -> None:
    lk = make_linker(db, unrated_default=policy)
    step(db, lk.txn_completed, txn("T1"), T0)
    assert step(db, lk.tick, T0 + 10 * MIN - 1) == []
    [rec] = step(db, lk.tick, T0 + 10 * MIN)
    assert isinstance(rec, TxnRecorded)
    assert (rec.state, rec.level, rec.defaulted) == ("unrated", policy, policy is not None)


def test_late_delivered_rating_pressed_in_time_still_links(db: sqlite3.Connection) -> None:
    """A device outbox drained after an outage: pressed in the window, received after expiry."""
    lk = make_linker(db, unrated_default=4)
    step(db, lk.txn_completed, txn("T1"), T0)
    step(db, lk.tick, T0 + 11 * MIN)
    [j] = judged(step(db, lk.rating, rating(1, "T1", T0 + MIN, received=T0 + 60 * MIN),
                      T0 + 60 * MIN))
    assert j.linked
    assert db.execute("SELECT state, level FROM txn").fetchone() == ("rated", 1)


def test_window_context_is_recorded(db: sqlite3.Connection) -> None:
    lk = make_linker(db)
    [j] = judged(step(db, lk.rating, rating(5, None, T0), T0)) or [None]
    assert j is None  # held
    # no word from the business system about the window yet: signed on unknown, not "no"
    assert db.execute("SELECT paused, signed_on FROM rating").fetchone() == (0, None)
    step(db, lk.window_event, WindowEvent("h1", "w1", "staff_signon", T0, "s1", "张伟", "01"))
    step(db, lk.window_event, WindowEvent("h1", "w1", "window_paused", T0 + 1, reason="午休"))
    lk2 = make_linker(db, )
    lk2.grace_ms = 0
    [k] = judged(step(db, lk2.rating, rating(5, None, T0 + 2), T0 + 2))
    assert k.paused and k.signed_on is True and k.staff_id == "s1"
    step(db, lk.window_event, WindowEvent("h1", "w1", "staff_signoff", T0 + 3, "s2"))
    assert db.execute("SELECT staff_id FROM window_state").fetchone() == ("s1",)  # not s2's to end
    step(db, lk.window_event, WindowEvent("h1", "w1", "staff_signoff", T0 + 4, "s1"))
    [m] = judged(step(db, lk2.rating, rating(5, None, T0 + 5), T0 + 5))
    assert m.signed_on is False and m.staff_id is None
    [n] = judged(step(db, lk2.rating, rating(5, None, T0 + 6, window="w9", device="d9"),
                      T0 + 6))
    assert (n.paused, n.signed_on, n.staff_id) == (False, None, None)
    # the held rating, judged when its grace ran out: the window's staff then
    step(db, lk.window_event, WindowEvent("h1", "w1", "staff_signon", T0 + 7, "s3", "李", "02"))
    [h] = judged(step(db, lk.tick, T0 + MIN))
    assert (h.linked, h.signed_on, h.staff_id) == (False, None, "s3")


def test_state_survives_reopen(state_target: str) -> None:
    path = state_target
    conn = connect(path)
    lk = make_linker(conn)
    step(conn, lk.txn_completed, txn("T1"), T0)
    step(conn, lk.rating, rating(4, "T2", T0 + 1000), T0 + 1000)  # held
    conn.close()
    conn = connect(path)
    lk = make_linker(conn)
    assert lk.next_due_ms() == T0 + 1000 + 30_000
    [j] = judged(step(conn, lk.txn_completed, txn("T2"), T0 + 2000))
    assert j.linked and j.txn == "T2"
    conn.close()


def test_deterministic_replay_gives_identical_decisions(tmp_path: object) -> None:
    def run(path: str) -> list[object]:
        conn = connect(path)
        lk = make_linker(conn)
        out: list[object] = []
        global _SEQ
        _SEQ = iter(range(1, 10**6))
        for i in range(20):
            out += step(conn, lk.txn_completed, txn(f"T{i}", f"w{i % 3}", T0 + i * 20_000),
                        T0 + i * 20_000)
            if i % 4:
                out += step(conn, lk.rating, rating(1 + i % 5, None if i % 2 else f"T{i}",
                                                       T0 + i * 20_000 + 5000, f"w{i % 3}"),
                            T0 + i * 20_000 + 5000)
        out += step(conn, lk.tick, T0 + 3_600_000)
        conn.close()
        return out

    first = run(f"{tmp_path}/a.db")
    # Not two empty runs: all 15 ratings are judged (linked) and the unrated transactions are there.
    assert len(judged(first)) == 15 and all(j.linked for j in judged(first))
    assert any(isinstance(d, TxnRecorded) and d.state == "unrated" for d in first)
    assert first == run(f"{tmp_path}/b.db")
