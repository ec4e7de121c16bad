"""evalterm benchmark: the feed webhook under a burst and under half-sent requests.

    .venv/bin/python bench/webhook.py [--burst 60] [--slow 300]

Starts its own Mosquitto and InfluxDB and one collector (default [http] options), then

1. burst: `--burst` clients, each on a connection of its own, post one message at the same moment
   (a barrier); counts the answers by status and the connections that failed (reset, refused),
   and the time until the last answer;
2. half-sent: `--slow` clients send a webhook request's headers and part of its body and stop;
   with them open, one normal post is sent (again every 0.5 s while answered 503) and timed until
   accepted, and the process's threads are counted (`threading.active_count()`: the collector
   runs in this process).

Nothing here is a test: no pass/fail limits, only what one run on one machine measured. It uses
only `Collector(cfg)`, `http_port` and `[http] feed_token`, so it runs against an older collector
too (`PYTHONPATH=/path/to/old/checkout`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.config import load_config  # noqa: E402
from collector.service import Collector  # noqa: E402
from collector.sim.servers import InfluxServer, MosquittoServer  # noqa: E402

TOKEN = secrets.token_hex(16)


def message(i: int) -> bytes:
    now = int(time.time() * 1000)
    return json.dumps({
        "v": 1, "kind": "txn_completed", "id": f"bench-{i}-{now}", "window": "w1", "ts": now,
        "txn": f"B-{i}-{now}", "staff": {"id": "s1", "name": "张伟", "badge": "010233"},
        "service": {"code": "sfz", "name": "居民身份证换领"}, "started": now - 60000,
        "completed": now, "outcome": "completed"}, ensure_ascii=False).encode()


def post(port: int, i: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/api/v1/feed/h1", body=message(i), headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def burst(port: int, n: int) -> tuple[Counter[str], float]:
    barrier = threading.Barrier(n + 1)
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def client(i: int) -> None:
        barrier.wait()
        try:
            outcome = str(post(port, i))
        except OSError as exc:
            outcome = type(exc).__name__
        with lock:
            results[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    return results, time.monotonic() - t0


def half_sent(port: int, n: int) -> tuple[Counter[str], float, list[int], int]:
    """(what became of the connections, seconds until one normal post meanwhile was accepted,
    the statuses of its tries, threads)."""
    body = message(10**6)
    head = (f"POST /api/v1/feed/h1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head + body[:10])
            socks.append(s)
        except OSError:
            break
    time.sleep(1.0)  # let the server take them all
    threads = threading.active_count()
    fates: Counter[str] = Counter()
    for s in socks:  # answered at once (and by what), or held open by the server
        s.setblocking(False)
        try:
            data = s.recv(64)
            fates[data[9:12].decode() if data.startswith(b"HTTP/") else "closed"] += 1
        except BlockingIOError:
            fates["held"] += 1
        except OSError:
            fates["reset"] += 1
    t0 = time.monotonic()
    statuses = []
    while not statuses or statuses[-1] == 503:  # retried after a busy answer, as documented
        try:
            statuses.append(post(port, 10**6 + 1))
        except OSError:
            statuses.append(0)
            break
        if statuses[-1] == 503:
            time.sleep(0.5)
    took = time.monotonic() - t0
    for s in socks:
        s.close()
    return fates, took, statuses, threads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--burst", type=int, default=60)
    ap.add_argument("--slow", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = MosquittoServer(root / "mosquitto").start()
        influx = InfluxServer(root / "influxd").start()
        cfg = load_config(None, env={}).with_overrides(
            collector__data_dir=str(root / "collector"), mqtt__port=broker.port,
            influx__url=influx.url, http__listen="127.0.0.1:0", http__feed_token=TOKEN,
            detection__enabled=False)
        c = Collector(cfg)
        c.start()
        try:
            port = c.http_port
            assert port
            post(port, -1)  # warm up
            base_threads = threading.active_count()
            results, took = burst(port, args.burst)
            print(f"burst of {args.burst} concurrent posts: "
                  f"{dict(sorted(results.items()))} in {took:.2f} s")
            fates, one, statuses, threads = half_sent(port, args.slow)
            print(f"{args.slow} half-sent requests {dict(sorted(fates.items()))}: one normal post "
                  "answered "
                  f"{statuses} (tries) after {one:.2f} s; threads in the process {threads} "
                  f"(idle: {base_threads})")
        finally:
            c.stop()
            influx.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
