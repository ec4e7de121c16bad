"""In-process ingest benchmark: `Ingest.process_batch` alone, without MQTT, broker or InfluxDB.

    .venv/bin/python bench/ingest.py [--pairs 20000] [--devices 2000] [--batch 500]

It runs the same (transaction event, signed rating) pairs as bench/loadgen.py through the ingest
pipeline on a temporary state database (WAL, synchronous=FULL, as in production) in batches of
`--batch`, and prints messages per second, CPU per message and SQL statements per message, next
to a baseline measured in the same run: the cost of only decoding and verifying the same messages
(JSON, HMAC, schema), which any validating collector pays. Measurements, not limits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import build, register_devices  # noqa: E402

from collector.clock import now_ms  # noqa: E402
from collector.config import load_config  # noqa: E402
from collector.db import connect  # noqa: E402
from collector.ingest import Inbound, Ingest  # noqa: E402
from collector.protocol import decode_feed_message, parse_device_payload, verify  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="evalterm-ingest-"))
    cfg = load_config(None, env={}).with_overrides(collector__data_dir=str(tmp),
                                                   mqtt__topic_prefix="evalterm")
    keys_file = tmp / "keys.json"
    devices = register_devices(cfg.state_db, args.devices, keys_file)
    keys = {dev: bytes.fromhex(key_hex) for dev, _w, key_hex, _h in devices}
    conn = connect(cfg.state_db)
    now = now_ms()
    msgs = build("evalterm", str(keys_file), args.pairs, now)
    items = [Inbound("mqtt", t, p, now + i // 2) for i, (t, p) in enumerate(msgs)]

    # Baseline: decode and verify only.
    t0, c0 = time.perf_counter(), time.process_time()
    for item in items:
        if "/feed/" in item.topic:
            decode_feed_message(item.payload)
        else:
            parse_device_payload(item.payload)
            verify(keys[item.topic.rsplit("/", 2)[1]], item.topic, item.payload)
    base_s, base_cpu = time.perf_counter() - t0, time.process_time() - c0

    statements = 0

    def count(_sql: str) -> None:
        nonlocal statements
        statements += 1

    ingest = Ingest(conn, cfg)
    conn.set_trace_callback(count)
    t0, c0 = time.perf_counter(), time.process_time()
    outcomes = []
    for i in range(0, len(items), args.batch):
        outcomes += ingest.process_batch(items[i:i + args.batch], now + i // 2)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.set_trace_callback(None)
    accepted = sum(o.status == "accepted" for o in outcomes)
    n = len(items)
    print(f"ingest: {n} messages ({args.pairs} pairs), batches of {args.batch}, "
          f"{accepted} accepted")
    print(f"{'':28}{'msg/s':>10}{'us/msg CPU':>12}{'SQL/msg':>9}")
    print(f"{'decode + verify only':28}{n / base_s:>10,.0f}{base_cpu / n * 1e6:>12.0f}{0:>9}")
    print(f"{'Ingest.process_batch':28}{n / wall:>10,.0f}{cpu / n * 1e6:>12.0f}"
          f"{statements / n:>9.1f}")
    return 0 if accepted == n else 1


if __name__ == "__main__":
    sys.exit(main())
