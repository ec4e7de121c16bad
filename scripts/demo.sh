#!/usr/bin/env bash
# Set everything up, then run the main job: a private Mosquitto broker and InfluxDB server, the
# collector, and a simulated hall whose devices and business system speak the real protocol.
# Extra arguments go to `evalterm demo` (e.g. --windows 10 --rate 12 --duration 300).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/evalterm demo "$@"
