"""The `evalterm` command: one module per command group, each with `add_parsers(sub)`.

    service   run, config check|sample
    device    device add|list|revoke|flash|provision|rotate-key|replace|report|update
    broker    broker render
    pki       pki init|issue|rotate|revoke (the hall's TLS certificates)
    txn       txn import
    report    report
    sim       simulate, demo
    detect    detect run|simulate|evaluate
    grafana   grafana export|deploy
    backup    backup, restore, state copy, influx setup|rollup (state database and InfluxDB)
    manager   audit verify, case ..., directory import, export day, report month
              (collector/manager/cli.py)

A command fails with one line on standard error and exit status 2 when the user can fix the
cause (`collector.errors.EvaltermError` and its tree, a missing or unreadable file); any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from collector.errors import EvaltermError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from collector.cli import backup as backup_group
    from collector.cli import broker, detect, device, grafana, pki, report, service, sim, txn
    from collector.manager import cli as manager

    p = argparse.ArgumentParser(prog="evalterm",
                                description="evalterm: rating terminals, collector")
    p.add_argument("-c", "--config", help="TOML config file (default: built-in defaults + "
                   "EVALTERM_* environment variables)")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (service, device, broker, pki, txn, sim, detect, grafana, backup_group):
        group.add_parsers(sub)
    report_sub = report.add_parsers(sub)
    manager.add_parsers(sub, report_sub)  # audit, case, directory, export, report month
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EvaltermError as exc:
        # A ConfigError may list several problems: one line each.
        for line in str(exc).splitlines() or [""]:
            print(f"evalterm: error: {line}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"evalterm: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
