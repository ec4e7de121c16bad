"""How long the service's manager run takes on a large state database (collector/manager/run.py).

A year of a busy hall: N transactions (default 300 000), one in twenty a 差评, so ~N/20 cases;
all but 1 % of them closed. Prints the seconds of the first run (opens every case and queues
every case's point, once after a start), of the following idle runs (only the open cases, the
counts), and of the idle `open_cases` read (no write lock taken when there is nothing to open).

    PYTHONPATH=$PWD .venv/bin/python bench/manager_run.py [--txns N] [--db PATH]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from collector.config import load_config
from collector.db import connect
from collector.manager.run import ManagerRun


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--txns", type=int, default=300_000)
    ap.add_argument("--db", help="state database to create (default: a temporary folder)")
    args = ap.parse_args()
    path = Path(args.db or tempfile.mkdtemp(prefix="evalterm-bench-")) / "state.db"
    conn = connect(path)
    rng = random.Random(1)
    t0 = 1_760_000_000_000
    conn.execute("BEGIN")
    for i in range(args.txns):
        level = 1 + (i % 2) if rng.random() < 0.05 else rng.choice((3, 4, 5, 5, 5))
        at = t0 + i * 60_000
        conn.execute("INSERT INTO txn (hall, txn, window, staff_id, staff_name, service_code, "
                     "service_name, started_ms, completed_ms, outcome, deadline_ms, state, "
                     "rating_id, level) VALUES ('h1', ?, ?, ?, '张伟', 'S1', '事项', ?, ?, "
                     "'completed', ?, 'rated', ?, ?)",
                     (f"T{i}", f"w{i % 20}", f"s{i % 40}", at - 300_000, at, at + 600_000,
                      f"r{i}", level))
        conn.execute("INSERT INTO rating (rating_id, hall, window, device, boot, seq, level, "
                     "mode, press_ms, received_ms, state, txn) VALUES (?, 'h1', ?, 'd', 1, ?, ?, "
                     "'invited', ?, ?, 'linked', ?)",
                     (f"r{i}", f"w{i % 20}", i, level, at + 5000, at + 5000, f"T{i}"))
    conn.execute("COMMIT")
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(path.parent))
    clock = [int(time.time() * 1000)]
    run = ManagerRun(cfg, conn, lambda: clock[0])
    start = time.perf_counter()
    res = run.run_once()
    first = time.perf_counter() - start
    conn.execute("UPDATE mgr_case SET state = 'closed', closed_ms = opened_ms + 86400000 "
                 "WHERE case_id % 100 != 0")
    run = ManagerRun(cfg, conn, lambda: clock[0])  # a restart: every case's point once more
    start = time.perf_counter()
    run.run_once()
    restart = time.perf_counter() - start
    idle = []
    for _ in range(5):
        clock[0] += 60_000
        start = time.perf_counter()
        run.run_once()
        idle.append(time.perf_counter() - start)
    start = time.perf_counter()
    run.cases.open_cases()
    read = time.perf_counter() - start
    print(f"{args.txns} transactions, {len(res.opened)} cases opened in the first run: "
          f"{first:.2f} s; after a restart (1 % open): {restart:.2f} s; idle runs: "
          f"{min(idle):.3f}-{max(idle):.3f} s; idle open_cases read: {read:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
