#!/usr/bin/env bash
# Installs everything evalterm needs on a Debian machine: the Mosquitto and InfluxDB 1.x servers
# (Debian packages; the project starts its own instances on free ports, never the system services)
# and a virtual environment in .venv with the collector and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need_pkgs+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need_pkgs+=(influxdb)
# tests/test_pki.py checks the certificates with openssl verify; the broker tests use iproute2 (ip).
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
# Node.js runs the 32-bit MicroPython (WebAssembly port) of tests/firmware/test_micropython_wasm.py.
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
# The firmware's build-time tools: the display font (GNU Unifont) and the voice prompts.
[ -f /usr/share/unifont/unifont.hex ] || need_pkgs+=(unifont)
command -v espeak-ng >/dev/null 2>&1 || need_pkgs+=(espeak-ng)
# The monthly assessment PDF (collector/manager/report.py): a CJK font; its tests use poppler.
[ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || need_pkgs+=(fonts-wqy-zenhei)
command -v pdftotext >/dev/null 2>&1 || need_pkgs+=(poppler-utils)
# The web UI's end-to-end tests (tests/test_web_ui_browser.py): Debian's headless Chromium, driven
# by Playwright (pip); Playwright never downloads a browser of its own here.
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# PostgreSQL 15 server binaries (initdb, pg_ctl, pg_basebackup): the tests start private clusters
# of the state database (tests/helpers.py PostgresServer), never the system service.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# grafana-client depends on niquests, whose urllib3-future wheel carries a .pth file that copies
# the fork over urllib3 at every interpreter start, so influxdb-client and collector/influx.py
# would run on a fork nobody chose. Built from source with URLLIB3_NO_OVERRIDE=1 it installs
# under its own name only (niquests then uses it as urllib3_future). A venv an older setup made
# has the override already: it is made anew.
if compgen -G ".venv/lib/python*/site-packages/urllib3_future.pth" >/dev/null; then
    echo "setup: .venv has urllib3-future's override of urllib3: making .venv anew"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.evalterm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into .venv"
    # (This machine's pip config names local mirrors that may be absent; hide those warnings.)
    URLLIB3_NO_OVERRIDE=1 .venv/bin/pip install -q --disable-pip-version-check \
        --no-binary urllib3-future -e ".[test]" 2>&1 \
        | { grep -v "^WARNING: Location 'file:" || true; }
    touch "$stamp"
fi
# MicroPython's WebAssembly port (32-bit), pinned, into .venv/npm (tests/firmware/test_micropython_wasm.py).
wasm_pkg=@micropython/micropython-webassembly-pyscript
wasm_version=1.29.0-6
wasm_meta=.venv/npm/node_modules/$wasm_pkg/package.json
if ! grep -qs "\"version\": \"$wasm_version\"" "$wasm_meta"; then
    echo "setup: installing $wasm_pkg $wasm_version into .venv/npm"
    mkdir -p .venv/npm
    npm install --prefix .venv/npm --save-exact --no-audit --no-fund --loglevel=error \
        "$wasm_pkg@$wasm_version" >/dev/null
fi
# Node-RED with its InfluxDB nodes, pinned, into .venv/node-red: a consumer of bench/run.py
# (bench/nodered.py holds the same pins and installs them on first use if this did not run).
# Node-RED 5 needs Node.js 22; Debian 12 has 20.
nodered_version=4.1.8
nodered_influx_version=0.7.0
if ! grep -qs "\"version\": \"$nodered_version\"" .venv/node-red/node_modules/node-red/package.json \
    || ! grep -qs "\"version\": \"$nodered_influx_version\"" \
        .venv/node-red/node_modules/node-red-contrib-influxdb/package.json; then
    echo "setup: installing node-red $nodered_version and node-red-contrib-influxdb into .venv/node-red"
    mkdir -p .venv/node-red
    npm install --prefix .venv/node-red --save-exact --no-audit --no-fund --loglevel=error \
        "node-red@$nodered_version" "node-red-contrib-influxdb@$nodered_influx_version" >/dev/null
fi
echo "setup: ready"
