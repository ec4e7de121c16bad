"""`evalterm run` and `evalterm config check|sample`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from collector.cli.common import load, setup_logging
from collector.config import ConfigError, check_data_dir, config_warnings, sample_config

__all__ = ['add_parsers']


def cmd_run(args: argparse.Namespace) -> int:
    from collector.service import Collector

    cfg = load(args)
    # The service does not start with a folder it cannot use (config check says the same).
    problems = check_data_dir(cfg)
    if problems:
        raise ConfigError(problems)
    setup_logging(cfg.collector.log_level)
    for warning in config_warnings(cfg):
        logging.getLogger("collector.config").warning("%s", warning)
    from collector.manager.run import ui_mounts

    Collector(cfg, mounts=ui_mounts(cfg)).run_forever()
    return 0

def cmd_config_check(args: argparse.Namespace) -> int:
    """Every problem of the configuration, one line each (exit 2), or the effective values.
    Warnings (e.g. a user name without a password) are printed and do not fail the check."""
    cfg = load(args)  # raises ConfigError listing every invalid option
    problems = check_data_dir(cfg)
    if problems:
        raise ConfigError(problems)
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
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
