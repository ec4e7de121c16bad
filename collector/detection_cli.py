"""`evalterm detect ...` subcommands (integrity detection, docs/detection.md)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_subcommands"]


def add_subcommands(sub: Any) -> None:
    """Register the `detect` command group on the main parser's subparsers."""
    det = sub.add_parser("detect", help="integrity indicators and manipulation flags")
    det.add_subparsers(dest="detect_command", required=True)
    _ = argparse  # the detection issue fills this in
