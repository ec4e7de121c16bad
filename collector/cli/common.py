"""What every command group of the `evalterm` command shares: the configuration, logging and
the registry."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from collector.clock import now_ms
from collector.config import Config, load_config
from collector.db import connect
from collector.registry import Registry

__all__ = ["load", "now_ms", "open_registry", "setup_logging"]


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def load(args: argparse.Namespace) -> Config:
    """The configuration named by `-c` (defaults and EVALTERM_* variables without it)."""
    return load_config(args.config)


def open_registry(cfg: Config) -> tuple[Registry, sqlite3.Connection]:
    conn = connect(cfg.state_target)
    return Registry(conn), conn
