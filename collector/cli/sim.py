"""`evalterm simulate` (a simulated hall on the configured broker) and `evalterm demo`
(private servers, the collector and a simulated hall)."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from collector.cli.common import load, now_ms, open_registry, setup_logging
from collector.cli.report import report
from collector.cli.table import render_table
from collector.config import Config, load_config
from collector.detection.verdict import SEVERITY_NAMES
from collector.errors import ServiceUnavailable, UsageError

__all__ = ["Flag", "add_parsers", "demo_profiles", "flagged_windows", "sim_keys"]


def sim_keys(cfg: Config, spec: Any) -> dict[str, bytes]:
    """Register the simulated devices (if missing) and return their keys. A window that has a
    real (not simulated) active device is refused: two active devices at a window would mix a
    simulation into a real window's figures."""
    keys, _added = register_sim_devices(cfg, spec)
    return keys


def register_sim_devices(cfg: Config, spec: Any) -> tuple[dict[str, bytes], list[str]]:
    """(keys, the devices registered now, which the caller removes when it is done)."""
    reg, _ = open_registry(cfg)
    keys, added = {}, []
    for w in spec.windows:
        real = [d.device for d in reg.active_at(spec.hall, w.window) if d.device != w.device]
        if real:
            raise UsageError(
                f"{spec.hall}/{w.window} has the real device {real[0]}: simulate a hall of its "
                "own (--hall sim01), never one with devices")
        dev = reg.get(w.device)
        if dev is None:
            dev = reg.add(w.device, spec.hall, w.window, now_ms())
            added.append(w.device)
        keys[w.device] = dev.key
    return keys, added


def _sim_hall(args: argparse.Namespace, cfg: Config, hall: str, host: str, port: int,
              prefix: str, busy: tuple[str, ...] = (), *, secured: bool = False,
              feed_password: str = "") -> Any:
    """`busy`: windows that run at the pace of the hall's busiest window. `secured`: the broker
    checks passwords, so each device authenticates as itself and the business system as the
    hall's feed user."""
    from collector.provision.broker import feed_user
    from collector.provision.devconfig import mqtt_password
    from collector.sim.realtime import SimHall, default_hall, parse_profiles

    spec = default_hall(hall, args.windows, args.rate, args.seed, parse_profiles(args.profile),
                        busy=busy)
    keys, added = register_sim_devices(cfg, spec)
    sim = SimHall(spec, keys, host, port, prefix=prefix, seed=args.seed, cycle_s=args.cycle,
                  feed_username=feed_user(hall) if secured else "",
                  feed_password=feed_password, device_password=mqtt_password if secured else None)
    sim.registered = added
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
    secured = bool(cfg.mqtt.username)
    feed_password = os.environ.get(args.feed_password_env, "")
    if secured and not feed_password:
        raise UsageError(
            f"the broker checks passwords: put the business-system user's password of hall "
            f"{args.hall} (from the service users file `evalterm broker render` wrote) in "
            f"${args.feed_password_env}")
    hall = _sim_hall(args, cfg, args.hall, cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix,
                     secured=secured, feed_password=feed_password)
    try:
        try:
            hall.start()
        except OSError as exc:
            raise ServiceUnavailable(
                f"the broker at {cfg.mqtt.host}:{cfg.mqtt.port} is unreachable "
                f"({exc.strerror or type(exc).__name__}): start it, or correct [mqtt] host/port"
            ) from None
        refused = hall.refusals()
        if refused:
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            raise ServiceUnavailable(
                f"the broker at {cfg.mqtt.host}:{cfg.mqtt.port} refused "
                f"{'; '.join(refused[:3])}{more}: if the simulated devices are new to it, run "
                "`evalterm broker render --reload-pid $(pidof mosquitto)` (they are registered "
                "now) and start simulate again")
        try:
            hall.run(args.duration if args.duration > 0 else float("inf"))
        except KeyboardInterrupt:
            pass
    finally:
        hall.stop()
        # Removed after a run; kept when the broker refused them, so that `broker render` can
        # let them in for the next run.
        if (not args.keep_devices and not hall.refusals(0)) or not hall.started:
            _remove_sim_devices(cfg, [w.device for w in hall.spec.windows])
    print(f"simulated {hall.completed} transactions, {hall.ratings_sent()} ratings")
    _sim_truth(hall)
    return 0


def _remove_sim_devices(cfg: Config, devices: list[str]) -> None:
    """The simulation's own devices leave the registry with it (their ratings were not real)."""
    reg, _ = open_registry(cfg)
    for device in devices:
        reg.remove(device, force=True)
    if devices:
        print(f"removed the {len(devices)} simulated devices from the registry "
              "(--keep-devices keeps them)")


DEMO_PROFILES = ("suppressed_negatives:w03", "self_rating:w05")

def demo_profiles(args: argparse.Namespace) -> list[str]:
    """The demo's manipulated windows: as given, none with `--profile none`, else a window
    whose 差评 never leave the device and one whose staff rate for the citizens."""
    if args.profile is not None:
        return [p for p in args.profile if p != "none"]
    return [p for p in DEMO_PROFILES if int(p.rsplit(":w", 1)[1]) <= args.windows]

@dataclass(frozen=True)
class Flag:
    """One window the detector flags today, as the demo shows it."""

    window: str           # hall/window
    severity: str         # 可疑 / 严重 (or the English name)
    reasons: tuple[str, ...]


def flagged_windows(cfg: Config, lang: str = "zh") -> list[Flag]:
    """The windows the collector's detector flags today, with their severity and every reason."""
    from collector.influx import influxql

    i = cfg.influx
    reasons = "reasons_zh" if lang == "zh" else "reasons_en"
    # S608: `reasons` is one of two constant field names.
    q = (f'SELECT last("flagged"), last("severity"), last("{reasons}") FROM "integrity_verdict" '  # noqa: S608
         "WHERE time > now() - 1d AND \"staff\" = '*' GROUP BY \"hall\", \"window\"")
    out = []
    for s in influxql(i.url, i.database if i.version == 1 else i.bucket, q,
                      username=i.username, password=i.password):
        tags, vals = s.get("tags") or {}, s["values"][0]  # type: ignore[index]
        if vals[1]:
            sev = SEVERITY_NAMES.get(int(vals[2] or 0), ("?", "?"))[0 if lang == "zh" else 1]
            text = str(vals[3] or "")
            parts = [r.strip() for r in re.split("[；;] ?", text) if r.strip()]
            out.append(Flag(f"{tags.get('hall', '?')}/{tags.get('window', '?')}",  # type: ignore[union-attr]
                            sev, tuple(parts)))
    return sorted(out, key=lambda f: f.window)


def _print_flags(flags: list[Flag]) -> None:
    if not flags:
        print("flagged (integrity_verdict): none yet")
        return
    print("flagged (integrity_verdict):")
    for f in flags:
        print(f"  {f.window} [{f.severity}]")
        for r in f.reasons:
            print(f"      - {r}")


class _Stop(Exception):
    """SIGTERM: the demo stops as it does on Ctrl-C."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Stop


# How long the demo's default manipulations take to be flagged at the default pace: measured
# (docs/detection.md, "The demo"); printed so a newcomer knows how long to wait.
DEMO_EXPECT_MIN = 6


def cmd_demo(args: argparse.Namespace) -> int:
    from collector.service import Collector
    from collector.sim.realtime import parse_profiles
    from collector.sim.servers import InfluxServer, MosquittoServer, free_port

    setup_logging("WARNING")
    root = Path(args.dir).resolve()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    first_flag: dict[str, float] = {}
    servers: list[Any] = []
    collector = hall = None
    try:
        print(f"demo: starting a private Mosquitto and InfluxDB under {root}")
        broker = MosquittoServer(root / "mosquitto").start()
        servers.append(broker)
        influx = InfluxServer(root / "influxd").start()
        servers.append(influx)
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
            # A demo hall is far busier than a real one (minutes, not hours, between
            # transactions), and its day starts when the demo does: the pace-based burst scan
            # would flag every window (the others count per rating or per transaction).
            detection__burst_min=10_000,
        )
        collector = Collector(cfg)
        collector.start()
        defaults = args.profile is None
        args.profile = demo_profiles(args)
        manipulated = parse_profiles(args.profile)
        # The default manipulated windows run at the busiest window's pace, so that evidence (a
        # suppressed 差评, a pile of fast 5s) builds up in minutes rather than in a business day.
        busy = tuple(manipulated) if defaults else ()
        print("demo: hall01, windows (true quality: the detector never sees it):")
        hall = _sim_hall(args, cfg, "hall01", "127.0.0.1", broker.port, cfg.mqtt.topic_prefix,
                         busy)
        hall.start()
        print(f"demo: broker 127.0.0.1:{broker.port}, InfluxDB {influx.url} (database evalterm), "
              f"collector http://{cfg.http.listen}/metrics")
        pace = sum(w.rate_per_min for w in hall.spec.windows) / len(hall.spec.windows)
        print(f"demo: hall01 with {args.windows} windows, ~{pace:.1f} transactions/min each on "
              "average" + (f" ({', '.join(busy)} at the busiest window's pace)" if busy else "")
              + "; Ctrl-C to stop")
        if manipulated:
            print(f"demo: manipulated: {', '.join(f'{w} ({p})' for w, p in manipulated.items())}"
                  + (f"; expect them flagged within about {DEMO_EXPECT_MIN} minutes"
                     if defaults else ""))
        runner = threading.Thread(target=hall.run, args=(args.duration or float("inf"),),
                                  daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(args.every)
            time.sleep(1)  # let the last batch reach InfluxDB
            print(f"\n--- {datetime.now():%H:%M:%S}  transactions {hall.completed}, "
                  f"ratings pressed {hall.ratings_sent()}, "
                  f"outbox {collector.health()['outbox_depth']}")
            print(report(cfg, "1d"))
            flags = flagged_windows(cfg)
            for f in flags:
                first_flag.setdefault(f.window.split("/", 1)[1], time.monotonic() - started)
            _print_flags(flags)
    except (KeyboardInterrupt, _Stop):
        print("\ndemo: stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if hall is not None:
            hall.stop()
        if collector is not None:
            collector.stop()
        for server in reversed(servers):
            server.stop()
    if hall is not None:
        _closing_summary(hall, demo_manipulated(args), first_flag, time.monotonic() - started)
    return 0


def demo_manipulated(args: argparse.Namespace) -> dict[str, str]:
    from collector.sim.realtime import parse_profiles

    return parse_profiles(args.profile or [])


def _closing_summary(hall: Any, manipulated: dict[str, str], first_flag: dict[str, float],
                     ran_s: float) -> None:
    """What the demo did against what the detector found."""
    print(f"\ndemo: summary after {ran_s / 60:.1f} minutes ({hall.completed} transactions, "
          f"{hall.ratings_sent()} ratings pressed)")
    rows = []
    truth = hall.truth()
    for w in hall.spec.windows:
        profile = manipulated.get(w.window, "")
        flagged = first_flag.get(w.window)
        did = ", ".join(f"{k} {v}" for k, v in sorted(truth.get(w.window, {}).items()))
        verdict = ("" if flagged is None else f"{flagged / 60:.1f} min")
        outcome = ("detected" if profile and flagged is not None else
                   "missed" if profile else "false flag" if flagged is not None else "ok")
        rows.append((w.window, profile or "honest", did, verdict, outcome))
    print(render_table(("window", "truth", "what the manipulation did", "first flagged",
                        "outcome"), rows, left=3))


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
    sim.add_argument("--feed-password-env", default="EVALTERM_SIM_FEED_PASSWORD",
                     help="environment variable with the hall's business-system password "
                     "(needed when the broker checks passwords)")
    sim.add_argument("--keep-devices", action="store_true",
                     help="leave the simulated devices registered afterwards")
    sim.set_defaults(func=cmd_simulate)
    demo.add_argument("--dir", default="run/demo", help="where the demo keeps its servers' data")
    demo.add_argument("--every", type=float, default=15.0, help="seconds between reports")
    demo.add_argument("--rating-window", type=int, default=60,
                      help="rating window in seconds (production default: 600)")
    demo.set_defaults(func=cmd_demo)
