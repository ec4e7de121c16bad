"""Node-RED as a benchmark consumer: the flow of bench/nodered_flow.json (MQTT in -> JSON ->
InfluxDB out), a pipeline a user might pick instead of the collector.

Node-RED and node-red-contrib-influxdb are pinned npm packages in .venv/node-red, installed by
scripts/setup.sh (or on first use here). Node-RED runs with a user folder of the bench's own and
its editor off; the flow reads the broker's and InfluxDB's ports from BENCH_* variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = ROOT / ".venv" / "node-red"
PACKAGES = {"node-red": "4.1.8", "node-red-contrib-influxdb": "0.7.0"}
FLOW = ROOT / "bench" / "nodered_flow.json"

__all__ = ["NodeRed", "ensure_installed"]


def _installed(name: str) -> str:
    meta = PREFIX / "node_modules" / name / "package.json"
    try:
        return str(json.loads(meta.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return ""


def ensure_installed() -> Path:
    """The node-red start script, installing the pinned packages first if they are missing."""
    if any(_installed(n) != v for n, v in PACKAGES.items()):
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed: run scripts/setup.sh")
        PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(PREFIX), "--save-exact", "--no-audit",
                        "--no-fund", "--loglevel=error",
                        *(f"{n}@{v}" for n, v in PACKAGES.items())], check=True)
    return PREFIX / "node_modules" / "node-red" / "red.js"


class NodeRed:
    """One Node-RED process running the bench flow; `connected` is set when its MQTT client is
    connected to the broker (read from its log)."""

    def __init__(self, root: Path, mqtt_port: int, influx_port: int, database: str) -> None:
        self.root = root
        self.red = ensure_installed()
        self.env = {**os.environ, "BENCH_MQTT_PORT": str(mqtt_port),
                    "BENCH_INFLUX_PORT": str(influx_port), "BENCH_INFLUX_DB": database}
        root.mkdir(parents=True, exist_ok=True)
        self.settings = root / "settings.js"
        (root / "package.json").write_text('{"name": "evalterm-bench-nodered", "private": true}\n')
        # No editor, no admin API, no credentials file; nodes from .venv/node-red.
        influx_nodes = PREFIX / "node_modules" / "node-red-contrib-influxdb"
        self.settings.write_text(
            "module.exports = {\n"
            f"  flowFile: {json.dumps(str(FLOW))},\n"
            "  flowFilePretty: false,\n"
            "  readOnly: true,\n"
            "  uiHost: '127.0.0.1',\n"
            "  uiPort: 0,\n"
            "  httpAdminRoot: false,\n"
            "  httpNodeRoot: false,\n"
            "  credentialSecret: false,\n"
            f"  nodesDir: [{json.dumps(str(influx_nodes))}],\n"
            "  logging: { console: { level: 'info', metrics: false, audit: false } },\n"
            "  externalModules: { autoInstall: false, palette: { allowInstall: false } },\n"
            "};\n")
        self.proc: subprocess.Popen[str] | None = None
        self.connected = threading.Event()
        self.connected_at = 0.0
        self.log: list[str] = []

    def start(self) -> NodeRed:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: run scripts/setup.sh")
        self.connected.clear()
        self.proc = subprocess.Popen(
            [node, str(self.red), "--userDir", str(self.root), "--settings", str(self.settings)],
            cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line.rstrip())
            if "Connected to broker" in line and not self.connected.is_set():
                self.connected_at = time.perf_counter()
                self.connected.set()

    def wait_connected(self, timeout: float = 120) -> float:
        if not self.connected.wait(timeout):
            raise RuntimeError("Node-RED did not connect to the broker:\n"
                               + "\n".join(self.log[-20:]))
        return self.connected_at

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
