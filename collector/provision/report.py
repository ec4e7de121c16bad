"""The provisioning report: one CSV per hall, one row per provisioning, key rotation or
replacement, appended when a board was actually changed. It is the hall's paper trail: which
board (unique id) became which device at which window, with which firmware and key fingerprint.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["REPORT_COLUMNS", "ReportRow", "append_row", "read_rows", "report_path"]


@dataclass(frozen=True)
class ReportRow:
    date: str             # ISO 8601, UTC
    hall: str
    window: str
    device: str
    action: str           # provision, rotate-key, replace
    firmware: str
    key_fingerprint: str
    board_uid: str        # machine.unique_id() (the Wi-Fi MAC on an ESP32)
    port: str
    replaces: str         # the revoked device, for replace


REPORT_COLUMNS = tuple(f.name for f in fields(ReportRow))


def iso_utc(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_path(report_dir: Path, hall: str) -> Path:
    return Path(report_dir) / f"provisioning-{hall}.csv"


def append_row(report_dir: Path, row: ReportRow) -> Path:
    path = report_path(report_dir, row.hall)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        if new:
            w.writeheader()
        w.writerow(asdict(row))
    return path


def read_rows(report_dir: Path, hall: str) -> list[dict[str, str]]:
    path = report_path(report_dir, hall)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
