"""The `evalterm` command."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import secrets
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config, sample_config
from .db import connect
from .registry import Registry, RegistryError

__all__ = ["main"]

_LOG = logging.getLogger("evalterm")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# -- run / config ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .service import Collector

    cfg = _config(args)
    _setup_logging(cfg.collector.log_level)
    Collector(cfg).run_forever()
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    print(f"config OK ({cfg.source})")
    for section, values in cfg.redacted().items():
        print(f"[{section}]")
        for k, v in values.items():
            print(f"  {k} = {json.dumps(v, ensure_ascii=False)}")
    return 0


def cmd_config_sample(_args: argparse.Namespace) -> int:
    sys.stdout.write(sample_config())
    return 0


# -- devices ------------------------------------------------------------------------------------


def _registry(cfg: Config) -> tuple[Registry, Any]:
    conn = connect(cfg.state_db)
    return Registry(conn), conn


def cmd_device_add(args: argparse.Namespace) -> int:
    reg, _ = _registry(_config(args))
    dev = reg.add(args.device, args.hall, args.window, _now_ms())
    print(f"registered {dev.device} at {dev.hall}/{dev.window}, key fingerprint {dev.fingerprint}")
    if args.key_file:
        path = Path(args.key_file)
        path.write_text(dev.key.hex() + "\n")
        path.chmod(0o600)
        print(f"key written to {path} (mode 600); put it in the device's config, then delete it")
    else:
        print("the key was not shown: use --key-file to write it for provisioning")
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    reg, _ = _registry(_config(args))
    devices = reg.list()
    if args.json:
        print(json.dumps([{"device": d.device, "hall": d.hall, "window": d.window, "state": d.state,
                           "fingerprint": d.fingerprint} for d in devices], indent=2))
        return 0
    print(f"{'device':<24} {'hall':<12} {'window':<10} {'state':<8} fingerprint")
    for d in devices:
        print(f"{d.device:<24} {d.hall:<12} {d.window:<10} {d.state:<8} {d.fingerprint}")
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    reg, _ = _registry(_config(args))
    dev = reg.revoke(args.device, _now_ms())
    print(f"{dev.device} is {dev.state}; its messages are refused from now on")
    return 0


# -- transactions -------------------------------------------------------------------------------

CSV_COLUMNS = ("id", "window", "txn", "staff_id", "staff_name", "staff_badge", "service_code",
               "service_name", "started", "completed", "outcome")


def _csv_time(value: str, column: str, line: int) -> int:
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"line {line}: {column} {value!r} is neither epoch ms nor ISO 8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"line {line}: {column} {value!r} has no UTC offset (e.g. +08:00)")
    return int(dt.timestamp() * 1000)


def csv_to_feed(path: Path) -> list[tuple[int, bytes | str]]:
    """Rows of a backfill CSV as feed messages; a row that cannot be converted is an error text."""
    out: list[tuple[int, bytes | str]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)}")
        for n, row in enumerate(reader, start=2):
            try:
                started = _csv_time(row["started"], "started", n)
                completed = _csv_time(row["completed"], "completed", n)
            except ValueError as exc:
                out.append((n, str(exc)))
                continue
            msg = {
                "v": 1, "kind": "txn_completed", "id": row["id"], "window": row["window"],
                "ts": completed, "txn": row["txn"],
                "staff": {"id": row["staff_id"], "name": row["staff_name"],
                          "badge": row["staff_badge"]},
                "service": {"code": row["service_code"], "name": row["service_name"]},
                "started": started, "completed": completed, "outcome": row["outcome"],
            }
            out.append((n, json.dumps(msg, ensure_ascii=False).encode()))
    return out


def cmd_txn_import(args: argparse.Namespace) -> int:
    from .pipeline import Inbound, Ingest
    from .protocol import feed_topic

    cfg = _config(args)
    _setup_logging("WARNING")
    rows = csv_to_feed(Path(args.file))
    ingest = Ingest(connect(cfg.state_db), cfg)
    topic = feed_topic(cfg.mqtt.topic_prefix, args.hall)
    counts: dict[str, int] = {}
    errors = 0
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        items, lines = [], []
        for n, msg in chunk:
            if isinstance(msg, str):
                print(f"error: {msg}", file=sys.stderr)
                errors += 1
                continue
            items.append(Inbound("import", topic, msg, _now_ms()))
            lines.append(n)
        for n, outcome in zip(lines, ingest.process_batch(items, _now_ms()), strict=True):
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if outcome.status in ("rejected", "error"):
                errors += 1
                print(f"error: line {n}: {outcome.reason}: {outcome.detail}", file=sys.stderr)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"imported {args.file}: {summary or 'nothing'}; {errors} error(s)")
    return 1 if errors else 0


# -- report, simulate, demo ---------------------------------------------------------------------


def report(cfg: Config, since: str = "1d") -> str:
    from .influx import influxql

    i = cfg.influx
    db = i.database if i.version == 1 else i.bucket
    where = f"WHERE time > now() - {since}"
    rows: dict[str, dict[str, Any]] = {}

    def add(q: str, key: str) -> None:
        for s in influxql(i.url, db, q, username=i.username, password=i.password):
            tags = s.get("tags") or {}
            name = f"{tags.get('hall', '?')}/{tags.get('window', '?')}"
            cols, vals = s["columns"], s["values"][0]  # type: ignore[index]
            for c, v in zip(cols[1:], vals[1:], strict=True):  # type: ignore[arg-type]
                rows.setdefault(name, {})[f"{key}{c}"] = v

    add(f'SELECT sum("completed_n") AS completed, sum("rated") AS rated, sum("unrated") AS unrated '
        f'FROM "transaction" {where} GROUP BY "hall", "window"', "t_")
    add(f'SELECT count("value") AS ratings, mean("satisfied") AS sat, sum("bad") AS bad '
        f'FROM "rating" {where} GROUP BY "hall", "window"', "r_")
    add(f'SELECT count("value") AS unlinked FROM "rating" {where} AND "link"=\'unlinked\' '
        f'GROUP BY "hall", "window"', "u_")
    lines = [f"{'window':<16}{'办结 done':>10}{'已评 rated':>11}{'未评 unrated':>13}"
             f"{'评价 ratings':>13}{'未关联 unlinked':>16}{'满意率 sat.':>12}{'差评 bad':>9}"]
    for name in sorted(rows):
        r = rows[name]
        sat = r.get("r_sat")
        lines.append(
            f"{name:<16}{r.get('t_completed') or 0:>10}{r.get('t_rated') or 0:>11}"
            f"{r.get('t_unrated') or 0:>13}{r.get('r_ratings') or 0:>13}"
            f"{r.get('u_unlinked') or 0:>16}{'' if sat is None else f'{sat:.1%}':>12}"
            f"{r.get('r_bad') or 0:>9}"
        )
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    print(report(_config(args), args.since))
    return 0


def _sim_keys(cfg: Config, spec: Any) -> dict[str, bytes]:
    """Register the simulated devices (if missing) and return their keys."""
    reg, _ = _registry(cfg)
    keys = {}
    for w in spec.windows:
        dev = reg.get(w.device) or reg.add(w.device, spec.hall, w.window, _now_ms())
        keys[w.device] = dev.key
    return keys


def _sim_hall(args: argparse.Namespace, cfg: Config, hall: str, host: str, port: int,
              prefix: str, busy: tuple[str, ...] = ()) -> Any:
    """`busy`: windows that run at the pace of the hall's busiest window."""
    from .simulate import SimHall, default_hall, parse_profiles

    spec = default_hall(hall, args.windows, args.rate, args.seed, parse_profiles(args.profile),
                        busy=busy)
    sim = SimHall(spec, _sim_keys(cfg, spec), host, port, prefix=prefix, seed=args.seed,
                  cycle_s=args.cycle)
    for line in sim.describe():
        print(f"  {hall}/{line}")
    return sim


def _sim_truth(hall: Any) -> None:
    for window, did in sorted(hall.truth().items()):
        print(f"  {window}: " + (", ".join(f"{k} {v}" for k, v in sorted(did.items()))
                                 or "the profile did nothing yet"))


def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _setup_logging(cfg.collector.log_level)
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
    from .influx import influxql

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
    from .devservers import InfluxServer, MosquittoServer, free_port
    from .service import Collector
    from .simulate import parse_profiles

    _setup_logging("WARNING")
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
                  f"ratings pressed {hall.ratings_sent()}, outbox {collector.health()['outbox_depth']}")
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


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evalterm", description="evalterm: rating terminals, collector")
    p.add_argument("-c", "--config", help="TOML config file (default: built-in defaults + "
                   "EVALTERM_* environment variables)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="run the collector").set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="check or print the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("check", help="validate and show the effective config (secrets hidden)"
                       ).set_defaults(func=cmd_config_check)
    cfg_sub.add_parser("sample", help="print a commented config with every default"
                       ).set_defaults(func=cmd_config_sample)

    dev = sub.add_parser("device", help="the device registry")
    dev_sub = dev.add_subparsers(dest="device_command", required=True)
    add = dev_sub.add_parser("add", help="register a device and create its key")
    add.add_argument("--device", required=True)
    add.add_argument("--hall", required=True)
    add.add_argument("--window", required=True)
    add.add_argument("--key-file", help="write the new key (hex) to this file, mode 600")
    add.set_defaults(func=cmd_device_add)
    ls = dev_sub.add_parser("list", help="list registered devices (key fingerprints only)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_device_list)
    rv = dev_sub.add_parser("revoke", help="revoke a device: its messages are refused")
    rv.add_argument("--device", required=True)
    rv.set_defaults(func=cmd_device_revoke)
    from .provision_cli import add_device_commands  # flash, provision, rotate-key, replace

    add_device_commands(dev_sub)

    txn = sub.add_parser("txn", help="transactions from the business system")
    txn_sub = txn.add_subparsers(dest="txn_command", required=True)
    imp = txn_sub.add_parser("import", help="backfill completed transactions from a CSV file")
    imp.add_argument("file")
    imp.add_argument("--hall", required=True)
    imp.set_defaults(func=cmd_txn_import)

    rep = sub.add_parser("report", help="per-window summary from InfluxDB")
    rep.add_argument("--since", default="1d", help="InfluxQL duration, e.g. 1h, 1d, 7d")
    rep.set_defaults(func=cmd_report)

    sim = sub.add_parser("simulate", help="a simulated hall on the configured broker")
    demo = sub.add_parser("demo", help="private broker + InfluxDB + collector + simulated hall")
    from .sim_profiles import PROFILES

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

    # Subcommands of other concerns register themselves (kept out of this file on purpose).
    from .detection_cli import add_subcommands as add_detection

    add_detection(sub)
    from .grafana_cli import add_subcommands as add_grafana

    add_grafana(sub)
    from .provision_cli import add_subcommands as add_provision

    add_provision(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, RegistryError, ValueError, FileNotFoundError) as exc:
        print(f"evalterm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
