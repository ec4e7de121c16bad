"""Bytes on InfluxDB's disk per rating point and per heartbeat point (docs/deploy.md, "Retention").

Writes `--days` days of a hall (`--windows` windows, `--ratings` ratings per window and day, one
heartbeat per keypad every `--heartbeat-s` seconds during 9 opening hours) into a private InfluxDB
1.x, in two databases, as the collector's points look (collector/points.py: the same tags and
fields), then takes `influxd backup -portable` of each (which writes the in-memory cache to TSM
files first) and sums the TSM files' sizes. The result is per point, before the full compactions
InfluxDB runs later (which only shrink the files further).

    .venv/bin/python bench/influx_size.py [--windows 100 --ratings 50 --days 20]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.influx import V1Writer, influxql
from collector.sim.servers import InfluxServer

DAY_NS = 86400 * 10**9
T0 = 1_764_201_600 * 10**9  # 2025-11-27 00:00 UTC


def ratings(windows: int, per_day: int, days: int, rnd: random.Random) -> list[str]:
    lines = []
    for d in range(days):
        for w in range(windows):
            for i in range(per_day):
                t = T0 + d * DAY_NS + (9 * 3600 + rnd.randrange(8 * 3600)) * 10**9 + i
                level = rnd.choices((5, 4, 3, 2, 1), (70, 20, 6, 3, 1))[0]
                seq = d * per_day + i
                lines.append(
                    f"rating,hall=h01,window=w{w:03d},device=kp-{w:04d},staff=s{w:03d}{d % 2},"
                    f"service=svc{rnd.randrange(30):02d},level={level},link=linked,mode=invited "
                    f"value={level}i,satisfied={int(level >= 3)}i,bad={int(level <= 2)}i,boot=3i,"
                    f"seq={seq}i,received_ms={t // 10**6 + 80}i,paused=0i,implicit=0i,"
                    f"rt_ms={1500 + rnd.randrange(20000)}i,device_ts={t // 10**6}i,signed_on=1i,"
                    f'rating_id="kp-{w:04d}:3:{seq}",txn="BJ2025{d:03d}{w:03d}{i:04d}",'
                    f'txn_claimed="BJ2025{d:03d}{w:03d}{i:04d}" {t}')
    return lines


def heartbeats(windows: int, every_s: int, days: int, rnd: random.Random) -> list[str]:
    lines = []
    for d in range(days):
        for w in range(windows):
            for k in range(9 * 3600 // every_s):
                t = T0 + d * DAY_NS + (8 * 3600 + k * every_s) * 10**9 + rnd.randrange(10**9)
                lines.append(
                    f"telemetry,hall=h01,window=w{w:03d},device=kp-{w:04d} "
                    f"boot=3i,seq={d * 1000 + k}i,up_ms={k * every_s * 1000}i,"
                    f"heap_free={80000 + rnd.randrange(4000)}i,outbox=0i,discards=0i,"
                    f"reconnects={d}i,uninvited=0i,rssi={-60 - rnd.randrange(15)}i,"
                    f"key1={d}i,key2={d}i,key3={d * 3}i,key4={d * 10}i,key5={d * 35}i,"
                    f'fw="1.4.0",state="idle" {t}')
    return lines


def tsm_bytes(server: InfluxServer, db: str, out: Path) -> int:
    subprocess.run(["influxd", "backup", "-portable", "-host", server.backup_address, "-db", db,
                    str(out)], check=True, capture_output=True)
    total = files = 0
    shards = list(out.glob("*.tar.gz"))
    for tgz in shards:
        with tarfile.open(tgz) as tar:
            tsm = [m for m in tar.getmembers() if m.name.endswith(".tsm")]
            total += sum(m.size for m in tsm)
            files += len(tsm)
    print(f"  {db}: {len(shards)} shards, {files} TSM files")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=100)
    ap.add_argument("--ratings", type=int, default=50, help="per window and day")
    ap.add_argument("--heartbeat-s", type=int, default=60)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--shard", default="", help="shard group duration, e.g. 52w (default: "
                    "InfluxDB's, 7d for a long retention)")
    args = ap.parse_args()
    rnd = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        server = InfluxServer(Path(tmp) / "influx").start()
        try:
            for db, lines in (("r", ratings(args.windows, args.ratings, args.days, rnd)),
                              ("t", heartbeats(args.windows, args.heartbeat_s, args.days, rnd))):
                if args.shard:
                    influxql(server.url, "", f'CREATE DATABASE "{db}" WITH SHARD DURATION '
                             f"{args.shard}")
                w = V1Writer(server.url, db, timeout_s=120)
                for i in range(0, len(lines), 5000):
                    w.write(lines[i:i + 5000])
                size = tsm_bytes(server, db, Path(tmp) / f"bk-{db}")
                what = "rating" if db == "r" else "telemetry"
                print(f"{what}: {len(lines)} points, {size} bytes of TSM, "
                      f"{size / len(lines):.1f} bytes per point")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
