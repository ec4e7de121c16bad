"""evalterm benchmark: the collector against two baselines, on real Mosquitto and InfluxDB.

    .venv/bin/python bench/run.py [--pairs 20000] [--devices 20000] [--rate 1000] [--seconds 20]
        [--only bare,bridge,nodered,collector,collector_pg,partitioned,live]
        [--baseline-code /path/to/other/checkout]

Prints a table; docs/performance.md records the figures and how to read them. Nothing here is a
test: there are no pass/fail limits, only measurements taken in one run on one machine.

1. Backlog drain (throughput). For each consumer (bare subscribers, plain bridge, Node-RED,
   collector on SQLite, the collector on a private PostgreSQL (`[state] url`, collector_pg), two
   collector processes serving one hall partition each on the same SQLite state (partitioned); with
   --baseline-code also the collector of another checkout, e.g. main's, before this checkout's
   collector and collector_pg, on the same state backend) the same
   backlog of `--pairs` (transaction event, signed rating) pairs is queued at the broker
   for the consumer's persistent session; then the consumer starts and the clock runs until it is
   done
   (subscriber: every message received; bridge, Node-RED and collector: every rating queryable in
   InfluxDB). The publisher is not running meanwhile, so only the consumer's work is timed.
2. Live latency. The collector runs while the load generator publishes at `--rate` pairs per second
   for `--seconds`; a poller asks InfluxDB every 100 ms how many ratings it holds per 100 ms of
   publish time over the last LOOKBACK_S; the k-th rating published in such a bucket is taken as
   seen when the bucket's count first reached k (p50/p99 of seen minus publish time: an upper
   bound with the time that poll answered, a lower bound with the time it was asked; the poll's
   own duration is printed; an error below 100 ms). The split "publish -> received by the
   collector" is exact (`received_ms` field).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import register_devices  # noqa: E402
from nodered import NodeRed  # noqa: E402

from collector.db import connect, connect_drained, drained_path  # noqa: E402
from collector.influx import WriteFailed, influxql, outbox_depth  # noqa: E402
from collector.sim.servers import InfluxServer, MosquittoServer, PostgresServer  # noqa: E402

PY = sys.executable
BUCKET_MS = 100  # latency: ratings are counted per 100 ms of publish time
LOOKBACK_S = 15  # latency: how far back each poll counts (a rating later than that is not seen)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def count_ratings(url: str, db: str) -> int:
    try:
        rows = influxql(url, db, 'SELECT count("value") FROM "rating"')
    except ValueError:
        return 0
    return int(rows[0]["values"][0][1]) if rows else 0  # type: ignore[index]


def loadgen(port: int, keys: Path, pairs: int, rate: float = 0, latency_out: Path | None = None
            ) -> dict[str, float]:
    argv = [PY, str(ROOT / "bench" / "loadgen.py"), "--port", str(port), "--keys", str(keys),
            "--pairs", str(pairs), "--rate", str(rate)]
    if latency_out:
        argv += ["--latency-out", str(latency_out)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentiles(prefix: str, values: list[int]) -> dict[str, float]:
    v = sorted(values)
    nan = float("nan")
    return {f"{prefix}p50_ms": v[len(v) // 2] if v else nan,
            f"{prefix}p99_ms": v[int(len(v) * 0.99)] if v else nan,
            f"{prefix}max_ms": v[-1] if v else nan}


def wait_until(pred, timeout: float, poll: float = 0.1) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("benchmark step did not finish in time")
        time.sleep(poll)
    return time.perf_counter()


PARTS = ("bare", "bridge", "nodered", "collector", "collector_pg", "partitioned", "live")


def collector_toml(data_dir: Path, mqtt_port: int, influx_url: str, database: str,
                   state_url: str = "", client_id: str = "", partitions: str = "") -> str:
    """Only the settings the bench needs; every other one is the code's own default, so that a
    baseline checkout runs with its defaults, not this checkout's. `client_id`: a session of
    its own (the SQLite collector stays connected for the live run); `partitions`: the body of
    a [partitions] section."""
    return (f'[collector]\ndata_dir = "{data_dir}"\nlog_level = "WARNING"\n'
            + (f'[state]\nurl = "{state_url}"\n' if state_url else "") +
            f'[mqtt]\nport = {mqtt_port}\ntopic_prefix = "evalterm"\n'
            + (f'client_id = "{client_id}"\n' if client_id else "")
            + (f'[partitions]\n{partitions}' if partitions else "") +
            f'[influx]\nurl = "{influx_url}"\ndatabase = "{database}"\n'
            '[http]\nlisten = ""\n'
            # The detector runs in a thread of its own every 5 minutes; its cost is measured by
            # `evalterm detect evaluate`, not here, where it would only add its points to the
            # outbox ahead of the ratings being timed.
            '[detection]\nenabled = false\n')


def cpu_of_exited(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds of a child once it exits (from wait4: /proc is gone by then)."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def copy_devices(pristine_db: Path, url: str) -> None:
    """The registered devices of `pristine_db` into the (new) PostgreSQL state database `url`."""
    src = sqlite3.connect(pristine_db)
    rows = src.execute("SELECT device, hall, window, key_hex, state, created_ms "
                       "FROM device").fetchall()
    src.close()
    dst = connect(url)
    dst.execute("BEGIN")
    dst.executemany("INSERT INTO device (device, hall, window, key_hex, state, created_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)", rows)
    dst.execute("COMMIT")
    dst.close()


def wait_drained(state: sqlite3.Connection, state_db: Path, influx: InfluxServer, database: str,
                 pairs: int) -> float:
    """Wait until `pairs` ratings are in the state database `state` (closed after), its outbox
    is drained and InfluxDB holds them; the time then (perf_counter). InfluxDB is asked only
    once the state says it is done: a count over every rating, five times a second, would add
    its cost to InfluxDB's CPU figure."""
    state_drained = connect_drained(drained_path(state_db))

    def done() -> bool:
        try:
            if state.execute("SELECT count(*) FROM rating").fetchone()[0] < pairs:
                return False
            if outbox_depth(state, state_drained) > 0:
                return False
        except sqlite3.Error:
            return False
        return count_ratings(influx.url, database) >= pairs

    try:
        return wait_until(done, 900, 0.2)
    finally:
        state.close()
        state_drained.close()


def drain_collector(code: Path, tmp: Path, name: str, pristine_db: Path, broker: MosquittoServer,
                    influx: InfluxServer, database: str, keys: Path, pairs: int,
                    pg: PostgresServer | None = None
                    ) -> tuple[dict[str, Any], subprocess.Popen[bytes], list[tuple[float, int]]]:
    """Drain the backlog with the collector of checkout `code` (its state in a new database of
    `pg` if given, else in SQLite); returns its figures, the still running collector and its
    outbox depth series."""
    data_dir = tmp / name
    data_dir.mkdir()
    state_db = data_dir / "state.db"
    state_url = ""
    if pg is None:
        shutil.copy(pristine_db, state_db)
    else:
        state_url = pg.create_database()
        copy_devices(pristine_db, state_url)
    cfg_file = tmp / f"{name}.toml"
    cfg_file.write_text(collector_toml(data_dir, broker.port, influx.url, database, state_url,
                                       "evalterm-collector-pg" if state_url else ""))
    env = {**os.environ, "PYTHONPATH": str(code)}
    log = (tmp / f"{name}.log").open("ab")
    argv = [PY, "-m", "collector.cli", "-c", str(cfg_file), "run"]
    first = subprocess.Popen(argv, cwd=code, env=env, stdout=log, stderr=log)
    time.sleep(3)  # connected and subscribed: the persistent session exists
    first.terminate()
    first.wait(30)
    loadgen(broker.port, keys, pairs)
    depth_series: list[tuple[float, int]] = []
    servers = {"Mosquitto": broker.proc, "InfluxDB": influx.proc}
    pg_pids = pg_backends(pg) if pg is not None else []
    servers_cpu0 = {k: proc_stats(p.pid)[0] for k, p in servers.items() if p is not None}
    busy0 = machine_busy()
    t0 = time.perf_counter()
    coll = subprocess.Popen(argv, cwd=code, env=env, stdout=log, stderr=log)
    stop_poll = threading.Event()

    def open_state() -> sqlite3.Connection:
        if state_url:
            return connect(state_url)
        return sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)

    def poll_depth() -> None:
        c = open_state()
        drained = connect_drained(drained_path(state_db))
        while not stop_poll.wait(1.0):
            try:
                d = outbox_depth(c, drained)
            except sqlite3.Error:
                continue
            depth_series.append((time.perf_counter() - t0, d))
        c.close()
        drained.close()

    poller = threading.Thread(target=poll_depth, daemon=True)
    poller.start()
    t1 = wait_drained(open_state(), state_db, influx, database, pairs)
    stop_poll.set()
    cpu, rss = proc_stats(coll.pid)
    drainer_cpu = sum(proc_stats(int(pid))[0] for pid in subprocess.run(
        ["pgrep", "-P", str(coll.pid)], capture_output=True, text=True).stdout.split())
    busy1 = machine_busy()
    servers_cpu = {k: proc_stats(p.pid)[0] - servers_cpu0[k] for k, p in servers.items()
                   if p is not None}
    if pg is not None:
        # The server's processes: those that lived through the drain (postmaster, WAL writer,
        # checkpointer, ...) from their start figures, the collector's backends entirely.
        before = dict(pg_pids)
        servers_cpu["PostgreSQL"] = sum(cpu_s - before.get(pid, 0.0)
                                        for pid, cpu_s in pg_backends(pg))
    dt = t1 - t0
    n_msgs = 2 * pairs
    print(f"  {name}: {n_msgs / dt:,.0f} msg/s", flush=True)
    return ({"msgs_s": n_msgs / dt, "ratings_s": pairs / dt, "seconds": dt,
             "cpu": {"collector": cpu, "its drainer": drainer_cpu, **servers_cpu},
             "rss_mb": rss / 2**20,
             "machine": ((busy1[0] - busy0[0]), (busy1[1] - busy0[1]))}, coll, depth_series)


def drain_partitioned(tmp: Path, pristine_db: Path, broker: MosquittoServer,
                      influx: InfluxServer, database: str, keys: Path, pairs: int,
                      processes: int = 2) -> dict[str, Any]:
    """Drain the backlog with `processes` collectors of this checkout, one hall partition each
    (no takeover), on one SQLite state database; returns their figures."""
    data_dir = tmp / "partitioned"
    data_dir.mkdir()
    state_db = data_dir / "state.db"
    shutil.copy(pristine_db, state_db)
    argvs = []
    for k in range(processes):
        cfg_file = tmp / f"partitioned-{k}.toml"
        cfg_file.write_text(collector_toml(
            data_dir, broker.port, influx.url, database, client_id="evalterm-part",
            partitions=f'count = {processes}\nown = "{k}"\ntakeover = false\n'))
        argvs.append([PY, "-m", "collector.cli", "-c", str(cfg_file), "run"])
    log = (tmp / "partitioned.log").open("ab")

    def start() -> list[subprocess.Popen[bytes]]:
        return [subprocess.Popen(a, cwd=ROOT, stdout=log, stderr=log) for a in argvs]

    first = start()
    time.sleep(5)  # each holds its partition and subscribed its halls: the sessions exist
    for p in first:
        p.terminate()
    for p in first:
        p.wait(60)
    loadgen(broker.port, keys, pairs)
    servers = {"Mosquitto": broker.proc, "InfluxDB": influx.proc}
    servers_cpu0 = {k: proc_stats(p.pid)[0] for k, p in servers.items() if p is not None}
    busy0 = machine_busy()
    t0 = time.perf_counter()
    procs = start()
    t1 = wait_drained(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30),
                      state_db, influx, database, pairs)
    cpu = {}
    rss = 0
    for k, p in enumerate(procs):
        c, r = proc_stats(p.pid)
        cpu[f"collector {k}"] = c
        cpu[f"its drainer {k}"] = sum(proc_stats(int(pid))[0] for pid in subprocess.run(
            ["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split())
        rss = max(rss, r)
    busy1 = machine_busy()
    cpu.update({k: proc_stats(p.pid)[0] - servers_cpu0[k] for k, p in servers.items()
                if p is not None})
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(60)
    dt = t1 - t0
    print(f"  partitioned ({processes} processes): {2 * pairs / dt:,.0f} msg/s", flush=True)
    return {"msgs_s": 2 * pairs / dt, "ratings_s": pairs / dt, "seconds": dt, "cpu": cpu,
            "rss_mb": rss / 2**20, "machine": (busy1[0] - busy0[0], busy1[1] - busy0[1])}


def pg_backends(pg: PostgresServer) -> list[tuple[int, float]]:
    """(pid, CPU seconds) of every process of the PostgreSQL server `pg`."""
    pid_file = pg.data / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                          text=True).stdout.split()
    out = []
    for pid in [postmaster, *map(int, kids)]:
        try:
            out.append((pid, proc_stats(pid)[0]))
        except OSError:
            continue  # a backend that ended meanwhile
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20000, help="backlog: transaction+rating pairs")
    ap.add_argument("--devices", type=int, default=20000, help="registered devices")
    ap.add_argument("--rate", type=float, default=1000, help="latency run: ratings per second")
    ap.add_argument("--seconds", type=float, default=20, help="latency run: duration")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {','.join(PARTS)} (live needs "
                         "collector)")
    ap.add_argument("--baseline-code", type=Path, default=None,
                    help="another checkout (e.g. a worktree of main): its collector drains the "
                         "same backlog first, in the same run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if parts - set(PARTS) or ("live" in parts and "collector" not in parts):
        ap.error(f"--only: parts of {','.join(PARTS)}; live needs collector")

    tmp = Path(tempfile.mkdtemp(prefix="evalterm-bench-"))
    broker = MosquittoServer(tmp / "mosquitto", save_every_change=False).start()
    influx = InfluxServer(tmp / "influxd").start()
    results: dict[str, dict[str, Any]] = {}
    n_msgs = 2 * args.pairs
    depth_series: list[tuple[float, int]] = []
    try:
        # -- registry and keys --------------------------------------------------------------------
        pristine = tmp / "registered.db"
        keys = tmp / "keys.json"
        register_devices(pristine, args.devices, keys)
        print(f"bench: {args.devices} registered devices, backlog {args.pairs} pairs "
              f"({n_msgs} messages), {os.cpu_count()} cores", flush=True)
        servers = {"Mosquitto": broker.proc, "InfluxDB": influx.proc}

        def servers_cpu() -> dict[str, float]:
            return {k: proc_stats(p.pid)[0] for k, p in servers.items() if p is not None}

        # -- 1a. bare subscribers (plain paho, and paho with the collector's buffered reads) ----
        base = [PY, str(ROOT / "bench" / "baselines.py")]
        for mode, name in (("count", "bare paho subscriber"),
                           ("count-buffered", "bare subscriber, buffered reads")):
            if "bare" not in parts:
                break
            subprocess.run([*base, mode, "--port", str(broker.port)], check=True, cwd=ROOT,
                           capture_output=True)
            loadgen(broker.port, keys, args.pairs)
            t0 = time.perf_counter()
            subprocess.run([*base, mode, "--port", str(broker.port), "--expect", str(n_msgs)],
                           check=True, cwd=ROOT, capture_output=True)
            dt = time.perf_counter() - t0
            results[name] = {"msgs_s": n_msgs / dt, "ratings_s": args.pairs / dt, "seconds": dt}
            print(f"  {name}: {n_msgs / dt:,.0f} msg/s", flush=True)

        # -- 1b. plain bridge ---------------------------------------------------------------------
        if "bridge" in parts:
            subprocess.run([*base, "bridge", "--port", str(broker.port), "--influx", influx.url],
                           check=True, cwd=ROOT, capture_output=True)
            loadgen(broker.port, keys, args.pairs)
            cpu0 = servers_cpu()
            t0 = time.perf_counter()
            bridge = subprocess.Popen([*base, "bridge", "--port", str(broker.port), "--expect",
                                       str(n_msgs), "--influx", influx.url], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            t1 = wait_until(lambda: count_ratings(influx.url, "bridge") >= args.pairs, 600, 0.2)
            cpu1 = servers_cpu()
            bridge_cpu = cpu_of_exited(bridge)
            dt = t1 - t0
            results["plain MQTT->InfluxDB bridge"] = {
                "msgs_s": n_msgs / dt, "ratings_s": args.pairs / dt, "seconds": dt,
                "cpu": {"bridge": bridge_cpu, **{k: cpu1[k] - cpu0[k] for k in cpu0}}}
            print(f"  plain bridge: {n_msgs / dt:,.0f} msg/s", flush=True)

        # -- 1c. Node-RED: mqtt in -> json -> influxdb out (bench/nodered_flow.json) -------------
        if "nodered" in parts:
            influxql(influx.url, "", 'CREATE DATABASE "nodered"')
            red = NodeRed(tmp / "nodered", broker.port, influx.port, "nodered")
            red.start().wait_connected()  # the persistent session exists
            red.stop()
            loadgen(broker.port, keys, args.pairs)
            t_start = time.perf_counter()
            red.start()
            # Timed from its connection: Node-RED takes seconds to load, the others do not.
            t0 = red.wait_connected()
            assert red.proc is not None
            red_cpu0, cpu0 = proc_stats(red.proc.pid)[0], servers_cpu()
            try:
                t1 = wait_until(lambda: count_ratings(influx.url, "nodered") >= args.pairs,
                                600, 0.2)
                done = True
            except TimeoutError:
                t1, done = time.perf_counter(), False
            red_cpu, red_rss = proc_stats(red.proc.pid)
            cpu1 = servers_cpu()
            got = count_ratings(influx.url, "nodered")
            red.stop()
            dt = t1 - t0
            results["Node-RED (mqtt in->json->influxdb out)"] = {
                "msgs_s": n_msgs / dt, "ratings_s": got / dt, "seconds": dt,
                "start_s": t0 - t_start, "stored": got, "done": done, "rss_mb": red_rss / 2**20,
                "cpu": {"Node-RED": red_cpu - red_cpu0, **{k: cpu1[k] - cpu0[k] for k in cpu0}}}
            print(f"  Node-RED: {n_msgs / dt:,.0f} msg/s ({got} of {args.pairs} ratings stored)",
                  flush=True)

        # -- 1d. the collector(s) -----------------------------------------------------------------
        coll = None
        if "collector" in parts:
            if args.baseline_code is not None:
                r, other, _ = drain_collector(args.baseline_code.resolve(), tmp, "baseline",
                                              pristine, broker, influx, "evalterm_baseline",
                                              keys, args.pairs)
                other.terminate()
                other.wait(30)
                results[f"collector of {args.baseline_code}"] = r
            r, coll, depth_series = drain_collector(ROOT, tmp, "collector", pristine, broker,
                                                    influx, "evalterm", keys, args.pairs)
            results["evalterm collector"] = r
        if "partitioned" in parts:
            results["evalterm collector, 2 partitions in 2 processes"] = drain_partitioned(
                tmp, pristine, broker, influx, "evalterm_part", keys, args.pairs)
        if "collector_pg" in parts:
            pg = PostgresServer("bench-pg").init().start()
            try:
                if args.baseline_code is not None:
                    # the other checkout's collector first, on a database of its own of the
                    # same server
                    r, other, _ = drain_collector(args.baseline_code.resolve(), tmp,
                                                  "baseline_pg", pristine, broker, influx,
                                                  "evalterm_baseline_pg", keys, args.pairs, pg)
                    other.terminate()
                    other.wait(120)
                    results[f"collector of {args.baseline_code}, state on PostgreSQL"] = r
                r, pg_coll, _ = drain_collector(ROOT, tmp, "collector_pg", pristine, broker,
                                                influx, "evalterm_pg", keys, args.pairs, pg)
                t_stop = time.perf_counter()
                pg_coll.terminate()
                pg_coll.wait(120)
                r["stop_s"] = time.perf_counter() - t_stop
                results["evalterm collector, state on PostgreSQL"] = r
            finally:
                pg.destroy()

        # -- 2. live latency ----------------------------------------------------------------------
        if "live" in parts and coll is not None:
            results["latency"] = live_latency(args, broker, influx, keys, coll)
        if coll is not None:
            coll.terminate()
            coll.wait(30)
    finally:
        broker.stop()
        influx.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    report(args, results, depth_series)
    return 0


def live_latency(args: argparse.Namespace, broker: MosquittoServer, influx: InfluxServer,
                 keys: Path, coll: subprocess.Popen[bytes]) -> dict[str, float]:
    lat_file = Path(tempfile.mkstemp(prefix="evalterm-latency-")[1])
    before = count_ratings(influx.url, "evalterm")
    n_live = int(args.rate * args.seconds)
    # The poller asks for counts per 100 ms of publish time (a point's time is its press
    # time, the publish time here), not for the ratings themselves: a query returning every
    # rating so far grows with the run and would itself become the delay being measured.
    # bucket ms -> [(poll asked ms, poll answered ms, count)]
    counts: dict[int, list[tuple[int, int, int]]] = {}
    stop_lat = threading.Event()
    since = [time.time_ns()]
    poll_ms: list[int] = []  # how long each poll took: a point is seen when its poll returns

    def poll_latency() -> None:
        start_ns = since[0] - 1_000_000_000
        while not stop_lat.wait(0.1):
            # Only the last LOOKBACK_S of publish time: a poll over the whole run grows with it
            # and becomes the delay being measured; later than that counts as not seen.
            lo = max(start_ns, time.time_ns() - LOOKBACK_S * 1_000_000_000)
            q = (f'SELECT count("value") FROM "rating" WHERE time >= {lo} '  # noqa: S608 (ints)
                 f"GROUP BY time({BUCKET_MS}ms)")
            asked = int(time.time() * 1000)
            try:
                series = influxql(influx.url, "evalterm", q)
            except (WriteFailed, ValueError):  # unreachable or refused: poll again
                continue
            t_seen = int(time.time() * 1000)
            poll_ms.append(t_seen - asked)
            for s in series:
                for t, n in s["values"]:  # type: ignore[union-attr]
                    history = counts.setdefault(int(t), [])
                    if n and (not history or n > history[-1][2]):
                        history.append((asked, t_seen, int(n)))

    lat_thread = threading.Thread(target=poll_latency, daemon=True)
    lat_thread.start()
    gen = loadgen(broker.port, keys, n_live, rate=args.rate, latency_out=lat_file)
    wait_until(lambda: count_ratings(influx.url, "evalterm") >= before + n_live, 300, 0.2)
    time.sleep(0.3)
    stop_lat.set()
    lat_thread.join()
    cpu2, rss2 = proc_stats(coll.pid)
    # Where the time goes: publish -> received by the collector (broker, paho, queue) and
    # received -> first seen in InfluxDB (ingest, commit, outbox, drainer, poll).
    received: dict[str, int] = {}
    start_ns = since[0] - 5_000_000_000
    q = f'SELECT "rating_id", "received_ms" FROM "rating" WHERE time >= {start_ns}'  # noqa: S608
    for series in influxql(influx.url, "evalterm", q):
        for _t, rid, rms in series["values"]:  # type: ignore[union-attr]
            received[str(rid)] = int(rms)
    published: dict[int, list[int]] = {}
    to_collector = []
    for line in lat_file.read_text().splitlines():
        rid, ms = line.split()
        published.setdefault(int(ms) // BUCKET_MS * BUCKET_MS, []).append(int(ms))
        if rid in received:
            to_collector.append(received[rid] - int(ms))
    lat_file.unlink()
    # Within a bucket the k-th rating to be published is taken as the k-th to be seen: the
    # error is below one bucket (100 ms), on top of up to 100 ms between polls.
    # Seen when the poll that first counted it answered (an upper bound); the same with the time
    # that poll was asked is a lower bound (what it counted was written before it answered,
    # and mostly before it began).
    lats, lats_lo = [], []
    for bucket, times in published.items():
        history = counts.get(bucket, [])
        for k, ms in enumerate(sorted(times), start=1):
            seen = next(((a, t) for a, t, n in history if n >= k), None)
            if seen is not None:
                lats.append(seen[1] - ms)
                lats_lo.append(max(0, seen[0] - ms))
    achieved = n_live / gen["seconds"]
    return {"rate": achieved, "n": len(lats), "missing": n_live - len(lats),
            **percentiles("", lats), **percentiles("coll_", to_collector),
            **percentiles("poll_", poll_ms), **percentiles("lo_", lats_lo),
            "rss_mb": rss2 / 2**20, "cpu_s": cpu2}


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]],
           depth_series: list[tuple[float, int]]) -> None:
    n_msgs = 2 * args.pairs
    bare = results.get("bare paho subscriber", {}).get("msgs_s", float("nan"))
    bridge_rate = results.get("plain MQTT->InfluxDB bridge", {}).get("msgs_s", float("nan"))
    print()
    print(f"{'backlog drain':<44}{'msg/s':>10}{'ratings/s':>11}{'seconds':>9}"
          f"{'vs bare':>9}{'vs bridge':>11}")
    for name, r in results.items():
        if name == "latency":
            continue
        print(f"{name:<44}{r['msgs_s']:>10,.0f}{r['ratings_s']:>11,.0f}{r['seconds']:>9.1f}"
              f"{r['msgs_s'] / bare:>9.2f}{r['msgs_s'] / bridge_rate:>11.2f}")
    # Where the CPU went, per message, for each consumer that writes to InfluxDB; for the
    # collector also what two cores would give this pipeline if nothing else ran.
    for name, r in results.items():
        if "cpu" not in r:
            continue
        per_msg = {k: v / n_msgs * 1e6 for k, v in r["cpu"].items()}
        total = sum(per_msg.values())
        line = (f"CPU per message, {name}: "
                + ", ".join(f"{k} {v:.0f} us" for k, v in per_msg.items())
                + f"; total {total:.0f} us")
        if "machine" in r:
            busy, span = r["machine"]
            line += (f", so {os.cpu_count()} cores give this pipeline at most "
                     f"{os.cpu_count() * 1e6 / total:,.0f} msg/s "
                     f"({os.cpu_count() * 0.5e6 / total:,.0f} ratings/s); the machine was "
                     f"{busy / span:.0%} busy; peak RSS {r['rss_mb']:.0f} MB")
        print(line)
    for name, r in results.items():
        if "stop_s" in r:
            print(f"{name}: stopped {r['stop_s']:.1f} s after SIGTERM")
    for name, r in results.items():
        if "start_s" in r:
            print(f"{name}: started in {r['start_s']:.1f} s (not timed), {r['stored']} of "
                  f"{args.pairs} ratings stored{'' if r['done'] else ' (gave up waiting)'}; "
                  f"peak RSS {r['rss_mb']:.0f} MB")
    if depth_series:
        print("outbox depth (s: points): "
              + ", ".join(f"{t:.0f}: {d}" for t, d in depth_series[:30]))
    lat = results.get("latency")
    if lat:
        print(f"live: {lat['rate']:,.0f} ratings/s (+ as many transaction events) "
              f"for {args.seconds:.0f} s:"
              f" p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms"
              f" publish -> queryable in InfluxDB ({lat['missing']} not seen within"
              f" {LOOKBACK_S} s; counted from the polls' start: p50 {lat['lo_p50_ms']:.0f} ms,"
              f" p99 {lat['lo_p99_ms']:.0f} ms); "
              f"peak RSS {lat['rss_mb']:.0f} MB with {args.devices} registered devices")
        print(f"  of which publish -> received by the collector: p50 {lat['coll_p50_ms']:.0f} ms,"
              f" p99 {lat['coll_p99_ms']:.0f} ms; a poll of InfluxDB took p50"
              f" {lat['poll_p50_ms']:.0f} ms, p99 {lat['poll_p99_ms']:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
