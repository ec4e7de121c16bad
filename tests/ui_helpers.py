"""The web UI's test hall (tests/test_web_ui*.py): a state database with users, names and cases,
and the UI served by a real uvicorn on a free port, mounted under /ui as the collector mounts it."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from collector.clock import now_ms
from collector.db import connect
from collector.manager.cases import CaseService
from collector.manager.deadlines import DeadlineRule
from collector.web.ui import UiSettings, build_ui

PASSWORD = "correct-horse-42"
DAY_MS = 86_400_000
# Users of hall h1: two managers (li is also staff member s7), a window lead, an inspector.
USERS = (("zhang", "manager", None), ("li", "manager", "s7"), ("wang", "lead", None),
         ("zhao", "inspector", None))


def _txn(conn: sqlite3.Connection, txn: str, window: str, staff: str, level: int, ms: int,
         reason: str) -> None:
    conn.execute("INSERT INTO txn (hall, txn, window, staff_id, service_code, started_ms, "
                 "completed_ms, outcome, deadline_ms, state, rating_id, level) "
                 "VALUES ('h1', ?, ?, ?, 'S-110', ?, ?, 'done', ?, 'rated', ?, ?)",
                 (txn, window, staff, ms - 600_000, ms, ms + 1, f"d:{txn}", level))
    conn.execute("INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, reason, "
                 "mode, press_ms, received_ms, state, txn) VALUES (?, 'h1', ?, 'd', 1, 1, ?, ?, "
                 "'linked', ?, ?, 'linked', ?)", (f"d:{txn}", window, level, reason, ms, ms, txn))


def seed(path: Path) -> dict[str, int]:
    """The hall: names in the directory, four users, and three 差评 cases: one 20 days old
    (overdue), one an hour old (concerning s7, who is manager li), one a day old. Returns the
    case ids by name."""
    conn = connect(path)
    conn.execute("INSERT INTO dir_service VALUES ('S-110', '居民身份证换领', '公安局')")
    conn.execute("INSERT INTO dir_window VALUES ('h1', 'w01', '综合受理 1 号窗口', 'S-110')")
    conn.execute("INSERT INTO dir_window VALUES ('h1', 'w02', '综合受理 2 号窗口', 'S-110')")
    conn.execute("INSERT INTO dir_staff VALUES ('s7', '李明', 'A0107', '公安局', 'h1', 'w01')")
    conn.execute("INSERT INTO dir_staff VALUES ('s8', '陈静', 'A0108', '公安局', 'h1', 'w02')")
    now = now_ms()
    _txn(conn, "BJ20261101-0007", "w01", "s7", 2, now - 3600_000, "attitude")
    _txn(conn, "BJ20261101-0003", "w02", "s8", 1, now - 20 * DAY_MS, "wait")
    _txn(conn, "BJ20261101-0005", "w02", "s8", 2, now - DAY_MS, "notice")
    svc = CaseService(conn, DeadlineRule(default_days=3), now_ms)
    for name, role, staff in USERS:
        svc.add_user("admin", name, role, "h1", PASSWORD, staff)
    svc.add_user("admin", "other", "manager", "h2", PASSWORD)  # another hall's manager
    svc.open_cases()
    ids = {txn: cid for cid, txn in conn.execute("SELECT case_id, txn FROM mgr_case")}
    conn.close()
    return {"overdue": ids["BJ20261101-0003"], "staff_s7": ids["BJ20261101-0007"],
            "recent": ids["BJ20261101-0005"]}


@contextmanager
def serve(db: Path) -> Iterator[str]:
    """The UI mounted at /ui of a Starlette app, served by uvicorn in a thread; yields its base
    URL (http://127.0.0.1:PORT/ui)."""
    app = Starlette(routes=[Mount("/ui", app=build_ui(db, UiSettings(
        rule=DeadlineRule(default_days=3))))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not th.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/ui"
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()
