"""The drainer process: `python -m collector.drainer`, started and watched by the collector.

It reads the collector's configuration as TOML on standard input (so secrets appear neither on a
command line nor in a file), then moves points from the state database's outbox to one InfluxDB
target (`[influx] targets`, named on its command line) until SIGTERM. See collector/influx.py
`OutboxDrainer`.

One process per target, each with its own progress in drained.db: a target that is slow, down
or hangs holds back only its own delivery (and the pruning of the outbox, which waits for the
slowest), never the others', and a crash restarts only its own process. The price is that each
process renders the points itself (N times the rendering CPU for N targets).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as MetricsCollector

from collector.config import Config, parse_config
from collector.db import connect_drained, connect_reader, drained_cursors, drained_path
from collector.health import Part
from collector.influx import OutboxDrainer, make_writer
from collector.outbox import points_depth, prune_points
from collector.retention import apply as apply_retention

__all__ = ["DrainerMetrics", "DrainerProcess", "main"]

_LOG = logging.getLogger(__name__)


def main() -> int:
    full = parse_config(sys.stdin.read(), "collector (stdin)")
    target = sys.argv[2] if len(sys.argv) > 2 else full.influx_targets[0][0]
    cfg = full.for_influx_target(target)
    first = full.influx_targets[0][0]
    logging.basicConfig(level=cfg.collector.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[drainer {target}]: %(message)s")
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
        connect_reader(cfg.state_target),
        connect_drained(drained_path(cfg.state_db), first_target=first), writer,
        batch_size=cfg.influx.batch_size,
        flush_interval_s=cfg.influx.flush_interval_ms / 1000, retry_max_s=cfg.influx.retry_max_s,
        target=target,
    )
    try:
        drainer.run(stop)
    finally:
        drainer.close()
        writer.close()
    return 0


_STATUS_KEYS = ("healthy", "last_error", "updated_ms", "points_written", "errors_unavailable",
                "errors_internal", "dead_points")
_LAG_EVERY_S = 60.0  # how often a target that holds back the outbox is logged


class DrainerProcess:
    """The collector's handle on its drainer processes, one per InfluxDB target: start, restart
    one that died, stop, status, and the pruning of what every target has confirmed."""

    def __init__(self, cfg: Config, conn: sqlite3.Connection) -> None:
        self._cfg = cfg
        self._db = conn  # the collector's own connection, for reading the depth
        self.targets = tuple(name for name, _ in cfg.influx_targets)
        self._drained = connect_drained(drained_path(cfg.state_db), check_same_thread=False,
                                        first_target=self.targets[0])
        self._procs: dict[str, subprocess.Popen[bytes] | None] = dict.fromkeys(self.targets)
        self.restarts_of = dict.fromkeys(self.targets, 0)
        self._lag_logged: dict[str, float] = {}
        self._unknown_logged: set[str] = set()

    @property
    def restarts(self) -> int:
        return sum(self.restarts_of.values())

    def start(self) -> None:
        for target in self.targets:
            self._start(target)

    def _start(self, target: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector.drainer", str(os.getpid()), target],
            stdin=subprocess.PIPE, cwd=os.getcwd(),
        )
        assert proc.stdin is not None
        proc.stdin.write(self._cfg.to_toml().encode())
        proc.stdin.close()
        self._procs[target] = proc

    def watch(self) -> None:
        """Restart a drainer that exited, and say which target holds the outbox back (called
        from the collector's loop)."""
        for target, proc in self._procs.items():
            if proc is not None and proc.poll() is not None:
                _LOG.error("the drainer process of InfluxDB target %r exited with %s; restarting "
                           "it", target, proc.returncode)
                self.restarts_of[target] += 1
                self._start(target)
        self._log_lagging()

    def _log_lagging(self) -> None:
        now = time.monotonic()
        due = [t for t in self.targets if now - self._lag_logged.get(t, -1e9) >= _LAG_EVERY_S]
        if not due or len(self.targets) < 2:
            return
        depths = self.depths()
        best = min(depths.values())
        for target in due:
            st = self.status(target)
            if depths[target] > best and not (st["healthy"] and self._alive(target)):
                self._lag_logged[target] = now
                # The name only: a URL could carry credentials, and last_error never does.
                _LOG.warning("InfluxDB target %r is %d points behind (the fastest: %d); the "
                             "outbox keeps them until it has them: %s", target, depths[target],
                             best, st["last_error"] or "its drainer is not running")
            elif target in self._lag_logged and depths[target] <= best:
                del self._lag_logged[target]
                _LOG.info("InfluxDB target %r has caught up", target)

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self._procs.values():
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for target, proc in self._procs.items():
            if proc is None:
                continue
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            self._procs[target] = None

    def _alive(self, target: str) -> bool:
        proc = self._procs[target]
        return proc is not None and proc.poll() is None

    @property
    def alive(self) -> bool:
        return all(self._alive(t) for t in self.targets)

    def status(self, target: str | None = None) -> dict[str, Any]:
        """What the drainer of `target` (default: the first) last reported."""
        row = self._drained.execute(
            "SELECT healthy, last_error, updated_ms, points_written, errors_unavailable, "
            "errors_internal, dead_points FROM drainer_target_status WHERE target=?",
            (target or self.targets[0],),
        ).fetchone()
        if row is None:
            return {"healthy": True, "last_error": "", "updated_ms": 0, "points_written": 0,
                    "errors_unavailable": 0, "errors_internal": 0, "dead_points": 0}
        st = dict(zip(_STATUS_KEYS, row, strict=True))
        st["healthy"] = bool(st["healthy"])
        return st

    def depth(self) -> int:
        """Points the outbox keeps: those some target has not confirmed yet."""
        self._note_unknown()
        return points_depth(self._db, self._drained, self.targets)

    def depths(self) -> dict[str, int]:
        """Points waiting for each target."""
        return {t: points_depth(self._db, self._drained, (t,)) for t in self.targets}

    def _note_unknown(self) -> None:
        """Progress of a target no longer configured is ignored (it holds back no pruning);
        said once per name."""
        for name in set(drained_cursors(self._db, self._drained)) - set(self.targets):
            if name not in self._unknown_logged:
                self._unknown_logged.add(name)
                _LOG.warning("drained.db holds the progress of InfluxDB target %r, which is not "
                             "in [influx] targets: ignored, it no longer holds back the outbox",
                             name)

    def prune(self, state: sqlite3.Connection) -> int:
        """Delete what every target confirmed from the outbox, on the caller's (the ingest
        worker's) connection: the drainers themselves never write the state database."""
        self._note_unknown()
        return prune_points(state, self._drained, self.targets)

    def parts(self) -> list[Part]:
        """The "drainer" part (every target's process runs) and the "influx" part (every target
        takes writes), with the failing targets named."""
        dead = [t for t in self.targets if not self._alive(t)]
        down = []
        for t in self.targets:
            st = self.status(t)
            if t in dead or not st["healthy"]:
                why = st["last_error"] or "no InfluxDB writes while the drainer is not running"
                down.append(why if len(self.targets) == 1 else f"{t}: {why}")
        if len(self.targets) == 1:
            drainer_why = f"the drainer process is not running (restarts: {self.restarts})"
        else:
            drainer_why = ("the drainer process is not running for " + ", ".join(
                f"{t} (restarts: {self.restarts_of[t]})" for t in dead))
        return [Part("drainer", not dead, drainer_why if dead else ""),
                Part("influx", not down, "; ".join(down))]

    def targets_health(self) -> dict[str, dict[str, Any]]:
        """/healthz's view of each target: up or down, why, and the points waiting for it."""
        depths = self.depths()
        out = {}
        for t in self.targets:
            st = self.status(t)
            up = self._alive(t) and st["healthy"]
            out[t] = {"state": "up" if up else "down",
                      "reason": "" if up else st["last_error"] or "its drainer is not running",
                      "outbox_depth": depths[t]}
        return out


class DrainerMetrics(MetricsCollector):
    """The drainer processes' counters, per target, read from their status rows at scrape
    time."""

    def __init__(self, drainer: DrainerProcess) -> None:
        self._drainer = drainer

    def collect(self) -> Any:
        d = self._drainer
        yield GaugeMetricFamily("evalterm_outbox_depth", "Points waiting to be written to InfluxDB"
                                " (by some target: what the outbox keeps)", value=d.depth())
        depth = GaugeMetricFamily("evalterm_outbox_target_depth", "Points waiting to be written "
                                  "to each InfluxDB target", labels=["target"])
        written = CounterMetricFamily("evalterm_influx_points_written", "Points written to "
                                      "InfluxDB", labels=["target"])
        errors = CounterMetricFamily("evalterm_influx_write_errors",
                                     "Failed InfluxDB writes (retried)", labels=["target", "kind"])
        dead = CounterMetricFamily("evalterm_influx_dead_points", "Points InfluxDB refused as "
                                   "invalid (kept in drained.db's influx_target_dead table)",
                                   labels=["target"])
        restarts = CounterMetricFamily("evalterm_drainer_restarts", "Drainer process restarts",
                                       labels=["target"])
        for t, n in d.depths().items():
            st = d.status(t)
            depth.add_metric([t], n)
            written.add_metric([t], st["points_written"])
            errors.add_metric([t, "unavailable"], st["errors_unavailable"])
            errors.add_metric([t, "internal"], st["errors_internal"])
            dead.add_metric([t], st["dead_points"])
            restarts.add_metric([t], d.restarts_of[t])
        yield from (depth, written, errors, dead, restarts)


if __name__ == "__main__":
    sys.exit(main())
