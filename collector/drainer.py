"""The drainer process: `python -m collector.drainer`, started and watched by the collector.

It reads the collector's configuration as TOML on standard input (so secrets appear neither on a
command line nor in a file), then moves points from the state database's outbox to InfluxDB
until SIGTERM. See collector/influx.py `OutboxDrainer`.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from typing import Any

from collector.config import Config, parse_config
from collector.db import connect_drained, connect_reader, drained_path
from collector.influx import OutboxDrainer, make_writer
from collector.outbox import points_depth, prune_points
from collector.retention import apply as apply_retention

__all__ = ["DrainerProcess", "main"]

_LOG = logging.getLogger(__name__)


def main() -> int:
    cfg = parse_config(sys.stdin.read(), "collector (stdin)")
    logging.basicConfig(level=cfg.collector.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[drainer]: %(message)s")
    stop = threading.Event()

    def _term(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    # The collector passes its pid: if it died while we were starting, getppid() is already 1.
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()

    def _orphaned() -> None:
        # A collector killed with SIGKILL cannot stop us; its successor starts its own drainer.
        while True:
            if os.getppid() != parent:
                _LOG.warning("the collector is gone; the drainer stops")
                stop.set()
            if stop.wait(0.5):
                return

    threading.Thread(target=_orphaned, daemon=True).start()
    setup = None
    if cfg.influx.version == 1 and cfg.influx.manage_retention:
        def setup() -> object:
            return apply_retention(cfg)
    writer = make_writer(cfg, setup)
    drainer = OutboxDrainer(
        connect_reader(cfg.state_target), connect_drained(drained_path(cfg.state_db)), writer,
        batch_size=cfg.influx.batch_size,
        flush_interval_s=cfg.influx.flush_interval_ms / 1000, retry_max_s=cfg.influx.retry_max_s,
    )
    try:
        drainer.run(stop)
    finally:
        drainer.close()
        writer.close()
    return 0


class DrainerProcess:
    """The collector's handle on its drainer process: start, restart if it died, stop, status."""

    def __init__(self, cfg: Config, conn: sqlite3.Connection) -> None:
        self._cfg = cfg
        self._db = conn  # the collector's own connection, for reading the depth
        self._drained = connect_drained(drained_path(cfg.state_db), check_same_thread=False)
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "collector.drainer", str(os.getpid())], stdin=subprocess.PIPE,
            cwd=os.getcwd(),
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(self._cfg.to_toml().encode())
        self._proc.stdin.close()

    def watch(self) -> None:
        """Restart the drainer if it exited (called from the collector's loop)."""
        if self._proc is not None and self._proc.poll() is not None:
            _LOG.error("the drainer process exited with %s; restarting it", self._proc.returncode)
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def status(self) -> dict[str, Any]:
        row = self._drained.execute(
            "SELECT healthy, last_error, updated_ms, points_written, errors_unavailable, "
            "errors_internal, dead_points FROM drainer_status WHERE one=1"
        ).fetchone()
        if row is None:
            return {"healthy": True, "last_error": "", "updated_ms": 0, "points_written": 0,
                    "errors_unavailable": 0, "errors_internal": 0, "dead_points": 0}
        keys = ("healthy", "last_error", "updated_ms", "points_written", "errors_unavailable",
                "errors_internal", "dead_points")
        st = dict(zip(keys, row, strict=True))
        st["healthy"] = bool(st["healthy"])
        return st

    def depth(self) -> int:
        return points_depth(self._db, self._drained)

    def prune(self, state: sqlite3.Connection) -> int:
        """Delete what InfluxDB confirmed from the outbox, on the caller's (the ingest worker's)
        connection: the drainer itself never writes the state database."""
        return prune_points(state, self._drained)


if __name__ == "__main__":
    sys.exit(main())
