"""`evalterm run` and `evalterm config check|sample`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from collector.cli.common import load, setup_logging
from collector.config import sample_config

__all__ = ['add_parsers']


def cmd_run(args: argparse.Namespace) -> int:
    from collector.service import Collector

    cfg = load(args)
    setup_logging(cfg.collector.log_level)
    Collector(cfg).run_forever()
    return 0

def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load(args)
    print(f"config OK ({cfg.source})")
    for section, values in cfg.redacted().items():
        print(f"[{section}]")
        for k, v in values.items():
            print(f"  {k} = {json.dumps(v, ensure_ascii=False)}")
    return 0

def cmd_config_sample(_args: argparse.Namespace) -> int:
    sys.stdout.write(sample_config())
    return 0

def add_parsers(sub: Any) -> None:
    """Register `run` and `config` on the main parser's subparsers."""
    sub.add_parser("run", help="run the collector").set_defaults(func=cmd_run)
    cfg = sub.add_parser("config", help="check or print the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("check", help="validate and show the effective config (secrets hidden)"
                       ).set_defaults(func=cmd_config_check)
    cfg_sub.add_parser("sample", help="print a commented config with every default"
                       ).set_defaults(func=cmd_config_sample)
