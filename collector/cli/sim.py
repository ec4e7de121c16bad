"""`evalterm simulate` (a simulated hall on the configured broker) and `evalterm demo`
(private servers, the collector and a simulated hall)."""

from __future__ import annotations

import argparse
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from collector.cli.common import load, now_ms, open_registry, setup_logging
from collector.cli.report import report
from collector.config import Config, load_config

__all__ = ['add_parsers', 'demo_profiles', 'flagged_windows', 'sim_keys']


def sim_keys(cfg: Config, spec: Any) -> dict[str, bytes]:
    """Register the simulated devices (if missing) and return their keys."""
    reg, _ = open_registry(cfg)
    keys = {}
    for w in spec.windows:
        dev = reg.get(w.device) or reg.add(w.device, spec.hall, w.window, now_ms())
        keys[w.device] = dev.key
    return keys

def _sim_hall(args: argparse.Namespace, cfg: Config, hall: str, host: str, port: int,
              prefix: str, busy: tuple[str, ...] = ()) -> Any:
    """`busy`: windows that run at the pace of the hall's busiest window."""
    from collector.sim.realtime import SimHall, default_hall, parse_profiles

    spec = default_hall(hall, args.windows, args.rate, args.seed, parse_profiles(args.profile),
                        busy=busy)
    sim = SimHall(spec, sim_keys(cfg, spec), host, port, prefix=prefix, seed=args.seed,
                  cycle_s=args.cycle)
    for line in sim.describe():
        print(f"  {hall}/{line}")
    return sim

def _sim_truth(hall: Any) -> None:
    for window, did in sorted(hall.truth().items()):
        print(f"  {window}: " + (", ".join(f"{k} {v}" for k, v in sorted(did.items()))
                                 or "the profile did nothing yet"))

def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = load(args)
    setup_logging(cfg.collector.log_level)
    hall = _sim_hall(args, cfg, args.hall, cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix)
    hall.start()
    try:
        hall.run(args.duration if args.duration > 0 else float("inf"))
    except KeyboardInterrupt:
        pass
    hall.stop()
    print(f"simulated {hall.completed} transactions, {hall.ratings_sent()} ratings")
    _sim_truth(hall)
    return 0

DEMO_PROFILES = ("suppressed_negatives:w03", "self_rating:w05")

def demo_profiles(args: argparse.Namespace) -> list[str]:
    """The demo's manipulated windows: as given, none with `--profile none`, else a window
    whose 差评 never leave the device and one whose staff rate for the citizens."""
    if args.profile is not None:
        return [p for p in args.profile if p != "none"]
    return [p for p in DEMO_PROFILES if int(p.rsplit(":w", 1)[1]) <= args.windows]

def flagged_windows(cfg: Config) -> list[str]:
    """The windows the collector's detector flags today, with their first reason."""
    from collector.influx import influxql

    i = cfg.influx
    q = ('SELECT last("flagged") AS flagged, last("reasons") AS reasons FROM "integrity_verdict" '
         "WHERE time > now() - 1d AND \"staff\" = '*' GROUP BY \"hall\", \"window\"")
    out = []
    for s in influxql(i.url, i.database if i.version == 1 else i.bucket, q,
                      username=i.username, password=i.password):
        tags, vals = s.get("tags") or {}, s["values"][0]  # type: ignore[index]
        if vals[1]:
            reason = str(vals[2] or "").split("；")[0].split("; ")[0]
            out.append(f"{tags.get('hall', '?')}/{tags.get('window', '?')}: {reason}")
    return sorted(out)

def cmd_demo(args: argparse.Namespace) -> int:
    from collector.service import Collector
    from collector.sim.realtime import parse_profiles
    from collector.sim.servers import InfluxServer, MosquittoServer, free_port

    setup_logging("WARNING")
    root = Path(args.dir).resolve()
    print(f"demo: starting a private Mosquitto and InfluxDB under {root}")
    broker = MosquittoServer(root / "mosquitto").start()
    influx = InfluxServer(root / "influxd").start()
    cfg = load_config(None, env={}).with_overrides(
        collector__data_dir=str(root / "collector"),
        mqtt__port=broker.port, influx__url=influx.url,
        http__listen=f"127.0.0.1:{free_port()}", http__feed_token=secrets.token_hex(16),
        # Short windows so a newcomer sees unrated transactions within the first minutes.
        linking__rating_window_s=args.rating_window, linking__invite_ttl_s=min(
            120, args.rating_window),
        # The simulated hall is open whenever the demo runs, and judged every half minute.
        detection__opening_hours="00:00-24:00", detection__business_days="1-7",
        detection__interval_s=30,
        # A demo hall is far busier than a real one (minutes, not hours, between transactions),
        # and its day starts when the demo does: the pace-based burst scan would flag every
        # window (the others count per rating or per transaction).
        detection__burst_min=10_000,
    )
    collector = Collector(cfg)
    collector.start()
    defaults = args.profile is None
    args.profile = demo_profiles(args)
    # The default manipulated windows run at the busiest window's pace, so that evidence (a
    # suppressed 差评, a pile of fast 5s) builds up in minutes rather than in a business day.
    busy = tuple(parse_profiles(args.profile)) if defaults else ()
    print("demo: hall01, windows (true quality: the detector never sees it):")
    hall = _sim_hall(args, cfg, "hall01", "127.0.0.1", broker.port, cfg.mqtt.topic_prefix, busy)
    hall.start()
    print(f"demo: broker 127.0.0.1:{broker.port}, InfluxDB {influx.url} (database evalterm), "
          f"collector http://{cfg.http.listen}/metrics")
    pace = sum(w.rate_per_min for w in hall.spec.windows) / len(hall.spec.windows)
    print(f"demo: hall01 with {args.windows} windows, ~{pace:.1f} transactions/min each on "
          "average" + (f" ({', '.join(busy)} at the busiest window's pace)" if busy else "")
          + "; Ctrl-C to stop")
    runner = threading.Thread(target=hall.run, args=(args.duration or float("inf"),), daemon=True)
    runner.start()
    try:
        while runner.is_alive():
            runner.join(args.every)
            time.sleep(1)  # let the last batch reach InfluxDB
            print(f"\n--- {datetime.now():%H:%M:%S}  transactions {hall.completed}, "
                  f"ratings pressed {hall.ratings_sent()}, "
                  f"outbox {collector.health()['outbox_depth']}")
            print(report(cfg, "1d"))
            flags = flagged_windows(cfg)
            print("flagged (integrity_verdict): " + ("; ".join(flags) if flags else "none yet"))
    except KeyboardInterrupt:
        print("\ndemo: stopping")
    hall.stop()
    _sim_truth(hall)
    collector.stop()
    broker.stop()
    influx.stop()
    return 0

def add_parsers(sub: Any) -> None:
    """Register `simulate` and `demo` on the main parser's subparsers."""
    from collector.sim.profiles import PROFILES

    sim = sub.add_parser("simulate", help="a simulated hall on the configured broker")
    demo = sub.add_parser("demo", help="private broker + InfluxDB + collector + simulated hall")
    for sp in (sim, demo):
        sp.add_argument("--windows", type=int, default=6)
        sp.add_argument("--rate", type=float, default=6.0,
                        help="transactions per minute per window, on average (windows differ)")
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--duration", type=float, default=0, help="seconds (0: until Ctrl-C)")
        sp.add_argument("--profile", action="append", metavar="PROFILE:WINDOW",
                        help="a manipulated window, e.g. self_rating:w03 (repeatable); profiles: "
                        + ", ".join(PROFILES) + ("" if sp is sim else
                        "; default suppressed_negatives:w03 and self_rating:w05, 'none' for an "
                        "honest hall"))
        sp.add_argument("--cycle", type=float, default=600.0 if sp is sim else 300.0,
                        help="seconds of real time that hold one business day of the profiles' "
                        "episodes (fill-in bursts, unplugging, pauses)")
    sim.add_argument("--hall", default="hall01")
    sim.set_defaults(func=cmd_simulate)
    demo.add_argument("--dir", default="run/demo", help="where the demo keeps its servers' data")
    demo.add_argument("--every", type=float, default=15.0, help="seconds between reports")
    demo.add_argument("--rating-window", type=int, default=60,
                      help="rating window in seconds (production default: 600)")
    demo.set_defaults(func=cmd_demo)
