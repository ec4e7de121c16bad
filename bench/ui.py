"""How fast the hall manager's web UI answers over real HTTP (uvicorn, one process).

    PYTHONPATH=$PWD .venv/bin/python bench/ui.py [--cases 2000] [--rounds 20]

A hall with `--cases` 差评 cases (half of them overdue, all open), directory names for 20 windows
and 60 staff; then: sign-in (scrypt), the case list (every open case on one page), one case page,
and a 核实 POST (CSRF, CaseService, audit append, 303). Prints the median and the worst of
`--rounds` requests each. Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import socket
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from collector.clock import now_ms
from collector.db import connect, transaction
from collector.manager.cases import CaseService
from collector.manager.deadlines import DeadlineRule
from collector.web.ui import UiSettings, build_ui

DAY_MS = 86_400_000


def seed(db: Path, n: int) -> None:
    conn = connect(db)
    now = now_ms()
    with transaction(conn):
        for w in range(20):
            conn.execute("INSERT INTO dir_window VALUES ('h1', ?, ?, '')", (f"w{w:02d}",
                                                                          f"{w} 号窗口"))
        for s in range(60):
            conn.execute("INSERT INTO dir_staff VALUES (?, ?, ?, '', 'h1', ?)",
                         (f"s{s}", f"员工{s}", f"A{s:04d}", f"w{s % 20:02d}"))
        for i in range(n):
            ms = now - (20 * DAY_MS if i % 2 else 3600_000) - i * 1000
            txn, w, s = f"T{i:06d}", f"w{i % 20:02d}", f"s{i % 60}"
            conn.execute("INSERT INTO txn (hall, txn, window, staff_id, service_code, "
                         "started_ms, completed_ms, outcome, deadline_ms, state, rating_id, "
                         "level) VALUES ('h1', ?, ?, ?, 'S1', ?, ?, 'done', ?, 'rated', ?, 1)",
                         (txn, w, s, ms - 60_000, ms, ms + 1, f"d:{txn}"))
            conn.execute("INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, "
                         "reason, mode, press_ms, received_ms, state, txn) VALUES (?, 'h1', ?, "
                         "'d', 1, ?, 1, 'wait', 'linked', ?, ?, 'linked', ?)",
                         (f"d:{txn}", w, i, ms, ms, txn))
    svc = CaseService(conn, DeadlineRule(default_days=3), now_ms)
    svc.add_user("admin", "zhang", "manager", "h1", "bench-password")
    svc.open_cases()
    conn.close()


def timed(fn: object, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="evalterm-bench-ui-"))
    db = tmp / "state.db"
    seed(db, args.cases)
    app = Starlette(routes=[Mount("/ui", app=build_ui(db, UiSettings(
        rule=DeadlineRule(default_days=3), login_max_failures=10**6)))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/ui"
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
        http.cookiejar.CookieJar()))

    def csrf(path: str) -> str:
        html = op.open(base + path).read().decode()
        m = re.search(r'name="csrf" value="([^"]+)"', html)
        assert m
        return m.group(1)

    tok = csrf("/login")

    def sign_in() -> None:
        op.open(base + "/login", urllib.parse.urlencode(
            {"csrf": csrf("/login"), "username": "zhang", "password": "bench-password",
             "next": "/ui/directory"}).encode()
        ).read()

    sign_in()
    case_ids = iter(range(1, args.cases + 1))
    tok = csrf("/cases/1")

    def verify() -> None:
        op.open(base + f"/cases/{next(case_ids)}/verify",
                urllib.parse.urlencode({"csrf": tok, "text": "核实"}).encode()).read()

    results = {
        "sign-in (GET form, POST, 303 directory)": timed(sign_in, args.rounds),
        f"case list ({args.cases} open cases)": timed(
            lambda: op.open(base + "/cases").read(), args.rounds),
        "case list, one window": timed(
            lambda: op.open(base + "/cases?window=w03").read(), args.rounds),
        "case page": timed(lambda: op.open(base + "/cases/7").read(), args.rounds),
    }
    tok = csrf("/cases/1")
    results["核实 POST (+ 303 + case page)"] = timed(verify, args.rounds)
    for name, (med, worst) in results.items():
        print(f"{name:40s} median {med:8.1f} ms   worst {worst:8.1f} ms")
    server.should_exit = True
    th.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
